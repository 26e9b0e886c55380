//! A bounded in-process cache in front of a (networked) [`Store`], kept coherent by the store's
//! change feed, so that the request path answers most reads without a network round trip.
//!
//! Rules:
//! - A live local entry answers `get` without touching the inner store. Expired local entries
//!   are dropped and count as a miss.
//! - Misses go to the inner store under `op_timeout` and fill the cache, including "not found":
//!   absence is cached as a negative entry. Both kinds are replaced or removed by the change feed.
//! - Every change from the feed is applied: `Put` installs the entry (even for keys this node never
//!   read, so the cache is a bounded replica of the hottest keys), `Delete` installs a negative
//!   entry, `Reset` (the feed lost events) clears everything. An entry is only replaced by one with
//!   a higher revision (revision 0, "store without revisions", always replaces 0), so a late event
//!   cannot roll a key back.
//! - Fill race: a read that started before a change for the same key was applied does not install
//!   its (possibly older) result. Each miss registers the key as in flight together with the cache's
//!   change sequence number; changes mark in-flight keys; a marked fill answers its caller but
//!   leaves the cache alone.
//! - Writes go to the inner store under `op_timeout` and update the local copy on success.
//!   A local `delete` leaves a negative entry at the last revision seen for the key; a `Conflict`
//!   evicts the key (the local copy was evidently stale).
//! - Capacity is bounded; when full, a second-chance (CLOCK) sweep evicts an entry not read since
//!   the last sweep passed it.
//! - If the feed closes, coherence can no longer be guaranteed: the cache empties itself and
//!   every read goes to the inner store from then on.
//! - [`Store::watch_local`] hooks are called under the cache's lock before a key's new value is
//!   installed (by a write, the feed or a fill) and before a reset, so whatever a hook records
//!   happens before any reader can see the change.
//! - The cache's own change feed ([`Store::changes`]) repeats the inner feed, each change only
//!   after it has been applied here. A subscriber that reacts to a change (the identity memo
//!   forgetting sessions on a logout marker) can rely on every read it makes afterwards seeing
//!   it; with the inner feed it could read the cache a moment before the change arrived.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::broadcast::{self, error::RecvError};

use super::clock::{Clock, SystemClock};
use super::{Change, Entry, LocalChangeHook, Store, StoreError, StoreResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NearCacheOptions {
    /// Maximum number of keys held (positive and negative entries). 0 disables caching.
    pub capacity: usize,
    /// Deadline for every call to the inner store.
    pub op_timeout: Duration,
}

/// How one store operation ended, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// `get` answered from the local cache (including a cached "not found").
    LocalHit,
    /// `get` missed locally and found the key in the inner store.
    RemoteHit,
    /// `get` missed locally and the inner store has no live entry.
    Miss,
    /// A write succeeded.
    Ok,
    /// `create`/`update` lost the compare-and-set.
    Conflict,
    /// The inner store failed or timed out.
    Error,
}

impl Outcome {
    /// A stable label value for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::LocalHit => "local_hit",
            Outcome::RemoteHit => "remote_hit",
            Outcome::Miss => "miss",
            Outcome::Ok => "ok",
            Outcome::Conflict => "conflict",
            Outcome::Error => "error",
        }
    }
}

/// Receives one call per near-cache operation (the node wires this to its metrics).
pub trait StoreObserver: Send + Sync {
    fn observe(&self, store: &'static str, op: &'static str, outcome: Outcome, elapsed: Duration);
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NearCacheStats {
    pub local_hits: u64,
    pub remote_hits: u64,
    pub misses: u64,
    pub errors: u64,
    /// Change-feed events applied (including `Reset`).
    pub changes_applied: u64,
    pub resets: u64,
    /// Keys currently held.
    pub entries: usize,
}

pub struct NearCache {
    shared: Arc<Shared>,
    feed_task: tokio::task::AbortHandle,
}

struct Shared {
    inner: Arc<dyn Store>,
    name: &'static str,
    opts: NearCacheOptions,
    observer: Option<Arc<dyn StoreObserver>>,
    clock: Arc<dyn Clock>,
    cache: Mutex<Cache>,
    local_hits: AtomicU64,
    remote_hits: AtomicU64,
    misses: AtomicU64,
    errors: AtomicU64,
    changes_applied: AtomicU64,
    resets: AtomicU64,
    /// Where applied changes are repeated; `None` once the inner feed closed.
    applied: Mutex<Option<broadcast::Sender<Change>>>,
}

/// Changes a slow subscriber of the cache's own feed may fall behind before it lags.
const APPLIED_FEED_CAPACITY: usize = 4096;

impl NearCache {
    /// Wraps `inner`; metrics are labelled with `inner.kind()`. Must be called inside a tokio
    /// runtime (it spawns the task that applies the change feed).
    pub fn new(
        inner: Arc<dyn Store>,
        opts: NearCacheOptions,
        observer: Option<Arc<dyn StoreObserver>>,
    ) -> Arc<NearCache> {
        let name = inner.kind();
        Self::with_clock(name, inner, opts, observer, Arc::new(SystemClock))
    }

