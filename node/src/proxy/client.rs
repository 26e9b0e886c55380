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
//! sent again on a new connection. An upstream that answers before it has read the whole request
//! body gets no more of it, and that connection is closed after the answer. Protocol upgrades
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
            framing,
            body: (framing != RequestFraming::Empty).then_some(body),
            body_started: false,
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
                        let reusable = head.keep_alive
                            && request_done
                            && head.status != StatusCode::SWITCHING_PROTOCOLS;
                        let lease = Lease {
                            conn,
                            pool: self.pool.clone(),
                            host,
                            reusable,
                        };
                        return Ok(response(head, lease));
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

fn response(head: ResponseHead, lease: Lease) -> Response<UpstreamBody> {
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

/// One request on its way out: the encoded head and the body still to send.
struct Exchange {
    head: Bytes,
    method: Method,
    framing: RequestFraming,
    /// `None` once the body has ended (or when there is none).
    body: Option<Incoming>,
    /// A frame of the body has been taken from the client: the request can no longer be sent
    /// again.
    body_started: bool,
}

struct Failed {
    error: SendError,
    /// Nothing came from the upstream before the failure.
    before_answer: bool,
}

impl Exchange {
    fn can_resend(&self) -> bool {
        !self.body_started
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
    /// head and whether the whole request was sent.
    async fn run(&mut self, conn: &mut Conn) -> Result<(ResponseHead, bool), Failed> {
        let mut queue: VecDeque<Bytes> = VecDeque::from([self.head.clone()]);
        let mut queued = self.head.len();
        // Written bytes can wait in the stream (TLS) until it is flushed; a flush that did not
        // finish must be polled again, also when nothing new is queued.
        let mut flushed = false;
        let mut answered = false;
        let upstream = |e: BoxError, answered: bool| Failed {
            error: SendError::Upstream(e),
            before_answer: !answered,
        };
        poll_fn(|cx| {
            loop {
                let mut progress = false;
                // The request: the next body frame once the socket has taken the previous ones.
                if queued < WRITE_HIGH_WATER
                    && let Some(body) = &mut self.body
                {
                    match Pin::new(body).poll_frame(cx) {
                        Poll::Ready(Some(Ok(frame))) => {
                            self.body_started = true;
                            progress = true;
                            if let Ok(data) = frame.into_data()
                                && !data.is_empty()
                            {
                                queued += data.len();
                                if self.framing == RequestFraming::Chunked {
                                    let mut size = Vec::with_capacity(10);
                                    http1::chunk_header(&mut size, data.len());
                                    queue.push_back(size.into());
                                    queue.push_back(data);
                                    queue.push_back(Bytes::from_static(b"\r\n"));
                                } else {
                                    queue.push_back(data);
                                }
                            }
                        }
                        Poll::Ready(Some(Err(e))) => {
                            return Poll::Ready(Err(Failed {
                                error: SendError::ClientBody(e),
                                before_answer: !answered,
                            }));
                        }
                        Poll::Ready(None) => {
                            self.body = None;
                            progress = true;
                            if self.framing == RequestFraming::Chunked {
                                queue.push_back(Bytes::from_static(http1::LAST_CHUNK));
                            }
                        }
                        Poll::Pending => {}
                    }
                }
                if !queue.is_empty() {
                    flushed = false;
                }
                if !flushed {
                    match poll_write_queue(&mut conn.io, &mut queue, cx) {
                        Poll::Ready(Ok(())) => {
                            queued = 0;
                            flushed = true;
                            progress = true;
                        }
                        Poll::Ready(Err(e)) => {
                            return Poll::Ready(Err(upstream(e.into(), answered)));
                        }
                        Poll::Pending => {}
                    }
                }
                // The response head, skipping interim (1xx) responses.
                loop {
                    match http1::parse_response_head(&mut conn.read, &self.method) {
                        Ok(Some(head))
                            if head.status.is_informational()
                                && head.status != StatusCode::SWITCHING_PROTOCOLS => {}
                        Ok(Some(head)) => {
                            let sent = self.body.is_none() && queue.is_empty() && flushed;
                            return Poll::Ready(Ok((head, sent)));
                        }
                        Ok(None) => break,
                        Err(e) => return Poll::Ready(Err(upstream(e.into(), true))),
                    }
                }
                match conn.poll_read(cx) {
                    Poll::Ready(Ok(0)) => {
                        let e = "upstream closed the connection before answering";
                        return Poll::Ready(Err(upstream(e.into(), answered)));
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
        if let Some(lease) = self.lease.take()
            && reusable
            && lease.reusable
            && lease.conn.read.is_empty()
        {
            lease.pool.put(lease.host, lease.conn);
        }
    }

    fn fail(&mut self, e: impl Into<BoxError>) -> Poll<FrameResult> {
        self.state = State::Done;
        self.lease = None;
        Poll::Ready(Some(Err(e.into())))
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<FrameResult> {
        loop {
            let Some(lease) = &mut self.lease else {
                return Poll::Ready(None);
            };
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
