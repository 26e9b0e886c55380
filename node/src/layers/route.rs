//! Path normalisation and routing: the policy selector picks a policy, the router a route, and
//! the route its target. The result travels as the [`Routed`] extension to the authentication
//! layer (which needs `unprotected`) and the proxy (which needs the target).
//!
//! The path is normalised before routing and the request is forwarded with the same normalised
//! path, so a prefix decision cannot be bypassed with `..`, `//` or encoded separators (spec
//! anchors D.3); a path that cannot be normalised is a 400.

use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::Either;
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, Uri, header};
use tower::{Layer, Service};

use crate::context::{Body, ConnInfo, SharedTrace};
use crate::error::GatewayError;
use crate::rate_limit::RouteLimits;
use crate::upstream::{UpstreamBase, UpstreamUrlError, backend_base};
use gatehouse_shared::routing::{RouteMatch, RouteRequest, Router, Target, normalize_path};

/// What the router decided for a request. Cheap to clone (one `Arc`).
///
/// It travels in the request's [`SharedTrace`] (which the access log and the server span read
/// anyway), not as an extension of its own: see [`routed`].
#[derive(Debug, Clone)]
pub struct Routed(Arc<RouteInfo>);

/// The route the route layer chose for `req`, if it has run.
pub fn routed<B>(req: &Request<B>) -> Option<&Routed> {
    req.extensions().get::<SharedTrace>()?.route.get()
}

#[derive(Debug, PartialEq, Eq)]
pub struct RouteInfo {
    pub policy: String,
    /// With `route_index`, the route's place in the router (`RouteMatch::policy_index`): the
    /// index of per-route tables built at start-up.
    pub policy_index: usize,
    pub route_index: usize,
    pub endpoint: String,
    pub target: Target,
    /// Authentication is skipped for this route.
    pub unprotected: bool,
    /// The upstream gets the backend's authority as `Host`.
    pub apache_vhost: bool,
    /// Refuse the request unless the user's `acr` claim shows step-up authentication.
    pub require_mfa: bool,
    /// `policy/endpoint`, for logs and the access log.
    pub label: String,
    /// Where the proxy sends the request.
    pub upstream: RouteUpstream,
}

/// A route's upstream as the proxy needs it: static backends are parsed once, at start-up.
#[derive(Debug, PartialEq, Eq)]
pub enum RouteUpstream {
    Static(Arc<UpstreamBase>),
    Service(String),
}

impl std::ops::Deref for Routed {
    type Target = RouteInfo;
    fn deref(&self) -> &RouteInfo {
        &self.0
    }
}

impl Routed {
    pub fn new(info: RouteInfo) -> Self {
        Self(Arc::new(info))
    }
}

#[derive(Clone)]
pub struct RouteLayer {
    shared: Arc<Shared>,
}

struct Shared {
    router: Arc<Router>,
    /// One [`Routed`] per route, indexed `[policy_index][route_index]`, built with the layer so
    /// that routing a request allocates nothing.
    routed: Vec<Vec<Routed>>,
    /// The `per: address` rate limits, checked as soon as the route is known.
    limits: Option<Arc<RouteLimits>>,
}

impl RouteLayer {
    /// Fails if a static backend URL cannot be used as an upstream base.
    pub fn new(router: Arc<Router>) -> Result<Self, UpstreamUrlError> {
        let mut routed: Vec<Vec<Routed>> = Vec::new();
        for m in router.routes() {
            if routed.len() <= m.policy_index {
                routed.resize_with(m.policy_index + 1, Vec::new);
            }
            let policy = &mut routed[m.policy_index];
            debug_assert_eq!(
                policy.len(),
                m.route_index,
                "routes come in configuration order"
            );
            policy.push(Routed::new(route_info(&m)?));
        }
        Ok(Self {
            shared: Arc::new(Shared {
                router,
                routed,
                limits: None,
            }),
        })
    }

