//! Accounts: from the claims of a login to the user the backends are told about (spec §5.1–5.5).
//!
//! The user named by `user_oidc_claim` is looked up by `user_cs3_claim` (username, mail or id) in
//! an account backend — LibreGraph ([`graph`]) or the cluster's own state store ([`builtin`]).
//! With `auto_provision_accounts` a missing user is created from the `auto_provision_claims`,
//! display name and mail follow the claims, and group memberships follow the groups claim. The
//! user's role is kept in the state store. [`AccountResolver::resolve`] does all of that and
//! returns the [`Account`] the `x-access-token` is minted for ([`reva_user`]).
//!
//! What is cluster-wide here, and why it lives in the state store (all keys below):
//! - `account:<kind>:<value>` — the resolved account for 60 s, so a login whose claims are cached
//!   costs no directory call; on a NATS store each node's near-cache answers, and every change
//!   this module makes to a user deletes the user's entries so peers re-read.
//! - `provision:<username>` / `provision-group:<name>` — a 10 s lease: the node that creates it
//!   creates the user (group); the others poll the directory until it appears (up to 5 s), so
//!   concurrent first logins on several nodes create one user and all succeed.
//! - `groupsync:<user id>` — present for 5 minutes after a group sync; whoever creates it syncs,
//!   so a user's groups are synced at most once per 5 minutes across the cluster. It is deleted
//!   when the sync fails, so the next login tries again.
//! - `role:<user id>` — the user's role id (oCIS keeps it in the settings service, which the
//!   gateway cannot reach). Written only when it changes.
//!
//! Differences from oCIS: display name and mail are updated together (oCIS sends only the first
//! differing field per login); an absent mail claim leaves the stored mail alone; a failing
//! "add member" fails the sync like a failing "remove member" (oCIS only logs it); an absent or
//! `null` groups claim means "do not sync" (old oCIS removed every group).

pub mod backend;
pub mod builtin;
pub mod graph;
pub mod seed;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gatehouse_shared::auth::claims::{ClaimPath, GroupsClaim};
use gatehouse_shared::auth::roles::{BuiltinRole, RoleDecision};
use gatehouse_shared::config::Config;
use gatehouse_shared::store::{Store, StoreError};
use gatehouse_shared::token::{Minter, RevaUser, RevaUserId, TokenError, UserType};
use gatehouse_shared::trace::{self, propagate};
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;
use opentelemetry_semantic_conventions::attribute::ENDUSER_ID;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use self::backend::{CreateError, Directory, DirectoryUser, Identity, LookupKind, NewUser};
use self::builtin::BuiltinDirectory;
use self::graph::GraphDirectory;
use self::seed::{SeedError, SeedFile};
use crate::proxy::tls::{UpstreamTlsError, client_config};

/// A resolved user: what the `x-access-token` is minted for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub id: String,
    pub username: String,
    pub display_name: String,
    pub mail: String,
    /// Group ids.
    pub groups: Vec<String>,
    /// Group names, in the order of `groups`.
    pub group_names: Vec<String>,
    /// The one role id (a [`BuiltinRole`] id); empty only before a role was decided.
    pub role_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub id: String,
    pub name: String,
}

/// What a login resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub account: Account,
    /// Whether this call created the user.
    pub created: bool,
}

/// Directory changes the `builtin` backend reports (with oCIS the graph service emits these
/// events itself, so the `graph` backend reports nothing). Called after the change is stored,
/// only by the node that made it.
pub trait AccountEvents: Send + Sync {
    fn user_created(&self, _user: &Account) {}
    fn group_created(&self, _group: &Group) {}
    fn member_added(&self, _group: &Group, _user_id: &str) {}
    fn member_removed(&self, _group: &Group, _user_id: &str) {}
}

/// Reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoEvents;

impl AccountEvents for NoEvents {}

/// Why a login could not be resolved to an account.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    /// No such user and auto-provisioning is off (answer 401).
    #[error("no user with {claim} {value:?} (auto-provisioning is off)")]
    NotFound { claim: &'static str, value: String },
    /// The directory says the account must not sign in (answer 401).
    #[error("user {user:?} is disabled")]
    Disabled { user: String },
    /// A claim needed to find or provision the user is absent or not a non-empty string
    /// (answer 401 and log).
    #[error("claim {claim:?} is missing or not a non-empty string")]
    ClaimMissing { claim: String },
    /// The directory or the state store failed (answer 503 when retryable, else 502).
    #[error("account backend: {reason}")]
    Backend { reason: String, retryable: bool },
}

