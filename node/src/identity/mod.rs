//! Builds the identity half of the pipeline — authenticators and account services — from the
//! configuration, once per node. Workers share the result, so caches, single-flight maps and the
//! event queue are per node, not per worker.
//!
//! Configuration mistakes found here (an unusable role mapping, a bad claim-managed-spaces
//! regex, an invalid `credentials_by_user_agent` value) stop start-up with a message naming the
//! key, like every other configuration error.

pub mod events;
pub mod memo;
pub mod mfa_record;

use std::sync::Arc;

use gatehouse_shared::auth::challenge::ChallengePolicy;
use gatehouse_shared::auth::mfa::MfaPolicy;
use gatehouse_shared::auth::roles::{RoleDriver, RoleMapper};
use gatehouse_shared::auth::spaces::SpaceClaimMapper;
use gatehouse_shared::config::Config;
use gatehouse_shared::events::{EventSink, NoopSink};
use gatehouse_shared::store::{MemoryStore, Store, SystemClock};
use gatehouse_shared::token::{MintCache, Minter};
use tokio_util::sync::CancellationToken;

use crate::accounts::{AccountResolver, AccountSettings};
use crate::authn::app_token::AppTokenAuthenticator;
use crate::authn::basic::BasicAuthenticator;
use crate::authn::oidc::{OidcAuthenticator, OidcSettings};
use crate::authn::public_share::{PublicShareAuthenticator, PublicShareSettings};
use crate::authn::signed_url::{SignedUrlAuthenticator, SignedUrlSettings};
use crate::endpoints::logout::LogoutService;
use crate::guard::Guard;
use crate::layers::account::AccountServices;
use crate::layers::authenticate::Authenticators;
use crate::layers::endpoints::{Endpoints, UserStore};
use crate::rate_limit::RateLimiter;
use crate::telemetry::Metrics;

use self::events::IdentityEvents;
use self::memo::{MemoEpoch, spawn_invalidation};

/// Minted tokens kept per node (one per distinct user state).
const MINT_CACHE_CAPACITY: usize = 100_000;

/// The stores identity state lives in.
#[derive(Clone)]
pub struct IdentityStores {
    /// `oidc.user_info_cache`: claims per token hash and the `sid` index.
    pub userinfo: Arc<dyn Store>,
    /// `state_store`: accounts (builtin), provisioning leases, group-sync marks, roles.
    pub state: Arc<dyn Store>,
    /// `pre_signed_url.signing_keys`: signing keys and step-up proofs (`mfa:<user id>`);
    /// `None` when neither signed URLs nor step-up are enabled.
    pub signing_keys: Option<Arc<dyn Store>>,
}

/// The authenticators and account services of a node.
#[derive(Clone)]
pub struct Identity {
    pub authenticators: Arc<Authenticators>,
    pub accounts: Arc<AccountServices>,
    pub endpoints: Arc<Endpoints>,
    /// Shared by every worker's identity memo; advanced when a logout lands anywhere.
    pub memo_epoch: MemoEpoch,
    /// The generation of the workers' signed-URL memos, advanced by every change the
    /// signing-key store reports locally; `None` when it cannot (no signed-URL memo then).
    pub signed_url_epoch: Option<MemoEpoch>,
    /// The `rate_limits` buckets, shared through the state store like the brute-force counts;
    /// `None` without rules.
    pub rate_limiter: Option<Arc<RateLimiter>>,
    oidc: Option<OidcAuthenticator>,
    userinfo: Arc<dyn Store>,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Configuration problems, one per line, each naming its key.
    #[error("{}", .0.join("\n"))]
    Config(Vec<String>),
    #[error("account backend: {0}")]
    Accounts(String),
}

