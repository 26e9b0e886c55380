//! Request-volume limits per client address and per user (token buckets), configured per route
//! or policy and accounted across the cluster — the bookkeeping, without I/O.
//!
//! Why cluster-wide: behind a load balancer each node sees a share of a client's requests, so
//! per-node buckets would let N nodes admit N times the configured rate. Every node keeps a
//! bucket per rule and key, takes its own requests from it at once and reports what it admitted
//! to its peers in batches (through the shared store, see `node/src/rate_limit.rs`); a peer's
//! report is taken from the same bucket when it arrives. The cluster therefore admits the
//! configured rate, overshooting by what the nodes admit while reports travel. A bucket may go
//! into debt when peers report more than it had, so that concurrent admissions are paid back:
//! down to [`MAX_DEBT`] bursts, enough for every node of a cluster of 17 spending a full bucket
//! at the same moment, and a bound on what one wrong report can do. With the store down no reports arrive and each node limits on its
//! own: at most N times the rate, never unlimited, and never anyone else.
//!
//! A full bucket is the same as no bucket: buckets that have refilled are forgotten, so memory
//! follows the keys that are actually sending.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::GoDuration;

/// The network a client address stands for: IPv4 addresses as they are (IPv4-mapped IPv6 ones
/// unmapped), IPv6 addresses by their /64, which one subscriber usually holds whole.
pub fn client_network(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The text form of [`client_network`]: `10.0.0.1`, `2001:db8:1:2::/64`.
pub fn client_network_text(ip: IpAddr) -> String {
    match client_network(ip) {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("{v6}/64"),
    }
}

/// How many bursts a bucket may owe.
pub const MAX_DEBT: f64 = 16.0;

/// What a rule counts requests by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitBy {
    /// The client address (after trusted-proxy evaluation); IPv6 by its /64.
    #[default]
    Address,
    /// The authenticated user (the account id). Requests without a user (unprotected routes,
    /// public shares) are not counted by such a rule.
    User,
}

/// One `rate_limits` entry of the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitRule {
    /// Names the rule in logs, metrics and peers' reports: unique, without whitespace.
    pub name: String,
    pub per: LimitBy,
    /// Requests admitted per `period`, sustained.
    pub requests: u64,
    pub period: GoDuration,
    /// Requests admitted at once after a quiet time (the bucket's size); 0 means `requests`.
    pub burst: u64,
    /// Only routes of this policy; empty: every policy.
    pub policy: String,
    /// Only routes with one of these `endpoint`s (as configured); empty: every route.
    pub endpoints: Vec<String>,
}

impl Default for RateLimitRule {
    fn default() -> Self {
        RateLimitRule {
            name: String::new(),
            per: LimitBy::Address,
            requests: 0,
            period: GoDuration(Duration::from_secs(1)),
            burst: 0,
            policy: String::new(),
            endpoints: Vec::new(),
        }
    }
}

impl RateLimitRule {
    pub fn effective_burst(&self) -> u64 {
        if self.burst == 0 {
            self.requests
        } else {
            self.burst
        }
    }

    /// Whether the rule applies to the route `endpoint` of `policy`.
    pub fn applies_to(&self, policy: &str, endpoint: &str) -> bool {
        (self.policy.is_empty() || self.policy == policy)
            && (self.endpoints.is_empty() || self.endpoints.iter().any(|e| e == endpoint))
    }
}

/// The rate of a rule, in the units the buckets use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens added per millisecond.
    pub per_ms: f64,
    /// The bucket's size.
    pub burst: f64,
}

impl Rate {
    /// `None` for a rule that admits nothing (validation refuses those).
    pub fn of(rule: &RateLimitRule) -> Option<Rate> {
        let period_ms = rule.period.0.as_secs_f64() * 1000.0;
        let burst = rule.effective_burst();
        (rule.requests > 0 && period_ms > 0.0 && burst > 0).then(|| Rate {
            per_ms: rule.requests as f64 / period_ms,
            burst: burst as f64,
        })
    }
}

/// A counted key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LimitKey {
    /// Already reduced by [`client_network`].
    Address(IpAddr),
    User(Arc<str>),
}

