//! Authentication: decides *who* sends a request on a protected route, or refuses it.
//!
//! Runs after routing because unprotected routes skip it. The authenticators are tried in the
//! oCIS order — Basic (development only), app tokens, OIDC bearer tokens, public-share tokens,
//! signed URLs — and the first that accepts puts an [`Identity`] into the request. Before they
//! run, a request whose address, user or share is blocked for too many failures gets 429
//! (`crate::guard`), and every refusal of guessable credentials is counted there. When none accepts, the
//! answer depends on why (spec §3.9):
//! - an authenticator could not decide because something it needs is down (the IdP, the share
//!   service, the signing-key store): 503 with `Retry-After`, because the credentials may well be
//!   good and a 401 would make clients throw their session away;
//! - otherwise 401 with the configured challenges and, for WebDAV methods, the Sabre XML body.
//!
//! Public paths (public links, OCM, capabilities) without a share token pass on anonymously —
//! the public-share authenticator accepts them, as in oCIS — and their backend checks access.
//! `OPTIONS` requests and the IdP token endpoint `/konnect/v1/token` pass without any check.
//!
//! In a sampled trace the authenticators run inside an `authenticate` span that says which way in
//! decided (`gatehouse.auth.method`) and how (`gatehouse.auth.result`); a memoised token opens no
//! span and is noted on the request's span (`gatehouse.auth.method = memo`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri, header};
use opentelemetry::trace::SpanKind;
use tower::{Layer, Service};

use gatehouse_shared::auth::brute_force::GuardKey;
use gatehouse_shared::auth::password::decode_basic;
use gatehouse_shared::auth::query::Query;
use gatehouse_shared::trace;

use gatehouse_shared::auth::challenge::{
    ChallengePolicy, ChallengeRequest, is_webdav_method, skips_authentication,
};

use crate::accounts::Account;
use crate::authn::app_token::{AppTokenAuthenticator, AppTokenOutcome};
use crate::authn::basic::{BasicAuthenticator, BasicOutcome};
use crate::authn::oidc::{Authenticated, OidcAuthenticator, OidcError};
use crate::authn::public_share::{self, PublicShareAuthenticator, ShareOutcome};
use crate::authn::signed_url::{SignedUrlAuthenticator, SignedUrlRejection};
use crate::context::{Body, ConnInfo};
use crate::error::GatewayError;
use crate::guard::Guard;
use crate::identity::memo::{Prepared, WorkerMemos};
use crate::layers::route::routed;
use crate::telemetry::{AuthResult, Metrics};

/// How long clients are asked to wait when the IdP is unavailable and it named no time itself.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);

/// The authenticators of a node and its 401 policy; shared by every worker.
pub struct Authenticators {
    pub basic: Option<BasicAuthenticator>,
    /// App tokens (`auth_middleware.allow_app_auth`).
    pub app_token: Option<AppTokenAuthenticator>,
    pub oidc: Option<OidcAuthenticator>,
    pub public_share: PublicShareAuthenticator,
    pub signed_url: Option<SignedUrlAuthenticator>,
    pub challenges: ChallengePolicy,
    pub metrics: Arc<Metrics>,
    /// Brute-force protection; `None` when `brute_force.enabled` is off.
    pub guard: Option<Arc<Guard>>,
}

#[derive(Clone)]
pub struct AuthenticateLayer {
    auth: Arc<Authenticators>,
    memos: Arc<WorkerMemos>,
}

impl AuthenticateLayer {
    /// `memos` are the worker's memos, shared with its account layer.
    pub fn new(auth: Arc<Authenticators>, memos: Arc<WorkerMemos>) -> Self {
        Self { auth, memos }
    }
}