    /// Applies the `per: address` rate limits of each route right after routing, before any
    /// authenticator (see `crate::rate_limit` for why this is not a layer of its own).
    pub fn with_rate_limits(self, limits: Option<Arc<RouteLimits>>) -> Self {
        Self {
            shared: Arc::new(Shared {
                router: self.shared.router.clone(),
                routed: self.shared.routed.clone(),
                limits,
            }),
        }
    }
}

fn route_info(m: &RouteMatch<'_>) -> Result<RouteInfo, UpstreamUrlError> {
    let upstream = match m.target {
        Target::Backend(b) => RouteUpstream::Static(backend_base(b)?),
        Target::Service(name) => RouteUpstream::Service(name.clone()),
    };
    Ok(RouteInfo {
        policy: m.policy.to_owned(),
        policy_index: m.policy_index,
        route_index: m.route_index,
        endpoint: m.endpoint.to_owned(),
        target: m.target.clone(),
        unprotected: m.unprotected,
        apache_vhost: m.apache_vhost,
        require_mfa: m.require_mfa,
        label: format!("{}/{}", m.policy, m.endpoint),
        upstream,
    })
}

impl<S> Layer<S> for RouteLayer {
    type Service = Route<S>;
    fn layer(&self, inner: S) -> Route<S> {
        Route {
            inner,
            shared: self.shared.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Route<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl Shared {
    fn routed(&self, m: &RouteMatch<'_>) -> Result<Routed, GatewayError> {
        self.routed
            .get(m.policy_index)
            .and_then(|p| p.get(m.route_index))
            .cloned()
            .ok_or_else(|| GatewayError::NoRoute {
                path: String::new(),
                reason: format!("route {}/{} is not in the table", m.policy, m.endpoint),
            })
    }

    fn route<B>(&self, req: &mut Request<B>) -> Result<Routed, GatewayError> {
        check_host(req)?;
        let normalized = match normalize_path(req.uri().path()) {
            Ok(std::borrow::Cow::Borrowed(_)) => None,
            Ok(std::borrow::Cow::Owned(p)) => Some(p),
            Err(_) => {
                return Err(GatewayError::BadRequest {
                    path: req.uri().path().to_owned(),
                });
            }
        };
        if let Some(path) = normalized {
            let pq = match req.uri().query() {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            let mut parts = req.uri().clone().into_parts();
            parts.path_and_query =
                Some(
                    PathAndQuery::try_from(pq).map_err(|_| GatewayError::BadRequest {
                        path: req.uri().path().to_owned(),
                    })?,
                );
            *req.uri_mut() = Uri::from_parts(parts).map_err(|_| GatewayError::BadRequest {
                path: req.uri().path().to_owned(),
            })?;
        }

        let cookies = req.headers().get_all(header::COOKIE);
        let joined;
        let mut iter = cookies.iter();
        let cookie_header = match (iter.next(), iter.next()) {
            (None, _) => None,
            (Some(one), None) => one.to_str().ok(),
            // HTTP/2 clients may split cookies over several fields (RFC 9113 §8.2.3).
            (Some(_), Some(_)) => {
                joined = cookies
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect::<Vec<_>>()
                    .join("; ");
                Some(joined.as_str())
            }
        };
        let rr = RouteRequest {
            method: req.method().as_str(),
            path: req.uri().path(),
            query: req.uri().query(),
            cookie_header,
            claims: None,
            user: None,
        };
        let m = self.router.route(&rr).map_err(|e| GatewayError::NoRoute {
            path: req.uri().path().to_owned(),
            reason: e.to_string(),
        })?;
        self.routed(&m)
    }
}

/// RFC 9112 §3.2: an HTTP/1.1 request carries exactly one `Host`, and any `Host` is a valid
/// authority (no path, no user info). Anything else is refused with 400 before routing, so
/// that the gateway and a backend can never disagree about which host was addressed.
fn check_host<B>(req: &Request<B>) -> Result<(), GatewayError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let bad = |reason: &str| GatewayError::BadHost {
        reason: reason.to_owned(),
    };
    match (hosts.next(), hosts.next()) {
        (None, _) if req.version() == http::Version::HTTP_11 => Err(bad("no Host header")),
        (None, _) => Ok(()),
        (Some(_), Some(_)) => Err(bad("more than one Host header")),
        (Some(value), None) => {
            if is_authority(value) {
                Ok(())
            } else {
                Err(bad("the Host header is not a valid authority"))
            }
        }
    }
}

/// Whether a `Host` value is a valid authority without user info. Parsing one allocates, and a worker
/// sees the same few `Host` values again and again, so the last valid one is remembered per
/// thread (each HTTP worker is one thread).
fn is_authority(value: &HeaderValue) -> bool {
    /// Longer values are checked every time (a DNS name has at most 253 bytes).
    const MEMO_MAX: usize = 262;
    thread_local! {
        static LAST_VALID: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let host = value.as_bytes();
    if host.is_empty() || host.contains(&b'@') {
        return false;
    }
    if LAST_VALID.with_borrow(|last| last.as_slice() == host) {
        return true;
    }
    let valid = value
        .to_str()
        .ok()
        .and_then(|v| v.parse::<http::uri::Authority>().ok())
        .is_some();
    if valid && host.len() <= MEMO_MAX {
        LAST_VALID.with_borrow_mut(|last| {
            last.clear();
            last.extend_from_slice(host);
        });
    }
    valid
}

impl<S, B> Service<Request<B>> for Route<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = GatewayError>,
{
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = Either<Ready<Result<Response<Body>, GatewayError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        match self.shared.route(&mut req) {
            Ok(routed) => {
                let limited = match &self.shared.limits {
                    Some(limits) => match req.extensions().get::<ConnInfo>() {
                        Some(conn) => limits.admit_address(&routed, conn.client),
                        None => Ok(()),
                    },
                    None => Ok(()),
                };
                match req.extensions().get::<SharedTrace>() {
                    Some(trace) => {
                        let _ = trace.route.set(routed);
                    }
                    // Only without the trace and access-log layers (a pipeline in a test).
                    None => {
                        let trace = SharedTrace::default();
                        let _ = trace.route.set(routed);
                        req.extensions_mut().insert(trace);
                    }
                }
                if let Err(e) = limited {
                    return Either::Left(ready(Err(e)));
                }
                Either::Right(self.inner.call(req))
            }
            Err(e) => Either::Left(ready(Err(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The remembered value answers only for itself: every answer is the uncached check's, in
    /// any order, for invalid values around a valid one and for a new valid value replacing it.
    #[test]
    fn the_host_memo_never_changes_an_answer() {
        let uncached = |v: &HeaderValue| {
            v.to_str().is_ok_and(|s| {
                !s.is_empty() && !s.contains('@') && s.parse::<http::uri::Authority>().is_ok()
            })
        };
        let long = format!("{}.example", "a".repeat(300));
        let hosts: Vec<HeaderValue> = [
            "gw.example.com",
            "gw.example.com",
            "gw.example.com:9200",
            "[::1]:9200",
            "user@gw.example.com",
            "gw.example.com/path",
            "",
            "gw example",
            "[::1",
            "gw.example.com:9200",
            "gw.example.com:92a0",
            long.as_str(),
            long.as_str(),
            "gw.example.com",
        ]
        .iter()
        .map(|h| HeaderValue::from_str(h).unwrap())
        .chain([HeaderValue::from_bytes(b"gw.\xe9xample").unwrap()])
        .collect();
        for round in 0..2 {
            for value in hosts.iter().chain(hosts.iter().rev()) {
                assert_eq!(is_authority(value), uncached(value), "{value:?} ({round})");
            }
        }
        assert!(is_authority(&HeaderValue::from_static("gw.example.com")));
        assert!(!is_authority(&HeaderValue::from_static(
            "user@gw.example.com"
        )));
        assert!(!is_authority(&HeaderValue::from_static("gw example")));
    }
}
