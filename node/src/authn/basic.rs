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
fn has_share_token(headers: &HeaderMap, query: Option<&str>) -> bool {
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