impl LimitKey {
    pub fn address(ip: IpAddr) -> LimitKey {
        LimitKey::Address(client_network(ip))
    }

    /// `a:<network>` or `u:<user id>`, as reports name it.
    pub fn text(&self) -> String {
        match self {
            LimitKey::Address(ip) => format!("a:{}", client_network_text(*ip)),
            LimitKey::User(id) => format!("u:{id}"),
        }
    }

    pub fn parse(text: &str) -> Option<LimitKey> {
        let (kind, id) = text.split_once(':')?;
        match kind {
            "a" => {
                let ip = id.strip_suffix("/64").unwrap_or(id);
                ip.parse().ok().map(LimitKey::address)
            }
            "u" if !id.is_empty() => Some(LimitKey::User(id.into())),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    /// Unix ms the tokens were last brought up to date.
    at: u64,
    /// Admitted on this node since the last report.
    unreported: u32,
    /// A refusal of this key has been logged since the bucket was last full.
    refusing: bool,
}

impl Bucket {
    fn refill(&mut self, rate: Rate, now_ms: u64) {
        if now_ms > self.at {
            self.tokens = (self.tokens + (now_ms - self.at) as f64 * rate.per_ms).min(rate.burst);
            self.at = now_ms;
        }
    }

    fn full_at(&self, rate: Rate, now_ms: u64) -> bool {
        let mut b = *self;
        b.refill(rate, now_ms);
        b.tokens >= rate.burst
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// When the key has a token again.
    pub retry_after: Duration,
    /// The first refusal since the key's bucket was last full: worth a log line.
    pub first: bool,
}

/// The outcome of [`Buckets::take`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    Admitted,
    Refused(Refusal),
    /// The key is not tracked (the table is full): admitted uncounted.
    Untracked,
}

/// One rule's buckets on one node.
#[derive(Debug)]
pub struct Buckets {
    rate: Rate,
    capacity: usize,
    keys: HashMap<LimitKey, Bucket>,
}

impl Buckets {
    /// `capacity`: keys tracked at most; beyond it new keys are admitted uncounted.
    pub fn new(rate: Rate, capacity: usize) -> Buckets {
        Buckets {
            rate,
            capacity,
            keys: HashMap::new(),
        }
    }

    fn bucket(&mut self, key: &LimitKey, now_ms: u64) -> Option<&mut Bucket> {
        if !self.keys.contains_key(key) {
            if self.keys.len() >= self.capacity {
                self.prune(now_ms);
                if self.keys.len() >= self.capacity {
                    return None;
                }
            }
            self.keys.insert(
                key.clone(),
                Bucket {
                    tokens: self.rate.burst,
                    at: now_ms,
                    unreported: 0,
                    refusing: false,
                },
            );
        }
        let rate = self.rate;
        let bucket = self.keys.get_mut(key)?;
        bucket.refill(rate, now_ms);
        Some(bucket)
    }

    /// Takes a token for one request of `key`.
    pub fn take(&mut self, key: &LimitKey, now_ms: u64) -> Taken {
        let rate = self.rate;
        let Some(bucket) = self.bucket(key, now_ms) else {
            return Taken::Untracked;
        };
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            bucket.unreported = bucket.unreported.saturating_add(1);
            return Taken::Admitted;
        }
        let wait_ms = ((1.0 - bucket.tokens) / rate.per_ms).ceil();
        let first = !bucket.refusing;
        bucket.refusing = true;
        Taken::Refused(Refusal {
            retry_after: Duration::from_millis(wait_ms.min(u64::MAX as f64) as u64),
            first,
        })
    }

    /// Gives back a token [`Buckets::take`] admitted (another rule refused the request).
    pub fn give_back(&mut self, key: &LimitKey) {
        let rate = self.rate;
        if let Some(bucket) = self.keys.get_mut(key) {
            bucket.tokens = (bucket.tokens + 1.0).min(rate.burst);
            bucket.unreported = bucket.unreported.saturating_sub(1);
        }
    }

    /// Takes `count` requests a peer admitted; the bucket may go into debt, down to
    /// [`MAX_DEBT`] bursts.
    pub fn merge(&mut self, key: &LimitKey, count: u32, now_ms: u64) {
        let rate = self.rate;
        if let Some(bucket) = self.bucket(key, now_ms) {
            bucket.tokens = (bucket.tokens - f64::from(count)).max(-MAX_DEBT * rate.burst);
        }
    }

    /// What this node admitted per key since the last call, for its peers.
    pub fn take_reports(&mut self) -> Vec<(LimitKey, u32)> {
        self.keys
            .iter_mut()
            .filter(|(_, b)| b.unreported > 0)
            .map(|(k, b)| (k.clone(), std::mem::take(&mut b.unreported)))
            .collect()
    }

    /// Forgets buckets that have refilled and have nothing left to report.
    pub fn prune(&mut self, now_ms: u64) {
        let rate = self.rate;
        self.keys
            .retain(|_, b| b.unreported > 0 || !b.full_at(rate, now_ms));
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Which rules apply to each route, split by what they count, in the router's
/// `[policy index][route index]` order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteRules {
    routes: Vec<Vec<RulesOfRoute>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct RulesOfRoute {
    address: Box<[usize]>,
    user: Box<[usize]>,
}

impl RouteRules {
    /// `routes`: `(policy index, route index, policy name, endpoint)` of every route.
    pub fn new<'a>(
        rules: &[RateLimitRule],
        routes: impl IntoIterator<Item = (usize, usize, &'a str, &'a str)>,
    ) -> RouteRules {
        let mut table: Vec<Vec<RulesOfRoute>> = Vec::new();
        for (p, r, policy, endpoint) in routes {
            if table.len() <= p {
                table.resize_with(p + 1, Vec::new);
            }
            let row = &mut table[p];
            if row.len() <= r {
                row.resize_with(r + 1, Default::default);
            }
            let of = |by: LimitBy| -> Box<[usize]> {
                rules
                    .iter()
                    .enumerate()
                    .filter(|(_, rule)| rule.per == by && rule.applies_to(policy, endpoint))
                    .map(|(i, _)| i)
                    .collect()
            };
            row[r] = RulesOfRoute {
                address: of(LimitBy::Address),
                user: of(LimitBy::User),
            };
        }
        RouteRules { routes: table }
    }

    /// The indices of the rules of `by` for a route.
    pub fn rules(&self, policy_index: usize, route_index: usize, by: LimitBy) -> &[usize] {
        match (
            self.routes
                .get(policy_index)
                .and_then(|p| p.get(route_index)),
            by,
        ) {
            (Some(route), LimitBy::Address) => &route.address,
            (Some(route), LimitBy::User) => &route.user,
            (None, _) => &[],
        }
    }
}

/// A batch of one node's admissions: one line `<rule>\t<count>\t<key>` per rule and key.
/// Rule names have no whitespace (validated); keys with a line break are left out.
pub fn encode_batch<'a>(entries: impl IntoIterator<Item = (&'a str, &'a LimitKey, u32)>) -> String {
    let mut out = String::new();
    for (rule, key, count) in entries {
        let text = key.text();
        if text.contains('\n') {
            continue;
        }
        let _ = writeln!(out, "{rule}\t{count}\t{text}");
    }
    out
}

/// The entries of a batch; malformed lines are skipped.
pub fn decode_batch(value: &[u8]) -> Vec<(&str, u32, LimitKey)> {
    let Ok(text) = std::str::from_utf8(value) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, '\t');
            let rule = parts.next()?;
            let count = parts.next()?.parse().ok()?;
            let key = LimitKey::parse(parts.next()?)?;
            Some((rule, count, key))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000;

