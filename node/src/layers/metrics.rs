//! Request metrics (spec §3.2): the request is counted before it is handled, its duration and a
//! possible 5xx are recorded when the response head is ready. A long download is therefore timed
//! to its first byte, as in oCIS; the access log carries the full duration.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http::{Request, Response};
use tower::{Layer, Service};

use crate::telemetry::{MethodLabel, Metrics};

#[derive(Clone)]
pub struct MetricsLayer {
    metrics: Arc<Metrics>,
}

impl MetricsLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

#[derive(Clone)]
pub struct MetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, R> Service<Request<B>> for MetricsService<S>
where
    S: Service<Request<B>, Response = Response<R>>,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = MetricsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let label = MethodLabel::of(req.method());
        self.metrics.series(label).started();
        MetricsFuture {
            inner: self.inner.call(req),
            pending: Some((Arc::clone(&self.metrics), label)),
            start: Instant::now(),
        }
    }
}

pin_project_lite::pin_project! {
    pub struct MetricsFuture<F> {
        #[pin]
        inner: F,
        pending: Option<(Arc<Metrics>, MethodLabel)>,
        start: Instant,
    }
}

impl<F, R, E> Future for MetricsFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        // An error the pipeline did not turn into a response ends the connection: count it as 500.
        let status = result.as_ref().map_or(500, |r| r.status().as_u16());
        if let Some((metrics, label)) = this.pending.take() {
            metrics.series(label).finished(status, this.start.elapsed());
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http::{Method, StatusCode};
    use tower::{ServiceExt as _, service_fn};

    use super::*;

    fn count(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(-1.0)
    }

    #[tokio::test]
    async fn counts_requests_and_5xx_per_method() {
        let metrics = Metrics::new("t");
        let svc = MetricsLayer::new(Arc::clone(&metrics)).layer(service_fn(
            |req: Request<()>| async move {
                let status = if req.uri().path() == "/fail" {
                    StatusCode::BAD_GATEWAY
                } else {
                    StatusCode::OK
                };
                Ok::<_, Infallible>(Response::builder().status(status).body(()).unwrap())
            },
        ));
        for (method, path) in [
            ("GET", "/"),
            ("GET", "/fail"),
            ("BREW", "/"),
            ("MKCOL", "/fail"),
        ] {
            let req = Request::builder()
                .method(Method::from_bytes(method.as_bytes()).unwrap())
                .uri(path)
                .body(())
                .unwrap();
            svc.clone().oneshot(req).await.unwrap();
        }
        let text = metrics.encode();
        assert_eq!(
            count(&text, r#"ocis_proxy_requests_total{method="GET"}"#),
            2.0
        );
        assert_eq!(
            count(&text, r#"ocis_proxy_errors_total{method="GET"}"#),
            1.0
        );
        assert_eq!(
            count(&text, r#"ocis_proxy_requests_total{method="OTHER"}"#),
            1.0
        );
        assert_eq!(
            count(&text, r#"ocis_proxy_errors_total{method="OTHER"}"#),
            0.0
        );
        assert_eq!(
            count(&text, r#"ocis_proxy_errors_total{method="MKCOL"}"#),
            1.0
        );
        assert_eq!(
            count(&text, r#"ocis_proxy_duration_seconds_count{method="GET"}"#),
            2.0
        );
    }

    #[tokio::test]
    async fn request_is_counted_before_the_inner_service_answers() {
        let metrics = Metrics::new("t");
        let seen = Arc::clone(&metrics);
        let svc =
            MetricsLayer::new(Arc::clone(&metrics)).layer(service_fn(move |_req: Request<()>| {
                let text = seen.encode();
                async move {
                    assert_eq!(
                        count(&text, r#"ocis_proxy_requests_total{method="PUT"}"#),
                        1.0
                    );
                    assert_eq!(
                        count(&text, r#"ocis_proxy_duration_seconds_count{method="PUT"}"#),
                        0.0
                    );
                    Ok::<_, Infallible>(Response::new(()))
                }
            }));
        let req = Request::builder().method(Method::PUT).body(()).unwrap();
        svc.oneshot(req).await.unwrap();
        assert_eq!(
            count(
                &metrics.encode(),
                r#"ocis_proxy_duration_seconds_count{method="PUT"}"#
            ),
            1.0
        );
    }
}
