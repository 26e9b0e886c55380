//! HTTP Basic authentication for development (spec §4.2).
//!
//! oCIS asks its reva gateway to check Basic credentials against the user directory; Gatehouse
//! checks them against the password hashes of the `builtin` account backend (set by a seed file
//! or the oCIS demo users) and then resolves the account by id, role included, like any other
//! login without claims. Configuration validation refuses `enable_basic_auth` with any other
//! backend, and the graph backend answers every check with a non-retryable error, which is
//! reported here as a rejection.
//!
//! Not applicable — other authenticators get their turn — when there is no `Authorization`
//! header whose scheme is `Basic` (compared without case) and whose base64 decodes to
//! `user:password` in UTF-8: broken Basic headers are treated as no Basic header, as Go's
//! `Request.BasicAuth` does. Also not applicable on the public-share paths when a share token
//! is present (`public-token` header or query parameter), so that the password of a
//! password-protected share, sent as Basic, reaches the public-share authenticator.
//!
//! A password check costs one Argon2id verification (tens of milliseconds of a core), and a
//! client sending Basic credentials sends them on every request. Hence:
//! - checks run on the blocking pool, at most `permits` at once (default: one per core); when
//!   `max_waiting` more are already queued, a check is refused at once as `Unavailable` instead
//!   of queueing without bound behind a flood of guesses;
//! - a check that started finishes and keeps its permit even when the request is abandoned, so
//!   clients that disconnect cannot get more verifications running than there are permits;
//! - a successful check is remembered by this node for `cache_ttl` (60 s) under a SHA-256 of a
//!   per-process random salt, the user name, a NUL and the password — no password is kept, and
//!   the key means nothing outside this process. Within that time a changed password or a
//!   disabled account is noticed only through the account lookup (itself cached for 60 s).
//!   Failures are not remembered, only counted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gatehouse_shared::auth::challenge::is_public_path;
use gatehouse_shared::auth::password::{BasicCredentials, credential_digest};
use http::{HeaderMap, header};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::accounts::backend::{DirectoryUser, LookupKind};
use crate::accounts::{Account, AccountError, AccountResolver};

/// The header (and query parameter) carrying a public-share token.
const SHARE_TOKEN: &str = "public-token";

/// How much password checking one node does at most.
#[derive(Debug, Clone)]
pub struct BasicLimits {
    /// Verifications running at once.
    pub permits: usize,
    /// Checks allowed to wait for a permit; more are answered `Unavailable` at once.
    pub max_waiting: usize,
    /// How long a successful check is remembered.
    pub cache_ttl: Duration,
    /// Remembered checks at most; when full, expired ones are dropped and, failing that, new
    /// successes are not remembered.
    pub cache_capacity: usize,
}

impl Default for BasicLimits {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        Self {
            permits: cores,
            max_waiting: 32 * cores,
            cache_ttl: Duration::from_secs(60),
            cache_capacity: 10_000,
        }
    }
}

/// Counters since start-up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BasicStats {
    /// Password checks handed to the directory (each one slow hash verification).
    pub verifications: u64,
    /// Checks that failed: wrong password, unknown user, no password, disabled account.
    pub failures: u64,
    /// Requests answered from the remembered successes.
    pub cache_hits: u64,
    /// Checks refused because too many were waiting.
    pub overloaded: u64,
    /// Most checks ever running at once.
    pub peak_running: usize,
}

#[derive(Debug)]
pub enum BasicOutcome {
    /// No Basic credentials, or a share-token request on a public path.
    NotApplicable,
    Accepted(Account),
    /// Wrong credentials or an account that must not sign in (answer 401).
    Rejected {
        reason: String,
    },
    /// The check could not be made now: overloaded, or the store is unreachable (answer 503).
    Unavailable {
        reason: String,
    },
}

#[derive(Default)]
struct Counters {
    verifications: AtomicU64,
    failures: AtomicU64,
    cache_hits: AtomicU64,
    overloaded: AtomicU64,
    running: AtomicUsize,
    peak_running: AtomicUsize,
}

struct Remembered {
    user_id: String,
    expires: Instant,
}

pub struct BasicAuthenticator {
    accounts: Arc<AccountResolver>,
    limits: BasicLimits,
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    remembered: Mutex<HashMap<[u8; 32], Remembered>>,
    salt: [u8; 32],
    counters: Arc<Counters>,
}

