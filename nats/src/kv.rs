//! [`Store`] on a NATS JetStream KV bucket, in the go-micro `nats-js-kv` format.
//!
//! - Keys and values use the oCIS codec (`gatehouse_shared::store::encode_key`/`encode_value`),
//!   so a bucket can be shared with oCIS Go services; the store sees only keys of its table.
//! - Expiry travels in the envelope and is checked on every read. An entry's effective expiry
//!   is the earlier of the envelope's and "stored at + bucket max-age", so entries the server
//!   drops silently (max-age without delete markers) also expire in every near-cache.
//! - Per-key TTL (`Nats-TTL` header) is used when the server is ≥ 2.11 and the bucket allows
//!   message TTLs; it only lets the server reclaim space early — correctness never depends on it.
//! - `create`/`update` are compare-and-set on the subject's last sequence. `create` over an entry
//!   that is deleted, purged or expired (by envelope) replaces it with a CAS on that revision.
//! - Reads are direct gets, which any current replica answers; when none is subscribed yet (a
//!   fresh bucket) the read asks the stream leader instead (`read_last`).
//! - `changes()` is fed by one ordered watch over the bucket. The ordered consumer itself resumes
//!   after reconnects and re-fetches from its last sequence when it detects a gap (at the next
//!   message or idle heartbeat, at most 5 s later). If the watch fails anyway it is re-created
//!   from the last seen revision and a `Change::Reset` is emitted so caches drop what they might
//!   have missed.
//! - Every operation is bounded by `op_timeout` and, in a sampled trace, is a CLIENT span
//!   (`get <bucket>`, …) of the request that caused it. While the client knows it is
//!   disconnected, operations fail at once with `Unavailable` instead of waiting that long,
//!   and so do operations waiting when the connection drops (their answers cannot come).
//!   A connection can also be up while NATS does not answer (JetStream electing leaders after a
//!   restart, a partition that drops packets, a path slower than `op_timeout`): after an
//!   operation timed out or found NATS unavailable, the store is *suspect*: operations fail at
//!   once while a background probe reads the bucket every [`PROBE_INTERVAL`], and the first
//!   answer within `op_timeout` ends it. Requests then wait for an unanswering NATS once per
//!   store and outage, not once per call, and never while a probe is what waits. A
//!   reconnection makes the store suspect too: a restarted server accepts connections before
//!   JetStream answers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, kv};
use async_nats::{HeaderMap, header};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use gatehouse_shared::store::{
    Change, Entry, Store, StoreError, StoreResult, decode_key, decode_value, encode_key,
    encode_value,
};
use gatehouse_shared::trace;
use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanBuilder, SpanKind};
use opentelemetry_semantic_conventions::attribute as semconv;
use tokio::sync::broadcast;

use crate::connect::{self, ConnectionEvents, ConnectionStats};
use gatehouse_shared::config::NatsSecurity;

const FEED_CAPACITY: usize = 4096;
/// How long a server-side delete marker (from a TTL or max-age expiry) stays in the bucket.
const MARKER_TTL: Duration = Duration::from_secs(60);

/// Connection and bucket settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsKvOptions {
    /// Server addresses, e.g. `nats://127.0.0.1:4222`; one entry per server.
    pub servers: Vec<String>,
    /// The bucket ("database" in go-micro terms).
    pub bucket: String,
    /// go-micro table: the key prefix `<table>_`; empty for none.
    pub table: String,
    /// Replicas when this store creates the bucket.
    pub replicas: usize,
    /// Memory instead of file storage when this store creates the bucket.
    pub memory_storage: bool,
    /// Bucket max-age when this store creates the bucket; zero for unlimited.
    pub max_age: Duration,
    /// TLS and credentials, with the configuration section they come from.
    pub security: NatsSecurity,
    /// Deadline of every store operation.
    pub op_timeout: Duration,
    /// Create the bucket with per-message TTL support (server ≥ 2.11) and send `Nats-TTL` on
    /// writes with a TTL. The server then writes delete markers when entries expire; Go clients
    /// older than nats.go 1.40 may misread those markers, so turn this off for buckets shared
    /// with older oCIS services.
    pub per_key_ttl: bool,
}

