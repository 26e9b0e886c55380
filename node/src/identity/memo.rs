//! A short-lived memo of what a bearer token resolved to, per worker.
//!
//! Resolving a cached token is already free of network calls, but it still hashes the token,
//! decodes the cached claims, reads the cached account and fingerprints the user for the minted
//! token — together more than the whole proxying of a small request. A client sends the same
//! token many times a second, so each worker remembers the final outcome (the minted
//! `x-access-token` and the MFA state) for [`MEMO_TTL`], never past the token's `exp`.
//!
//! The price is bounded staleness: a change of the user's role or groups reaches a worker at
//! most [`MEMO_TTL`] late. Refusals are never memoised. The memo is per worker (one
//! single-threaded runtime), so its lock is never contended.
//!
//! A back-channel logout must not wait that long (a session must be refused on every node
//! within 100 ms), and must never be undone by a memo. All memos of a node share a
//! [`MemoEpoch`]; entries put under an older epoch are ignored. [`spawn_invalidation`] advances it
//! whenever a logout marker (written by every logout, on any node) reaches the node's near-cache
//! — under the cache's lock, before any reader can see the marker — and when changes were lost.
//! The epoch of a request is read before its markers are checked (also on a claims-cache hit),
//! so a request either sees the marker or memoises under an epoch that is already outdated; no
//! interleaving can memoise an ended session. Stores without a local copy advance the epoch from
//! their change feed instead. Logouts are rare, so forgetting everything is cheap;
//! `get` pays one atomic load. Plain deletions do not advance the epoch: on NATS every expiring
//! claims record arrives as a deletion, which would flush the memos many times a second.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gatehouse_shared::oidc::sessions::{is_logout_marker, marker_traceparent};
use gatehouse_shared::store::{Change, Store};
use gatehouse_shared::trace::{self, propagate};
use http::HeaderValue;
use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanKind, TraceContextExt as _};
use opentelemetry_semantic_conventions::attribute as semconv;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

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
    /// The account id; `None` for a public share, which has no user.
    pub user: Option<Arc<str>>,
}

/// Entries are filed under a hash of the token's last [`HASHED_SUFFIX`] bytes (for a JWT, the
/// signature: distinct for distinct tokens) and matched on the whole token. A token is about
/// 1 KiB, and hashing all of it was a measurable share of a request.
#[derive(Debug, Default)]
pub struct IdentityMemo {
    entries: Mutex<Entries>,
    hasher: RandomState,
    epoch: MemoEpoch,
}

/// The memos of one worker: bearer tokens, and (where the signing-key store reports its changes
/// as they happen) signed URLs.
///
/// A signed URL's outcome is memoised under the whole request target (method, host, path and
/// query) for [`MEMO_TTL`], never past the URL's expiry, and only for requests without
/// `Authorization` or `public-token` (the only request fields besides the target that could
/// make another authenticator decide first). Its epoch advances on every change the
/// signing-key store reports locally — a key written, rotated or deleted, a step-up record —
/// before a reader can see the change, so a rotated or deleted key refuses its URLs at once, as
/// without the memo. A store that cannot report changes that way gets no signed-URL memo.
///
/// A public share's outcome is memoised under its share token, for requests whose outcome
/// depends on nothing else (`authn::public_share::memo_token`: no `Authorization`, no
/// `signature`), for [`MEMO_TTL`] and never past the share's remembered verdict or the renewal
/// of its minted token — so the memo changes nothing a request could observe: the share cache
/// would have answered the same within that time.
pub struct WorkerMemos {
    pub tokens: IdentityMemo,
    pub signed_urls: Option<IdentityMemo>,
    pub shares: IdentityMemo,
}

/// The node-wide generation of memoised identities; cheap to clone, clones share the counter.
#[derive(Debug, Clone, Default)]
pub struct MemoEpoch(Arc<AtomicU64>);