impl AccountError {
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            AccountError::Backend {
                retryable: true,
                ..
            }
        )
    }
}

fn store_failure(op: &str, e: StoreError) -> AccountError {
    AccountError::Backend {
        reason: format!("state store: {op}: {e}"),
        retryable: e.is_retryable(),
    }
}

/// Why the account layer cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AccountSetupError {
    #[error(transparent)]
    Seed(#[from] SeedError),
    #[error("account_backend graph: cannot mint service account tokens: {0}")]
    Token(TokenError),
    #[error("account_backend graph: service_account.service_account_id is empty")]
    NoServiceAccount,
    #[error("account_backend graph: {0}")]
    Tls(#[from] UpstreamTlsError),
}

impl AccountSetupError {
    /// Only seeding against an unreachable store can succeed when tried again.
    pub fn is_retryable(&self) -> bool {
        matches!(self, AccountSetupError::Seed(SeedError::Apply(e)) if e.is_retryable())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Builtin,
    Graph,
}

/// The claims auto-provisioning reads.
#[derive(Debug, Clone)]
pub struct ProvisionClaims {
    pub username: ClaimPath,
    pub email: ClaimPath,
    pub display_name: ClaimPath,
    pub groups: ClaimPath,
}

/// Everything the account layer takes from the configuration, plus its timings.
#[derive(Debug, Clone)]
pub struct AccountSettings {
    pub backend: BackendKind,
    pub graph_url: String,
    pub graph_timeout: Duration,
    pub insecure_backends: bool,
    pub backend_https_cacert: Option<PathBuf>,
    pub seed_file: Option<PathBuf>,
    /// Seed the `builtin` backend with the oCIS demo users (`builtin_accounts.demo_users`).
    pub demo_users: bool,
    pub user_claim: ClaimPath,
    pub lookup: LookupKind,
    pub auto_provision: bool,
    pub provision_claims: ProvisionClaims,
    pub service_account_id: String,
    pub jwt_secret: String,
    pub token_lifetime: Duration,
    /// How long a resolved account is reused without asking the directory.
    pub account_cache_ttl: Duration,
    /// At most one group sync per user per this interval, cluster-wide.
    pub group_sync_interval: Duration,
    /// Lifetime of a provisioning lease (bounds how long a crashed winner blocks others).
    pub provision_lease: Duration,
    /// How long a node that lost the lease waits for the winner's user (group) to appear.
    pub provision_wait: Duration,
}

impl AccountSettings {
    pub fn from_config(c: &Config) -> Self {
        let non_empty = |s: &str| (!s.is_empty()).then(|| PathBuf::from(s));
        let claims = &c.auto_provision_claims;
        AccountSettings {
            backend: match c.account_backend.as_str() {
                "graph" | "cs3" => BackendKind::Graph,
                _ => BackendKind::Builtin,
            },
            graph_url: c.graph.url.clone(),
            graph_timeout: c.graph.timeout.0,
            insecure_backends: c.insecure_backends,
            backend_https_cacert: non_empty(&c.backend_https_cacert),
            seed_file: non_empty(&c.builtin_accounts.seed_file),
            demo_users: c.builtin_accounts.demo_users,
            user_claim: ClaimPath::parse(&c.user_oidc_claim),
            lookup: LookupKind::parse(&c.user_cs3_claim).unwrap_or(LookupKind::Username),
            auto_provision: c.auto_provision_accounts,
            provision_claims: ProvisionClaims {
                username: ClaimPath::parse(&claims.username),
                email: ClaimPath::parse(&claims.email),
                display_name: ClaimPath::parse(&claims.display_name),
                groups: ClaimPath::parse(&claims.groups),
            },
            service_account_id: c.service_account.service_account_id.clone(),
            jwt_secret: c.token_manager.jwt_secret.clone(),
            token_lifetime: c.token_manager.token_lifetime.0,
            account_cache_ttl: Duration::from_secs(60),
            group_sync_interval: Duration::from_secs(5 * 60),
            provision_lease: Duration::from_secs(10),
            provision_wait: Duration::from_secs(5),
        }
    }
}

/// The user for the `x-access-token`: a PRIMARY user of `idp` with the account's group names and
/// its role id in the `roles` opaque entry.
pub fn reva_user(account: &Account, idp: &str) -> RevaUser {
    let mut user = RevaUser {
        id: Some(RevaUserId {
            idp: idp.to_owned(),
            opaque_id: account.id.clone(),
            user_type: UserType::PRIMARY,
        }),
        username: account.username.clone(),
        mail: account.mail.clone(),
        display_name: account.display_name.clone(),
        groups: account.group_names.clone(),
        ..RevaUser::default()
    };
    if !account.role_id.is_empty()
        && let Err(e) = user.set_roles(std::slice::from_ref(&account.role_id))
    {
        tracing::error!(error = %e, "cannot encode the roles opaque entry");
    }
    user
}

/// Value of a group-sync marker once its sync has finished; before that it holds the syncing
/// node's id.
const GROUP_SYNC_DONE: &[u8] = b"done";

/// A group-sync marker value: `state` (the syncing node's id, or `done`) followed by the
/// `traceparent` of the request that started the sync, when it was traced, so that another node
/// that finds the marker can link its request to that trace.
fn group_sync_marker(state: &[u8]) -> Bytes {
    match propagate::current_traceparent() {
        Some(tp) => {
            let mut v = Vec::with_capacity(state.len() + 1 + tp.len());
            v.extend_from_slice(state);
            v.push(b' ');
            v.extend_from_slice(tp.as_bytes());
            Bytes::from(v)
        }
        None => Bytes::copy_from_slice(state),
    }
}

/// The state and the starting request's `traceparent` of a group-sync marker.
fn parse_group_sync_marker(value: &[u8]) -> (&[u8], Option<&str>) {
    match value.iter().position(|b| *b == b' ') {
        Some(i) => (&value[..i], std::str::from_utf8(&value[i + 1..]).ok()),
        None => (value, None),
    }
}

/// What `sync_groups` did for one login.
enum GroupSync {
    /// No groups claim to sync from.
    Skipped,
    Synced {
        changed: bool,
    },
    /// Another node synced within the interval and has finished.
    DoneElsewhere,
    /// Another node is syncing right now.
    RunningElsewhere,
}

pub fn role_key(user_id: &str) -> String {
    format!("role:{user_id}")
}

pub fn group_sync_key(user_id: &str) -> String {
    format!("groupsync:{user_id}")
}

pub fn account_cache_key(kind: LookupKind, value: &str) -> String {
    format!("account:{}:{}", kind.as_str(), kind.normalise(value))
}

/// The value of a claim in a claims object: the whole name as a top-level key first, then the
/// dotted path (the rules of [`ClaimPath::lookup`]); `null` counts as absent.
fn claim_value<'a>(claims: &'a Map<String, Value>, path: &ClaimPath) -> Option<&'a Value> {
    claims
        .get(&path.segments().join("."))
        .or_else(|| walk(claims, path.segments()))
        .filter(|v| !v.is_null())
}

