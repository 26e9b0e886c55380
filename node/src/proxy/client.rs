//! The upstream HTTP/1.1 client: one connection pool per HTTP worker, whose connections are
//! driven by the request that uses them, speaking HTTP/1.1 through the gateway's own framing
//! ([`gatehouse_shared::http1`]).
//!
//! Why not hyper-util's pooled client, nor hyper's client connection: the first runs every
//! upstream connection as a task of its own, so each request wakes two tasks, hands its head and
//! body across channels and hashes the pool key twice; the second still passes every message
//! through a dispatcher built for every use of HTTP/1. Together they were a third of the
//! instructions of an unprotected request (docs/performance.md). A reverse proxy needs less:
//! write one head, read one head, and know where each body ends.
//!
//! An idle connection sits in its upstream's list while no request uses it. A request takes one
//! (the most recently used), writes its head and streams its body while it reads the response
//! head, and hands the connection to the response body, which reads from it and puts it back as
//! soon as the body has ended — if both messages ended cleanly and the upstream keeps the
//! connection open. Nothing polls an idle connection, so an upstream that closes one is noticed
//! when it is next taken (it is discarded and the next one is tried) or by the sweep that drops
//! connections idle for longer than `upstream.pool_idle_timeout`. An idempotent request whose
//! reused connection failed before any answer arrived and before any of its body was sent is
//! sent again on a new connection. An upstream may answer before it has read the whole request
//! body (an early refusal, a store that discards, a streaming service): the rest of the body
//! follows the answer, so that the client can finish its upload and keep its connection; if the
//! upstream stops taking it, what the client still sends is read and dropped for a bounded time
//! (as nginx's lingering close does) and the upstream connection is closed. Protocol upgrades
//! use hyper's client connection, run as a task, and never return to the pool.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use gatehouse_shared::http1::{
    self, ChunkedDecoder, Decoded, RequestFraming, ResponseFraming, ResponseHead,
};
use http::uri::{Authority, Scheme};
use http::{Method, Request, Response, StatusCode, Uri};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWrite;
use tower::Service;

use super::tls::{Connector, UpstreamStream};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// First read buffer of a connection; grows while reads fill it, up to [`MAX_READ`].
const MIN_READ: usize = 8 * 1024;
const MAX_READ: usize = 256 * 1024;
/// Request body bytes queued for the socket before the next frame is taken from the client.
const WRITE_HIGH_WATER: usize = 64 * 1024;

/// Why an exchange with an upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be opened (resolution, TCP connect, TLS handshake, or its deadline).
    #[error("{0}")]
    Connect(BoxError),
    /// Reading the client's own request body failed (a malformed chunk, a client gone).
    #[error("request body: {0}")]
    ClientBody(hyper::Error),
    /// The connection failed or the upstream broke the protocol.
    #[error("{0}")]
    Upstream(BoxError),
}

/// Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct UpstreamClient {
    pool: Arc<Pool>,
}

struct Pool {
    connector: Connector,
    idle_timeout: Option<Duration>,
    /// One entry per upstream ever reached; entries are never removed, so an index stays valid.
    /// A short list compared by authority costs less than hashing the key.
    hosts: Mutex<Hosts>,
}

#[derive(Default)]
struct Hosts {
    list: Vec<Host>,
    sweeping: bool,
}

struct Host {
    scheme: Scheme,
    authority: Authority,
    idle: Vec<Idle>,
}

struct Idle {
    conn: Box<Conn>,
    since: Instant,
}

/// One upstream connection and what has been read from it but not consumed yet.
struct Conn {
    io: TokioIo<UpstreamStream>,
    read: BytesMut,
    read_size: usize,
}

impl Conn {
    fn new(io: UpstreamStream) -> Box<Self> {
        Box::new(Self {
            io: TokioIo::new(io),
            read: BytesMut::new(),
            read_size: MIN_READ,
        })
    }

