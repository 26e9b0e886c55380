//! The request's SERVER span, and the trust rule for incoming trace context.
//!
//! One span per request (oCIS opens three with the same name), started before anything else the
//! node does for the request and ended when the response body is finished or dropped, so its
//! duration is what the client waited for. It is named by the OpenTelemetry HTTP conventions —
//! `{method}` at first, `{method} {route endpoint}` once routed, never the raw path — and is the
//! current span while the pipeline and the response body are polled: every child span (IdP,
//! store, upstream) hangs under it and every log line written meanwhile carries its ids.
//!
//! **Trust.** A `traceparent` (with `tracestate` and `baggage`) is continued only from a caller
//! the `tracing.trust_incoming` rule trusts (by default the `http.trusted_proxies` peers, the same
//! rule as for `X-Forwarded-*`). Anyone else's context is recorded as a link on a new trace: an
//! outsider can neither choose our trace ids nor force sampling. The client's headers never reach
//! a backend: the proxy writes the node's own context instead. With tracing off the headers of
//! trusted callers pass through untouched and those of everyone else are removed.
//!
//! Sampling is decided here, once, by the node's sampler; an unsampled request still gets span
//! and trace ids (so that its logs and the backend's share them) but records nothing.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Buf as _;
use http::{Request, Response, Version, header};
use hyper::body::{Body, Frame, SizeHint};
use opentelemetry::trace::{
    Link, Span as _, SpanBuilder, SpanContext, SpanKind, Status, TraceContextExt as _, TraceFlags,
    TraceState, Tracer as _,
};
use opentelemetry::{Context as OtelContext, KeyValue};
use opentelemetry_sdk::trace::{IdGenerator as _, RandomIdGenerator};
use opentelemetry_semantic_conventions::attribute as semconv;
use tower::{Layer, Service};

use gatehouse_shared::trace::settings::Trust;
use gatehouse_shared::trace::{self, http as conv, propagate};

use crate::context::{ConnInfo, RequestId, SharedTrace};
use crate::proxy::forwarded::TrustedProxies;

/// Attribute of the link to an untrusted caller's context.
const CALLER_LINK: &str = "gatehouse.link.untrusted_caller";

#[derive(Clone)]
pub struct TraceLayer {
    trusted: Arc<TrustedProxies>,
    trust: Trust,
}

impl TraceLayer {
    pub fn new(trusted: Arc<TrustedProxies>, trust: Trust) -> Self {
        Self { trusted, trust }
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = TraceService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TraceService {
            inner,
            trusted: self.trusted.clone(),
            trust: self.trust,
        }
    }
}

#[derive(Clone)]
pub struct TraceService<S> {
    inner: S,
    trusted: Arc<TrustedProxies>,
    trust: Trust,
}

impl<S> TraceService<S> {
    fn caller_trusted(&self, conn: Option<&ConnInfo>) -> bool {
        match self.trust {
            Trust::Always => true,
            Trust::Never => false,
            Trust::TrustedProxies => conn.is_some_and(|c| self.trusted.is_trusted(c.peer.ip())),
        }
    }
}

/// The server span of one request, from the call until its response body is done.
struct Active {
    cx: OtelContext,
    trace: SharedTrace,
    method: http::Method,
    recording: bool,
    bytes: u64,
}