fn walk<'a>(claims: &'a Map<String, Value>, segments: &[String]) -> Option<&'a Value> {
    let (first, rest) = segments.split_first()?;
    rest.iter()
        .try_fold(claims.get(first)?, |current, segment| {
            current.as_object()?.get(segment)
        })
}

/// A non-empty string claim, by the rules of `gatehouse_shared::auth::claims::string_claim`
/// (which reads a `Value`; the claims arrive here as a map and are not copied).
fn string_claim<'a>(claims: &'a Map<String, Value>, path: &ClaimPath) -> Option<&'a str> {
    let non_empty = |v: &'a Value| v.as_str().filter(|s| !s.is_empty());
    claims
        .get(&path.segments().join("."))
        .and_then(non_empty)
        .or_else(|| walk(claims, path.segments()).and_then(non_empty))
}

fn required<'a>(claims: &'a Map<String, Value>, path: &ClaimPath) -> Result<&'a str, AccountError> {
    string_claim(claims, path).ok_or_else(|| AccountError::ClaimMissing {
        claim: path.as_str().to_owned(),
    })
}

fn to_account(user: DirectoryUser, role_id: String) -> Account {
    let (groups, group_names) = user.groups.into_iter().map(|g| (g.id, g.name)).unzip();
    Account {
        id: user.id,
        username: user.username,
        display_name: user.display_name,
        mail: user.mail,
        groups,
        group_names,
        role_id,
    }
}