    /// Reads what the socket has into `read`; `Ok(0)` at the end of the stream.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.read.capacity() - self.read.len() < MIN_READ / 2 {
            self.read.reserve(self.read_size);
        }
        let spare = self.read.capacity() - self.read.len();
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.read
        ))?;
        if n == spare {
            self.read_size = (self.read_size * 2).min(MAX_READ);
        }
        Poll::Ready(Ok(n))
    }

    /// An idle connection can take a request if the upstream has neither closed it nor sent
    /// anything unasked.
    fn usable(&mut self, cx: &mut Context<'_>) -> bool {
        self.read.is_empty() && self.poll_read(cx).is_pending()
    }
}

/// A connection on loan to a response body, and where to return it.
struct Lease {
    conn: Box<Conn>,
    pool: Arc<Pool>,
    host: usize,
    /// Both messages can end cleanly and the upstream keeps the connection open.
    reusable: bool,
}

impl Lease {
    /// Both messages have ended: back to the pool if the connection can serve another request,
    /// closed otherwise.
    fn release(self) {
        if self.reusable && self.conn.read.is_empty() {
            self.pool.put(self.host, self.conn);
        }
    }
}

impl UpstreamClient {
    /// `idle_timeout`: how long an unused connection is kept; `None` keeps it until the upstream
    /// closes it.
    pub fn new(connector: Connector, idle_timeout: Option<Duration>) -> Self {
        Self {
            pool: Arc::new(Pool {
                connector,
                idle_timeout,
                hosts: Mutex::new(Hosts::default()),
            }),
        }
    }

    /// Sends `req` (origin-form URI, `Host` set, no hop-by-hop fields) to `scheme://authority` on
    /// a pooled connection and returns the response head; the body streams from the same
    /// connection.
    ///
    /// The head is encoded before the future is returned, so that the future holds the encoded
    /// head but neither the request nor its parts.
    pub fn send<'a>(
        &'a self,
        scheme: &'a Scheme,
        authority: &'a Authority,
        req: Request<Incoming>,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, SendError>> + Send + 'a {
        let (parts, body) = req.into_parts();
        let ended = body.is_end_stream();
        let (framing, extra) = http1::request_framing(
            &parts.method,
            &parts.headers,
            ended,
            body.size_hint().exact(),
        );
        let mut head = Vec::with_capacity(1024);
        let pq = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        http1::encode_request_head(&mut head, &parts.method, pq, &parts.headers, extra.as_ref());
        let mut exchange = Exchange {
            head: Bytes::from(head),
            method: parts.method,
            out: Outgoing::new(framing, (framing != RequestFraming::Empty).then_some(body)),
        };
        let (host, mut idle) = self.pool.take(scheme, authority);
        async move {
            loop {
                let (mut conn, reused) = match self.checkout(host, idle.take()).await {
                    Some(conn) => (conn, true),
                    None => (self.connect(scheme, authority).await?, false),
                };
                match exchange.run(&mut conn).await {
                    Ok((head, request_done)) => {
                        let switching = head.status == StatusCode::SWITCHING_PROTOCOLS;
                        let lease = Lease {
                            conn,
                            pool: self.pool.clone(),
                            host,
                            reusable: head.keep_alive && !switching,
                        };
                        // An answer before the whole request: the rest follows it.
                        let rest = (!request_done && !switching).then(|| boxed(exchange.out));
                        return Ok(response(head, lease, rest));
                    }
                    Err(failed) if reused && failed.before_answer && exchange.can_resend() => {
                        tracing::debug!(error = %failed.error, "reused upstream connection failed; sending again on a new one");
                    }
                    Err(failed) => return Err(failed.error),
                }
            }
        }
    }

    /// Sends a protocol-upgrade request on a connection of its own (hyper's), which runs as a task
    /// until the upgraded connection (taken with `hyper::upgrade::on` on the response) is done
    /// with it.
    pub async fn send_upgrade(
        &self,
        scheme: &Scheme,
        authority: &Authority,
        req: Request<Incoming>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        let io = self.open(scheme, authority).await?;
        let (mut sender, driver) = hyper::client::conn::http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| SendError::Upstream(e.into()))?;
        tokio::spawn(async move {
            if let Err(e) = driver.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection of an upgrade ended with an error");
            }
        });
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| SendError::Upstream(e.into()))?;
        Ok(resp.map(|inner| UpstreamBody {
            kind: Kind::Upgrade(inner),
        }))
    }

    async fn open(
        &self,
        scheme: &Scheme,
        authority: &Authority,
    ) -> Result<UpstreamStream, SendError> {
        let uri = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| SendError::Connect(e.into()))?;
        self.pool
            .connector
            .clone()
            .call(uri)
            .await
            .map_err(SendError::Connect)
    }

    /// Boxed: a new connection (TCP, maybe TLS) is rare next to a pooled one, and its future is
    /// the largest part of an exchange.
    async fn connect(
        &self,
        scheme: &Scheme,
        authority: &Authority,
    ) -> Result<Box<Conn>, SendError> {
        Ok(Conn::new(Box::pin(self.open(scheme, authority)).await?))
    }

    /// The first usable connection among `first` and the idle connections to `host`, most
    /// recently returned first; closed and expired ones met on the way are dropped.
    async fn checkout(&self, host: usize, first: Option<Idle>) -> Option<Box<Conn>> {
        let mut next = first;
        loop {
            let idle = match next.take() {
                Some(idle) => idle,
                None => self.pool.hosts.lock().unwrap().list[host].idle.pop()?,
            };
            if self.pool.expired(&idle, Instant::now()) {
                continue;
            }
            let mut conn = idle.conn;
            if poll_fn(|cx| Poll::Ready(conn.usable(cx))).await {
                return Some(conn);
            }
        }
    }
}