    /// Like [`NearCache::new`] with an explicit metrics label (e.g. `signing-keys`).
    pub fn named(
        name: &'static str,
        inner: Arc<dyn Store>,
        opts: NearCacheOptions,
        observer: Option<Arc<dyn StoreObserver>>,
    ) -> Arc<NearCache> {
        Self::with_clock(name, inner, opts, observer, Arc::new(SystemClock))
    }

    /// Full constructor; the clock decides local expiry.
    pub fn with_clock(
        name: &'static str,
        inner: Arc<dyn Store>,
        opts: NearCacheOptions,
        observer: Option<Arc<dyn StoreObserver>>,
        clock: Arc<dyn Clock>,
    ) -> Arc<NearCache> {
        // Subscribe before returning so that no change made after construction is missed.
        let feed = inner.changes();
        let shared = Arc::new(Shared {
            inner,
            name,
            opts,
            observer,
            clock,
            cache: Mutex::new(Cache::default()),
            local_hits: AtomicU64::new(0),
            remote_hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            changes_applied: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            applied: Mutex::new(Some(broadcast::channel(APPLIED_FEED_CAPACITY).0)),
        });
        let feed_task = tokio::spawn(run_feed(Arc::downgrade(&shared), feed)).abort_handle();
        Arc::new(NearCache { shared, feed_task })
    }

