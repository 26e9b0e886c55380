//! [`EventPublisher`]: puts Gatehouse's events on the oCIS bus (NATS JetStream subject
//! `main-queue`) without ever making a request wait for NATS.
//!
//! - `publish` encodes the event and appends it to a bounded in-memory queue, then returns. It
//!   uses only a `std` mutex and a `tokio::sync::Notify`, which work from any runtime (the node
//!   calls it from several current-thread runtimes at once) and never block on I/O.
//! - One background task, on the runtime that called [`EventPublisher::start`], connects
//!   (retrying forever: start-up never waits for or fails on an unreachable server) and publishes
//!   the queue head with a JetStream publish-and-acknowledge. The head leaves the queue only when
//!   the server has acknowledged it, so order is kept and nothing is lost while NATS is down; the
//!   queue bound decides how long an outage can be absorbed (further events are dropped,
//!   counted and logged — a full queue must not grow memory without limit).
//! - Every attempt of the same event carries the same `Nats-Msg-Id` (the event id), so when an
//!   acknowledgement is lost or late and the event is sent again, the stream's de-duplication
//!   window drops the copy. Each retry of an event doubles the time its acknowledgement is
//!   awaited, so a slow cluster is not flooded with copies.
//! - While the client is disconnected nothing is sent: copies would only pile up in the client's
//!   buffer. async-nats reconnects by itself.
//! - Every event is a PRODUCER span (`send main-queue`) of the trace that raised it, from the
//!   moment it is queued until the bus acknowledges it; the span's `traceparent` travels in the
//!   envelope metadata (where go-micro consumers read it) and as a NATS header.
//! - With [`StreamSetup::Ensure`] the task makes sure a stream captures `main-queue` before the
//!   first publish and again whenever the server says no stream does. If none exists it creates
//!   one named `main-queue` (file storage, unlimited age, `duplicate_window` 2 min) — the same
//!   name and subject the go-micro `natsjs` consumers of oCIS create, so whichever side comes first,
//!   both use one stream.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage, stream};
use bytes::Bytes;
use gatehouse_shared::config::{Events as EventsConfig, NatsSecurity};
use gatehouse_shared::events::{EventSink, MAIN_QUEUE, OutgoingEvent, PublishError};
use gatehouse_shared::trace::{self, propagate};
use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanBuilder, SpanKind, TraceContextExt as _};
use opentelemetry_semantic_conventions::attribute as semconv;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::security;

/// Default bound of the outgoing queue.
pub const DEFAULT_CAPACITY: usize = 10_000;
/// Default wait for the acknowledgement of an event's first attempt.
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for one acknowledgement, however often an event was retried.
const MAX_ACK_WAIT: Duration = Duration::from_secs(30);
/// Floor of the acknowledgement wait once an event is being retried.
const MIN_RETRY_ACK_WAIT: Duration = Duration::from_millis(1);
/// Pause after a fast failure (no responders, JetStream error), doubling up to the maximum.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(2);
/// Bound of the stream look-up and creation (JetStream API requests).
const API_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the task re-checks the connection while waiting for it.
const CONNECTION_POLL: Duration = Duration::from_millis(250);

/// What to do about the JetStream stream behind `main-queue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamSetup {
    /// Publish only; someone else (oCIS) creates the stream. Publishes are retried until it exists.
    Existing,
    /// Create a stream when none captures `main-queue`.
    Ensure {
        name: String,
        replicas: usize,
        /// De-duplication window: a re-sent event is recognised within it. Must exceed the
        /// longest time between two attempts of one event (seconds, see the module docs).
        duplicate_window: Duration,
        /// Zero for unlimited.
        max_age: Duration,
    },
}

