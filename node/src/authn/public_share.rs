//! Public-share tokens (spec §4.4), validated by the share service of docs/public-shares.md.
//!
//! A public link lets a guest without an account reach one shared resource. oCIS's proxy checks
//! the link's token (and its password or URL signature) with a gRPC call to the reva gateway and
//! forwards the token reva returns. Gatehouse has no reva client, so it asks a *share service*
//! over a small HTTP contract (`POST <public_shares.url>/v1/public-shares/authenticate`) and mints
//! the `x-access-token` itself, in the shape reva gives a share guest: the share's owner as the
//! user, with a `public-share-role` opaque entry, and a single `publicshare:<share id>` scope
//! that restricts the token to the shared resource.
//!
//! Unlike the Go original, a non-OK answer is a failure (the original "succeeded" with an empty
//! token, spec §11.5), and with no share service configured every request that carries a share
//! token is refused. Requests on public paths without a share token pass on anonymously: the
//! backends there do their own checks.
//!
//! Each node remembers answers briefly — accepted shares for 30 s (never beyond the share's
//! expiry), rejections for 5 s, which blunts password guessing and keeps a busy public link from
//! loading the share service — keyed by an HMAC-SHA256 of token and secret under a random key of
//! the node, so no secret is kept in clear. Concurrent requests with the same token and secret share one call. An unavailable
//! share service is not remembered: the next request asks again.
//!
//! Signing the guest's token costs more than proxying a small request, so an accepted answer
//! also keeps the token minted for it and hands it to the following requests of the same link
//! until less than a quarter of the token lifetime would be left (the rule of the owner-token
//! cache, `MintCache`): backends always get at least that quarter to run, or the share's end.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared};
use gatehouse_shared::auth::challenge::is_public_path;
use gatehouse_shared::auth::password::decode_basic;
use gatehouse_shared::auth::query::Query;
use gatehouse_shared::config::Config;
use gatehouse_shared::events::GoTime;
use gatehouse_shared::store::{Clock, SystemClock};
use gatehouse_shared::token::{
    Minter, PublicShareRole, ResourceId, RevaUser, RevaUserId, ScopedPublicShare, Scopes,
    TokenError, UserType, public_share_scope, truncate_to_seconds,
};
use gatehouse_shared::trace::{self, http as conv, propagate};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use opentelemetry::context::FutureExt as _;
use ring::hmac;
use rustls::ClientConfig;
use serde::{Deserialize, Serialize};

use crate::proxy::tls::{Connector, UpstreamTlsError, client_config};

/// The endpoint of the contract, relative to `public_shares.url`.
pub const AUTHENTICATE_PATH: &str = "/v1/public-shares/authenticate";

/// Header and query parameter that carry the share token.
pub const PUBLIC_TOKEN: &str = "public-token";

/// How long an accepted share is remembered (capped by the share's expiry).
pub const ACCEPTED_TTL: Duration = Duration::from_secs(30);

/// How long a rejection is remembered.
pub const REJECTED_TTL: Duration = Duration::from_secs(5);

/// Remembered answers per node.
pub const CACHE_CAPACITY: usize = 10_000;

/// Longest share token or secret field accepted from a client.
pub const MAX_CREDENTIAL_LEN: usize = 4096;

/// Largest answer read from the share service.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Longest `Retry-After` passed on.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Path prefixes that are not public but accept a share token (download archives, app
/// open/new from a public link).
const TOKEN_PATH_PREFIXES: &[&str] = &["/archiver", "/app/open", "/app/new"];

/// Why the authenticator could not be built. Not retryable: the configuration must change.
#[derive(Debug, thiserror::Error)]
pub enum PublicShareSetupError {
    #[error("public_shares.url: {0:?} is not an http(s) URL")]
    InvalidUrl(String),
    #[error("public_shares needs token_manager.jwt_secret to mint share tokens: {0}")]
    Token(#[from] TokenError),
    #[error(transparent)]
    Tls(#[from] UpstreamTlsError),
}

/// What the authenticator needs from the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct PublicShareSettings {
    /// Base URL of the share service; empty: share tokens are refused.
    pub url: String,
    /// Time allowed for one call, connection set-up included.
    pub timeout: Duration,
    pub insecure_backends: bool,
    pub backend_https_cacert: Option<PathBuf>,
}

impl PublicShareSettings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            url: config.public_shares.url.trim().to_owned(),
            timeout: config.public_shares.timeout.0,
            insecure_backends: config.insecure_backends,
            backend_https_cacert: (!config.backend_https_cacert.is_empty())
                .then(|| PathBuf::from(&config.backend_https_cacert)),
        }
    }
}

/// A share the share service vouched for, with the user and scope its guests' tokens carry.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedShare {
    pub id: String,
    pub token: String,
    pub role: PublicShareRole,
    pub resource_id: ResourceId,
    pub expiration: Option<SystemTime>,
    /// The owner, with the `public-share-role` opaque entry.
    pub user: RevaUser,
    /// The single `publicshare:<id>` scope.
    pub scope: Scopes,
}

/// The result of looking at one request.
#[derive(Debug, Clone)]
pub enum ShareOutcome {
    /// Not a public path, and not an archiver/app path with a share token.
    NotApplicable,
    /// A public path without a share token: pass on anonymously, the backend decides.
    Anonymous,
    /// The share token and secret are valid. `token` is the `x-access-token` for the backend;
    /// it replaces whatever the client sent in that header. Until `reuse_until` the same
    /// credentials are accepted with the same token (the remembered verdict has not ended and the
    /// token still has a quarter of its lifetime left): how long a worker may memoise it.
    Accepted {
        token: HeaderValue,
        share: Arc<ValidatedShare>,
        reuse_until: SystemTime,
    },
    /// Unknown token, wrong or missing secret, malformed credentials, no share service: 401.
    Rejected { reason: String },
    /// The share service did not give a usable answer: 503, retry later.
    Unavailable {
        reason: String,
        retry_after: Option<Duration>,
    },
}

/// The secret a request presents with its share token, as the contract sends it.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Secret {
    Password {
        password: String,
    },
    Signature {
        signature: String,
        expiration: String,
    },
    None,
}

impl Secret {
    /// Feeds the secret to the cache key's MAC unambiguously: a kind byte, then each variable
    /// part length-prefixed.
    fn key_material(&self, mac: &mut hmac::Context) {
        match self {
            Secret::Password { password } => {
                mac.update(b"p");
                length_prefixed(mac, password);
            }
            Secret::Signature {
                signature,
                expiration,
            } => {
                mac.update(b"s");
                length_prefixed(mac, signature);
                length_prefixed(mac, expiration);
            }
            Secret::None => mac.update(b"n"),
        }
    }
}

fn length_prefixed(mac: &mut hmac::Context, part: &str) {
    mac.update(&(part.len() as u64).to_le_bytes());
    mac.update(part.as_bytes());
}

/// The cache key of one (token, secret): its HMAC-SHA256 under the node's random key.
type CacheKey = [u8; 32];

