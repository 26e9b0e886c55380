//! Back-channel logout (spec §7.3): the identity provider posts a signed logout token when a
//! session ends, and the gateway stops accepting that session's tokens on every node.
//!
//! What oCIS does — verify the token, evict the session's cached claims, publish
//! `events.BackchannelLogout` — plus what it lacks (spec §11.10): logout by `sub` (every
//! session of the subject), and markers that keep the ended sessions out although their JWTs are
//! still valid (oCIS only evicts, so the next request re-verifies the token and is let in again).
//! The store work is in [`crate::authn::oidc::sessions`]; per-worker memos are flushed by
//! [`crate::identity::memo::spawn_invalidation`] when the logout marker reaches each node.
//!
//! Answers follow OpenID Connect Back-Channel Logout 1.0 §2.8 and oCIS: 200 with `null` when the
//! logout is done (also when the session was unknown), 400 with an OAuth error object when the
//! request is bad or the session could not be ended, never cached.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use gatehouse_shared::config::Config;
use gatehouse_shared::oidc::logout_token_from_form;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use serde_json::Value;

use crate::accounts::backend::LookupKind;
use crate::accounts::{AccountError, AccountResolver};
use crate::authn::oidc::OidcAuthenticator;
use crate::authn::oidc::sessions::EndedSession;
use crate::context::Body;
use crate::identity::events::IdentityEvents;
use crate::layers::account::AccountServices;

/// Finds the id of an existing user, for the `Executant` of the logout event.
#[async_trait]
pub trait UserLookup: Send + Sync {
    async fn user_id(&self, kind: LookupKind, value: &str) -> Result<String, AccountError>;
}

#[async_trait]
impl UserLookup for AccountResolver {
    async fn user_id(&self, kind: LookupKind, value: &str) -> Result<String, AccountError> {
        self.lookup(kind, value).await.map(|a| a.id)
    }
}

#[async_trait]
impl UserLookup for AccountServices {
    async fn user_id(&self, kind: LookupKind, value: &str) -> Result<String, AccountError> {
        self.resolver.user_id(kind, value).await
    }
}

/// Everything the endpoint needs; one per node.
pub struct LogoutService {
    oidc: OidcAuthenticator,
    events: IdentityEvents,
    users: Arc<dyn UserLookup>,
    /// `user_oidc_claim`, read as a top-level string claim (as oCIS does here).
    user_claim: String,
    /// `user_cs3_claim`.
    lookup: LookupKind,
}

impl LogoutService {
    /// With the user claim and lookup kind of the configuration (`user_oidc_claim`,
    /// `user_cs3_claim`).
    pub fn from_config(
        config: &Config,
        oidc: OidcAuthenticator,
        events: IdentityEvents,
        users: Arc<dyn UserLookup>,
    ) -> Self {
        let lookup = LookupKind::parse(&config.user_cs3_claim).unwrap_or(LookupKind::Username);
        Self::new(oidc, events, users, &config.user_oidc_claim, lookup)
    }

    pub fn new(
        oidc: OidcAuthenticator,
        events: IdentityEvents,
        users: Arc<dyn UserLookup>,
        user_claim: &str,
        lookup: LookupKind,
    ) -> Self {
        Self {
            oidc,
            events,
            users,
            user_claim: user_claim.to_owned(),
            lookup,
        }
    }

    /// One `events.BackchannelLogout` per ended session (`sid`); the user comes from the cached
    /// claims. Failures are logged only: the logout itself is done.
    async fn publish(&self, ended: &[EndedSession]) {
        let mut sessions: Vec<(&str, Option<&str>)> = Vec::new();
        for s in ended {
            let sid = s.sid.as_deref().unwrap_or("");
            let user = s.claims.as_ref().and_then(|c| {
                c.get(&self.user_claim)
                    .and_then(Value::as_str)
                    .filter(|v| !v.is_empty())
            });
            match sessions.iter_mut().find(|(id, _)| *id == sid) {
                Some((_, known)) => *known = known.or(user),
                None => sessions.push((sid, user)),
            }
        }
        let mut resolved: HashMap<&str, Option<String>> = HashMap::new();
        for (sid, user) in sessions {
            let Some(value) = user else {
                tracing::warn!(sid, claim = %self.user_claim, "logout event not published: no cached claims with the user claim");
                continue;
            };
            if !resolved.contains_key(value) {
                let id = match self.users.user_id(self.lookup, value).await {
                    Ok(id) => Some(id),
                    Err(e) => {
                        tracing::warn!(sid, error = %e, "logout event not published: user not resolved");
                        None
                    }
                };
                resolved.insert(value, id);
            }
            if let Some(Some(id)) = resolved.get(value) {
                self.events.backchannel_logout(id, sid);
            }
        }
    }
}

/// `POST <root>/backchannel_logout`. `body` is the whole request body (the caller bounds its
/// size).
pub async fn handle(
    ctx: &LogoutService,
    content_type: Option<&HeaderValue>,
    body: Bytes,
) -> Response<Body> {
    let token = match logout_token_from_form(content_type.map(HeaderValue::as_bytes), &body) {
        Ok(t) => t,
        Err(e) => return invalid_request(&e.to_string()),
    };
    let logout = match ctx.oidc.verify_logout(&token).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "back-channel logout refused");
            return invalid_request(&e.to_string());
        }
    };
    let ended = match ctx.oidc.end_sessions(&logout).await {
        Ok(ended) => ended,
        Err(e) => {
            tracing::error!(error = %e, sid = ?logout.sid, "back-channel logout: session not ended");
            return invalid_request(&format!("the session could not be ended: {e}"));
        }
    };
    tracing::info!(
        sid = ?logout.sid,
        sub = ?logout.sub,
        cached_tokens = ended.len(),
        "back-channel logout"
    );
    ctx.publish(&ended).await;
    json(StatusCode::OK, b"null\n".to_vec())
}

fn invalid_request(description: &str) -> Response<Body> {
    let body = serde_json::json!({
        "error": "invalid_request",
        "error_description": description,
    });
    let mut bytes = serde_json::to_vec(&body).unwrap_or_default();
    bytes.push(b'\n');
    json(StatusCode::BAD_REQUEST, bytes)
}

fn json(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
