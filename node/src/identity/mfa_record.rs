//! MFA inheritance for requests without claims (spec §6.1, newest oCIS).
//!
//! A signed-URL request carries no `acr` claim, so it cannot prove a second factor itself. oCIS
//! lets it inherit the MFA status of the user's last MFA-proven OIDC request: that request writes
//! `mfa:<user id>` = decimal Unix seconds into the signing-key store (bucket `proxy`, table
//! `signing-keys`), and a claim-less request counts as MFA while that record is younger than the
//! MFA session duration. The record format and place are oCIS's, so Go and Rust nodes agree.
//!
//! NATS buckets ignore per-record expiry, so the age is always computed from the value, never
//! inferred from the record's presence. The OIDC hot path reads before it writes and rewrites the
//! record only when it is older than [`REFRESH_AFTER`], so a busy MFA session costs one write per
//! minute instead of one per request.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use gatehouse_shared::store::{Store, StoreError};

/// Prefix of the record key; the rest is the user's opaque id.
pub const KEY_PREFIX: &str = "mfa:";

/// A record younger than this is not rewritten.
pub const REFRESH_AFTER: Duration = Duration::from_secs(60);

/// How far a record may lie in the future (clocks of the nodes that wrote it). A record beyond
/// this is treated as forged or broken: it proves nothing and is overwritten.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);

pub fn key(user_id: &str) -> String {
    format!("{KEY_PREFIX}{user_id}")
}

/// Notes that `user_id` just proved MFA. Returns whether a record was written (`false`: a fresh
/// enough one exists). The record's expiry is `session`, for stores that honour it.
pub async fn record(
    store: &dyn Store,
    user_id: &str,
    now: SystemTime,
    session: Duration,
) -> Result<bool, StoreError> {
    let key = key(user_id);
    if let Some(entry) = store.get(&key).await?
        && let Some(at) = parse(&entry.value)
        && age(at, now).is_some_and(|a| a < REFRESH_AFTER)
    {
        return Ok(false);
    }
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    store
        .put(&key, Bytes::from(secs.to_string()), Some(session))
        .await?;
    Ok(true)
}

/// Whether `user_id` proved MFA less than `session` ago. Fails closed: a missing, unreadable or
/// implausible record, or a store error, is `false`.
pub async fn proven(store: &dyn Store, user_id: &str, now: SystemTime, session: Duration) -> bool {
    match store.get(&key(user_id)).await {
        Ok(Some(entry)) => parse(&entry.value)
            .and_then(|at| age(at, now))
            .is_some_and(|a| a < session),
        Ok(None) => false,
        Err(e) => {
            tracing::debug!(user_id, error = %e, "MFA record unavailable; not inheriting MFA");
            false
        }
    }
}

/// Decimal Unix seconds, as Go's `strconv.ParseInt(v, 10, 64)` reads them (negative values are
/// valid numbers, just very old).
fn parse(value: &[u8]) -> Option<SystemTime> {
    let secs: i64 = std::str::from_utf8(value).ok()?.parse().ok()?;
    if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
    }
}

