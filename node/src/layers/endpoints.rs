//! The requests the gateway answers itself (`crate::endpoints`), placed where the reverse proxy
//! would otherwise take them: after routing, authentication and account resolution, as the oCIS
//! static routes are. Back-channel logout and the well-known document are reachable anonymously
//! only because their routes are unprotected, exactly as in oCIS; the signing-key endpoint is
//! behind authentication and learns the user from the `x-access-token` the account layer minted.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Limited};
use tower::{Layer, Service};

use gatehouse_shared::store::Store;
use gatehouse_shared::token::{OWNER_SCOPE_KEY, verify};

use crate::authn::oidc::OidcAuthenticator;
use crate::context::{Body, BoxError};
use crate::endpoints::logout::{self, LogoutService};
use crate::endpoints::{app_tokens, signing_key, well_known};
use crate::error::GatewayError;
use crate::layers::authenticate::AppTokenLogin;

/// Largest back-channel logout body read (a logout token is a few KiB).
const MAX_LOGOUT_BODY: usize = 64 * 1024;

/// What the gateway serves itself; built once per node.
pub struct Endpoints {
    /// `http.root` without a trailing slash (`""` for `/`).
    pub root: String,
    pub logout: Option<LogoutService>,
    /// The IdP whose discovery document is passed through; set when `oidc.rewrite_well_known`
    /// is on.
    pub well_known: Option<OidcAuthenticator>,
    /// Set when `pre_signed_url.serve_signing_keys` is on.
    pub signing_keys: Option<UserStore>,
    /// Set when `auth_middleware.allow_app_auth` is on: the state store and the minted token's
    /// secret.
    pub app_tokens: Option<UserStore>,
}

/// A store an endpoint keeps per-user data in, and the secret of the minted `x-access-token`:
/// the endpoints read the user from that token, as the oCIS `ocs` and `auth-app` services do.
pub struct UserStore {
    pub store: Arc<dyn Store>,
    pub jwt_secret: Vec<u8>,
}

enum Target {
    Logout,
    WellKnown,
    SigningKey(signing_key::OcsVersion),
    AppTokens,
}

impl Endpoints {
    fn target<B>(&self, req: &Request<B>) -> Option<Target> {
        let path = req.uri().path().strip_prefix(self.root.as_str())?;
        match (req.method(), path) {
            (&Method::POST, "/backchannel_logout") if self.logout.is_some() => Some(Target::Logout),
            (&Method::GET, "/.well-known/openid-configuration") if self.well_known.is_some() => {
                Some(Target::WellKnown)
            }
            (&Method::GET | &Method::POST | &Method::DELETE, p)
                if self.app_tokens.is_some() && app_tokens::route(p) =>
            {
                Some(Target::AppTokens)
            }
            (&Method::GET, p) if self.signing_keys.is_some() => {
                signing_key::route(p).map(Target::SigningKey)
            }
            _ => None,
        }
    }
}

#[derive(Clone)]
pub struct EndpointsLayer {
    endpoints: Arc<Endpoints>,
}

impl EndpointsLayer {
    pub fn new(endpoints: Arc<Endpoints>) -> Self {
        Self { endpoints }
    }
}

impl<S> Layer<S> for EndpointsLayer {
    type Service = EndpointService<S>;
    fn layer(&self, inner: S) -> EndpointService<S> {
        EndpointService {
            inner,
            endpoints: self.endpoints.clone(),
        }
    }
}

#[derive(Clone)]
pub struct EndpointService<S> {
    inner: S,
    endpoints: Arc<Endpoints>,
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, GatewayError>> + Send>>;

impl<S, B> Service<Request<B>> for EndpointService<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = GatewayError>,
    S::Future: Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = futures::future::Either<S::Future, BoxFuture>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let Some(target) = self.endpoints.target(&req) else {
            return futures::future::Either::Left(self.inner.call(req));
        };
        let endpoints = self.endpoints.clone();
        futures::future::Either::Right(Box::pin(async move {
            match target {
                Target::Logout => {
                    let Some(logout) = &endpoints.logout else {
                        unreachable!("target() checked it")
                    };
                    let (parts, body) = req.into_parts();
                    let body = match Limited::new(body, MAX_LOGOUT_BODY).collect().await {
                        Ok(collected) => collected.to_bytes(),
                        Err(e) => {
                            return Err(GatewayError::MalformedBody {
                                route: "/backchannel_logout".into(),
                                reason: format!("back-channel logout body: {e}"),
                            });
                        }
                    };
                    let content_type = parts.headers.get(http::header::CONTENT_TYPE);
                    Ok(logout::handle(logout, content_type, body).await)
                }
                Target::WellKnown => {
                    let Some(well_known) = &endpoints.well_known else {
                        unreachable!("target() checked it")
                    };
                    Ok(well_known::handle(well_known).await)
                }
                Target::AppTokens => {
                    let Some(keys) = &endpoints.app_tokens else {
                        unreachable!("target() checked it")
                    };
                    let caller = req
                        .headers()
                        .get("x-access-token")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|t| verify(&keys.jwt_secret, t, Duration::from_secs(5)).ok())
                        .filter(|claims| claims.scope.contains_key(OWNER_SCOPE_KEY))
                        .and_then(|claims| {
                            let id = claims.user.id?.opaque_id;
                            Some(app_tokens::Caller {
                                user_id: id,
                                username: claims.user.username,
                            })
                        })
                        .filter(|c| !c.user_id.is_empty() && !c.username.is_empty());
                    let via_app_token = req.extensions().get::<AppTokenLogin>().is_some();
                    Ok(app_tokens::handle(
                        keys.store.as_ref(),
                        req.method(),
                        req.uri().query(),
                        caller,
                        via_app_token,
                    )
                    .await)
                }
                Target::SigningKey(version) => {
                    let Some(keys) = &endpoints.signing_keys else {
                        unreachable!("target() checked it")
                    };
                    let user = req
                        .headers()
                        .get("x-access-token")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|t| verify(&keys.jwt_secret, t, Duration::from_secs(5)).ok())
                        // Only a user's own login: never a token scoped to a share.
                        .filter(|claims| claims.scope.contains_key(OWNER_SCOPE_KEY))
                        .and_then(|claims| claims.user.id.map(|id| id.opaque_id))
                        .unwrap_or_default();
                    let xml = req.uri().query().is_some_and(|q| {
                        q.split('&').any(|p| p.eq_ignore_ascii_case("format=xml"))
                    });
                    // No user the gateway vouched for (a share, an anonymous public path): the handler
                    // gives the oCIS answer for a missing user.
                    Ok(signing_key::handle(keys.store.as_ref(), &user, version, xml).await)
                }
            }
        }))
    }
}
