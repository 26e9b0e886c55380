//! A store whose backend arrives after start-up.
//!
//! A node that starts while NATS is unreachable must not exit (under an orchestrator a crash loop
//! only adds restarts to the outage): it starts unready, keeps trying to connect, and becomes
//! ready once it has. Until the backend is [installed](DeferredStore::install) every operation
//! fails at once with `Unavailable` — callers already treat that as a store outage (cached
//! sessions keep working, what needs shared state gets 503) — and the change feed is quiet.
//! Installing forwards the backend's feed and announces a `Reset`, so that a near-cache in front
//! forgets anything it learnt while the backend was missing.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::broadcast::{self, error::RecvError};

use super::{Change, Entry, Store, StoreError, StoreResult};

/// Changes a slow subscriber may fall behind before it lags (and resets).
const FEED_CAPACITY: usize = 4096;

pub struct DeferredStore {
    kind: &'static str,
    /// What is being waited for, for the error callers see meanwhile.
    waiting_for: String,
    backend: OnceLock<Arc<dyn Store>>,
    /// `None` once the backend's own feed closed.
    feed: Mutex<Option<broadcast::Sender<Change>>>,
}

impl DeferredStore {
    /// `kind` is what [`Store::kind`] reports (that of the backend to come); `waiting_for`
    /// names it in errors, e.g. `NATS at nats-1:4222`.
    pub fn new(kind: &'static str, waiting_for: impl Into<String>) -> Arc<DeferredStore> {
        Arc::new(DeferredStore {
            kind,
            waiting_for: waiting_for.into(),
            backend: OnceLock::new(),
            feed: Mutex::new(Some(broadcast::channel(FEED_CAPACITY).0)),
        })
    }

    /// Makes `backend` serve every operation from now on. Returns false (and changes nothing)
    /// if a backend was installed before. Must be called inside a tokio runtime.
    pub fn install(self: &Arc<Self>, backend: Arc<dyn Store>) -> bool {
        // Subscribed before the backend becomes visible: no change it makes is missed.
        let mut from_backend = backend.changes();
        if self.backend.set(backend).is_err() {
            return false;
        }
        self.send(Change::Reset);
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let change = match from_backend.recv().await {
                    Ok(change) => change,
                    Err(RecvError::Lagged(_)) => Change::Reset,
                    Err(RecvError::Closed) => {
                        if let Some(me) = weak.upgrade() {
                            me.feed_sender().take();
                        }
                        return;
                    }
                };
                let Some(me) = weak.upgrade() else { return };
                me.send(change);
            }
        });
        true
    }

    /// The backend, once installed.
    pub fn backend(&self) -> Option<&Arc<dyn Store>> {
        self.backend.get()
    }

    fn feed_sender(&self) -> std::sync::MutexGuard<'_, Option<broadcast::Sender<Change>>> {
        self.feed.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send(&self, change: Change) {
        if let Some(tx) = self.feed_sender().as_ref() {
            // No subscriber is not an error.
            let _ = tx.send(change);
        }
    }

    fn ready(&self) -> StoreResult<&Arc<dyn Store>> {
        self.backend.get().ok_or_else(|| {
            StoreError::Unavailable(format!("not connected to {} yet", self.waiting_for))
        })
    }
}

#[async_trait]
impl Store for DeferredStore {
    async fn get(&self, key: &str) -> StoreResult<Option<Entry>> {
        self.ready()?.get(key).await
    }

    async fn put(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> StoreResult<u64> {
        self.ready()?.put(key, value, ttl).await
    }

    async fn create(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> StoreResult<u64> {
        self.ready()?.create(key, value, ttl).await
    }

    async fn update(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
        expected: u64,
    ) -> StoreResult<u64> {
        self.ready()?.update(key, value, ttl, expected).await
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.ready()?.delete(key).await
    }

    fn changes(&self) -> broadcast::Receiver<Change> {
        match self.feed_sender().as_ref() {
            Some(tx) => tx.subscribe(),
            None => broadcast::channel(1).1,
        }
    }

    fn kind(&self) -> &'static str {
        self.kind
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[tokio::test]
    async fn unavailable_until_installed_then_the_backend_with_its_feed() {
        let deferred = DeferredStore::new("memory", "the test backend");
        let mut feed = deferred.changes();
        let err = deferred.get("k").await.unwrap_err();
        assert!(err.is_retryable());
        assert!(
            err.to_string()
                .contains("not connected to the test backend yet"),
            "{err}"
        );
        assert!(deferred.put("k", b("v"), None).await.is_err());
        assert!(deferred.backend().is_none());

        let backend = Arc::new(MemoryStore::new());
        backend.put("before", b("1"), None).await.unwrap();
        assert!(deferred.install(backend.clone()));
        assert!(!deferred.install(Arc::new(MemoryStore::new())), "only once");
        assert_eq!(feed.recv().await.unwrap(), Change::Reset);
        assert_eq!(
            &deferred.get("before").await.unwrap().unwrap().value[..],
            b"1"
        );

        // Writes through the wrapper and by others arrive on the wrapper's feed.
        deferred.put("k", b("v"), None).await.unwrap();
        backend.put("other", b("w"), None).await.unwrap();
        let mut keys = Vec::new();
        for _ in 0..2 {
            keys.push(feed.recv().await.unwrap().key().unwrap().to_owned());
        }
        assert_eq!(keys, ["k", "other"]);
        assert_eq!(deferred.kind(), "memory");
    }

    #[tokio::test]
    async fn a_near_cache_in_front_forgets_what_it_learnt_before_the_backend() {
        use crate::store::{NearCache, NearCacheOptions};
        let deferred = DeferredStore::new("memory", "the test backend");
        let near = NearCache::new(
            deferred.clone(),
            NearCacheOptions {
                capacity: 100,
                op_timeout: Duration::from_secs(1),
            },
            None,
        );
        assert!(near.get("k").await.is_err(), "no backend yet");
        let backend = Arc::new(MemoryStore::new());
        backend.put("k", b("v"), None).await.unwrap();
        let before = near.stats().resets;
        deferred.install(backend);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while near.stats().resets == before {
            assert!(tokio::time::Instant::now() < deadline, "no reset announced");
            tokio::task::yield_now().await;
        }
        assert_eq!(&near.get("k").await.unwrap().unwrap().value[..], b"v");
    }
}
