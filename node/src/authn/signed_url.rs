//! Pre-signed URLs (`OC-Signature`, spec §4.3): the I/O around `gatehouse_shared::auth::signed_url`.
//!
//! A signed URL authenticates as its owner without any token, so the authenticator is reachable
//! by anyone who can send a query string. The order of the work is chosen so that garbage is cheap
//! to refuse (oCIS does the expensive parts first, spec §11.3):
//!
//! 1. the checks that need nothing but the request and the clock (parameters present, verb and
//!    method, dates, lifetime) — no store read, no account lookup, no key derivation;
//! 2. the account named by `OC-Credential` (the resolver's shared account cache answers most);
//! 3. the user's signing key from the signing-key store (`proxy`/`signing-keys`, near-cached;
//!    the NATS store strips the table prefix and the go-micro envelope, so a key written by the
//!    oCIS `ocs` service reads as its raw 128 hex characters);
//! 4. the signature: PBKDF2 with 10 000 rounds, a few milliseconds of CPU, twice when the URL
//!    contains a `$`.
//!
//! Step 4 is what a flood of bad signatures would aim at, so it runs on the blocking pool behind
//! a semaphore with one permit per core, with a bounded queue in front: when the queue is full
//! the request is answered "unavailable" at once instead of waiting. Successful verifications are
//! remembered per node until the URL expires, keyed by a digest of the canonical URL, the
//! signature and the key, so repeated downloads of one link skip the derivation while a rotated
//! or deleted key still refuses the old URLs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use gatehouse_shared::auth::signed_url::{
    SignedUrlError, SignedUrlParams, SignedUrlRequest, applies, canonical_urls, check,
    verification_digest, verify_signature,
};
use gatehouse_shared::config::Config;
use gatehouse_shared::store::{Clock, Store, StoreError, SystemClock};
use gatehouse_shared::trace;
use http::StatusCode;
use opentelemetry::trace::SpanKind;
use tokio::sync::{Semaphore, TryAcquireError};

use crate::accounts::backend::LookupKind;
use crate::accounts::{Account, AccountError, AccountResolver};

/// Verified URLs remembered per node by default.
pub const DEFAULT_CACHE_CAPACITY: usize = 10_000;
/// Derivations allowed to wait for a permit, per permit.
pub const DEFAULT_QUEUE_PER_PERMIT: usize = 64;

/// What the authenticator takes from the configuration, plus its resource limits.
#[derive(Debug, Clone)]
pub struct SignedUrlSettings {
    /// `pre_signed_url.enabled`.
    pub enabled: bool,
    /// `pre_signed_url.allowed_http_methods`, compared case-insensitively.
    pub allowed_methods: Vec<String>,
    /// `pre_signed_url.max_lifetime`; `None` when configured as zero (no limit, as oCIS).
    pub max_lifetime: Option<Duration>,
    /// Key derivations running at once (one per core by default).
    pub derivation_permits: usize,
    /// Derivations allowed to wait for a permit; beyond that a request is refused as unavailable.
    pub max_queued_derivations: usize,
    /// Verified URLs remembered on this node.
    pub cache_capacity: usize,
}

impl SignedUrlSettings {
    pub fn from_config(c: &Config) -> Self {
        let psu = &c.pre_signed_url;
        let permits = std::thread::available_parallelism().map_or(1, |n| n.get());
        SignedUrlSettings {
            enabled: psu.enabled,
            allowed_methods: psu.allowed_http_methods.clone(),
            max_lifetime: Some(psu.max_lifetime.0).filter(|d| !d.is_zero()),
            derivation_permits: permits,
            max_queued_derivations: permits * DEFAULT_QUEUE_PER_PERMIT,
            cache_capacity: DEFAULT_CACHE_CAPACITY,
        }
    }
}

/// Why a request carrying `OC-Signature` was not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignedUrlRejection {
    /// The URL is malformed, expired, not for this method, for an unknown or disabled user, for a
    /// user without a signing key, or its signature does not match. Answer 401; retrying the
    /// same URL cannot succeed.
    #[error("invalid signed URL: {reason}")]
    Invalid { reason: String },
    /// The signing-key store or the account backend is unreachable, or too many signatures are
    /// waiting to be checked. Answer 503; a retry may succeed.
    #[error("signed URL cannot be checked now: {reason}")]
    Unavailable { reason: String },
    /// The account backend or the signing-key store answered with something unusable (a
    /// non-retryable backend error, undecodable stored data). Answer 502.
    #[error("signed URL check failed: {reason}")]
    Backend { reason: String },
}

