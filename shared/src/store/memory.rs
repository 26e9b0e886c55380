//! A process-local [`Store`]: the single-node default and the reference implementation the
//! networked store and the near-cache are tested against.
//!
//! Expiry is checked on read against an injectable [`Clock`]; expired entries behave as absent
//! (so `create` over one succeeds) and are swept out periodically on writes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::broadcast;

use super::clock::{Clock, SystemClock};
use super::{Change, Entry, LocalChangeHook, Store, StoreError, StoreResult};

/// Capacity of the change feed; a subscriber that falls further behind sees `Lagged`.
const FEED_CAPACITY: usize = 4096;
/// Expired entries are swept after this many writes.
const SWEEP_EVERY: u64 = 1024;

pub struct MemoryStore {
    state: Mutex<State>,
    feed: broadcast::Sender<Change>,
    clock: Arc<dyn Clock>,
}

#[derive(Default)]
struct State {
    map: HashMap<String, Entry>,
    revision: u64,
    writes_since_sweep: u64,
    /// [`Store::watch_local`] subscribers, told of every write and deletion under the lock.
    hooks: Vec<LocalChangeHook>,
}

impl State {
    fn changed(&self, key: &str) {
        for hook in &self.hooks {
            hook(Some(key));
        }
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        let (feed, _) = broadcast::channel(FEED_CAPACITY);
        Self {
            state: Mutex::new(State::default()),
            feed,
            clock,
        }
    }