    fn rate(requests: u64, period_ms: u64, burst: u64) -> Rate {
        Rate::of(&RateLimitRule {
            name: "r".into(),
            requests,
            period: GoDuration(Duration::from_millis(period_ms)),
            burst,
            ..Default::default()
        })
        .unwrap()
    }

    fn user(id: &str) -> LimitKey {
        LimitKey::User(id.into())
    }

    #[test]
    fn a_bucket_admits_its_burst_then_its_rate() {
        // 10 per second, burst 5.
        let mut b = Buckets::new(rate(10, 1000, 5), 100);
        let k = user("einstein");
        for _ in 0..5 {
            assert_eq!(b.take(&k, T0), Taken::Admitted);
        }
        let Taken::Refused(r) = b.take(&k, T0) else {
            panic!("the sixth request at once is refused")
        };
        assert_eq!(r.retry_after, Duration::from_millis(100));
        assert!(r.first);
        let Taken::Refused(r) = b.take(&k, T0 + 50) else {
            panic!()
        };
        assert_eq!(r.retry_after, Duration::from_millis(50));
        assert!(!r.first, "one log line per episode");
        // One token per 100 ms.
        assert_eq!(b.take(&k, T0 + 100), Taken::Admitted);
        assert!(matches!(b.take(&k, T0 + 150), Taken::Refused(_)));
        assert_eq!(b.take(&k, T0 + 200), Taken::Admitted);
        // Another key has its own bucket.
        assert_eq!(b.take(&user("marie"), T0 + 200), Taken::Admitted);
        // Over a long quiet time the bucket fills to its burst, not beyond.
        for _ in 0..5 {
            assert_eq!(b.take(&k, T0 + 60_000), Taken::Admitted);
        }
        assert!(matches!(b.take(&k, T0 + 60_000), Taken::Refused(_)));
    }