impl<S> Layer<S> for AuthenticateLayer {
    type Service = Authenticate<S>;
    fn layer(&self, inner: S) -> Authenticate<S> {
        Authenticate {
            inner,
            auth: self.auth.clone(),
            memos: self.memos.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Authenticate<S> {
    inner: S,
    auth: Arc<Authenticators>,
    memos: Arc<WorkerMemos>,
}

/// The memoised outcome for the request's bearer token or signed URL (see [`WorkerMemos`]): the
/// account layer applies it without resolving anything.
#[derive(Debug, Clone)]
pub struct MemoHit(pub Prepared);

/// Where the account layer memoises the outcome of a signed URL that was verified: the key, the
/// memo epoch read before verifying, and when the URL expires.
#[derive(Debug, Clone)]
pub struct SignedUrlMemo {
    pub key: Box<str>,
    pub epoch: u64,
    pub expires_at: SystemTime,
}

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
        let protected = routed(&req).is_some_and(|r| !r.unprotected);
        if !protected || skips_authentication(req.uri().path(), req.method()) {
            return futures::future::Either::Left(self.inner.call(req));
        }
        if self.auth.oidc.is_some()
            && let Some(hit) =
                bearer_token(req.headers()).and_then(|t| self.memos.tokens.get(t, Instant::now()))
        {
            self.auth.metrics.authentication(AuthResult::Accepted);
            trace::set_current(AUTH_METHOD, "memo");
            req.extensions_mut().insert(MemoHit(hit));
            return futures::future::Either::Left(self.inner.call(req));
        }
        let signed_memo = match (&self.memos.signed_urls, &self.auth.signed_url) {
            (Some(memo), Some(_)) => signed_url_memo_key(&req).map(|key| (memo, key)),
            _ => None,
        };
        if let Some((memo, key)) = &signed_memo
            && let Some(hit) = memo.get(key, Instant::now())
        {
            self.auth.metrics.authentication(AuthResult::Accepted);
            trace::set_current(AUTH_METHOD, "memo");
            req.extensions_mut().insert(MemoHit(hit));
            return futures::future::Either::Left(self.inner.call(req));
        }
        let signed_memo = signed_memo.map(|(memo, key)| (key, memo.epoch()));
        let share_memo = if self.auth.public_share.is_enabled() {
            public_share::memo_token(req.uri().path(), req.headers(), req.uri().query())
        } else {
            None
        };
        if let Some(token) = share_memo
            && let Some(hit) = self.memos.shares.get(token, Instant::now())
        {
            self.auth.metrics.authentication(AuthResult::Accepted);
            trace::set_current(AUTH_METHOD, "memo");
            req.extensions_mut().insert(MemoHit(hit));
            return futures::future::Either::Left(self.inner.call(req));
        }
        let share_memo: Option<Box<str>> = share_memo.map(Into::into);
        // Past the memos, credentials are checked for real: a blocked key is refused unchecked.
        let guard_keys = self.auth.guard.as_ref().and_then(|_| guard_keys(&req));
        if let (Some(guard), Some(keys)) = (&self.auth.guard, &guard_keys)
            && let Some(retry_after) = guard.blocked(keys)
        {
            self.auth.metrics.authentication(AuthResult::Blocked);
            let blocked = GatewayError::TooManyFailures { retry_after };
            return futures::future::Either::Right(Box::pin(std::future::ready(Err(blocked))));
        }
        let memos = self.memos.clone();
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        let memo_epoch = self.memos.tokens.epoch();
        futures::future::Either::Right(Box::pin(async move {
            let mut req = req;
            let span = trace::Span::child("authenticate", SpanKind::Internal);
            let outcome = span
                .instrument(auth.authenticate(req.method(), req.uri(), req.headers()))
                .await;
            span.set(AUTH_METHOD, outcome.method());
            span.set(AUTH_RESULT, outcome.result());
            span.end();
            if let (Some(guard), Some(keys)) = (&auth.guard, &guard_keys) {
                match &outcome {
                    Outcome::Accepted(_) => guard.succeeded(keys),
                    Outcome::Refused { transient: None } => guard.failed(keys),
                    _ => {}
                }
            }
            match outcome {
                Outcome::Accepted(mut identity) => {
                    auth.metrics.authentication(AuthResult::Accepted);
                    match &mut identity {
                        Identity::Oidc(oidc) => oidc.memo_epoch = memo_epoch,
                        Identity::Share { token, reuse_until } => {
                            if let Some(key) = share_memo {
                                let until = reuse_until
                                    .duration_since(UNIX_EPOCH)
                                    .ok()
                                    .map(|d| d.as_secs());
                                let prepared = Prepared {
                                    token: token.clone(),
                                    mfa: false,
                                    user: None,
                                };
                                memos.shares.put(&key, prepared, until, Instant::now());
                            }
                        }
                        Identity::Account {
                            scheme: Scheme::AppToken,
                            ..
                        } => {
                            req.extensions_mut().insert(AppTokenLogin);
                        }
                        Identity::Account {
                            scheme: Scheme::SignedUrl,
                            expires_at: Some(expires_at),
                            ..
                        } => {
                            if let Some((key, epoch)) = signed_memo {
                                req.extensions_mut().insert(SignedUrlMemo {
                                    key: key.into(),
                                    epoch,
                                    expires_at: *expires_at,
                                });
                            }
                        }
                        _ => {}
                    }
                    req.extensions_mut().insert(identity);
                }
                Outcome::Anonymous => auth.metrics.authentication(AuthResult::Anonymous),
                Outcome::Refused { transient } => {
                    auth.metrics.authentication(if transient.is_some() {
                        AuthResult::IdpUnavailable
                    } else {
                        AuthResult::Refused
                    });
                    return Err(auth.refusal(&req, transient));
                }
            }
            inner.call(req).await
        }))
    }
}

/// What a failed check of this request's credentials counts against (brute-force protection):
/// the client address, and the user name of Basic credentials (a password or app token) or the
/// share token. `None` when the request carries nothing that can be guessed: no Basic credentials,
/// no share token, no signed URL. Bearer tokens are not counted — no one guesses a signed JWT,
/// and a refused one is nearly always a client's expired or ended session, whose retries must not
/// block everyone behind the same address. With a share token the Basic user name is the share's
/// placeholder (`public`), not a user, and is left out.
fn guard_keys<B>(req: &Request<B>) -> Option<Vec<GuardKey>> {
    let headers = req.headers();
    let query = req.uri().query();
    // An unreadable or repeated token is refused by the share authenticator; it counts
    // against the address only.
    let share = public_share::share_token(headers, query).ok().flatten();
    let basic_user = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| decode_basic(v.as_bytes()))
        .map(|(user, _)| user);
    let signed = query.is_some_and(|q| Query::first_raw(q, "OC-Signature").is_some());
    if share.is_none() && basic_user.is_none() && !signed {
        return None;
    }
    let mut keys = Vec::with_capacity(2);
    match (share, basic_user) {
        (Some(token), _) => keys.push(GuardKey::share(&token)),
        (None, Some(user)) if !user.is_empty() => {
            keys.push(GuardKey::user(&String::from_utf8_lossy(&user)));
        }
        _ => {}
    }
    if let Some(conn) = req.extensions().get::<ConnInfo>() {
        keys.push(GuardKey::address(conn.client));
    }
    Some(keys)
}

