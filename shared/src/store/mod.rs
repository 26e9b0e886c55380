//! The state-store abstraction every cluster-wide piece of state goes through.
//!
//! It is shaped for a networked KV (NATS JetStream KV) rather than for a local map: every call is
//! async and fallible, writes return the revision they produced, `create`/`update` give
//! compare-and-set, and `changes()` is the feed other nodes use to invalidate what they cached.
//! Expiry lives inside each [`Entry`] and is checked on every read by the caller-facing layer:
//! no implementation may rely on the server to expire an entry.

mod clock;
mod codec;
mod deferred;
mod memory;
mod near_cache;
mod noop;
pub mod redis_layout;
#[doc(hidden)]
pub mod testing;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;

pub use clock::{Clock, ManualClock, SystemClock};
pub use codec::{
    EXPIRES_AT_METADATA_KEY, Envelope, decode_envelope, decode_key, decode_value, encode_key,
    encode_value,
};
pub use deferred::DeferredStore;
pub use memory::MemoryStore;
pub use near_cache::{NearCache, NearCacheOptions, NearCacheStats, Outcome, StoreObserver};
pub use noop::NoopStore;

/// A stored value with the moment it stops being valid and the revision that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: Bytes,
    /// `None`: valid until deleted.
    pub expires_at: Option<SystemTime>,
    /// Monotonic per store; 0 for stores without revisions.
    pub revision: u64,
}

impl Entry {
    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }
}

/// One change observed on the store, delivered to every subscriber (including the writer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put {
        key: String,
        entry: Entry,
    },
    Delete {
        key: String,
        revision: u64,
    },
    /// The feed lost events (reconnect, lag): everything cached from this store is suspect.
    Reset,
}

impl Change {
    pub fn key(&self) -> Option<&str> {
        match self {
            Change::Put { key, .. } | Change::Delete { key, .. } => Some(key),
            Change::Reset => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// `create` found a live entry, or `update` found another revision.
    #[error("conflict on key {key:?}")]
    Conflict { key: String },
    /// The operation did not finish within its deadline.
    #[error("store operation {op} timed out after {after:?}")]
    Timeout { op: &'static str, after: Duration },
    /// The backend cannot be reached or refused the operation.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Data in the store could not be decoded, or a key/value is unacceptable.
    #[error("invalid data: {0}")]
    Invalid(String),
    /// The store cannot be used as configured: refused credentials or permissions, a certificate
    /// that does not verify, an unreadable file. The message names the settings to fix.
    #[error("{0}")]
    Misconfigured(String),
}

impl StoreError {
    /// Whether trying again later may succeed (Pingora-style retry classification).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Timeout { .. } | StoreError::Unavailable(_)
        )
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A key-value store holding one "database" (a JetStream bucket). Keys are plain strings; the
/// table prefix and any wire encoding are the implementation's business.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The entry under `key`, or `None`. Implementations return expired entries as `None`.
    async fn get(&self, key: &str) -> StoreResult<Option<Entry>>;
    /// Writes unconditionally; `ttl` `None` means "until deleted" (bounded by the bucket's max-age).
    async fn put(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> StoreResult<u64>;
    /// Writes only if no live entry exists; otherwise `Conflict`.
    async fn create(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> StoreResult<u64>;
    /// Writes only if the current revision is `expected`; otherwise `Conflict`. `expected == 0`
    /// behaves like `create`. The revision compared is the stored one, even if that entry has
    /// expired meanwhile.
    async fn update(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
        expected: u64,
    ) -> StoreResult<u64>;
    async fn delete(&self, key: &str) -> StoreResult<()>;
    /// A feed of changes made by any writer from now on.
    fn changes(&self) -> tokio::sync::broadcast::Receiver<Change>;
    /// A short name for metrics and logs (`memory`, `noop`, `nats-js-kv`, `redis-sentinel`).
    fn kind(&self) -> &'static str;
    /// Calls `hook` whenever a key's value this store answers locally changes or may have
    /// changed (`Some(key)`: a write, a deletion, a change from the feed, a read that filled the
    /// local copy, a failed write that made the local copy forget the key) or everything local
    /// is forgotten (`None`), *before* a reader can see the change. Only a
    /// store that answers from a local copy can promise that; the others return false and a
    /// caller relies on [`Store::changes`], which may arrive a moment after a read saw the change.
    fn watch_local(&self, hook: LocalChangeHook) -> bool {
        let _ = hook;
        false
    }
}

/// See [`Store::watch_local`]. Runs under the store's lock: it must be quick and must not call
/// the store.
pub type LocalChangeHook = Arc<dyn Fn(Option<&str>) + Send + Sync>;