/// Decrements the number of waiting checks when a check stops waiting, abandoned or not.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl BasicAuthenticator {
    pub fn new(accounts: Arc<AccountResolver>) -> Self {
        Self::with_limits(accounts, BasicLimits::default())
    }

    pub fn with_limits(accounts: Arc<AccountResolver>, limits: BasicLimits) -> Self {
        tracing::warn!(
            "basic authentication is enabled: it is meant for development only, never for \
             production"
        );
        Self {
            accounts,
            permits: Arc::new(Semaphore::new(limits.permits.max(1))),
            limits,
            waiting: AtomicUsize::new(0),
            remembered: Mutex::new(HashMap::new()),
            salt: rand::random(),
            counters: Arc::new(Counters::default()),
        }
    }

    pub fn stats(&self) -> BasicStats {
        let c = &self.counters;
        BasicStats {
            verifications: c.verifications.load(Ordering::SeqCst),
            failures: c.failures.load(Ordering::SeqCst),
            cache_hits: c.cache_hits.load(Ordering::SeqCst),
            overloaded: c.overloaded.load(Ordering::SeqCst),
            peak_running: c.peak_running.load(Ordering::SeqCst),
        }
    }

    /// `query` is the raw query string, without `?`.
    pub async fn authenticate(
        &self,
        path: &str,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> BasicOutcome {
        let Some(credentials) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| BasicCredentials::parse(v.as_bytes()))
        else {
            return BasicOutcome::NotApplicable;
        };
        if is_public_path(path) && has_share_token(headers, query) {
            return BasicOutcome::NotApplicable;
        }
        let key = credential_digest(&self.salt, &credentials.username, &credentials.password);
        if let Some(user_id) = self.recall(&key) {
            self.counters.cache_hits.fetch_add(1, Ordering::SeqCst);
            let outcome = self.account(&user_id).await;
            if matches!(outcome, BasicOutcome::Rejected { .. }) {
                self.forget(&key);
            }
            return outcome;
        }
        let user = match self.check(credentials).await {
            Ok(user) => user,
            Err(outcome) => return outcome,
        };
        let outcome = self.account(&user.id).await;
        if matches!(outcome, BasicOutcome::Accepted(_)) {
            self.remember(key, user.id);
        }
        outcome
    }

    /// One password check through the directory, within the limits.
    async fn check(&self, credentials: BasicCredentials) -> Result<DirectoryUser, BasicOutcome> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.limits.max_waiting {
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                    self.counters.overloaded.fetch_add(1, Ordering::SeqCst);
                    return Err(BasicOutcome::Unavailable {
                        reason: "too many password checks waiting".into(),
                    });
                }
                let _waiting = Waiting(&self.waiting);
                self.permits.clone().acquire_owned().await.map_err(|_| {
                    BasicOutcome::Unavailable {
                        reason: "password checks are shut down".into(),
                    }
                })?
            }
        };
        let directory = self.accounts.directory().clone();
        let counters = self.counters.clone();
        let username = credentials.username.clone();
        let task = tokio::spawn(async move {
            let _permit = permit;
            counters.verifications.fetch_add(1, Ordering::SeqCst);
            let running = counters.running.fetch_add(1, Ordering::SeqCst) + 1;
            counters.peak_running.fetch_max(running, Ordering::SeqCst);
            let result = directory
                .check_password(&credentials.username, &credentials.password)
                .await;
            counters.running.fetch_sub(1, Ordering::SeqCst);
            result
        });
        let result = task.await.map_err(|e| BasicOutcome::Unavailable {
            reason: format!("password check failed: {e}"),
        })?;
        match result {
            Ok(Some(user)) => Ok(user),
            Ok(None) => {
                self.counters.failures.fetch_add(1, Ordering::SeqCst);
                Err(BasicOutcome::Rejected {
                    reason: format!("wrong user name or password for {username:?}"),
                })
            }
            Err(e) => {
                if matches!(e, AccountError::Disabled { .. }) {
                    self.counters.failures.fetch_add(1, Ordering::SeqCst);
                }
                Err(from_error(e))
            }
        }
    }

    async fn account(&self, user_id: &str) -> BasicOutcome {
        match self.accounts.lookup(LookupKind::UserId, user_id).await {
            Ok(account) => BasicOutcome::Accepted(account),
            Err(e) => from_error(e),
        }
    }

    fn recall(&self, key: &[u8; 32]) -> Option<String> {
        let remembered = self.remembered.lock().unwrap_or_else(|e| e.into_inner());
        remembered
            .get(key)
            .filter(|r| r.expires > Instant::now())
            .map(|r| r.user_id.clone())
    }

    fn remember(&self, key: [u8; 32], user_id: String) {
        let now = Instant::now();
        let mut remembered = self.remembered.lock().unwrap_or_else(|e| e.into_inner());
        if remembered.len() >= self.limits.cache_capacity {
            remembered.retain(|_, r| r.expires > now);
        }
        if remembered.len() < self.limits.cache_capacity || remembered.contains_key(&key) {
            remembered.insert(
                key,
                Remembered {
                    user_id,
                    expires: now + self.limits.cache_ttl,
                },
            );
        }
    }

    fn forget(&self, key: &[u8; 32]) {
        let mut remembered = self.remembered.lock().unwrap_or_else(|e| e.into_inner());
        remembered.remove(key);
    }
}