/// The identity an authenticator established, carried to the account layer.
#[derive(Debug, Clone)]
pub enum Identity {
    /// An OpenID Connect login: the account is resolved (and provisioned) from the claims.
    Oidc(OidcIdentity),
    /// An existing account proven without claims: a password or a signed URL (with the moment
    /// the URL expires).
    Account {
        account: Account,
        scheme: Scheme,
        expires_at: Option<SystemTime>,
    },
    /// A public share: the backend receives this token, minted for the share, which the same
    /// share credentials get again until `reuse_until`.
    Share {
        token: HeaderValue,
        reuse_until: SystemTime,
    },
}

#[derive(Debug, Clone)]
pub struct OidcIdentity {
    pub claims: Arc<serde_json::Value>,
    /// The claims were not cached yet: this request starts a session (`UserSignedIn`).
    pub new_session: bool,
    /// The bearer token, under which the account layer memoises the outcome.
    pub bearer: Option<Box<str>>,
    /// The memo epoch before the token was resolved: an outcome that a logout may have
    /// overtaken meanwhile is not memoised.
    pub memo_epoch: u64,
}

/// How a claim-less [`Identity::Account`] proved itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Basic,
    /// An app token sent as Basic credentials.
    AppToken,
    SignedUrl,
}

/// Set on a request authenticated by an app token: such a request may not manage app tokens.
#[derive(Debug, Clone, Copy)]
pub struct AppTokenLogin;

enum Outcome {
    Accepted(Identity),
    /// A public path without credentials: passed on without an identity.
    Anonymous,
    Refused {
        /// Set when an authenticator could not decide (IdP or another dependency unavailable).
        transient: Option<Transient>,
    },
}

