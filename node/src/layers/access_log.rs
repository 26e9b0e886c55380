//! The access log (spec §3.4): exactly one `info` line per request, target `access_log`, message
//! `access-log`, with the fields `request_id method path proto status duration_ms bytes
//! remote_addr upstream route`.
//!
//! The line is written when the response body has been sent completely or is dropped, not when
//! the response head leaves: a long download is logged with its real duration and the bytes that
//! were actually sent (fewer than announced if the client went away). A request whose response
//! never came (the client disconnected while the pipeline was still waiting) is logged with status
//! 499, nginx's "client closed request"; an error the pipeline did not turn into a response is
//! logged as 500. The single line is guaranteed by ownership: the pending record logs when it is
//! dropped, and it moves from the response future into the body.
//!
//! This layer runs inside the request-id layer (it reads [`RequestId`]) and uses the
//! [`SharedTrace`] the router and the proxy fill in (inserting it when the trace layer did not).
//! `remote_addr` is the client address of the request's [`ConnInfo`].

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Buf as _;
use http::{Method, Request, Response, Uri, Version};
use hyper::body::{Body, Frame, SizeHint};
use tower::{Layer, Service};

use crate::context::{ConnInfo, RequestId, SharedTrace};

/// The status logged for a request whose response was never produced.
const CLIENT_CLOSED: u16 = 499;

#[derive(Clone, Copy, Debug, Default)]
pub struct AccessLogLayer;

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLogService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessLogService { inner }
    }
}

#[derive(Clone)]
pub struct AccessLogService<S> {
    inner: S,
}

impl<S, B, R> Service<Request<B>> for AccessLogService<S>
where
    S: Service<Request<B>, Response = Response<R>>,
{
    type Response = Response<AccessLogBody<R>>;
    type Error = S::Error;
    type Future = AccessLogFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let trace = match req.extensions().get::<SharedTrace>() {
            Some(trace) => trace,
            None => req.extensions_mut().get_or_insert_default::<SharedTrace>(),
        };
        // Off below `info` (the default level is `error`): then nothing is collected at all.
        if !tracing::enabled!(target: "access_log", tracing::Level::INFO) {
            return AccessLogFuture {
                inner: self.inner.call(req),
                pending: None,
            };
        }
        let trace = Arc::clone(trace);
        let ext = req.extensions();
        let remote = ext.get::<ConnInfo>().map(|c| c.client);
        let pending = Pending {
            start: Instant::now(),
            request_id: ext.get::<RequestId>().cloned(),
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            remote,
            trace,
            status: CLIENT_CLOSED,
            bytes: 0,
        };
        AccessLogFuture {
            inner: self.inner.call(req),
            pending: Some(pending),
        }
    }
}

pin_project_lite::pin_project! {
    pub struct AccessLogFuture<F> {
        #[pin]
        inner: F,
        pending: Option<Pending>,
    }
}

impl<F, R, E> Future for AccessLogFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = Result<Response<AccessLogBody<R>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let mut pending = this.pending.take();
        Poll::Ready(match result {
            Ok(resp) => {
                if let Some(p) = pending.as_mut() {
                    p.status = resp.status().as_u16();
                }
                Ok(resp.map(|inner| AccessLogBody { inner, pending }))
            }
            Err(err) => {
                if let Some(p) = pending.as_mut() {
                    p.status = 500;
                }
                Err(err)
            }
        })
    }
}

pin_project_lite::pin_project! {
    /// The response body, counting the bytes it hands to the connection.
    pub struct AccessLogBody<B> {
        #[pin]
        inner: B,
        pending: Option<Pending>,
    }
}

impl<B: Body> Body for AccessLogBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let (Some(data), Some(p)) = (frame.data_ref(), this.pending.as_mut()) {
                    p.bytes += data.remaining() as u64;
                }
            }
            Some(Err(_)) => {}
            // Finished: log now rather than whenever the connection drops the body.
            None => drop(this.pending.take()),
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

