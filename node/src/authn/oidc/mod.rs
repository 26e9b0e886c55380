//! The OIDC bearer authenticator (spec §4.1): from `Authorization: Bearer <token>` to the claims
//! of the user, or a reason to answer 401 (token bad) or 503 (provider unreachable).
//!
//! The order of work is chosen so that the identity provider sees as little traffic as possible:
//!
//! 1. tokens rejected in the last seconds are turned away from memory ([`negative`]);
//! 2. the shared user-info cache (key: SHAKE-256 of the token, value: msgpack claims, both as
//!    oCIS writes them) answers known tokens without any provider call;
//! 3. on a miss, concurrent requests with the same token on this node wait for one resolution
//!    (single flight), which fetches discovery and keys lazily, verifies the token, calls
//!    userinfo, writes the cache (and the `sid` session index for back-channel logout) and only
//!    then answers, so the next request on any node is a cache hit.
//!
//! Back-channel logout ([`sessions`]) adds to the miss path only: the token's `sid` and `sub` are
//! checked against logout markers (two reads the near-cache answers locally), and the token is
//! added to its subject's session list. Cache hits are not affected.
//!
//! The authenticator is shared by the node's worker runtimes (one current-thread tokio runtime
//! per core), so it uses only runtime-independent synchronisation (std mutexes held without
//! awaiting, tokio's `sync` types, a `Shared` future polled by whichever waiter runs) and never
//! spawns a task on the request path. The JWKS background refresh is the one spawned task.
//! Provider health (back-off, `Retry-After`) is kept in [`client`].

pub mod client;
mod negative;
pub mod sessions;

pub use client::IdpObserver;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use gatehouse_shared::auth::token_hash::token_cache_key;
use gatehouse_shared::config::Config;
use gatehouse_shared::oidc::userinfo::is_jwt_content_type;
use gatehouse_shared::oidc::{
    Cached, Claims, Discovery, KeySet, Logout, MAX_TOKEN_LEN, UserinfoError, VerifyError,
    VerifyPolicy, discovery_url, encode_claims, merge_claims, parse_userinfo, read_cached, verify,
    verify_logout_token,
};
use gatehouse_shared::store::{Clock, Store, StoreError, SystemClock};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::client::{CallError, IdpClient, RawResponse};
use self::negative::NegativeCache;
use self::sessions::{EndedSession, SessionIds};
use crate::proxy::tls::UpstreamTlsError;

/// How access tokens are checked before userinfo is asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyMethod {
    /// Signature, time window, issuer and audience against the provider's JWKS.
    Jwt,
    /// No check of the token itself; userinfo decides.
    None,
    /// A configured value that is neither; refused by [`OidcAuthenticator::new`].
    Other(String),
}

/// Everything the authenticator takes from the configuration, plus limits that are fixed in
/// production and shortened by tests.
#[derive(Debug, Clone)]
pub struct OidcSettings {
    pub issuer: String,
    pub insecure: bool,
    pub verify_method: VerifyMethod,
    /// Audience allow-list, trimmed, empty values dropped; empty disables the check.
    pub audiences: Vec<String>,
    pub skip_user_info: bool,
    pub jwks_refresh_interval: Duration,
    pub jwks_refresh_timeout: Duration,
    pub jwks_refresh_limit: Duration,
    pub jwks_refresh_unknown_kid: bool,
    /// Lifetime of cached claims for tokens without `exp`.
    pub user_info_ttl: Duration,
    /// Deadline of one discovery or userinfo call (connect, answer and body).
    pub request_timeout: Duration,
    pub max_body: usize,
    pub negative_ttl: Duration,
    pub negative_capacity: usize,
    /// How long a back-channel logout keeps refusing the tokens it ended: the longest an access
    /// token issued before the logout may stay valid.
    pub logout_marker_ttl: Duration,
}