impl Default for NatsKvOptions {
    fn default() -> Self {
        Self {
            servers: vec!["nats://127.0.0.1:9233".to_owned()],
            bucket: String::new(),
            table: String::new(),
            replicas: 1,
            memory_storage: false,
            max_age: Duration::ZERO,
            security: NatsSecurity::plain("store"),
            op_timeout: Duration::from_millis(500),
            per_key_ttl: true,
        }
    }
}

pub struct NatsKvStore {
    inner: Arc<Inner>,
    watch_task: tokio::task::AbortHandle,
    reconnect_task: tokio::task::AbortHandle,
}

struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    kv: kv::Store,
    table: String,
    op_timeout: Duration,
    /// The bucket accepts `Nats-TTL` and we are allowed to use it.
    per_key_ttl: bool,
    /// The bucket's actual max-age (whoever created it); zero for unlimited.
    bucket_max_age: Duration,
    feed: broadcast::Sender<Change>,
    suspicion: Arc<Suspicion>,
    events: ConnectionEvents,
}

#[derive(Default)]
struct Suspicion {
    /// NATS timed out or was unavailable and no probe has succeeded since.
    suspect: AtomicBool,
    /// A probe task is running.
    probing: AtomicBool,
}

/// Pause between two probes of a suspect NATS.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// The key a probe reads (absent: the read only has to be answered).
const PROBE_KEY: &str = "gatehouse-probe";

/// Pause between attempts to start the change watch while a new bucket settles.
const WATCH_RETRY: Duration = Duration::from_millis(100);

impl NatsKvStore {
    /// Connects, opens (or creates) the bucket and starts the change watch.
    pub async fn connect(opts: NatsKvOptions) -> Result<NatsKvStore, StoreError> {
        let (client, events) =
            connect::client(&opts.servers, "gatehouse-kv", &opts.security).await?;
        let js = jetstream::new(client.clone());
        let ttl_capable = connect::server_at_least(&client.server_info().version, 2, 11);
        let config = kv::Config {
            bucket: opts.bucket.clone(),
            description: "Gatehouse state (go-micro nats-js-kv format)".to_owned(),
            history: 1,
            max_age: opts.max_age,
            storage: if opts.memory_storage {
                jetstream::stream::StorageType::Memory
            } else {
                jetstream::stream::StorageType::File
            },
            num_replicas: opts.replicas.max(1),
            limit_markers: (opts.per_key_ttl && ttl_capable).then_some(MARKER_TTL),
            ..Default::default()
        };
        let kv = connect::open_or_create_bucket(&js, config, &events).await?;
        let stream_config = &kv.stream.cached_info().config;
        let (feed, _) = broadcast::channel(FEED_CAPACITY);
        let inner = Arc::new(Inner {
            per_key_ttl: opts.per_key_ttl && stream_config.allow_message_ttl,
            bucket_max_age: stream_config.max_age,
            client,
            js,
            kv,
            table: opts.table,
            op_timeout: opts.op_timeout,
            feed,
            suspicion: Arc::default(),
            events: events.clone(),
        });
        // The watch exists before `connect` returns: nothing written afterwards is missed. Right
        // after a replicated bucket is created its stream may not answer consumer requests yet, so
        // the first attempts are retried within the start-up window.
        let deadline = tokio::time::Instant::now() + connect::STARTUP_TIMEOUT;
        let (start, watch) = loop {
            let attempt = async {
                let start = inner.next_revision().await?;
                Ok::<_, StoreError>((start, inner.watch_from(start).await?))
            };
            match attempt.await {
                Ok(ok) => break ok,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "change watch not ready yet, retrying");
                    tokio::time::sleep(WATCH_RETRY).await;
                }
                Err(e) => return Err(e),
            }
        };
        // Make sure our server has the watch's subscription before anyone is told we are ready.
        let _ = tokio::time::timeout(connect::STARTUP_TIMEOUT, inner.client.flush()).await;
        let watch_task = tokio::spawn(run_watch(inner.clone(), watch, start)).abort_handle();
        let reconnect_task =
            tokio::spawn(watch_reconnects(events, Arc::downgrade(&inner))).abort_handle();
        Ok(NatsKvStore {
            inner,
            watch_task,
            reconnect_task,
        })
    }

    /// Whether the client currently has a server connection (for readiness).
    pub fn is_connected(&self) -> bool {
        self.inner.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Connection state and reconnects (metrics).
    pub fn connection(&self) -> ConnectionStats {
        ConnectionStats::of(&self.inner.client)
    }

    /// The bucket this store reads and writes.
    pub fn bucket(&self) -> &str {
        &self.inner.kv.name
    }

    /// Whether writes carry a server-side per-key TTL.
    pub fn per_key_ttl(&self) -> bool {
        self.inner.per_key_ttl
    }

    /// The underlying client (e.g. for server info in diagnostics).
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }
}

