//! The client-facing listener: TCP or TLS, HTTP/1.1 and HTTP/2 (ALPN over TLS, prior knowledge
//! in clear text), limits against slow or abusive clients, and a graceful drain.
//!
//! Limits (all from `http.*`; a zero duration disables a timeout):
//! - `header_read_timeout`: time to finish the TLS handshake, and then time until the first
//!   complete request head has arrived, protocol detection included: the HTTP/1.1 head, or for
//!   HTTP/2 the preface, the SETTINGS exchange and the first stream's HEADERS. hyper only starts
//!   its own HTTP/1.1 timer once it knows the protocol, and has none for HTTP/2, so without the
//!   connection-level deadline a client that sent nothing, or a prefix of the HTTP/2 preface, was
//!   held until `idle_timeout`. The same deadline then bounds every later HTTP/1.1 head from the
//!   end of the previous response (as hyper's own timer did), and with it how long an idle
//!   HTTP/1.1 keep-alive connection lives; later HTTP/2 streams are bounded by `idle_timeout`.
//! - `max_header_bytes`: largest request head. HTTP/1.1 heads above it get 431 and the connection
//!   is closed (hyper's read buffer cannot be smaller than 8192, so smaller values act as 8192);
//!   HTTP/2 uses it as `SETTINGS_MAX_HEADER_LIST_SIZE`. Zero keeps hyper's defaults.
//! - `idle_timeout`: a connection (HTTP/1.1 or HTTP/2) with no request in flight for this long is
//!   closed gracefully.
//!
//! Threads: the listener is bound once and an acceptor task on the caller's runtime hands every
//! accepted connection to the least busy of `http.workers` worker threads, each a single-threaded
//! runtime with its own pipeline (`worker.rs` says why). TLS handshakes, the limits and the drain
//! all happen on the worker that owns the connection.
//!
//! Drain: on SIGTERM/SIGINT or the shutdown token, readiness turns false at once, the listener is
//! closed (new connections are refused), every connection is told to finish (HTTP/1.1: close after
//! the current response; HTTP/2: GOAWAY), and in-flight requests get `drain_timeout` to complete.
//! `serve` returns once every worker thread has ended.

mod conn;
#[cfg(test)]
mod tests;
pub mod tls;
mod watchdog;
mod worker;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::Service;

use gatehouse_shared::config::{Config, Http};

use self::conn::{Activity, ConnService};
use self::watchdog::{Verdict, Watchdog};
use self::worker::{Accepted, Worker};
use crate::context::{Body, ConnInfo};
use crate::health::Health;
use crate::pipeline::{self, PipelineError, PipelineParts};
use crate::proxy::forwarded::{TrustedProxies, TrustedProxyError};
use crate::upstream::ServiceNodes;

/// What `main` builds and hands to the server.
pub struct ServerDeps {
    pub metrics: Arc<crate::telemetry::Metrics>,
    pub health: Arc<Health>,
    /// The oCIS service registry, when `service_registry.enabled`.
    pub registry: Option<Arc<dyn ServiceNodes>>,
    /// Cancelled to start the drain (signals do the same).
    pub shutdown: CancellationToken,
    /// Authenticators and account services, built once per node.
    pub identity: crate::identity::Identity,
    /// `http.addr`, bound by `main` before anything else listens (see [`listen`]); `None`: [`run`]
    /// binds it.
    pub listener: Option<TcpListener>,
}

/// Why the node could not start serving. None of these is retryable without a change of
/// configuration or environment.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("http.addr {addr:?} is not a valid socket address (host:port)")]
    InvalidAddr { addr: String },
    #[error(
        "http.addr: cannot listen on {addr}: address already in use (another process is bound to it)"
    )]
    AddrInUse { addr: String },
    #[error("http.addr: cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("TLS is enabled but http.tls_cert or http.tls_key is empty")]
    TlsPathsMissing,
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    TrustedProxies(#[from] TrustedProxyError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("cannot start the HTTP worker threads: {0}")]
    Workers(std::io::Error),
}

/// The request service the server runs on every worker: the pipeline from [`pipeline::build`].
pub trait RequestService:
    Service<
        Request<Incoming>,
        Response = Response<Body>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> RequestService for S where
    S: Service<
            Request<Incoming>,
            Response = Response<Body>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// Client-facing limits, see the module documentation.
#[derive(Debug, Clone)]
pub struct Limits {
    pub header_read_timeout: Option<Duration>,
    pub max_header_bytes: usize,
    pub idle_timeout: Option<Duration>,
    pub drain_timeout: Duration,
}

impl Limits {
    pub fn from_config(http: &Http) -> Self {
        let nz = |d: Duration| (!d.is_zero()).then_some(d);
        Self {
            header_read_timeout: nz(http.header_read_timeout.0),
            max_header_bytes: http.max_header_bytes,
            idle_timeout: nz(http.idle_timeout.0),
            drain_timeout: http.drain_timeout.0,
        }
    }
}

/// Smallest read buffer hyper accepts (it panics below this).
const HYPER_MIN_BUF: usize = 8192;