fn response(
    head: ResponseHead,
    lease: Lease,
    rest: Option<Box<Outgoing>>,
) -> Response<UpstreamBody> {
    let state = match head.framing {
        ResponseFraming::Empty => State::Done,
        ResponseFraming::Length(0) => State::Done,
        ResponseFraming::Length(n) => State::Length(n),
        ResponseFraming::Chunked => State::Chunked(ChunkedDecoder::default()),
        ResponseFraming::UntilClose => State::UntilClose,
    };
    let mut resp = Response::new(UpstreamBody {
        kind: Kind::Pooled(PooledBody {
            lease: Some(lease),
            state,
            rest,
        }),
    });
    *resp.status_mut() = head.status;
    *resp.version_mut() = head.version;
    *resp.headers_mut() = head.headers;
    resp
}

impl Pool {
    /// The index of the upstream's entry (created on first use) and its most recently returned
    /// idle connection, under one lock.
    fn take(&self, scheme: &Scheme, authority: &Authority) -> (usize, Option<Idle>) {
        let mut hosts = self.hosts.lock().unwrap();
        if let Some(i) = hosts
            .list
            .iter()
            .position(|h| h.authority == *authority && h.scheme == *scheme)
        {
            return (i, hosts.list[i].idle.pop());
        }
        hosts.list.push(Host {
            scheme: scheme.clone(),
            authority: authority.clone(),
            idle: Vec::new(),
        });
        (hosts.list.len() - 1, None)
    }

    fn expired(&self, idle: &Idle, now: Instant) -> bool {
        self.idle_timeout
            .is_some_and(|t| now.saturating_duration_since(idle.since) >= t)
    }

    fn put(self: &Arc<Self>, host: usize, conn: Box<Conn>) {
        let start_sweep = {
            let mut hosts = self.hosts.lock().unwrap();
            hosts.list[host].idle.push(Idle {
                conn,
                since: Instant::now(),
            });
            let start = self.idle_timeout.is_some() && !hosts.sweeping;
            hosts.sweeping |= start;
            start
        };
        if let (true, Some(timeout)) = (start_sweep, self.idle_timeout) {
            tokio::spawn(sweep(Arc::downgrade(self), timeout));
        }
    }
}