struct Transient {
    reason: String,
    retry_after: Option<Duration>,
    /// The dependency did not answer in time: retrying elsewhere would wait as long again.
    timed_out: bool,
}

/// Span attributes: which way in decided, and how.
const AUTH_METHOD: &str = "gatehouse.auth.method";
const AUTH_RESULT: &str = "gatehouse.auth.result";

impl Outcome {
    fn method(&self) -> &'static str {
        match self {
            Outcome::Accepted(Identity::Oidc(_)) => "oidc",
            Outcome::Accepted(Identity::Account {
                scheme: Scheme::Basic,
                ..
            }) => "basic",
            Outcome::Accepted(Identity::Account {
                scheme: Scheme::SignedUrl,
                ..
            }) => "signed_url",
            Outcome::Accepted(Identity::Account {
                scheme: Scheme::AppToken,
                ..
            }) => "app_token",
            Outcome::Accepted(Identity::Share { .. }) => "public_share",
            Outcome::Anonymous => "anonymous",
            Outcome::Refused { .. } => "none",
        }
    }

    fn result(&self) -> &'static str {
        match self {
            Outcome::Accepted(_) => "accepted",
            Outcome::Anonymous => "anonymous",
            Outcome::Refused { transient: Some(_) } => "unavailable",
            Outcome::Refused { transient: None } => "refused",
        }
    }
}