/// A bound listener, ready to serve.
pub struct Server {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    trusted: Arc<TrustedProxies>,
    health: Arc<Health>,
    workers: usize,
}

impl Server {
    /// Binds `http.addr` and prepares TLS (generating a self-signed pair if needed).
    pub async fn bind(
        http: &Http,
        trusted: Arc<TrustedProxies>,
        health: Arc<Health>,
    ) -> Result<Self, StartupError> {
        let listener = listen(http).await?;
        Self::on(listener, http, trusted, health)
    }

    /// Serves on `listener`, already bound to `http.addr` by [`listen`], and prepares TLS.
    pub fn on(
        listener: TcpListener,
        http: &Http,
        trusted: Arc<TrustedProxies>,
        health: Arc<Health>,
    ) -> Result<Self, StartupError> {
        let tls = if http.tls {
            if http.tls_cert.is_empty() || http.tls_key.is_empty() {
                return Err(StartupError::TlsPathsMissing);
            }
            Some(tls::acceptor(
                &PathBuf::from(&http.tls_cert),
                &PathBuf::from(&http.tls_key),
            )?)
        } else {
            None
        };
        Ok(Self {
            listener,
            tls,
            limits: Limits::from_config(http),
            trusted,
            health,
            workers: worker::count(http.workers),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// How many worker threads [`Server::serve`] starts (`http.workers`, 0 resolved to the number
    /// of available cores).
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Starts the worker threads, each calling `make_service` once on its own runtime, accepts
    /// connections until `shutdown` is cancelled, then drains (see module docs). Dropping the
    /// returned future early also stops the workers, without waiting for them.
    pub async fn serve<F, S>(
        self,
        make_service: F,
        shutdown: CancellationToken,
    ) -> Result<(), StartupError>
    where
        F: Fn() -> S + Send + Sync + 'static,
        S: RequestService,
    {
        let local = self.local_addr().map_err(|source| StartupError::Bind {
            addr: "listener".to_owned(),
            source,
        })?;
        let stop_workers = shutdown.child_token();
        let _stop_workers_on_drop = stop_workers.clone().drop_guard();
        let shared = Arc::new(worker::Shared {
            tls: self.tls.clone(),
            limits: self.limits.clone(),
            trusted: self.trusted.clone(),
            shutdown: stop_workers.clone(),
        });
        let make_service = Arc::new(make_service);
        let mut workers = Vec::with_capacity(self.workers);
        for index in 0..self.workers {
            match Worker::start(index, make_service.clone(), shared.clone()) {
                Ok(w) => workers.push(w),
                Err(e) => {
                    stop_workers.cancel();
                    join(workers).await;
                    return Err(StartupError::Workers(e));
                }
            }
        }
        tracing::info!(addr = %local, tls = self.tls.is_some(), workers = workers.len(), "listening");
        self.health.start_serving();
        let mut next = 0usize;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = self.listener.accept() => {
                    let (tcp, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Out of file descriptors and similar: back off briefly instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = tcp.set_nodelay(true);
                    let tcp = match tcp.into_std() {
                        Ok(tcp) => tcp,
                        Err(e) => {
                            tracing::warn!(%peer, error = %e, "cannot hand over an accepted connection");
                            continue;
                        }
                    };
                    let info = ConnInfo { peer, local, tls: self.tls.is_some(), client: peer.ip() };
                    next = next.wrapping_add(1);
                    dispatch(&workers, next, Accepted { tcp, info });
                }
            }
        }

        self.health.start_draining();
        drop(self.listener);
        let in_progress: usize = workers.iter().map(Worker::load).sum();
        tracing::info!(connections = in_progress, timeout = ?self.limits.drain_timeout, "draining");
        join(workers).await;
        tracing::info!("drained");
        Ok(())
    }
}

/// Gives the connection to the least busy worker; one that has stopped (it can only have
/// panicked) is skipped.
fn dispatch(workers: &[Worker], start: usize, mut accepted: Accepted) {
    let first = worker::least_loaded(workers.len(), start, |i| workers[i].load());
    for step in 0..workers.len() {
        let index = (first + step) % workers.len();
        match workers[index].dispatch(accepted) {
            Ok(()) => return,
            Err(back) => {
                tracing::error!(worker = index, "HTTP worker has stopped");
                accepted = back;
            }
        }
    }
    tracing::error!(peer = %accepted.info.peer, "no HTTP worker left, closing the connection");
}

/// Waits (without blocking the caller's runtime) until every worker thread has ended.
async fn join(workers: Vec<Worker>) {
    let threads: Vec<_> = workers.into_iter().map(Worker::into_thread).collect();
    let joined = tokio::task::spawn_blocking(move || {
        for (index, thread) in threads.into_iter().enumerate() {
            if thread.join().is_err() {
                tracing::error!(worker = index, "HTTP worker panicked");
            }
        }
    })
    .await;
    if let Err(e) = joined {
        tracing::error!(error = %e, "joining the HTTP workers failed");
    }
}

fn builder(limits: &Limits) -> Builder<TokioExecutor> {
    let mut b = Builder::new(TokioExecutor::new());
    {
        let mut h1 = b.http1();
        // The connection's own head deadline replaces hyper's (`conn.rs` says why); without
        // this hyper would still arm its default of 30 s for every head.
        h1.timer(TokioTimer::new()).header_read_timeout(None);
        // A response head and a small body leave as one buffer rather than a queue of buffers
        // for a vectored write: 500 fewer instructions per small request (callgrind), and 1 MiB
        // downloads cost no more CPU (docs/performance.md).
        h1.writev(false);
        if limits.max_header_bytes > 0 {
            h1.max_buf_size(limits.max_header_bytes.max(HYPER_MIN_BUF));
        }
    }
    {
        let mut h2 = b.http2();
        h2.timer(TokioTimer::new());
        if limits.max_header_bytes > 0 {
            h2.max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
        }
    }
    b
}

struct Handler<S> {
    builder: Arc<Builder<TokioExecutor>>,
    service: S,
    trusted: Arc<TrustedProxies>,
    info: ConnInfo,
    header_read_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
    shutdown: CancellationToken,
}

impl<S: RequestService> Handler<S> {
    async fn run(self, tcp: TcpStream, tls: Option<TlsAcceptor>) {
        match tls {
            None => self.serve(TokioIo::new(tcp)).await,
            Some(acceptor) => {
                let accept = acceptor.accept(tcp);
                let stream = match self.header_read_timeout {
                    Some(t) => match tokio::time::timeout(t, accept).await {
                        Ok(r) => r,
                        Err(_) => {
                            tracing::debug!(peer = %self.info.peer, "TLS handshake timed out");
                            return;
                        }
                    },
                    None => accept.await,
                };
                match stream {
                    Ok(s) => self.serve(TokioIo::new(s)).await,
                    Err(e) => {
                        tracing::debug!(peer = %self.info.peer, error = %e, "TLS handshake failed")
                    }
                }
            }
        }
    }

    async fn serve<I>(self, io: I)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let activity = Activity::new();
        let svc = ConnService {
            inner: self.service,
            info: self.info,
            trusted: self.trusted,
            activity: activity.clone(),
        };
        let conn = self.builder.serve_connection_with_upgrades(io, svc);
        tokio::pin!(conn);
        let mut watchdog = Watchdog::start(
            activity,
            self.header_read_timeout,
            self.idle_timeout,
            self.shutdown,
        );
        loop {
            tokio::select! {
                res = conn.as_mut() => {
                    if let Err(e) = res {
                        tracing::debug!(peer = %self.info.peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                verdict = watchdog.next() => match verdict {
                    Verdict::Drain => conn.as_mut().graceful_shutdown(),
                    Verdict::Close => {
                        // Dropping the connection closes the socket: no request is in flight,
                        // so there is nothing to answer or to finish.
                        tracing::debug!(peer = %self.info.peer, "no complete request head within header_read_timeout");
                        return;
                    }
                },
            }
        }
    }
}

/// Binds `http.addr`. `main` calls it first, before the debug server starts: a port held by
/// another process then stops start-up before `/healthz`, which dials `http.addr`, can be answered
/// by that other process. Connections arriving before the workers start wait in the backlog.
pub async fn listen(http: &Http) -> Result<TcpListener, StartupError> {
    let addr: SocketAddr = http.addr.parse().map_err(|_| StartupError::InvalidAddr {
        addr: http.addr.clone(),
    })?;
    TcpListener::bind(addr).await.map_err(|source| {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            StartupError::AddrInUse {
                addr: http.addr.clone(),
            }
        } else {
            StartupError::Bind {
                addr: http.addr.clone(),
                source,
            }
        }
    })
}

/// Builds everything from configuration, serves until SIGTERM/SIGINT or `deps.shutdown`, drains,
/// and returns `Ok(())`.
pub async fn run(config: Arc<Config>, deps: ServerDeps) -> Result<(), StartupError> {
    tls::install_crypto_provider();
    let parts = PipelineParts::from_config(
        &config,
        deps.registry.clone(),
        deps.metrics.clone(),
        deps.identity.clone(),
    )?;
    let trusted = parts.trusted.clone();
    let server = match deps.listener {
        Some(listener) => Server::on(listener, &config.http, trusted, deps.health.clone())?,
        None => Server::bind(&config.http, trusted, deps.health.clone()).await?,
    };
    spawn_signal_watch(deps.shutdown.clone())?;
    server
        .serve(move || pipeline::build(parts.clone()), deps.shutdown)
        .await
}

fn spawn_signal_watch(shutdown: CancellationToken) -> Result<(), StartupError> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(StartupError::Signals)?;
        let mut int = signal(SignalKind::interrupt()).map_err(StartupError::Signals)?;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
                () = shutdown.cancelled() => return,
            }
            shutdown.cancel();
        });
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => shutdown.cancel(),
            () = shutdown.cancelled() => {}
        }
    });
    Ok(())
}