/// Drops connections once they have been idle for `timeout`, waking when the oldest one is due
/// (never more often than every 10 ms), until the pool is gone.
async fn sweep(pool: Weak<Pool>, timeout: Duration) {
    const MIN_WAIT: Duration = Duration::from_millis(10);
    let mut due = Instant::now() + timeout;
    loop {
        tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
        let Some(pool) = pool.upgrade() else { return };
        let now = Instant::now();
        let mut oldest: Option<Instant> = None;
        let expired: Vec<Idle> = {
            let mut hosts = pool.hosts.lock().unwrap();
            let mut expired = Vec::new();
            for host in &mut hosts.list {
                let (old, kept): (Vec<Idle>, Vec<Idle>) = std::mem::take(&mut host.idle)
                    .into_iter()
                    .partition(|idle| pool.expired(idle, now));
                if let Some(since) = kept.iter().map(|idle| idle.since).min() {
                    oldest = Some(oldest.map_or(since, |o| o.min(since)));
                }
                host.idle = kept;
                expired.extend(old);
            }
            expired
        };
        // Closed outside the lock.
        drop(expired);
        // Connections returned later are due later than a full timeout from now.
        due = oldest
            .map_or(now + timeout, |since| since + timeout)
            .max(now + MIN_WAIT);
    }
}

/// One request on its way out: its encoded head (kept to send it again) and what is left to write.
struct Exchange {
    head: Bytes,
    method: Method,
    out: Outgoing,
}

struct Failed {
    error: SendError,
    /// Nothing came from the upstream before the failure.
    before_answer: bool,
}

impl Exchange {
    fn can_resend(&self) -> bool {
        !self.out.started
            && matches!(
                self.method,
                Method::GET
                    | Method::HEAD
                    | Method::OPTIONS
                    | Method::TRACE
                    | Method::PUT
                    | Method::DELETE
            )
    }

    /// Writes the request and streams its body while reading the response head; returns the
    /// head and whether the whole request was sent. An upstream that stops taking the request
    /// may still have answered it: its answer is read before the failure counts.
    async fn run(&mut self, conn: &mut Conn) -> Result<(ResponseHead, bool), Failed> {
        self.out.restart(&self.head);
        let mut answered = false;
        let upstream = |e: BoxError, answered: bool| Failed {
            error: SendError::Upstream(e),
            before_answer: !answered,
        };
        poll_fn(|cx| {
            loop {
                let mut progress = match self.out.step(&mut conn.io, cx) {
                    Ok(progress) => progress,
                    Err(e) => {
                        return Poll::Ready(Err(Failed {
                            error: SendError::ClientBody(e),
                            before_answer: !answered,
                        }));
                    }
                };
                // The response head, skipping interim (1xx) responses.
                loop {
                    match http1::parse_response_head(&mut conn.read, &self.method) {
                        Ok(Some(head))
                            if head.status.is_informational()
                                && head.status != StatusCode::SWITCHING_PROTOCOLS => {}
                        Ok(Some(head)) => return Poll::Ready(Ok((head, self.out.sent()))),
                        Ok(None) => break,
                        Err(e) => return Poll::Ready(Err(upstream(e.into(), true))),
                    }
                }
                match conn.poll_read(cx) {
                    Poll::Ready(Ok(0)) => {
                        let e: BoxError = match self.out.refused.take() {
                            Some(e) => format!("upstream stopped reading the request: {e}").into(),
                            None => "upstream closed the connection before answering".into(),
                        };
                        return Poll::Ready(Err(upstream(e, answered)));
                    }
                    Poll::Ready(Ok(_)) => {
                        answered = true;
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(upstream(e.into(), answered))),
                    Poll::Pending => {}
                }
                if !progress {
                    return Poll::Pending;
                }
            }
        })
        .await
    }
}