impl Default for StreamSetup {
    fn default() -> Self {
        StreamSetup::Ensure {
            name: MAIN_QUEUE.to_owned(),
            replicas: 1,
            duplicate_window: Duration::from_secs(120),
            max_age: Duration::ZERO,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventPublisherOptions {
    /// Server addresses (`host:port`, `nats://…`, `tls://…`).
    pub servers: Vec<String>,
    /// TLS and credentials (section `events`).
    pub security: NatsSecurity,
    /// Most events waiting for the bus; more are dropped.
    pub capacity: usize,
    pub stream: StreamSetup,
    /// Wait for the acknowledgement of an event's first attempt; doubled on every retry.
    pub ack_timeout: Duration,
}

impl Default for EventPublisherOptions {
    fn default() -> Self {
        Self {
            servers: vec!["nats://127.0.0.1:9233".to_owned()],
            security: NatsSecurity::plain("events"),
            capacity: DEFAULT_CAPACITY,
            stream: StreamSetup::default(),
            ack_timeout: DEFAULT_ACK_TIMEOUT,
        }
    }
}

impl EventPublisherOptions {
    /// Options from the `events` configuration section; `None` when events are disabled (empty
    /// endpoint). The endpoint may list several servers separated by commas, as go-micro allows.
    /// `cluster` has no meaning for JetStream and is not used.
    pub fn from_config(config: &EventsConfig) -> Option<Self> {
        let servers: Vec<String> = config
            .endpoint
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if servers.is_empty() {
            return None;
        }
        Some(Self {
            servers,
            security: config.nats_security(),
            stream: match StreamSetup::default() {
                StreamSetup::Ensure {
                    name,
                    duplicate_window,
                    max_age,
                    ..
                } => StreamSetup::Ensure {
                    name,
                    replicas: config.stream_replicas.max(1),
                    duplicate_window,
                    max_age,
                },
                existing => existing,
            },
            ..Self::default()
        })
    }
}

/// Why the publisher could not be started. All are configuration or wiring errors: retrying
/// does not help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventPublisherError {
    #[error("no NATS server address configured for events")]
    NoServers,
    #[error("invalid NATS server address {0:?} for events")]
    InvalidAddress(String),
    #[error("the event publisher must be started inside a tokio runtime")]
    NoRuntime,
    /// A certificate, key or credentials file that cannot be used; the message names the setting.
    #[error("{0}")]
    Security(String),
}

struct Queued {
    id: String,
    event_type: &'static str,
    bytes: Bytes,
    /// The event's PRODUCER span, ended when the bus acknowledges the event.
    span: trace::Span,
    /// The trace context the event carries, also sent as NATS headers.
    traceparent: Option<String>,
}

/// The queue head, as the publishing task sends it.
struct Head {
    id: String,
    event_type: &'static str,
    bytes: Bytes,
    traceparent: Option<String>,
}

struct Shared {
    queue: Mutex<VecDeque<Queued>>,
    capacity: usize,
    /// An event was queued.
    wake: Notify,
    /// The queue became empty.
    drained: Notify,
    /// Dropping events since the last accepted one (so a full queue logs once, not per event).
    dropping: AtomicBool,
    client: OnceLock<async_nats::Client>,
    published: AtomicU64,
    retried: AtomicU64,
    dropped: AtomicU64,
    duplicates: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, VecDeque<Queued>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_connected(&self) -> bool {
        self.client
            .get()
            .is_some_and(|c| c.connection_state() == async_nats::connection::State::Connected)
    }

    /// The queue head, waiting for one.
    async fn head(&self) -> Head {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(q) = self.lock().front() {
                return Head {
                    id: q.id.clone(),
                    event_type: q.event_type,
                    bytes: q.bytes.clone(),
                    traceparent: q.traceparent.clone(),
                };
            }
            notified.await;
        }
    }

    /// The head was acknowledged after `attempts` attempts.
    fn acked(&self, id: &str, attempts: u32) {
        let mut queue = self.lock();
        let done = if queue.front().is_some_and(|q| q.id == id) {
            queue.pop_front()
        } else {
            None
        };
        let empty = queue.is_empty();
        drop(queue);
        if let Some(done) = done {
            done.span
                .set("gatehouse.event.attempts", i64::from(attempts));
            done.span.end();
        }
        self.published.fetch_add(1, Ordering::Relaxed);
        if empty {
            self.drained.notify_waiters();
        }
    }

    async fn wait_connected(&self) {
        while !self.is_connected() {
            tokio::time::sleep(CONNECTION_POLL).await;
        }
    }
}

/// The NATS [`EventSink`]. Dropping it stops the background task; call
/// [`flush`](Self::flush) first to deliver what is queued.
pub struct EventPublisher {
    shared: Arc<Shared>,
    task: tokio::task::AbortHandle,
}

impl EventPublisher {
    /// Starts the background task on the current tokio runtime and returns at once, whether or
    /// not NATS is reachable.
    pub fn start(opts: EventPublisherOptions) -> Result<EventPublisher, EventPublisherError> {
        if opts.servers.is_empty() {
            return Err(EventPublisherError::NoServers);
        }
        let mut addrs = Vec::with_capacity(opts.servers.len());
        for s in &opts.servers {
            let addr: async_nats::ServerAddr = s
                .parse()
                .map_err(|_| EventPublisherError::InvalidAddress(s.clone()))?;
            addrs.push(addr);
        }
        security::check_files(&opts.security)
            .map(drop)
            .map_err(|e| EventPublisherError::Security(e.to_string()))?;
        let handle =
            tokio::runtime::Handle::try_current().map_err(|_| EventPublisherError::NoRuntime)?;
        let capacity = opts.capacity.max(1);
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::with_capacity(capacity.min(1024))),
            capacity,
            wake: Notify::new(),
            drained: Notify::new(),
            dropping: AtomicBool::new(false),
            client: OnceLock::new(),
            published: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
        });
        let task = handle
            .spawn(run(shared.clone(), opts, addrs))
            .abort_handle();
        Ok(EventPublisher { shared, task })
    }

    /// Events accepted but not yet acknowledged by the server.
    pub fn pending(&self) -> usize {
        self.shared.lock().len()
    }

    /// Connection state and reconnects (metrics); not connected before the first connection.
    pub fn connection(&self) -> crate::ConnectionStats {
        self.shared
            .client
            .get()
            .map(crate::ConnectionStats::of)
            .unwrap_or_default()
    }

    /// Whether the client currently has a server connection.
    pub fn is_connected(&self) -> bool {
        self.shared.is_connected()
    }

    /// Events acknowledged by the server (a de-duplicated re-send counts once).
    pub fn published(&self) -> u64 {
        self.shared.published.load(Ordering::Relaxed)
    }

    /// Attempts that failed and were repeated.
    pub fn retried(&self) -> u64 {
        self.shared.retried.load(Ordering::Relaxed)
    }

    /// Events refused because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Acknowledgements in which the server said it already had the event (a re-send after a
    /// lost or late acknowledgement, caught by the de-duplication window).
    pub fn duplicates(&self) -> u64 {
        self.shared.duplicates.load(Ordering::Relaxed)
    }

    /// Waits until every queued event is acknowledged; `false` if `deadline` came first.
    pub async fn flush(&self, deadline: Instant) -> bool {
        loop {
            let notified = self.shared.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.pending() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.pending() == 0;
            }
        }
    }
}

