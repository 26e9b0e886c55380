//! A short-lived memo of what a bearer token resolved to, per worker.
//!
//! Resolving a cached token is already free of network calls, but it still hashes the token,
//! decodes the cached claims, reads the cached account and fingerprints the user for the minted
//! token — together more than the whole proxying of a small request. A client sends the same
//! token many times a second, so each worker remembers the final outcome (the minted
//! `x-access-token` and the MFA state) for [`MEMO_TTL`], never past the token's `exp`.
//!
//! The price is bounded staleness: a change of the user's role, groups or session reaches a
//! worker at most [`MEMO_TTL`] late. Refusals are never memoised. The memo is per worker (one
//! single-threaded runtime), so its lock is never contended.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::HeaderValue;

/// How long a worker reuses the outcome of one bearer token.
pub const MEMO_TTL: Duration = Duration::from_secs(2);
/// Tokens remembered per worker; a full memo drops its expired entries, then everything.
const CAPACITY: usize = 10_000;

/// What the account layer adds to a request for an authenticated user.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The minted `x-access-token`.
    pub token: HeaderValue,
    /// The login counts as multi-factor.
    pub mfa: bool,
}

/// Entries are filed under a hash of the token's last [`HASHED_SUFFIX`] bytes (for a JWT, the
/// signature: distinct for distinct tokens) and matched on the whole token. A token is about
/// 1 KiB, and hashing all of it was a measurable share of a request.
#[derive(Debug, Default)]
pub struct IdentityMemo {
    entries: Mutex<Entries>,
    hasher: RandomState,
}

#[derive(Debug, Default)]
struct Entries {
    by_suffix: HashMap<u64, Vec<Entry>>,
    len: usize,
}

#[derive(Debug)]
struct Entry {
    token: Box<str>,
    prepared: Prepared,
    until: Instant,
}

const HASHED_SUFFIX: usize = 48;

impl IdentityMemo {
    pub fn new() -> Self {
        Self::default()
    }

    fn slot(&self, token: &str) -> u64 {
        let bytes = token.as_bytes();
        self.hasher
            .hash_one(&bytes[bytes.len().saturating_sub(HASHED_SUFFIX)..])
    }

    pub fn get(&self, bearer: &str, now: Instant) -> Option<Prepared> {
        let slot = self.slot(bearer);
        let entries = self.lock();
        let entry = entries
            .by_suffix
            .get(&slot)?
            .iter()
            .find(|e| &*e.token == bearer)?;
        (now < entry.until).then(|| entry.prepared.clone())
    }

    /// Remembers `prepared` for `bearer` until `MEMO_TTL` from `now`, or the token's `exp`
    /// (Unix seconds) if that comes first. A token without `exp` is not remembered.
    pub fn put(&self, bearer: &str, prepared: Prepared, exp: Option<u64>, now: Instant) {
        let Some(exp) = exp else { return };
        let left = UNIX_EPOCH
            .checked_add(Duration::from_secs(exp))
            .and_then(|exp| exp.duration_since(SystemTime::now()).ok())
            .unwrap_or_default();
        let keep = left.min(MEMO_TTL);
        if keep.is_zero() {
            return;
        }
        let slot = self.slot(bearer);
        let mut entries = self.lock();
        if entries.len >= CAPACITY {
            entries.by_suffix.retain(|_, list| {
                list.retain(|e| e.until > now);
                !list.is_empty()
            });
            entries.len = entries.by_suffix.values().map(Vec::len).sum();
            if entries.len >= CAPACITY {
                entries.by_suffix.clear();
                entries.len = 0;
            }
        }
        let list = entries.by_suffix.entry(slot).or_default();
        let entry = Entry {
            token: bearer.into(),
            prepared,
            until: now + keep,
        };
        match list.iter_mut().find(|e| &*e.token == bearer) {
            Some(existing) => *existing = entry,
            None => {
                list.push(entry);
                entries.len += 1;
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepared(t: &'static str) -> Prepared {
        Prepared {
            token: HeaderValue::from_static(t),
            mfa: false,
        }
    }

    fn exp_in(secs: u64) -> Option<u64> {
        Some(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs()
                + secs,
        )
    }

    #[test]
    fn remembers_for_the_ttl_only() {
        let memo = IdentityMemo::new();
        let now = Instant::now();
        memo.put("tok", prepared("a"), exp_in(600), now);
        assert_eq!(memo.get("tok", now).unwrap().token, "a");
        assert_eq!(
            memo.get("tok", now + MEMO_TTL - Duration::from_millis(1))
                .unwrap()
                .token,
            "a"
        );
        assert!(memo.get("tok", now + MEMO_TTL).is_none());
        assert!(memo.get("other", now).is_none());
    }

    #[test]
    fn never_past_the_token_expiry() {
        let memo = IdentityMemo::new();
        let now = Instant::now();
        memo.put("expired", prepared("a"), Some(1), now);
        assert!(memo.get("expired", now).is_none());
        memo.put("no-exp", prepared("a"), None, now);
        assert!(memo.get("no-exp", now).is_none());
        // Expiring in under a second: kept no longer than that.
        let soon = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 1;
        memo.put("soon", prepared("a"), Some(soon), now);
        assert!(
            memo.get("soon", now + Duration::from_millis(1001))
                .is_none()
        );
    }

    #[test]
    fn tokens_sharing_a_suffix_are_told_apart() {
        let memo = IdentityMemo::new();
        let now = Instant::now();
        let tail = "s".repeat(HASHED_SUFFIX);
        let (a, b) = (format!("a{tail}"), format!("b{tail}"));
        memo.put(&a, prepared("for-a"), exp_in(600), now);
        assert!(memo.get(&b, now).is_none());
        memo.put(&b, prepared("for-b"), exp_in(600), now);
        assert_eq!(memo.get(&a, now).unwrap().token, "for-a");
        assert_eq!(memo.get(&b, now).unwrap().token, "for-b");
        assert!(memo.get("short", now).is_none());
    }

    #[test]
    fn a_full_memo_makes_room() {
        let memo = IdentityMemo::new();
        let now = Instant::now();
        for i in 0..CAPACITY {
            memo.put(&format!("t{i}"), prepared("a"), exp_in(600), now);
        }
        memo.put("new", prepared("b"), exp_in(600), now);
        assert_eq!(memo.get("new", now).unwrap().token, "b");
        assert!(memo.lock().len <= CAPACITY);
    }
}