/// What is left to write of a request: buffers queued for the socket and the rest of its body.
/// The exchange drives it until the response head arrives; if the upstream answered before it had
/// the whole request, the response body drives it on, and then a task of its own
/// ([`complete_request`]) once the response has ended.
struct Outgoing {
    framing: RequestFraming,
    /// `None` once the body has ended (or when there is none).
    body: Option<Incoming>,
    queue: VecDeque<Bytes>,
    /// Bytes queued since the socket last took everything.
    queued: usize,
    /// Written bytes can wait in the stream (TLS) until it is flushed; a flush that did not
    /// finish must be polled again, also when nothing new is queued.
    flushed: bool,
    /// A frame of the body has been taken from the client: the request can no longer be sent
    /// again.
    started: bool,
    /// The upstream stopped taking the request (a write failed); nothing more is written.
    refused: Option<std::io::Error>,
}

impl Outgoing {
    fn new(framing: RequestFraming, body: Option<Incoming>) -> Self {
        Self {
            framing,
            body,
            queue: VecDeque::new(),
            queued: 0,
            flushed: false,
            started: false,
            refused: None,
        }
    }

    /// Queues the head again, for a first attempt or a resend (only before any of the body was
    /// taken).
    fn restart(&mut self, head: &Bytes) {
        self.queue = VecDeque::from([head.clone()]);
        self.queued = head.len();
        self.flushed = false;
        self.refused = None;
    }

    /// The whole request has been written and flushed.
    fn sent(&self) -> bool {
        self.body.is_none() && self.queue.is_empty() && self.flushed
    }

    /// Takes the next body frame once the socket has taken the previous ones, and writes what is
    /// queued; `Ok(true)` if anything moved. A failed write is remembered in `refused`, not
    /// returned: the upstream may have answered already. The error is the client's body failing.
    #[inline(always)]
    fn step(
        &mut self,
        io: &mut TokioIo<UpstreamStream>,
        cx: &mut Context<'_>,
    ) -> Result<bool, hyper::Error> {
        if self.refused.is_some() {
            return Ok(false);
        }
        let mut progress = false;
        if self.queued < WRITE_HIGH_WATER
            && let Some(body) = &mut self.body
        {
            let ended = match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    self.started = true;
                    progress = true;
                    if let Ok(data) = frame.into_data()
                        && !data.is_empty()
                    {
                        self.queued += data.len();
                        if self.framing == RequestFraming::Chunked {
                            let mut size = Vec::with_capacity(10);
                            http1::chunk_header(&mut size, data.len());
                            self.queue.push_back(size.into());
                            self.queue.push_back(data);
                            self.queue.push_back(Bytes::from_static(b"\r\n"));
                        } else {
                            self.queue.push_back(data);
                        }
                    }
                    // A body of known length is over with its last byte: the request is sent
                    // once that is written, without waiting for the client's connection to
                    // report the end (it may read the next request first).
                    body.is_end_stream()
                }
                Poll::Ready(Some(Err(e))) => return Err(e),
                Poll::Ready(None) => {
                    progress = true;
                    true
                }
                Poll::Pending => false,
            };
            if ended {
                self.body = None;
                if self.framing == RequestFraming::Chunked {
                    self.queue.push_back(Bytes::from_static(http1::LAST_CHUNK));
                }
            }
        }
        if !self.queue.is_empty() {
            self.flushed = false;
        }
        if !self.flushed {
            match poll_write_queue(io, &mut self.queue, cx) {
                Poll::Ready(Ok(())) => {
                    self.queued = 0;
                    self.flushed = true;
                    progress = true;
                }
                Poll::Ready(Err(e)) => {
                    self.queue.clear();
                    self.refused = Some(e);
                    progress = true;
                }
                Poll::Pending => {}
            }
        }
        Ok(progress)
    }

    /// Writes on until the request is sent (`Ready(true)`), the upstream refuses it or the
    /// client's body fails (`Ready(false)`), or nothing can move (`Pending`); `moved` is set if
    /// anything did.
    fn poll_send(
        &mut self,
        io: &mut TokioIo<UpstreamStream>,
        cx: &mut Context<'_>,
        moved: &mut bool,
    ) -> Poll<bool> {
        loop {
            if self.sent() {
                return Poll::Ready(true);
            }
            match self.step(io, cx) {
                Ok(_) if self.refused.is_some() => return Poll::Ready(false),
                Ok(true) => *moved = true,
                Ok(false) => return Poll::Pending,
                Err(_) => return Poll::Ready(false),
            }
        }
    }
}