/// Resolves logins to accounts; one per node, shared by all requests.
pub struct AccountResolver {
    settings: AccountSettings,
    state: Arc<dyn Store>,
    directory: Arc<dyn Directory>,
    /// Written into leases and markers, for diagnosis only.
    node_id: String,
}

impl AccountResolver {
    /// Opens the configured backend; for `builtin`, applies the demo users (when enabled) and
    /// then the seed file first.
    pub async fn new(
        settings: AccountSettings,
        state: Arc<dyn Store>,
        events: Arc<dyn AccountEvents>,
    ) -> Result<Self, AccountSetupError> {
        let directory: Arc<dyn Directory> = match settings.backend {
            BackendKind::Builtin => {
                let directory = Arc::new(BuiltinDirectory::new(state.clone(), events));
                let mut seeds = Vec::new();
                if settings.demo_users {
                    tracing::warn!(
                        "builtin_accounts.demo_users is on: the oCIS demo users exist with \
                         their well-known passwords; never use this in production"
                    );
                    seeds.push(seed::demo_users());
                }
                if let Some(path) = &settings.seed_file {
                    seeds.push(SeedFile::load(path)?);
                }
                for seed in &seeds {
                    let roles = seed::apply(directory.as_ref(), seed)
                        .await
                        .map_err(SeedError::Apply)?;
                    for (user_id, role) in roles {
                        create_role(state.as_ref(), &user_id, role)
                            .await
                            .map_err(SeedError::Apply)?;
                    }
                }
                directory
            }
            BackendKind::Graph => {
                if settings.service_account_id.is_empty() {
                    return Err(AccountSetupError::NoServiceAccount);
                }
                let minter = Minter::new(settings.jwt_secret.as_bytes(), settings.token_lifetime)
                    .map_err(AccountSetupError::Token)?;
                let tls = client_config(
                    settings.insecure_backends,
                    settings.backend_https_cacert.as_deref(),
                )?;
                Arc::new(GraphDirectory::new(
                    &settings.graph_url,
                    settings.graph_timeout,
                    tls,
                    minter,
                    &settings.service_account_id,
                ))
            }
        };
        Ok(Self::with_directory(settings, state, directory))
    }

    fn with_directory(
        settings: AccountSettings,
        state: Arc<dyn Store>,
        directory: Arc<dyn Directory>,
    ) -> Self {
        Self {
            settings,
            state,
            directory,
            node_id: uuid::Uuid::new_v4().to_string(),
        }
    }

