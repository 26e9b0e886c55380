//! HTTP worker threads: each runs a single-threaded tokio runtime with its own pipeline (and so its
//! own upstream connection pool) and serves the connections the acceptor hands it.
//!
//! Why: on one multi-thread runtime a client connection's task and the tasks it woke (upstream
//! connections, when they had tasks of their own) often ran on different threads, so every
//! request paid cross-thread wake-ups. With one runtime per thread a connection, its requests,
//! the upstream connections they use (driven by the request's own task, `proxy::client`) and
//! anything they spawn (HTTP/2 streams, upgrade bridges; all use `tokio::spawn`) stay on one
//! thread. The measurements are in docs/performance.md.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::{Handler, Limits, RequestService};
use crate::context::ConnInfo;
use crate::proxy::forwarded::TrustedProxies;

/// An accepted client connection on its way from the acceptor to a worker.
pub(super) struct Accepted {
    pub(super) tcp: std::net::TcpStream,
    pub(super) info: ConnInfo,
}

/// What every worker shares, read-only.
pub(super) struct Shared {
    pub(super) tls: Option<TlsAcceptor>,
    pub(super) limits: Limits,
    pub(super) trusted: Arc<TrustedProxies>,
    pub(super) shutdown: CancellationToken,
}

/// The acceptor's handle on one worker thread.
pub(super) struct Worker {
    tx: mpsc::UnboundedSender<Accepted>,
    /// Connections handed to this worker that have not ended yet.
    load: Arc<AtomicUsize>,
    thread: JoinHandle<()>,
}

impl Worker {
    /// Builds the worker's runtime here (so that failing to build one fails start-up) and starts
    /// its thread. `make_service` runs on the worker's runtime.
    pub(super) fn start<F, S>(
        index: usize,
        make_service: Arc<F>,
        shared: Arc<Shared>,
    ) -> std::io::Result<Self>
    where
        F: Fn() -> S + Send + Sync + 'static,
        S: RequestService,
    {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let load = Arc::new(AtomicUsize::new(0));
        let worker_load = load.clone();
        // Logs go where the caller's go: its thread's subscriber (the global one in the binary,
        // a test's scoped one in tests).
        let dispatch = tracing::dispatcher::get_default(Clone::clone);
        let thread = std::thread::Builder::new()
            .name(format!("gatehouse-http-{index}"))
            .spawn(move || {
                let _log = tracing::dispatcher::set_default(&dispatch);
                serve(index, &runtime, make_service, shared, rx, worker_load);
                // Dropping the runtime cancels what is left (tasks spawned by aborted
                // connections, idle pool connections) on this thread, before it ends.
                drop(runtime);
            })?;
        Ok(Self { tx, load, thread })
    }

    pub(super) fn load(&self) -> usize {
        self.load.load(Ordering::Relaxed)
    }

    /// Hands a connection over; gives it back if the worker has stopped.
    pub(super) fn dispatch(&self, accepted: Accepted) -> Result<(), Accepted> {
        self.load.fetch_add(1, Ordering::Relaxed);
        self.tx.send(accepted).map_err(|e| {
            self.load.fetch_sub(1, Ordering::Relaxed);
            e.0
        })
    }

    /// Stops handing over connections and returns the thread to join.
    pub(super) fn into_thread(self) -> JoinHandle<()> {
        self.thread
    }
}

/// Decrements the worker's load when a connection task ends, however it ends.
struct LoadGuard(Arc<AtomicUsize>);

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn serve<F, S>(
    index: usize,
    runtime: &Runtime,
    make_service: Arc<F>,
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<Accepted>,
    load: Arc<AtomicUsize>,
) where
    F: Fn() -> S + Send + Sync + 'static,
    S: RequestService,
{
    runtime.block_on(async move {
        let service = make_service();
        let builder: Arc<Builder<TokioExecutor>> = Arc::new(super::builder(&shared.limits));
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                () = shared.shutdown.cancelled() => break,
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                accepted = rx.recv() => {
                    let Some(Accepted { tcp, info }) = accepted else { break };
                    let guard = LoadGuard(load.clone());
                    let tcp = match TcpStream::from_std(tcp) {
                        Ok(tcp) => tcp,
                        Err(e) => {
                            tracing::warn!(peer = %info.peer, error = %e, "cannot register an accepted connection");
                            continue;
                        }
                    };
                    let handler = Handler {
                        builder: builder.clone(),
                        service: service.clone(),
                        trusted: shared.trusted.clone(),
                        info,
                        header_read_timeout: shared.limits.header_read_timeout,
                        idle_timeout: shared.limits.idle_timeout,
                        shutdown: shared.shutdown.clone(),
                    };
                    let tls = shared.tls.clone();
                    conns.spawn(async move {
                        let _guard = guard;
                        handler.run(tcp, tls).await;
                    });
                }
            }
        }
        // Connections handed over but not yet picked up are closed unserved, like the ones
        // still in the listener's backlog.
        rx.close();
        drain(index, &mut conns, shared.limits.drain_timeout).await;
    });
}

async fn drain(index: usize, conns: &mut JoinSet<()>, timeout: Duration) {
    if conns.is_empty() {
        return;
    }
    tracing::debug!(worker = index, connections = conns.len(), "worker draining");
    let drained = tokio::time::timeout(timeout, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            worker = index,
            connections = conns.len(),
            "drain timeout reached, closing remaining connections"
        );
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    }
}

/// The worker count for `http.workers`: the configured number, or one per available core.
pub(super) fn count(configured: usize) -> usize {
    if configured > 0 {
        configured
    } else {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    }
}

/// Index (below `n`) with the smallest `load`; ties go to the first one at or after `start`, so
/// that equal loads are spread round-robin.
pub(super) fn least_loaded(n: usize, start: usize, load: impl Fn(usize) -> usize) -> usize {
    let mut best = start % n.max(1);
    let mut best_load = load(best);
    for step in 1..n {
        let i = (start + step) % n;
        let l = load(i);
        if l < best_load {
            best = i;
            best_load = l;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_loaded_prefers_fewest_connections_then_rotates() {
        let pick = |loads: &[usize], start| least_loaded(loads.len(), start, |i| loads[i]);
        assert_eq!(pick(&[3, 1, 2], 0), 1);
        assert_eq!(pick(&[3, 1, 1], 0), 1);
        assert_eq!(pick(&[3, 1, 1], 2), 2);
        assert_eq!(pick(&[0, 0, 0], 4), 1);
        assert_eq!(pick(&[5], 7), 0);
    }

    #[test]
    fn zero_workers_means_one_per_core() {
        assert_eq!(count(3), 3);
        assert!(count(0) >= 1);
    }
}