/// The service's verdict on one (token, secret), as remembered and shared between waiters.
#[derive(Debug, Clone)]
enum Verdict {
    Accepted(Arc<ValidatedShare>),
    Rejected(String),
    Unavailable(String, Option<Duration>),
}

struct CacheEntry {
    stored: SystemTime,
    ttl: Duration,
    verdict: Verdict,
    /// The token minted for an accepted share, reused until `renew_at`.
    minted: Option<Minted>,
}

struct Minted {
    token: HeaderValue,
    renew_at: SystemTime,
}

/// Remembered verdicts, bounded by [`CACHE_CAPACITY`].
struct Cache {
    entries: HashMap<CacheKey, CacheEntry>,
    capacity: usize,
}

impl Cache {
    fn fresh(entry: &CacheEntry, now: SystemTime) -> bool {
        // A clock that went backwards ends the entry rather than extending it.
        now.duration_since(entry.stored)
            .is_ok_and(|age| age < entry.ttl)
    }

    /// The remembered verdict, with the token minted for it while that may still be reused
    /// and until when (the earlier of its renewal and the entry's end).
    fn get(
        &mut self,
        key: &CacheKey,
        now: SystemTime,
    ) -> Option<(Verdict, Option<(HeaderValue, SystemTime)>)> {
        let entry = self.entries.get(key)?;
        if Self::fresh(entry, now) {
            let minted = entry
                .minted
                .as_ref()
                .filter(|m| now < m.renew_at)
                .map(|m| (m.token.clone(), m.renew_at.min(entry.stored + entry.ttl)));
            return Some((entry.verdict.clone(), minted));
        }
        self.entries.remove(key);
        None
    }

    /// Keeps `token` with the entry under `key`, if there still is one; returns until when the
    /// token is handed out again (`now` without an entry: not at all).
    fn keep_minted(
        &mut self,
        key: &CacheKey,
        token: HeaderValue,
        renew_at: SystemTime,
        now: SystemTime,
    ) -> SystemTime {
        match self.entries.get_mut(key) {
            Some(entry) => {
                entry.minted = Some(Minted { token, renew_at });
                renew_at.min(entry.stored + entry.ttl)
            }
            None => now,
        }
    }

    fn put(&mut self, key: CacheKey, verdict: Verdict, ttl: Duration, now: SystemTime) {
        if ttl.is_zero() {
            return;
        }
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            self.entries.retain(|_, e| Self::fresh(e, now));
        }
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            let soonest = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.stored + e.ttl)
                .map(|(k, _)| *k);
            if let Some(k) = soonest {
                self.entries.remove(&k);
            }
        }
        self.entries.insert(
            key,
            CacheEntry {
                stored: now,
                ttl,
                verdict,
                minted: None,
            },
        );
    }
}

/// The connection to a configured share service.
struct Service {
    client: Client<Connector, Full<Bytes>>,
    endpoint: String,
    timeout: Duration,
    minter: Minter,
    clock: Arc<dyn Clock>,
    /// Random per node: the cache keys of a secret cannot be computed without it.
    mac_key: hmac::Key,
    calls: AtomicU64,
    cache: Mutex<Cache>,
    inflight: Mutex<HashMap<CacheKey, Shared<BoxFuture<'static, Verdict>>>>,
}

pub struct PublicShareAuthenticator {
    service: Option<Arc<Service>>,
}

impl std::fmt::Debug for PublicShareAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicShareAuthenticator")
            .field(
                "endpoint",
                &self.service.as_ref().map(|s| s.endpoint.as_str()),
            )
            .finish_non_exhaustive()
    }
}

impl PublicShareAuthenticator {
    /// Built from `public_shares`, `token_manager`, `insecure_backends` and
    /// `backend_https_cacert`. With a share service configured, an empty `jwt_secret` is an
    /// error: tokens signed with a secret no backend knows would be useless.
    pub fn from_config(config: &Config) -> Result<Self, PublicShareSetupError> {
        let settings = PublicShareSettings::from_config(config);
        if settings.url.is_empty() {
            return Ok(Self::disabled());
        }
        let minter = Minter::new(
            config.token_manager.jwt_secret.as_bytes(),
            config.token_manager.token_lifetime.0,
        )?;
        Self::new(settings, minter)
    }

    /// An authenticator with no share service: every share token is refused.
    pub fn disabled() -> Self {
        Self { service: None }
    }

    /// An authenticator for `settings` that signs share tokens with `minter`.
    pub fn new(
        settings: PublicShareSettings,
        minter: Minter,
    ) -> Result<Self, PublicShareSetupError> {
        if settings.url.is_empty() {
            return Ok(Self::disabled());
        }
        let base = settings.url.trim_end_matches('/');
        let endpoint = format!("{base}{AUTHENTICATE_PATH}");
        let valid = (base.starts_with("http://") || base.starts_with("https://"))
            && endpoint
                .parse::<http::Uri>()
                .is_ok_and(|u| u.host().is_some_and(|h| !h.is_empty()));
        if !valid {
            return Err(PublicShareSetupError::InvalidUrl(settings.url));
        }
        let tls = client_config(
            settings.insecure_backends,
            settings.backend_https_cacert.as_deref(),
        )?;
        Ok(Self {
            service: Some(Arc::new(Service::new(
                endpoint,
                settings.timeout,
                tls,
                minter,
            ))),
        })
    }

    /// Use `clock` for cache ages, share expiry and token times (tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        if let Some(service) = self.service.as_mut().and_then(Arc::get_mut) {
            service.clock = clock;
        }
        self
    }

    /// Whether a share service is configured.
    pub fn is_enabled(&self) -> bool {
        self.service.is_some()
    }

    /// Calls made to the share service so far (cache hits and joined calls not counted).
    pub fn service_calls(&self) -> u64 {
        self.service
            .as_ref()
            .map_or(0, |s| s.calls.load(Ordering::Relaxed))
    }

    /// Looks at a request: `path` as routed, its headers and raw (still percent-encoded) query.
    pub async fn authenticate(
        &self,
        path: &str,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> ShareOutcome {
        let token = share_token(headers, query);
        let present = !matches!(token, Ok(None));
        let applicable = is_public_path(path)
            || (present && TOKEN_PATH_PREFIXES.iter().any(|p| path.starts_with(p)));
        if !applicable {
            return ShareOutcome::NotApplicable;
        }
        let token = match token {
            Ok(None) => return ShareOutcome::Anonymous,
            Ok(Some(token)) => token,
            Err(reason) => return ShareOutcome::Rejected { reason },
        };
        let Some(service) = &self.service else {
            return ShareOutcome::Rejected {
                reason: "public-share token presented but no share service is configured".into(),
            };
        };
        let secret = match share_secret(headers, query) {
            Ok(secret) => secret,
            Err(reason) => return ShareOutcome::Rejected { reason },
        };
        service.outcome(token, secret).await
    }
}

