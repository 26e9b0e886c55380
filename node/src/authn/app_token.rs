//! App tokens as Basic credentials (`auth_middleware.allow_app_auth`, oCIS's app-auth
//! authenticator): `Authorization: Basic <user name>:<app token>` authenticates as that user.
//!
//! The token is checked against the user's record in the shared state store
//! (`gatehouse_shared::auth::app_token`), read through the near-cache: the record's lookup ids
//! pick the one Argon2id hash to verify. Verification is bounded as the Basic authenticator's:
//! on the blocking pool, one per core, a bounded queue (beyond it `Unavailable`), and a success
//! is remembered for [`REMEMBER`] under a salted digest of user name and token. A remembered
//! success is still confirmed against the current record (a local read: no network on a hit),
//! so a deleted or expired token is refused as soon as the node has the changed record.
//!
//! Not applicable (other authenticators get their turn) without Basic credentials, and on the
//! public-share paths when a share token is present (its password travels as Basic too).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use gatehouse_shared::auth::app_token::{UserTokens, lookup_id, store_key};
use gatehouse_shared::auth::challenge::is_public_path;
use gatehouse_shared::auth::password::{BasicCredentials, credential_digest, verify};
use gatehouse_shared::store::Store;
use http::{HeaderMap, header};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::accounts::backend::LookupKind;
use crate::accounts::{Account, AccountResolver};
use crate::authn::basic::has_share_token;

/// How long a verified token is remembered by this node.
const REMEMBER: Duration = Duration::from_secs(60);
const REMEMBERED_MAX: usize = 10_000;

#[derive(Debug)]
pub enum AppTokenOutcome {
    NotApplicable,
    Accepted(Account),
    Rejected { reason: String },
    Unavailable { reason: String },
}

pub struct AppTokenAuthenticator {
    store: Arc<dyn Store>,
    accounts: Arc<AccountResolver>,
    permits: Arc<Semaphore>,
    max_waiting: usize,
    waiting: AtomicUsize,
    remembered: Mutex<HashMap<[u8; 32], Instant>>,
    salt: [u8; 32],
}

impl AppTokenAuthenticator {
    pub fn new(store: Arc<dyn Store>, accounts: Arc<AccountResolver>) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        AppTokenAuthenticator {
            store,
            accounts,
            permits: Arc::new(Semaphore::new(cores)),
            max_waiting: 32 * cores,
            waiting: AtomicUsize::new(0),
            remembered: Mutex::new(HashMap::new()),
            salt: rand::random(),
        }
    }

    /// `query` is the raw query string, without `?`.
    pub async fn authenticate(
        &self,
        path: &str,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> AppTokenOutcome {
        let Some(credentials) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| BasicCredentials::parse(v.as_bytes()))
        else {
            return AppTokenOutcome::NotApplicable;
        };
        if is_public_path(path) && has_share_token(headers, query) {
            return AppTokenOutcome::NotApplicable;
        }
        let (user, token) = (&credentials.username, &credentials.password);
        let tokens = match self.store.get(&store_key(user)).await {
            Ok(Some(entry)) => match serde_json::from_slice::<UserTokens>(&entry.value) {
                Ok(tokens) => tokens,
                Err(e) => {
                    return AppTokenOutcome::Rejected {
                        reason: format!("unreadable app-token record of {user:?}: {e}"),
                    };
                }
            },
            Ok(None) => {
                return AppTokenOutcome::Rejected {
                    reason: format!("{user:?} has no app tokens"),
                };
            }
            Err(e) => {
                return AppTokenOutcome::Unavailable {
                    reason: format!("app tokens: {e}"),
                };
            }
        };
        let Some(candidate) = tokens.candidate(&lookup_id(token), SystemTime::now()) else {
            return AppTokenOutcome::Rejected {
                reason: format!("no such app token of {user:?}"),
            };
        };
        let key = credential_digest(&self.salt, user, token);
        if !self.recall(&key) {
            match self.verify(token.clone(), candidate.hash.clone()).await {
                Ok(true) => self.remember(key),
                Ok(false) => {
                    return AppTokenOutcome::Rejected {
                        reason: format!("wrong app token for {user:?}"),
                    };
                }
                Err(reason) => return AppTokenOutcome::Unavailable { reason },
            }
        }
        match self
            .accounts
            .lookup(LookupKind::UserId, &tokens.user_id)
            .await
        {
            Ok(account) => AppTokenOutcome::Accepted(account),
            Err(e) if e.is_retryable() => AppTokenOutcome::Unavailable {
                reason: e.to_string(),
            },
            Err(e) => AppTokenOutcome::Rejected {
                reason: e.to_string(),
            },
        }
    }

    /// One Argon2id verification on the blocking pool, within the permits.
    async fn verify(&self, token: String, hash: String) -> Result<bool, String> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.max_waiting {
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                    return Err("too many app-token checks waiting".into());
                }
                let acquired = self.permits.clone().acquire_owned().await;
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                acquired.map_err(|_| "app-token checks are shut down".to_owned())?
            }
        };
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            verify(&token, &hash)
        })
        .await
        .map_err(|e| format!("app-token check failed: {e}"))
    }

    fn recall(&self, key: &[u8; 32]) -> bool {
        let remembered = self.remembered.lock().unwrap_or_else(|e| e.into_inner());
        remembered
            .get(key)
            .is_some_and(|until| *until > Instant::now())
    }

    fn remember(&self, key: [u8; 32]) {
        let now = Instant::now();
        let mut remembered = self.remembered.lock().unwrap_or_else(|e| e.into_inner());
        if remembered.len() >= REMEMBERED_MAX {
            remembered.retain(|_, until| *until > now);
        }
        if remembered.len() < REMEMBERED_MAX {
            remembered.insert(key, now + REMEMBER);
        }
    }
}