impl Drop for NatsKvStore {
    fn drop(&mut self) {
        self.watch_task.abort();
        self.reconnect_task.abort();
    }
}

/// After every reconnection the store is suspect until a probe is answered: a NATS server that
/// was restarted accepts connections before JetStream has elected its leaders, and requests
/// should not be the ones that find out by waiting.
async fn watch_reconnects(events: ConnectionEvents, inner: std::sync::Weak<Inner>) {
    loop {
        events.next_reconnect().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        tracing::debug!(bucket = %inner.kv.name, "reconnected to NATS; probing before use");
        inner.suspect();
    }
}

async fn run_watch(inner: Arc<Inner>, mut watch: kv::Watch, start: u64) {
    let mut next = start;
    loop {
        while let Some(item) = watch.next().await {
            match item {
                Ok(entry) => {
                    next = next.max(entry.revision + 1);
                    if let Some(change) = inner.change_of(&entry) {
                        let _ = inner.feed.send(change);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "KV watch failed");
                    break;
                }
            }
        }
        let _ = inner.feed.send(Change::Reset);
        let mut backoff = Duration::from_millis(100);
        watch = loop {
            match inner.watch_from(next).await {
                Ok(w) => break w,
                Err(e) => {
                    tracing::warn!(error = %e, "re-creating KV watch");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        };
    }
}

fn map_publish_error(key: &str, e: &jetstream::context::PublishError) -> StoreError {
    use jetstream::context::PublishErrorKind as K;
    // Newer servers answer a failed "expected last subject sequence 0" with error code 10164
    // ("wrong last sequence: N"), which async-nats does not map to `WrongLastSequence`.
    let wrong_sequence = e.kind() == K::WrongLastSequence
        || (e.kind() == K::Other && e.to_string().contains("wrong last sequence"));
    if wrong_sequence {
        return StoreError::Conflict {
            key: key.to_owned(),
        };
    }
    match e.kind() {
        K::MaxPayloadExceeded => StoreError::Invalid(format!("value too large: {e}")),
        _ => StoreError::Unavailable(e.to_string()),
    }
}

/// One read of the key's last message. Buckets allow direct gets, which any current replica
/// answers; right after a bucket is created, or while its replicas catch up, none may be
/// subscribed yet ("no responders", seen for over 300 ms on a fresh R3 bucket), and the read
/// then asks the stream leader through the JetStream API (`STREAM.MSG.GET`) instead.
async fn read_last(kv: &kv::Store, nkey: &str) -> StoreResult<Option<kv::Entry>> {
    use jetstream::stream::LastRawMessageErrorKind as K;
    match kv.entry(nkey).await {
        Err(e) if no_direct_responder(&e) => {}
        other => return other.map_err(|e| map_entry_error(&e)),
    }
    tracing::debug!("no replica answers direct gets, asking the stream leader");
    let subject = format!("{}{nkey}", kv.prefix);
    match kv.stream.get_last_raw_message_by_subject(&subject).await {
        Ok(m) => Ok(Some(kv::Entry {
            bucket: kv.name.clone(),
            key: nkey.to_owned(),
            operation: operation_of(&m.headers),
            value: m.payload,
            revision: m.sequence,
            created: m.time,
            delta: 0,
            seen_current: false,
        })),
        Err(e) if e.kind() == K::NoMessageFound => Ok(None),
        Err(e) if e.kind() == K::InvalidSubject => Err(StoreError::Invalid(e.to_string())),
        Err(e) => Err(StoreError::Unavailable(format!(
            "reading from the stream leader: {e}"
        ))),
    }
}

/// A direct get that no replica was subscribed to answer.
fn no_direct_responder(e: &kv::EntryError) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<jetstream::stream::DirectGetError>())
        .is_some_and(|d| {
            matches!(d.kind(), jetstream::stream::DirectGetErrorKind::ErrorResponse(code, _)
                if code == async_nats::StatusCode::NO_RESPONDERS)
        })
}