    pub fn stats(&self) -> NearCacheStats {
        let s = &self.shared;
        NearCacheStats {
            local_hits: s.local_hits.load(Ordering::Relaxed),
            remote_hits: s.remote_hits.load(Ordering::Relaxed),
            misses: s.misses.load(Ordering::Relaxed),
            errors: s.errors.load(Ordering::Relaxed),
            changes_applied: s.changes_applied.load(Ordering::Relaxed),
            resets: s.resets.load(Ordering::Relaxed),
            entries: s.lock().slots.len(),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Arc<dyn Store> {
        &self.shared.inner
    }

    /// Drops every local entry (the next reads go to the inner store).
    pub fn clear(&self) {
        self.shared.lock().reset();
    }
}

impl Drop for NearCache {
    fn drop(&mut self) {
        self.feed_task.abort();
    }
}

async fn run_feed(shared: Weak<Shared>, mut feed: broadcast::Receiver<Change>) {
    loop {
        let change = match feed.recv().await {
            Ok(change) => change,
            Err(RecvError::Lagged(n)) => {
                tracing::warn!(
                    lost = n,
                    "near-cache change feed lagged; clearing the cache"
                );
                Change::Reset
            }
            Err(RecvError::Closed) => {
                if let Some(shared) = shared.upgrade() {
                    tracing::warn!(
                        store = shared.name,
                        "change feed closed; near-cache disabled"
                    );
                    let mut cache = shared.lock();
                    cache.reset();
                    cache.disabled = true;
                    drop(cache);
                    // Subscribers learn that the feed closed.
                    shared.applied_feed().take();
                }
                return;
            }
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.apply_change(change.clone());
        if let Some(tx) = shared.applied_feed().as_ref() {
            // No subscriber is not an error.
            let _ = tx.send(change);
        }
    }
}

fn timeout_error(op: &'static str, after: Duration) -> StoreError {
    StoreError::Timeout { op, after }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn applied_feed(&self) -> MutexGuard<'_, Option<broadcast::Sender<Change>>> {
        self.applied.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn observe(&self, op: &'static str, outcome: Outcome, started: tokio::time::Instant) {
        let counter = match outcome {
            Outcome::LocalHit => Some(&self.local_hits),
            Outcome::RemoteHit => Some(&self.remote_hits),
            Outcome::Miss => Some(&self.misses),
            Outcome::Error => Some(&self.errors),
            Outcome::Ok | Outcome::Conflict => None,
        };
        if let Some(c) = counter {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(o) = &self.observer {
            o.observe(self.name, op, outcome, started.elapsed());
        }
    }

    fn apply_change(&self, change: Change) {
        let now = self.clock.now();
        let mut cache = self.lock();
        match change {
            Change::Put { key, entry } => {
                let revision = entry.revision;
                let entry = (!entry.is_expired(now)).then_some(entry);
                cache.apply(&key, entry, revision, self.opts.capacity);
            }
            Change::Delete { key, revision } => {
                cache.apply(&key, None, revision, self.opts.capacity);
            }
            Change::Reset => {
                cache.reset();
                self.resets.fetch_add(1, Ordering::Relaxed);
            }
        }
        drop(cache);
        self.changes_applied.fetch_add(1, Ordering::Relaxed);
    }

    async fn bounded<T>(
        &self,
        op: &'static str,
        fut: impl std::future::Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        match tokio::time::timeout(self.opts.op_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(timeout_error(op, self.opts.op_timeout)),
        }
    }

    /// Records the outcome of a write and updates the local copy.
    fn finish_write(
        &self,
        op: &'static str,
        key: &str,
        result: &StoreResult<u64>,
        written: impl FnOnce(u64) -> Entry,
        started: tokio::time::Instant,
    ) {
        match result {
            Ok(revision) => {
                let entry = written(*revision);
                let mut cache = self.lock();
                if !cache.disabled {
                    cache.apply(key, Some(entry), *revision, self.opts.capacity);
                }
                drop(cache);
                self.observe(op, Outcome::Ok, started);
            }
            Err(StoreError::Conflict { .. }) => {
                self.lock().evict(key);
                self.observe(op, Outcome::Conflict, started);
            }
            Err(_) => {
                // The write may or may not have happened.
                self.lock().evict(key);
                self.observe(op, Outcome::Error, started);
            }
        }
    }

    fn expiry(&self, ttl: Option<Duration>) -> Option<SystemTime> {
        ttl.map(|t| self.clock.now() + t)
    }
}

/// Unregisters an in-flight fill even if the caller's future is dropped mid-read.
struct InflightGuard<'a> {
    shared: &'a Shared,
    key: &'a str,
    done: bool,
}

impl InflightGuard<'_> {
    /// Finishes the fill: installs `found` unless a change for the key (or a reset) was applied
    /// since the read started.
    fn complete(mut self, started_at_seq: u64, found: &Option<Entry>) {
        self.done = true;
        let now = self.shared.clock.now();
        let mut cache = self.shared.lock();
        let changed = cache.release(self.key, started_at_seq);
        if changed || cache.disabled {
            return;
        }
        match found {
            Some(e) if e.is_expired(now) => {}
            Some(e) => cache.install(
                self.key,
                Some(e.clone()),
                e.revision,
                self.shared.opts.capacity,
            ),
            None => cache.install(self.key, None, 0, self.shared.opts.capacity),
        }
    }
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.shared.lock().release(self.key, 0);
        }
    }
}

#[async_trait]
impl Store for NearCache {
    async fn get(&self, key: &str) -> StoreResult<Option<Entry>> {
        let s = &*self.shared;
        let started = tokio::time::Instant::now();
        let seq = {
            let now = s.clock.now();
            let mut cache = s.lock();
            if !cache.disabled
                && let Some(hit) = cache.lookup(key, now)
            {
                drop(cache);
                s.observe("get", Outcome::LocalHit, started);
                return Ok(hit);
            }
            cache.register(key)
        };
        let guard = InflightGuard {
            shared: s,
            key,
            done: false,
        };
        match s.bounded("get", s.inner.get(key)).await {
            Ok(found) => {
                guard.complete(seq, &found);
                let outcome = if found.is_some() {
                    Outcome::RemoteHit
                } else {
                    Outcome::Miss
                };
                s.observe("get", outcome, started);
                Ok(found)
            }
            Err(e) => {
                drop(guard);
                s.observe("get", Outcome::Error, started);
                Err(e)
            }
        }
    }

