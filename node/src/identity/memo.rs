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

#[derive(Debug, Default)]
pub struct IdentityMemo {
    entries: Mutex<HashMap<Box<str>, (Prepared, Instant)>>,
}

impl IdentityMemo {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, bearer: &str, now: Instant) -> Option<Prepared> {
        let entries = self.lock();
        let (prepared, until) = entries.get(bearer)?;
        (now < *until).then(|| prepared.clone())
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
        let mut entries = self.lock();
        if entries.len() >= CAPACITY && !entries.contains_key(bearer) {
            entries.retain(|_, (_, until)| *until > now);
            if entries.len() >= CAPACITY {
                entries.clear();
            }
        }
        entries.insert(bearer.into(), (prepared, now + keep));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, (Prepared, Instant)>> {
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
    fn a_full_memo_makes_room() {
        let memo = IdentityMemo::new();
        let now = Instant::now();
        for i in 0..CAPACITY {
            memo.put(&format!("t{i}"), prepared("a"), exp_in(600), now);
        }
        memo.put("new", prepared("b"), exp_in(600), now);
        assert_eq!(memo.get("new", now).unwrap().token, "b");
        assert!(memo.lock().len() <= CAPACITY);
    }
}
