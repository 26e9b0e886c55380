//! Account resolution: turns an authenticated identity into the user backends are told about.
//!
//! For a request the authentication layer accepted it decides the user's role from the claims,
//! resolves (and, with auto-provisioning, creates or updates) the account, applies the step-up
//! rule of the route, and replaces `x-access-token` with a token the gateway mints for that
//! user — role, quota and claim-managed spaces included. Every header a client could use to
//! impersonate that result (`x-access-token`, the MFA markers, `X-Ocis-Autoprop-*`) is removed
//! from requests on protected routes first, whether or not anyone authenticated.
//!
//! The bearer token that authenticated the request is removed: backends learn the user only from
//! the minted token, and an IdP token handed to every backend could be replayed by any of them.
//!
//! A login whose claims were not cached yet (a new session) publishes `UserSignedIn` and, with
//! claim-managed spaces, the membership changes since the user's previous session.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderName, HeaderValue, Request, Response};
use tower::{Layer, Service};

use gatehouse_shared::auth::mfa::{MFA_AUTOPROP_HEADER, MFA_HEADER, MfaPolicy, is_reserved_header};
use gatehouse_shared::auth::roles::RoleMapper;
use gatehouse_shared::auth::spaces::SpaceClaimMapper;
use gatehouse_shared::events::envelope::{is_valid_traceparent, new_traceparent};
use gatehouse_shared::store::Store;
use gatehouse_shared::token::{MintCache, OpaqueEntry, RevaUser};
use gatehouse_shared::trace::{self, propagate};
use opentelemetry::trace::SpanKind;
use opentelemetry_semantic_conventions::attribute::ENDUSER_ID;

use crate::accounts::{AccountError, AccountResolver, reva_user};
use crate::context::Body;
use crate::error::GatewayError;
use crate::identity::events::{EVENT_CONTEXT, EventContext, IdentityEvents};
use crate::identity::memo::{Prepared, WorkerMemos};
use crate::identity::mfa_record;
use crate::layers::authenticate::{Identity, MemoHit, OidcIdentity, SignedUrlMemo};
use crate::layers::route::{self, Routed};
use crate::rate_limit::RouteLimits;

/// Opaque entry of the minted user carrying the role quota in bytes (as CreateHome sends it).
pub const QUOTA_OPAQUE_KEY: &str = "quota";
/// Opaque entry carrying the claim-managed space memberships (`{space id: role}` as JSON).
pub const SPACES_OPAQUE_KEY: &str = "claim-managed-spaces";

/// Everything the account layer needs; built once per node and shared by every worker.
pub struct AccountServices {
    pub resolver: Arc<AccountResolver>,
    pub roles: RoleMapper,
    pub spaces: Option<SpaceClaimMapper>,
    pub mfa: MfaPolicy,
    /// Role id → quota in bytes.
    pub quotas: BTreeMap<String, u64>,
    pub mint: MintCache,
    /// The IdP of provisioned users (`oidc.issuer`), the `iss` of minted tokens.
    pub idp: String,
    pub events: IdentityEvents,
    /// Where the last published space memberships of each user are kept.
    pub state: Arc<dyn Store>,
    /// Where step-up proofs are kept for claim-less logins (`mfa:<user id>`, the signing-key
    /// store as in oCIS); `None`: such logins never count as step-up.
    pub step_up_store: Option<Arc<dyn Store>>,
    /// How long a step-up proof carries over (`mfa.session_duration`).
    pub mfa_session: Duration,
}

#[derive(Clone)]
pub struct AccountLayer {
    services: Arc<AccountServices>,
    memos: Arc<WorkerMemos>,
    limits: Option<Arc<RouteLimits>>,
}

impl AccountLayer {
    /// `memos` are the worker's memos, shared with its authentication layer.
    pub fn new(services: Arc<AccountServices>, memos: Arc<WorkerMemos>) -> Self {
        Self {
            services,
            memos,
            limits: None,
        }
    }

    /// Once the user is known, applies the `per: user` rate limits of the route (checked
    /// here rather than in a layer of their own: a layer would wrap every request's future once
    /// more, and moving that future costs more than the check).
    pub fn with_rate_limits(mut self, limits: Option<Arc<RouteLimits>>) -> Self {
        self.limits = limits;
        self
    }
}