    #[test]
    fn peers_admissions_drain_the_same_bucket_and_may_leave_debt() {
        let mut b = Buckets::new(rate(10, 1000, 10), 100);
        let k = LimitKey::address("10.0.0.1".parse().unwrap());
        assert_eq!(b.take(&k, T0), Taken::Admitted);
        // Two peers admitted 6 and 5 meanwhile: 10 - 1 - 11 = -2 tokens.
        b.merge(&k, 6, T0);
        b.merge(&k, 5, T0);
        let Taken::Refused(r) = b.take(&k, T0) else {
            panic!()
        };
        // Three tokens short: 300 ms.
        assert_eq!(r.retry_after, Duration::from_millis(300));
        // Debt is bounded: 16 bursts, -160 tokens, 161 short.
        b.merge(&k, 1_000_000, T0);
        let Taken::Refused(r) = b.take(&k, T0) else {
            panic!()
        };
        assert_eq!(r.retry_after, Duration::from_millis(16_100));
    }

    /// Three nodes exchanging reports every `every_ms` admit about the configured rate
    /// together, not three times it.
    #[test]
    fn three_nodes_exchanging_reports_admit_the_rate_cluster_wide() {
        let r = rate(20, 1000, 20);
        let k = user("u");
        let run = |every_ms: u64| {
            let mut nodes: Vec<Buckets> = (0..3).map(|_| Buckets::new(r, 100)).collect();
            let mut admitted = 0u32;
            // Every node gets 5 requests each millisecond for 5 s: each spends its whole
            // bucket before the first exchange.
            for t in 0..5_000u64 {
                for n in nodes.iter_mut() {
                    for _ in 0..5 {
                        if b_admit(n, &k, T0 + t) {
                            admitted += 1;
                        }
                    }
                }
                if every_ms > 0 && t % every_ms == 0 {
                    let reports: Vec<Vec<(LimitKey, u32)>> =
                        nodes.iter_mut().map(Buckets::take_reports).collect();
                    for (from, batch) in reports.iter().enumerate() {
                        for (to, n) in nodes.iter_mut().enumerate() {
                            if to != from {
                                for (key, count) in batch {
                                    n.merge(key, *count, T0 + t);
                                }
                            }
                        }
                    }
                }
            }
            admitted
        };
        fn b_admit(b: &mut Buckets, k: &LimitKey, now: u64) -> bool {
            b.take(k, now) == Taken::Admitted
        }
        // Alone, each node would admit its burst plus 5 s of rate: 20 + 100, three times over.
        let isolated = run(0);
        assert!((355..=363).contains(&isolated), "{isolated}");
        // Exchanging every 10 ms: about 120 together, give or take the last reports in flight.
        let shared = run(10);
        assert!((118..=140).contains(&shared), "{shared}");
    }

