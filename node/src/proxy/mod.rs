//! The reverse proxy: forwards a routed request to its upstream and streams the answer back.
//!
//! Bodies are passed through as they arrive in both directions (no buffering, no size limit), so
//! large uploads, downloads and server-sent events flow at the pace of the slower side. Upstream
//! connections are pooled per worker (HTTP/1.1 keep-alive, see [`client`]); `https` upstreams are
//! reached over TLS (see [`tls`]). Dropping the request future — which hyper does when the client
//! goes away — drops the upstream exchange and closes that upstream connection.
//! Protocol upgrades (WebSocket) are bridged by copying bytes between the two upgraded
//! connections.

pub mod client;
pub mod forwarded;
pub mod tls;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::Either;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tower::Service;

use self::client::{SendError, UpstreamBody, UpstreamClient};
use self::forwarded::{TrustedProxies, is_upgrade_request, rewrite_forwarded, strip_hop_by_hop};
use self::tls::{Connector, UpstreamTlsError};
use crate::context::{Body, ConnInfo, SharedTrace};
use crate::deadline::{Deadline, Deadlines};
use crate::error::GatewayError;
use crate::layers::route::{self, RouteUpstream, Routed};
use crate::upstream::{Chosen, Resolver};
use gatehouse_shared::routing::{upstream_path_and_query, upstream_path_is_unchanged};
use gatehouse_shared::trace::{self, http as conv, propagate};

/// How the proxy talks to upstreams (the `upstream` configuration section, `insecure_backends`
/// and `backend_https_cacert`).
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// Bounds name resolution, TCP connect and TLS handshake together. `None`: the operating
    /// system's connect timeout, and no limit on the handshake.
    pub connect_timeout: Option<Duration>,
    /// `None`: wait for the response head as long as the upstream takes.
    pub response_header_timeout: Option<Duration>,
    pub pool_idle_timeout: Option<Duration>,
    /// Client configuration for `https` upstreams, see [`tls::client_config`].
    pub tls: Arc<rustls::ClientConfig>,
}

impl ProxyOptions {
    /// Zero durations mean "no limit" (or the library default for the pool). Reads the
    /// `backend_https_cacert` file; a missing or invalid file is an error.
    pub fn from_config(
        config: &gatehouse_shared::config::Config,
    ) -> Result<Self, UpstreamTlsError> {
        let up = &config.upstream;
        let nz = |d: Duration| (!d.is_zero()).then_some(d);
        let ca_file = (!config.backend_https_cacert.is_empty())
            .then(|| std::path::Path::new(&config.backend_https_cacert));
        if config.insecure_backends {
            tracing::warn!(
                "insecure_backends is set: certificates of https upstreams are not verified"
            );
        }
        Ok(Self {
            connect_timeout: nz(up.connect_timeout.0),
            response_header_timeout: nz(up.response_header_timeout.0),
            pool_idle_timeout: nz(up.pool_idle_timeout.0),
            tls: tls::client_config(config.insecure_backends, ca_file)?,
        })
    }
}

/// How late `response_header_timeout` may fire at most.
const DEADLINE_TICK: Duration = Duration::from_millis(10);

pin_project_lite::pin_project! {
    /// `Some` with `work`'s output, or `None` if `deadline` came first (`work` is polled first).
    /// A struct rather than an `async fn`, which would hold `work` twice (the argument and its
    /// pinned copy); and one await point whether or not there is a deadline.
    struct FirstOf<F> {
        #[pin]
        work: F,
        deadline: Option<Deadline>,
    }
}

impl<F: Future> Future for FirstOf<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.work.poll(cx) {
            return Poll::Ready(Some(out));
        }
        match this.deadline {
            Some(deadline) => Pin::new(deadline).poll(cx).map(|()| None),
            None => Poll::Pending,
        }
    }
}

/// The innermost service of the pipeline. Cheap to clone.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

struct Inner {
    client: UpstreamClient,
    resolver: Arc<Resolver>,
    trusted: Arc<TrustedProxies>,
    response_header_timeout: Option<Duration>,
    /// This worker's deadlines, for `response_header_timeout`.
    deadlines: Deadlines,
}