impl<S, B, R> Service<Request<B>> for TraceService<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    R: Body + Unpin,
{
    type Response = Response<TracedBody<R>>;
    type Error = S::Error;
    type Future = TraceFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let conn = req.extensions().get::<ConnInfo>().copied();
        let trusted = self.caller_trusted(conn.as_ref());
        let Some(tracer) = trace::tracer() else {
            if !trusted && propagate::carries_context(req.headers()) {
                propagate::strip(req.headers_mut());
            }
            return TraceFuture {
                inner: Some(self.inner.call(req)),
                active: None,
            };
        };
        // Most requests carry no context: then there is nothing to read or remove.
        let incoming = if propagate::carries_context(req.headers()) {
            let incoming = propagate::extract(req.headers());
            propagate::strip(req.headers_mut());
            incoming
        } else {
            OtelContext::new()
        };
        let caller = incoming.span().span_context().clone();
        let (parent, links) = if !caller.is_valid() {
            (OtelContext::new(), Vec::new())
        } else if trusted {
            (incoming, Vec::new())
        } else {
            let link = Link::new(caller, vec![KeyValue::new(CALLER_LINK, true)], 0);
            (OtelContext::new(), vec![link])
        };
        let (cx, recording) = if !parent.has_active_span() && !trace::new_traces_sampled() {
            // Sampling decided before building anything: a new trace at ratio 0 records nothing,
            // so it is only a pair of ids to propagate and log.
            (unsampled_root(), false)
        } else {
            let builder = SpanBuilder::from_name(conv::span_name(req.method(), None))
                .with_kind(SpanKind::Server)
                .with_links(links);
            let span = tracer.build_with_context(builder, &parent);
            let recording = span.is_recording();
            (parent.with_span(span), recording)
        };
        if recording {
            cx.span()
                .set_attributes(request_attributes(&req, conn.as_ref()));
        }
        let shared = SharedTrace::default();
        req.extensions_mut().insert(Arc::clone(&shared));
        let method = req.method().clone();
        let inner = {
            let _attached = cx.clone().attach();
            self.inner.call(req)
        };
        TraceFuture {
            inner: Some(inner),
            active: Some(Active {
                cx,
                trace: shared,
                method,
                recording,
                bytes: 0,
            }),
        }
    }
}

/// A context whose span is a fresh, unsampled root: what the SDK would build for a dropped
/// sampling decision, without the builder, the sampler call and the span object.
fn unsampled_root() -> OtelContext {
    let ids = RandomIdGenerator::default();
    OtelContext::new().with_remote_span_context(SpanContext::new(
        ids.new_trace_id(),
        ids.new_span_id(),
        TraceFlags::default(),
        false,
        TraceState::default(),
    ))
}

fn request_attributes<B>(req: &Request<B>, conn: Option<&ConnInfo>) -> Vec<KeyValue> {
    let mut out = conv::method_attributes(req.method());
    let uri = req.uri();
    let tls = conn.is_some_and(|c| c.tls);
    out.push(KeyValue::new(
        semconv::URL_SCHEME,
        if tls { "https" } else { "http" },
    ));
    out.push(KeyValue::new(semconv::URL_PATH, uri.path().to_owned()));
    if let Some(q) = uri.query() {
        out.push(KeyValue::new(
            semconv::URL_QUERY,
            conv::redact_query(q).into_owned(),
        ));
    }
    out.push(KeyValue::new(
        semconv::NETWORK_PROTOCOL_VERSION,
        match req.version() {
            Version::HTTP_10 => "1.0",
            Version::HTTP_2 => "2",
            Version::HTTP_3 => "3",
            _ => "1.1",
        },
    ));
    if let Some(conn) = conn {
        out.push(KeyValue::new(
            semconv::CLIENT_ADDRESS,
            conn.client.to_string(),
        ));
        out.push(KeyValue::new(
            semconv::NETWORK_PEER_ADDRESS,
            conn.peer.ip().to_string(),
        ));
        out.push(KeyValue::new(
            semconv::NETWORK_PEER_PORT,
            i64::from(conn.peer.port()),
        ));
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<http::uri::Authority>().ok())
        .or_else(|| uri.authority().cloned());
    if let Some(host) = host {
        out.push(KeyValue::new(
            semconv::SERVER_ADDRESS,
            host.host().to_owned(),
        ));
        if let Some(port) = host.port_u16() {
            out.push(KeyValue::new(semconv::SERVER_PORT, i64::from(port)));
        }
    }
    if let Some(ua) = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
    {
        out.push(KeyValue::new(semconv::USER_AGENT_ORIGINAL, ua.to_owned()));
    }
    if let Some(id) = req.extensions().get::<RequestId>() {
        out.push(KeyValue::new("request_id", id.as_str().to_owned()));
    }
    out
}

