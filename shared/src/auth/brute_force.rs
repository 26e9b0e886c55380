//! Counting failed authentications per client address, user name and share token, across the
//! cluster, and blocking a key that fails too often — the bookkeeping, without I/O.
//!
//! Why cluster-wide: behind a load balancer each node sees a third of an attacker's guesses, so
//! per-node limits would let three nodes triple the rate. Every node counts its own failures
//! per key and per window, reports its counts to its peers (through the shared store, see
//! `node/src/guard.rs`) and adds theirs: a key is blocked when the cluster's count in the window
//! reaches the threshold. The reports may arrive late or not at all (store down); each node then
//! still blocks on what it has, so the limit degrades to a per-node one, never to none.
//!
//! Windows are aligned to the wall clock (`floor(now / window)`), so that every node means the
//! same window by the same start. A block lasts `block`, doubling with each further block of the
//! key up to `max_block`; a key nobody failed for a window after its block ended is forgotten.
//! Checking a key is a map lookup, and [`Ledger::blocks_until`] lets a caller skip even that
//! while no key is blocked.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;

/// What a failure is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// The client address (after trusted-proxy evaluation); IPv6 by its /64 prefix.
    Address,
    /// A user name presented with a password or app token.
    User,
    /// A public-share token presented with a password or signature.
    Share,
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Address => "address",
            KeyKind::User => "user",
            KeyKind::Share => "share",
        }
    }

    fn prefix(self) -> char {
        match self {
            KeyKind::Address => 'a',
            KeyKind::User => 'u',
            KeyKind::Share => 's',
        }
    }
}

/// A counted key: its kind and its text form, which is also its name in peers' reports.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GuardKey {
    pub kind: KeyKind,
    text: String,
}

impl GuardKey {
    pub fn address(ip: IpAddr) -> GuardKey {
        let id = crate::rate_limit::client_network_text(ip);
        Self::new(KeyKind::Address, &id)
    }

    /// User names compare case-insensitively, as the account backends look them up.
    pub fn user(name: &str) -> GuardKey {
        Self::new(KeyKind::User, &name.to_lowercase())
    }

    pub fn share(token: &str) -> GuardKey {
        Self::new(KeyKind::Share, token)
    }

    fn new(kind: KeyKind, id: &str) -> GuardKey {
        GuardKey {
            kind,
            text: format!("{}:{id}", kind.prefix()),
        }
    }

    /// The key as reports name it.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Reads a key from its text form.
    pub fn parse(text: &str) -> Option<GuardKey> {
        let (prefix, id) = text.split_once(':')?;
        let kind = match prefix {
            "a" => KeyKind::Address,
            "u" => KeyKind::User,
            "s" => KeyKind::Share,
            _ => return None,
        };
        (!id.is_empty()).then(|| GuardKey {
            kind,
            text: text.to_owned(),
        })
    }
}

/// The limits, from `brute_force` in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub window: Duration,
    pub per_address: u32,
    pub per_user: u32,
    pub per_share: u32,
    pub block: Duration,
    pub max_block: Duration,
    /// Keys tracked at most; beyond that new keys are not counted (and a warning is due).
    pub capacity: usize,
}

impl Limits {
    fn threshold(&self, kind: KeyKind) -> u32 {
        match kind {
            KeyKind::Address => self.per_address,
            KeyKind::User => self.per_user,
            KeyKind::Share => self.per_share,
        }
    }
}

/// One node's count of a key in a window, as it reports it to its peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub key: GuardKey,
    /// Unix milliseconds of the window's start.
    pub window_start: u64,
    pub count: u32,
}

impl Report {
    /// `<window start ms> <count>`, the value stored for peers.
    pub fn encode_value(&self) -> String {
        format!("{} {}", self.window_start, self.count)
    }

    pub fn decode_value(key: GuardKey, value: &[u8]) -> Option<Report> {
        let text = std::str::from_utf8(value).ok()?;
        let (start, count) = text.split_once(' ')?;
        Some(Report {
            key,
            window_start: start.parse().ok()?,
            count: count.parse().ok()?,
        })
    }
}