impl SignedUrlRejection {
    pub fn status(&self) -> StatusCode {
        match self {
            SignedUrlRejection::Invalid { .. } => StatusCode::UNAUTHORIZED,
            SignedUrlRejection::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            SignedUrlRejection::Backend { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, SignedUrlRejection::Unavailable { .. })
    }

    fn invalid(e: impl ToString) -> Self {
        SignedUrlRejection::Invalid {
            reason: e.to_string(),
        }
    }

    fn from_account(e: AccountError) -> Self {
        match e {
            AccountError::NotFound { .. }
            | AccountError::Disabled { .. }
            | AccountError::ClaimMissing { .. } => Self::invalid(e),
            AccountError::Backend {
                retryable: true, ..
            } => SignedUrlRejection::Unavailable {
                reason: e.to_string(),
            },
            AccountError::Backend { .. } => SignedUrlRejection::Backend {
                reason: e.to_string(),
            },
        }
    }

    fn from_store(e: StoreError) -> Self {
        let reason = format!("signing-key store: {e}");
        if e.is_retryable() {
            SignedUrlRejection::Unavailable { reason }
        } else {
            SignedUrlRejection::Backend { reason }
        }
    }
}

/// Counters of the key derivations of one authenticator.
#[derive(Debug, Default)]
struct DerivationStats {
    /// PBKDF2 runs finished (one per canonical URL variant checked).
    total: AtomicU64,
    /// The same count exported as `gatehouse_signed_url_key_derivations_total`.
    exported: Option<prometheus::IntCounter>,
    running: AtomicUsize,
    peak: AtomicUsize,
}

/// Marks one verification as running for as long as it lives (also when the derivation panics).
struct Running<'a>(&'a DerivationStats);

impl<'a> Running<'a> {
    fn start(stats: &'a DerivationStats) -> Self {
        let now = stats.running.fetch_add(1, Ordering::SeqCst) + 1;
        stats.peak.fetch_max(now, Ordering::SeqCst);
        Running(stats)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A place in the queue for a derivation permit, given back when dropped (also on cancellation).
struct QueueSlot<'a>(&'a AtomicUsize);

impl<'a> QueueSlot<'a> {
    fn enter(queued: &'a AtomicUsize, limit: usize) -> Option<Self> {
        queued
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| QueueSlot(queued))
    }
}

impl Drop for QueueSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Verification digests of URLs whose signature matched, with the moment each URL expires.
struct VerifiedCache {
    entries: HashMap<[u8; 32], SystemTime>,
    capacity: usize,
}

impl VerifiedCache {
    fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            capacity,
        }
    }

    fn contains(&mut self, digest: &[u8; 32], now: SystemTime) -> bool {
        match self.entries.get(digest) {
            Some(expires_at) if *expires_at > now => true,
            Some(_) => {
                self.entries.remove(digest);
                false
            }
            None => false,
        }
    }

    /// Makes room by dropping expired entries, then the ones expiring soonest. The scan only runs
    /// when the cache is full, and each insertion follows a key derivation that costs far more.
    fn insert(&mut self, digest: [u8; 32], expires_at: SystemTime, now: SystemTime) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&digest) {
            self.entries.retain(|_, e| *e > now);
            while self.entries.len() >= self.capacity {
                let Some(soonest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, e)| **e)
                    .map(|(d, _)| *d)
                else {
                    break;
                };
                self.entries.remove(&soonest);
            }
        }
        self.entries.insert(digest, expires_at);
    }
}

/// The parts of a request a derivation needs, owned so they can move to the blocking pool.
struct OwnedRequest {
    method: String,
    host: String,
    path: String,
    query: String,
}

impl OwnedRequest {
    fn borrow(&self) -> SignedUrlRequest<'_> {
        SignedUrlRequest {
            method: &self.method,
            host: &self.host,
            path: &self.path,
            query: &self.query,
        }
    }
}