/// The age of a record written at `at`; zero when it lies up to [`MAX_CLOCK_SKEW`] in the future,
/// `None` beyond.
fn age(at: SystemTime, now: SystemTime) -> Option<Duration> {
    match now.duration_since(at) {
        Ok(age) => Some(age),
        Err(ahead) if ahead.duration() <= MAX_CLOCK_SKEW => Some(Duration::ZERO),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use gatehouse_shared::store::testing::FaultyStore;
    use gatehouse_shared::store::{Clock, ManualClock, MemoryStore, NoopStore};

    use super::*;

    const USER: &str = "4c510ada-c86b-4815-8820-42cdf82c3d51";
    const SESSION: Duration = Duration::from_secs(60);

    fn setup() -> (MemoryStore, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::default());
        (MemoryStore::with_clock(clock.clone()), clock)
    }

    async fn stored(store: &MemoryStore) -> Option<(String, u64)> {
        store
            .get(&key(USER))
            .await
            .unwrap()
            .map(|e| (String::from_utf8(e.value.to_vec()).unwrap(), e.revision))
    }

    fn unix(t: SystemTime) -> String {
        t.duration_since(UNIX_EPOCH).unwrap().as_secs().to_string()
    }

    #[tokio::test]
    async fn inherited_after_an_mfa_login() {
        let (store, clock) = setup();
        let login = clock.now();
        assert!(record(&store, USER, login, SESSION).await.unwrap());
        assert_eq!(stored(&store).await.unwrap().0, unix(login));
        let entry = store.get(&key(USER)).await.unwrap().unwrap();
        let expiry = entry.expires_at.unwrap().duration_since(login).unwrap();
        assert!(expiry > Duration::ZERO && expiry <= SESSION);
        clock.advance(Duration::from_secs(30));
        assert!(proven(&store, USER, clock.now(), SESSION).await);
    }

    #[tokio::test]
    async fn no_record_is_no_mfa() {
        let (store, clock) = setup();
        assert!(!proven(&store, USER, clock.now(), SESSION).await);
    }

    #[tokio::test]
    async fn a_record_older_than_the_session_is_no_mfa() {
        // The record outlives its expiry on NATS, so the age in the value decides.
        let (store, clock) = setup();
        let old = clock.now() - Duration::from_secs(61);
        store
            .put(&key(USER), Bytes::from(unix(old)), None)
            .await
            .unwrap();
        assert!(!proven(&store, USER, clock.now(), SESSION).await);
        let just_inside = clock.now() - Duration::from_secs(59);
        store
            .put(&key(USER), Bytes::from(unix(just_inside)), None)
            .await
            .unwrap();
        assert!(proven(&store, USER, clock.now(), SESSION).await);
    }

    #[tokio::test]
    async fn a_fresh_record_is_not_rewritten() {
        let (store, clock) = setup();
        let session = Duration::from_secs(3600);
        assert!(record(&store, USER, clock.now(), session).await.unwrap());
        let (first, revision) = stored(&store).await.unwrap();
        clock.advance(Duration::from_secs(59));
        assert!(!record(&store, USER, clock.now(), session).await.unwrap());
        assert_eq!(stored(&store).await.unwrap(), (first.clone(), revision));
        clock.advance(Duration::from_secs(1));
        assert!(record(&store, USER, clock.now(), session).await.unwrap());
        let (second, _) = stored(&store).await.unwrap();
        assert_eq!(second, unix(clock.now()));
        assert_ne!(second, first);
    }

    #[tokio::test]
    async fn implausible_records_prove_nothing_and_are_replaced() {
        let (store, clock) = setup();
        for junk in ["", "soon", "1.5e9", " 1700000000"] {
            store
                .put(&key(USER), Bytes::from(junk), None)
                .await
                .unwrap();
            assert!(
                !proven(&store, USER, clock.now(), SESSION).await,
                "{junk:?}"
            );
        }
        let far_future = clock.now() + Duration::from_secs(3600);
        store
            .put(&key(USER), Bytes::from(unix(far_future)), None)
            .await
            .unwrap();
        assert!(!proven(&store, USER, clock.now(), SESSION).await);
        assert!(record(&store, USER, clock.now(), SESSION).await.unwrap());
        assert!(proven(&store, USER, clock.now(), SESSION).await);
        // a little ahead (another node's clock) counts as fresh
        let slightly_ahead = clock.now() + Duration::from_secs(20);
        store
            .put(&key(USER), Bytes::from(unix(slightly_ahead)), None)
            .await
            .unwrap();
        assert!(proven(&store, USER, clock.now(), SESSION).await);
    }

    #[tokio::test]
    async fn store_errors_fail_closed() {
        let down = FaultyStore::memory();
        down.fail_all(Some(StoreError::Unavailable("no servers".into())));
        let now = SystemTime::now();
        assert!(!proven(down.as_ref(), USER, now, SESSION).await);
        let err = record(down.as_ref(), USER, now, SESSION).await.unwrap_err();
        assert!(err.is_retryable());
        assert!(!proven(&NoopStore::new(), USER, now, SESSION).await);
    }

    #[test]
    fn keys_follow_ocis() {
        assert_eq!(key(USER), format!("mfa:{USER}"));
    }
}
