//! The store side of back-channel logout: recording which cached tokens belong to which session
//! and subject, ending them, and refusing them afterwards (formats and rationale in
//! `gatehouse_shared::oidc::sessions`).
//!
//! Ordering matters for the race with a node that is resolving a token of the session while the
//! logout runs. Logout writes the markers first, then reads the indexes and deletes what they
//! name. The resolving node checks the markers before it asks userinfo and again after it has
//! written the claims; if the second check finds a marker it deletes what it wrote. Either the
//! logout finds the new claims through the index, or the resolver sees the marker — up to the
//! change feed's delay between nodes. Between the markers and the deletion the claims are still
//! cached, so a claims-cache hit checks the markers too (near-cache reads: absence is cached); the
//! per-worker memo is kept honest by `identity::memo`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use gatehouse_shared::oidc::sessions::{
    LoggedOut, SessionEntry, SessionList, check_markers, decode_logout_time, encode_logout_time,
    encode_sid_marker, logged_out_sid_key, logged_out_sub_key, sessions_key,
};
use gatehouse_shared::oidc::{Claims, Logout, decode_claims};
use gatehouse_shared::store::{Store, StoreError, StoreResult};
use gatehouse_shared::trace::propagate;
use serde_json::Value;

/// Compare-and-set attempts before a list update gives up (each lost round means another node
/// wrote the same record in between).
const CAS_ATTEMPTS: usize = 8;

/// The identifiers of a token that logout markers are checked against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionIds {
    pub sid: Option<String>,
    pub sub: Option<String>,
    pub iat: Option<i64>,
}