/// Authenticates requests by their `OC-Signature`. One per node: the verified-URL cache and the
/// derivation limits are shared by all workers.
pub struct SignedUrlAuthenticator {
    settings: SignedUrlSettings,
    keys: Arc<dyn Store>,
    accounts: Arc<AccountResolver>,
    clock: Arc<dyn Clock>,
    verified: Mutex<VerifiedCache>,
    permits: Arc<Semaphore>,
    queued: AtomicUsize,
    stats: Arc<DerivationStats>,
}

impl SignedUrlAuthenticator {
    /// `keys` is the signing-key store (`pre_signed_url.signing_keys`).
    pub fn new(
        settings: SignedUrlSettings,
        keys: Arc<dyn Store>,
        accounts: Arc<AccountResolver>,
    ) -> Self {
        Self::with_clock(settings, keys, accounts, Arc::new(SystemClock))
    }

    pub fn with_clock(
        settings: SignedUrlSettings,
        keys: Arc<dyn Store>,
        accounts: Arc<AccountResolver>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let permits = settings.derivation_permits.max(1);
        Self {
            verified: Mutex::new(VerifiedCache::new(settings.cache_capacity)),
            permits: Arc::new(Semaphore::new(permits)),
            queued: AtomicUsize::new(0),
            stats: Arc::new(DerivationStats::default()),
            settings,
            keys,
            accounts,
            clock,
        }
    }

    /// Also counts derivations in `counter` (the node's Prometheus metric).
    pub fn counting_derivations(mut self, counter: prometheus::IntCounter) -> Self {
        self.stats = Arc::new(DerivationStats {
            exported: Some(counter),
            ..DerivationStats::default()
        });
        self
    }

    /// `None`: not this authenticator's request (disabled, or no non-empty `OC-Signature`).
    /// `host` is the `Host` header (HTTP/1) or `:authority` (HTTP/2) the client signed.
    pub async fn authenticate(
        &self,
        method: &http::Method,
        uri: &http::Uri,
        host: &str,
    ) -> Option<Result<Account, SignedUrlRejection>> {
        let verified = self.authenticate_until(method, uri, host).await?;
        Some(verified.map(|(account, _)| account))
    }

    /// Like [`SignedUrlAuthenticator::authenticate`], with the moment the URL expires.
    pub async fn authenticate_until(
        &self,
        method: &http::Method,
        uri: &http::Uri,
        host: &str,
    ) -> Option<Result<(Account, SystemTime), SignedUrlRejection>> {
        if !self.settings.enabled {
            return None;
        }
        let query = uri.query().unwrap_or("");
        if !applies(query) {
            return None;
        }
        let req = SignedUrlRequest {
            method: method.as_str(),
            host,
            path: uri.path(),
            query,
        };
        Some(self.verify(&req).await)
    }

    /// PBKDF2 runs done by this authenticator so far (a verification of a URL containing `$`
    /// counts two).
    pub fn derivations(&self) -> u64 {
        self.stats.total.load(Ordering::SeqCst)
    }

    /// Signature checks running on the blocking pool right now.
    pub fn derivations_in_flight(&self) -> usize {
        self.stats.running.load(Ordering::SeqCst)
    }

    /// The most signature checks that ever ran at once.
    pub fn peak_concurrent_derivations(&self) -> usize {
        self.stats.peak.load(Ordering::SeqCst)
    }

    /// Verified URLs currently remembered.
    pub fn cached_urls(&self) -> usize {
        self.lock_cache().entries.len()
    }

    async fn verify(
        &self,
        req: &SignedUrlRequest<'_>,
    ) -> Result<(Account, SystemTime), SignedUrlRejection> {
        let now = self.clock.now();
        let params = check(
            req,
            &self.settings.allowed_methods,
            self.settings.max_lifetime,
            now,
        )
        .map_err(SignedUrlRejection::invalid)?;
        let account = self
            .accounts
            .lookup(LookupKind::Username, &params.credential)
            .await
            .map_err(SignedUrlRejection::from_account)?;
        let key = match self.keys.get(&account.id).await {
            Ok(Some(entry)) if !entry.value.is_empty() => entry.value,
            Ok(_) => return Err(SignedUrlRejection::invalid(SignedUrlError::EmptyKey)),
            Err(e) => return Err(SignedUrlRejection::from_store(e)),
        };
        let digest = verification_digest(req, &params, &key);
        let expires_at = params.expires_at;
        if self.lock_cache().contains(&digest, now) {
            return Ok((account, expires_at));
        }
        self.derive(req, params, key).await?;
        self.lock_cache()
            .insert(digest, expires_at, self.clock.now());
        Ok((account, expires_at))
    }