/// Default of [`OidcSettings::logout_marker_ttl`]: longer than any access-token lifetime seen
/// in practice (minutes to an hour).
pub const LOGOUT_MARKER_TTL: Duration = Duration::from_secs(24 * 3600);

impl OidcSettings {
    pub fn from_config(c: &Config) -> Self {
        let o = &c.oidc;
        let verify_method = match o.access_token_verify_method.as_str() {
            "jwt" => VerifyMethod::Jwt,
            "none" => VerifyMethod::None,
            other => VerifyMethod::Other(other.to_owned()),
        };
        Self {
            issuer: o.issuer.clone(),
            insecure: o.insecure,
            verify_method,
            audiences: o
                .access_token_verify_aud
                .iter()
                .map(|a| a.trim().to_owned())
                .filter(|a| !a.is_empty())
                .collect(),
            skip_user_info: o.skip_user_info,
            jwks_refresh_interval: Duration::from_secs(o.jwks.refresh_interval.saturating_mul(60)),
            // Zero is keyfunc's (oCIS's JWKS library) default of one minute.
            jwks_refresh_timeout: Duration::from_secs(match o.jwks.refresh_timeout {
                0 => 60,
                t => t,
            }),
            jwks_refresh_limit: Duration::from_secs(o.jwks.refresh_limit),
            jwks_refresh_unknown_kid: o.jwks.refresh_unknown_kid,
            user_info_ttl: o.user_info_cache.ttl.as_duration(),
            request_timeout: o.request_timeout.as_duration(),
            max_body: 1024 * 1024,
            negative_ttl: Duration::from_secs(10),
            negative_capacity: 10_000,
            logout_marker_ttl: LOGOUT_MARKER_TTL,
        }
    }
}

/// A bearer token that was accepted.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub claims: Arc<Claims>,
    /// The token was not in the cache: exactly one of the requests that resolved it sees `true`
    /// (the trigger of the `UserSignedIn` event).
    pub new_session: bool,
    /// The user-info cache key of the token (88 characters).
    pub cache_key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OidcError {
    /// The token is not acceptable: 401.
    #[error("bearer token rejected: {reason}")]
    Rejected { reason: String },
    /// The identity provider could not be asked: 503 (504 when it did not answer in time), with
    /// `Retry-After` when known.
    #[error("identity provider unavailable: {reason}")]
    Unavailable {
        reason: String,
        retry_after: Option<Duration>,
        timed_out: bool,
    },
}

impl OidcError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, OidcError::Unavailable { .. })
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            OidcError::Unavailable { retry_after, .. } => *retry_after,
            OidcError::Rejected { .. } => None,
        }
    }

    fn rejected(reason: impl Into<String>) -> Self {
        OidcError::Rejected {
            reason: reason.into(),
        }
    }
}

/// Why the authenticator cannot be built. Not retryable: the configuration must change.
#[derive(Debug, thiserror::Error)]
pub enum OidcSetupError {
    #[error("oidc.issuer is empty")]
    NoIssuer,
    #[error("oidc.access_token_verify_method {0:?}: expected \"jwt\" or \"none\"")]
    VerifyMethod(String),
    #[error(
        "oidc.access_token_verify_method \"none\" together with oidc.skip_user_info would accept any bearer token"
    )]
    AcceptsAnyToken,
    #[error("OIDC client: {0}")]
    Tls(#[from] UpstreamTlsError),
}

/// Cheap to clone; all clones share caches, keys and in-flight resolutions.
#[derive(Clone)]
pub struct OidcAuthenticator {
    inner: Arc<Inner>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for OidcAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcAuthenticator")
            .field("issuer", &self.inner.settings.issuer)
            .field("verify_method", &self.inner.settings.verify_method)
            .finish_non_exhaustive()
    }
}

type Resolution = Result<Arc<Claims>, OidcError>;

struct Flight {
    id: u64,
    future: Shared<BoxFuture<'static, Resolution>>,
    waiters: usize,
    /// Set by the first waiter that receives the claims; that one reports `new_session`.
    claimed: Arc<AtomicBool>,
}