impl Drop for EventPublisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The PRODUCER span of an event: a child of the trace the event was raised in (its
/// `traceparent`, or the current span), named and attributed by the messaging conventions.
fn producer_span(event: &OutgoingEvent) -> trace::Span {
    if !trace::enabled() {
        return trace::Span::NONE;
    }
    let parent = event
        .traceparent
        .as_deref()
        .map(propagate::from_traceparent)
        .filter(|cx| cx.span().span_context().is_valid())
        .unwrap_or_else(opentelemetry::Context::current);
    trace::Span::child_of(&parent, || {
        SpanBuilder::from_name(format!("send {MAIN_QUEUE}"))
            .with_kind(SpanKind::Producer)
            .with_attributes([
                KeyValue::new(semconv::MESSAGING_SYSTEM, "nats"),
                KeyValue::new(semconv::MESSAGING_DESTINATION_NAME, MAIN_QUEUE),
                KeyValue::new(semconv::MESSAGING_OPERATION_TYPE, "send"),
                KeyValue::new(semconv::MESSAGING_OPERATION_NAME, "publish"),
                KeyValue::new("gatehouse.event.type", event.event.type_name()),
            ])
    })
}

impl EventSink for EventPublisher {
    fn publish(&self, mut event: OutgoingEvent) -> Result<(), PublishError> {
        // Consumers continue the producer span: its context goes into the envelope metadata
        // (go-micro consumers read it there) and into the NATS headers.
        let span = producer_span(&event);
        if let Some(tp) = span.context().and_then(propagate::traceparent) {
            event.traceparent = Some(tp);
        }
        let encoded = event.encode()?;
        span.set(semconv::MESSAGING_MESSAGE_ID, encoded.id.clone());
        let shared = &self.shared;
        let mut queue = shared.lock();
        if queue.len() >= shared.capacity {
            drop(queue);
            span.fail("queue_full", "event queue full: event dropped");
            span.end();
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            if !shared.dropping.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    capacity = shared.capacity,
                    event_type = encoded.event_type,
                    "event queue full: dropping events until the bus accepts them again"
                );
            }
            return Err(PublishError::QueueFull {
                capacity: shared.capacity,
            });
        }
        queue.push_back(Queued {
            id: encoded.id,
            event_type: encoded.event_type,
            bytes: Bytes::from(encoded.bytes),
            span,
            traceparent: event.traceparent,
        });
        drop(queue);
        if shared.dropping.swap(false, Ordering::Relaxed) {
            tracing::info!("event queue accepts events again");
        }
        shared.wake.notify_one();
        Ok(())
    }
}

