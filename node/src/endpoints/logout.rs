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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use gatehouse_shared::events::{Event, RecordingSink};
    use gatehouse_shared::oidc::logout::BACKCHANNEL_LOGOUT_EVENT;
    use gatehouse_shared::oidc::sessions::sessions_key;
    use gatehouse_shared::oidc::testing::{self, TestKey};
    use gatehouse_shared::store::testing::FaultyStore;
    use gatehouse_shared::store::{Store, StoreError};
    use serde_json::json;

    use super::*;
    use crate::authn::oidc::tests::{Idp, Userinfo, rejected, settings, unix_now};
    use crate::identity::memo::{IdentityMemo, MemoEpoch, Prepared, spawn_invalidation};

    struct Users;

    #[async_trait]
    impl UserLookup for Users {
        async fn user_id(&self, kind: LookupKind, value: &str) -> Result<String, AccountError> {
            assert_eq!(kind, LookupKind::Username);
            match value {
                "einstein" => Ok("uid-einstein".into()),
                other => Err(AccountError::NotFound {
                    claim: "username",
                    value: other.into(),
                }),
            }
        }
    }

    struct Setup {
        idp: Idp,
        oidc: OidcAuthenticator,
        store: Arc<FaultyStore>,
        sink: Arc<RecordingSink>,
        service: LogoutService,
    }

    async fn setup() -> Setup {
        let idp = Idp::start().await;
        let store = FaultyStore::memory();
        let oidc = OidcAuthenticator::new(settings(&idp), store.clone()).unwrap();
        let sink = Arc::new(RecordingSink::new());
        let events = IdentityEvents::new(sink.clone(), &idp.issuer());
        let service = LogoutService::new(
            oidc.clone(),
            events,
            Arc::new(Users),
            "sub",
            LookupKind::Username,
        );
        Setup {
            idp,
            oidc,
            store,
            sink,
            service,
        }
    }

    impl Setup {
        fn logout_token(&self, claims: serde_json::Value) -> String {
            let mut c = json!({
                "iss": self.idp.issuer(), "aud": "web", "iat": unix_now(), "jti": "j1",
                "events": {BACKCHANNEL_LOGOUT_EVENT: {}},
            });
            for (k, v) in claims.as_object().unwrap() {
                c[k] = v.clone();
            }
            testing::sign("RS256", Some("rsa1"), TestKey::Rsa1, &c)
        }

        async fn post(&self, body: String) -> (StatusCode, Value) {
            let ct = HeaderValue::from_static("application/x-www-form-urlencoded");
            self.post_raw(Some(&ct), body).await
        }

        async fn post_raw(&self, ct: Option<&HeaderValue>, body: String) -> (StatusCode, Value) {
            let resp = handle(&self.service, ct, Bytes::from(body)).await;
            let status = resp.status();
            assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
            assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-store");
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            (status, serde_json::from_slice(&bytes).unwrap())
        }

        async fn logout(&self, claims: serde_json::Value) -> (StatusCode, Value) {
            self.post(format!("logout_token={}", self.logout_token(claims)))
                .await
        }

        fn logout_events(&self) -> Vec<(String, String)> {
            self.sink
                .take()
                .into_iter()
                .map(|e| match e.event {
                    Event::BackchannelLogout(l) => (l.executant.unwrap().opaque_id, l.session_id),
                    other => panic!("unexpected {other:?}"),
                })
                .collect()
        }
    }

    fn is_invalid_request(status: StatusCode, body: &Value) -> bool {
        status == StatusCode::BAD_REQUEST
            && body["error"] == "invalid_request"
            && body["error_description"]
                .as_str()
                .is_some_and(|d| !d.is_empty())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn logout_by_sid_ends_the_session_everywhere_and_keeps_it_out() {
        let s = setup().await;
        let epoch = MemoEpoch::new();
        let memo = IdentityMemo::with_epoch(epoch.clone());
        let shutdown = tokio_util::sync::CancellationToken::new();
        spawn_invalidation(s.store.as_ref(), epoch, shutdown.clone());

        let token = s.idp.rsa1(json!({"sid": "session-1"}));
        let other = s.idp.rsa1(json!({"sid": "session-2"}));
        let hash = s.oidc.authenticate(&token).await.unwrap().cache_key;
        let other_hash = s.oidc.authenticate(&other).await.unwrap().cache_key;
        assert!(s.store.get("session-1").await.unwrap().is_some());
        let now = std::time::Instant::now();
        let prepared = Prepared {
            token: HeaderValue::from_static("minted"),
            mfa: false,
            user: None,
        };
        memo.put(&token, prepared, Some(unix_now() + 300), now);

        let (status, body) = s.logout(json!({"sid": "session-1"})).await;
        assert_eq!((status, body), (StatusCode::OK, Value::Null));
        assert!(
            s.store.get(&hash).await.unwrap().is_none(),
            "claims removed"
        );
        assert!(
            s.store.get("session-1").await.unwrap().is_none(),
            "index removed"
        );
        assert_eq!(
            s.logout_events(),
            [("uid-einstein".to_owned(), "session-1".to_owned())]
        );
        // The worker memo forgets at once (the marker reached the listener).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while memo.get(&token, now).is_some() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "memo not invalidated"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // The JWT is still valid, yet refused; the other session is untouched.
        let reason = rejected(s.oidc.authenticate(&token).await);
        assert!(reason.contains("logged out"), "{reason}");
        assert!(s.store.get(&other_hash).await.unwrap().is_some());
        assert!(!s.oidc.authenticate(&other).await.unwrap().new_session);
        shutdown.cancel();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn logout_by_sid_also_ends_older_tokens_of_the_session() {
        let s = setup().await;
        // A refreshed session: the sid index names only the newest token.
        let old = s.idp.rsa1(json!({"sid": "s1", "jti": "old"}));
        let new = s.idp.rsa1(json!({"sid": "s1", "jti": "new"}));
        let old_hash = s.oidc.authenticate(&old).await.unwrap().cache_key;
        s.oidc.authenticate(&new).await.unwrap();
        // The logout token names the session only; the subject comes from the cached claims.
        let (status, _) = s.logout(json!({"sid": "s1"})).await;
        assert_eq!(status, StatusCode::OK);
        assert!(s.store.get(&old_hash).await.unwrap().is_none());
        assert!(s.oidc.authenticate(&old).await.is_err());
        assert!(s.oidc.authenticate(&new).await.is_err());
        assert_eq!(s.logout_events().len(), 1, "one event per session");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn logout_by_sub_ends_every_session_of_the_subject() {
        let s = setup().await;
        let before = unix_now() as i64 - 10;
        let a = s.idp.rsa1(json!({"sid": "s1", "iat": before}));
        let b = s.idp.rsa1(json!({"sid": "s2", "iat": before}));
        let marie = s
            .idp
            .token(TestKey::Rsa1, "rsa1", json!({"sub": "marie", "sid": "m"}));
        let ha = s.oidc.authenticate(&a).await.unwrap().cache_key;
        let hb = s.oidc.authenticate(&b).await.unwrap().cache_key;
        s.oidc.authenticate(&marie).await.unwrap();

        let logout_at = unix_now() as i64;
        let (status, body) = s.logout(json!({"sub": "einstein", "iat": logout_at})).await;
        assert_eq!((status, body), (StatusCode::OK, Value::Null));
        assert!(s.store.get(&ha).await.unwrap().is_none());
        assert!(s.store.get(&hb).await.unwrap().is_none());
        assert!(
            s.store
                .get(&sessions_key("einstein"))
                .await
                .unwrap()
                .is_none()
        );
        let mut events = s.logout_events();
        events.sort();
        assert_eq!(
            events,
            [
                ("uid-einstein".to_owned(), "s1".to_owned()),
                ("uid-einstein".to_owned(), "s2".to_owned())
            ]
        );
        // Valid JWTs issued before the logout stay out, even ones never seen before.
        for token in [&a, &b] {
            assert!(rejected(s.oidc.authenticate(token).await).contains("logged out"));
        }
        let unseen = s.idp.rsa1(json!({"sid": "s3", "iat": logout_at}));
        assert!(s.oidc.authenticate(&unseen).await.is_err());
        // A new login after the logout is accepted, and other subjects were never affected.
        let fresh = s.idp.rsa1(json!({"sid": "s4", "iat": logout_at + 1}));
        assert!(s.oidc.authenticate(&fresh).await.is_ok());
        assert!(!s.oidc.authenticate(&marie).await.unwrap().new_session);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unknown_session_is_fine_and_stays_out() {
        let s = setup().await;
        let (status, body) = s
            .logout(json!({"sid": "never-seen", "sub": "einstein"}))
            .await;
        assert_eq!((status, body), (StatusCode::OK, Value::Null));
        assert!(s.sink.take().is_empty(), "no cached session, no event");
        // A token of that session that arrives later is refused.
        let late = s.idp.rsa1(json!({"sid": "never-seen"}));
        assert!(s.oidc.authenticate(&late).await.is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_requests_get_an_oauth_error() {
        let s = setup().await;
        let token = s.logout_token(json!({"sid": "s1"}));
        let form = HeaderValue::from_static("application/x-www-form-urlencoded");
        let json_ct = HeaderValue::from_static("application/json");
        let cases: Vec<(&str, Option<&HeaderValue>, String)> = vec![
            ("no content type", None, format!("logout_token={token}")),
            (
                "json",
                Some(&json_ct),
                format!("{{\"logout_token\":\"{token}\"}}"),
            ),
            ("missing token", Some(&form), "other=1".into()),
            ("bad escape", Some(&form), "logout_token=%zz".into()),
            ("not a JWT", Some(&form), "logout_token=abc".into()),
            (
                "forged",
                Some(&form),
                format!(
                    "logout_token={}",
                    testing::sign(
                        "RS256",
                        Some("rsa1"),
                        TestKey::Rsa2,
                        &json!({"iss": s.idp.issuer(), "sid": "s1",
                                "events": {BACKCHANNEL_LOGOUT_EVENT: {}}})
                    )
                ),
            ),
            (
                "nonce",
                Some(&form),
                format!(
                    "logout_token={}",
                    s.logout_token(json!({"sid": "s1", "nonce": "n"}))
                ),
            ),
            (
                "no sid nor sub",
                Some(&form),
                format!("logout_token={}", s.logout_token(json!({}))),
            ),
        ];
        for (name, ct, body) in cases {
            let (status, body) = s.post_raw(ct, body).await;
            assert!(is_invalid_request(status, &body), "{name}: {status} {body}");
        }
        assert!(s.sink.take().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_session_that_cannot_be_ended_is_a_400() {
        let s = setup().await;
        let token = s.idp.rsa1(json!({"sid": "s1"}));
        s.oidc.authenticate(&token).await.unwrap();
        s.store
            .fail_writes(Some(StoreError::Unavailable("test".into())));
        let (status, body) = s.logout(json!({"sid": "s1"})).await;
        assert!(is_invalid_request(status, &body), "{status} {body}");
        assert!(s.sink.take().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unresolvable_user_only_skips_the_event() {
        let s = setup().await;
        s.idp.set_userinfo(Userinfo::Json(json!({"sub": "nobody"})));
        let token = s
            .idp
            .token(TestKey::Rsa1, "rsa1", json!({"sub": "nobody", "sid": "s9"}));
        let hash = s.oidc.authenticate(&token).await.unwrap().cache_key;
        let (status, _) = s.logout(json!({"sid": "s9"})).await;
        assert_eq!(status, StatusCode::OK);
        assert!(s.store.get(&hash).await.unwrap().is_none());
        assert!(s.sink.take().is_empty());
    }
}