impl SessionIds {
    pub fn of(claims: &Claims) -> Self {
        let text = |name: &str| {
            claims
                .get(name)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        Self {
            sid: text("sid"),
            sub: text("sub"),
            iat: claims.get("iat").and_then(Value::as_i64),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.sid.is_none() && self.sub.is_none()
    }
}

/// A cached token that a logout removed.
#[derive(Debug, Clone, PartialEq)]
pub struct EndedSession {
    /// The user-info cache key of the token.
    pub hash: String,
    /// The session the token belonged to, when known.
    pub sid: Option<String>,
    /// The cached claims, when they could still be read (for the logout event).
    pub claims: Option<Claims>,
}

pub fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The time from `now` to `exp` (Unix seconds), `None` if that has passed.
fn ttl_until(exp: i64, now: SystemTime) -> Option<Duration> {
    let exp = UNIX_EPOCH + Duration::from_secs(u64::try_from(exp).ok()?);
    exp.duration_since(now).ok().filter(|d| !d.is_zero())
}

/// Reads `key`, lets `change` compute the new value from the current one (`None`: leave it), and
/// writes it only if nobody wrote in between, retrying otherwise.
async fn modify(
    store: &dyn Store,
    key: &str,
    change: impl Fn(Option<&[u8]>) -> Option<(Vec<u8>, Duration)>,
) -> StoreResult<()> {
    for _ in 0..CAS_ATTEMPTS {
        let current = store.get(key).await?;
        let (revision, value) = match &current {
            Some(e) => (e.revision, Some(&e.value[..])),
            None => (0, None),
        };
        let Some((bytes, ttl)) = change(value) else {
            return Ok(());
        };
        match store
            .update(key, Bytes::from(bytes), Some(ttl), revision)
            .await
        {
            Ok(_) => return Ok(()),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Conflict {
        key: key.to_owned(),
    })
}

/// Adds a freshly cached token to its subject's session list.
pub async fn record(
    store: &dyn Store,
    sub: &str,
    hash: &str,
    sid: Option<&str>,
    exp: i64,
    now: SystemTime,
) -> StoreResult<()> {
    let now_secs = unix(now);
    let entry = SessionEntry {
        hash: hash.to_owned(),
        sid: sid.map(str::to_owned),
        exp,
    };
    modify(store, &sessions_key(sub), |current| {
        let mut list = current.map(SessionList::decode).unwrap_or_default();
        if !list.add(entry.clone(), now_secs) {
            return None;
        }
        let ttl = ttl_until(list.last_exp()?, now)?;
        Some((list.encode(), ttl))
    })
    .await
}

/// Whether a logout marker refuses a token with these identifiers. A store failure does not
/// refuse (logged): the markers are a guarantee beyond oCIS, and an unreachable store must not
/// turn every new login away.
pub async fn refusal(store: &dyn Store, ids: &SessionIds) -> Option<LoggedOut> {
    let read = |key: Option<String>| async move {
        let key = key?;
        match store.get(&key).await {
            Ok(entry) => entry.map(|e| e.value),
            Err(e) => {
                tracing::warn!(error = %e, "logout marker unreadable; not applied");
                None
            }
        }
    };
    let (sid, sub) = futures::join!(
        read(ids.sid.as_deref().map(logged_out_sid_key)),
        read(ids.sub.as_deref().map(logged_out_sub_key)),
    );
    let sub_logout = sub.and_then(|v| decode_logout_time(&v));
    check_markers(sid.is_some(), sub_logout, ids.iat).err()
}

/// Ends what `logout` names: with a `sid` that session (every cached token of it the indexes
/// know), otherwise every session of the `sub`. Markers are written first so that the tokens
/// stay refused; `marker_ttl` is how long a token issued before the logout may stay valid.
/// Fails (and the endpoint answers 400) when a marker cannot be written or a cached token
/// cannot be deleted; index clean-up failures are only logged.
pub async fn end(
    store: &dyn Store,
    logout: &Logout,
    now: SystemTime,
    marker_ttl: Duration,
) -> StoreResult<Vec<EndedSession>> {
    let now_secs = unix(now);
    let mut hashes: Vec<(String, Option<String>)> = Vec::new();
    let add = |hashes: &mut Vec<(String, Option<String>)>, hash: &str, sid: Option<&str>| {
        if !hashes.iter().any(|(h, _)| h == hash) {
            hashes.push((hash.to_owned(), sid.map(str::to_owned)));
        }
    };
    let list_key;
    if let Some(sid) = &logout.sid {
        let stamp = encode_sid_marker(now_secs, propagate::current_traceparent().as_deref());
        store
            .put(
                &logged_out_sid_key(sid),
                Bytes::from(stamp),
                Some(marker_ttl),
            )
            .await?;
        let mut sub = logout.sub.clone();
        if let Some(entry) = store.get(sid).await? {
            let hash = String::from_utf8_lossy(&entry.value).into_owned();
            if sub.is_none() {
                sub = read_claims(store, &hash)
                    .await
                    .and_then(|c| SessionIds::of(&c).sub);
            }
            add(&mut hashes, &hash, Some(sid));
        }
        if let Some(sub) = &sub
            && let Some(entry) = store.get(&sessions_key(sub)).await?
        {
            for hash in SessionList::decode(&entry.value).hashes_of_sid(sid) {
                add(&mut hashes, hash, Some(sid));
            }
        }
        list_key = None;
    } else if let Some(sub) = &logout.sub {
        let at = logout.iat.unwrap_or(now_secs);
        modify(store, &logged_out_sub_key(sub), |current| {
            // A replayed older logout token must not move the mark back. The marker is written
            // even when unchanged: that write is what makes every node drop its memos.
            let mark = current
                .and_then(decode_logout_time)
                .map_or(at, |p| p.max(at));
            Some((encode_logout_time(mark), marker_ttl))
        })
        .await?;
        let key = sessions_key(sub);
        if let Some(entry) = store.get(&key).await? {
            for e in SessionList::decode(&entry.value).0 {
                add(&mut hashes, &e.hash, e.sid.as_deref());
            }
        }
        list_key = Some(key);
    } else {
        return Ok(Vec::new());
    }

    let mut ended = Vec::with_capacity(hashes.len());
    for (hash, sid) in hashes {
        let claims = read_claims(store, &hash).await;
        store.delete(&hash).await?;
        ended.push(EndedSession { hash, sid, claims });
    }
    let index = match (&logout.sid, list_key) {
        (Some(sid), _) => sid.clone(),
        (None, Some(key)) => key,
        (None, None) => return Ok(ended),
    };
    if let Err(e) = store.delete(&index).await {
        tracing::warn!(error = %e, "logout: session index not removed");
    }
    Ok(ended)
}

/// The cached claims under `hash`, `None` when absent or unreadable (only the event needs them).
async fn read_claims(store: &dyn Store, hash: &str) -> Option<Claims> {
    match store.get(hash).await {
        Ok(Some(entry)) => decode_claims(&entry.value).ok(),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, "logout: cached claims unreadable");
            None
        }
    }
}