    async fn put(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> StoreResult<u64> {
        let s = &*self.shared;
        let started = tokio::time::Instant::now();
        let expires_at = s.expiry(ttl);
        let r = s.bounded("put", s.inner.put(key, value.clone(), ttl)).await;
        s.finish_write(
            "put",
            key,
            &r,
            |revision| Entry {
                value,
                expires_at,
                revision,
            },
            started,
        );
        r
    }

    async fn create(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> StoreResult<u64> {
        let s = &*self.shared;
        let started = tokio::time::Instant::now();
        let expires_at = s.expiry(ttl);
        let r = s
            .bounded("create", s.inner.create(key, value.clone(), ttl))
            .await;
        s.finish_write(
            "create",
            key,
            &r,
            |revision| Entry {
                value,
                expires_at,
                revision,
            },
            started,
        );
        r
    }

    async fn update(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
        expected: u64,
    ) -> StoreResult<u64> {
        let s = &*self.shared;
        let started = tokio::time::Instant::now();
        let expires_at = s.expiry(ttl);
        let r = s
            .bounded("update", s.inner.update(key, value.clone(), ttl, expected))
            .await;
        s.finish_write(
            "update",
            key,
            &r,
            |revision| Entry {
                value,
                expires_at,
                revision,
            },
            started,
        );
        r
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        let s = &*self.shared;
        let started = tokio::time::Instant::now();
        let r = s.bounded("delete", s.inner.delete(key)).await;
        let mut cache = s.lock();
        match &r {
            Ok(()) if !cache.disabled => {
                let last_seen = cache.slots.get(key).map_or(0, |slot| slot.revision);
                cache.evict(key);
                cache.apply(key, None, last_seen, s.opts.capacity);
            }
            _ => cache.evict(key),
        }
        drop(cache);
        let outcome = if r.is_ok() {
            Outcome::Ok
        } else {
            Outcome::Error
        };
        s.observe("delete", outcome, started);
        r
    }

    fn changes(&self) -> broadcast::Receiver<Change> {
        match self.shared.applied_feed().as_ref() {
            Some(tx) => tx.subscribe(),
            // The inner feed closed: so is this one.
            None => broadcast::channel(1).1,
        }
    }

    fn kind(&self) -> &'static str {
        self.shared.inner.kind()
    }

    fn watch_local(&self, hook: LocalChangeHook) -> bool {
        self.shared.lock().hooks.push(hook);
        true
    }
}

#[derive(Default)]
struct Cache {
    slots: HashMap<String, Slot>,
    /// [`Store::watch_local`] subscribers, told of every change before the lock is released.
    hooks: Vec<LocalChangeHook>,
    /// Eviction order for the second-chance sweep: `(key, slot id)`; stale ids are skipped.
    queue: VecDeque<(String, u64)>,
    next_id: u64,
    /// Bumped for every change applied; in-flight fills compare against it.
    seq: u64,
    /// `seq` at the last reset.
    reset_seq: u64,
    inflight: HashMap<String, Inflight>,
    disabled: bool,
}

struct Slot {
    /// `None`: the key is known to be absent.
    entry: Option<Entry>,
    revision: u64,
    id: u64,
    referenced: bool,
}

struct Inflight {
    readers: usize,
    /// `seq` of the last change applied to this key while reads were in flight.
    changed_at: u64,
}

impl Cache {
    /// `Some(answer)` on a hit; expired entries are removed and reported as a miss.
    fn lookup(&mut self, key: &str, now: SystemTime) -> Option<Option<Entry>> {
        let slot = self.slots.get_mut(key)?;
        if slot.entry.as_ref().is_some_and(|e| e.is_expired(now)) {
            self.slots.remove(key);
            return None;
        }
        slot.referenced = true;
        Some(slot.entry.clone())
    }

    fn register(&mut self, key: &str) -> u64 {
        self.inflight
            .entry(key.to_owned())
            .or_insert(Inflight {
                readers: 0,
                changed_at: 0,
            })
            .readers += 1;
        self.seq
    }

    /// Unregisters one reader; true if the key changed (or the cache was reset) after `since`.
    fn release(&mut self, key: &str, since: u64) -> bool {
        let mut changed = self.reset_seq > since;
        if let Some(inf) = self.inflight.get_mut(key) {
            changed |= inf.changed_at > since;
            inf.readers -= 1;
            if inf.readers == 0 {
                self.inflight.remove(key);
            }
        }
        changed
    }

    /// A change to `key` happened: mark in-flight reads, then install the new state. A deletion
    /// is reported to the hooks here; a value, by `install`.
    fn apply(&mut self, key: &str, entry: Option<Entry>, revision: u64, capacity: usize) {
        self.seq += 1;
        if let Some(inf) = self.inflight.get_mut(key) {
            inf.changed_at = self.seq;
        }
        if entry.is_none() {
            for hook in &self.hooks {
                hook(Some(key));
            }
        }
        self.install(key, entry, revision, capacity);
    }

    fn install(&mut self, key: &str, entry: Option<Entry>, revision: u64, capacity: usize) {
        if entry.is_some() {
            for hook in &self.hooks {
                hook(Some(key));
            }
        }
        if capacity == 0 {
            return;
        }
        if let Some(slot) = self.slots.get_mut(key) {
            let newer = revision > slot.revision || (revision == 0 && slot.revision == 0);
            if newer {
                slot.entry = entry;
                slot.revision = revision;
            }
            return;
        }
        while self.slots.len() >= capacity {
            if !self.evict_one() {
                break;
            }
        }
        self.next_id += 1;
        let id = self.next_id;
        self.slots.insert(
            key.to_owned(),
            Slot {
                entry,
                revision,
                id,
                referenced: false,
            },
        );
        self.queue.push_back((key.to_owned(), id));
        if self.queue.len() > 2 * capacity + 64 {
            let slots = &self.slots;
            self.queue
                .retain(|(k, id)| slots.get(k).is_some_and(|s| s.id == *id));
        }
    }

    /// Second chance: skip (and clear) recently read entries once, evict the first other one.
    fn evict_one(&mut self) -> bool {
        while let Some((key, id)) = self.queue.pop_front() {
            let Some(slot) = self.slots.get_mut(&key) else {
                continue;
            };
            if slot.id != id {
                continue;
            }
            if slot.referenced {
                slot.referenced = false;
                self.queue.push_back((key, id));
                continue;
            }
            self.slots.remove(&key);
            return true;
        }
        false
    }

