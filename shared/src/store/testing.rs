//! A fault-injecting [`Store`] wrapper for tests, shared with the node's tests (which cannot see
//! this crate's `cfg(test)` items).
//!
//! Code that talks to the state store must be tested against a backend that is down, slow to
//! answer or racing another node; one wrapper with switches keeps those tests from each growing
//! their own copy of the whole trait. Nothing outside tests calls into this module.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{Barrier, broadcast};

use super::{Change, Entry, MemoryStore, Store, StoreError, StoreResult};

/// A store that forwards to another and lets a test count operations, make reads or writes fail
/// with a chosen error, and hold reads at a barrier.
///
/// Every call is counted, failed ones included. A read fails before it reaches the inner store;
/// a held read reaches it first and then waits, so that concurrent callers all see the same
/// state before any of them acts on it. `changes()` is the inner store's feed.
pub struct FaultyStore {
    inner: Arc<dyn Store>,
    reads: AtomicUsize,
    writes: AtomicUsize,
    read_error: Mutex<Option<StoreError>>,
    write_error: Mutex<Option<StoreError>>,
    hold: Mutex<Option<Arc<Hold>>>,
}

struct Hold {
    barrier: Barrier,
    remaining: AtomicUsize,
}

impl FaultyStore {
    /// A healthy wrapper around `inner`.
    pub fn new(inner: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            reads: AtomicUsize::new(0),
            writes: AtomicUsize::new(0),
            read_error: Mutex::new(None),
            write_error: Mutex::new(None),
            hold: Mutex::new(None),
        })
    }

    /// A healthy wrapper around a fresh [`MemoryStore`].
    pub fn memory() -> Arc<Self> {
        Self::new(Arc::new(MemoryStore::new()))
    }

    /// The store calls are forwarded to, for setting up state without counting or failing.
    pub fn inner(&self) -> &Arc<dyn Store> {
        &self.inner
    }

    /// `get` calls so far.
    pub fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }

    /// `put`, `create`, `update` and `delete` calls so far.
    pub fn writes(&self) -> usize {
        self.writes.load(Ordering::SeqCst)
    }

    /// From now on every `get` returns `err`; `None` makes reads healthy again.
    pub fn fail_reads(&self, err: Option<StoreError>) {
        *lock(&self.read_error) = err;
    }

    /// From now on every `put`, `create`, `update` and `delete` returns `err`; `None` makes
    /// writes healthy again.
    pub fn fail_writes(&self, err: Option<StoreError>) {
        *lock(&self.write_error) = err;
    }

    /// [`fail_reads`](Self::fail_reads) and [`fail_writes`](Self::fail_writes) with the same
    /// error: the backend as a whole is down (`Some`) or back (`None`).
    pub fn fail_all(&self, err: Option<StoreError>) {
        self.fail_reads(err.clone());
        self.fail_writes(err);
    }

    /// The next `n` reads that reach the inner store wait after reading until all `n` have read,
    /// then return together. `n == 0` holds nothing. Replaces any earlier hold.
    pub fn hold_reads(&self, n: usize) {
        *lock(&self.hold) = (n > 0).then(|| {
            Arc::new(Hold {
                barrier: Barrier::new(n),
                remaining: AtomicUsize::new(n),
            })
        });
    }

    fn check_write(&self) -> StoreResult<()> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        match lock(&self.write_error).clone() {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[async_trait]
impl Store for FaultyStore {
    async fn get(&self, key: &str) -> StoreResult<Option<Entry>> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        if let Some(err) = lock(&self.read_error).clone() {
            return Err(err);
        }
        let read = self.inner.get(key).await;
        let hold = lock(&self.hold).clone();
        if let Some(hold) = hold {
            let taken = hold
                .remaining
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
            if taken.is_ok() {
                hold.barrier.wait().await;
            }
        }
        read
    }

    async fn put(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> StoreResult<u64> {
        self.check_write()?;
        self.inner.put(key, value, ttl).await
    }

    async fn create(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> StoreResult<u64> {
        self.check_write()?;
        self.inner.create(key, value, ttl).await
    }

    async fn update(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
        expected: u64,
    ) -> StoreResult<u64> {
        self.check_write()?;
        self.inner.update(key, value, ttl, expected).await
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.check_write()?;
        self.inner.delete(key).await
    }

    fn changes(&self) -> broadcast::Receiver<Change> {
        self.inner.changes()
    }

    fn kind(&self) -> &'static str {
        "faulty"
    }

    /// The inner store's: its reports are not affected by injected faults.
    fn watch_local(&self, hook: super::LocalChangeHook) -> bool {
        self.inner.watch_local(hook)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn down() -> StoreError {
        StoreError::Unavailable("down".into())
    }

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[tokio::test]
    async fn healthy_it_forwards_and_counts() {
        let store = FaultyStore::memory();
        let mut feed = store.changes();
        let r1 = store.put("k", b("v1"), None).await.unwrap();
        assert_eq!(store.get("k").await.unwrap().unwrap().value, b("v1"));
        assert!(matches!(
            store.create("k", b("x"), None).await,
            Err(StoreError::Conflict { .. })
        ));
        store.update("k", b("v2"), None, r1).await.unwrap();
        assert_eq!(
            store.inner().get("k").await.unwrap().unwrap().value,
            b("v2")
        );
        store.delete("k").await.unwrap();
        assert_eq!(store.get("k").await.unwrap(), None);
        assert_eq!((store.reads(), store.writes()), (2, 4));
        assert_eq!(feed.recv().await.unwrap().key(), Some("k"));
        assert_eq!(store.kind(), "faulty");
    }

    #[tokio::test]
    async fn failing_reads_leave_writes_alone_and_are_counted() {
        let store = FaultyStore::memory();
        store.fail_reads(Some(down()));
        store.put("k", b("v"), None).await.unwrap();
        assert_eq!(store.get("k").await, Err(down()));
        assert_eq!(store.reads(), 1);
        store.fail_reads(None);
        assert_eq!(store.get("k").await.unwrap().unwrap().value, b("v"));
    }

    #[tokio::test]
    async fn failing_writes_change_nothing_and_are_counted() {
        let store = FaultyStore::memory();
        store.put("k", b("v"), None).await.unwrap();
        let timeout = StoreError::Timeout {
            op: "put",
            after: Duration::from_secs(1),
        };
        store.fail_writes(Some(timeout.clone()));
        assert_eq!(store.put("k", b("x"), None).await, Err(timeout.clone()));
        assert_eq!(store.create("n", b("x"), None).await, Err(timeout.clone()));
        assert_eq!(
            store.update("k", b("x"), None, 1).await,
            Err(timeout.clone())
        );
        assert_eq!(store.delete("k").await, Err(timeout));
        assert_eq!(store.writes(), 5);
        assert_eq!(store.get("k").await.unwrap().unwrap().value, b("v"));
        assert_eq!(store.inner().get("n").await.unwrap(), None);
        store.fail_writes(None);
        store.delete("k").await.unwrap();
        assert_eq!(store.get("k").await.unwrap(), None);
    }

    #[tokio::test]
    async fn fail_all_takes_the_whole_backend_down_and_back() {
        let store = FaultyStore::memory();
        store.fail_all(Some(down()));
        assert_eq!(store.get("k").await, Err(down()));
        assert_eq!(store.put("k", b("v"), None).await, Err(down()));
        store.fail_all(None);
        store.put("k", b("v"), None).await.unwrap();
        assert!(store.get("k").await.unwrap().is_some());
    }

    /// One executor thread: the spawned read can only stop short of returning if the hold
    /// works, since nothing else in its path waits.
    #[tokio::test]
    async fn held_reads_all_see_the_state_before_any_write() {
        let store = FaultyStore::memory();
        store.hold_reads(2);
        let first = {
            let store = store.clone();
            tokio::spawn(async move {
                let read = store.get("k").await.unwrap();
                store.put("k", b("first"), None).await.unwrap();
                read
            })
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while store.reads() < 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "first read never ran"
            );
            tokio::task::yield_now().await;
        }
        tokio::task::yield_now().await;
        assert!(!first.is_finished(), "the first read waits for a second");
        let second = store.get("k").await.unwrap();
        assert_eq!(second, None);
        assert_eq!(first.await.unwrap(), None);
        // The hold is used up: later reads return at once.
        assert_eq!(store.get("k").await.unwrap().unwrap().value, b("first"));
    }

    #[tokio::test]
    async fn a_zero_hold_holds_nothing_and_failed_reads_do_not_use_the_hold() {
        let store = FaultyStore::memory();
        store.hold_reads(0);
        assert_eq!(store.get("k").await.unwrap(), None);
        store.hold_reads(1);
        store.fail_reads(Some(down()));
        assert_eq!(store.get("k").await, Err(down()));
        store.fail_reads(None);
        // A barrier of one: the single held read passes on its own.
        assert_eq!(store.get("k").await.unwrap(), None);
        assert_eq!(store.reads(), 3);
    }
}