impl<S> Layer<S> for AccountLayer {
    type Service = Account<S>;
    fn layer(&self, inner: S) -> Account<S> {
        Account {
            inner,
            services: self.services.clone(),
            memos: self.memos.clone(),
            limits: self.limits.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Account<S> {
    inner: S,
    services: Arc<AccountServices>,
    memos: Arc<WorkerMemos>,
    limits: Option<Arc<RouteLimits>>,
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, GatewayError>> + Send>>;

impl<S, B> Service<Request<B>> for Account<S>
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
        let Some(routed) = route::routed(&req).cloned() else {
            return futures::future::Either::Left(self.inner.call(req));
        };
        if routed.unprotected {
            // Unprotected routes keep client headers: `/data` transfer tokens arrive as
            // `x-access-token` (spec §6.4).
            return futures::future::Either::Left(self.inner.call(req));
        }
        strip_reserved_headers(req.headers_mut());
        if let Some(MemoHit(prepared)) = req.extensions_mut().remove::<MemoHit>() {
            if routed.require_mfa && !prepared.mfa {
                return futures::future::Either::Right(Box::pin(std::future::ready(Err(
                    mfa_required(),
                ))));
            }
            if let (Some(limits), Some(user)) = (&self.limits, &prepared.user)
                && let Err(e) = limits.admit_user(&routed, user)
            {
                return futures::future::Either::Right(Box::pin(std::future::ready(Err(e))));
            }
            apply(req.headers_mut(), &prepared);
            req.headers_mut().remove(http::header::AUTHORIZATION);
            return futures::future::Either::Left(self.inner.call(req));
        }
        let identity = match req.extensions_mut().remove::<Identity>() {
            None => return futures::future::Either::Left(self.inner.call(req)),
            Some(Identity::Share { token, .. }) => {
                if routed.require_mfa {
                    return futures::future::Either::Right(Box::pin(std::future::ready(Err(
                        mfa_required(),
                    ))));
                }
                apply(
                    req.headers_mut(),
                    &Prepared {
                        token,
                        mfa: false,
                        user: None,
                    },
                );
                req.headers_mut().remove(http::header::AUTHORIZATION);
                return futures::future::Either::Left(self.inner.call(req));
            }
            Some(identity) => identity,
        };
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let services = self.services.clone();
        let memos = self.memos.clone();
        let limits = self.limits.clone();
        futures::future::Either::Right(Box::pin(async move {
            let span = trace::Span::child("resolve account", SpanKind::Internal);
            let result = span
                .instrument(resolve(&services, &memos, &mut req, identity, &routed))
                .await;
            if let Err(e) = &result {
                span.fail(e.kind(), e.to_string());
            }
            span.end();
            if let (Some(limits), Some(user)) = (&limits, result?) {
                limits.admit_user(&routed, &user)?;
            }
            // Backends learn the user from the minted token; credentials stay here.
            req.headers_mut().remove(http::header::AUTHORIZATION);
            inner.call(req).await
        }))
    }
}

/// Resolves the identity into the minted token on `req` (and memoises the outcome of an OIDC
/// token or a signed URL).
async fn resolve<B>(
    services: &AccountServices,
    memos: &WorkerMemos,
    req: &mut Request<B>,
    identity: Identity,
    routed: &Routed,
) -> Result<Option<Arc<str>>, GatewayError> {
    {
        {
            // Events carry the request's trace: the current span's context when tracing is on,
            // else a trace context a trusted caller sent (others' were removed), else a new one.
            let traceparent = propagate::current_traceparent()
                .or_else(|| {
                    req.headers()
                        .get("traceparent")
                        .and_then(|v| v.to_str().ok())
                        .filter(|tp| is_valid_traceparent(tp))
                        .map(str::to_owned)
                })
                .unwrap_or_else(new_traceparent);
            let initiator_id = req
                .headers()
                .get("initiator-id")
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty() && v.len() <= 128)
                .map(str::to_owned);
            let context = EventContext {
                traceparent,
                initiator_id,
            };
            let user = match identity {
                Identity::Oidc(oidc) => {
                    let prepared = EVENT_CONTEXT
                        .scope(context, services.prepare(&oidc, routed.require_mfa))
                        .await?;
                    apply(req.headers_mut(), &prepared);
                    let user = prepared.user.clone();
                    if let Some(bearer) = &oidc.bearer {
                        let exp = oidc.claims.get("exp").and_then(serde_json::Value::as_u64);
                        let now = Instant::now();
                        memos
                            .tokens
                            .put_since(bearer, prepared, exp, now, oidc.memo_epoch);
                    }
                    user
                }
                Identity::Account { account, .. } => {
                    trace::set_current(ENDUSER_ID, account.id.clone());
                    let prepared = services
                        .prepare_account(&account, routed.require_mfa)
                        .await?;
                    apply(req.headers_mut(), &prepared);
                    let user = prepared.user.clone();
                    if let (Some(memo), Some(m)) = (
                        &memos.signed_urls,
                        req.extensions_mut().remove::<SignedUrlMemo>(),
                    ) {
                        let exp = m
                            .expires_at
                            .duration_since(UNIX_EPOCH)
                            .ok()
                            .map(|d| d.as_secs());
                        memo.put_since(&m.key, prepared, exp, Instant::now(), m.epoch);
                    }
                    user
                }
                Identity::Share { .. } => unreachable!("answered above"),
            };
            Ok(user)
        }
    }
}

fn apply(headers: &mut http::HeaderMap, prepared: &Prepared) {
    // Static names: parsing a custom header name from a string allocates.
    const ACCESS_TOKEN: HeaderName = HeaderName::from_static("x-access-token");
    const MFA: HeaderName = HeaderName::from_static(MFA_HEADER);
    const MFA_AUTOPROP: HeaderName = HeaderName::from_static(MFA_AUTOPROP_HEADER);
    headers.insert(ACCESS_TOKEN, prepared.token.clone());
    let mfa = HeaderValue::from_static(if prepared.mfa { "true" } else { "false" });
    headers.insert(MFA, mfa);
    if prepared.mfa {
        headers.insert(MFA_AUTOPROP, HeaderValue::from_static("true"));
    }
}

fn mfa_required() -> GatewayError {
    GatewayError::Forbidden {
        reason: "route requires step-up authentication and the acr claim does not show it".into(),
        mfa_required: true,
    }
}

/// Removes the headers only the gateway may set, and their names from `Connection`: a client
/// listing `x-access-token` there would otherwise have the proxy's hop-by-hop removal strip the
/// token the gateway sets.
fn strip_reserved_headers(headers: &mut http::HeaderMap) {
    let reserved: Vec<http::HeaderName> = headers
        .keys()
        .filter(|k| is_reserved_header(k.as_str()))
        .cloned()
        .collect();
    for name in reserved {
        headers.remove(&name);
    }
    let names_reserved = headers.get_all(http::header::CONNECTION).iter().any(|v| {
        v.to_str()
            .map_or(true, |s| s.split(',').any(|t| is_reserved_header(t.trim())))
    });
    if !names_reserved {
        return;
    }
    let connection: Vec<HeaderValue> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .cloned()
        .collect();
    headers.remove(http::header::CONNECTION);
    let kept: Vec<&str> = connection
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty() && !is_reserved_header(t))
        .collect();
    if !kept.is_empty()
        && let Ok(v) = HeaderValue::from_str(&kept.join(", "))
    {
        headers.insert(http::header::CONNECTION, v);
    }
}