    async fn derive(
        &self,
        req: &SignedUrlRequest<'_>,
        params: SignedUrlParams,
        key: Bytes,
    ) -> Result<(), SignedUrlRejection> {
        let span = trace::Span::child("derive signed-url key", SpanKind::Internal);
        let result = span.instrument(self.derive_bounded(req, params, key)).await;
        match &result {
            Ok(()) => span.set("gatehouse.signed_url.valid", true),
            Err(SignedUrlRejection::Invalid { .. }) => {
                span.set("gatehouse.signed_url.valid", false)
            }
            Err(e) => span.fail("unavailable", e.to_string()),
        }
        span.end();
        result
    }

    /// The PBKDF2 run on the blocking pool, within the bounded concurrency.
    async fn derive_bounded(
        &self,
        req: &SignedUrlRequest<'_>,
        params: SignedUrlParams,
        key: Bytes,
    ) -> Result<(), SignedUrlRejection> {
        let overloaded = || SignedUrlRejection::Unavailable {
            reason: "too many signatures waiting to be checked".to_owned(),
        };
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(TryAcquireError::NoPermits) => {
                let _slot = QueueSlot::enter(&self.queued, self.settings.max_queued_derivations)
                    .ok_or_else(overloaded)?;
                self.permits
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| overloaded())?
            }
            Err(TryAcquireError::Closed) => return Err(overloaded()),
        };
        let owned = OwnedRequest {
            method: req.method.to_owned(),
            host: req.host.to_owned(),
            path: req.path.to_owned(),
            query: req.query.to_owned(),
        };
        let stats = self.stats.clone();
        // The permit moves into the task: a cancelled request does not free it before the
        // derivation it started has finished.
        let outcome = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let _running = Running::start(&stats);
            let req = owned.borrow();
            let variants = canonical_urls(&req, &params).len();
            let result = verify_signature(&req, &params, &key);
            let variants = u64::try_from(variants).unwrap_or(u64::MAX);
            stats.total.fetch_add(variants, Ordering::SeqCst);
            if let Some(counter) = &stats.exported {
                counter.inc_by(variants);
            }
            result
        })
        .await;
        match outcome {
            Ok(result) => result.map_err(SignedUrlRejection::invalid),
            Err(e) => Err(SignedUrlRejection::Unavailable {
                reason: format!("signature check did not finish: {e}"),
            }),
        }
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, VerifiedCache> {
        self.verified.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::time::UNIX_EPOCH;

    use gatehouse_shared::auth::signed_url::derive_signature;
    use gatehouse_shared::store::ManualClock;
    use gatehouse_shared::store::testing::FaultyStore;

    use super::*;
    use crate::accounts::backend::NewUser;
    use crate::accounts::{AccountSettings, NoEvents};

    /// 2019-05-14T11:01:58Z
    const SIGNED_AT: u64 = 1_557_831_718;
    const DATE: &str = "2019-05-14T11%3A01%3A58Z";
    const HOST: &str = "cloud.example.net";
    const PATH: &str = "/remote.php/dav/files/alice/report.pdf";
    const KEY: &str = "3f1c7a9e0b5d2f4a6c8e1b3d5f7a9c0e2b4d6f8a1c3e5b7d9f0a2c4e6b8d1f3a\
                       5c7e9b0d2f4a6c8e1b3d5f7a9c0e2b4d6f8a1c3e5b7d9f0a2c4e6b8d1f3a5c7e";

    fn down(store: &FaultyStore, down: bool) {
        store.fail_all(down.then(|| StoreError::Unavailable("connection refused".into())));
    }

    struct Fixture {
        auth: Arc<SignedUrlAuthenticator>,
        keys: Arc<FaultyStore>,
        state: Arc<FaultyStore>,
        clock: Arc<ManualClock>,
        user_id: String,
    }

    fn settings() -> SignedUrlSettings {
        SignedUrlSettings {
            enabled: true,
            allowed_methods: vec!["GET".into(), "head".into()],
            max_lifetime: Some(Duration::from_secs(7 * 24 * 3600)),
            derivation_permits: 2,
            max_queued_derivations: 128,
            cache_capacity: DEFAULT_CACHE_CAPACITY,
        }
    }

    async fn fixture(settings: SignedUrlSettings) -> Fixture {
        let state = FaultyStore::memory();
        let keys = FaultyStore::memory();
        let accounts = AccountResolver::new(
            AccountSettings::from_config(&Config::default()),
            state.clone(),
            Arc::new(NoEvents),
        )
        .await
        .unwrap();
        let user = accounts
            .directory()
            .create_user(&NewUser {
                username: "alice".into(),
                display_name: "Alice".into(),
                mail: String::new(),
                identity: None,
                id: None,
            })
            .await
            .unwrap();
        keys.put(&user.id, Bytes::from_static(KEY.as_bytes()), None)
            .await
            .unwrap();
        let clock = Arc::new(ManualClock::new(
            UNIX_EPOCH + Duration::from_secs(SIGNED_AT + 30),
        ));
        let auth = SignedUrlAuthenticator::with_clock(
            settings,
            keys.clone(),
            Arc::new(accounts),
            clock.clone(),
        );
        Fixture {
            auth: Arc::new(auth),
            keys,
            state,
            clock,
            user_id: user.id,
        }
    }

    /// The query of a URL signed like the web client does, for `method` on `path`.
    fn signed(
        method: &str,
        path: &str,
        extra: &str,
        user: &str,
        expires: u64,
        key: &str,
    ) -> String {
        let unsigned = format!(
            "{extra}OC-Credential={user}&OC-Date={DATE}&OC-Expires={expires}&OC-Verb={method}"
        );
        let placeholder = format!("{unsigned}&OC-Signature=-");
        let req = SignedUrlRequest {
            method,
            host: HOST,
            path,
            query: &placeholder,
        };
        let params = check(
            &req,
            &[method.to_owned()],
            None,
            UNIX_EPOCH + Duration::from_secs(SIGNED_AT),
        )
        .unwrap();
        let url = &canonical_urls(&req, &params)[0];
        format!(
            "{unsigned}&OC-Algo=PBKDF2%2F10000-SHA512&OC-Signature={}",
            derive_signature(url, key.as_bytes())
        )
    }

    fn alice_url() -> String {
        signed("GET", PATH, "", "alice", 1200, KEY)
    }

    fn uri(path: &str, query: &str) -> http::Uri {
        format!("{path}?{query}").parse().unwrap()
    }

    impl Fixture {
        async fn run(
            &self,
            method: &str,
            path: &str,
            query: &str,
        ) -> Result<Account, SignedUrlRejection> {
            let method: http::Method = method.parse().unwrap();
            self.auth
                .authenticate(&method, &uri(path, query), HOST)
                .await
                .expect("the authenticator applies")
        }

        async fn get(&self, query: &str) -> Result<Account, SignedUrlRejection> {
            self.run("GET", PATH, query).await
        }

        fn store_reads(&self) -> usize {
            self.keys.reads() + self.state.reads()
        }
    }

    fn assert_invalid(r: Result<Account, SignedUrlRejection>, needle: &str) {
        match r {
            Err(SignedUrlRejection::Invalid { reason }) => {
                assert!(
                    reason.contains(needle),
                    "{reason:?} should mention {needle:?}"
                )
            }
            other => panic!("expected Invalid ({needle}), got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_valid_url_authenticates_its_owner() {
        let f = fixture(settings()).await;
        let account = f.get(&alice_url()).await.unwrap();
        assert_eq!(account.username, "alice");
        assert_eq!(account.id, f.user_id);
        assert_eq!(f.auth.derivations(), 1);
        // HEAD is allowed too, compared case-insensitively
        let head = signed("HEAD", PATH, "", "alice", 1200, KEY);
        assert!(f.run("HEAD", PATH, &head).await.is_ok());
    }

    #[tokio::test]
    async fn a_dollar_in_the_url_costs_two_derivations_once() {
        let f = fixture(settings()).await;
        let path = "/remote.php/dav/files/alice/$report.pdf";
        let url = signed("GET", path, "", "alice", 1200, KEY);
        f.run("GET", path, &url).await.unwrap();
        assert_eq!(f.auth.derivations(), 2);
        f.run("GET", path, &url).await.unwrap();
        assert_eq!(f.auth.derivations(), 2);
    }

    #[tokio::test]
    async fn not_applicable_without_signature_or_when_disabled() {
        let f = fixture(settings()).await;
        let get = http::Method::GET;
        for query in [
            "",
            "a=1",
            "OC-Signature=",
            "OC-Credential=alice&OC-Signature=",
        ] {
            assert!(
                f.auth
                    .authenticate(&get, &uri(PATH, query), HOST)
                    .await
                    .is_none(),
                "{query}"
            );
        }
        let disabled = fixture(SignedUrlSettings {
            enabled: false,
            ..settings()
        })
        .await;
        assert!(
            disabled
                .auth
                .authenticate(&get, &uri(PATH, &alice_url()), HOST)
                .await
                .is_none()
        );
        assert_eq!(f.store_reads() + disabled.store_reads(), 0);
    }

    #[tokio::test]
    async fn a_repeated_url_costs_no_derivation_until_it_expires() {
        let f = fixture(settings()).await;
        let url = alice_url();
        f.get(&url).await.unwrap();
        f.get(&url).await.unwrap();
        f.get(&url).await.unwrap();
        assert_eq!(f.auth.derivations(), 1);
        assert_eq!(f.auth.cached_urls(), 1);
        // the cache does not outlive the URL: expiry is checked before it is consulted
        f.clock.advance(Duration::from_secs(1200));
        assert_invalid(f.get(&url).await, "expired");
        assert_eq!(f.auth.derivations(), 1);
    }

    #[tokio::test]
    async fn another_signature_for_a_cached_url_is_still_checked() {
        let f = fixture(settings()).await;
        let url = alice_url();
        f.get(&url).await.unwrap();
        let last = url.chars().last().unwrap();
        let forged = format!(
            "{}{}",
            &url[..url.len() - 1],
            if last == '0' { '1' } else { '0' }
        );
        assert_invalid(f.get(&forged).await, "signature mismatch");
        assert_eq!(f.auth.derivations(), 2);
        // and a forged signature is not cached: it costs a derivation every time
        assert_invalid(f.get(&forged).await, "signature mismatch");
        assert_eq!(f.auth.derivations(), 3);
    }

    #[tokio::test]
    async fn tampered_urls_are_refused() {
        let f = fixture(settings()).await;
        let url = alice_url();
        assert_invalid(f.get(&format!("x=1&{url}")).await, "signature mismatch");
        assert_invalid(
            f.run("GET", "/remote.php/dav/files/alice/other.pdf", &url)
                .await,
            "signature mismatch",
        );
        let longer = url.replacen("OC-Expires=1200", "OC-Expires=3600", 1);
        assert_invalid(f.get(&longer).await, "signature mismatch");
        let method: http::Method = "GET".parse().unwrap();
        let other_host = f
            .auth
            .authenticate(&method, &uri(PATH, &url), "evil.example.net")
            .await
            .unwrap();
        assert_invalid(other_host, "signature mismatch");
    }

    #[tokio::test]
    async fn cheap_failures_read_no_store_and_derive_nothing() {
        let f = fixture(settings()).await;
        let reads_before = f.store_reads();
        // expired
        let url = alice_url();
        f.clock.advance(Duration::from_secs(1200));
        assert_invalid(f.get(&url).await, "expired");
        f.clock
            .set(UNIX_EPOCH + Duration::from_secs(SIGNED_AT + 30));
        // longer than the maximum lifetime
        let week_and_a_day = signed("GET", PATH, "", "alice", 8 * 24 * 3600, KEY);
        assert_invalid(f.get(&week_and_a_day).await, "exceeds the maximum");
        // verb does not match the method
        assert_invalid(f.run("HEAD", PATH, &url).await, "OC-Verb");
        // method not allowed, although signed for it
        let put = signed("PUT", PATH, "", "alice", 1200, KEY);
        assert_invalid(f.run("PUT", PATH, &put).await, "AllowedHTTPMethods");
        // signed far in the future
        f.clock
            .set(UNIX_EPOCH + Duration::from_secs(SIGNED_AT - 3600));
        assert_invalid(f.get(&url).await, "future");
        f.clock
            .set(UNIX_EPOCH + Duration::from_secs(SIGNED_AT + 30));
        // a required parameter missing
        let no_credential = url.replacen("OC-Credential=alice&", "", 1);
        assert_invalid(f.get(&no_credential).await, "OC-Credential");
        assert_eq!(f.store_reads(), reads_before);
        assert_eq!(f.auth.derivations(), 0);
    }

    #[tokio::test]
    async fn an_unknown_user_is_refused_without_derivation() {
        let f = fixture(settings()).await;
        let bob = signed("GET", PATH, "", "bob", 1200, KEY);
        assert_invalid(f.get(&bob).await, "bob");
        assert_eq!(f.auth.derivations(), 0);
    }

    #[tokio::test]
    async fn a_missing_or_empty_key_refuses_every_signature() {
        let f = fixture(settings()).await;
        f.keys.delete(&f.user_id).await.unwrap();
        assert_invalid(f.get(&alice_url()).await, "no signing key");
        f.keys.put(&f.user_id, Bytes::new(), None).await.unwrap();
        // oCIS accepts any signature here
        let signed_with_empty_key = signed("GET", PATH, "", "alice", 1200, "");
        assert_invalid(f.get(&signed_with_empty_key).await, "no signing key");
        assert_eq!(f.auth.derivations(), 0);
    }

    #[tokio::test]
    async fn a_rotated_or_deleted_key_refuses_a_cached_url() {
        let f = fixture(settings()).await;
        let url = alice_url();
        f.get(&url).await.unwrap();
        assert_eq!(f.auth.cached_urls(), 1);
        let rotated = KEY.replace('a', "b");
        f.keys
            .put(&f.user_id, Bytes::from(rotated.clone()), None)
            .await
            .unwrap();
        assert_invalid(f.get(&url).await, "signature mismatch");
        // a URL signed with the new key works
        let fresh = signed("GET", PATH, "", "alice", 1200, &rotated);
        f.get(&fresh).await.unwrap();
        f.keys.delete(&f.user_id).await.unwrap();
        assert_invalid(f.get(&fresh).await, "no signing key");
        // the old key coming back makes the old URL valid again (it was signed with it)
        f.keys
            .put(&f.user_id, Bytes::from_static(KEY.as_bytes()), None)
            .await
            .unwrap();
        f.get(&url).await.unwrap();
    }

    #[tokio::test]
    async fn store_trouble_is_unavailable_not_invalid() {
        let f = fixture(settings()).await;
        let url = alice_url();
        down(&f.keys, true);
        let err = f.get(&url).await.unwrap_err();
        assert!(
            matches!(err, SignedUrlRejection::Unavailable { .. }),
            "{err:?}"
        );
        assert_eq!(err.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(err.is_retryable());
        down(&f.keys, false);
        down(&f.state, true);
        let err = f.get(&url).await.unwrap_err();
        assert!(
            matches!(err, SignedUrlRejection::Unavailable { .. }),
            "{err:?}"
        );
        down(&f.state, false);
        assert!(f.get(&url).await.is_ok());
        assert_eq!(f.auth.derivations(), 1);
    }

    #[test]
    fn rejections_map_to_statuses() {
        let invalid = SignedUrlRejection::invalid(SignedUrlError::SignatureMismatch);
        assert_eq!(invalid.status(), StatusCode::UNAUTHORIZED);
        assert!(!invalid.is_retryable());
        let backend = SignedUrlRejection::from_store(StoreError::Invalid("garbage".into()));
        assert_eq!(backend.status(), StatusCode::BAD_GATEWAY);
        let timeout = SignedUrlRejection::from_store(StoreError::Timeout {
            op: "get",
            after: Duration::from_secs(1),
        });
        assert_eq!(timeout.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn settings_from_config() {
        let mut c = Config::default();
        let s = SignedUrlSettings::from_config(&c);
        assert!(s.enabled);
        assert_eq!(s.max_lifetime, Some(Duration::from_secs(7 * 24 * 3600)));
        assert!(s.derivation_permits >= 1);
        assert_eq!(
            s.max_queued_derivations,
            s.derivation_permits * DEFAULT_QUEUE_PER_PERMIT
        );
        c.pre_signed_url.max_lifetime = gatehouse_shared::config::GoDuration::secs(0);
        assert_eq!(SignedUrlSettings::from_config(&c).max_lifetime, None);
    }

    #[test]
    fn the_cache_is_bounded_and_drops_expired_entries_first() {
        let t = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        let mut cache = VerifiedCache::new(3);
        cache.insert([1; 32], t(100), t(0));
        cache.insert([2; 32], t(50), t(0));
        cache.insert([3; 32], t(200), t(0));
        cache.insert([4; 32], t(300), t(0));
        assert_eq!(cache.entries.len(), 3);
        assert!(
            !cache.contains(&[2; 32], t(0)),
            "the soonest to expire goes first"
        );
        assert!(cache.contains(&[1; 32], t(0)));
        // once some entries expired, they make the room
        cache.insert([5; 32], t(400), t(150));
        assert!(!cache.contains(&[1; 32], t(0)));
        assert!(cache.contains(&[3; 32], t(150)));
        assert!(cache.contains(&[4; 32], t(150)));
        assert!(cache.contains(&[5; 32], t(150)));
        assert!(!cache.contains(&[3; 32], t(200)), "expired on read");
        assert_eq!(cache.entries.len(), 2);
    }

    /// Many bad signatures at once: never more derivations running than permits, and the
    /// executor (a single thread here) stays free to run other tasks while they run.
    #[tokio::test]
    async fn a_flood_of_bad_signatures_is_bounded_and_leaves_the_executor_free() {
        let f = fixture(settings()).await;
        let url = alice_url();
        let forged = format!("{}0000", &url[..url.len() - 4]);
        let done = Arc::new(AtomicBool::new(false));
        let ticker = {
            let auth = f.auth.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let (mut ticks, mut saw_work) = (0u32, 0u32);
                while !done.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    ticks += 1;
                    if auth.derivations_in_flight() > 0 {
                        saw_work += 1;
                    }
                }
                (ticks, saw_work)
            })
        };
        let mut flood = Vec::new();
        for _ in 0..50 {
            let auth = f.auth.clone();
            let forged = forged.clone();
            flood.push(tokio::spawn(async move {
                auth.authenticate(&http::Method::GET, &uri(PATH, &forged), HOST)
                    .await
                    .unwrap()
            }));
        }
        for r in flood {
            assert_invalid(r.await.unwrap(), "signature mismatch");
        }
        done.store(true, Ordering::SeqCst);
        let (ticks, saw_work) = ticker.await.unwrap();
        assert_eq!(f.auth.derivations(), 50);
        assert!(f.auth.peak_concurrent_derivations() <= 2);
        assert!(f.auth.peak_concurrent_derivations() >= 1);
        // The ticker runs on the same (only) executor thread: it can only observe a derivation
        // in flight if derivations run elsewhere.
        assert!(saw_work >= 1, "ticks {ticks}, saw work {saw_work}");
        assert_eq!(f.auth.derivations_in_flight(), 0);
    }

    #[tokio::test]
    async fn a_full_queue_answers_unavailable_at_once() {
        let f = fixture(SignedUrlSettings {
            derivation_permits: 1,
            max_queued_derivations: 2,
            ..settings()
        })
        .await;
        let url = alice_url();
        let forged = format!("{}0000", &url[..url.len() - 4]);
        let mut flood = Vec::new();
        for _ in 0..20 {
            let auth = f.auth.clone();
            let forged = forged.clone();
            flood.push(tokio::spawn(async move {
                auth.authenticate(&http::Method::GET, &uri(PATH, &forged), HOST)
                    .await
                    .unwrap()
            }));
        }
        let (mut invalid, mut unavailable) = (0, 0);
        for r in flood {
            match r.await.unwrap() {
                Err(SignedUrlRejection::Invalid { .. }) => invalid += 1,
                Err(SignedUrlRejection::Unavailable { .. }) => unavailable += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(
            unavailable >= 1,
            "invalid {invalid}, unavailable {unavailable}"
        );
        assert!(invalid >= 3, "invalid {invalid}, unavailable {unavailable}");
        assert_eq!(f.auth.derivations(), invalid);
        assert_eq!(f.auth.peak_concurrent_derivations(), 1);
        assert_eq!(f.auth.queued.load(Ordering::SeqCst), 0);
    }
}
