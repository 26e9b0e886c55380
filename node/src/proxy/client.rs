//! The upstream HTTP/1.1 client: one connection pool per HTTP worker, whose connections are
//! driven by the request that uses them.
//!
//! Why not hyper-util's pooled client: it runs every upstream connection as a task of its own, so
//! each request wakes two tasks and hands its head and body across channels between them, and its
//! pool hashes the key (SipHash over scheme and authority) on every checkout and every return.
//! Those were about a tenth of the instructions of an unprotected request (docs/performance.md).
//!
//! Here an idle connection sits in its upstream's list while no request uses it. A request takes
//! one (the most recently used), polls it beside its own future until the response head has
//! arrived, and hands it to the response body, which polls it while the body streams and puts it
//! back as soon as the body has ended. Nothing polls an idle connection, so an upstream that closes
//! one is noticed when it is next taken (it is discarded and the next one is tried) or by the
//! sweep that drops connections idle for longer than `upstream.pool_idle_timeout`. A request that
//! a reused connection could not take because it had been closed before a byte of the request was
//! written is sent again on a new connection, as hyper-util does. Protocol upgrades get a
//! connection of their own, run as a task, that never returns to the pool.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, Connection, SendRequest};
use tower::Service;

use super::tls::{Connector, UpstreamStream};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why an exchange with an upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be opened (resolution, TCP connect, TLS handshake, or its deadline).
    #[error("{0}")]
    Connect(BoxError),
    /// The connection failed or the upstream broke the protocol — or reading the client's own
    /// request body failed, which hyper reports as an error of the body it was given.
    #[error(transparent)]
    Http(#[from] hyper::Error),
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

struct Conn {
    sender: SendRequest<Incoming>,
    driver: Connection<UpstreamStream, Incoming>,
}

/// A connection on loan to a response body, and where to return it.
struct Lease {
    conn: Box<Conn>,
    pool: Arc<Pool>,
    host: usize,
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

    /// Sends `req` (origin-form URI, `Host` set) to `scheme://authority` on a pooled connection
    /// and returns the response head; the body streams from the same connection.
    pub async fn send(
        &self,
        scheme: &Scheme,
        authority: &Authority,
        mut req: Request<Incoming>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        let (host, mut idle) = self.pool.take(scheme, authority);
        loop {
            let (conn, reused) = match self.checkout(host, idle.take()).await {
                Some(conn) => (conn, true),
                None => (self.connect(scheme, authority).await?, false),
            };
            let mut conn = conn;
            match exchange(&mut conn, req).await {
                Ok((resp, open)) => {
                    let lease = open.then(|| Lease {
                        conn,
                        pool: self.pool.clone(),
                        host,
                    });
                    return Ok(resp.map(|inner| UpstreamBody { inner, lease }));
                }
                Err(Failed::NotSent(again, _)) if reused => req = *again,
                Err(Failed::NotSent(_, e) | Failed::Error(e)) => return Err(SendError::Http(e)),
            }
        }
    }

    /// Sends a protocol-upgrade request on a connection of its own, which runs as a task until
    /// the upgraded connection (taken with `hyper::upgrade::on` on the response) is done with it.
    pub async fn send_upgrade(
        &self,
        scheme: &Scheme,
        authority: &Authority,
        req: Request<Incoming>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        let Conn { mut sender, driver } = *self.connect(scheme, authority).await?;
        tokio::spawn(async move {
            if let Err(e) = driver.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection of an upgrade ended with an error");
            }
        });
        let resp = sender.send_request(req).await?;
        Ok(resp.map(|inner| UpstreamBody { inner, lease: None }))
    }

    /// Boxed: a connection is large, and it moves between the pool and the requests.
    async fn connect(
        &self,
        scheme: &Scheme,
        authority: &Authority,
    ) -> Result<Box<Conn>, SendError> {
        let uri = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| SendError::Connect(e.into()))?;
        let io = self
            .pool
            .connector
            .clone()
            .call(uri)
            .await
            .map_err(SendError::Connect)?;
        let (sender, driver) = http1::Builder::new().handshake(io).await?;
        Ok(Box::new(Conn { sender, driver }))
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

/// Drops connections idle for longer than `timeout`, checking about twice per timeout, until the
/// pool is gone.
async fn sweep(pool: Weak<Pool>, timeout: Duration) {
    let mut tick = tokio::time::interval((timeout / 2).max(Duration::from_millis(10)));
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        let now = Instant::now();
        let expired: Vec<Idle> = {
            let mut hosts = pool.hosts.lock().unwrap();
            let mut expired = Vec::new();
            for host in &mut hosts.list {
                let (old, kept) = std::mem::take(&mut host.idle)
                    .into_iter()
                    .partition(|idle| pool.expired(idle, now));
                host.idle = kept;
                expired.extend::<Vec<Idle>>(old);
            }
            expired
        };
        // Closed outside the lock.
        drop(expired);
    }
}

