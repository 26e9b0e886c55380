//! Per-connection plumbing between hyper and the pipeline: every request gets the connection's
//! [`ConnInfo`] and the [`ClientAddr`], and the connection keeps count of requests in flight so
//! that an idle keep-alive connection can be closed, and a connection whose first request never
//! arrives can be told apart from one that is merely between requests.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use tokio::time::Instant;
use tower::Service;
use tower::util::Oneshot;

use crate::context::{Body, BoxError, ClientAddr, ConnInfo};
use crate::proxy::forwarded::TrustedProxies;

/// Requests in flight on one connection and since when it has had none.
#[derive(Debug)]
pub(crate) struct Activity {
    in_flight: AtomicUsize,
    idle_since_ms: AtomicU64,
    /// Set when hyper hands over the first complete request head.
    first_request: AtomicBool,
    /// When the connection started being served (after the TLS handshake).
    epoch: Instant,
}

impl Activity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            first_request: AtomicBool::new(false),
            epoch: Instant::now(),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn start(self: &Arc<Self>) -> InFlight {
        self.first_request.store(true, Ordering::Release);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// Resolves once the connection has had no request in flight for `timeout`.
    pub(crate) async fn idle_for(&self, timeout: Duration) {
        loop {
            let wait = if self.in_flight.load(Ordering::Acquire) == 0 {
                let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
                let idle = self.epoch.elapsed().saturating_sub(since);
                if idle >= timeout {
                    return;
                }
                timeout - idle
            } else {
                timeout
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Resolves if no complete request head has arrived `timeout` after the connection started
    /// (whatever the client sent meanwhile: nothing, part of the HTTP/2 preface, only SETTINGS
    /// frames, part of a head); never resolves once one has.
    pub(crate) async fn no_request_within(&self, timeout: Duration) {
        let mut deadline = std::pin::pin!(tokio::time::sleep_until(self.epoch + timeout));
        std::future::poll_fn(|cx| {
            // Once a request has arrived the timer is not even polled: the connection's task
            // polls this on every wake-up.
            if self.first_request.load(Ordering::Acquire) {
                return Poll::Pending;
            }
            deadline.as_mut().poll(cx)
        })
        .await;
    }
}

/// Held from the moment a request arrives until its response body is finished or dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .idle_since_ms
            .store(self.0.now_ms(), Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The hyper service of one connection.
#[derive(Clone)]
pub(crate) struct ConnService<S> {
    pub(crate) inner: S,
    pub(crate) info: ConnInfo,
    pub(crate) trusted: Arc<TrustedProxies>,
    pub(crate) activity: Arc<Activity>,
}

impl<S> hyper::service::Service<Request<Incoming>> for ConnService<S>
where
    S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible> + Clone,
{
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = ConnFuture<S>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        let client = self.trusted.client_addr(req.headers(), self.info.peer.ip());
        let ext = req.extensions_mut();
        ext.insert(self.info);
        ext.insert(ClientAddr(client));
        ConnFuture {
            inner: tower::ServiceExt::oneshot(self.inner.clone(), req),
            guard: Some(self.activity.start()),
        }
    }
}

pin_project_lite::pin_project! {
    pub(crate) struct ConnFuture<S: Service<Request<Incoming>>> {
        #[pin]
        inner: Oneshot<S, Request<Incoming>>,
        guard: Option<InFlight>,
    }
}

impl<S> Future for ConnFuture<S>
where
    S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>,
{
    type Output = Result<Response<TrackedBody>, Infallible>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let resp = ready!(this.inner.poll(cx))?;
        let guard = this.guard.take();
        Poll::Ready(Ok(resp.map(|body| TrackedBody {
            body,
            _guard: guard,
        })))
    }
}

/// A response body that keeps its request counted as in flight until it is done.
pub(crate) struct TrackedBody {
    body: Body,
    _guard: Option<InFlight>,
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn first_request_deadline_fires_only_without_a_request() {
        let silent = Activity::new();
        let started = Instant::now();
        silent.no_request_within(Duration::from_secs(1)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(1));

        let served = Activity::new();
        drop(served.start());
        let waited = tokio::time::timeout(
            Duration::from_secs(60),
            served.no_request_within(Duration::from_secs(1)),
        )
        .await;
        assert!(
            waited.is_err(),
            "the deadline fired after a request had arrived"
        );
    }
}