fn from_error(e: AccountError) -> BasicOutcome {
    if e.is_retryable() {
        BasicOutcome::Unavailable {
            reason: e.to_string(),
        }
    } else {
        BasicOutcome::Rejected {
            reason: e.to_string(),
        }
    }
}

/// A non-empty `public-token` header, or a non-empty first `public-token` query parameter (the
/// rules of Go's `Header.Get` and `URL.Query().Get`).
pub(crate) fn has_share_token(headers: &HeaderMap, query: Option<&str>) -> bool {
    if headers
        .get(SHARE_TOKEN)
        .is_some_and(|v| !v.as_bytes().is_empty())
    {
        return true;
    }
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(name, _)| percent_decode(name) == SHARE_TOKEN.as_bytes())
        .is_some_and(|(_, value)| !value.is_empty())
}

/// `application/x-www-form-urlencoded` decoding of a name (`+` is a space; a `%` not followed by
/// two hex digits stays as it is).
fn percent_decode(text: &str) -> Vec<u8> {
    let hex = |b: u8| char::from(b).to_digit(16);
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                bytes.get(i + 1).and_then(|&b| hex(b)),
                bytes.get(i + 2).and_then(|&b| hex(b)),
            ) {
                (Some(high), Some(low)) => {
                    // Two hex digits are at most 0xff.
                    out.push(u8::try_from(high * 16 + low).unwrap_or(b'%'));
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use gatehouse_shared::auth::roles::BuiltinRole;
    use gatehouse_shared::config::Config;
    use gatehouse_shared::store::{MemoryStore, Store};
    use http::HeaderValue;

    use super::*;
    use crate::accounts::builtin::{UserRecord, user_key};
    use crate::accounts::{AccountSettings, NoEvents};

    const MOSS: &str = "058bff95-6708-4fe5-91e4-9ea3d377588b";
    const DAV: &str = "/remote.php/dav/files/moss";
    const PUBLIC: &str = "/remote.php/dav/public-files/sharetoken/a.txt";

    async fn demo() -> (Arc<dyn Store>, Arc<AccountResolver>) {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let mut settings = AccountSettings::from_config(&Config::default());
        settings.demo_users = true;
        let resolver = AccountResolver::new(settings, store.clone(), Arc::new(NoEvents))
            .await
            .unwrap();
        (store, Arc::new(resolver))
    }

    fn limits(permits: usize, max_waiting: usize) -> BasicLimits {
        BasicLimits {
            permits,
            max_waiting,
            ..BasicLimits::default()
        }
    }

    fn encoded(user_pass: &str) -> String {
        let (username, password) = user_pass.split_once(':').unwrap();
        BasicCredentials {
            username: username.into(),
            password: password.into(),
        }
        .header_value()
    }

    fn basic(user_pass: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, encoded(user_pass).parse().unwrap());
        headers
    }

    fn accepted(outcome: BasicOutcome) -> Account {
        match outcome {
            BasicOutcome::Accepted(account) => account,
            other => panic!("not accepted: {other:?}"),
        }
    }

    fn rejected(outcome: BasicOutcome) -> String {
        match outcome {
            BasicOutcome::Rejected { reason } => reason,
            other => panic!("not rejected: {other:?}"),
        }
    }

    #[tokio::test]
    async fn good_credentials_give_the_account_with_its_stored_role() {
        let (_, accounts) = demo().await;
        let auth = BasicAuthenticator::new(accounts);
        for (creds, role) in [
            ("moss:vista", BuiltinRole::Admin),
            ("katherine:gemini", BuiltinRole::SpaceAdmin),
            ("einstein:relativity", BuiltinRole::User),
        ] {
            let account = accepted(auth.authenticate(DAV, &basic(creds), None).await);
            assert_eq!(account.role_id, role.id(), "{creds}");
            assert_eq!(Some(account.username.as_str()), creds.split(':').next());
        }
        let moss = accepted(auth.authenticate(DAV, &basic("moss:vista"), None).await);
        assert_eq!(moss.id, MOSS);
        assert_eq!(moss.group_names, ["users"]);
        assert_eq!(auth.stats().failures, 0);
    }

    #[tokio::test]
    async fn wrong_password_and_unknown_user_are_rejected_and_counted() {
        let (_, accounts) = demo().await;
        let auth = BasicAuthenticator::new(accounts);
        let reason = rejected(auth.authenticate(DAV, &basic("moss:Vista"), None).await);
        assert!(reason.contains("moss"), "{reason}");
        rejected(auth.authenticate(DAV, &basic("moss:"), None).await);
        rejected(auth.authenticate(DAV, &basic("nobody:vista"), None).await);
        let stats = auth.stats();
        assert_eq!((stats.verifications, stats.failures), (3, 3));
        assert_eq!(stats.cache_hits, 0);
    }

    #[tokio::test]
    async fn a_disabled_user_is_rejected_even_with_the_right_password() {
        let (store, accounts) = demo().await;
        let key = user_key(MOSS);
        let mut record: UserRecord =
            serde_json::from_slice(&store.get(&key).await.unwrap().unwrap().value).unwrap();
        record.disabled = true;
        store
            .put(&key, serde_json::to_vec(&record).unwrap().into(), None)
            .await
            .unwrap();
        let auth = BasicAuthenticator::new(accounts);
        let reason = rejected(auth.authenticate(DAV, &basic("moss:vista"), None).await);
        assert!(reason.contains("disabled"), "{reason}");
        assert_eq!(auth.stats().failures, 1);
    }

    #[tokio::test]
    async fn share_token_on_a_public_path_leaves_basic_to_the_share_authenticator() {
        let (_, accounts) = demo().await;
        let auth = BasicAuthenticator::new(accounts);
        let mut with_header = basic("public:sharepassword");
        with_header.insert(SHARE_TOKEN, HeaderValue::from_static("sharetoken"));
        let not_applicable = |o: BasicOutcome| matches!(o, BasicOutcome::NotApplicable);
        assert!(not_applicable(
            auth.authenticate(PUBLIC, &with_header, None).await
        ));
        for query in [
            "public-token=abc",
            "a=1&public-token=abc",
            "public%2Dtoken=abc",
        ] {
            assert!(
                not_applicable(
                    auth.authenticate(PUBLIC, &basic("moss:vista"), Some(query))
                        .await
                ),
                "{query}"
            );
        }
        assert_eq!(auth.stats().verifications, 0);

        // An empty token, no token, or a token on a path that is not public: Basic applies.
        for query in [None, Some("public-token="), Some("public-tokens=abc")] {
            accepted(auth.authenticate(PUBLIC, &basic("moss:vista"), query).await);
        }
        let mut empty = basic("moss:vista");
        empty.insert(SHARE_TOKEN, HeaderValue::from_static(""));
        accepted(auth.authenticate(PUBLIC, &empty, None).await);
        let mut on_dav = basic("moss:vista");
        on_dav.insert(SHARE_TOKEN, HeaderValue::from_static("sharetoken"));
        accepted(auth.authenticate(DAV, &on_dav, None).await);
    }

    #[tokio::test]
    async fn headers_that_are_not_basic_credentials_are_not_applicable() {
        let (_, accounts) = demo().await;
        let auth = BasicAuthenticator::new(accounts);
        let good = encoded("moss:vista");
        let token = good.strip_prefix("Basic ").unwrap();
        // "bm8gY29sb24=" is the base64 of "no colon".
        let values = [
            format!("Bearer {token}"),
            "Basic".to_owned(),
            "Basic %%%".to_owned(),
            format!("Basic {}", token.trim_end_matches('=')),
            "Basic bm8gY29sb24=".to_owned(),
        ];
        assert!(matches!(
            auth.authenticate(DAV, &HeaderMap::new(), None).await,
            BasicOutcome::NotApplicable
        ));
        for value in values {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
            assert!(
                matches!(
                    auth.authenticate(DAV, &headers, None).await,
                    BasicOutcome::NotApplicable
                ),
                "{value}"
            );
        }
        let mut lower = HeaderMap::new();
        lower.insert(
            header::AUTHORIZATION,
            format!("basic {token}").parse().unwrap(),
        );
        accepted(auth.authenticate(DAV, &lower, None).await);
        assert_eq!(auth.stats().verifications, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_remembered_success_costs_no_verification_until_it_expires() {
        let (_, accounts) = demo().await;
        let auth = BasicAuthenticator::new(accounts);
        accepted(auth.authenticate(DAV, &basic("moss:vista"), None).await);
        accepted(auth.authenticate(DAV, &basic("moss:vista"), None).await);
        assert_eq!(auth.stats().verifications, 1);
        assert_eq!(auth.stats().cache_hits, 1);

        // Another password for the same user is checked, and failures are not remembered.
        rejected(auth.authenticate(DAV, &basic("moss:vistA"), None).await);
        rejected(auth.authenticate(DAV, &basic("moss:vistA"), None).await);
        assert_eq!(auth.stats().verifications, 3);

        tokio::time::advance(Duration::from_secs(59)).await;
        accepted(auth.authenticate(DAV, &basic("moss:vista"), None).await);
        assert_eq!(auth.stats().verifications, 3);
        tokio::time::advance(Duration::from_secs(2)).await;
        accepted(auth.authenticate(DAV, &basic("moss:vista"), None).await);
        assert_eq!(auth.stats().verifications, 4);
        assert_eq!(auth.stats().cache_hits, 2);
    }

    #[tokio::test]
    async fn a_flood_of_wrong_passwords_runs_at_most_permits_verifications() {
        let (_, accounts) = demo().await;
        let auth = BasicAuthenticator::with_limits(accounts, limits(2, 100));
        let headers: Vec<HeaderMap> = (0..12).map(|i| basic(&format!("moss:guess{i}"))).collect();
        let outcomes =
            futures::future::join_all(headers.iter().map(|h| auth.authenticate(DAV, h, None)))
                .await;
        for outcome in outcomes {
            rejected(outcome);
        }
        let stats = auth.stats();
        assert_eq!(stats.verifications, 12);
        assert_eq!(stats.failures, 12);
        assert_eq!(stats.peak_running, 2);
        assert_eq!(stats.overloaded, 0);
    }

    #[tokio::test]
    async fn too_many_waiting_checks_are_refused_at_once() {
        let (_, accounts) = demo().await;
        let auth = BasicAuthenticator::with_limits(accounts, limits(1, 2));
        let headers: Vec<HeaderMap> = (0..10).map(|i| basic(&format!("moss:guess{i}"))).collect();
        let outcomes =
            futures::future::join_all(headers.iter().map(|h| auth.authenticate(DAV, h, None)))
                .await;
        let unavailable = outcomes
            .iter()
            .filter(|o| matches!(o, BasicOutcome::Unavailable { .. }))
            .count();
        let rejected = outcomes
            .iter()
            .filter(|o| matches!(o, BasicOutcome::Rejected { .. }))
            .count();
        // One running and two waiting are checked; the other seven are turned away.
        assert_eq!((rejected, unavailable), (3, 7));
        let stats = auth.stats();
        assert_eq!((stats.verifications, stats.overloaded), (3, 7));
        assert_eq!(stats.peak_running, 1);
    }

    #[tokio::test]
    async fn an_abandoned_check_keeps_its_permit_until_it_finishes() {
        let (_, accounts) = demo().await;
        let auth = BasicAuthenticator::with_limits(accounts, limits(1, 0));
        let headers = basic("moss:guess");
        // Started, then abandoned while the verification runs.
        let abandoned = tokio::time::timeout(
            Duration::from_millis(1),
            auth.authenticate(DAV, &headers, None),
        )
        .await;
        assert!(abandoned.is_err(), "a verification finished within 1 ms");
        assert!(matches!(
            auth.authenticate(DAV, &headers, None).await,
            BasicOutcome::Unavailable { .. }
        ));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while auth.permits.available_permits() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "permit never returned"
            );
            tokio::task::yield_now().await;
        }
        rejected(auth.authenticate(DAV, &headers, None).await);
        assert_eq!(auth.stats().verifications, 2);
    }

    #[test]
    fn percent_decoding_of_query_names() {
        assert_eq!(percent_decode("public%2dtoken"), b"public-token");
        assert_eq!(percent_decode("a+b%"), b"a b%");
        assert_eq!(percent_decode("%zz%4"), b"%zz%4");
    }
}