impl MemoEpoch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn current(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// Makes every entry put so far stale, in every memo sharing this epoch.
    pub fn advance(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
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
    epoch: u64,
}

const HASHED_SUFFIX: usize = 48;

impl IdentityMemo {
    /// A memo with its own epoch, which nothing advances (tests, tools).
    pub fn new() -> Self {
        Self::default()
    }

    /// A memo that forgets everything when `epoch` advances; one per worker, all sharing the
    /// node's epoch.
    pub fn with_epoch(epoch: MemoEpoch) -> Self {
        Self {
            epoch,
            ..Self::default()
        }
    }

    /// The epoch to pass to [`IdentityMemo::put_since`], read before resolving a token.
    pub fn epoch(&self) -> u64 {
        self.epoch.current()
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
        (now < entry.until && entry.epoch == self.epoch.current()).then(|| entry.prepared.clone())
    }

    /// Remembers `prepared` for `bearer` until `MEMO_TTL` from `now`, or the token's `exp`
    /// (Unix seconds) if that comes first. A token without `exp` is not remembered.
    pub fn put(&self, bearer: &str, prepared: Prepared, exp: Option<u64>, now: Instant) {
        self.put_since(bearer, prepared, exp, now, self.epoch());
    }

    /// Like [`IdentityMemo::put`] for an outcome whose resolution began at `epoch` (from
    /// [`IdentityMemo::epoch`]): if a logout advanced the epoch meanwhile, the outcome may
    /// predate the logout and is not remembered.
    pub fn put_since(
        &self,
        bearer: &str,
        prepared: Prepared,
        exp: Option<u64>,
        now: Instant,
        epoch: u64,
    ) {
        if epoch != self.epoch() {
            return;
        }
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
            epoch,
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

/// Advances `epoch` whenever `userinfo` (the user-info store, whose change feed carries every
/// node's writes) reports a logout marker, or reports that changes were lost (one of them may
/// have been a logout), until `shutdown`. Subscribes before returning, so nothing written after
/// the call is missed. Spawns on the current runtime.
pub fn spawn_invalidation(
    userinfo: &dyn Store,
    epoch: MemoEpoch,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    // Where the store can promise it, the epoch advances before any reader can see the marker:
    // a request either sees the marker or started before it and finds its memo outdated.
    let local = epoch.clone();
    userinfo.watch_local(Arc::new(move |key: Option<&str>| {
        if key.is_none_or(is_logout_marker) {
            local.advance();
        }
    }));
    let mut feed = userinfo.changes();
    tokio::spawn(async move {
        loop {
            let change = tokio::select! {
                _ = shutdown.cancelled() => return,
                change = feed.recv() => change,
            };
            match change {
                Ok(Change::Put { key, entry }) if is_logout_marker(&key) => {
                    applied_logout(&entry.value);
                    epoch.advance();
                }
                Ok(Change::Reset) | Err(RecvError::Lagged(_)) => epoch.advance(),
                Ok(_) => {}
                Err(RecvError::Closed) => {
                    tracing::warn!(
                        "user-info change feed closed: memoised identities now expire by time only"
                    );
                    return;
                }
            }
        }
    })
}

/// A trace of its own for this node's reaction to a logout another request recorded (on any
/// node), linked to that request's trace when the marker names it.
fn applied_logout(marker: &[u8]) {
    let Some(tp) = marker_traceparent(marker) else {
        return;
    };
    let cause = propagate::from_traceparent(tp);
    let sc = cause.span().span_context().clone();
    let span = trace::Span::root(
        "apply logout",
        SpanKind::Consumer,
        vec![(
            sc,
            vec![
                KeyValue::new(trace::CLUSTER_LINK, true),
                KeyValue::new("gatehouse.link.cause", "logout"),
            ],
        )],
    );
    span.set_with(|| {
        vec![
            KeyValue::new(semconv::MESSAGING_SYSTEM, "nats"),
            KeyValue::new(semconv::MESSAGING_OPERATION_TYPE, "process"),
            KeyValue::new("gatehouse.memo.dropped", true),
        ]
    });
    span.end();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepared(t: &'static str) -> Prepared {
        Prepared {
            token: HeaderValue::from_static(t),
            mfa: false,
            user: None,
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

    #[test]
    fn an_advanced_epoch_hides_earlier_entries_in_every_memo() {
        let epoch = MemoEpoch::new();
        let (a, b) = (
            IdentityMemo::with_epoch(epoch.clone()),
            IdentityMemo::with_epoch(epoch.clone()),
        );
        let now = Instant::now();
        a.put("tok", prepared("a"), exp_in(600), now);
        b.put("tok", prepared("b"), exp_in(600), now);
        assert!(a.get("tok", now).is_some() && b.get("tok", now).is_some());
        epoch.advance();
        assert!(a.get("tok", now).is_none());
        assert!(b.get("tok", now).is_none());
        // Entries put after the advance are served again.
        a.put("tok", prepared("a2"), exp_in(600), now);
        assert_eq!(a.get("tok", now).unwrap().token, "a2");
    }

    #[test]
    fn an_outcome_resolved_across_an_advance_is_not_remembered() {
        let epoch = MemoEpoch::new();
        let memo = IdentityMemo::with_epoch(epoch.clone());
        let now = Instant::now();
        let started = memo.epoch();
        epoch.advance();
        memo.put_since("tok", prepared("a"), exp_in(600), now, started);
        assert!(memo.get("tok", now).is_none());
        memo.put_since("tok", prepared("a"), exp_in(600), now, memo.epoch());
        assert!(memo.get("tok", now).is_some());
    }

    /// Polls `f` until it holds or the deadline passes.
    async fn eventually(what: &str, f: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test]
    async fn the_listener_forgets_memos_on_a_logout_marker_only() {
        use bytes::Bytes;
        use gatehouse_shared::oidc::sessions::{logged_out_sid_key, sessions_key};
        use gatehouse_shared::store::MemoryStore;

        let store = MemoryStore::new();
        let epoch = MemoEpoch::new();
        let memo = IdentityMemo::with_epoch(epoch.clone());
        let shutdown = CancellationToken::new();
        let task = spawn_invalidation(&store, epoch.clone(), shutdown.clone());
        let now = Instant::now();
        memo.put("tok", prepared("a"), exp_in(600), now);

        // Ordinary traffic — claims written, deleted (on NATS also: expired), session lists
        // updated — then a logout marker.
        store
            .put("hash", Bytes::from_static(b"x"), None)
            .await
            .unwrap();
        store
            .put(&sessions_key("u"), Bytes::from_static(b"[]"), None)
            .await
            .unwrap();
        store.delete("hash").await.unwrap();
        store
            .put(&logged_out_sid_key("s1"), Bytes::from_static(b"1"), None)
            .await
            .unwrap();
        eventually("the memo to forget the token", || {
            memo.get("tok", now).is_none()
        })
        .await;
        // The feed is ordered: the marker was the first change that advanced the epoch.
        assert_eq!(epoch.current(), 1);

        // Changes lost to lag may have been logouts: forget everything too.
        memo.put("tok", prepared("a"), exp_in(600), now);
        assert!(memo.get("tok", now).is_some());
        for i in 0..5_000 {
            store
                .put(&format!("k{i}"), Bytes::from_static(b"x"), None)
                .await
                .unwrap();
        }
        eventually("the lagged listener to forget", || {
            memo.get("tok", now).is_none()
        })
        .await;

        shutdown.cancel();
        task.await.unwrap();
    }
}