impl Authenticators {
    /// Tries every authenticator in the oCIS order; the first acceptance wins, and a
    /// dependency failure seen on the way turns a final refusal into 503.
    async fn authenticate(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Outcome {
        let path = uri.path();
        let query = uri.query();
        let mut transient = None;
        let mut note = |reason: String, retry_after: Option<Duration>, timed_out: bool| {
            transient.get_or_insert(Transient {
                reason,
                retry_after,
                timed_out,
            });
        };

        if let Some(basic) = &self.basic {
            match basic.authenticate(path, headers, query).await {
                BasicOutcome::Accepted(account) => {
                    return Outcome::Accepted(Identity::Account {
                        account,
                        scheme: Scheme::Basic,
                        expires_at: None,
                    });
                }
                BasicOutcome::Unavailable { reason } => note(reason, None, false),
                BasicOutcome::Rejected { reason } => {
                    tracing::debug!(%reason, "basic authentication refused")
                }
                BasicOutcome::NotApplicable => {}
            }
        }
        if let Some(app) = &self.app_token {
            match app.authenticate(path, headers, query).await {
                AppTokenOutcome::Accepted(account) => {
                    return Outcome::Accepted(Identity::Account {
                        account,
                        scheme: Scheme::AppToken,
                        expires_at: None,
                    });
                }
                AppTokenOutcome::Unavailable { reason } => note(reason, None, false),
                AppTokenOutcome::Rejected { reason } => {
                    tracing::debug!(%reason, "app token refused")
                }
                AppTokenOutcome::NotApplicable => {}
            }
        }
        if let (Some(oidc), Some(token)) = (&self.oidc, bearer_token(headers)) {
            match oidc.authenticate(token).await {
                Ok(Authenticated {
                    claims,
                    new_session,
                    ..
                }) => {
                    return Outcome::Accepted(Identity::Oidc(OidcIdentity {
                        claims: Arc::new(serde_json::Value::Object((*claims).clone())),
                        new_session,
                        bearer: Some(token.into()),
                        memo_epoch: 0,
                    }));
                }
                Err(OidcError::Unavailable {
                    reason,
                    retry_after,
                    timed_out,
                }) => note(reason, retry_after, timed_out),
                Err(OidcError::Rejected { .. }) => {}
            }
        }
        match self.public_share.authenticate(path, headers, query).await {
            ShareOutcome::Accepted {
                token, reuse_until, ..
            } => {
                return Outcome::Accepted(Identity::Share { token, reuse_until });
            }
            // As in oCIS: a public path without a share token passes on anonymously even when
            // another scheme's credentials failed; its backend decides.
            ShareOutcome::Anonymous => return Outcome::Anonymous,
            ShareOutcome::Unavailable {
                reason,
                retry_after,
            } => note(reason, retry_after, false),
            ShareOutcome::Rejected { reason } => {
                tracing::debug!(%reason, "public-share token refused")
            }
            ShareOutcome::NotApplicable => {}
        }
        if let Some(signed) = &self.signed_url {
            let host = request_host(uri, headers);
            match signed.authenticate_until(method, uri, host).await {
                Some(Ok((account, expires_at))) => {
                    return Outcome::Accepted(Identity::Account {
                        account,
                        scheme: Scheme::SignedUrl,
                        expires_at: Some(expires_at),
                    });
                }
                Some(Err(
                    SignedUrlRejection::Unavailable { reason }
                    | SignedUrlRejection::Backend { reason },
                )) => note(reason, None, false),
                Some(Err(SignedUrlRejection::Invalid { reason })) => {
                    tracing::debug!(%reason, "signed URL refused")
                }
                None => {}
            }
        }
        Outcome::Refused { transient }
    }

    fn refusal<B>(&self, req: &Request<B>, transient: Option<Transient>) -> GatewayError {
        if let Some(t) = transient {
            return GatewayError::IdentityUnavailable {
                reason: t.reason,
                retry_after: t.retry_after.unwrap_or(DEFAULT_RETRY_AFTER),
                timed_out: t.timed_out,
            };
        }
        let header_str = |name: header::HeaderName| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        };
        let host = request_host(req.uri(), req.headers());
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

/// The authority the client addressed: the absolute request target's, else `Host`.
/// The signed-URL memo key of a request that only the signed-URL authenticator can decide:
/// `None` with credentials of another kind (`Authorization`, `public-token`) or without a
/// signature.
fn signed_url_memo_key<B>(req: &Request<B>) -> Option<String> {
    let headers = req.headers();
    let query = req.uri().query()?;
    if headers.contains_key(header::AUTHORIZATION)
        || headers.contains_key(crate::authn::public_share::PUBLIC_TOKEN)
        || !gatehouse_shared::auth::signed_url::applies(query)
    {
        return None;
    }
    let (method, host, path) = (
        req.method().as_str(),
        request_host(req.uri(), headers),
        req.uri().path(),
    );
    let mut key = String::with_capacity(method.len() + host.len() + path.len() + query.len() + 3);
    for part in [method, " ", host, " ", path, "?", query] {
        key.push_str(part);
    }
    Some(key)
}

fn request_host<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> &'a str {
    uri.authority().map_or_else(
        || {
            headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        },
        |a| a.as_str(),
    )
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

    #[test]
    fn what_a_failure_counts_against() {
        let req = |uri: &str, headers: &[(&str, &str)]| {
            let mut b = Request::builder().uri(uri);
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            let mut r = b.body(()).unwrap();
            let addr: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
            r.extensions_mut().insert(ConnInfo {
                peer: addr,
                local: addr,
                tls: false,
                client: "203.0.113.7".parse().unwrap(),
            });
            r
        };
        let texts = |keys: Option<Vec<GuardKey>>| {
            keys.map(|k| k.iter().map(|k| k.as_str().to_owned()).collect::<Vec<_>>())
        };
        // Nothing guessable: no bearer token, no credentials at all.
        assert_eq!(texts(guard_keys(&req("/a", &[]))), None);
        assert_eq!(
            texts(guard_keys(&req("/a", &[("authorization", "Bearer x.y.z")]))),
            None
        );
        // Basic: user ("user:pw") and address.
        assert_eq!(
            texts(guard_keys(&req(
                "/a",
                &[("authorization", "Basic VXNlcjpwdw==")]
            ))),
            Some(vec!["u:user".to_owned(), "a:203.0.113.7".to_owned()])
        );
        // A share password: the share, not the placeholder user name.
        assert_eq!(
            texts(guard_keys(&req(
                "/dav/public-files/tok/x",
                &[
                    ("public-token", "tok"),
                    ("authorization", "Basic cHVibGljOnB3")
                ]
            ))),
            Some(vec!["s:tok".to_owned(), "a:203.0.113.7".to_owned()])
        );
        assert_eq!(
            texts(guard_keys(&req("/x?public-token=tok&signature=s", &[]))),
            Some(vec!["s:tok".to_owned(), "a:203.0.113.7".to_owned()])
        );
        // A signed URL: the address.
        assert_eq!(
            texts(guard_keys(&req("/x?OC-Credential=u&OC-Signature=abc", &[]))),
            Some(vec!["a:203.0.113.7".to_owned()])
        );
    }
}