    /// Claims → account (provisioning, updates, group sync, role). `role` is the role mapper's
    /// decision for these claims.
    pub async fn resolve(
        &self,
        claims: &Map<String, Value>,
        role: RoleDecision,
    ) -> Result<Resolved, AccountError> {
        let value = required(claims, &self.settings.user_claim)?;
        let kind = self.settings.lookup;
        let cache_key = account_cache_key(kind, value);
        if let Some(account) = self.cached(&cache_key).await
            && self.still_current(&account, claims, role).await?
        {
            return Ok(Resolved {
                account,
                created: false,
            });
        }

        let (user, provisioned, created) = match self.directory.find_user(kind, value).await? {
            Some(user) => (user, false, false),
            None if !self.settings.auto_provision => {
                return Err(AccountError::NotFound {
                    claim: kind.as_str(),
                    value: value.to_owned(),
                });
            }
            None => {
                let span = trace::Span::child("provision user", SpanKind::Internal);
                let provisioned = span.instrument(self.provision(claims)).await;
                match &provisioned {
                    Ok((user, created)) => span.set_with(|| {
                        vec![
                            KeyValue::new(ENDUSER_ID, user.id.clone()),
                            KeyValue::new("gatehouse.account.created", *created),
                        ]
                    }),
                    Err(e) => span.fail("backend", e.to_string()),
                }
                span.end();
                let (user, created) = provisioned?;
                (user, true, created)
            }
        };
        if !user.enabled {
            return Err(AccountError::Disabled {
                user: user.username,
            });
        }

        let mut user = user;
        let mut changed = false;
        let mut synced = false;
        let mut reread = false;
        // False while another node's group sync is under way: what was read may predate it.
        let mut cacheable = true;
        if self.settings.auto_provision {
            if !created {
                changed |= self.update_profile(&user, claims).await?;
            }
            match self.sync_groups(&user, claims).await? {
                GroupSync::Synced {
                    changed: group_changes,
                } => {
                    synced = true;
                    changed |= group_changes;
                }
                GroupSync::DoneElsewhere => reread = true,
                GroupSync::RunningElsewhere => cacheable = false,
                GroupSync::Skipped => {}
            }
        }
        if reread && !changed {
            // Another node finished a sync, possibly after `user` was read: use its result.
            user = self
                .directory
                .find_user(LookupKind::UserId, &user.id)
                .await?
                .ok_or_else(|| AccountError::Backend {
                    reason: format!("user {:?} vanished while being resolved", user.id),
                    retryable: true,
                })?;
        }
        if changed {
            let old = user.clone();
            user = self
                .directory
                .find_user(LookupKind::UserId, &old.id)
                .await?
                .ok_or_else(|| AccountError::Backend {
                    reason: format!("user {:?} vanished while being updated", old.id),
                    retryable: true,
                })?;
            self.invalidate(&old).await;
            self.invalidate(&user).await;
        }
        let span = trace::Span::child("assign role", SpanKind::Internal);
        let applied = span.instrument(self.apply_role(&user.id, role)).await;
        match &applied {
            Ok((role_id, changed)) => span.set_with(|| {
                vec![
                    KeyValue::new("gatehouse.role", role_id.clone()),
                    KeyValue::new("gatehouse.role.changed", *changed),
                ]
            }),
            Err(e) => span.fail("store", e.to_string()),
        }
        span.end();
        let (role_id, role_changed) = applied?;
        if role_changed && !changed {
            self.invalidate(&user).await;
        }
        let account = to_account(user, role_id);
        // A node that found someone else's fresh user may have read it before that node's
        // group sync: caching it could serve stale groups for a whole cache lifetime.
        if (!provisioned || synced) && cacheable {
            self.cache(&cache_key, &account).await;
        }
        Ok(Resolved { account, created })
    }

    /// The existing account whose `kind` attribute is `value`, with its stored role (the
    /// default role when none was stored yet). For logins that carry no claims — basic auth,
    /// signed URLs — so nothing is provisioned or synced. Answers from the shared account cache
    /// when it can.
    pub async fn lookup(&self, kind: LookupKind, value: &str) -> Result<Account, AccountError> {
        let cache_key = account_cache_key(kind, value);
        if let Some(account) = self.cached(&cache_key).await
            && !account.role_id.is_empty()
        {
            return Ok(account);
        }
        let user = self
            .directory
            .find_user(kind, value)
            .await?
            .ok_or_else(|| AccountError::NotFound {
                claim: kind.as_str(),
                value: value.to_owned(),
            })?;
        if !user.enabled {
            return Err(AccountError::Disabled {
                user: user.username,
            });
        }
        let (role_id, _) = self
            .apply_role(
                &user.id,
                RoleDecision::KeepExistingOrDefault {
                    default: BuiltinRole::User,
                },
            )
            .await?;
        let account = to_account(user, role_id);
        self.cache(&cache_key, &account).await;
        Ok(account)
    }

    /// The directory behind this resolver (for authenticators that check passwords).
    pub fn directory(&self) -> &Arc<dyn Directory> {
        &self.directory
    }