impl Proxy {
    pub fn new(resolver: Arc<Resolver>, trusted: Arc<TrustedProxies>, opts: &ProxyOptions) -> Self {
        let connector = Connector::new(opts.tls.clone(), opts.connect_timeout);
        Self {
            inner: Arc::new(Inner {
                client: UpstreamClient::new(connector, opts.pool_idle_timeout),
                resolver,
                trusted,
                response_header_timeout: opts.response_header_timeout,
                deadlines: Deadlines::new(DEADLINE_TICK),
            }),
        }
    }
}

type ProxyFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, GatewayError>> + Send>>;

impl Service<Request<Incoming>> for Proxy {
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = ProxyFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> ProxyFuture {
        // `forward` is the future itself: an `async move` around it would hold the request twice.
        Box::pin(Inner::forward(self.inner.clone(), req))
    }
}

impl Inner {
    async fn forward(
        self: Arc<Self>,
        mut req: Request<Incoming>,
    ) -> Result<Response<Body>, GatewayError> {
        let Some(routed) = route::routed(&req).cloned() else {
            return Err(GatewayError::NoRoute {
                path: req.uri().path().to_owned(),
                reason: "request reached the proxy without a route".to_owned(),
            });
        };
        let chosen = match &routed.upstream {
            RouteUpstream::Static(base) => Chosen::fixed(base.clone()),
            RouteUpstream::Service(name) => self.resolver.resolve_service(name).map_err(|e| {
                GatewayError::UpstreamUnavailable {
                    route: routed.label.clone(),
                    upstream: target_name(&routed),
                    reason: e.to_string(),
                }
            })?,
        };
        if let Some(trace) = req.extensions().get::<SharedTrace>() {
            let _ = trace.upstream.set(chosen.base.url.clone());
        }
        let upgrade = req.version() == Version::HTTP_11 && is_upgrade_request(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        self.rewrite(&mut req, &routed, &chosen, upgrade)?;
        let span = if trace::current_is_sampled() {
            let mut url = http::uri::Parts::default();
            url.scheme = Some(chosen.base.scheme.clone());
            url.authority = Some(chosen.base.authority.clone());
            url.path_and_query = req.uri().path_and_query().cloned();
            let url = Uri::from_parts(url).unwrap_or_else(|_| req.uri().clone());
            conv::client_span(req.method(), &url, &target_name(&routed), None)
        } else {
            trace::Span::NONE
        };
        // The backend continues the upstream span's trace, or (unsampled) the server span's.
        propagate::inject_span(&span, req.headers_mut());

        let (scheme, authority) = (&chosen.base.scheme, &chosen.base.authority);
        // Upgrades are rare: their exchange is boxed so that it does not widen every request's
        // future. Built inside the `await` so that no moved-from copy stays in the future.
        let deadline = self
            .response_header_timeout
            .map(|t| self.deadlines.after(t));
        let result = FirstOf {
            work: span.instrument(if upgrade {
                Either::Left(Box::pin(self.client.send_upgrade(scheme, authority, req)))
            } else {
                Either::Right(self.client.send(scheme, authority, req))
            }),
            deadline,
        }
        .await;
        let Some(result) = result else {
            let t = self.response_header_timeout.unwrap_or_default();
            span.fail("timeout", format!("no response head within {t:?}"));
            return Err(GatewayError::UpstreamTimeout {
                route: routed.label.clone(),
                upstream: chosen.base.url.to_string(),
                after_ms: t.as_millis(),
            });
        };
        let mut resp = match result {
            Ok(r) => r,
            Err(SendError::ClientBody(e)) => {
                span.fail("malformed_request_body", error_chain(&e));
                return Err(GatewayError::MalformedBody {
                    route: routed.label.clone(),
                    reason: error_chain(&e),
                });
            }
            Err(e) => {
                let connect = matches!(e, SendError::Connect(_));
                if connect {
                    chosen.report_refused();
                }
                let reason = error_chain(&e);
                span.fail(if connect { "connect" } else { "upstream" }, reason.clone());
                return Err(unavailable(&routed, &chosen, reason));
            }
        };
        conv::record_client_status(&span, resp.status());

        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        if switching {
            match client_upgrade {
                Some(client_upgrade) => {
                    let upstream_upgrade = hyper::upgrade::on(&mut resp);
                    tokio::spawn(bridge(client_upgrade, upstream_upgrade));
                }
                None => {
                    return Err(unavailable(
                        &routed,
                        &chosen,
                        "upstream switched protocols without being asked".to_owned(),
                    ));
                }
            }
        }
        strip_hop_by_hop(resp.headers_mut(), switching);
        if span.is_recording() {
            // The upstream span lasts until the upstream's body is finished.
            return Ok(resp.map(|b| {
                EndSpanBody {
                    inner: b,
                    span: Some(span),
                }
                .map_err(Into::into)
                .boxed_unsync()
            }));
        }
        Ok(resp.map(|b| b.map_err(Into::into).boxed_unsync()))
    }

    fn rewrite(
        &self,
        req: &mut Request<Incoming>,
        routed: &Routed,
        chosen: &Chosen,
        upgrade: bool,
    ) -> Result<(), GatewayError> {
        let base = &chosen.base;
        let (path, query, backend_query) = (
            req.uri().path(),
            req.uri().query(),
            base.base_query.as_deref(),
        );
        let own = req
            .uri()
            .path_and_query()
            .filter(|_| upstream_path_is_unchanged(&base.base_path, backend_query, path, query));
        let pq = match own {
            // Shared with the request URI, validated when it was parsed.
            Some(own) => own.clone(),
            None => PathAndQuery::try_from(upstream_path_and_query(
                &base.base_path,
                backend_query,
                path,
                query,
            ))
            .map_err(|e| unavailable(routed, chosen, format!("upstream path: {e}")))?,
        };
        let client_host = match req.headers().get(header::HOST) {
            Some(h) => Some(h.clone()),
            None => req
                .uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
        };
        // Origin form: the client writes the URI as given on the request line.
        *req.uri_mut() = Uri::from(pq);
        *req.version_mut() = Version::HTTP_11;

        let conn = req.extensions().get::<ConnInfo>().copied();
        let headers = req.headers_mut();
        strip_hop_by_hop(headers, upgrade);
        // Forwarding headers, Host and User-Agent are added below: grown once, not per field.
        headers.reserve(6);
        if let Some(conn) = conn {
            rewrite_forwarded(headers, &self.trusted, &conn, client_host.as_ref());
        }
        if routed.apache_vhost {
            if let Ok(h) = HeaderValue::from_str(base.authority.as_str()) {
                headers.insert(header::HOST, h);
            }
        } else {
            let host = client_host.or_else(|| HeaderValue::from_str(base.authority.as_str()).ok());
            if let Some(h) = host {
                headers.insert(header::HOST, h);
            }
        }
        if !headers.contains_key(header::USER_AGENT) {
            headers.insert(header::USER_AGENT, HeaderValue::from_static(""));
        }
        Ok(())
    }
}

/// An upstream response body that ends the upstream span when it is finished or dropped.
struct EndSpanBody {
    inner: UpstreamBody,
    span: Option<trace::Span>,
}

impl hyper::body::Body for EndSpanBody {
    type Data = bytes::Bytes;
    type Error = crate::context::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, crate::context::BoxError>>> {
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            None => {
                if let Some(span) = self.span.take() {
                    span.end();
                }
            }
            Some(Err(e)) => {
                if let Some(span) = &self.span {
                    span.fail("upstream_body", e.to_string());
                }
            }
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for EndSpanBody {
    fn drop(&mut self) {
        if let Some(span) = self.span.take() {
            span.end();
        }
    }
}

fn target_name(routed: &Routed) -> String {
    match &routed.target {
        gatehouse_shared::routing::Target::Service(s) => s.clone(),
        gatehouse_shared::routing::Target::Backend(b) => format!("{}://{}", b.scheme, b.authority),
    }
}

fn unavailable(routed: &Routed, chosen: &Chosen, reason: String) -> GatewayError {
    GatewayError::UpstreamUnavailable {
        route: routed.label.clone(),
        upstream: chosen.base.url.to_string(),
        reason,
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

/// Copies bytes between the client's and the upstream's upgraded connections until either side
/// closes.
async fn bridge(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "protocol upgrade did not complete");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(error = %e, "upgraded connection ended with an error");
    }
}