impl Service {
    fn new(endpoint: String, timeout: Duration, tls: Arc<ClientConfig>, minter: Minter) -> Self {
        let mut builder = Client::builder(TokioExecutor::new());
        builder.pool_timer(TokioTimer::new());
        builder.pool_idle_timeout(Duration::from_secs(90));
        let mut mac_key = [0u8; 32];
        rand::Rng::fill(&mut rand::thread_rng(), &mut mac_key);
        Self {
            client: builder.build(Connector::new(tls, Some(timeout))),
            endpoint,
            timeout,
            minter,
            clock: Arc::new(SystemClock),
            mac_key: hmac::Key::new(hmac::HMAC_SHA256, &mac_key),
            calls: AtomicU64::new(0),
            cache: Mutex::new(Cache {
                entries: HashMap::new(),
                capacity: CACHE_CAPACITY,
            }),
            inflight: Mutex::new(HashMap::new()),
        }
    }

    /// The outcome for (token, secret): from the remembered verdict and token when there are
    /// both, otherwise from the verdict (remembered or asked for) and a token minted now.
    async fn outcome(self: &Arc<Self>, token: String, secret: Secret) -> ShareOutcome {
        let key = self.cache_key(&token, &secret);
        let now = self.clock.now();
        let remembered = lock(&self.cache).get(&key, now);
        let verdict = match remembered {
            // A fresh entry of an accepted share ends no later than the share.
            Some((Verdict::Accepted(share), Some((token, reuse_until)))) => {
                return ShareOutcome::Accepted {
                    token,
                    share,
                    reuse_until,
                };
            }
            Some((verdict, _)) => verdict,
            None => self.verdict(key, token, secret).await,
        };
        match verdict {
            Verdict::Accepted(share) => self.mint(&key, share),
            Verdict::Rejected(reason) => ShareOutcome::Rejected { reason },
            Verdict::Unavailable(reason, retry_after) => ShareOutcome::Unavailable {
                reason,
                retry_after,
            },
        }
    }

    /// Keyed hash of (token, secret): the secret never sits in memory longer than the request.
    /// (A SHAKE-256 of salt, token and secret cost a third of a cached share request.)
    fn cache_key(&self, token: &str, secret: &Secret) -> CacheKey {
        let mut mac = hmac::Context::with_key(&self.mac_key);
        length_prefixed(&mut mac, token);
        secret.key_material(&mut mac);
        let mut key = [0u8; 32];
        key.copy_from_slice(mac.sign().as_ref());
        key
    }

    /// The verdict on the (token, secret) filed under `key` after a cache miss: remembered
    /// meanwhile, asked for by a call already under way, or asked for now.
    async fn verdict(self: &Arc<Self>, key: CacheKey, token: String, secret: Secret) -> Verdict {
        let call = {
            let mut inflight = lock(&self.inflight);
            if let Some((verdict, _)) = lock(&self.cache).get(&key, self.clock.now()) {
                return verdict;
            }
            if let Some(call) = inflight.get(&key) {
                call.clone()
            } else {
                // Spawned, so the call finishes (and is remembered and removed from `inflight`)
                // even when every request waiting for it has gone away.
                let service = self.clone();
                let task_key = key;
                let task = tokio::spawn(
                    async move {
                        let verdict = service.ask(&token, &secret).await;
                        service.remember(&task_key, &verdict);
                        lock(&service.inflight).remove(&task_key);
                        verdict
                    }
                    .with_current_context(),
                );
                let call = async move {
                    task.await.unwrap_or_else(|e| {
                        Verdict::Unavailable(format!("share service call failed: {e}"), None)
                    })
                }
                .boxed()
                .shared();
                inflight.insert(key, call.clone());
                call
            }
        };
        call.await
    }

    fn remember(&self, key: &CacheKey, verdict: &Verdict) {
        let now = self.clock.now();
        let ttl = match verdict {
            Verdict::Accepted(share) => match share.expiration {
                Some(end) => end
                    .duration_since(now)
                    .unwrap_or(Duration::ZERO)
                    .min(ACCEPTED_TTL),
                None => ACCEPTED_TTL,
            },
            Verdict::Rejected(_) => REJECTED_TTL,
            Verdict::Unavailable(..) => return,
        };
        lock(&self.cache).put(*key, verdict.clone(), ttl, now);
    }