    /// Forgets `key` because its value may have changed (a write that failed or conflicted).
    fn evict(&mut self, key: &str) {
        for hook in &self.hooks {
            hook(Some(key));
        }
        self.seq += 1;
        if let Some(inf) = self.inflight.get_mut(key) {
            inf.changed_at = self.seq;
        }
        self.slots.remove(key);
    }

    fn reset(&mut self) {
        for hook in &self.hooks {
            hook(None);
        }
        self.seq += 1;
        self.reset_seq = self.seq;
        self.slots.clear();
        self.queue.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ManualClock, MemoryStore};
    use std::sync::atomic::AtomicUsize;
    use tokio::sync::Notify;

    /// Counts calls and can hold `get` after it has read from the inner store.
    struct Probe {
        inner: MemoryStore,
        gets: AtomicUsize,
        writes: AtomicUsize,
        gate: Mutex<Option<Arc<Gate>>>,
        delay: Mutex<Option<Duration>>,
    }

    struct Gate {
        read_done: Notify,
        release: Notify,
    }

    impl Probe {
        fn new(clock: Arc<ManualClock>) -> Arc<Self> {
            Arc::new(Self {
                inner: MemoryStore::with_clock(clock),
                gets: AtomicUsize::new(0),
                writes: AtomicUsize::new(0),
                gate: Mutex::new(None),
                delay: Mutex::new(None),
            })
        }
        fn gets(&self) -> usize {
            self.gets.load(Ordering::SeqCst)
        }
    }