/// Everything the log line needs, collected on the way in; logs when dropped.
pub struct Pending {
    start: Instant,
    request_id: Option<RequestId>,
    method: Method,
    uri: Uri,
    version: Version,
    remote: Option<IpAddr>,
    trace: SharedTrace,
    status: u16,
    bytes: u64,
}

struct OrEmpty<T>(Option<T>);

impl<T: fmt::Display> fmt::Display for OrEmpty<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => Ok(()),
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let duration_ms = self.start.elapsed().as_secs_f64() * 1000.0;
        tracing::info!(
            target: "access_log",
            request_id = self.request_id.as_ref().map_or("", RequestId::as_str),
            method = self.method.as_str(),
            path = self.uri.path(),
            proto = ?self.version,
            status = self.status,
            duration_ms,
            bytes = self.bytes,
            remote_addr = %OrEmpty(self.remote),
            upstream = self.trace.upstream.get().map_or("", |u| &**u),
            route = self.trace.route.get().map_or("", |r| r.label.as_str()),
            "access-log"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::time::Duration;

    use bytes::Bytes;
    use futures::StreamExt as _;
    use http::StatusCode;
    use http_body_util::{BodyExt as _, Full, StreamBody};
    use tower::{ServiceExt as _, service_fn};
    use tracing_subscriber::fmt::writer::BoxMakeWriter;

    use super::*;
    use crate::telemetry::logging::{self, tests::Capture};

    fn capture() -> (Capture, tracing::subscriber::DefaultGuard) {
        let capture = Capture::default();
        let log = gatehouse_shared::config::Log {
            level: "info".into(),
            ..Default::default()
        };
        let sub = logging::subscriber(&log, "test-node", None, BoxMakeWriter::new(capture.clone()))
            .unwrap();
        (capture, tracing::subscriber::set_default(sub))
    }

    fn access_lines(capture: &Capture) -> Vec<serde_json::Value> {
        capture
            .lines()
            .iter()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["target"] == "access_log")
            .collect()
    }

    fn test_route(policy: &str, endpoint: &str) -> crate::layers::route::Routed {
        use crate::layers::route::{RouteInfo, RouteUpstream, Routed};
        Routed::new(RouteInfo {
            policy: policy.into(),
            policy_index: 0,
            route_index: 0,
            endpoint: endpoint.into(),
            target: gatehouse_shared::routing::Target::Service("webdav".into()),
            unprotected: false,
            apache_vhost: false,
            require_mfa: false,
            label: format!("{policy}/{endpoint}"),
            upstream: RouteUpstream::Service("webdav".into()),
        })
    }

    type ChunkBody =
        StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

    fn chunks(parts: &[&'static str]) -> ChunkBody {
        let frames: Vec<_> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        StreamBody::new(futures::stream::iter(frames))
    }

    fn request(conn_peer: &str, client: Option<&str>) -> Request<()> {
        let mut req = Request::builder()
            .method("PROPFIND")
            .uri("/remote.php/dav/files/alice?x=1")
            .body(())
            .unwrap();
        let peer: SocketAddr = conn_peer.parse().unwrap();
        req.extensions_mut().insert(ConnInfo {
            peer,
            local: peer,
            tls: false,
            client: client.map_or(peer.ip(), |c| c.parse().unwrap()),
        });
        req.extensions_mut()
            .insert(RequestId(http::HeaderValue::from_static("host/abc-000007")));
        req
    }

    #[tokio::test]
    async fn logs_one_line_with_all_fields_after_the_body_is_sent() {
        let (capture, _guard) = capture();
        let svc = AccessLogLayer.layer(service_fn(|req: Request<()>| async move {
            let trace = req
                .extensions()
                .get::<SharedTrace>()
                .expect("trace inserted")
                .clone();
            trace.route.set(test_route("ocis", "/webdav")).unwrap();
            trace.upstream.set("http://127.0.0.1:9140".into()).unwrap();
            let mut resp = Response::new(chunks(&["hello ", "world", "!"]));
            *resp.status_mut() = StatusCode::MULTI_STATUS;
            Ok::<_, Infallible>(resp)
        }));
        let resp = svc
            .oneshot(request("10.0.0.1:5555", Some("203.0.113.9")))
            .await
            .unwrap();
        assert!(
            access_lines(&capture).is_empty(),
            "not logged before the body is sent"
        );
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "hello world!");
        let lines = access_lines(&capture);
        assert_eq!(lines.len(), 1, "{lines:?}");
        let l = &lines[0];
        assert_eq!(l["message"], "access-log");
        assert_eq!(l["level"], "INFO");
        assert_eq!(l["request_id"], "host/abc-000007");
        assert_eq!(l["method"], "PROPFIND");
        assert_eq!(l["path"], "/remote.php/dav/files/alice");
        assert_eq!(l["proto"], "HTTP/1.1");
        assert_eq!(l["status"], 207);
        assert_eq!(l["bytes"], 12);
        assert_eq!(l["remote_addr"], "203.0.113.9");
        assert_eq!(l["upstream"], "http://127.0.0.1:9140");
        assert_eq!(l["route"], "ocis//webdav");
        assert!(l["duration_ms"].as_f64().unwrap() >= 0.0);
    }

    #[tokio::test]
    async fn dropped_body_logs_once_with_the_bytes_actually_sent() {
        let (capture, _guard) = capture();
        let svc = AccessLogLayer.layer(service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(Response::new(chunks(&["aaaa", "bbbbbbbb", "cc"])))
        }));
        let resp = svc
            .oneshot(request("[2001:db8::1]:443", None))
            .await
            .unwrap();
        let mut body = resp.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "aaaa");
        drop(body);
        let lines = access_lines(&capture);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["bytes"], 4);
        assert_eq!(lines[0]["status"], 200);
        assert_eq!(
            lines[0]["remote_addr"], "2001:db8::1",
            "falls back to the TCP peer"
        );
        assert_eq!(lines[0]["upstream"], "");
    }

    #[tokio::test]
    async fn empty_body_and_abandoned_request_are_logged_once() {
        let (capture, _guard) = capture();
        let svc = AccessLogLayer.layer(service_fn(|req: Request<()>| async move {
            if req.uri().path() == "/slow" {
                futures::future::pending::<()>().await;
            }
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        }));
        let resp = svc
            .clone()
            .oneshot(request("127.0.0.1:1", None))
            .await
            .unwrap();
        assert!(resp.body().is_end_stream());
        drop(resp);

        let mut slow = request("127.0.0.1:1", None);
        *slow.uri_mut() = Uri::from_static("/slow");
        let pending = tokio::time::timeout(Duration::from_millis(1), svc.oneshot(slow)).await;
        assert!(pending.is_err(), "the slow request never answers");

        let lines = access_lines(&capture);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(
            (lines[0]["status"].as_u64(), lines[0]["bytes"].as_u64()),
            (Some(200), Some(0))
        );
        assert_eq!(lines[1]["status"], 499);
        assert_eq!(lines[1]["path"], "/slow");
    }

    #[tokio::test]
    async fn stream_body_counts_every_frame() {
        let (capture, _guard) = capture();
        let svc = AccessLogLayer.layer(service_fn(|_req: Request<()>| async {
            let frames = futures::stream::iter(0..100)
                .map(|_| Ok::<_, Infallible>(Frame::data(Bytes::from(vec![0u8; 1000]))));
            Ok::<_, Infallible>(Response::new(StreamBody::new(frames)))
        }));
        let resp = svc.oneshot(request("127.0.0.1:1", None)).await.unwrap();
        let n = resp.into_body().collect().await.unwrap().to_bytes().len();
        assert_eq!(n, 100_000);
        let lines = access_lines(&capture);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["bytes"], 100_000);
    }
}