#[derive(Default)]
struct KeyState {
    set: Option<Arc<KeySet>>,
    /// Incremented on every successful fetch.
    generation: u64,
    last_unknown_kid_refresh: Option<Instant>,
}

struct Inner {
    settings: OidcSettings,
    cache: Arc<dyn Store>,
    http: IdpClient,
    discovery: tokio::sync::OnceCell<Arc<Discovery>>,
    keys: Mutex<KeyState>,
    /// Serialises JWKS fetches so that a burst of unknown kids causes one fetch.
    refresh: tokio::sync::Mutex<()>,
    flights: Mutex<HashMap<String, Flight>>,
    next_flight: AtomicU64,
    negative: Mutex<NegativeCache>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl OidcAuthenticator {
    pub fn new(settings: OidcSettings, cache: Arc<dyn Store>) -> Result<Self, OidcSetupError> {
        Self::observed(settings, cache, None)
    }

    /// Like [`OidcAuthenticator::new`], reporting every call to the provider to `observer`.
    pub fn observed(
        settings: OidcSettings,
        cache: Arc<dyn Store>,
        observer: Option<Arc<dyn IdpObserver>>,
    ) -> Result<Self, OidcSetupError> {
        if settings.issuer.is_empty() {
            return Err(OidcSetupError::NoIssuer);
        }
        match &settings.verify_method {
            VerifyMethod::Other(m) => return Err(OidcSetupError::VerifyMethod(m.clone())),
            VerifyMethod::None if settings.skip_user_info => {
                return Err(OidcSetupError::AcceptsAnyToken);
            }
            _ => {}
        }
        if settings.insecure {
            tracing::warn!(
                "oidc.insecure is set: the identity provider's certificate is not verified"
            );
        }
        let mut http = IdpClient::new(
            settings.insecure,
            settings.request_timeout,
            settings.max_body,
        )?;
        if let Some(observer) = observer {
            http.set_observer(observer);
        }
        let negative = NegativeCache::new(settings.negative_ttl, settings.negative_capacity);
        Ok(Self {
            inner: Arc::new(Inner {
                settings,
                cache,
                http,
                discovery: tokio::sync::OnceCell::new(),
                keys: Mutex::new(KeyState::default()),
                refresh: tokio::sync::Mutex::new(()),
                flights: Mutex::new(HashMap::new()),
                next_flight: AtomicU64::new(0),
                negative: Mutex::new(negative),
            }),
            clock: Arc::new(SystemClock),
        })
    }

    /// The wall clock for token expiry and cache lifetimes (tests use a `ManualClock`).
    pub fn with_clock(self, clock: Arc<dyn Clock>) -> Self {
        Self { clock, ..self }
    }

    /// Starts the periodic JWKS refresh on the current runtime, until `shutdown`. Does nothing
    /// for the `none` method or a zero interval. The first refresh comes one interval after
    /// start, and only once a request has loaded discovery: an idle node stays silent.
    pub fn spawn_background(&self, shutdown: CancellationToken) {
        let interval = self.inner.settings.jwks_refresh_interval;
        if self.inner.settings.verify_method != VerifyMethod::Jwt || interval.is_zero() {
            return;
        }
        let inner = Arc::clone(&self.inner);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = ticker.tick() => {}
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = inner.background_refresh() => {}
                }
            }
        });
    }

    pub async fn authenticate(&self, token: &str) -> Result<Authenticated, OidcError> {
        if token.is_empty() {
            return Err(OidcError::rejected("empty bearer token"));
        }
        let cache_key = token_cache_key(token);
        if lock(&self.inner.negative).contains(&cache_key, Instant::now()) {
            tracing::debug!("bearer token rejected again (rejected moments ago)");
            return Err(OidcError::rejected("token was rejected moments ago"));
        }
        if let Some(claims) = self.inner.cached(&cache_key, self.clock.now()).await {
            // A logout writes its markers before it deletes the claims: in between, the claims
            // are still here and only the markers tell (local reads: absence is near-cached).
            let ids = SessionIds::of(&claims);
            if !ids.is_empty()
                && let Some(reason) = sessions::refusal(self.inner.cache.as_ref(), &ids).await
            {
                return Err(OidcError::rejected(reason.to_string()));
            }
            return Ok(Authenticated {
                claims,
                new_session: false,
                cache_key,
            });
        }
        let (future, claimed, guard) = self.join_flight(token, &cache_key);
        let result = future.await;
        drop(guard);
        let claims = result?;
        Ok(Authenticated {
            claims,
            new_session: !claimed.swap(true, Ordering::AcqRel),
            cache_key,
        })
    }

    /// Verifies a back-channel logout token against the provider's keys (discovery and JWKS as
    /// for access tokens, one refresh for an unknown kid). `Rejected` means the token is bad;
    /// `Unavailable` that the provider's documents could not be fetched.
    pub async fn verify_logout(&self, token: &str) -> Result<Logout, OidcError> {
        let inner = &self.inner;
        let discovery = inner.discovery().await?;
        let algs = discovery.signing_algs();
        let now = self.clock.now();
        inner
            .with_keys(
                &discovery,
                "logout token",
                |keys| verify_logout_token(token, keys, &inner.settings.issuer, &algs, now),
                |e| e.is_unknown_kid(),
            )
            .await
    }

    /// Ends the sessions a verified logout token names, on every node: marks them logged out,
    /// deletes their cached claims and index records (see [`sessions::end`]).
    pub async fn end_sessions(&self, logout: &Logout) -> Result<Vec<EndedSession>, StoreError> {
        sessions::end(
            self.inner.cache.as_ref(),
            logout,
            self.clock.now(),
            self.inner.settings.logout_marker_ttl,
        )
        .await
    }

    /// The provider's discovery document exactly as it answers (any status), for the
    /// `/.well-known/openid-configuration` passthrough. Not subject to the back-off of the
    /// authentication path.
    pub async fn fetch_discovery_document(&self) -> Result<RawResponse, CallError> {
        let s = &self.inner.settings;
        self.inner
            .http
            .fetch_raw(
                "discovery passthrough",
                &discovery_url(&s.issuer),
                s.request_timeout,
            )
            .await
    }

    fn join_flight(
        &self,
        token: &str,
        cache_key: &str,
    ) -> (
        Shared<BoxFuture<'static, Resolution>>,
        Arc<AtomicBool>,
        FlightGuard,
    ) {
        let mut flights = lock(&self.inner.flights);
        if let Some(flight) = flights.get_mut(cache_key) {
            flight.waiters += 1;
            let guard = FlightGuard {
                inner: Arc::clone(&self.inner),
                key: cache_key.to_owned(),
                id: flight.id,
            };
            return (flight.future.clone(), Arc::clone(&flight.claimed), guard);
        }
        let id = self.inner.next_flight.fetch_add(1, Ordering::Relaxed);
        let inner = Arc::clone(&self.inner);
        let clock = Arc::clone(&self.clock);
        let token = token.to_owned();
        let key = cache_key.to_owned();
        let future = async move { inner.resolve(&token, &key, clock.as_ref()).await }
            .boxed()
            .shared();
        let claimed = Arc::new(AtomicBool::new(false));
        flights.insert(
            cache_key.to_owned(),
            Flight {
                id,
                future: future.clone(),
                waiters: 1,
                claimed: Arc::clone(&claimed),
            },
        );
        let guard = FlightGuard {
            inner: Arc::clone(&self.inner),
            key: cache_key.to_owned(),
            id,
        };
        (future, claimed, guard)
    }
}

