//! The `redis-sentinel` store: the state an oCIS deployment keeps in Redis behind Sentinel,
//! shared with its Go services, behind the same [`Store`] trait as the NATS bucket.
//!
//! - Layout: the one go-micro's Redis store writes (key `<table><key>`, the raw value, the
//!   expiry as the key's TTL), plus Gatehouse's revisions and change channel beside it
//!   (`gatehouse_shared::store::redis_layout`).
//! - Every operation is one script on the master ([`scripts`]), so compare-and-set is atomic
//!   and each write is announced on the table's channel in the same step.
//! - The master is found through the sentinels and watched by a supervisor task ([`session`]):
//!   it applies the channel to the change feed, pings, and on any loss (a dead master, a
//!   failover, a demotion) drops the connection, finds the master again and announces a
//!   [`Change::Reset`], since changes may have been missed meanwhile. While there is no master,
//!   operations fail at once with `Unavailable`, as on NATS.
//! - Expiry: the TTL read with the value becomes [`Entry::expires_at`], which the near-cache in
//!   front checks on every read.

mod scripts;
mod session;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use gatehouse_shared::config::StoreConfig;
use gatehouse_shared::store::redis_layout::{
    REVISION_COUNTER, change_channel, data_key, parse_sentinel_nodes, revision_key, ttl_millis,
};
use gatehouse_shared::store::{Change, Entry, Store, StoreError, StoreResult};
use redis::aio::MultiplexedConnection;
use tokio::sync::{Notify, broadcast};

/// Changes a slow subscriber may fall behind before it lags (and resets).
const FEED_CAPACITY: usize = 4096;

/// How to reach the store, from a `redis-sentinel` [`StoreConfig`].
#[derive(Clone)]
pub struct RedisOptions {
    /// The configuration section, for messages (`state_store`).
    pub section: String,
    /// `host:port` of every sentinel.
    pub sentinels: Vec<String>,
    pub master: String,
    pub table: String,
    /// Credentials of the data nodes and the sentinels (a Gatehouse addition; oCIS sends none).
    pub username: String,
    pub password: String,
    /// TTL of an entry written without one (the store's `ttl`); `None` keeps it until deleted.
    pub max_age: Option<Duration>,
    /// Deadline of one command.
    pub op_timeout: Duration,
}

impl std::fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOptions")
            .field("section", &self.section)
            .field("sentinels", &self.sentinels)
            .field("master", &self.master)
            .field("table", &self.table)
            .field("username", &self.username)
            .field(
                "password",
                &if self.password.is_empty() { "" } else { "***" },
            )
            .field("max_age", &self.max_age)
            .field("op_timeout", &self.op_timeout)
            .finish()
    }
}

impl RedisOptions {
    /// Validation has checked the nodes already; a mistake here is still reported, not a panic.
    pub fn from_config(section: &str, cfg: &StoreConfig) -> Result<RedisOptions, StoreError> {
        let nodes = parse_sentinel_nodes(&cfg.addresses).map_err(|(i, e)| {
            StoreError::Misconfigured(format!("{section}.addresses[{i}]: {e}"))
        })?;
        Ok(RedisOptions {
            section: section.to_owned(),
            sentinels: nodes.sentinels,
            master: nodes.master,
            table: cfg.table.clone(),
            username: cfg.username.clone(),
            password: cfg.password.clone(),
            max_age: Some(cfg.ttl.0).filter(|t| !t.is_zero()),
            op_timeout: cfg.op_timeout.0,
        })
    }

    /// What the node waits for, in readiness and errors.
    pub fn describe(&self) -> String {
        format!(
            "Redis master {:?} via sentinels {}",
            self.master,
            self.sentinels.join(",")
        )
    }
}

/// Connection counters, read at every metrics scrape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedisStats {
    pub connected: bool,
    /// Times a new master connection replaced a lost one.
    pub reconnects: u64,
}

pub struct RedisStore {
    shared: Arc<Shared>,
    supervisor: tokio::task::AbortHandle,
}

struct Shared {
    opts: RedisOptions,
    channel: String,
    /// The master connection and its session's number; `None` while there is none.
    conn: Mutex<Option<(u64, MultiplexedConnection)>>,
    /// The current session's number: an operation that failed on an older connection does not
    /// make the supervisor drop the current one.
    generation: AtomicU64,
    connected: AtomicBool,
    reconnects: AtomicU64,
    feed: broadcast::Sender<Change>,
    /// An operation saw the connection fail: the supervisor replaces it.
    lost: Notify,
}

