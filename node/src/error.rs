//! The failures a request can meet inside the gateway, and the one place where they become HTTP
//! responses. Layers return a [`GatewayError`] instead of writing a response themselves, so status
//! codes, bodies and the single log line per failure are decided here and nowhere else.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full};
use tower::{Layer, Service};

use std::time::Duration;

use gatehouse_shared::auth::challenge::WEBDAV_UNAUTHENTICATED_BODY;
use gatehouse_shared::auth::mfa::MFA_REQUIRED_HEADER;

use crate::context::Body;

/// Why the gateway could not produce the upstream's answer.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The request path cannot be normalised (encoded separators, `..` above the root, …). Not retryable.
    #[error("bad request path {path:?}")]
    BadRequest { path: String },
    /// The `Host` header is missing (HTTP/1.1), repeated or not an authority. Not retryable.
    #[error("bad Host header: {reason}")]
    BadHost { reason: String },
    /// The client's request body could not be parsed while it was being forwarded (a malformed
    /// chunk). Not retryable.
    #[error("malformed request body on route {route}: {reason}")]
    MalformedBody { route: String, reason: String },
    /// The policy selector or the router found nothing for the request (oCIS answers 500).
    #[error("no route for {path:?}: {reason}")]
    NoRoute { path: String, reason: String },
    /// No upstream could be resolved, or connecting/sending to it failed. Retryable.
    #[error("upstream {upstream:?} of route {route} unavailable: {reason}")]
    UpstreamUnavailable {
        route: String,
        upstream: String,
        reason: String,
    },
    /// The upstream did not send its response head in time. Retryable.
    #[error("upstream {upstream:?} of route {route} timed out after {after_ms} ms")]
    UpstreamTimeout {
        route: String,
        upstream: String,
        after_ms: u128,
    },
    /// No authenticator accepted the request on a protected route (401 with challenges).
    #[error("unauthenticated request to {path:?}")]
    Unauthenticated {
        path: String,
        /// `WWW-Authenticate` values, in order.
        challenges: Vec<String>,
        /// Answer with the Sabre XML error body (WebDAV method).
        webdav: bool,
    },
    /// The identity provider could not be asked (down, 429, 5xx) and nothing else accepted the
    /// request. Retryable after `retry_after`. 503, or 504 when the provider did not answer in
    /// time: a load balancer that retries 503 on another node (a node-local fault) must not
    /// retry this one, since every node shares the provider and would wait as long again.
    #[error("identity provider unavailable: {reason}")]
    IdentityUnavailable {
        reason: String,
        retry_after: Duration,
        timed_out: bool,
    },
    /// The request's address, user or share failed to authenticate too often and is blocked
    /// (`guard`): 429 with `Retry-After`, no authenticator asked. Not retryable before then.
    #[error("blocked after too many failed authentications for {retry_after:?}")]
    TooManyFailures { retry_after: Duration },
    /// The request's address or user sent more than a `rate_limits` rule admits
    /// (`rate_limit`): 429 with `Retry-After`. Not retryable before then.
    #[error("rate limit {rule} reached; retry after {retry_after:?}")]
    RateLimited {
        rule: Arc<str>,
        retry_after: Duration,
    },
    /// The user is known but may not do this (no role matches, step-up authentication missing).
    #[error("forbidden: {reason}")]
    Forbidden {
        reason: String,
        /// Answer with `X-Ocis-Mfa-Required: true`.
        mfa_required: bool,
    },
    /// The account backend failed while resolving or provisioning the user.
    #[error("account backend failed: {reason}")]
    AccountBackend { reason: String, retryable: bool },
    /// A fault of the gateway itself (a bug or an impossible state).
    #[error("internal error: {reason}")]
    Internal { reason: String },
}