/// How long the rest of a request is forwarded after its answer has ended without a byte moving.
const REST_STALL: Duration = Duration::from_secs(30);
/// How long, and how long without a byte arriving, the rest of a request the upstream no longer
/// takes is read and dropped (nginx's `lingering_time` and `lingering_timeout`).
const DISCARD_FOR: Duration = Duration::from_secs(30);
const DISCARD_STALL: Duration = Duration::from_secs(5);

// The early-answer paths are rare; kept out of line so that the common path stays as compact as
// it was without them.
#[cold]
#[inline(never)]
fn boxed(out: Outgoing) -> Box<Outgoing> {
    Box::new(out)
}

#[cold]
#[inline(never)]
fn spawn_completion(lease: Lease, rest: Box<Outgoing>) {
    tokio::spawn(complete_request(lease, rest));
}

#[cold]
#[inline(never)]
fn spawn_discard(body: Option<Incoming>) {
    tokio::spawn(discard(body));
}

/// The upstream answered before it had the whole request, and the answer has ended: the rest of
/// the request is forwarded (so the client finishes its upload and keeps its connection, and the
/// upstream connection can be reused) until it is sent, stalls for [`REST_STALL`], or the upstream
/// stops taking it (then the rest is discarded).
async fn complete_request(mut lease: Lease, mut out: Box<Outgoing>) {
    let io = &mut lease.conn.io;
    let mut stall = std::pin::pin!(tokio::time::sleep(REST_STALL));
    let sent = poll_fn(|cx| {
        let mut moved = false;
        let done = out.poll_send(io, cx, &mut moved);
        if done.is_pending() && moved {
            stall
                .as_mut()
                .reset(tokio::time::Instant::now() + REST_STALL);
        }
        match done {
            Poll::Ready(sent) => Poll::Ready(sent),
            Poll::Pending => stall.as_mut().poll(cx).map(|()| false),
        }
    })
    .await;
    if sent {
        lease.release();
    } else if out.refused.is_some() {
        drop(lease);
        discard(out.body.take()).await;
    }
}

/// Reads the rest of a request body nobody takes and drops it, so that the client can finish
/// sending, read its answer and keep its connection; bounded by [`DISCARD_FOR`] and
/// [`DISCARD_STALL`], after which the body is dropped and the client's connection closed.
async fn discard(body: Option<Incoming>) {
    let Some(mut body) = body else { return };
    let until = tokio::time::Instant::now() + DISCARD_FOR;
    loop {
        let by = until.min(tokio::time::Instant::now() + DISCARD_STALL);
        match tokio::time::timeout_at(by, http_body_util::BodyExt::frame(&mut body)).await {
            Ok(Some(Ok(_))) => {}
            _ => return,
        }
    }
}

/// Writes the queued buffers (several per system call where the stream allows) and flushes.
fn poll_write_queue(
    io: &mut TokioIo<UpstreamStream>,
    queue: &mut VecDeque<Bytes>,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<()>> {
    while !queue.is_empty() {
        let mut slices = [IoSlice::new(&[]); 16];
        let mut count = 0;
        for (slot, buf) in slices.iter_mut().zip(queue.iter()) {
            *slot = IoSlice::new(buf);
            count += 1;
        }
        let mut written = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count]))?;
        if written == 0 {
            return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
        }
        while written > 0 {
            let Some(front) = queue.front_mut() else {
                break;
            };
            if written >= front.len() {
                written -= front.len();
                queue.pop_front();
            } else {
                front.advance(written);
                written = 0;
            }
        }
    }
    Pin::new(io).poll_flush(cx)
}

/// An upstream response body. A pooled one reads from its connection and returns it to the pool
/// as soon as the body has ended; dropped before its end, it closes the connection (the rest of
/// the body is never read).
pub struct UpstreamBody {
    kind: Kind,
}