impl RedisStore {
    /// Finds the master and connects. A refusal no retry fixes (credentials) is
    /// `Misconfigured`; anything else (no sentinel answers, no master yet) is retryable.
    pub async fn connect(opts: RedisOptions) -> Result<RedisStore, StoreError> {
        let session = session::Session::open(&opts).await?;
        let shared = Arc::new(Shared {
            channel: change_channel(&opts.table),
            opts,
            conn: Mutex::new(Some((0, session.data.clone()))),
            generation: AtomicU64::new(0),
            connected: AtomicBool::new(true),
            reconnects: AtomicU64::new(0),
            feed: broadcast::channel(FEED_CAPACITY).0,
            lost: Notify::new(),
        });
        tracing::info!(store = %shared.opts.section, master = %session.master, "connected to the Redis master");
        let supervisor =
            tokio::spawn(session::supervise(Arc::clone(&shared), session)).abort_handle();
        Ok(RedisStore { shared, supervisor })
    }

    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Relaxed)
    }

    pub fn stats(&self) -> RedisStats {
        RedisStats {
            connected: self.is_connected(),
            reconnects: self.shared.reconnects.load(Ordering::Relaxed),
        }
    }

    async fn call<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        key: &str,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> StoreResult<T> {
        let conn = self
            .shared
            .conn
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some((generation, mut conn)) = conn else {
            return Err(StoreError::Unavailable(format!(
                "no connection to the {} ({op} {key:?})",
                self.shared.opts.describe()
            )));
        };
        invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.shared.failed(op, key, &e, generation))
    }

    async fn write(
        &self,
        mode: &'static str,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
        expected: u64,
    ) -> StoreResult<u64> {
        let data = data_key(&self.shared.opts.table, key);
        let ttl = ttl.or(self.shared.opts.max_age);
        let mut invocation = scripts::WRITE.prepare_invoke();
        invocation
            .key(&data)
            .key(revision_key(&data))
            .key(REVISION_COUNTER)
            .arg(mode)
            .arg(value.as_ref())
            .arg(ttl_millis(ttl))
            .arg(expected)
            .arg(&self.shared.channel)
            .arg(key);
        match self.call::<u64>(mode, key, &invocation).await? {
            0 => Err(StoreError::Conflict {
                key: key.to_owned(),
            }),
            revision => Ok(revision),
        }
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.supervisor.abort();
    }
}

impl Shared {
    /// Classifies a failed command; a broken connection wakes the supervisor.
    fn failed(
        &self,
        op: &'static str,
        key: &str,
        e: &redis::RedisError,
        generation: u64,
    ) -> StoreError {
        let section = &self.opts.section;
        if is_auth_failure(e) {
            return StoreError::Misconfigured(format!(
                "{section}: Redis refused the credentials ({section}.username and {section}.password): {e}"
            ));
        }
        if e.is_timeout() {
            return StoreError::Timeout {
                op,
                after: self.opts.op_timeout,
            };
        }
        if connection_lost(e) && generation == self.generation.load(Ordering::SeqCst) {
            self.lost.notify_one();
        }
        StoreError::Unavailable(format!("Redis {op} {key:?}: {e}"))
    }
}

/// The connection (or the node's role) is gone: the master must be found again.
fn connection_lost(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_unrecoverable_error()
        || matches!(e.code(), Some("READONLY" | "MASTERDOWN" | "LOADING"))
}

fn is_auth_failure(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM"))
}

#[async_trait]
impl Store for RedisStore {
    async fn get(&self, key: &str) -> StoreResult<Option<Entry>> {
        let data = data_key(&self.shared.opts.table, key);
        let mut invocation = scripts::GET.prepare_invoke();
        invocation
            .key(&data)
            .key(revision_key(&data))
            .key(REVISION_COUNTER);
        let read: Option<(Vec<u8>, u64, i64)> = self.call("get", key, &invocation).await?;
        let Some((value, revision, pttl)) = read else {
            return Ok(None);
        };
        let expires_at = u64::try_from(pttl)
            .ok()
            .filter(|ms| *ms > 0)
            .map(|ms| SystemTime::now() + Duration::from_millis(ms));
        Ok(Some(Entry {
            value: Bytes::from(value),
            expires_at,
            revision,
        }))
    }

    async fn put(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> StoreResult<u64> {
        self.write("put", key, value, ttl, 0).await
    }

    async fn create(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> StoreResult<u64> {
        self.write("create", key, value, ttl, 0).await
    }

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
        self.write("update", key, value, ttl, expected).await
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        let data = data_key(&self.shared.opts.table, key);
        let mut invocation = scripts::DELETE.prepare_invoke();
        invocation
            .key(&data)
            .key(revision_key(&data))
            .key(REVISION_COUNTER)
            .arg(&self.shared.channel)
            .arg(key);
        self.call::<u64>("delete", key, &invocation)
            .await
            .map(|_| ())
    }

    fn changes(&self) -> broadcast::Receiver<Change> {
        self.shared.feed.subscribe()
    }

    fn kind(&self) -> &'static str {
        "redis-sentinel"
    }
}