#[derive(Debug, Default)]
struct KeyState {
    window_start: u64,
    local: u32,
    /// Peers' counts for `window_start`.
    remote: HashMap<String, u32>,
    blocked_until: u64,
    /// Blocks so far; the next one lasts `block * 2^blocks`.
    blocks: u32,
    last_failure: u64,
}

impl KeyState {
    fn total(&self) -> u32 {
        self.remote
            .values()
            .fold(self.local, |sum, n| sum.saturating_add(*n))
    }

    /// Moves to the window starting at `start`, if it is later than the current one.
    fn roll(&mut self, start: u64) {
        if start > self.window_start {
            self.window_start = start;
            self.local = 0;
            self.remote.clear();
        }
    }
}

/// What happened to a key, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Counted; not blocked.
    Counted,
    /// This failure (or report) started a block for this long.
    Blocked(Duration),
    /// The key is not tracked (the ledger is full).
    Untracked,
}

#[derive(Debug)]
pub struct Ledger {
    limits: Limits,
    keys: HashMap<GuardKey, KeyState>,
    /// Keys whose local count changed since the last [`Ledger::take_reports`].
    dirty: HashSet<GuardKey>,
    /// The latest end of any block (Unix ms): nothing is blocked after it.
    blocks_until: u64,
}

impl Ledger {
    pub fn new(limits: Limits) -> Ledger {
        Ledger {
            limits,
            keys: HashMap::new(),
            dirty: HashSet::new(),
            blocks_until: 0,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn window_start(&self, now_ms: u64) -> u64 {
        let w = u64::try_from(self.limits.window.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        now_ms - now_ms % w
    }

    /// No key is blocked at or after this moment (Unix ms).
    pub fn blocks_until(&self) -> u64 {
        self.blocks_until
    }

    /// How long `key` stays blocked, if it is.
    pub fn blocked(&self, key: &GuardKey, now_ms: u64) -> Option<Duration> {
        let state = self.keys.get(key)?;
        (state.blocked_until > now_ms).then(|| Duration::from_millis(state.blocked_until - now_ms))
    }

    /// Counts a failure of `key`.
    pub fn failed(&mut self, key: &GuardKey, now_ms: u64) -> Verdict {
        let start = self.window_start(now_ms);
        if !self.keys.contains_key(key) && !self.make_room(now_ms) {
            return Verdict::Untracked;
        }
        let state = self.keys.entry(key.clone()).or_default();
        state.roll(start);
        state.local = state.local.saturating_add(1);
        state.last_failure = now_ms;
        self.dirty.insert(key.clone());
        self.evaluate(key, now_ms)
    }

    /// Applies a peer's report (`node` is the peer's id; the caller skips its own).
    pub fn merge(&mut self, node: &str, report: &Report, now_ms: u64) -> Verdict {
        // Reports of windows that are over change nothing.
        if report.window_start < self.window_start(now_ms) {
            return Verdict::Counted;
        }
        if !self.keys.contains_key(&report.key) && !self.make_room(now_ms) {
            return Verdict::Untracked;
        }
        let state = self.keys.entry(report.key.clone()).or_default();
        state.roll(report.window_start);
        if report.window_start == state.window_start {
            let seen = state.remote.entry(node.to_owned()).or_default();
            *seen = (*seen).max(report.count);
        }
        state.last_failure = state.last_failure.max(now_ms);
        self.evaluate(&report.key, now_ms)
    }

    fn evaluate(&mut self, key: &GuardKey, now_ms: u64) -> Verdict {
        let threshold = self.limits.threshold(key.kind);
        let Some(state) = self.keys.get_mut(key) else {
            return Verdict::Untracked;
        };
        if state.blocked_until > now_ms || state.total() < threshold.max(1) {
            return Verdict::Counted;
        }
        let factor = 1u32.checked_shl(state.blocks.min(20)).unwrap_or(u32::MAX);
        let length = self
            .limits
            .block
            .saturating_mul(factor)
            .min(self.limits.max_block);
        state.blocks = state.blocks.saturating_add(1);
        state.blocked_until =
            now_ms.saturating_add(u64::try_from(length.as_millis()).unwrap_or(u64::MAX));
        // The counts stay: peers must learn this node's last failures (their total blocks them
        // too), and a key still over the limit when its block ends is blocked again at once.
        self.blocks_until = self.blocks_until.max(state.blocked_until);
        Verdict::Blocked(length)
    }

    /// A success with `key`'s credentials: forgets its failures and blocks (user and share keys
    /// only — an attacker could otherwise reset an address by logging in between guesses).
    pub fn succeeded(&mut self, key: &GuardKey) {
        if key.kind != KeyKind::Address {
            self.keys.remove(key);
            self.dirty.remove(key);
        }
    }

    /// The local counts that changed since the last call, for the peers.
    pub fn take_reports(&mut self) -> Vec<Report> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty
            .into_iter()
            .filter_map(|key| {
                let state = self.keys.get(&key)?;
                Some(Report {
                    window_start: state.window_start,
                    count: state.local,
                    key,
                })
            })
            .collect()
    }

    /// Forgets keys that are neither blocked nor failed within the last window; true if a new
    /// key fits afterwards.
    fn make_room(&mut self, now_ms: u64) -> bool {
        if self.keys.len() < self.limits.capacity {
            return true;
        }
        self.prune(now_ms);
        self.keys.len() < self.limits.capacity
    }

    /// Drops what no longer matters: keys not blocked whose last failure is a window old.
    pub fn prune(&mut self, now_ms: u64) {
        let window = u64::try_from(self.limits.window.as_millis()).unwrap_or(u64::MAX);
        self.keys.retain(|_, s| {
            s.blocked_until > now_ms || s.last_failure.saturating_add(window) > now_ms
        });
        if self.blocks_until <= now_ms {
            self.blocks_until = 0;
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000;

    fn limits() -> Limits {
        Limits {
            window: Duration::from_secs(60),
            per_address: 5,
            per_user: 3,
            per_share: 3,
            block: Duration::from_secs(10),
            max_block: Duration::from_secs(35),
            capacity: 100,
        }
    }

    #[test]
    fn a_key_is_blocked_at_its_threshold_for_a_growing_time() {
        let mut l = Ledger::new(limits());
        let u = GuardKey::user("Einstein");
        assert_eq!(u, GuardKey::user("einstein"));
        assert_eq!(l.failed(&u, T0), Verdict::Counted);
        assert_eq!(l.failed(&u, T0 + 1), Verdict::Counted);
        assert_eq!(l.blocked(&u, T0 + 1), None);
        assert_eq!(
            l.failed(&u, T0 + 2),
            Verdict::Blocked(Duration::from_secs(10))
        );
        assert_eq!(l.blocked(&u, T0 + 2), Some(Duration::from_secs(10)));
        assert!(l.blocks_until() >= T0 + 10_002);
        // Failures during the block do not extend it. The window is still over the limit when
        // the block ends, so the next failure blocks again at once, for 20 s, then 35 s (the
        // maximum).
        assert_eq!(l.failed(&u, T0 + 5_000), Verdict::Counted);
        let after = T0 + 10_003;
        assert_eq!(l.blocked(&u, after), None);
        assert_eq!(
            l.failed(&u, after),
            Verdict::Blocked(Duration::from_secs(20))
        );
        let after = after + 20_001;
        assert_eq!(
            l.failed(&u, after),
            Verdict::Blocked(Duration::from_secs(35))
        );
        // A new window counts afresh: two failures are allowed again, the third blocks.
        let next = T0 - T0 % 60_000 + 120_000;
        assert_eq!(l.failed(&u, next), Verdict::Counted);
        assert_eq!(l.failed(&u, next + 1), Verdict::Counted);
        assert_eq!(
            l.failed(&u, next + 2),
            Verdict::Blocked(Duration::from_secs(35))
        );
        // Another user, and the address, are untouched.
        assert_eq!(l.blocked(&GuardKey::user("marie"), after), None);
    }

    #[test]
    fn peers_counts_add_up_and_old_windows_do_not() {
        let mut l = Ledger::new(limits());
        let s = GuardKey::share("tok");
        l.failed(&s, T0);
        let start = T0 - T0 % 60_000;
        let report = |count| Report {
            key: s.clone(),
            window_start: start,
            count,
        };
        assert_eq!(l.merge("n2", &report(1), T0), Verdict::Counted);
        // A repeated or smaller report of the same peer is not added twice.
        assert_eq!(l.merge("n2", &report(1), T0), Verdict::Counted);
        assert_eq!(l.merge("n2", &report(0), T0), Verdict::Counted);
        assert_eq!(
            l.merge("n3", &report(1), T0 + 5),
            Verdict::Blocked(Duration::from_secs(10))
        );
        // A report of a past window changes nothing.
        let mut l = Ledger::new(limits());
        let old = Report {
            key: s.clone(),
            window_start: start - 60_000,
            count: 100,
        };
        assert_eq!(l.merge("n2", &old, T0), Verdict::Counted);
        assert_eq!(l.blocked(&s, T0), None);
    }

    #[test]
    fn a_new_window_counts_afresh() {
        let mut l = Ledger::new(limits());
        let a = GuardKey::address("10.0.0.1".parse().unwrap());
        for i in 0..4 {
            l.failed(&a, T0 + i);
        }
        let next = T0 - T0 % 60_000 + 60_000;
        assert_eq!(l.failed(&a, next), Verdict::Counted);
        assert_eq!(l.blocked(&a, next), None);
    }

    #[test]
    fn success_resets_users_and_shares_but_not_addresses() {
        let mut l = Ledger::new(limits());
        let (u, a) = (
            GuardKey::user("x"),
            GuardKey::address("10.0.0.1".parse().unwrap()),
        );
        for i in 0..3 {
            l.failed(&u, T0 + i);
        }
        for i in 0..5 {
            l.failed(&a, T0 + i);
        }
        assert!(l.blocked(&u, T0 + 5).is_some());
        assert!(l.blocked(&a, T0 + 5).is_some());
        l.succeeded(&u);
        l.succeeded(&a);
        assert_eq!(l.blocked(&u, T0 + 5), None);
        assert!(l.blocked(&a, T0 + 5).is_some());
    }

    #[test]
    fn reports_carry_changed_local_counts_once() {
        let mut l = Ledger::new(limits());
        let u = GuardKey::user("x");
        l.failed(&u, T0);
        l.failed(&u, T0 + 1);
        let reports = l.take_reports();
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].count, 2);
        assert_eq!(reports[0].window_start, T0 - T0 % 60_000);
        assert!(l.take_reports().is_empty());
        let value = reports[0].encode_value();
        assert_eq!(
            Report::decode_value(u.clone(), value.as_bytes()),
            Some(reports[0].clone())
        );
        assert_eq!(Report::decode_value(u, b"garbage"), None);
    }

    #[test]
    fn capacity_is_bounded_and_stale_keys_make_room() {
        let mut l = Ledger::new(Limits {
            capacity: 2,
            ..limits()
        });
        let k = |i: u8| GuardKey::address(IpAddr::from([10, 0, 0, i]));
        assert_eq!(l.failed(&k(1), T0), Verdict::Counted);
        assert_eq!(l.failed(&k(2), T0), Verdict::Counted);
        assert_eq!(l.failed(&k(3), T0), Verdict::Untracked);
        // A window later the first two are stale.
        assert_eq!(l.failed(&k(3), T0 + 60_001), Verdict::Counted);
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn keys_have_a_text_form() {
        let v6 = GuardKey::address("2001:db8:1:2:3:4:5:6".parse().unwrap());
        assert_eq!(v6.as_str(), "a:2001:db8:1:2::/64");
        assert_eq!(
            GuardKey::address("2001:db8:1:2:ffff::1".parse().unwrap()),
            v6
        );
        assert_eq!(
            GuardKey::address("::ffff:10.0.0.1".parse().unwrap()).as_str(),
            "a:10.0.0.1"
        );
        for k in [v6, GuardKey::user("Marie"), GuardKey::share("t:o:k")] {
            assert_eq!(GuardKey::parse(k.as_str()), Some(k.clone()));
        }
        assert_eq!(GuardKey::parse("x:1"), None);
        assert_eq!(GuardKey::parse("u:"), None);
    }
}