    #[async_trait]
    impl Store for Probe {
        async fn get(&self, key: &str) -> StoreResult<Option<Entry>> {
            self.gets.fetch_add(1, Ordering::SeqCst);
            let delay = *self.delay.lock().unwrap();
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            let found = self.inner.get(key).await;
            let gate = self.gate.lock().unwrap().clone();
            if let Some(gate) = gate {
                gate.read_done.notify_one();
                gate.release.notified().await;
            }
            found
        }
        async fn put(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> StoreResult<u64> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            self.inner.put(key, value, ttl).await
        }
        async fn create(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> StoreResult<u64> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            self.inner.create(key, value, ttl).await
        }
        async fn update(
            &self,
            key: &str,
            value: Bytes,
            ttl: Option<Duration>,
            expected: u64,
        ) -> StoreResult<u64> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            self.inner.update(key, value, ttl, expected).await
        }
        async fn delete(&self, key: &str) -> StoreResult<()> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            self.inner.delete(key).await
        }
        fn changes(&self) -> broadcast::Receiver<Change> {
            self.inner.changes()
        }
        fn kind(&self) -> &'static str {
            "probe"
        }
    }

    const OPTS: NearCacheOptions = NearCacheOptions {
        capacity: 100,
        op_timeout: Duration::from_millis(50),
    };

    fn setup(opts: NearCacheOptions) -> (Arc<Probe>, Arc<NearCache>, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::default());
        let probe = Probe::new(clock.clone());
        let near = NearCache::with_clock("test", probe.clone(), opts, None, clock.clone());
        (probe, near, clock)
    }

    /// Waits (yielding to the feed task) until the cache has applied `n` changes.
    async fn applied(near: &NearCache, n: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while near.stats().changes_applied < n {
            assert!(tokio::time::Instant::now() < deadline, "feed not applied");
            tokio::task::yield_now().await;
        }
    }

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[tokio::test]
    async fn hit_makes_no_inner_call() {
        let (probe, near, _) = setup(OPTS);
        probe.inner.put("k", b("v"), None).await.unwrap();
        assert_eq!(&near.get("k").await.unwrap().unwrap().value[..], b"v");
        assert_eq!(probe.gets(), 1);
        for _ in 0..10 {
            assert_eq!(&near.get("k").await.unwrap().unwrap().value[..], b"v");
        }
        assert_eq!(probe.gets(), 1);
        // Absence is cached as well.
        assert_eq!(near.get("nope").await.unwrap(), None);
        assert_eq!(near.get("nope").await.unwrap(), None);
        assert_eq!(probe.gets(), 2);
        let st = near.stats();
        assert_eq!(
            (st.local_hits, st.remote_hits, st.misses, st.errors),
            (11, 1, 1, 0)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_change_is_announced_only_after_the_cache_reflects_it() {
        let (probe, near, _) = setup(OPTS);
        let mut feed = near.changes();
        for i in 0..200 {
            let key = format!("k{i}");
            // Absence cached first, so only the applied change can make the key visible.
            assert_eq!(near.get(&key).await.unwrap(), None);
            probe.inner.put(&key, b("v"), None).await.unwrap();
            match feed.recv().await.unwrap() {
                Change::Put { key: seen, .. } => assert_eq!(seen, key),
                other => panic!("unexpected {other:?}"),
            }
            let gets = probe.gets();
            assert!(
                near.get(&key).await.unwrap().is_some(),
                "change {i} announced before it was applied"
            );
            assert_eq!(probe.gets(), gets, "answered locally");
        }
        drop(probe);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn local_hooks_run_before_a_reader_sees_the_change() {
        let (probe, near, _) = setup(OPTS);
        let told = Arc::new(AtomicUsize::new(0));
        let resets = Arc::new(AtomicUsize::new(0));
        let hook = {
            let (told, resets) = (told.clone(), resets.clone());
            Arc::new(move |key: Option<&str>| match key {
                Some(k) if k.starts_with("marker") => {
                    told.fetch_add(1, Ordering::SeqCst);
                }
                Some(_) => {}
                None => {
                    resets.fetch_add(1, Ordering::SeqCst);
                }
            })
        };
        assert!(near.watch_local(hook));
        for i in 0..100 {
            let key = format!("marker{i}");
            assert_eq!(
                near.get(&key).await.unwrap(),
                None,
                "absence is not a change"
            );
            assert_eq!(told.load(Ordering::SeqCst), i);
            let reader = {
                let near = near.clone();
                let told = told.clone();
                tokio::spawn(async move {
                    while near.get(&key).await.unwrap().is_none() {
                        tokio::task::yield_now().await;
                    }
                    told.load(Ordering::SeqCst)
                })
            };
            // Another writer's change arrives through the feed.
            probe
                .inner
                .put(&format!("marker{i}"), b("1"), None)
                .await
                .unwrap();
            assert!(
                reader.await.unwrap() > i,
                "a reader saw change {i} before the hook"
            );
        }
        // The node's own write tells the hook before it returns.
        let before = told.load(Ordering::SeqCst);
        near.put("marker-own", b("1"), None).await.unwrap();
        assert!(told.load(Ordering::SeqCst) > before);
        // So do deletions, the node's own and another writer's.
        let before = told.load(Ordering::SeqCst);
        near.delete("marker-own").await.unwrap();
        assert!(told.load(Ordering::SeqCst) > before);
        // The most recent marker: with 101 keys written into 100 places the oldest may have been
        // evicted, and a read of an evicted key asks the store, which knows of the deletion
        // before the feed delivers it.
        let before = told.load(Ordering::SeqCst);
        let gone = {
            let near = near.clone();
            tokio::spawn(async move {
                while near.get("marker99").await.unwrap().is_some() {
                    tokio::task::yield_now().await;
                }
            })
        };
        probe.inner.delete("marker99").await.unwrap();
        gone.await.unwrap();
        assert!(
            told.load(Ordering::SeqCst) > before,
            "a deletion seen before the hook"
        );
        near.clear();
        assert_eq!(resets.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn changes_from_another_writer_update_and_evict() {
        let (probe, near, _) = setup(OPTS);
        probe.inner.put("k", b("v1"), None).await.unwrap();
        applied(&near, 1).await;
        assert_eq!(&near.get("k").await.unwrap().unwrap().value[..], b"v1");
        assert_eq!(near.get("absent").await.unwrap(), None);
        let gets = probe.gets();

        probe.inner.put("k", b("v2"), None).await.unwrap();
        probe.inner.put("absent", b("now"), None).await.unwrap();
        applied(&near, 3).await;
        assert_eq!(&near.get("k").await.unwrap().unwrap().value[..], b"v2");
        assert_eq!(
            &near.get("absent").await.unwrap().unwrap().value[..],
            b"now"
        );

        probe.inner.delete("k").await.unwrap();
        applied(&near, 4).await;
        assert_eq!(near.get("k").await.unwrap(), None);
        assert_eq!(probe.gets(), gets, "all answered locally");
    }

    #[tokio::test]
    async fn stale_event_does_not_roll_back() {
        let (probe, near, _) = setup(OPTS);
        let r1 = probe.inner.put("k", b("v1"), None).await.unwrap();
        let r2 = near.put("k", b("v2"), None).await.unwrap();
        assert!(r2 > r1);
        // Both Put events arrive after the local write installed r2.
        applied(&near, 2).await;
        assert_eq!(&near.get("k").await.unwrap().unwrap().value[..], b"v2");
        assert_eq!(probe.gets(), 0);
    }

    #[tokio::test]
    async fn reset_clears() {
        let (probe, near, _) = setup(OPTS);
        probe.inner.put("k", b("v"), None).await.unwrap();
        applied(&near, 1).await;
        near.shared.apply_change(Change::Reset);
        assert_eq!(near.stats().entries, 0);
        near.get("k").await.unwrap();
        assert_eq!(probe.gets(), 1);
        assert_eq!(near.stats().resets, 1);
    }

    #[tokio::test]
    async fn expired_local_entry_is_a_miss() {
        let (probe, near, clock) = setup(OPTS);
        near.put("k", b("v"), Some(Duration::from_secs(10)))
            .await
            .unwrap();
        clock.advance(Duration::from_secs(9));
        assert!(near.get("k").await.unwrap().is_some());
        assert_eq!(probe.gets(), 0);
        clock.advance(Duration::from_secs(1));
        assert_eq!(near.get("k").await.unwrap(), None);
        assert_eq!(
            probe.gets(),
            1,
            "expired entry sent the read to the inner store"
        );
        // `create` over the expired key works through the cache.
        near.create("k", b("new"), None).await.unwrap();
        assert_eq!(&near.get("k").await.unwrap().unwrap().value[..], b"new");
        assert_eq!(probe.gets(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_inner_store_times_out() {
        let (probe, near, _) = setup(OPTS);
        *probe.delay.lock().unwrap() = Some(Duration::from_secs(30));
        let started = tokio::time::Instant::now();
        let r = near.get("k").await;
        assert_eq!(
            r,
            Err(StoreError::Timeout {
                op: "get",
                after: Duration::from_millis(50)
            })
        );
        assert!(r.unwrap_err().is_retryable());
        assert_eq!(started.elapsed(), Duration::from_millis(50));
        assert_eq!(near.stats().errors, 1);
        // The abandoned read left no in-flight registration behind.
        assert!(near.shared.lock().inflight.is_empty());
        // A failed read is not cached.
        *probe.delay.lock().unwrap() = None;
        probe.inner.put("k", b("v"), None).await.unwrap();
        assert!(near.get("k").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn fill_race_does_not_install_stale_value() {
        let (probe, near, _) = setup(NearCacheOptions {
            op_timeout: Duration::from_secs(30),
            ..OPTS
        });
        probe.inner.put("k", b("old"), None).await.unwrap();
        applied(&near, 1).await;
        near.clear();

        let gate = Arc::new(Gate {
            read_done: Notify::new(),
            release: Notify::new(),
        });
        *probe.gate.lock().unwrap() = Some(gate.clone());
        let reader = {
            let near = near.clone();
            tokio::spawn(async move { near.get("k").await })
        };
        // The reader has read "old" and is held.
        gate.read_done.notified().await;
        *probe.gate.lock().unwrap() = None;

        // Another writer changes the key; the event is applied while the read is in flight.
        probe.inner.delete("k").await.unwrap();
        applied(&near, 2).await;

        gate.release.notify_one();
        let stale = reader.await.unwrap().unwrap();
        assert_eq!(
            &stale.unwrap().value[..],
            b"old",
            "the racing caller gets what it read"
        );
        let gets = probe.gets();
        assert_eq!(
            near.get("k").await.unwrap(),
            None,
            "stale fill was not installed"
        );
        assert_eq!(
            probe.gets(),
            gets,
            "the delete was cached, not the stale value"
        );
    }

    #[tokio::test]
    async fn fill_racing_a_reset_is_not_installed() {
        let (probe, near, _) = setup(NearCacheOptions {
            op_timeout: Duration::from_secs(30),
            ..OPTS
        });
        probe.inner.put("k", b("old"), None).await.unwrap();
        applied(&near, 1).await;
        near.clear();

        let gate = Arc::new(Gate {
            read_done: Notify::new(),
            release: Notify::new(),
        });
        *probe.gate.lock().unwrap() = Some(gate.clone());
        let reader = {
            let near = near.clone();
            tokio::spawn(async move { near.get("k").await })
        };
        gate.read_done.notified().await;
        *probe.gate.lock().unwrap() = None;

        // The key changes and then the feed reports lost events: the revision of the change is
        // gone from the cache, only the in-flight mark can stop the stale fill.
        probe.inner.put("k", b("new"), None).await.unwrap();
        applied(&near, 2).await;
        near.shared.apply_change(Change::Reset);

        gate.release.notify_one();
        let stale = reader.await.unwrap().unwrap();
        assert_eq!(&stale.unwrap().value[..], b"old");
        assert_eq!(&near.get("k").await.unwrap().unwrap().value[..], b"new");
    }

    #[tokio::test]
    async fn capacity_is_bounded() {
        let (_probe, near, _) = setup(NearCacheOptions {
            capacity: 8,
            ..OPTS
        });
        for i in 0..100 {
            near.put(&format!("k{i}"), b("v"), None).await.unwrap();
            near.get(&format!("absent{i}")).await.unwrap();
            assert!(near.stats().entries <= 8);
        }
        applied(&near, 100).await;
        assert!(near.stats().entries <= 8);
        assert!(near.shared.lock().queue.len() <= 2 * 8 + 64);
    }

    #[test]
    fn recently_read_entries_get_a_second_chance() {
        let mut cache = Cache::default();
        let now = SystemTime::UNIX_EPOCH;
        let entry = |r| {
            Some(Entry {
                value: Bytes::new(),
                expires_at: None,
                revision: r,
            })
        };
        for i in 0..4u64 {
            cache.install(&format!("k{i}"), entry(i + 1), i + 1, 4);
        }
        for round in 0..20u64 {
            assert!(
                cache.lookup("k0", now).is_some(),
                "hot key evicted in round {round}"
            );
            cache.install(&format!("new{round}"), entry(100 + round), 100 + round, 4);
            assert_eq!(cache.slots.len(), 4);
        }
        assert!(cache.lookup("k1", now).is_none(), "cold keys were evicted");
    }

    #[tokio::test]
    async fn writes_go_through_and_conflicts_evict() {
        let (probe, near, _) = setup(OPTS);
        let r = near.create("k", b("1"), None).await.unwrap();
        assert_eq!(
            &probe.inner.get("k").await.unwrap().unwrap().value[..],
            b"1"
        );
        assert!(matches!(
            near.create("k", b("x"), None).await,
            Err(StoreError::Conflict { .. })
        ));
        let r2 = near.update("k", b("2"), None, r).await.unwrap();
        assert!(matches!(
            near.update("k", b("3"), None, r).await,
            Err(StoreError::Conflict { .. })
        ));
        let e = near.get("k").await.unwrap().unwrap();
        assert_eq!((&e.value[..], e.revision), (&b"2"[..], r2));
        near.delete("k").await.unwrap();
        assert_eq!(near.get("k").await.unwrap(), None);
        assert_eq!(probe.inner.get("k").await.unwrap(), None);
        assert_eq!(probe.writes.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn observer_sees_outcomes() {
        #[derive(Default)]
        struct Rec(Mutex<Vec<(&'static str, &'static str, Outcome)>>);
        impl StoreObserver for Rec {
            fn observe(&self, store: &'static str, op: &'static str, o: Outcome, _: Duration) {
                self.0.lock().unwrap().push((store, op, o));
            }
        }
        let rec = Arc::new(Rec::default());
        let clock = Arc::new(ManualClock::default());
        let probe = Probe::new(clock.clone());
        let near = NearCache::with_clock("sk", probe, OPTS, Some(rec.clone()), clock);
        near.get("a").await.unwrap();
        near.get("a").await.unwrap();
        near.put("a", b("v"), None).await.unwrap();
        near.create("a", b("v"), None).await.unwrap_err();
        assert_eq!(
            *rec.0.lock().unwrap(),
            vec![
                ("sk", "get", Outcome::Miss),
                ("sk", "get", Outcome::LocalHit),
                ("sk", "put", Outcome::Ok),
                ("sk", "create", Outcome::Conflict),
            ]
        );
    }

    #[tokio::test]
    async fn closed_feed_disables_caching() {
        struct Closed(MemoryStore);
        #[async_trait]
        impl Store for Closed {
            async fn get(&self, key: &str) -> StoreResult<Option<Entry>> {
                self.0.get(key).await
            }
            async fn put(&self, k: &str, v: Bytes, t: Option<Duration>) -> StoreResult<u64> {
                self.0.put(k, v, t).await
            }
            async fn create(&self, k: &str, v: Bytes, t: Option<Duration>) -> StoreResult<u64> {
                self.0.create(k, v, t).await
            }
            async fn update(
                &self,
                k: &str,
                v: Bytes,
                t: Option<Duration>,
                e: u64,
            ) -> StoreResult<u64> {
                self.0.update(k, v, t, e).await
            }
            async fn delete(&self, k: &str) -> StoreResult<()> {
                self.0.delete(k).await
            }
            fn changes(&self) -> broadcast::Receiver<Change> {
                broadcast::channel(1).1
            }
            fn kind(&self) -> &'static str {
                "closed"
            }
        }
        let near = NearCache::new(Arc::new(Closed(MemoryStore::new())), OPTS, None);
        let mut subscribed_before = near.changes();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !near.shared.lock().disabled {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::task::yield_now().await;
        }
        // The cache's own feed closes too, for old and new subscribers alike.
        assert_eq!(
            subscribed_before.recv().await,
            Err(RecvError::Closed),
            "old subscriber"
        );
        assert_eq!(near.changes().recv().await, Err(RecvError::Closed));
        near.put("k", b("v"), None).await.unwrap();
        near.get("k").await.unwrap();
        near.get("k").await.unwrap();
        assert_eq!(near.stats().local_hits, 0);
        assert_eq!(near.stats().remote_hits, 2);
    }
}