fn connect_options(opts: &EventPublisherOptions) -> async_nats::ConnectOptions {
    let mut o = async_nats::ConnectOptions::new()
        .name("gatehouse-events")
        .connection_timeout(Duration::from_secs(2))
        .retry_on_initial_connect()
        .max_reconnects(None::<usize>)
        .reconnect_delay_callback(|attempts| {
            let exp = u32::try_from(attempts).unwrap_or(u32::MAX).min(6);
            Duration::from_millis(50u64.saturating_mul(1 << exp)).min(Duration::from_secs(2))
        });
    let section = opts.security.section.clone();
    o = o.event_callback(move |event| {
        if let async_nats::Event::ServerError(err) = &event {
            security::report_server_error(&section, err);
        }
        std::future::ready(())
    });
    o
}

async fn run(shared: Arc<Shared>, opts: EventPublisherOptions, addrs: Vec<async_nats::ServerAddr>) {
    let options = match security::apply(connect_options(&opts), &opts.security).await {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(error = %e, "cannot set up the event bus client; events will not be delivered");
            return;
        }
    };
    let client = match options.connect(addrs).await {
        Ok(c) => c,
        Err(e) => {
            // With retry_on_initial_connect only option errors (e.g. an unreadable CA file) end
            // up here; they do not go away, so events stay queued and are dropped when full.
            tracing::error!(error = %e, "cannot set up the event bus client; events will not be delivered");
            return;
        }
    };
    let _ = shared.client.set(client.clone());
    let js = jetstream::ContextBuilder::new()
        .timeout(MAX_ACK_WAIT)
        .build(client);
    let mut stream_ready = matches!(opts.stream, StreamSetup::Existing);
    let mut attempt: u32 = 0;
    let mut failing = false;
    loop {
        let Head {
            id,
            event_type,
            bytes,
            traceparent,
        } = shared.head().await;
        shared.wait_connected().await;
        if !stream_ready {
            // The context's timeout is sized for acknowledgements; a request sent just as the
            // connection drops must not hold the queue for that long.
            let ensured = tokio::time::timeout(API_TIMEOUT, ensure_stream(&js, &opts.stream))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {API_TIMEOUT:?}")));
            match ensured {
                Ok(()) => stream_ready = true,
                Err(e) => {
                    tracing::debug!(error = %e, "event stream not ready yet");
                    attempt = attempt.saturating_add(1);
                    tokio::time::sleep(retry_pause(attempt)).await;
                    continue;
                }
            }
        }
        let wait = ack_wait(opts.ack_timeout, attempt);
        match publish_once(&js, &id, bytes, traceparent.as_deref(), wait).await {
            Ok(ack) => {
                if ack.duplicate {
                    shared.duplicates.fetch_add(1, Ordering::Relaxed);
                }
                shared.acked(&id, attempt + 1);
                attempt = 0;
                if failing {
                    failing = false;
                    tracing::info!("event bus accepts events again");
                }
            }
            Err(e) => {
                shared.retried.fetch_add(1, Ordering::Relaxed);
                attempt = attempt.saturating_add(1);
                if !failing {
                    failing = true;
                    tracing::warn!(event_id = %id, event_type, error = %e,
                        "publishing event failed; retrying until acknowledged");
                } else {
                    tracing::debug!(event_id = %id, event_type, attempt, error = %e, "event publish retry failed");
                }
                if e.kind() == jetstream::context::PublishErrorKind::StreamNotFound
                    && matches!(opts.stream, StreamSetup::Ensure { .. })
                {
                    stream_ready = false;
                }
                // A timeout has already waited; other failures come back at once.
                if e.kind() != jetstream::context::PublishErrorKind::TimedOut {
                    tokio::time::sleep(retry_pause(attempt)).await;
                }
            }
        }
    }
}