impl Identity {
    pub async fn build(
        config: &Config,
        stores: IdentityStores,
        sink: Arc<dyn EventSink>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, IdentityError> {
        let ConfiguredRules {
            roles,
            spaces,
            challenges,
        } = ConfiguredRules::from_config(config).map_err(IdentityError::Config)?;
        for warning in roles.warnings() {
            tracing::warn!("{warning}");
        }
        let one = |p: String| IdentityError::Config(vec![p]);
        let secret = jwt_secret(config);
        let lifetime = config.token_manager.token_lifetime.0;
        let minter = Minter::new(secret.as_bytes(), lifetime)
            .map_err(|e| one(format!("token_manager: {e}")))?;
        let mint = MintCache::new(
            minter.clone(),
            MINT_CACHE_CAPACITY,
            lifetime / 4,
            Arc::new(SystemClock),
        )
        .map_err(|e| one(format!("token_manager: {e}")))?;
        let oidc = if config.oidc.issuer.is_empty() {
            None
        } else {
            Some(
                OidcAuthenticator::observed(
                    OidcSettings::from_config(config),
                    stores.userinfo.clone(),
                    Some(metrics.clone()),
                )
                .map_err(|e| one(format!("oidc: {e}")))?,
            )
        };

        let events = IdentityEvents::new(sink, &config.oidc.issuer);
        let resolver = Arc::new(
            AccountResolver::new(
                AccountSettings::from_config(config),
                stores.state.clone(),
                Arc::new(events.clone()),
            )
            .await
            .map_err(|e| IdentityError::Accounts(e.to_string()))?,
        );
        let basic = config
            .enable_basic_auth
            .then(|| BasicAuthenticator::new(resolver.clone()));
        let public_share =
            PublicShareAuthenticator::new(PublicShareSettings::from_config(config), minter)
                .map_err(|e| one(format!("public_shares: {e}")))?;
        let signed_url = match (&stores.signing_keys, config.pre_signed_url.enabled) {
            (Some(keys), true) => Some(
                SignedUrlAuthenticator::new(
                    SignedUrlSettings::from_config(config),
                    keys.clone(),
                    resolver.clone(),
                )
                .counting_derivations(metrics.signed_url_derivations.clone()),
            ),
            _ => None,
        };
        let signed_url_epoch = match (&stores.signing_keys, &signed_url) {
            (Some(keys), Some(_)) => {
                let epoch = MemoEpoch::new();
                let advance = epoch.clone();
                keys.watch_local(Arc::new(move |_: Option<&str>| advance.advance()))
                    .then_some(epoch)
            }
            _ => None,
        };
        let endpoints = Endpoints {
            root: config.http.root.trim_end_matches('/').to_owned(),
            logout: oidc.as_ref().map(|oidc| {
                LogoutService::from_config(config, oidc.clone(), events.clone(), resolver.clone())
            }),
            well_known: oidc.clone().filter(|_| config.oidc.rewrite_well_known),
            signing_keys: match (
                &stores.signing_keys,
                config.pre_signed_url.serve_signing_keys,
            ) {
                (Some(store), true) => Some(UserStore {
                    store: store.clone(),
                    jwt_secret: secret.as_bytes().to_vec(),
                }),
                _ => None,
            },
            app_tokens: config.auth_middleware.allow_app_auth.then(|| UserStore {
                store: stores.state.clone(),
                jwt_secret: secret.as_bytes().to_vec(),
            }),
        };

        let app_token = config
            .auth_middleware
            .allow_app_auth
            .then(|| AppTokenAuthenticator::new(stores.state.clone(), resolver.clone()));
        let guard = Guard::start(&config.brute_force, stores.state.clone(), metrics.clone());
        let rate_limiter = RateLimiter::start(&config.rate_limits, stores.state.clone(), &metrics);
        Ok(Identity {
            authenticators: Arc::new(Authenticators {
                basic,
                app_token,
                oidc: oidc.clone(),
                public_share,
                signed_url,
                challenges,
                metrics,
                guard,
            }),
            accounts: Arc::new(AccountServices {
                resolver,
                roles,
                spaces,
                mfa: MfaPolicy::new(config.mfa.enabled, &config.mfa.auth_level_name),
                quotas: config.role_quotas.clone(),
                mint,
                idp: config.oidc.issuer.clone(),
                events,
                state: stores.state,
                step_up_store: stores.signing_keys.clone(),
                mfa_session: config.mfa.session_duration.0,
            }),
            endpoints: Arc::new(endpoints),
            memo_epoch: MemoEpoch::new(),
            signed_url_epoch,
            rate_limiter,
            oidc,
            userinfo: stores.userinfo,
        })
    }

    /// An identity stack on in-process memory stores that publishes no events: for tests and
    /// tools that need a pipeline without a cluster.
    pub async fn standalone(config: &Config) -> Result<Self, IdentityError> {
        let stores = IdentityStores {
            userinfo: Arc::new(MemoryStore::new()),
            state: Arc::new(MemoryStore::new()),
            signing_keys: Some(Arc::new(MemoryStore::new())),
        };
        Self::build(
            config,
            stores,
            Arc::new(NoopSink),
            Metrics::new("standalone"),
        )
        .await
    }

    /// Starts the background work (JWKS refresh, memo invalidation on logouts) on the current
    /// runtime until `shutdown`.
    pub fn spawn_background(&self, shutdown: CancellationToken) {
        if let Some(oidc) = &self.oidc {
            oidc.spawn_background(shutdown.clone());
        }
        spawn_invalidation(self.userinfo.as_ref(), self.memo_epoch.clone(), shutdown);
    }
}

/// Configuration problems of the identity settings, each naming its key. Checked at start-up
/// and by `gatehouse config check`.
pub fn config_problems(config: &Config) -> Vec<String> {
    ConfiguredRules::from_config(config)
        .err()
        .unwrap_or_default()
}

/// The identity rules built from configuration alone (no I/O), once: checked by
/// [`config_problems`] and used by [`Identity::build`].
struct ConfiguredRules {
    roles: RoleMapper,
    spaces: Option<SpaceClaimMapper>,
    challenges: ChallengePolicy,
}

impl ConfiguredRules {
    /// Every problem is reported, not only the first.
    fn from_config(config: &Config) -> Result<Self, Vec<String>> {
        let roles = role_mapper(config);
        let spaces_cfg = &config.claim_space_management;
        let spaces = if spaces_cfg.enabled {
            SpaceClaimMapper::new(&spaces_cfg.claim, &spaces_cfg.regexp, &spaces_cfg.mapping)
                .map(Some)
                .map_err(|e| format!("claim_space_management: {e}"))
        } else {
            Ok(None)
        };
        let challenges = challenge_policy(config);
        match (roles, spaces, challenges) {
            (Ok(roles), Ok(spaces), Ok(challenges)) => Ok(Self {
                roles,
                spaces,
                challenges,
            }),
            (roles, spaces, challenges) => Err([roles.err(), spaces.err(), challenges.err()]
                .into_iter()
                .flatten()
                .collect()),
        }
    }
}

fn role_mapper(config: &Config) -> Result<RoleMapper, String> {
    let roles = &config.role_assignment;
    let mappings: Vec<(&str, &str)> = roles
        .oidc_role_mapper
        .role_mapping
        .iter()
        .map(|m| (m.role_name.as_str(), m.claim_value.as_str()))
        .collect();
    roles
        .driver
        .parse::<RoleDriver>()
        .and_then(|d| RoleMapper::new(d, &roles.oidc_role_mapper.role_claim, &mappings))
        .map_err(|e| format!("role_assignment: {e}"))
}

fn challenge_policy(config: &Config) -> Result<ChallengePolicy, String> {
    ChallengePolicy::new(
        !config.oidc.issuer.is_empty(),
        config.enable_basic_auth || config.auth_middleware.allow_app_auth,
        &config.auth_middleware.credentials_by_user_agent,
    )
    .map_err(|e| e.to_string())
}

/// `token_manager.jwt_secret`, or a random one for this process (backends sharing no secret
/// with the gateway cannot verify its tokens, which is logged loudly).
fn jwt_secret(config: &Config) -> String {
    let configured = &config.token_manager.jwt_secret;
    if !configured.is_empty() {
        return configured.clone();
    }
    tracing::warn!(
        "token_manager.jwt_secret (OCIS_JWT_SECRET) is empty: x-access-tokens are signed with a random \
         per-process secret that no backend knows"
    );
    use rand::Rng;
    let bytes: [u8; 32] = rand::thread_rng().r#gen();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