/// The KV operation a stored message records: the `KV-Operation` header, or for a marker the
/// server wrote itself, its reason; a message with neither is a put.
fn operation_of(headers: &HeaderMap) -> kv::Operation {
    if let Some(op) = headers.get("KV-Operation") {
        return op.as_str().parse().unwrap_or(kv::Operation::Put);
    }
    match headers.get(header::NATS_MARKER_REASON).map(|r| r.as_str()) {
        Some("Remove") => kv::Operation::Delete,
        Some(_) => kv::Operation::Purge,
        None => kv::Operation::Put,
    }
}

fn map_entry_error(e: &kv::EntryError) -> StoreError {
    match e.kind() {
        kv::EntryErrorKind::InvalidKey => StoreError::Invalid(e.to_string()),
        _ => StoreError::Unavailable(e.to_string()),
    }
}

impl Inner {
    /// Runs one operation under `op_timeout`, as a CLIENT span of the current trace (only
    /// operations that reach NATS come here: a near-cache hit opens no span). Keys are not
    /// recorded: they can carry user identifiers.
    async fn bounded<T>(
        &self,
        op: &'static str,
        fut: impl std::future::Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        let lost = self.events.next_loss();
        let denial = self.events.next_denial(&self.kv.name);
        // Known to be down: fail now rather than make every call wait out `op_timeout` (an
        // outage would otherwise cost a new login one timeout per store operation).
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err(StoreError::Unavailable(format!(
                "not connected to NATS ({op} {})",
                self.kv.name
            )));
        }
        if self.suspicion.suspect.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable(format!(
                "NATS did not answer in time and has not answered a probe since ({op} {})",
                self.kv.name
            )));
        }
        let span = trace::Span::child_with(|| {
            SpanBuilder::from_name(format!("{op} {}", self.kv.name))
                .with_kind(SpanKind::Client)
                .with_attributes([
                    KeyValue::new(semconv::DB_SYSTEM_NAME, "nats"),
                    KeyValue::new(semconv::DB_COLLECTION_NAME, self.kv.name.clone()),
                    KeyValue::new(semconv::DB_OPERATION_NAME, op),
                ])
        });
        // A refusal of the server (a permission violation) is an answer: NATS is not suspect.
        let (result, refused) = tokio::select! {
            r = tokio::time::timeout(self.op_timeout, span.instrument(fut)) => match r {
                Ok(r) => (r, false),
                Err(_) => (Err(StoreError::Timeout {
                    op,
                    after: self.op_timeout,
                }), false),
            },
            () = lost => (Err(StoreError::Unavailable(format!(
                "connection to NATS lost during {op} {}",
                self.kv.name
            ))), false),
            denial = denial => (Err(StoreError::Unavailable(format!(
                "NATS refused {op} {}: {denial} (the NATS user lacks a permission)",
                self.kv.name
            ))), true),
        };
        if !refused
            && matches!(
                result,
                Err(StoreError::Timeout { .. } | StoreError::Unavailable(_))
            )
        {
            self.suspect();
        }
        match &result {
            Ok(_) => {}
            Err(StoreError::Conflict { .. }) => span.set("gatehouse.store.conflict", true),
            Err(e @ StoreError::Timeout { .. }) => span.fail("timeout", e.to_string()),
            Err(e @ StoreError::Unavailable(_)) => span.fail("unavailable", e.to_string()),
            Err(e @ StoreError::Invalid(_)) => span.fail("invalid", e.to_string()),
            Err(e @ StoreError::Misconfigured(_)) => span.fail("misconfigured", e.to_string()),
        }
        span.end();
        result
    }

    /// Marks NATS suspect and starts the probe that will clear it, unless one runs already.
    fn suspect(&self) {
        self.suspicion.suspect.store(true, Ordering::Release);
        if self.suspicion.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (kv, op_timeout) = (self.kv.clone(), self.op_timeout);
        let suspicion = Arc::downgrade(&self.suspicion);
        tokio::spawn(async move {
            loop {
                // The store is gone: nobody to tell.
                let Some(s) = suspicion.upgrade() else {
                    return;
                };
                if let Ok(Ok(_)) = tokio::time::timeout(op_timeout, read_last(&kv, PROBE_KEY)).await
                {
                    s.suspect.store(false, Ordering::Release);
                    s.probing.store(false, Ordering::Release);
                    return;
                }
                drop(s);
                tokio::time::sleep(PROBE_INTERVAL).await;
            }
        });
    }

    fn nats_key(&self, key: &str) -> StoreResult<String> {
        if key.is_empty() {
            return Err(StoreError::Invalid("empty key".to_owned()));
        }
        Ok(encode_key(&self.table, key))
    }

    /// The sequence the next message in the bucket's stream will get.
    async fn next_revision(&self) -> StoreResult<u64> {
        let mut stream = self.kv.stream.clone();
        let info = tokio::time::timeout(connect::STARTUP_TIMEOUT, stream.info())
            .await
            .map_err(|_| StoreError::Timeout {
                op: "stream info",
                after: connect::STARTUP_TIMEOUT,
            })?
            .map_err(|e| StoreError::Unavailable(format!("stream info: {e}")))?;
        Ok(info.state.last_sequence + 1)
    }

    async fn watch_from(&self, revision: u64) -> StoreResult<kv::Watch> {
        tokio::time::timeout(
            connect::STARTUP_TIMEOUT,
            self.kv.watch_all_from_revision(revision.max(1)),
        )
        .await
        .map_err(|_| StoreError::Timeout {
            op: "watch",
            after: connect::STARTUP_TIMEOUT,
        })?
        .map_err(|e| StoreError::Unavailable(format!("watch: {e}")))
    }

    /// Earliest of the envelope's expiry and the bucket max-age.
    fn effective_expiry(
        &self,
        envelope: Option<SystemTime>,
        stored: &kv::Entry,
    ) -> Option<SystemTime> {
        let by_bucket = (!self.bucket_max_age.is_zero())
            .then(|| connect::stored_at(stored) + self.bucket_max_age);
        match (envelope, by_bucket) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The live entry in a KV message, `None` for deletions, purges and expired entries.
    fn live_entry(&self, stored: &kv::Entry) -> StoreResult<Option<Entry>> {
        if stored.operation != kv::Operation::Put {
            return Ok(None);
        }
        let (value, expires_at) = decode_value(&stored.value)?;
        let entry = Entry {
            value,
            expires_at: self.effective_expiry(expires_at, stored),
            revision: stored.revision,
        };
        Ok((!entry.is_expired(SystemTime::now())).then_some(entry))
    }

    fn change_of(&self, stored: &kv::Entry) -> Option<Change> {
        let key = decode_key(&self.table, &stored.key)?;
        if stored.operation != kv::Operation::Put {
            return Some(Change::Delete {
                key,
                revision: stored.revision,
            });
        }
        match decode_value(&stored.value) {
            Ok((value, expires_at)) => Some(Change::Put {
                key,
                entry: Entry {
                    value,
                    expires_at: self.effective_expiry(expires_at, stored),
                    revision: stored.revision,
                },
            }),
            Err(e) => {
                // Undecodable: make caches forget the key rather than keep an older value.
                tracing::warn!(key, error = %e, "undecodable KV value");
                Some(Change::Delete {
                    key,
                    revision: stored.revision,
                })
            }
        }
    }

    /// Reads the last message for the key. Reads are idempotent, so transient failures (a
    /// leader election, no replica reachable) are retried until the caller's deadline cuts
    /// them off.
    async fn get_entry(&self, nkey: &str) -> StoreResult<Option<kv::Entry>> {
        let mut backoff = Duration::from_millis(10);
        loop {
            match read_last(&self.kv, nkey).await {
                Err(e) if e.is_retryable() => {
                    tracing::debug!(error = %e, "KV read failed, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(100));
                }
                other => return other,
            }
        }
    }

    /// Publishes an envelope, optionally as compare-and-set on the subject's last sequence.
    async fn publish(
        &self,
        key: &str,
        nkey: &str,
        payload: Bytes,
        ttl: Option<Duration>,
        expected: Option<u64>,
    ) -> StoreResult<u64> {
        let prefix = self.kv.put_prefix.as_deref().unwrap_or(&self.kv.prefix);
        let subject = format!("{prefix}{nkey}");
        let mut headers = HeaderMap::new();
        if let Some(rev) = expected {
            headers.insert(header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, rev.to_string());
        }
        if let Some(ttl) = ttl.filter(|_| self.per_key_ttl) {
            // Whole seconds, rounded up so the server never drops an entry before its envelope
            // expiry; the server's minimum is one second.
            let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
            headers.insert(header::NATS_MESSAGE_TTL, secs.max(1).to_string());
        }
        // "No responders" means no stream took the message, so sending it again cannot store
        // it twice; it happens while a new bucket's interest spreads through the cluster and
        // during leader elections. Other failures are returned (the caller's deadline bounds
        // the loop).
        let mut backoff = Duration::from_millis(10);
        loop {
            let ack = self
                .js
                .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                .await
                .map_err(|e| map_publish_error(key, &e))?;
            match ack.await {
                Ok(ack) => return Ok(ack.sequence),
                Err(e) if e.kind() == jetstream::context::PublishErrorKind::StreamNotFound => {
                    tracing::debug!(error = %e, "KV write found no stream, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(100));
                }
                Err(e) => return Err(map_publish_error(key, &e)),
            }
        }
    }

    fn envelope(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Bytes {
        encode_value(key, value, ttl.map(|t| SystemTime::now() + t))
    }

    async fn create(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> StoreResult<u64> {
        let nkey = self.nats_key(key)?;
        let payload = self.envelope(key, &value, ttl);
        match self
            .publish(key, &nkey, payload.clone(), ttl, Some(0))
            .await
        {
            Err(StoreError::Conflict { .. }) => {}
            other => return other,
        }
        // Something is stored under the key: it only blocks us if it is a live entry.
        let expected = match self.get_entry(&nkey).await? {
            None => 0,
            Some(stored) => match self.live_entry(&stored) {
                Ok(None) => stored.revision,
                Ok(Some(_)) | Err(StoreError::Invalid(_)) => {
                    return Err(StoreError::Conflict {
                        key: key.to_owned(),
                    });
                }
                Err(e) => return Err(e),
            },
        };
        self.publish(key, &nkey, payload, ttl, Some(expected)).await
    }
}

#[async_trait]
impl Store for NatsKvStore {
    async fn get(&self, key: &str) -> StoreResult<Option<Entry>> {
        let s = &*self.inner;
        let nkey = s.nats_key(key)?;
        s.bounded("get", async {
            let found = match s.get_entry(&nkey).await? {
                Some(stored) => s.live_entry(&stored),
                None => Ok(None),
            };
            if let Ok(found) = &found {
                trace::set_current("gatehouse.store.found", found.is_some());
            }
            found
        })
        .await
    }

    async fn put(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> StoreResult<u64> {
        let s = &*self.inner;
        let nkey = s.nats_key(key)?;
        let payload = s.envelope(key, &value, ttl);
        s.bounded("put", s.publish(key, &nkey, payload, ttl, None))
            .await
    }

    async fn create(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> StoreResult<u64> {
        let s = &*self.inner;
        s.bounded("create", s.create(key, value, ttl)).await
    }

    /// `expected == 0` behaves like `create`.
    async fn update(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
        expected: u64,
    ) -> StoreResult<u64> {
        let s = &*self.inner;
        if expected == 0 {
            return s.bounded("update", s.create(key, value, ttl)).await;
        }
        let nkey = s.nats_key(key)?;
        let payload = s.envelope(key, &value, ttl);
        s.bounded(
            "update",
            s.publish(key, &nkey, payload, ttl, Some(expected)),
        )
        .await
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        let s = &*self.inner;
        let nkey = s.nats_key(key)?;
        s.bounded("delete", async {
            s.kv.delete(&nkey).await.map_err(|e| match e.kind() {
                kv::UpdateErrorKind::InvalidKey => StoreError::Invalid(e.to_string()),
                _ => StoreError::Unavailable(e.to_string()),
            })
        })
        .await
    }

    fn changes(&self) -> broadcast::Receiver<Change> {
        self.inner.feed.subscribe()
    }

    fn kind(&self) -> &'static str {
        "nats-js-kv"
    }
}