async fn publish_once(
    js: &jetstream::Context,
    id: &str,
    bytes: Bytes,
    traceparent: Option<&str>,
    wait: Duration,
) -> Result<jetstream::publish::PublishAck, jetstream::context::PublishError> {
    let timed_out =
        || jetstream::context::PublishError::new(jetstream::context::PublishErrorKind::TimedOut);
    let mut message = PublishMessage::build();
    if let Some(tp) = traceparent {
        // `header` adds to the message's headers (the message id below is one as well).
        message = message.header("traceparent", tp);
    }
    let message = message.payload(bytes).message_id(id);
    // Sending only queues the message in the client (bounded by the context timeout).
    let ack = js.send_publish(MAIN_QUEUE, message).await?;
    tokio::time::timeout(wait, ack.into_future())
        .await
        .map_err(|_| timed_out())?
}

/// The acknowledgement wait for attempt `attempt` (0 = first) of one event.
fn ack_wait(first: Duration, attempt: u32) -> Duration {
    if attempt == 0 {
        return first.min(MAX_ACK_WAIT);
    }
    let base = first.max(MIN_RETRY_ACK_WAIT);
    base.saturating_mul(1u32 << attempt.min(16))
        .min(MAX_ACK_WAIT)
}

fn retry_pause(attempt: u32) -> Duration {
    RETRY_PAUSE
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(MAX_RETRY_PAUSE)
}