impl GatewayError {
    /// A stable, low-cardinality name of the failure (span attribute `error.type`).
    pub fn kind(&self) -> &'static str {
        match self {
            GatewayError::BadRequest { .. } => "bad_request",
            GatewayError::BadHost { .. } => "bad_host",
            GatewayError::MalformedBody { .. } => "malformed_body",
            GatewayError::NoRoute { .. } => "no_route",
            GatewayError::UpstreamUnavailable { .. } => "upstream_unavailable",
            GatewayError::UpstreamTimeout { .. } => "upstream_timeout",
            GatewayError::Unauthenticated { .. } => "unauthenticated",
            GatewayError::IdentityUnavailable { .. } => "identity_unavailable",
            GatewayError::TooManyFailures { .. } => "too_many_failures",
            GatewayError::RateLimited { .. } => "rate_limited",
            GatewayError::Forbidden { .. } => "forbidden",
            GatewayError::AccountBackend { .. } => "account_backend",
            GatewayError::Internal { .. } => "internal",
        }
    }

    /// Whether the same request may succeed when tried again.
    pub fn is_retryable(&self) -> bool {
        match self {
            GatewayError::UpstreamUnavailable { .. }
            | GatewayError::UpstreamTimeout { .. }
            | GatewayError::IdentityUnavailable { .. } => true,
            GatewayError::AccountBackend { retryable, .. } => *retryable,
            _ => false,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::BadRequest { .. }
            | GatewayError::BadHost { .. }
            | GatewayError::MalformedBody { .. } => StatusCode::BAD_REQUEST,
            GatewayError::NoRoute { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            GatewayError::UpstreamUnavailable { .. } => StatusCode::BAD_GATEWAY,
            GatewayError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
            GatewayError::IdentityUnavailable {
                timed_out: true, ..
            } => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::IdentityUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::TooManyFailures { .. } | GatewayError::RateLimited { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            GatewayError::Forbidden { .. } => StatusCode::FORBIDDEN,
            GatewayError::AccountBackend {
                retryable: true, ..
            } => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::AccountBackend { .. } => StatusCode::BAD_GATEWAY,
            GatewayError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Logs the failure once (the log line carries the request's trace ids), notes its kind on
    /// the request's span, and turns it into the response the client gets.
    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        gatehouse_shared::trace::set_current("gatehouse.error", self.kind());
        match &self {
            GatewayError::BadRequest { path } => {
                tracing::warn!(status = status.as_u16(), path = %path, "rejected request path");
            }
            GatewayError::BadHost { reason } => {
                tracing::warn!(status = status.as_u16(), reason = %reason, "rejected Host header");
            }
            GatewayError::MalformedBody { route, reason } => {
                tracing::warn!(status = status.as_u16(), route = %route, reason = %reason, "malformed request body");
            }
            GatewayError::NoRoute { path, reason } => {
                tracing::warn!(status = status.as_u16(), path = %path, reason = %reason, "routing failed");
            }
            GatewayError::UpstreamUnavailable {
                route,
                upstream,
                reason,
            } => {
                tracing::warn!(status = status.as_u16(), route = %route, upstream = %upstream, reason = %reason, "upstream unavailable");
            }
            GatewayError::UpstreamTimeout {
                route,
                upstream,
                after_ms,
            } => {
                tracing::warn!(status = status.as_u16(), route = %route, upstream = %upstream, after_ms = *after_ms, "upstream response timeout");
            }
            // The authenticator already logged why the credentials were refused.
            GatewayError::Unauthenticated { path, .. } => {
                tracing::debug!(status = status.as_u16(), path = %path, "unauthenticated");
            }
            GatewayError::IdentityUnavailable {
                reason,
                retry_after,
                ..
            } => {
                tracing::warn!(status = status.as_u16(), reason = %reason, retry_after_s = retry_after.as_secs(), "identity provider unavailable");
            }
            // The block itself was logged when it began; each refused request is only counted.
            GatewayError::TooManyFailures { retry_after } => {
                tracing::debug!(
                    status = status.as_u16(),
                    retry_after_s = retry_after.as_secs(),
                    "blocked"
                );
            }
            // Logged when the key began to be refused; each refused request is only counted.
            GatewayError::RateLimited { rule, retry_after } => {
                tracing::debug!(
                    status = status.as_u16(),
                    rule = %rule,
                    retry_after_ms = u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX),
                    "rate limited"
                );
            }
            GatewayError::Forbidden {
                reason,
                mfa_required,
            } => {
                tracing::warn!(status = status.as_u16(), reason = %reason, mfa_required = *mfa_required, "request forbidden");
            }
            GatewayError::AccountBackend { reason, retryable } => {
                tracing::warn!(status = status.as_u16(), reason = %reason, retryable = *retryable, "account backend failed");
            }
            GatewayError::Internal { reason } => {
                tracing::error!(status = status.as_u16(), reason = %reason, "internal error");
            }
        }
        let mut resp = match self {
            GatewayError::Unauthenticated {
                challenges, webdav, ..
            } => {
                let mut r = if webdav {
                    let mut r = Response::new(full_body(WEBDAV_UNAUTHENTICATED_BODY));
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static("application/xml; charset=utf-8"),
                    );
                    r
                } else {
                    Response::new(empty_body())
                };
                for c in challenges {
                    if let Ok(v) = header::HeaderValue::from_str(&c) {
                        r.headers_mut().append(header::WWW_AUTHENTICATE, v);
                    }
                }
                r
            }
            GatewayError::IdentityUnavailable { retry_after, .. }
            | GatewayError::TooManyFailures { retry_after }
            | GatewayError::RateLimited { retry_after, .. } => {
                let mut r = Response::new(empty_body());
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                r.headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from(secs.max(1)));
                r
            }
            GatewayError::AccountBackend {
                retryable: true, ..
            } => {
                let mut r = Response::new(empty_body());
                r.headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
                r
            }
            GatewayError::Forbidden {
                mfa_required: true, ..
            } => {
                let mut r = Response::new(empty_body());
                r.headers_mut().insert(
                    MFA_REQUIRED_HEADER,
                    header::HeaderValue::from_static("true"),
                );
                r
            }
            GatewayError::BadRequest { .. } => {
                let mut r = Response::new(
                    Full::new(Bytes::from_static(b"400 bad request: invalid path\n"))
                        .map_err(|never| match never {})
                        .boxed_unsync(),
                );
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                r
            }
            _ => Response::new(empty_body()),
        };
        *resp.status_mut() = status;
        resp
    }
}

