//! Authentication: decides *who* sends a request on a protected route, or refuses it.
//!
//! Runs after routing because unprotected routes skip it. The authenticators are tried in oCIS
//! order (today: OIDC bearer tokens); the first that accepts puts an [`Authenticated`] identity
//! into the request. When none accepts, the answer depends on why (spec §3.9):
//! - a public path (public links, OCM, capabilities) passes on anonymously — its backend checks
//!   access itself;
//! - an authenticator could not reach the IdP (down, 429, 5xx): 503 with `Retry-After`, because
//!   the token may well be good and a 401 would make clients throw their session away;
//! - otherwise 401 with the configured challenges and, for WebDAV methods, the Sabre XML body.
//!
//! `OPTIONS` requests and the IdP token endpoint `/konnect/v1/token` pass without any check.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{HeaderMap, Request, Response, header};
use tower::{Layer, Service};

use gatehouse_shared::auth::challenge::{
    ChallengePolicy, ChallengeRequest, is_public_path, is_webdav_method, skips_authentication,
};

use crate::authn::oidc::{Authenticated, OidcAuthenticator, OidcError};
use crate::context::Body;
use crate::error::GatewayError;
use crate::identity::memo::{IdentityMemo, Prepared};
use crate::layers::route::Routed;
use crate::telemetry::{AuthResult, Metrics};

/// How long clients are asked to wait when the IdP is unavailable and it named no time itself.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);

/// The authenticators of a node and its 401 policy; shared by every worker.
pub struct Authenticators {
    pub oidc: Option<OidcAuthenticator>,
    pub challenges: ChallengePolicy,
    pub metrics: Arc<Metrics>,
}

#[derive(Clone)]
pub struct AuthenticateLayer {
    auth: Arc<Authenticators>,
    memo: Arc<IdentityMemo>,
}

impl AuthenticateLayer {
    /// `memo` is the worker's memo, shared with its account layer.
    pub fn new(auth: Arc<Authenticators>, memo: Arc<IdentityMemo>) -> Self {
        Self { auth, memo }
    }
}

impl<S> Layer<S> for AuthenticateLayer {
    type Service = Authenticate<S>;
    fn layer(&self, inner: S) -> Authenticate<S> {
        Authenticate {
            inner,
            auth: self.auth.clone(),
            memo: self.memo.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Authenticate<S> {
    inner: S,
    auth: Arc<Authenticators>,
    memo: Arc<IdentityMemo>,
}

/// The memoised outcome for the request's bearer token (see [`IdentityMemo`]): the account
/// layer applies it without resolving anything.
#[derive(Debug, Clone)]
pub struct MemoHit(pub Prepared);

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, GatewayError>> + Send>>;

impl<S, B> Service<Request<B>> for Authenticate<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = GatewayError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = futures::future::Either<S::Future, BoxFuture>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let protected = req
            .extensions()
            .get::<Routed>()
            .is_some_and(|r| !r.unprotected);
        if !protected || skips_authentication(req.uri().path(), req.method()) {
            return futures::future::Either::Left(self.inner.call(req));
        }
        if self.auth.oidc.is_some()
            && let Some(hit) =
                bearer_token(req.headers()).and_then(|t| self.memo.get(t, Instant::now()))
        {
            self.auth.metrics.authentication(AuthResult::Accepted);
            req.extensions_mut().insert(MemoHit(hit));
            return futures::future::Either::Left(self.inner.call(req));
        }
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        futures::future::Either::Right(Box::pin(async move {
            let mut req = req;
            match auth.authenticate(req.headers()).await {
                Outcome::Accepted(identity) => {
                    auth.metrics.authentication(AuthResult::Accepted);
                    req.extensions_mut().insert(identity);
                }
                Outcome::Refused { transient } => {
                    if !is_public_path(req.uri().path()) {
                        auth.metrics.authentication(if transient.is_some() {
                            AuthResult::IdpUnavailable
                        } else {
                            AuthResult::Refused
                        });
                        return Err(auth.refusal(&req, transient));
                    }
                    // Public paths pass on anonymously, as the oCIS public-share
                    // authenticator lets them.
                    auth.metrics.authentication(AuthResult::Anonymous);
                }
            }
            inner.call(req).await
        }))
    }
}

/// The identity an authenticator established, carried to the account layer.
#[derive(Debug, Clone)]
pub struct Identity {
    pub claims: Arc<serde_json::Value>,
    /// The claims were not cached yet: this request starts a session (`UserSignedIn`).
    pub new_session: bool,
    /// The bearer token, under which the account layer memoises the outcome.
    pub bearer: Option<Box<str>>,
}

enum Outcome {
    Accepted(Identity),
    Refused {
        /// Set when an authenticator could not decide (IdP unavailable).
        transient: Option<Transient>,
    },
}

struct Transient {
    reason: String,
    retry_after: Option<Duration>,
}

impl Authenticators {
    async fn authenticate(&self, headers: &HeaderMap) -> Outcome {
        let mut transient = None;
        if let (Some(oidc), Some(token)) = (&self.oidc, bearer_token(headers)) {
            match oidc.authenticate(token).await {
                Ok(Authenticated {
                    claims,
                    new_session,
                    ..
                }) => {
                    return Outcome::Accepted(Identity {
                        claims: Arc::new(serde_json::Value::Object((*claims).clone())),
                        new_session,
                        bearer: Some(token.into()),
                    });
                }
                Err(OidcError::Unavailable {
                    reason,
                    retry_after,
                }) => {
                    transient = Some(Transient {
                        reason,
                        retry_after,
                    })
                }
                Err(OidcError::Rejected { .. }) => {}
            }
        }
        Outcome::Refused { transient }
    }

    fn refusal<B>(&self, req: &Request<B>, transient: Option<Transient>) -> GatewayError {
        if let Some(t) = transient {
            return GatewayError::IdentityUnavailable {
                reason: t.reason,
                retry_after: t.retry_after.unwrap_or(DEFAULT_RETRY_AFTER),
            };
        }
        let header_str = |name: header::HeaderName| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        };
        let host = req
            .uri()
            .authority()
            .map(|a| a.as_str())
            .unwrap_or_else(|| header_str(header::HOST));
        let challenges = self.challenges.challenges(&ChallengeRequest {
            path: req.uri().path(),
            host,
            user_agent: header_str(header::USER_AGENT),
            xml_http_request: req
                .headers()
                .get("x-requested-with")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"XMLHttpRequest")),
        });
        GatewayError::Unauthenticated {
            path: req.uri().path().to_owned(),
            challenges,
            webdav: is_webdav_method(req.method()),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme spelled exactly as oCIS
/// expects it); `None` for any other or an empty token.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = value.strip_prefix("Bearer ")?.trim();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_token_extraction() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer_token(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer abc.def".parse().unwrap());
        assert_eq!(bearer_token(&h), Some("abc.def"));
        h.insert(header::AUTHORIZATION, "bearer abc".parse().unwrap());
        assert_eq!(bearer_token(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer_token(&h), None);
        h.insert(header::AUTHORIZATION, "Basic dXNlcjpwdw==".parse().unwrap());
        assert_eq!(bearer_token(&h), None);
    }
}