impl Conn {
    /// Lets the connection notice what happened while it was idle (the upstream closing it) and
    /// says whether a request can be sent on it now.
    fn usable(&mut self, cx: &mut Context<'_>) -> bool {
        if Pin::new(&mut self.driver).poll(cx).is_ready() {
            return false;
        }
        matches!(self.sender.poll_ready(cx), Poll::Ready(Ok(())))
    }
}

enum Failed {
    /// The connection ended before the request was written; here it is back.
    NotSent(Box<Request<Incoming>>, hyper::Error),
    Error(hyper::Error),
}

/// Sends `req` on `conn`, polling the connection beside the response future. With the response
/// comes whether the connection is still open.
async fn exchange(
    conn: &mut Conn,
    req: Request<Incoming>,
) -> Result<(Response<Incoming>, bool), Failed> {
    let Conn { sender, driver } = conn;
    let mut driver_done = false;
    let mut response = pin!(sender.try_send_request(req));
    let result = poll_fn(|cx| {
        // The response future always ends, also when the connection fails: hyper answers every
        // queued request of a failed or closed connection with an error.
        if !driver_done && Pin::new(&mut *driver).poll(cx).is_ready() {
            driver_done = true;
        }
        response.as_mut().poll(cx)
    })
    .await;
    match result {
        Ok(resp) => Ok((resp, !driver_done)),
        Err(mut e) => match e.take_message() {
            Some(req) => Err(Failed::NotSent(Box::new(req), e.into_error())),
            None => Err(Failed::Error(e.into_error())),
        },
    }
}

/// An upstream response body that polls its connection while it streams and returns the
/// connection to the pool once the body has ended. Dropped before its end, it closes the
/// connection (the rest of the body is never read).
pub struct UpstreamBody {
    inner: Incoming,
    lease: Option<Lease>,
}

impl UpstreamBody {
    /// Returns the connection to the pool if it is ready for the next request: the response has
    /// been read to its end and the request body fully written. An upstream that answered before
    /// reading the whole upload leaves the connection busy; it is closed instead, which also
    /// releases the client's request body.
    fn release(&mut self) {
        let Some(mut lease) = self.lease.take() else {
            return;
        };
        // Lets the connection move to idle. The waker does not matter: the connection is either
        // dropped or polled again by whoever takes it from the pool.
        let mut cx = Context::from_waker(Waker::noop());
        if Pin::new(&mut lease.conn.driver).poll(&mut cx).is_pending()
            && lease.conn.sender.is_ready()
        {
            lease.pool.put(lease.host, lease.conn);
        }
    }
}

impl Body for UpstreamBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(lease) = &mut this.lease
            && Pin::new(&mut lease.conn.driver).poll(cx).is_ready()
        {
            // The connection ended; the body reports its end or the error itself.
            this.lease = None;
        }
        let frame = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Err(_)) => this.lease = None,
            // hyper stops polling a body that says it has ended, so the connection goes back now.
            Some(Ok(_)) if !this.inner.is_end_stream() => {}
            _ => this.release(),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // A body without content (204, HEAD, `Content-Length: 0`) is never polled.
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}