enum Kind {
    Pooled(PooledBody),
    Upgrade(Incoming),
}

struct PooledBody {
    /// `None` once the connection is back in the pool or closed.
    lease: Option<Lease>,
    state: State,
    /// The rest of a request the upstream answered before it had all of it.
    rest: Option<Box<Outgoing>>,
}

enum State {
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
    Done,
}

type FrameResult = Option<Result<Frame<Bytes>, BoxError>>;

impl PooledBody {
    fn finish(&mut self, reusable: bool) {
        self.state = State::Done;
        let Some(mut lease) = self.lease.take() else {
            return;
        };
        lease.reusable &= reusable;
        match self.rest.take() {
            None => lease.release(),
            Some(rest) => spawn_completion(lease, rest),
        }
    }

    /// Writes what it can of the rest of a request answered early.
    #[cold]
    #[inline(never)]
    fn drive_rest(rest: &mut Option<Box<Outgoing>>, lease: &mut Lease, cx: &mut Context<'_>) {
        let Some(out) = rest else { return };
        let Poll::Ready(sent) = out.poll_send(&mut lease.conn.io, cx, &mut false) else {
            return;
        };
        if !sent {
            // The upstream no longer takes the request (or the client's body broke): the
            // connection is not reused, and what the client still sends is dropped.
            lease.reusable = false;
            if out.refused.is_some() {
                spawn_discard(out.body.take());
            }
        }
        *rest = None;
    }

    fn fail(&mut self, e: impl Into<BoxError>) -> Poll<FrameResult> {
        self.state = State::Done;
        self.lease = None;
        self.rest = None;
        Poll::Ready(Some(Err(e.into())))
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<FrameResult> {
        loop {
            let Some(lease) = &mut self.lease else {
                return Poll::Ready(None);
            };
            if self.rest.is_some() {
                Self::drive_rest(&mut self.rest, lease, cx);
            }
            let conn = &mut lease.conn;
            match &mut self.state {
                State::Done => {
                    self.finish(true);
                    return Poll::Ready(None);
                }
                State::Length(remaining) if !conn.read.is_empty() => {
                    let take = usize::try_from(*remaining)
                        .unwrap_or(usize::MAX)
                        .min(conn.read.len());
                    let data = conn.read.split_to(take).freeze();
                    *remaining -= take as u64;
                    if *remaining == 0 {
                        // hyper does not poll a body again once it says it has ended.
                        self.finish(true);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::Chunked(decoder) => match decoder.decode(&mut conn.read) {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Decoded::Done(trailers)) => {
                        self.finish(true);
                        return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                    }
                    Ok(Decoded::NeedMore) => {}
                    Err(e) => return self.fail(e),
                },
                State::UntilClose if !conn.read.is_empty() => {
                    let data = conn.read.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::Length(_) | State::UntilClose => {}
            }
            match ready!(conn.poll_read(cx)) {
                Ok(0) if matches!(self.state, State::UntilClose) => {
                    self.finish(false);
                    return Poll::Ready(None);
                }
                Ok(0) => return self.fail("upstream closed the connection before the body ended"),
                Ok(_) => {}
                Err(e) => return self.fail(e),
            }
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.kind {
            Kind::Pooled(body) => body.poll_frame(cx),
            Kind::Upgrade(inner) => Pin::new(inner).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Pooled(body) => matches!(body.state, State::Done | State::Length(0)),
            Kind::Upgrade(inner) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Pooled(body) => match body.state {
                State::Done => SizeHint::with_exact(0),
                State::Length(n) => SizeHint::with_exact(n),
                _ => SizeHint::default(),
            },
            Kind::Upgrade(inner) => inner.size_hint(),
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // A body without content (204, HEAD, `Content-Length: 0`) is never polled.
        if let Kind::Pooled(body) = &mut self.kind
            && matches!(body.state, State::Done)
        {
            body.finish(true);
        }
    }
}
