//! Reuse of minted `x-access-token`s.
//!
//! Signing is cheap but not free, and every proxied request needs a token. A user's token only
//! changes when something in it changes, so the cache keys tokens by a fingerprint of the complete
//! user (id, roles, groups, names — everything serialised into the claim) and hands the same
//! string out until less than `refresh_margin` of its lifetime is left. Backends therefore always
//! receive a token with at least `refresh_margin` to run. Time comes from an injected
//! [`Clock`] because `exp` is wall-clock time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha3::{Digest, Sha3_256};

use super::TokenError;
use super::jwt::Minter;
use super::user::{RevaUser, owner_scope};
use crate::store::Clock;

type Fingerprint = [u8; 32];

#[derive(Debug)]
struct Entry {
    token: String,
    expires: SystemTime,
}

/// A bounded cache of owner-scope tokens, one per distinct user state.
pub struct MintCache {
    minter: Minter,
    clock: Arc<dyn Clock>,
    capacity: usize,
    refresh_margin: Duration,
    entries: Mutex<HashMap<Fingerprint, Entry>>,
}

impl std::fmt::Debug for MintCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MintCache")
            .field("minter", &self.minter)
            .field("capacity", &self.capacity)
            .field("refresh_margin", &self.refresh_margin)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl MintCache {
    /// A cache of at most `capacity` tokens that re-mints once less than `refresh_margin` of a
    /// token's lifetime remains. `capacity` must be positive and `refresh_margin` shorter than
    /// the minter's lifetime (otherwise every call would sign).
    pub fn new(
        minter: Minter,
        capacity: usize,
        refresh_margin: Duration,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, TokenError> {
        if capacity == 0 {
            return Err(TokenError::InvalidCacheConfig(
                "capacity must be at least 1".into(),
            ));
        }
        if refresh_margin >= minter.lifetime() {
            return Err(TokenError::InvalidCacheConfig(format!(
                "refresh margin {refresh_margin:?} must be shorter than the token lifetime {:?}",
                minter.lifetime()
            )));
        }
        Ok(Self {
            minter,
            clock,
            capacity,
            refresh_margin,
            entries: Mutex::new(HashMap::new()),
        })
    }

    /// The owner-scope token for `user`: the cached one while it has more than the refresh
    /// margin left, otherwise a freshly minted one (which replaces it).
    pub fn token_for(&self, user: &RevaUser) -> Result<String, TokenError> {
        let key = fingerprint(user)?;
        let now = self.clock.now();
        if let Some(entry) = self.lock().get(&key)
            && self.is_fresh(entry, now)
        {
            return Ok(entry.token.clone());
        }

        let token = self.minter.mint_at(user, &owner_scope(), now)?;
        let expires = truncate_to_seconds(now) + self.minter.lifetime();

        let mut entries = self.lock();
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            self.evict(&mut entries, now);
        }
        entries.insert(
            key,
            Entry {
                token: token.clone(),
                expires,
            },
        );
        Ok(token)
    }

    /// Number of cached tokens.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no token is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn is_fresh(&self, entry: &Entry, now: SystemTime) -> bool {
        now + self.refresh_margin < entry.expires
    }

    /// Make room for one entry: drop every stale one; if none was stale, drop the one that
    /// expires first (it would be re-minted soonest anyway).
    fn evict(&self, entries: &mut HashMap<Fingerprint, Entry>, now: SystemTime) {
        entries.retain(|_, e| self.is_fresh(e, now));
        if entries.len() < self.capacity {
            return;
        }
        if let Some(oldest) = entries
            .iter()
            .min_by_key(|(_, e)| e.expires)
            .map(|(k, _)| *k)
        {
            entries.remove(&oldest);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Fingerprint, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// SHA3-256 of the user's claim JSON: any change that would change the token changes the key.
fn fingerprint(user: &RevaUser) -> Result<Fingerprint, TokenError> {
    let json = serde_json::to_vec(user).map_err(|e| TokenError::Encoding(e.to_string()))?;
    Ok(Sha3_256::digest(&json).into())
}

/// `t` without its fraction of a second, as a token's `iat` and `exp` record it.
pub fn truncate_to_seconds(t: SystemTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ManualClock;
    use crate::token::jwt::{DEFAULT_LEEWAY, verify_at};
    use crate::token::user::RevaUserId;

    const SECRET: &[u8] = b"secret";
    const LIFETIME: Duration = Duration::from_secs(3600);
    const MARGIN: Duration = Duration::from_secs(600);

    fn user(name: &str) -> RevaUser {
        RevaUser {
            id: Some(RevaUserId {
                idp: "https://idp".into(),
                opaque_id: format!("id-{name}"),
                ..RevaUserId::default()
            }),
            username: name.into(),
            ..RevaUser::default()
        }
    }

    fn cache(capacity: usize) -> (MintCache, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::default());
        let minter = Minter::new(SECRET, LIFETIME).unwrap();
        let cache = MintCache::new(minter, capacity, MARGIN, clock.clone()).unwrap();
        (cache, clock)
    }

    #[test]
    fn rejects_useless_settings() {
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::default());
        let minter = Minter::new(SECRET, LIFETIME).unwrap();
        assert!(matches!(
            MintCache::new(minter.clone(), 0, MARGIN, clock.clone()),
            Err(TokenError::InvalidCacheConfig(_))
        ));
        assert!(matches!(
            MintCache::new(minter, 10, LIFETIME, clock),
            Err(TokenError::InvalidCacheConfig(_))
        ));
    }

    #[test]
    fn hit_returns_the_same_token() {
        let (cache, clock) = cache(8);
        let first = cache.token_for(&user("a")).unwrap();
        clock.advance(Duration::from_secs(60));
        assert_eq!(cache.token_for(&user("a")).unwrap(), first);
        assert_eq!(cache.len(), 1);
        let claims = verify_at(SECRET, &first, DEFAULT_LEEWAY, clock.now()).unwrap();
        assert_eq!(claims.user, user("a"));
    }

    #[test]
    fn re_mints_when_less_than_the_margin_remains() {
        let (cache, clock) = cache(8);
        let first = cache.token_for(&user("a")).unwrap();
        let first_exp = verify_at(SECRET, &first, DEFAULT_LEEWAY, clock.now())
            .unwrap()
            .exp;

        // 601 s left: still served from the cache.
        clock.advance(LIFETIME - MARGIN - Duration::from_secs(1));
        assert_eq!(cache.token_for(&user("a")).unwrap(), first);

        // 599 s left: a new token with a later expiry.
        clock.advance(Duration::from_secs(2));
        let second = cache.token_for(&user("a")).unwrap();
        assert_ne!(second, first);
        let second_exp = verify_at(SECRET, &second, DEFAULT_LEEWAY, clock.now())
            .unwrap()
            .exp;
        assert_eq!(second_exp, first_exp + 3001);
        assert_eq!(cache.token_for(&user("a")).unwrap(), second);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn changed_user_gets_a_new_token() {
        let (cache, clock) = cache(8);
        let original = user("a");
        let first = cache.token_for(&original).unwrap();

        let mut with_role = original.clone();
        with_role.set_roles(&["admin".into()]).unwrap();
        let mut with_group = original.clone();
        with_group.groups.push("physics".into());
        let mut renamed = original.clone();
        renamed.display_name = "Alice".into();

        let mut seen = vec![first.clone()];
        for changed in [with_role, with_group, renamed] {
            let token = cache.token_for(&changed).unwrap();
            assert!(!seen.contains(&token));
            let claims = verify_at(SECRET, &token, DEFAULT_LEEWAY, clock.now()).unwrap();
            assert_eq!(claims.user, changed);
            seen.push(token);
        }
        assert_eq!(cache.token_for(&original).unwrap(), first);
    }

    #[test]
    fn size_is_bounded() {
        let (cache, clock) = cache(3);
        for name in ["a", "b", "c"] {
            cache.token_for(&user(name)).unwrap();
            clock.advance(Duration::from_secs(1));
        }
        let c = cache.token_for(&user("c")).unwrap();
        assert_eq!(cache.len(), 3);

        cache.token_for(&user("d")).unwrap();
        assert_eq!(cache.len(), 3);
        // The entry expiring first ("a") made room; the others are still hits.
        assert_eq!(cache.token_for(&user("c")).unwrap(), c);
        assert_eq!(cache.len(), 3);

        // Once every entry is stale, inserting clears them all.
        clock.advance(LIFETIME);
        cache.token_for(&user("e")).unwrap();
        assert_eq!(cache.len(), 1);
    }
}