async fn ensure_stream(js: &jetstream::Context, setup: &StreamSetup) -> Result<(), String> {
    let StreamSetup::Ensure {
        name,
        replicas,
        duplicate_window,
        max_age,
    } = setup
    else {
        return Ok(());
    };
    match js.stream_by_subject(MAIN_QUEUE).await {
        Ok(existing) => {
            tracing::debug!(stream = %existing, "events go to an existing stream");
            Ok(())
        }
        Err(e) if e.kind() == jetstream::context::GetStreamByNameErrorKind::NotFound => {
            let config = stream::Config {
                name: name.clone(),
                description: Some("oCIS events (created by Gatehouse)".to_owned()),
                subjects: vec![MAIN_QUEUE.to_owned()],
                storage: stream::StorageType::File,
                num_replicas: (*replicas).max(1),
                duplicate_window: *duplicate_window,
                max_age: *max_age,
                ..Default::default()
            };
            // A concurrent creator may win; the next attempt then finds its stream.
            js.create_stream(config)
                .await
                .map(|_| tracing::info!(stream = %name, "created the event stream"))
                .map_err(|e| format!("creating stream {name}: {e}"))
        }
        Err(e) => Err(format!("looking up the stream of {MAIN_QUEUE}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use gatehouse_shared::config::NatsAuth;

    use super::*;

    #[test]
    fn ack_wait_doubles_per_retry_within_bounds() {
        let s = Duration::from_secs(5);
        assert_eq!(ack_wait(s, 0), s);
        assert_eq!(ack_wait(s, 1), Duration::from_secs(10));
        assert_eq!(ack_wait(s, 2), Duration::from_secs(20));
        assert_eq!(ack_wait(s, 3), MAX_ACK_WAIT);
        assert_eq!(ack_wait(s, 100), MAX_ACK_WAIT);
        assert_eq!(ack_wait(Duration::ZERO, 0), Duration::ZERO);
        assert_eq!(ack_wait(Duration::ZERO, 1), Duration::from_millis(2));
        assert_eq!(retry_pause(1), RETRY_PAUSE);
        assert_eq!(retry_pause(2), RETRY_PAUSE * 2);
        assert_eq!(retry_pause(50), MAX_RETRY_PAUSE);
    }

    #[test]
    fn options_from_config() {
        let mut c = EventsConfig::default();
        let o = EventPublisherOptions::from_config(&c).unwrap();
        assert_eq!(o.servers, ["127.0.0.1:9233"]);
        assert_eq!(o.capacity, DEFAULT_CAPACITY);
        assert_eq!(o.security.tls, None);
        assert_eq!(o.security.auth, NatsAuth::None);
        c.endpoint = "nats://a:4222, nats://b:4222".into();
        c.username = "u".into();
        c.password = "p".into();
        c.enable_tls = true;
        c.tls_insecure = true;
        let o = EventPublisherOptions::from_config(&c).unwrap();
        assert_eq!(o.servers, ["nats://a:4222", "nats://b:4222"]);
        assert_eq!(
            o.security.auth,
            NatsAuth::UserPassword {
                user: "u".into(),
                password: "p".into()
            }
        );
        let tls = o.security.tls.unwrap();
        assert!(tls.insecure && tls.root_ca.is_none());
        c.stream_replicas = 3;
        let o = EventPublisherOptions::from_config(&c).unwrap();
        assert!(
            matches!(o.stream, StreamSetup::Ensure { replicas: 3, ref name, .. } if name == MAIN_QUEUE),
            "{:?}",
            o.stream
        );
        c.endpoint = " ".into();
        assert_eq!(EventPublisherOptions::from_config(&c), None);
    }

    #[test]
    fn start_needs_servers_and_a_runtime() {
        let none = EventPublisherOptions {
            servers: vec![],
            ..Default::default()
        };
        assert_eq!(
            EventPublisher::start(none).err(),
            Some(EventPublisherError::NoServers)
        );
        assert_eq!(
            EventPublisher::start(EventPublisherOptions::default()).err(),
            Some(EventPublisherError::NoRuntime)
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let bad = EventPublisherOptions {
                servers: vec!["nats://[::1".into()],
                ..Default::default()
            };
            assert!(matches!(
                EventPublisher::start(bad).err(),
                Some(EventPublisherError::InvalidAddress(_))
            ));
        });
    }
}