impl Active {
    /// The response head is known: status, route, upstream.
    fn answered(&self, status: http::StatusCode) {
        if !self.recording {
            return;
        }
        let span = self.cx.span();
        span.set_attribute(KeyValue::new(
            semconv::HTTP_RESPONSE_STATUS_CODE,
            i64::from(status.as_u16()),
        ));
        if let Some(routed) = self.trace.route.get() {
            span.update_name(conv::span_name(&self.method, Some(&routed.endpoint)));
            span.set_attribute(KeyValue::new(semconv::HTTP_ROUTE, routed.endpoint.clone()));
            span.set_attribute(KeyValue::new("gatehouse.policy", routed.policy.clone()));
        }
        if let Some(upstream) = self.trace.upstream.get() {
            span.set_attribute(KeyValue::new("gatehouse.upstream", upstream.to_string()));
        }
        if status.is_server_error() {
            span.set_attribute(KeyValue::new(
                semconv::ERROR_TYPE,
                status.as_str().to_owned(),
            ));
            span.set_status(Status::error(format!("answered {status}")));
        }
    }

    fn end(self) {
        if self.recording {
            let span = self.cx.span();
            span.set_attribute(KeyValue::new(
                semconv::HTTP_RESPONSE_BODY_SIZE,
                i64::try_from(self.bytes).unwrap_or(i64::MAX),
            ));
        }
        self.cx.span().end();
    }
}

pin_project_lite::pin_project! {
    /// Polls the pipeline with the server span current; hands the span to the response body.
    pub struct TraceFuture<F> {
        #[pin]
        inner: Option<F>,
        active: Option<Active>,
    }

    impl<F> PinnedDrop for TraceFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            // Abandoned before the response (the client went away): what the pipeline logs while
            // it is dropped belongs to this span.
            if let Some(active) = this.active.take() {
                {
                    let _attached = active.cx.clone().attach();
                    this.inner.set(None);
                }
                if active.recording {
                    active.cx.span().set_attribute(KeyValue::new("gatehouse.client_closed", true));
                }
                active.end();
            }
        }
    }
}

impl<F, R, E> Future for TraceFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = Result<Response<TracedBody<R>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let result = {
            let _attached = this.active.as_ref().map(|a| a.cx.clone().attach());
            let Some(inner) = this.inner.as_mut().as_pin_mut() else {
                return Poll::Pending;
            };
            ready!(inner.poll(cx))
        };
        this.inner.set(None);
        let active = this.active.take();
        Poll::Ready(match result {
            Ok(resp) => {
                if let Some(a) = &active {
                    a.answered(resp.status());
                }
                Ok(resp.map(|inner| TracedBody {
                    inner: Some(inner),
                    active,
                }))
            }
            Err(e) => {
                if let Some(a) = active {
                    a.cx.span().set_status(Status::error("no response"));
                    a.end();
                }
                Err(e)
            }
        })
    }
}

/// The response body, polled with the server span current; ends the span when it is finished
/// or dropped.
pub struct TracedBody<B> {
    inner: Option<B>,
    active: Option<Active>,
}

impl<B: Body + Unpin> Body for TracedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let attached = this.active.as_ref().map(|a| a.cx.clone().attach());
        let frame = ready!(Pin::new(inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let (Some(data), Some(a)) = (f.data_ref(), this.active.as_mut()) {
                    a.bytes += data.remaining() as u64;
                }
            }
            Some(Err(_)) => {}
            None => {
                // Still attached: what the finished body logs when dropped belongs to the span.
                this.inner = None;
                drop(attached);
                if let Some(a) = this.active.take() {
                    a.end();
                }
                return Poll::Ready(None);
            }
        }
        drop(attached);
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(B::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), B::size_hint)
    }
}

impl<B> Drop for TracedBody<B> {
    fn drop(&mut self) {
        if let Some(active) = self.active.take() {
            {
                let _attached = active.cx.clone().attach();
                self.inner = None;
            }
            active.end();
        }
    }
}