    /// One call to the share service.
    async fn ask(&self, token: &str, secret: &Secret) -> Verdict {
        self.calls.fetch_add(1, Ordering::Relaxed);
        #[derive(Serialize)]
        struct Body<'a> {
            token: &'a str,
            secret: &'a Secret,
        }
        let body = match serde_json::to_vec(&Body { token, secret }) {
            Ok(body) => body,
            Err(e) => return unavailable(format!("cannot encode the request: {e}")),
        };
        let request = Request::builder()
            .method(Method::POST)
            .uri(&self.endpoint)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(body)));
        let mut request = match request {
            Ok(request) => request,
            Err(e) => return unavailable(format!("cannot build the request: {e}")),
        };
        let span = conv::client_span(
            &Method::POST,
            request.uri(),
            "share-service",
            Some("authenticate"),
        );
        propagate::inject_span(&span, request.headers_mut());
        let verdict = self.exchange(request, &span, token).await;
        if let Verdict::Unavailable(reason, _) = &verdict {
            span.fail("unavailable", reason.clone());
        }
        span.end();
        verdict
    }

    async fn exchange(
        &self,
        request: Request<Full<Bytes>>,
        span: &trace::Span,
        token: &str,
    ) -> Verdict {
        let exchange = span.instrument(async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("share service: {e}"))?;
            let status = response.status();
            let retry_after = retry_after(response.headers());
            let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| format!("share service: reading the answer: {e}"))?
                .to_bytes();
            Ok::<_, String>((status, retry_after, body))
        });
        let (status, retry_after, body) = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(reason)) => return unavailable(reason),
            Err(_) => {
                return unavailable(format!(
                    "share service: no answer within {:?}",
                    self.timeout
                ));
            }
        };
        conv::record_client_status(span, status);
        match status {
            StatusCode::OK => self.accept(token, &body),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Verdict::Rejected(format!(
                "share service refused the secret ({status}{})",
                error_message(&body)
            )),
            StatusCode::NOT_FOUND => Verdict::Rejected(format!(
                "unknown public-share token ({status}{})",
                error_message(&body)
            )),
            _ => Verdict::Unavailable(
                format!("share service answered {status}{}", error_message(&body)),
                retry_after,
            ),
        }
    }

    /// Checks a 200 answer and prepares the user and scope of the guest's tokens.
    fn accept(&self, token: &str, body: &[u8]) -> Verdict {
        let answer: Answer = match serde_json::from_slice(body) {
            Ok(answer) => answer,
            Err(e) => {
                return unavailable(format!("share service answered an unreadable share: {e}"));
            }
        };
        let share = answer.share;
        if share.token != token {
            return unavailable("share service answered a share with another token".into());
        }
        if share.id.is_empty() || share.owner.id.is_empty() || share.owner.username.is_empty() {
            return unavailable("share service answered a share without id or owner".into());
        }
        let expiration = share.expiration.map(|t| t.0);
        if expiration.is_some_and(|end| end <= self.clock.now()) {
            return Verdict::Rejected("the public share has expired".into());
        }
        let resource_id = ResourceId {
            storage_id: share.resource_id.storage_id,
            opaque_id: share.resource_id.opaque_id,
            space_id: share.resource_id.space_id,
        };
        let scoped = ScopedPublicShare {
            token: share.token.clone(),
            resource_id: Some(resource_id.clone()),
        };
        let scope = match public_share_scope(&share.id, &scoped, share.role) {
            Ok(scope) => scope,
            Err(e) => return unavailable(format!("cannot build the share scope: {e}")),
        };
        let mut user = RevaUser {
            id: Some(RevaUserId {
                idp: share.owner.idp,
                opaque_id: share.owner.id,
                user_type: UserType(share.owner.user_type.unwrap_or(UserType::PRIMARY.0)),
            }),
            username: share.owner.username,
            mail: share.owner.mail,
            display_name: share.owner.display_name,
            groups: share.owner.groups,
            ..RevaUser::default()
        };
        user.set_public_share_role(share.role);
        Verdict::Accepted(Arc::new(ValidatedShare {
            id: share.id,
            token: share.token,
            role: share.role,
            resource_id,
            expiration,
            user,
            scope,
        }))
    }

    /// Mints the guest's token for `share` and keeps it with the verdict under `key`.
    fn mint(&self, key: &CacheKey, share: Arc<ValidatedShare>) -> ShareOutcome {
        let now = self.clock.now();
        if share.expiration.is_some_and(|end| end <= now) {
            return ShareOutcome::Rejected {
                reason: "the public share has expired".into(),
            };
        }
        let minted = self
            .minter
            .mint_until(&share.user, &share.scope, now, share.expiration)
            .map_err(|e| e.to_string())
            .and_then(|t| HeaderValue::try_from(t).map_err(|e| e.to_string()));
        match minted {
            Ok(token) => {
                // `iat` is whole seconds: count the lifetime from there.
                let lifetime = self.minter.lifetime();
                let renew_at = truncate_to_seconds(now) + (lifetime - lifetime / 4);
                let reuse_until = lock(&self.cache).keep_minted(key, token.clone(), renew_at, now);
                ShareOutcome::Accepted {
                    token,
                    share,
                    reuse_until,
                }
            }
            Err(e) => ShareOutcome::Unavailable {
                reason: format!("cannot mint the share token: {e}"),
                retry_after: None,
            },
        }
    }
}

fn unavailable(reason: String) -> Verdict {
    Verdict::Unavailable(reason, None)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The answer body of a 200 (docs/public-shares.md). Unknown fields are ignored.
#[derive(Deserialize)]
struct Answer {
    share: AnswerShare,
}

#[derive(Deserialize)]
struct AnswerShare {
    id: String,
    token: String,
    owner: AnswerOwner,
    #[serde(default)]
    resource_id: AnswerResourceId,
    role: PublicShareRole,
    #[serde(default)]
    expiration: Option<GoTime>,
}

#[derive(Deserialize)]
struct AnswerOwner {
    id: String,
    #[serde(default)]
    idp: String,
    username: String,
    #[serde(default)]
    display_name: String,
    #[serde(default)]
    mail: String,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default, rename = "type")]
    user_type: Option<i32>,
}

#[derive(Deserialize, Default)]
struct AnswerResourceId {
    #[serde(default)]
    storage_id: String,
    #[serde(default)]
    space_id: String,
    #[serde(default)]
    opaque_id: String,
}

/// `: <message>` from an `{"error":{"message":…}}` body, shortened; empty otherwise.
fn error_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct ErrorBody {
        error: ErrorMain,
    }
    #[derive(Deserialize)]
    struct ErrorMain {
        #[serde(default)]
        message: String,
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) if !e.error.message.is_empty() => {
            let message: String = e
                .error
                .message
                .chars()
                .filter(|c| !c.is_control())
                .take(200)
                .collect();
            format!(": {message}")
        }
        _ => String::new(),
    }
}

/// `Retry-After` in seconds (the HTTP-date form is ignored), at most an hour.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// The share token: header `public-token`, else query `public-token`. `Ok(None)` when neither is
/// there (or both are empty); an unreadable, oversized or repeated token is an error.
pub(crate) fn share_token(
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Option<String>, String> {
    let mut values = headers.get_all(PUBLIC_TOKEN).iter();
    if let Some(first) = values.next() {
        if values.next().is_some() {
            return Err("several public-token headers".into());
        }
        if !first.is_empty() {
            let token = first
                .to_str()
                .map_err(|_| "the public-token header is not visible ASCII".to_owned())?;
            return checked_credential("public-token", token.to_owned()).map(Some);
        }
    }
    match single_query_value(query, PUBLIC_TOKEN)? {
        Some(token) if !token.is_empty() => checked_credential("public-token", token).map(Some),
        _ => Ok(None),
    }
}

/// The share token of a request whose outcome depends on that token alone, so that a worker may
/// memoise it (`layers::authenticate`): a path the share authenticator applies to, exactly one
/// non-empty `public-token` header, no `Authorization` (no password, and no other scheme that
/// decides first) and no `signature` query parameter (as the query parser reads names, so an
/// encoded name counts). `None` for every other request: it takes the full path.
pub fn memo_token<'a>(path: &str, headers: &'a HeaderMap, query: Option<&str>) -> Option<&'a str> {
    if headers.contains_key(header::AUTHORIZATION) {
        return None;
    }
    let mut values = headers.get_all(PUBLIC_TOKEN).iter();
    let token = values.next()?.to_str().ok()?;
    if values.next().is_some() || token.is_empty() || token.len() > MAX_CREDENTIAL_LEN {
        return None;
    }
    if !(is_public_path(path) || TOKEN_PATH_PREFIXES.iter().any(|p| path.starts_with(p))) {
        return None;
    }
    if query.is_some_and(|q| Query::first_raw(q, "signature").is_some()) {
        return None;
    }
    Some(token)
}

/// The secret: query `signature` (with the required `expiration`), else the password of Basic
/// credentials (the user name is ignored), else none.
fn share_secret(headers: &HeaderMap, query: Option<&str>) -> Result<Secret, String> {
    if let Some(signature) = single_query_value(query, "signature")?.filter(|s| !s.is_empty()) {
        let expiration = single_query_value(query, "expiration")?
            .filter(|e| !e.is_empty())
            .ok_or_else(|| "a share signature needs an expiration".to_owned())?;
        return Ok(Secret::Signature {
            signature: checked_credential("signature", signature)?,
            expiration: checked_credential("expiration", expiration)?,
        });
    }
    match basic_password(headers)? {
        Some(password) => Ok(Secret::Password {
            password: checked_credential("password", password)?,
        }),
        None => Ok(Secret::None),
    }
}