impl AccountServices {
    async fn prepare(
        &self,
        identity: &OidcIdentity,
        require_mfa: bool,
    ) -> Result<Prepared, GatewayError> {
        let claims = identity.claims.as_ref();
        let decision = self.roles.assign(claims).map_err(|e| {
            tracing::warn!(error = %e, "login refused: no role for these claims");
            GatewayError::Forbidden {
                reason: e.to_string(),
                mfa_required: false,
            }
        })?;
        let mfa = self.mfa.satisfied(claims);
        if require_mfa && !mfa {
            return Err(mfa_required());
        }
        let empty = serde_json::Map::new();
        let map = claims.as_object().unwrap_or(&empty);
        let resolved = self
            .resolver
            .resolve(map, decision)
            .await
            .map_err(account_error)?;
        let account = &resolved.account;
        trace::set_current(ENDUSER_ID, account.id.clone());
        trace::set_current("gatehouse.role", account.role_id.clone());
        let mut user = self.user_with_quota(account);
        if let Some(spaces) = &self.spaces {
            match spaces.memberships(claims) {
                Ok(memberships) => {
                    let desired: BTreeMap<String, String> = memberships
                        .iter()
                        .map(|(id, role)| ((*id).to_owned(), role.as_str().to_owned()))
                        .collect();
                    if let Ok(json) = serde_json::to_vec(&desired) {
                        set_opaque(&mut user, SPACES_OPAQUE_KEY, "json", json);
                    }
                    if identity.new_session {
                        self.events
                            .space_memberships(&*self.state, &account.id, &desired)
                            .await;
                    }
                }
                // Memberships are left alone; oCIS would remove them all here.
                Err(e) => {
                    tracing::warn!(user = %account.id, error = %e, "claim-managed spaces skipped")
                }
            }
        }
        let token = self.mint(&user)?;
        if identity.new_session {
            self.events.signed_in(&account.id);
        }
        if mfa && self.mfa.enabled() {
            self.remember_step_up(&account.id);
        }
        Ok(Prepared {
            token,
            mfa,
            user: Some(account.id.as_str().into()),
        })
    }