    /// Number of entries held, expired ones included until they are swept.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores `value` under `key` if `allowed` accepts the current (possibly expired) entry.
    fn write(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
        allowed: impl FnOnce(Option<&Entry>, std::time::SystemTime) -> bool,
    ) -> StoreResult<u64> {
        let now = self.clock.now();
        let mut state = self.lock();
        if !allowed(state.map.get(key), now) {
            return Err(StoreError::Conflict {
                key: key.to_owned(),
            });
        }
        state.revision += 1;
        let entry = Entry {
            value,
            expires_at: ttl.map(|t| now + t),
            revision: state.revision,
        };
        state.map.insert(key.to_owned(), entry.clone());
        state.writes_since_sweep += 1;
        if state.writes_since_sweep >= SWEEP_EVERY {
            state.writes_since_sweep = 0;
            state.map.retain(|_, e| !e.is_expired(now));
        }
        state.changed(key);
        // Sent under the lock so that subscribers see changes in revision order.
        let _ = self.feed.send(Change::Put {
            key: key.to_owned(),
            entry: entry.clone(),
        });
        Ok(entry.revision)
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn get(&self, key: &str) -> StoreResult<Option<Entry>> {
        let now = self.clock.now();
        Ok(self
            .lock()
            .map
            .get(key)
            .filter(|e| !e.is_expired(now))
            .cloned())
    }

    async fn put(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> StoreResult<u64> {
        self.write(key, value, ttl, |_, _| true)
    }

    async fn create(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> StoreResult<u64> {
        self.write(key, value, ttl, |cur, now| {
            cur.is_none_or(|e| e.is_expired(now))
        })
    }

    /// `expected == 0` means "no live entry" (like `create`); otherwise the stored revision must
    /// match, even if that entry has expired in the meantime (as on NATS, where the revision is
    /// the last message's sequence regardless of the envelope's expiry).
    async fn update(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
        expected: u64,
    ) -> StoreResult<u64> {
        if expected == 0 {
            return self.create(key, value, ttl).await;
        }
        self.write(key, value, ttl, |cur, _| {
            cur.is_some_and(|e| e.revision == expected)
        })
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        let mut state = self.lock();
        if state.map.remove(key).is_some() {
            state.revision += 1;
            state.changed(key);
            let _ = self.feed.send(Change::Delete {
                key: key.to_owned(),
                revision: state.revision,
            });
        }
        Ok(())
    }

    fn changes(&self) -> broadcast::Receiver<Change> {
        self.feed.subscribe()
    }

    fn kind(&self) -> &'static str {
        "memory"
    }

    /// Everything here is local: every write and deletion is reported before it can be read.
    fn watch_local(&self, hook: LocalChangeHook) -> bool {
        self.lock().hooks.push(hook);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ManualClock;

    fn store() -> (MemoryStore, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::default());
        (MemoryStore::with_clock(clock.clone()), clock)
    }

    #[tokio::test]
    async fn local_hooks_hear_every_write_and_deletion_before_it_returns() {
        let (s, _) = store();
        let heard = Arc::new(Mutex::new(Vec::new()));
        let log = heard.clone();
        assert!(s.watch_local(Arc::new(move |key: Option<&str>| {
            log.lock().unwrap().push(key.map(str::to_owned));
        })));
        s.put("a", Bytes::from_static(b"1"), None).await.unwrap();
        s.create("b", Bytes::from_static(b"1"), None).await.unwrap();
        assert!(s.create("b", Bytes::from_static(b"2"), None).await.is_err());
        s.delete("a").await.unwrap();
        s.delete("a").await.unwrap();
        let heard = heard.lock().unwrap().clone();
        let some = |k: &str| Some(k.to_owned());
        assert_eq!(
            heard,
            [some("a"), some("b"), some("a")],
            "a refused write or a no-op delete is no change"
        );
    }

    #[tokio::test]
    async fn put_get_delete_with_revisions_and_feed() {
        let (s, _) = store();
        let mut feed = s.changes();
        assert_eq!(s.get("a").await.unwrap(), None);
        let r1 = s.put("a", Bytes::from_static(b"1"), None).await.unwrap();
        let r2 = s.put("a", Bytes::from_static(b"2"), None).await.unwrap();
        assert!(r2 > r1);
        let e = s.get("a").await.unwrap().unwrap();
        assert_eq!(
            (&e.value[..], e.revision, e.expires_at),
            (&b"2"[..], r2, None)
        );
        s.delete("a").await.unwrap();
        assert_eq!(s.get("a").await.unwrap(), None);
        s.delete("a").await.unwrap();

        assert!(
            matches!(feed.recv().await.unwrap(), Change::Put { key, entry } if key == "a" && entry.revision == r1)
        );
        assert!(
            matches!(feed.recv().await.unwrap(), Change::Put { entry, .. } if entry.revision == r2)
        );
        assert!(
            matches!(feed.recv().await.unwrap(), Change::Delete { key, revision } if key == "a" && revision > r2)
        );
        assert!(feed.try_recv().is_err(), "deleting a missing key is silent");
    }

    #[tokio::test]
    async fn create_and_update_are_compare_and_set() {
        let (s, _) = store();
        let r1 = s.create("k", Bytes::from_static(b"1"), None).await.unwrap();
        assert_eq!(
            s.create("k", Bytes::from_static(b"x"), None).await,
            Err(StoreError::Conflict { key: "k".into() })
        );
        assert!(matches!(
            s.update("k", Bytes::from_static(b"x"), None, r1 + 100)
                .await,
            Err(StoreError::Conflict { .. })
        ));
        let r2 = s
            .update("k", Bytes::from_static(b"2"), None, r1)
            .await
            .unwrap();
        assert!(matches!(
            s.update("k", Bytes::from_static(b"3"), None, r1).await,
            Err(StoreError::Conflict { .. })
        ));
        assert_eq!(&s.get("k").await.unwrap().unwrap().value[..], b"2");
        assert!(r2 > r1);
        assert!(matches!(
            s.update("missing", Bytes::new(), None, 7).await,
            Err(StoreError::Conflict { .. })
        ));
        s.update("fresh", Bytes::new(), None, 0).await.unwrap();
    }

    #[tokio::test]
    async fn expiry_is_checked_on_read() {
        let (s, clock) = store();
        s.put("k", Bytes::from_static(b"v"), Some(Duration::from_secs(10)))
            .await
            .unwrap();
        clock.advance(Duration::from_secs(9));
        let e = s.get("k").await.unwrap().unwrap();
        assert_eq!(e.expires_at, Some(clock.now() + Duration::from_secs(1)));
        clock.advance(Duration::from_secs(1));
        assert_eq!(s.get("k").await.unwrap(), None);
        // The expired entry does not block `create`.
        s.create("k", Bytes::from_static(b"new"), None)
            .await
            .unwrap();
        assert_eq!(&s.get("k").await.unwrap().unwrap().value[..], b"new");
    }

    #[tokio::test]
    async fn expired_entries_are_swept() {
        let (s, clock) = store();
        for i in 0..10 {
            s.put(
                &format!("old{i}"),
                Bytes::new(),
                Some(Duration::from_secs(1)),
            )
            .await
            .unwrap();
        }
        clock.advance(Duration::from_secs(2));
        for i in 0..SWEEP_EVERY {
            s.put(&format!("new{}", i % 5), Bytes::new(), None)
                .await
                .unwrap();
        }
        assert_eq!(s.len(), 5);
    }
}