    async fn cached(&self, key: &str) -> Option<Account> {
        match self.state.get(key).await {
            Ok(Some(entry)) => serde_json::from_slice(&entry.value).ok(),
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(key, error = %e, "account cache unavailable");
                None
            }
        }
    }

    async fn cache(&self, key: &str, account: &Account) {
        let Ok(value) = serde_json::to_vec(account) else {
            return;
        };
        if let Err(e) = self
            .state
            .put(
                key,
                Bytes::from(value),
                Some(self.settings.account_cache_ttl),
            )
            .await
        {
            tracing::debug!(key, error = %e, "cannot cache the resolved account");
        }
    }

    /// Drops every cached resolution of this user, on every node.
    async fn invalidate(&self, user: &DirectoryUser) {
        let mut keys = vec![
            account_cache_key(LookupKind::UserId, &user.id),
            account_cache_key(LookupKind::Username, &user.username),
        ];
        if !user.mail.is_empty() {
            keys.push(account_cache_key(LookupKind::Mail, &user.mail));
        }
        for key in keys {
            if let Err(e) = self.state.delete(&key).await {
                tracing::warn!(key, error = %e, "cannot drop a cached account");
            }
        }
    }

    /// Whether a cached account needs no work for these claims: profile as in the claims, no
    /// group sync due, role as decided.
    async fn still_current(
        &self,
        account: &Account,
        claims: &Map<String, Value>,
        role: RoleDecision,
    ) -> Result<bool, AccountError> {
        match role {
            RoleDecision::Assign { role, .. } if account.role_id != role.id() => return Ok(false),
            RoleDecision::KeepExistingOrDefault { .. } if account.role_id.is_empty() => {
                return Ok(false);
            }
            _ => {}
        }
        if !self.settings.auto_provision {
            return Ok(true);
        }
        let (name, mail) = self.profile_changes(&account.display_name, &account.mail, claims)?;
        if name.is_some() || mail.is_some() {
            return Ok(false);
        }
        if !self.groups_claim_present(claims) {
            return Ok(true);
        }
        match self.state.get(&group_sync_key(&account.id)).await {
            Ok(marker) => Ok(marker.is_some()),
            // The slow path will skip the sync for the same reason; no need to go there.
            Err(_) => Ok(true),
        }
    }

    fn groups_claim_present(&self, claims: &Map<String, Value>) -> bool {
        matches!(
            claim_value(claims, &self.settings.provision_claims.groups),
            Some(Value::Array(_) | Value::String(_))
        )
    }

    /// The display name and mail the claims ask for where they differ from the stored ones.
    fn profile_changes<'a>(
        &self,
        display_name: &str,
        mail: &str,
        claims: &'a Map<String, Value>,
    ) -> Result<(Option<&'a str>, Option<&'a str>), AccountError> {
        let pc = &self.settings.provision_claims;
        let wanted_name = required(claims, &pc.display_name)?;
        let wanted_mail = string_claim(claims, &pc.email);
        Ok((
            (wanted_name != display_name).then_some(wanted_name),
            wanted_mail.filter(|m| *m != mail),
        ))
    }

    async fn update_profile(
        &self,
        user: &DirectoryUser,
        claims: &Map<String, Value>,
    ) -> Result<bool, AccountError> {
        let (name, mail) = self.profile_changes(&user.display_name, &user.mail, claims)?;
        if name.is_none() && mail.is_none() {
            return Ok(false);
        }
        self.directory.update_user(&user.id, name, mail).await?;
        Ok(true)
    }

    fn new_user(&self, claims: &Map<String, Value>) -> Result<NewUser, AccountError> {
        let pc = &self.settings.provision_claims;
        let display_name = required(claims, &pc.display_name)?;
        let username = required(claims, &pc.username)?;
        let mail = string_claim(claims, &pc.email).unwrap_or_default();
        let text = |name: &str| claims.get(name).and_then(Value::as_str);
        let identity = match (text("iss"), text("sub")) {
            (Some(issuer), Some(sub)) => Some(Identity {
                issuer: issuer.to_owned(),
                issuer_assigned_id: sub.to_owned(),
            }),
            _ => None,
        };
        Ok(NewUser {
            username: username.to_owned(),
            display_name: display_name.to_owned(),
            mail: mail.to_owned(),
            identity,
            id: None,
        })
    }

    /// Creates the user of these claims once across the cluster; returns it and whether this
    /// call created it.
    async fn provision(
        &self,
        claims: &Map<String, Value>,
    ) -> Result<(DirectoryUser, bool), AccountError> {
        let new = self.new_user(claims)?;
        let directory = self.directory.as_ref();
        let username = new.username.as_str();
        let new = &new;
        let (user, created) = self
            .once(
                format!("provision:{}", username.to_lowercase()),
                move || directory.find_user(LookupKind::Username, username),
                move || directory.create_user(new),
            )
            .await?;
        if created {
            tracing::info!(user = %user.username, id = %user.id, "auto-provisioned a user");
        }
        Ok((user, created))
    }

    /// The group with this name, created once across the cluster if missing.
    async fn ensure_group(&self, name: &str) -> Result<Group, AccountError> {
        let directory = self.directory.as_ref();
        if let Some(group) = directory.find_group(name).await? {
            return Ok(group);
        }
        let (group, _) = self
            .once(
                format!("provision-group:{}", name.to_lowercase()),
                move || directory.find_group(name),
                move || directory.create_group(name, None),
            )
            .await?;
        Ok(group)
    }

    /// Creates a thing exactly once across the cluster (the caller has just failed to find it):
    /// whoever creates the lease `lease_key` creates the thing; the others poll `find` until it
    /// appears or `provision_wait` passes, and then create it themselves, relying on the
    /// directory's unique names (`AlreadyExists` ⇒ re-read). Returns the thing and whether this
    /// call created it.
    async fn once<T, Find, FindFut, Create, CreateFut>(
        &self,
        lease_key: String,
        find: Find,
        create: Create,
    ) -> Result<(T, bool), AccountError>
    where
        Find: Fn() -> FindFut,
        FindFut: Future<Output = Result<Option<T>, AccountError>>,
        Create: Fn() -> CreateFut,
        CreateFut: Future<Output = Result<T, CreateError>>,
    {
        let lease = self
            .state
            .create(
                &lease_key,
                Bytes::from(self.node_id.clone()),
                Some(self.settings.provision_lease),
            )
            .await;
        let won = match lease {
            Ok(_) => true,
            Err(StoreError::Conflict { .. }) => false,
            Err(e) => {
                tracing::warn!(key = %lease_key, error = %e, "no provisioning lease; creating without one");
                true
            }
        };
        if won {
            // The winner of a previous lease may have finished between our lookup and now.
            let result = match find().await {
                Ok(Some(thing)) => Ok((thing, false)),
                Ok(None) => create_or_reread(&find, &create).await,
                Err(e) => Err(e),
            };
            if result.is_err() {
                let _ = self.state.delete(&lease_key).await;
            }
            return result;
        }

        let deadline = tokio::time::Instant::now() + self.settings.provision_wait;
        let mut pause = Duration::from_millis(10);
        loop {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
            if let Some(thing) = find().await? {
                return Ok((thing, false));
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
        }
        tracing::warn!(key = %lease_key, "the lease holder did not finish in time; creating");
        create_or_reread(&find, &create).await
    }

    /// Syncs the user's groups with the groups claim if the claim is present and no node has
    /// synced them within the interval. `None`: not synced; `Some(changed)`: synced.
    async fn sync_groups(
        &self,
        user: &DirectoryUser,
        claims: &Map<String, Value>,
    ) -> Result<GroupSync, AccountError> {
        if !self.groups_claim_present(claims) {
            return Ok(GroupSync::Skipped);
        }
        let claims_value = Value::Object(claims.clone());
        let GroupsClaim::Sync(desired) =
            GroupsClaim::from_claims(&claims_value, &self.settings.provision_claims.groups)
        else {
            return Ok(GroupSync::Skipped);
        };
        let marker = group_sync_key(&user.id);
        let ttl = Some(self.settings.group_sync_interval);
        match self
            .state
            .create(&marker, group_sync_marker(self.node_id.as_bytes()), ttl)
            .await
        {
            Ok(_) => {}
            Err(StoreError::Conflict { .. }) => {
                let entry = self.state.get(&marker).await.ok().flatten();
                let (state, started_by) = entry
                    .as_ref()
                    .map_or((&b""[..], None), |e| parse_group_sync_marker(&e.value));
                if let Some(tp) = started_by {
                    trace::link_current(&propagate::from_traceparent(tp), "group sync");
                }
                return Ok(if state == GROUP_SYNC_DONE {
                    GroupSync::DoneElsewhere
                } else {
                    GroupSync::RunningElsewhere
                });
            }
            Err(e) => {
                tracing::warn!(user = %user.id, error = %e, "group sync skipped: no sync marker");
                return Ok(GroupSync::Skipped);
            }
        }
        let span = trace::Span::child("sync groups", SpanKind::Internal);
        let applied = span.instrument(self.apply_groups(user, &desired)).await;
        match &applied {
            Ok(changed) => span.set("gatehouse.groups.changed", *changed),
            Err(e) => span.fail("backend", e.to_string()),
        }
        span.end();
        match applied {
            Ok(changed) => {
                // The marker now tells other nodes that what they read from now on is synced.
                if let Err(e) = self
                    .state
                    .put(&marker, group_sync_marker(GROUP_SYNC_DONE), ttl)
                    .await
                {
                    tracing::warn!(key = %marker, error = %e, "cannot mark the group sync done");
                }
                Ok(GroupSync::Synced { changed })
            }
            Err(e) => {
                if let Err(e) = self.state.delete(&marker).await {
                    tracing::warn!(key = %marker, error = %e, "cannot drop the group sync marker");
                }
                Err(e)
            }
        }
    }

    async fn apply_groups(
        &self,
        user: &DirectoryUser,
        desired: &[&str],
    ) -> Result<bool, AccountError> {
        let mut changed = false;
        for name in desired {
            if user.groups.iter().any(|g| g.name == *name) {
                continue;
            }
            let group = self.ensure_group(name).await?;
            self.directory.add_member(&group, &user.id).await?;
            changed = true;
        }
        for group in &user.groups {
            if desired.contains(&group.name.as_str()) {
                continue;
            }
            self.directory.remove_member(group, &user.id).await?;
            changed = true;
        }
        Ok(changed)
    }

    /// The user's role id after applying the decision, and whether it was changed.
    async fn apply_role(
        &self,
        user_id: &str,
        decision: RoleDecision,
    ) -> Result<(String, bool), AccountError> {
        let key = role_key(user_id);
        let stored = self
            .state
            .get(&key)
            .await
            .map_err(|e| store_failure("read role", e))?
            .map(|e| String::from_utf8_lossy(&e.value).into_owned())
            .filter(|r| !r.is_empty());
        match decision {
            RoleDecision::KeepExistingOrDefault { default } => match stored {
                Some(role_id) => Ok((role_id, false)),
                None => Ok((
                    create_role(self.state.as_ref(), user_id, default).await?,
                    true,
                )),
            },
            RoleDecision::Assign { role, .. } => {
                if stored.as_deref() == Some(role.id()) {
                    return Ok((role.id().to_owned(), false));
                }
                self.state
                    .put(&key, Bytes::from_static(role.id().as_bytes()), None)
                    .await
                    .map_err(|e| store_failure("write role", e))?;
                Ok((role.id().to_owned(), true))
            }
        }
    }
}