fn full_body(text: &'static str) -> Body {
    Full::new(Bytes::from_static(text.as_bytes()))
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty_body() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// The boundary below which services fail with [`GatewayError`] and above which every outcome is a
/// response: it calls [`GatewayError::into_response`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorResponseLayer;

impl<S> Layer<S> for ErrorResponseLayer {
    type Service = ErrorResponse<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ErrorResponse { inner }
    }
}

#[derive(Debug, Clone)]
pub struct ErrorResponse<S> {
    inner: S,
}

impl<S, Req> Service<Req> for ErrorResponse<S>
where
    S: Service<Req, Response = Response<Body>, Error = GatewayError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ErrorResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The gateway's services are always ready; a not-ready error is reported per request.
        match ready!(self.inner.poll_ready(cx)) {
            Ok(()) | Err(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        ErrorResponseFuture {
            inner: self.inner.call(req),
        }
    }
}

pin_project_lite::pin_project! {
    pub struct ErrorResponseFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F> Future for ErrorResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, GatewayError>>,
{
    type Output = Result<Response<Body>, Infallible>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(Ok(match ready!(self.project().inner.poll(cx)) {
            Ok(r) => r,
            Err(e) => e.into_response(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn statuses_and_bodies() {
        let cases = [
            (
                GatewayError::BadRequest {
                    path: "/a/../..".into(),
                },
                400,
                false,
            ),
            (
                GatewayError::NoRoute {
                    path: "/".into(),
                    reason: "x".into(),
                },
                500,
                true,
            ),
            (
                GatewayError::UpstreamUnavailable {
                    route: "r".into(),
                    upstream: "u".into(),
                    reason: "refused".into(),
                },
                502,
                true,
            ),
            (
                GatewayError::UpstreamTimeout {
                    route: "r".into(),
                    upstream: "u".into(),
                    after_ms: 5,
                },
                504,
                true,
            ),
        ];
        for (err, status, empty) in cases {
            let resp = err.into_response();
            assert_eq!(resp.status().as_u16(), status);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body.is_empty(), empty, "status {status}");
        }
    }

    #[tokio::test]
    async fn identity_failures_become_the_ocis_answers() {
        let resp = GatewayError::Unauthenticated {
            path: "/remote.php/webdav".into(),
            challenges: vec![
                "Bearer realm=\"h\", charset=\"UTF-8\"".into(),
                "Basic realm=\"h\", charset=\"UTF-8\"".into(),
            ],
            webdav: true,
        }
        .into_response();
        assert_eq!(resp.status(), 401);
        let challenges: Vec<_> = resp
            .headers()
            .get_all(header::WWW_AUTHENTICATE)
            .iter()
            .collect();
        assert_eq!(challenges.len(), 2);
        assert_eq!(challenges[0], "Bearer realm=\"h\", charset=\"UTF-8\"");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, WEBDAV_UNAUTHENTICATED_BODY.as_bytes());

        let resp = GatewayError::Unauthenticated {
            path: "/graph".into(),
            challenges: vec![],
            webdav: false,
        }
        .into_response();
        assert!(resp.headers().get(header::WWW_AUTHENTICATE).is_none());
        assert!(
            resp.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .is_empty()
        );

        let resp = GatewayError::IdentityUnavailable {
            reason: "429".into(),
            retry_after: Duration::from_millis(1500),
            timed_out: false,
        }
        .into_response();
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "2", "rounded up");
        let resp = GatewayError::IdentityUnavailable {
            reason: "down".into(),
            retry_after: Duration::ZERO,
            timed_out: false,
        }
        .into_response();
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1", "never 0");
        let resp = GatewayError::IdentityUnavailable {
            reason: "userinfo: no answer within 3s".into(),
            retry_after: Duration::from_secs(1),
            timed_out: true,
        }
        .into_response();
        assert_eq!(
            resp.status(),
            504,
            "a hung provider is not retried on a peer"
        );
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");

        let resp = GatewayError::Forbidden {
            reason: "acr".into(),
            mfa_required: true,
        }
        .into_response();
        assert_eq!(resp.status(), 403);
        assert_eq!(resp.headers()[MFA_REQUIRED_HEADER], "true");
        let resp = GatewayError::Forbidden {
            reason: "no role".into(),
            mfa_required: false,
        }
        .into_response();
        assert!(resp.headers().get(MFA_REQUIRED_HEADER).is_none());

        let retryable = GatewayError::AccountBackend {
            reason: "graph down".into(),
            retryable: true,
        };
        assert!(retryable.is_retryable());
        assert_eq!(retryable.into_response().status(), 503);
        let permanent = GatewayError::AccountBackend {
            reason: "bad answer".into(),
            retryable: false,
        };
        assert!(!permanent.is_retryable());
        assert_eq!(permanent.into_response().status(), 502);
    }
}
