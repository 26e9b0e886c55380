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
use crate::authn::oidc::{OidcAuthenticator, OidcSettings};
use crate::layers::account::AccountServices;
use crate::layers::authenticate::Authenticators;
use crate::telemetry::Metrics;

use self::events::IdentityEvents;

/// Minted tokens kept per node (one per distinct user state).
const MINT_CACHE_CAPACITY: usize = 100_000;

/// The stores identity state lives in.
#[derive(Clone)]
pub struct IdentityStores {
    /// `oidc.user_info_cache`: claims per token hash and the `sid` index.
    pub userinfo: Arc<dyn Store>,
    /// `state_store`: accounts (builtin), provisioning leases, group-sync marks, roles.
    pub state: Arc<dyn Store>,
}

/// The authenticators and account services of a node.
#[derive(Clone)]
pub struct Identity {
    pub authenticators: Arc<Authenticators>,
    pub accounts: Arc<AccountServices>,
    oidc: Option<OidcAuthenticator>,
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
        let mint = Minter::new(secret.as_bytes(), lifetime)
            .and_then(|m| {
                MintCache::new(m, MINT_CACHE_CAPACITY, lifetime / 4, Arc::new(SystemClock))
            })
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
        let resolver = AccountResolver::new(
            AccountSettings::from_config(config),
            stores.state.clone(),
            Arc::new(events.clone()),
        )
        .await
        .map_err(|e| IdentityError::Accounts(e.to_string()))?;

        Ok(Identity {
            authenticators: Arc::new(Authenticators {
                oidc: oidc.clone(),
                challenges,
                metrics,
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
            }),
            oidc,
        })
    }

    /// An identity stack on in-process memory stores that publishes no events: for tests and
    /// tools that need a pipeline without a cluster.
    pub async fn standalone(config: &Config) -> Result<Self, IdentityError> {
        let stores = IdentityStores {
            userinfo: Arc::new(MemoryStore::new()),
            state: Arc::new(MemoryStore::new()),
        };
        Self::build(
            config,
            stores,
            Arc::new(NoopSink),
            Metrics::new("standalone"),
        )
        .await
    }

    /// Starts the background work (JWKS refresh) on the current runtime until `shutdown`.
    pub fn spawn_background(&self, shutdown: CancellationToken) {
        if let Some(oidc) = &self.oidc {
            oidc.spawn_background(shutdown);
        }
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