async fn create_or_reread<T, Find, FindFut, Create, CreateFut>(
    find: &Find,
    create: &Create,
) -> Result<(T, bool), AccountError>
where
    Find: Fn() -> FindFut,
    FindFut: Future<Output = Result<Option<T>, AccountError>>,
    Create: Fn() -> CreateFut,
    CreateFut: Future<Output = Result<T, CreateError>>,
{
    match create().await {
        Ok(thing) => Ok((thing, true)),
        Err(CreateError::AlreadyExists) => {
            find()
                .await?
                .map(|t| (t, false))
                .ok_or_else(|| AccountError::Backend {
                    reason: "created concurrently, but cannot be read back".into(),
                    retryable: true,
                })
        }
        Err(CreateError::Other(e)) => Err(e),
    }
}

/// Gives the user `role` unless a role is stored already; returns the stored role id.
async fn create_role(
    state: &dyn Store,
    user_id: &str,
    role: BuiltinRole,
) -> Result<String, AccountError> {
    let key = role_key(user_id);
    match state
        .create(&key, Bytes::from_static(role.id().as_bytes()), None)
        .await
    {
        Ok(_) => Ok(role.id().to_owned()),
        Err(StoreError::Conflict { .. }) => Ok(state
            .get(&key)
            .await
            .map_err(|e| store_failure("read role", e))?
            .map(|e| String::from_utf8_lossy(&e.value).into_owned())
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| role.id().to_owned())),
        Err(e) => Err(store_failure("write role", e)),
    }
}