/// Leaves a flight; the last waiter out removes it, finished or not, so an abandoned resolution
/// is dropped rather than resumed later.
struct FlightGuard {
    inner: Arc<Inner>,
    key: String,
    id: u64,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        let mut flights = lock(&self.inner.flights);
        if let Some(flight) = flights.get_mut(&self.key)
            && flight.id == self.id
        {
            flight.waiters -= 1;
            if flight.waiters == 0 {
                flights.remove(&self.key);
            }
        }
    }
}

fn call_error(e: CallError) -> OidcError {
    match e {
        CallError::Gated { remaining } => {
            tracing::debug!(?remaining, "identity provider calls paused after a failure");
            OidcError::Unavailable {
                reason: "identity provider calls paused after a recent failure".to_owned(),
                retry_after: Some(remaining),
                timed_out: false,
            }
        }
        CallError::Transient {
            reason,
            retry_after,
            timed_out,
        } => {
            tracing::warn!(%reason, ?retry_after, "identity provider unavailable");
            OidcError::Unavailable {
                reason,
                retry_after,
                timed_out,
            }
        }
        CallError::Permanent { reason, .. } => OidcError::Rejected { reason },
    }
}

impl Inner {
    async fn cached(&self, key: &str, now: SystemTime) -> Option<Arc<Claims>> {
        match self.cache.get(key).await {
            Ok(Some(entry)) if !entry.is_expired(now) => match read_cached(&entry.value, now) {
                Ok(Cached::Valid { claims, .. }) => Some(Arc::new(claims)),
                Ok(Cached::Expired) => None,
                Err(e) => {
                    tracing::warn!(error = %e, "user-info cache value unreadable, treated as a miss");
                    None
                }
            },
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, "user-info cache read failed, treated as a miss");
                None
            }
        }
    }

    async fn resolve(&self, token: &str, key: &str, clock: &dyn Clock) -> Resolution {
        let result = self.resolve_uncached(token, key, clock).await;
        if let Err(OidcError::Rejected { reason }) = &result {
            tracing::warn!(%reason, "bearer token rejected");
            lock(&self.negative).insert(key.to_owned(), Instant::now());
        }
        result
    }

    async fn resolve_uncached(&self, token: &str, key: &str, clock: &dyn Clock) -> Resolution {
        let s = &self.settings;
        if s.verify_method == VerifyMethod::Jwt && token.len() > MAX_TOKEN_LEN {
            return Err(OidcError::rejected(
                VerifyError::Oversized { len: token.len() }.to_string(),
            ));
        }
        let now = clock.now();
        let discovery = self.discovery().await?;
        let access = match s.verify_method {
            VerifyMethod::Jwt => self.verify_access_token(token, &discovery, now).await?,
            _ => Claims::new(),
        };
        let ids = SessionIds::of(&access);
        // Before userinfo: a logged-out session costs the provider nothing.
        if !ids.is_empty()
            && let Some(reason) = sessions::refusal(self.cache.as_ref(), &ids).await
        {
            return Err(OidcError::rejected(reason.to_string()));
        }
        let userinfo = if s.skip_user_info {
            None
        } else {
            Some(self.userinfo(token, &discovery, now).await?)
        };
        let (claims, exp) = merge_claims(&access, userinfo, now, s.user_info_ttl);
        // `sid` and `iat` only from a verified access token (as oCIS indexes sessions); the
        // subject also from userinfo (the only source with the `none` method).
        let ids = SessionIds {
            sub: ids.sub.or_else(|| SessionIds::of(&claims).sub),
            ..ids
        };
        self.write_cache(key, &claims, &ids, exp, clock.now()).await;
        // A logout may have run while this token was being resolved (see `sessions`).
        if !ids.is_empty()
            && let Some(reason) = sessions::refusal(self.cache.as_ref(), &ids).await
        {
            if let Err(e) = self.cache.delete(key).await {
                tracing::warn!(error = %e, "claims of a logged-out session not removed");
            }
            return Err(OidcError::rejected(reason.to_string()));
        }
        Ok(Arc::new(claims))
    }

    async fn discovery(&self) -> Result<Arc<Discovery>, OidcError> {
        let s = &self.settings;
        self.discovery
            .get_or_try_init(|| async {
                let url = discovery_url(&s.issuer);
                let resp = self
                    .http
                    .get("discovery", &url, None, s.request_timeout, true)
                    .await
                    .map_err(call_error)?;
                let doc = Discovery::parse(&resp.body, &s.issuer)
                    .map_err(|e| OidcError::rejected(e.to_string()))?;
                if s.verify_method == VerifyMethod::Jwt && doc.jwks_uri.is_empty() {
                    return Err(OidcError::rejected("discovery document has no jwks_uri"));
                }
                if !s.skip_user_info && doc.userinfo_endpoint.is_empty() {
                    return Err(OidcError::rejected(
                        "discovery document has no userinfo_endpoint",
                    ));
                }
                tracing::info!(issuer = %doc.issuer, jwks_uri = %doc.jwks_uri, "OIDC discovery loaded");
                Ok(Arc::new(doc))
            })
            .await
            .cloned()
    }

    fn current_keys(&self) -> Option<(Arc<KeySet>, u64)> {
        let state = lock(&self.keys);
        state.set.clone().map(|set| (set, state.generation))
    }

    async fn keys(&self, discovery: &Discovery) -> Result<(Arc<KeySet>, u64), OidcError> {
        if let Some(current) = self.current_keys() {
            return Ok(current);
        }
        let _fetching = self.refresh.lock().await;
        if let Some(current) = self.current_keys() {
            return Ok(current);
        }
        self.fetch_keys(discovery, true).await
    }

    async fn fetch_keys(
        &self,
        discovery: &Discovery,
        gated: bool,
    ) -> Result<(Arc<KeySet>, u64), OidcError> {
        let resp = self
            .http
            .get(
                "jwks",
                &discovery.jwks_uri,
                None,
                self.settings.jwks_refresh_timeout,
                gated,
            )
            .await
            .map_err(call_error)?;
        let set = KeySet::parse(&resp.body).map_err(|e| OidcError::rejected(e.to_string()))?;
        for skipped in set.skipped() {
            tracing::debug!(%skipped, "JWKS key not used");
        }
        let set = Arc::new(set);
        let mut state = lock(&self.keys);
        state.generation += 1;
        state.set = Some(Arc::clone(&set));
        tracing::debug!(
            keys = set.len(),
            generation = state.generation,
            "JWKS loaded"
        );
        Ok((set, state.generation))
    }

    /// After an unknown kid: the key set that may know it, or `None` when no refresh is allowed
    /// now (disabled, or the last unknown-kid refresh is younger than `refresh_limit`).
    async fn refresh_for_unknown_kid(
        &self,
        discovery: &Discovery,
        seen_generation: u64,
    ) -> Result<Option<Arc<KeySet>>, OidcError> {
        let _fetching = self.refresh.lock().await;
        {
            let mut state = lock(&self.keys);
            if state.generation != seen_generation {
                return Ok(state.set.clone());
            }
            if !self.settings.jwks_refresh_unknown_kid {
                return Ok(None);
            }
            let now = Instant::now();
            if state
                .last_unknown_kid_refresh
                .is_some_and(|last| now.duration_since(last) < self.settings.jwks_refresh_limit)
            {
                return Ok(None);
            }
            state.last_unknown_kid_refresh = Some(now);
        }
        let (set, _) = self.fetch_keys(discovery, true).await?;
        Ok(Some(set))
    }

    /// Runs `check` against the key set, refreshing it once (within the rate limit) when the
    /// token names a key the set does not have.
    async fn with_keys<T, E: std::fmt::Display>(
        &self,
        discovery: &Discovery,
        what: &str,
        check: impl Fn(&KeySet) -> Result<T, E>,
        unknown_kid: impl Fn(&E) -> bool,
    ) -> Result<T, OidcError> {
        let (keys, generation) = self.keys(discovery).await?;
        let first = match check(&keys) {
            Err(e) if unknown_kid(&e) => e,
            other => return other.map_err(|e| OidcError::rejected(format!("{what}: {e}"))),
        };
        match self.refresh_for_unknown_kid(discovery, generation).await? {
            Some(keys) => check(&keys).map_err(|e| OidcError::rejected(format!("{what}: {e}"))),
            None => Err(OidcError::rejected(format!(
                "{what}: {first} (key set refresh not allowed now)"
            ))),
        }
    }

    async fn verify_access_token(
        &self,
        token: &str,
        discovery: &Discovery,
        now: SystemTime,
    ) -> Result<Claims, OidcError> {
        let policy = VerifyPolicy {
            issuers: discovery.access_token_issuers(&self.settings.issuer),
            audiences: self.settings.audiences.clone(),
        };
        self.with_keys(
            discovery,
            "access token",
            |keys| verify(token, keys, &policy, now),
            VerifyError::is_unknown_kid,
        )
        .await
    }

    async fn userinfo(
        &self,
        token: &str,
        discovery: &Discovery,
        now: SystemTime,
    ) -> Result<Claims, OidcError> {
        let resp = self
            .http
            .get(
                "userinfo",
                &discovery.userinfo_endpoint,
                Some(token),
                self.settings.request_timeout,
                true,
            )
            .await
            .map_err(call_error)?;
        let content_type = resp.content_type.as_deref();
        if !is_jwt_content_type(content_type) {
            return parse_userinfo(content_type, &resp.body, &KeySet::default(), &[], now)
                .map_err(|e| OidcError::rejected(e.to_string()));
        }
        let mut issuers = vec![self.settings.issuer.clone()];
        issuers.extend(discovery.access_token_issuers(&self.settings.issuer));
        self.with_keys(
            discovery,
            "userinfo",
            |keys| parse_userinfo(content_type, &resp.body, keys, &issuers, now),
            |e| matches!(e, UserinfoError::Jwt(v) if v.is_unknown_kid()),
        )
        .await
    }

    async fn write_cache(
        &self,
        key: &str,
        claims: &Claims,
        ids: &SessionIds,
        exp: i64,
        now: SystemTime,
    ) {
        let Ok(exp) = u64::try_from(exp) else { return };
        let ttl = match (UNIX_EPOCH + Duration::from_secs(exp)).duration_since(now) {
            Ok(ttl) if !ttl.is_zero() => ttl,
            _ => return,
        };
        match encode_claims(claims) {
            Ok(bytes) => {
                if let Err(e) = self.cache.put(key, Bytes::from(bytes), Some(ttl)).await {
                    tracing::warn!(error = %e, "writing the user-info cache failed");
                }
            }
            Err(e) => tracing::warn!(error = %e, "claims cannot be cached"),
        }
        let sid = ids.sid.as_deref();
        if let Some(sid) = sid
            && let Err(e) = self
                .cache
                .put(sid, Bytes::copy_from_slice(key.as_bytes()), Some(ttl))
                .await
        {
            tracing::warn!(error = %e, "writing the session index failed");
        }
        if let Some(sub) = &ids.sub
            && let Err(e) = sessions::record(
                self.cache.as_ref(),
                sub,
                key,
                sid,
                i64::try_from(exp).unwrap_or(i64::MAX),
                now,
            )
            .await
        {
            tracing::warn!(error = %e, "writing the subject's session list failed");
        }
    }

    async fn background_refresh(&self) {
        let Some(discovery) = self.discovery.get().cloned() else {
            return;
        };
        let _fetching = self.refresh.lock().await;
        if let Err(e) = self.fetch_keys(&discovery, false).await {
            tracing::warn!(error = %e, "periodic JWKS refresh failed, keeping the current keys");
        }
    }
}