fn checked_credential(what: &str, value: String) -> Result<String, String> {
    if value.len() > MAX_CREDENTIAL_LEN {
        return Err(format!(
            "the {what} is longer than {MAX_CREDENTIAL_LEN} bytes"
        ));
    }
    Ok(value)
}

/// The password of `Authorization: Basic base64(user:password)`; `None` without (well-formed)
/// Basic credentials, as Go's `Request.BasicAuth` reads them.
fn basic_password(headers: &HeaderMap) -> Result<Option<String>, String> {
    let Some((_, password)) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| decode_basic(v.as_bytes()))
    else {
        return Ok(None);
    };
    String::from_utf8(password)
        .map(Some)
        .map_err(|_| "the Basic password is not valid UTF-8".to_owned())
}

/// The decoded value of query parameter `name` (Go `url.ParseQuery` rules: `+` is a space, pairs
/// with `;` or a bad escape are skipped). A parameter given twice, or not UTF-8, is an error.
fn single_query_value(query: Option<&str>, name: &str) -> Result<Option<String>, String> {
    let parsed = Query::parse(query.unwrap_or(""));
    let mut values = parsed.all(name);
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(format!("query parameter {name} given more than once"));
    }
    String::from_utf8(value.to_vec())
        .map(Some)
        .map_err(|_| format!("query parameter {name} is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_shared::auth::password::BasicCredentials;
    use gatehouse_shared::store::ManualClock;
    use gatehouse_shared::token::{
        DEFAULT_LEEWAY, PUBLIC_SHARE_SCOPE_PREFIX, ScopeRole, verify, verify_at,
    };
    use gatehouse_tests::shares::{Failure, FixtureShare, ShareFixture};

    const SECRET: &str = "share-test-secret";

    fn config(url: &str) -> Config {
        let mut config = Config::default();
        config.public_shares.url = url.into();
        config.public_shares.timeout = gatehouse_shared::config::GoDuration::millis(300);
        config.token_manager.jwt_secret = SECRET.into();
        config
    }

    async fn setup() -> (ShareFixture, PublicShareAuthenticator) {
        let fixture = ShareFixture::start().await;
        fixture.add_share(FixtureShare::new("s-open", "open"));
        fixture.add_share(
            FixtureShare::new("s-pw", "sharetoken")
                .with_password("examples3cr3t")
                .with_signature("examplesignature", "exampleexpiration")
                .with_role("editor"),
        );
        let authn = PublicShareAuthenticator::from_config(&config(&fixture.url())).unwrap();
        (fixture, authn)
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn basic(password: &str) -> String {
        BasicCredentials {
            username: "public".into(),
            password: password.into(),
        }
        .header_value()
    }

    const SHARE_PATH: &str = "/dav/public-files/sharetoken/file.txt";

    fn accepted(outcome: ShareOutcome) -> (HeaderValue, Arc<ValidatedShare>) {
        match outcome {
            ShareOutcome::Accepted { token, share, .. } => (token, share),
            other => panic!("expected Accepted, got {other:?}"),
        }
    }

    fn reuse_until(outcome: &ShareOutcome) -> SystemTime {
        match outcome {
            ShareOutcome::Accepted { reuse_until, .. } => *reuse_until,
            other => panic!("expected Accepted, got {other:?}"),
        }
    }

    fn is_rejected(outcome: &ShareOutcome) -> bool {
        matches!(outcome, ShareOutcome::Rejected { .. })
    }

    #[tokio::test]
    async fn not_applicable_off_public_paths_and_on_signing_key_paths() {
        let (fixture, authn) = setup().await;
        let token = headers(&[(PUBLIC_TOKEN, "sharetoken")]);
        for path in [
            "/remote.php/dav/files/einstein/x",
            "/graph/v1.0/me",
            "/ocs/v1.php/cloud/user/signing-key",
            "/ocs/v2.php/cloud/user/signing-key",
            "/archive",
            "/app/list",
        ] {
            let outcome = authn.authenticate(path, &token, None).await;
            assert!(
                matches!(outcome, ShareOutcome::NotApplicable),
                "{path}: {outcome:?}"
            );
        }
        assert_eq!(fixture.count(), 0);
        assert_eq!(authn.service_calls(), 0);
    }

    #[tokio::test]
    async fn public_path_without_token_is_anonymous() {
        let (fixture, authn) = setup().await;
        for path in [SHARE_PATH, "/ocs/v2.php/cloud/capabilities", "/ocm/shares"] {
            let outcome = authn
                .authenticate(path, &HeaderMap::new(), Some("a=b"))
                .await;
            assert!(
                matches!(outcome, ShareOutcome::Anonymous),
                "{path}: {outcome:?}"
            );
        }
        let empty = headers(&[(PUBLIC_TOKEN, "")]);
        let outcome = authn
            .authenticate(SHARE_PATH, &empty, Some("public-token="))
            .await;
        assert!(matches!(outcome, ShareOutcome::Anonymous), "{outcome:?}");
        assert_eq!(fixture.count(), 0);
    }

    #[tokio::test]
    async fn archiver_and_app_paths_need_a_token() {
        let (fixture, authn) = setup().await;
        for path in ["/archiver", "/app/open", "/app/new"] {
            let outcome = authn.authenticate(path, &HeaderMap::new(), None).await;
            assert!(matches!(outcome, ShareOutcome::NotApplicable), "{path}");
            let outcome = authn
                .authenticate(path, &HeaderMap::new(), Some("public-token=open&id=1"))
                .await;
            let (_, share) = accepted(outcome);
            assert_eq!(share.id, "s-open");
        }
        // Three paths, one token and secret: the answer is remembered after the first call.
        assert_eq!(fixture.count(), 1);
    }

    #[tokio::test]
    async fn password_from_basic_is_sent_and_accepted() {
        let (fixture, authn) = setup().await;
        let h = headers(&[
            (PUBLIC_TOKEN, "sharetoken"),
            ("authorization", &basic("examples3cr3t")),
        ]);
        let (_, share) = accepted(authn.authenticate(SHARE_PATH, &h, None).await);
        assert_eq!(share.role, PublicShareRole::Editor);
        let call = &fixture.calls()[0];
        assert_eq!(call.path, AUTHENTICATE_PATH);
        assert_eq!(call.content_type.as_deref(), Some("application/json"));
        assert_eq!(
            call.body,
            serde_json::json!({"token": "sharetoken",
                "secret": {"type": "password", "password": "examples3cr3t"}})
        );
    }

    #[tokio::test]
    async fn signature_from_the_query_is_sent_and_needs_an_expiration() {
        let (fixture, authn) = setup().await;
        let query =
            "public-token=sharetoken&signature=examplesignature&expiration=exampleexpiration";
        // The signature wins over Basic credentials.
        let h = headers(&[("authorization", &basic("wrong"))]);
        accepted(authn.authenticate(SHARE_PATH, &h, Some(query)).await);
        assert_eq!(
            fixture.calls()[0].body["secret"],
            serde_json::json!({"type": "signature", "signature": "examplesignature",
                "expiration": "exampleexpiration"})
        );

        let outcome = authn
            .authenticate(
                SHARE_PATH,
                &HeaderMap::new(),
                Some("public-token=sharetoken&signature=x"),
            )
            .await;
        assert!(is_rejected(&outcome), "{outcome:?}");
        assert_eq!(fixture.count(), 1);
    }

    #[tokio::test]
    async fn no_secret_is_sent_as_none() {
        let (fixture, authn) = setup().await;
        let h = headers(&[(PUBLIC_TOKEN, "open"), ("authorization", "Bearer abc")]);
        accepted(authn.authenticate(SHARE_PATH, &h, None).await);
        assert_eq!(fixture.calls()[0].secret_type(), Some("none"));

        // A protected share without a secret is refused.
        let h = headers(&[(PUBLIC_TOKEN, "sharetoken")]);
        let outcome = authn.authenticate(SHARE_PATH, &h, None).await;
        assert!(is_rejected(&outcome), "{outcome:?}");
    }

    #[tokio::test]
    async fn wrong_secret_and_unknown_token_are_rejected() {
        let (fixture, authn) = setup().await;
        let wrong = headers(&[
            (PUBLIC_TOKEN, "sharetoken"),
            ("authorization", &basic("nope")),
        ]);
        let outcome = authn.authenticate(SHARE_PATH, &wrong, None).await;
        assert!(is_rejected(&outcome), "{outcome:?}");

        let unknown = headers(&[(PUBLIC_TOKEN, "no-such-token")]);
        match authn.authenticate(SHARE_PATH, &unknown, None).await {
            ShareOutcome::Rejected { reason } => assert!(reason.contains("unknown"), "{reason}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(fixture.count(), 2);
    }

    #[tokio::test]
    async fn service_failures_are_unavailable_and_not_remembered() {
        let (fixture, authn) = setup().await;
        let h = headers(&[(PUBLIC_TOKEN, "open")]);

        fixture.set_failure(Failure::Status(500, None));
        let outcome = authn.authenticate(SHARE_PATH, &h, None).await;
        assert!(
            matches!(
                outcome,
                ShareOutcome::Unavailable {
                    retry_after: None,
                    ..
                }
            ),
            "{outcome:?}"
        );

        fixture.set_failure(Failure::Status(503, Some(7)));
        match authn.authenticate(SHARE_PATH, &h, None).await {
            ShareOutcome::Unavailable { retry_after, .. } => {
                assert_eq!(retry_after, Some(Duration::from_secs(7)));
            }
            other => panic!("{other:?}"),
        }

        fixture.set_failure(Failure::Status(400, None));
        let outcome = authn.authenticate(SHARE_PATH, &h, None).await;
        assert!(
            matches!(outcome, ShareOutcome::Unavailable { .. }),
            "{outcome:?}"
        );

        fixture.set_failure(Failure::Body(r#"{"share": {"id": "x"}}"#.into()));
        let outcome = authn.authenticate(SHARE_PATH, &h, None).await;
        assert!(
            matches!(outcome, ShareOutcome::Unavailable { .. }),
            "{outcome:?}"
        );

        // A share for another token is not believed.
        fixture.set_failure(Failure::Body(
            r#"{"share": {"id": "x", "token": "other", "owner": {"id": "u", "username": "u"},
                "role": "viewer"}}"#
                .into(),
        ));
        let outcome = authn.authenticate(SHARE_PATH, &h, None).await;
        assert!(
            matches!(outcome, ShareOutcome::Unavailable { .. }),
            "{outcome:?}"
        );

        fixture.set_failure(Failure::Hang);
        let started = std::time::Instant::now();
        let outcome = authn.authenticate(SHARE_PATH, &h, None).await;
        assert!(
            matches!(outcome, ShareOutcome::Unavailable { .. }),
            "{outcome:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));

        assert_eq!(fixture.count(), 6);
        fixture.set_failure(Failure::None);
        accepted(authn.authenticate(SHARE_PATH, &h, None).await);
        assert_eq!(fixture.count(), 7);
    }

    #[tokio::test]
    async fn unreachable_service_is_unavailable() {
        let fixture = ShareFixture::start().await;
        let url = fixture.url();
        drop(fixture);
        let authn = PublicShareAuthenticator::from_config(&config(&url)).unwrap();
        let h = headers(&[(PUBLIC_TOKEN, "open")]);
        let outcome = authn.authenticate(SHARE_PATH, &h, None).await;
        assert!(
            matches!(outcome, ShareOutcome::Unavailable { .. }),
            "{outcome:?}"
        );
        assert_eq!(authn.service_calls(), 1);
    }

    #[tokio::test]
    async fn without_a_share_service_tokens_are_rejected() {
        let authn = PublicShareAuthenticator::from_config(&config("")).unwrap();
        assert!(!authn.is_enabled());
        let h = headers(&[(PUBLIC_TOKEN, "open")]);
        let outcome = authn.authenticate(SHARE_PATH, &h, None).await;
        assert!(is_rejected(&outcome), "{outcome:?}");
        let outcome = authn.authenticate("/archiver", &h, None).await;
        assert!(is_rejected(&outcome), "{outcome:?}");
        let outcome = authn
            .authenticate(SHARE_PATH, &HeaderMap::new(), None)
            .await;
        assert!(matches!(outcome, ShareOutcome::Anonymous), "{outcome:?}");
    }

    #[test]
    fn setup_errors() {
        for url in ["ftp://x", "http://", "not a url"] {
            assert!(
                matches!(
                    PublicShareAuthenticator::from_config(&config(url)),
                    Err(PublicShareSetupError::InvalidUrl(_))
                ),
                "{url}"
            );
        }
        let mut no_secret = config("http://127.0.0.1:1");
        no_secret.token_manager.jwt_secret.clear();
        assert!(matches!(
            PublicShareAuthenticator::from_config(&no_secret),
            Err(PublicShareSetupError::Token(TokenError::EmptySecret))
        ));
    }

    #[tokio::test]
    async fn answers_are_remembered_per_token_and_secret() {
        let (fixture, authn) = setup().await;
        let clock = Arc::new(ManualClock::default());
        let authn = authn.with_clock(clock.clone());
        let good = headers(&[
            (PUBLIC_TOKEN, "sharetoken"),
            ("authorization", &basic("examples3cr3t")),
        ]);
        accepted(authn.authenticate(SHARE_PATH, &good, None).await);
        accepted(authn.authenticate(SHARE_PATH, &good, None).await);
        assert_eq!(fixture.count(), 1);

        // Another secret for the same token is another key.
        let wrong = headers(&[
            (PUBLIC_TOKEN, "sharetoken"),
            ("authorization", &basic("guess")),
        ]);
        assert!(is_rejected(
            &authn.authenticate(SHARE_PATH, &wrong, None).await
        ));
        assert_eq!(fixture.count(), 2);

        // The rejection is remembered for five seconds, then asked again.
        clock.advance(Duration::from_secs(4));
        assert!(is_rejected(
            &authn.authenticate(SHARE_PATH, &wrong, None).await
        ));
        assert_eq!(fixture.count(), 2);
        clock.advance(Duration::from_secs(2));
        assert!(is_rejected(
            &authn.authenticate(SHARE_PATH, &wrong, None).await
        ));
        assert_eq!(fixture.count(), 3);

        // The acceptance lasts thirty seconds: a share removed meanwhile still works until then.
        fixture.remove_share("sharetoken");
        clock.advance(Duration::from_secs(23));
        accepted(authn.authenticate(SHARE_PATH, &good, None).await);
        assert_eq!(fixture.count(), 3);
        clock.advance(Duration::from_secs(2));
        assert!(is_rejected(
            &authn.authenticate(SHARE_PATH, &good, None).await
        ));
        assert_eq!(fixture.count(), 4);
        assert_eq!(authn.service_calls(), 4);
    }

    #[tokio::test]
    async fn concurrent_requests_share_one_call() {
        let (fixture, authn) = setup().await;
        fixture.set_delay(Duration::from_millis(100));
        let authn = Arc::new(authn);
        let h = headers(&[(PUBLIC_TOKEN, "open")]);
        let waiters: Vec<_> = (0..8)
            .map(|_| {
                let authn = authn.clone();
                let h = h.clone();
                tokio::spawn(async move { authn.authenticate(SHARE_PATH, &h, None).await })
            })
            .collect();
        for waiter in waiters {
            accepted(waiter.await.unwrap());
        }
        assert_eq!(fixture.count(), 1);
    }

    #[tokio::test]
    async fn minted_token_carries_owner_and_share_scope() {
        let (_fixture, authn) = setup().await;
        let h = headers(&[
            (PUBLIC_TOKEN, "sharetoken"),
            ("authorization", &basic("examples3cr3t")),
        ]);
        let (token, _) = accepted(authn.authenticate(SHARE_PATH, &h, None).await);
        let claims = verify(SECRET.as_bytes(), token.to_str().unwrap(), DEFAULT_LEEWAY).unwrap();
        assert_eq!(claims.iss, "https://idp.example.com");
        assert_eq!(claims.user.username, "einstein");
        let id = claims.user.id.as_ref().unwrap();
        assert_eq!(id.opaque_id, "4c510ada-c86b-4815-8820-42cdf82c3d51");
        assert_eq!(id.user_type, UserType::PRIMARY);
        assert_eq!(
            claims.user.public_share_role(),
            Some(PublicShareRole::Editor)
        );
        assert_eq!(claims.exp - claims.iat, 3600);

        let key = format!("{PUBLIC_SHARE_SCOPE_PREFIX}s-pw");
        assert_eq!(claims.scope.keys().collect::<Vec<_>>(), vec![&key]);
        let scope = &claims.scope[&key];
        assert_eq!(scope.role, ScopeRole::EDITOR);
        let resource: serde_json::Value =
            serde_json::from_slice(&scope.resource.as_ref().unwrap().value).unwrap();
        assert_eq!(
            resource,
            serde_json::json!({"token": "sharetoken", "resourceId": {
                "storageId": "storage-1", "spaceId": "space-1", "opaqueId": "resource-of-s-pw"}})
        );
    }

    #[tokio::test]
    async fn the_minted_token_is_reused_until_a_quarter_of_its_lifetime_is_left() {
        let fixture = ShareFixture::start().await;
        fixture.add_share(FixtureShare::new("s-open", "open"));
        let mut config = config(&fixture.url());
        config.token_manager.token_lifetime = gatehouse_shared::config::GoDuration::secs(20);
        // Whole seconds, as `iat` is.
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let clock = Arc::new(ManualClock::new(start));
        let authn = PublicShareAuthenticator::from_config(&config)
            .unwrap()
            .with_clock(clock.clone());
        let h = headers(&[(PUBLIC_TOKEN, "open")]);
        let iat = |t: &HeaderValue| {
            verify_at(
                SECRET.as_bytes(),
                t.to_str().unwrap(),
                Duration::ZERO,
                start,
            )
            .unwrap()
            .iat
        };

        let outcome = authn.authenticate(SHARE_PATH, &h, None).await;
        assert_eq!(reuse_until(&outcome), start + Duration::from_secs(15));
        let (first, _) = accepted(outcome);
        clock.advance(Duration::from_millis(14_999));
        let outcome = authn.authenticate(SHARE_PATH, &h, None).await;
        assert_eq!(reuse_until(&outcome), start + Duration::from_secs(15));
        let (again, _) = accepted(outcome);
        assert_eq!(again, first, "15 s of 20 not yet gone: the same token");

        clock.advance(Duration::from_millis(1));
        let outcome = authn.authenticate(SHARE_PATH, &h, None).await;
        assert_eq!(
            reuse_until(&outcome),
            start + ACCEPTED_TTL,
            "the verdict ends before the renewed token's renewal"
        );
        let (renewed, _) = accepted(outcome);
        assert_ne!(renewed, first);
        assert_eq!(iat(&renewed), iat(&first) + 15);
        assert_eq!(
            fixture.count(),
            1,
            "renewing the token does not ask the service"
        );

        // Another secret is another entry: its own verdict, its own token.
        let other = headers(&[(PUBLIC_TOKEN, "open"), ("authorization", &basic("x"))]);
        accepted(authn.authenticate(SHARE_PATH, &other, None).await);
        assert_eq!(fixture.count(), 2);

        // A new verdict starts without a token.
        clock.advance(ACCEPTED_TTL);
        let (fresh, _) = accepted(authn.authenticate(SHARE_PATH, &h, None).await);
        assert_eq!(fixture.count(), 3);
        assert_eq!(iat(&fresh), iat(&renewed) + ACCEPTED_TTL.as_secs());
    }

    #[tokio::test]
    async fn share_expiry_caps_the_token_and_the_cache() {
        let fixture = ShareFixture::start().await;
        let start = SystemTime::now();
        let clock = Arc::new(ManualClock::new(start));
        let end = start + Duration::from_secs(20);
        let expiration = serde_json::to_value(GoTime(end)).unwrap();
        fixture.add_share(
            FixtureShare::new("s-soon", "soon").with_expiration(expiration.as_str().unwrap()),
        );
        let authn = PublicShareAuthenticator::from_config(&config(&fixture.url()))
            .unwrap()
            .with_clock(clock.clone());
        let h = headers(&[(PUBLIC_TOKEN, "soon")]);
        let outcome = authn.authenticate(SHARE_PATH, &h, None).await;
        assert_eq!(
            reuse_until(&outcome),
            end,
            "reused no longer than the share lasts"
        );
        let (token, share) = accepted(outcome);
        assert_eq!(share.expiration, Some(end));
        let claims = verify_at(
            SECRET.as_bytes(),
            token.to_str().unwrap(),
            Duration::ZERO,
            start,
        )
        .unwrap();
        let end_secs = end
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert_eq!(claims.exp, end_secs);

        // Remembered until the share ends, not for the full thirty seconds.
        clock.advance(Duration::from_secs(19));
        accepted(authn.authenticate(SHARE_PATH, &h, None).await);
        assert_eq!(fixture.count(), 1);
        clock.advance(Duration::from_secs(2));
        assert!(is_rejected(&authn.authenticate(SHARE_PATH, &h, None).await));
    }

    #[tokio::test]
    async fn header_token_wins_and_ambiguous_tokens_are_rejected() {
        let (fixture, authn) = setup().await;
        let h = headers(&[(PUBLIC_TOKEN, "open")]);
        let (_, share) = accepted(
            authn
                .authenticate(SHARE_PATH, &h, Some("public-token=unknown"))
                .await,
        );
        assert_eq!(share.token, "open");
        assert_eq!(fixture.calls()[0].body["token"], "open");

        let twice = headers(&[(PUBLIC_TOKEN, "open"), (PUBLIC_TOKEN, "sharetoken")]);
        assert!(is_rejected(
            &authn.authenticate(SHARE_PATH, &twice, None).await
        ));
        let outcome = authn
            .authenticate(
                SHARE_PATH,
                &HeaderMap::new(),
                Some("public-token=a&public-token=b"),
            )
            .await;
        assert!(is_rejected(&outcome), "{outcome:?}");
        let long = format!("public-token={}", "x".repeat(MAX_CREDENTIAL_LEN + 1));
        assert!(is_rejected(
            &authn
                .authenticate(SHARE_PATH, &HeaderMap::new(), Some(&long))
                .await
        ));
        assert_eq!(fixture.count(), 1);
    }

    #[test]
    fn only_requests_decided_by_the_share_token_alone_may_be_memoised() {
        let token = |path: &str, h: &[(&str, &str)], query: Option<&str>| {
            memo_token(path, &headers(h), query).map(str::to_owned)
        };
        let t = [(PUBLIC_TOKEN, "tok")];
        assert_eq!(token(SHARE_PATH, &t, None).as_deref(), Some("tok"));
        assert_eq!(token("/archiver", &t, Some("id=1")).as_deref(), Some("tok"));
        assert_eq!(token(SHARE_PATH, &t, Some("signature=")), None);
        assert_eq!(token(SHARE_PATH, &t, Some("sign%61ture=x")), None);
        assert_eq!(token("/graph/v1.0/me", &t, None), None, "not a share path");
        let with_password = [
            (PUBLIC_TOKEN, "tok"),
            ("authorization", "Basic cHVibGljOng="),
        ];
        assert_eq!(token(SHARE_PATH, &with_password, None), None);
        let twice = [(PUBLIC_TOKEN, "a"), (PUBLIC_TOKEN, "b")];
        assert_eq!(token(SHARE_PATH, &twice, None), None);
        assert_eq!(
            token(SHARE_PATH, &[(PUBLIC_TOKEN, "")], Some("public-token=q")),
            None
        );
        assert_eq!(
            token(SHARE_PATH, &[], Some("public-token=q")),
            None,
            "query token"
        );
        let long = "x".repeat(MAX_CREDENTIAL_LEN + 1);
        assert_eq!(token(SHARE_PATH, &[(PUBLIC_TOKEN, &long)], None), None);
    }

    #[test]
    fn query_and_basic_parsing() {
        assert_eq!(
            single_query_value(Some("a=1&public-token=x%2By+z&b"), "public-token"),
            Ok(Some("x+y z".into()))
        );
        assert_eq!(
            single_query_value(Some("public-token=%zz"), "public-token"),
            Ok(None)
        );
        assert_eq!(
            single_query_value(Some("public-token=a;b"), "public-token"),
            Ok(None)
        );
        assert_eq!(single_query_value(None, "x"), Ok(None));
        assert!(single_query_value(Some("x=%ff"), "x").is_err());

        let pw = |v: &str| basic_password(&headers(&[("authorization", v)]));
        assert_eq!(pw(&basic("s3cr:et")), Ok(Some("s3cr:et".into())));
        assert_eq!(pw("basic cHVibGljOg=="), Ok(Some(String::new())));
        assert_eq!(pw("Basic cHVibGljOg"), Ok(None));
        assert_eq!(pw("Basic bm9jb2xvbg=="), Ok(None));
        assert_eq!(pw("Bearer x"), Ok(None));
        assert_eq!(pw("Basic !!!!"), Ok(None));
        for n in 0..7 {
            let password = "abcdefg"[..n].to_owned();
            assert_eq!(pw(&basic(&password)), Ok(Some(password)));
        }
    }

    #[test]
    fn cache_keys_are_keyed_per_node_and_separate_fields() {
        let service = || {
            Service::new(
                "http://127.0.0.1:1/x".into(),
                Duration::from_secs(1),
                client_config(false, None).unwrap(),
                Minter::new(b"k", Duration::from_secs(60)).unwrap(),
            )
        };
        let (service, other_node) = (service(), service());
        let pw = |p: &str| Secret::Password { password: p.into() };
        let a = service.cache_key("tok", &pw("hunter2"));
        assert_eq!(a, service.cache_key("tok", &pw("hunter2")));
        assert_ne!(
            a,
            other_node.cache_key("tok", &pw("hunter2")),
            "another node's key"
        );
        assert_ne!(a, service.cache_key("tok", &pw("hunter3")));
        assert_ne!(a, service.cache_key("tok", &Secret::None));
        assert_ne!(
            service.cache_key("ab", &pw("c")),
            service.cache_key("a", &pw("bc"))
        );
        let sig = |s: &str, e: &str| Secret::Signature {
            signature: s.into(),
            expiration: e.into(),
        };
        assert_ne!(
            service.cache_key("t", &sig("ab", "c")),
            service.cache_key("t", &sig("a", "bc"))
        );
        assert_ne!(
            service.cache_key("t", &sig("", "")),
            service.cache_key("t", &pw(""))
        );
    }

    #[test]
    fn cache_is_bounded() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let mut cache = Cache {
            entries: HashMap::new(),
            capacity: 3,
        };
        for (i, ttl) in [30, 5, 30, 30].into_iter().enumerate() {
            cache.put(
                [i as u8; 32],
                Verdict::Rejected(String::new()),
                Duration::from_secs(ttl),
                now,
            );
        }
        assert_eq!(cache.entries.len(), 3);
        assert!(
            cache.get(&[1; 32], now).is_none(),
            "the soonest to expire went first"
        );
        assert!(cache.get(&[3; 32], now).is_some());
        assert!(
            cache.get(&[0; 32], now - Duration::from_secs(1)).is_none(),
            "clock went back"
        );
    }
}
