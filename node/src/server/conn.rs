//! Per-connection plumbing between hyper and the pipeline: every request gets the connection's
//! [`ConnInfo`] with the client address, and the connection keeps count of requests in flight so
//! that an idle keep-alive connection can be closed, and a client that owes a request head can be
//! held to `header_read_timeout` (both watched by `watchdog.rs`).
//!
//! The head deadline is kept here, per connection, rather than by hyper: hyper's HTTP/1.1 timer
//! is a boxed sleep registered with the runtime's timer for every request head, about 1 400
//! instructions a request (docs/performance.md). A connection owes a head from its start and, for
//! HTTP/1.1, whenever no request is in flight — exactly when hyper's timer ran — so one timer per
//! connection, re-armed only when it comes due, gives the same bound.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures::future::Either;
use http::{Request, Response, Version};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use tokio::time::Instant;
use tower::Service;
use tower::util::Oneshot;

use crate::context::{Body, BoxError, ConnInfo};
use crate::proxy::forwarded::TrustedProxies;

/// Requests in flight on one connection and since when it has had none.
#[derive(Debug)]
pub(crate) struct Activity {
    in_flight: AtomicUsize,
    idle_since_ms: AtomicU64,
    /// Set when hyper hands over the first complete request head.
    first_request: AtomicBool,
    /// Set by the first request if it is HTTP/2: later heads are not owed (`idle_timeout` bounds
    /// a connection between streams).
    http2: AtomicBool,
    /// When the connection started being served (after the TLS handshake).
    epoch: Instant,
}

impl Activity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            first_request: AtomicBool::new(false),
            http2: AtomicBool::new(false),
            epoch: Instant::now(),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub(crate) fn start(self: &Arc<Self>, version: Version) -> InFlight {
        if !self.first_request.load(Ordering::Relaxed) {
            self.http2
                .store(version == Version::HTTP_2, Ordering::Release);
            self.first_request.store(true, Ordering::Release);
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// Resolves when the client has owed a complete request head for `timeout`: since the
    /// connection started if no request has arrived yet (whatever it sent meanwhile: nothing,
    /// part of the HTTP/2 preface, only SETTINGS frames, part of a head), and on an HTTP/1.1
    /// connection since its last response ended. Never on an HTTP/2 connection once a request
    /// has arrived.
    pub(crate) async fn head_overdue(&self, timeout: Duration) {
        if self.no_request_within(timeout).await {
            return;
        }
        if self.http2.load(Ordering::Acquire) {
            return std::future::pending().await;
        }
        self.idle_for(timeout).await;
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

    /// `true` if no complete request head has arrived `timeout` after the connection started,
    /// `false` as soon as the connection's task is woken after one has.
    async fn no_request_within(&self, timeout: Duration) -> bool {
        let mut deadline = std::pin::pin!(tokio::time::sleep_until(self.epoch + timeout));
        std::future::poll_fn(|cx| {
            if self.first_request.load(Ordering::Acquire) {
                return Poll::Ready(false);
            }
            deadline.as_mut().poll(cx).map(|()| true)
        })
        .await
    }
}

/// Held from the moment a request arrives until its response body is finished or dropped.
pub(crate) struct InFlight(Arc<Activity>);

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
        let req_version = req.version();
        req.extensions_mut().insert(ConnInfo {
            client,
            ..self.info
        });
        // The pipeline is always ready (no layer holds back), so it is called at once; a
        // `Oneshot` would keep the request and the pipeline's future in a state machine of its
        // own and move both again. The fallback keeps `Service`'s contract should a layer ever
        // report that it is not ready.
        let mut service = self.inner.clone();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let inner = match service.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => Either::Left(service.call(req)),
            Poll::Ready(Err(never)) => match never {},
            Poll::Pending => Either::Right(tower::ServiceExt::oneshot(service, req)),
        };
        ConnFuture {
            inner,
            guard: Some(self.activity.start(req_version)),
        }
    }
}

pin_project_lite::pin_project! {
    pub(crate) struct ConnFuture<S: Service<Request<Incoming>>> {
        #[pin]
        inner: Either<S::Future, Oneshot<S, Request<Incoming>>>,
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
    async fn a_head_is_owed_from_the_start_and_between_http1_requests_only() {
        let timeout = Duration::from_secs(1);
        let silent = Activity::new();
        let started = Instant::now();
        silent.head_overdue(timeout).await;
        assert_eq!(started.elapsed(), timeout);

        let h2 = Activity::new();
        drop(h2.start(Version::HTTP_2));
        let waited = tokio::time::timeout(Duration::from_secs(60), h2.head_overdue(timeout)).await;
        assert!(
            waited.is_err(),
            "an HTTP/2 connection owed a head after its first request"
        );

        let h1 = Activity::new();
        let in_flight = h1.start(Version::HTTP_11);
        let overdue = h1.head_overdue(timeout);
        tokio::pin!(overdue);
        let waited = tokio::time::timeout(Duration::from_secs(5), overdue.as_mut()).await;
        assert!(
            waited.is_err(),
            "the deadline ran while a request was in flight"
        );
        let ended = Instant::now();
        drop(in_flight);
        overdue.await;
        assert_eq!(ended.elapsed(), timeout);
    }
}