    /// An account proven without claims (Basic, signed URL): no role decision, provisioning or
    /// space mapping; step-up counts when the same user proved it through OIDC within
    /// `mfa.session_duration` (spec §6.1).
    async fn prepare_account(
        &self,
        account: &crate::accounts::Account,
        require_mfa: bool,
    ) -> Result<Prepared, GatewayError> {
        let mfa = if !self.mfa.enabled() {
            true
        } else if let Some(store) = &self.step_up_store {
            mfa_record::proven(
                store.as_ref(),
                &account.id,
                SystemTime::now(),
                self.mfa_session,
            )
            .await
        } else {
            false
        };
        if require_mfa && !mfa {
            return Err(mfa_required());
        }
        let user = self.user_with_quota(account);
        Ok(Prepared {
            token: self.mint(&user)?,
            mfa,
            user: Some(account.id.as_str().into()),
        })
    }

    /// The user of the minted token, with the role quota when the role has one.
    fn user_with_quota(&self, account: &crate::accounts::Account) -> RevaUser {
        let mut user = reva_user(account, &self.idp);
        if let Some(quota) = self.quotas.get(&account.role_id) {
            set_opaque(
                &mut user,
                QUOTA_OPAQUE_KEY,
                "plain",
                quota.to_string().into_bytes(),
            );
        }
        user
    }

    fn mint(&self, user: &RevaUser) -> Result<HeaderValue, GatewayError> {
        let token = self
            .mint
            .token_for(user)
            .map_err(|e| GatewayError::Internal {
                reason: format!("minting the x-access-token failed: {e}"),
            })?;
        HeaderValue::from_str(&token).map_err(|e| GatewayError::Internal {
            reason: format!("minted token is not a header value: {e}"),
        })
    }

    /// Records, off the request path, that the user proved step-up now, so the user's signed
    /// URLs inherit it on every node.
    fn remember_step_up(&self, user_id: &str) {
        let Some(store) = self.step_up_store.clone() else {
            return;
        };
        let user_id = user_id.to_owned();
        let session = self.mfa_session;
        tokio::spawn(async move {
            if let Err(e) =
                mfa_record::record(store.as_ref(), &user_id, SystemTime::now(), session).await
            {
                tracing::warn!(user = %user_id, error = %e, "step-up proof not recorded");
            }
        });
    }
}

fn set_opaque(user: &mut RevaUser, key: &str, decoder: &str, value: Vec<u8>) {
    user.opaque.get_or_insert_with(Default::default).map.insert(
        key.to_owned(),
        OpaqueEntry {
            decoder: decoder.to_owned(),
            value,
        },
    );
}

fn account_error(e: AccountError) -> GatewayError {
    let reason = e.to_string();
    match e {
        AccountError::NotFound { .. }
        | AccountError::Disabled { .. }
        | AccountError::ClaimMissing { .. } => {
            tracing::warn!(reason = %reason, "login refused");
            GatewayError::Unauthenticated {
                path: String::new(),
                challenges: Vec::new(),
                webdav: false,
            }
        }
        other => GatewayError::AccountBackend {
            reason,
            retryable: other.is_retryable(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_cannot_name_gateway_headers_as_hop_by_hop() {
        let mut h = http::HeaderMap::new();
        h.insert("x-access-token", HeaderValue::from_static("forged"));
        h.insert(
            "x-ocis-autoprop-mfa-authenticated",
            HeaderValue::from_static("true"),
        );
        h.append(
            http::header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Access-Token"),
        );
        h.append(
            http::header::CONNECTION,
            HeaderValue::from_static("x-multi-factor-authentication, x-custom"),
        );
        strip_reserved_headers(&mut h);
        assert!(h.get("x-access-token").is_none());
        assert!(h.get("x-ocis-autoprop-mfa-authenticated").is_none());
        let connection: Vec<_> = h.get_all(http::header::CONNECTION).iter().collect();
        assert_eq!(connection, ["keep-alive, x-custom"]);

        let mut only = http::HeaderMap::new();
        only.insert(
            http::header::CONNECTION,
            HeaderValue::from_static("x-access-token"),
        );
        strip_reserved_headers(&mut only);
        assert!(only.get(http::header::CONNECTION).is_none());

        let mut untouched = http::HeaderMap::new();
        untouched.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        strip_reserved_headers(&mut untouched);
        assert_eq!(untouched[http::header::CONNECTION], "close");
    }
}