    #[test]
    fn a_token_given_back_is_admitted_again() {
        let mut b = Buckets::new(rate(1, 1000, 1), 100);
        let k = user("u");
        assert_eq!(b.take(&k, T0), Taken::Admitted);
        b.give_back(&k);
        assert!(b.take_reports().is_empty());
        assert_eq!(b.take(&k, T0), Taken::Admitted);
        assert_eq!(b.take_reports(), vec![(k, 1)]);
    }

    #[test]
    fn refilled_buckets_are_forgotten_and_capacity_is_bounded() {
        let mut b = Buckets::new(rate(10, 1000, 10), 2);
        let k = |i: u8| LimitKey::address(IpAddr::from([10, 0, 0, i]));
        assert_eq!(b.take(&k(1), T0), Taken::Admitted);
        assert_eq!(b.take(&k(2), T0), Taken::Admitted);
        assert_eq!(b.take(&k(3), T0), Taken::Untracked);
        // Reported and refilled (100 ms for one token): forgotten, room for the third.
        b.take_reports();
        assert_eq!(b.take(&k(3), T0 + 100), Taken::Admitted);
        assert_eq!(b.len(), 1);
        // Unreported admissions keep a bucket even when it has refilled.
        b.prune(T0 + 10_000);
        assert_eq!(b.len(), 1);
        b.take_reports();
        b.prune(T0 + 10_000);
        assert!(b.is_empty());
    }

    #[test]
    fn rules_apply_to_their_policy_and_endpoints() {
        let rule = |name: &str, per, policy: &str, endpoints: &[&str]| RateLimitRule {
            name: name.into(),
            per,
            requests: 1,
            period: GoDuration(Duration::from_secs(1)),
            policy: policy.into(),
            endpoints: endpoints.iter().map(|e| (*e).to_owned()).collect(),
            ..Default::default()
        };
        let rules = [
            rule("all", LimitBy::Address, "", &[]),
            rule("graph", LimitBy::User, "ocis", &["/graph/"]),
            rule("other", LimitBy::User, "other", &[]),
        ];
        let table = RouteRules::new(
            &rules,
            [
                (0, 0, "ocis", "/"),
                (0, 1, "ocis", "/graph/"),
                (1, 0, "other", "/graph/"),
            ],
        );
        assert_eq!(table.rules(0, 0, LimitBy::Address), &[0]);
        assert!(table.rules(0, 0, LimitBy::User).is_empty());
        assert_eq!(table.rules(0, 1, LimitBy::User), &[1]);
        assert_eq!(table.rules(1, 0, LimitBy::User), &[2]);
        assert!(table.rules(5, 0, LimitBy::User).is_empty());
    }

    #[test]
    fn keys_and_batches_have_a_text_form() {
        let v6 = LimitKey::address("2001:db8:1:2:3:4:5:6".parse().unwrap());
        assert_eq!(v6.text(), "a:2001:db8:1:2::/64");
        assert_eq!(
            LimitKey::address("2001:db8:1:2:ffff::1".parse().unwrap()),
            v6
        );
        assert_eq!(
            LimitKey::address("::ffff:10.0.0.1".parse().unwrap()).text(),
            "a:10.0.0.1"
        );
        let u = user("4c510ada-c86b-4815-8820-42cdf82c3d51");
        let batch = encode_batch([("api", &v6, 3), ("graph", &u, 1), ("x", &user("a\nb"), 1)]);
        assert_eq!(
            batch,
            "api\t3\ta:2001:db8:1:2::/64\ngraph\t1\tu:4c510ada-c86b-4815-8820-42cdf82c3d51\n"
        );
        assert_eq!(
            decode_batch(format!("{batch}garbage\nx\tnan\tu:1\ny\t1\tq:1\n").as_bytes()),
            vec![("api", 3, v6), ("graph", 1, u)]
        );
        assert!(decode_batch(b"\xff").is_empty());
    }
}
