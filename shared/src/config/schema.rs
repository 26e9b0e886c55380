//! The configuration schema: the oCIS `proxy.yaml` keys plus the documented Gatehouse additions.
//!
//! Every struct denies unknown fields so that a typo stops start-up instead of being ignored.
//! The `Default` impls are the oCIS defaults (spec §2) plus the Gatehouse choices documented in
//! docs/configuration.md. They are deterministic: values that depend on the machine (the TLS
//! certificate paths under the oCIS base data path) are filled in by the loader.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::duration::GoDuration;
use crate::rate_limit::RateLimitRule;
use crate::routing::{PolicyConfig, PolicySelectorConfig};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub http: Http,
    pub debug: Debug,
    pub log: Log,
    pub tracing: Tracing,
    pub oidc: Oidc,
    pub service_account: ServiceAccount,
    pub role_assignment: RoleAssignment,
    /// Replaces the default policies entirely when set.
    pub policies: Vec<PolicyConfig>,
    /// Merged into the defaults (routes appended to a policy of the same name) when `policies` is unset.
    pub additional_policies: Vec<PolicyConfig>,
    pub policy_selector: Option<PolicySelectorConfig>,
    pub pre_signed_url: PreSignedUrl,
    pub account_backend: String,
    pub user_oidc_claim: String,
    pub user_cs3_claim: String,
    pub machine_auth_api_key: String,
    pub auto_provision_accounts: bool,
    pub auto_provision_claims: AutoProvisionClaims,
    pub enable_basic_auth: bool,
    pub insecure_backends: bool,
    pub backend_https_cacert: String,
    pub auth_middleware: AuthMiddleware,
    pub policies_middleware: PoliciesMiddleware,
    pub csp_config_file_location: String,
    pub events: Events,
    pub reva: Reva,
    pub grpc_client_tls: GrpcClientTls,
    /// Role id → quota in bytes.
    pub role_quotas: BTreeMap<String, u64>,
    pub claim_space_management: ClaimSpaceManagement,
    pub mfa: Mfa,
    /// Gatehouse: limits on failed authentications, counted across the cluster.
    pub brute_force: BruteForce,
    /// Gatehouse: request-volume limits per client address or user, per route or policy.
    pub rate_limits: Vec<RateLimitRule>,

    // ---- Gatehouse additions (docs/configuration.md, "Gatehouse additions") ----
    /// The public URL of the installation (`OCIS_URL`); the HTTPS redirect only targets this host.
    pub ocis_url: String,
    /// This node's name in logs, metrics and traces (`service.instance.id`); empty: the host name.
    pub node_id: String,
    /// Service name → base URLs. Consulted before the NATS service registry.
    pub services: BTreeMap<String, Vec<String>>,
    pub service_registry: ServiceRegistry,
    /// Cluster-wide state shared by all nodes (group-sync marks, provisioning leases, …).
    pub state_store: StoreConfig,
    pub upstream: Upstream,
    /// The LibreGraph service used by the `graph` account backend.
    pub graph: Graph,
    /// Users and groups of the `builtin` account backend.
    pub builtin_accounts: BuiltinAccounts,
    /// The secret the `x-access-token` for backends is signed with (oCIS `token_manager`).
    pub token_manager: TokenManager,
    /// The share service that validates public-share tokens.
    pub public_shares: PublicShares,
}

/// Where the `graph` account backend reaches LibreGraph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Graph {
    /// Base URL up to and including `/graph`; requests go to `<url>/v1.0/...`.
    pub url: String,
    /// Time allowed for one call to LibreGraph.
    pub timeout: GoDuration,
}

/// The `builtin` account backend keeps users and groups in the state store.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BuiltinAccounts {
    /// YAML file with users and groups created at start-up when missing; empty: none.
    pub seed_file: String,
    /// Create the oCIS demo users (einstein, marie, …) with their well-known passwords.
    pub demo_users: bool,
}

/// Where public-share tokens are validated (docs/public-shares.md defines the contract).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublicShares {
    /// Base URL of the share service; empty: requests carrying a share token are refused.
    pub url: String,
    /// Time allowed for one validation call.
    pub timeout: GoDuration,
}

impl Default for PublicShares {
    fn default() -> Self {
        PublicShares {
            url: String::new(),
            timeout: GoDuration::secs(5),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenManager {
    /// HS256 secret shared with the backends (`OCIS_JWT_SECRET`).
    pub jwt_secret: String,
    /// Lifetime of a minted `x-access-token`.
    pub token_lifetime: GoDuration,
}

/// Upper bound of `http.workers`: each worker is an OS thread with its own runtime and pool.
pub const MAX_HTTP_WORKERS: usize = 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    pub addr: String,
    pub root: String,
    pub tls: bool,
    pub tls_cert: String,
    pub tls_key: String,
    pub force_strict_transport_security: bool,
    // Gatehouse additions: limits against slow or abusive clients, drain.
    /// Time allowed for a client to send the complete request head.
    pub header_read_timeout: GoDuration,
    /// Largest request head (request line + headers) accepted, in bytes.
    pub max_header_bytes: usize,
    /// A keep-alive connection with no request in flight is closed after this long.
    pub idle_timeout: GoDuration,
    /// On SIGTERM/SIGINT, in-flight requests get this long to finish.
    pub drain_timeout: GoDuration,
    /// Peers (CIDRs or addresses) whose X-Forwarded-* headers are believed.
    pub trusted_proxies: Vec<String>,
    /// Threads serving client connections, each with its own single-threaded runtime and
    /// upstream connection pool; 0 means one per available core.
    pub workers: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Debug {
    pub addr: String,
    pub token: String,
    pub pprof: bool,
    pub zpages: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    pub level: String,
    pub pretty: bool,
    pub color: bool,
    pub file: String,
}

/// Trace export (oCIS `tracing.*` plus the Gatehouse additions; `crate::trace::settings` resolves
/// them, together with the standard `OTEL_*` variables, to one exporter).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tracing {
    pub enabled: bool,
    /// `otlp`, or `jaeger` / empty (oCIS' default), which Gatehouse serves with OTLP too.
    #[serde(rename = "type")]
    pub kind: String,
    pub endpoint: String,
    pub collector: String,
    /// `service.name` of every span (oCIS `PROXY_TRACING_SERVICE`).
    pub service: String,
    // Gatehouse additions.
    /// OTLP transport: `grpc` or `http/protobuf`; empty: gRPC, unless only a collector URL is set.
    pub protocol: String,
    /// Headers sent with every export (collector tokens). Values are secrets: masked in dumps.
    pub headers: BTreeMap<String, String>,
    /// PEM file of CA certificates added to the system roots for an `https` endpoint.
    pub ca_file: String,
    /// Accept any certificate from an `https` endpoint (development only).
    pub insecure: bool,
    /// OpenTelemetry sampler name (`parentbased_traceidratio`, `always_on`, …).
    pub sampler: String,
    /// Share of new traces sampled by the ratio samplers, 0 to 1.
    pub sample_ratio: f64,
    /// Whose incoming `traceparent` is continued: `trusted_proxies`, `always` or `never`.
    pub trust_incoming: String,
    /// Extra resource attributes of every span.
    pub resource_attributes: BTreeMap<String, String>,
    /// Time allowed for one export call.
    pub export_timeout: GoDuration,
    /// Finished spans kept while the collector is slow or away; further spans are dropped.
    pub queue_size: usize,
}

impl Default for Tracing {
    fn default() -> Self {
        Tracing {
            enabled: false,
            kind: String::new(),
            endpoint: String::new(),
            collector: String::new(),
            service: "proxy".into(),
            protocol: String::new(),
            headers: BTreeMap::new(),
            ca_file: String::new(),
            insecure: false,
            sampler: "parentbased_traceidratio".into(),
            sample_ratio: 1.0,
            trust_incoming: "trusted_proxies".into(),
            resource_attributes: BTreeMap::new(),
            export_timeout: GoDuration::secs(10),
            queue_size: 2048,
        }
    }
}

/// A store definition in the oCIS shape (`store`, `addresses`/nodes, `database`, `table`, `ttl`, …)
/// plus the JetStream settings Gatehouse adds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `memory` (also `mem`, empty), `noop`, `nats-js-kv`.
    pub store: String,
    pub addresses: Vec<String>,
    pub database: String,
    pub table: String,
    pub ttl: GoDuration,
    pub disable_persistence: bool,
    pub username: String,
    pub password: String,
    pub enable_tls: bool,
    pub tls_insecure: bool,
    pub tls_root_ca_certificate: String,
    // Gatehouse additions
    /// Client certificate and key (PEM) for mutual TLS.
    pub tls_certificate: String,
    pub tls_key: String,
    /// NATS token, NKey seed or `.creds` file: alternatives to `username`/`password`.
    pub token: String,
    pub nkey_seed: String,
    pub credentials_file: String,
    /// JetStream replicas of the bucket (1, 3 or 5).
    pub replicas: usize,
    /// Deadline of one store operation on the request path.
    pub op_timeout: GoDuration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Oidc {
    pub issuer: String,
    pub insecure: bool,
    pub access_token_verify_method: String,
    pub access_token_verify_aud: Vec<String>,
    pub skip_user_info: bool,
    pub rewrite_well_known: bool,
    pub user_info_cache: StoreConfig,
    pub jwks: Jwks,
    /// Gatehouse: deadline of one identity-provider call on the request path.
    pub request_timeout: GoDuration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Jwks {
    /// Minutes.
    pub refresh_interval: u64,
    /// Seconds.
    pub refresh_timeout: u64,
    /// Seconds.
    pub refresh_limit: u64,
    pub refresh_unknown_kid: bool,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceAccount {
    pub service_account_id: String,
    pub service_account_secret: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoleAssignment {
    pub driver: String,
    pub oidc_role_mapper: OidcRoleMapper,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OidcRoleMapper {
    pub role_claim: String,
    pub role_mapping: Vec<RoleMapping>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleMapping {
    pub role_name: String,
    pub claim_value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PreSignedUrl {
    pub enabled: bool,
    pub allowed_http_methods: Vec<String>,
    pub signing_keys: StoreConfig,
    // Gatehouse additions.
    /// Longest `OC-Expires` accepted; zero: no limit (as oCIS).
    pub max_lifetime: GoDuration,
    /// Serve `GET /ocs/v{1,2}.php/cloud/user/signing-key` from the gateway (for clusters without oCIS `ocs`).
    pub serve_signing_keys: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutoProvisionClaims {
    pub username: String,
    pub email: String,
    pub display_name: String,
    pub groups: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthMiddleware {
    pub credentials_by_user_agent: BTreeMap<String, String>,
    pub allow_app_auth: bool,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoliciesMiddleware {
    pub query: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Events {
    pub endpoint: String,
    pub cluster: String,
    pub tls_insecure: bool,
    pub tls_root_ca_certificate: String,
    pub enable_tls: bool,
    pub username: String,
    pub password: String,
    // Gatehouse additions
    pub tls_certificate: String,
    pub tls_key: String,
    pub token: String,
    pub nkey_seed: String,
    pub credentials_file: String,
    /// Replicas of the `main-queue` stream when Gatehouse creates it.
    pub stream_replicas: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Reva {
    pub address: String,
    pub tls: GrpcClientTls,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcClientTls {
    pub mode: String,
    pub cacert: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClaimSpaceManagement {
    pub enabled: bool,
    pub claim: String,
    pub regexp: String,
    pub mapping: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mfa {
    pub enabled: bool,
    pub auth_level_name: Vec<String>,
    /// How long a step-up proven by an OIDC request carries over to the user's signed URLs.
    pub session_duration: GoDuration,
}

/// Counting failed authentications per client address, user name and share token across the
/// cluster, and blocking a key past its threshold (`shared::auth::brute_force`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BruteForce {
    pub enabled: bool,
    /// Failures are counted per window of this length, aligned to the clock.
    pub window: GoDuration,
    pub max_failures_per_address: u64,
    pub max_failures_per_user: u64,
    pub max_failures_per_share: u64,
    /// The first block of a key; each further block doubles it, up to `max_block`.
    pub block: GoDuration,
    pub max_block: GoDuration,
}

/// Resolution of `service` names through the oCIS NATS registry (bucket `service-registry`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceRegistry {
    pub enabled: bool,
    pub addresses: Vec<String>,
    pub bucket: String,
    pub username: String,
    pub password: String,
    pub enable_tls: bool,
    pub tls_insecure: bool,
    pub tls_root_ca_certificate: String,
    pub tls_certificate: String,
    pub tls_key: String,
    pub token: String,
    pub nkey_seed: String,
    pub credentials_file: String,
}

/// How the reverse proxy talks to upstreams.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Upstream {
    pub connect_timeout: GoDuration,
    pub response_header_timeout: GoDuration,
    /// Idle pooled connections to upstreams are closed after this long.
    pub pool_idle_timeout: GoDuration,
    /// A base URL that refused a connection is skipped for this long.
    pub unhealthy_backoff: GoDuration,
}

/// The NATS address every oCIS service uses by default (the embedded NATS of `ocis server`).
pub const DEFAULT_NATS_ADDRESS: &str = "127.0.0.1:9233";

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

impl Default for Config {
    fn default() -> Self {
        Config {
            http: Http::default(),
            debug: Debug::default(),
            log: Log::default(),
            tracing: Tracing::default(),
            oidc: Oidc::default(),
            service_account: ServiceAccount::default(),
            role_assignment: RoleAssignment::default(),
            policies: Vec::new(),
            additional_policies: Vec::new(),
            policy_selector: None,
            pre_signed_url: PreSignedUrl::default(),
            account_backend: "builtin".into(),
            user_oidc_claim: "preferred_username".into(),
            user_cs3_claim: "username".into(),
            machine_auth_api_key: String::new(),
            auto_provision_accounts: false,
            auto_provision_claims: AutoProvisionClaims::default(),
            enable_basic_auth: false,
            insecure_backends: false,
            backend_https_cacert: String::new(),
            auth_middleware: AuthMiddleware::default(),
            policies_middleware: PoliciesMiddleware::default(),
            csp_config_file_location: String::new(),
            events: Events::default(),
            reva: Reva::default(),
            grpc_client_tls: GrpcClientTls::default(),
            role_quotas: BTreeMap::new(),
            claim_space_management: ClaimSpaceManagement::default(),
            mfa: Mfa::default(),
            brute_force: BruteForce::default(),
            rate_limits: Vec::new(),
            ocis_url: String::new(),
            node_id: String::new(),
            services: BTreeMap::new(),
            service_registry: ServiceRegistry::default(),
            state_store: StoreConfig {
                database: "gatehouse-state".into(),
                ttl: GoDuration::default(),
                ..StoreConfig::default()
            },
            upstream: Upstream::default(),
            graph: Graph::default(),
            builtin_accounts: BuiltinAccounts::default(),
            token_manager: TokenManager::default(),
            public_shares: PublicShares::default(),
        }
    }
}

impl Default for Graph {
    fn default() -> Self {
        Graph {
            url: "http://127.0.0.1:9120/graph".into(),
            timeout: GoDuration::secs(10),
        }
    }
}

impl Default for TokenManager {
    fn default() -> Self {
        TokenManager {
            jwt_secret: String::new(),
            token_lifetime: GoDuration::secs(3600),
        }
    }
}

impl Default for Http {
    /// `tls_cert`/`tls_key` stay empty here; the loader puts them under the oCIS base data path.
    fn default() -> Self {
        Http {
            addr: "0.0.0.0:9200".into(),
            root: "/".into(),
            tls: true,
            tls_cert: String::new(),
            tls_key: String::new(),
            force_strict_transport_security: false,
            header_read_timeout: GoDuration::secs(10),
            max_header_bytes: 64 * 1024,
            idle_timeout: GoDuration::secs(120),
            drain_timeout: GoDuration::secs(30),
            trusted_proxies: Vec::new(),
            workers: 0,
        }
    }
}

impl Default for Debug {
    fn default() -> Self {
        Debug {
            addr: "127.0.0.1:9205".into(),
            token: String::new(),
            pprof: false,
            zpages: false,
        }
    }
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: "error".into(),
            pretty: false,
            color: false,
            file: String::new(),
        }
    }
}

impl Default for StoreConfig {
    /// An in-memory store; each use site (user-info cache, signing keys, state) overrides the
    /// kind, database and TTL in its parent's `Default`.
    fn default() -> Self {
        StoreConfig {
            store: "memory".into(),
            addresses: strings(&[DEFAULT_NATS_ADDRESS]),
            database: String::new(),
            table: String::new(),
            ttl: GoDuration::default(),
            disable_persistence: false,
            username: String::new(),
            password: String::new(),
            enable_tls: false,
            tls_insecure: false,
            tls_root_ca_certificate: String::new(),
            tls_certificate: String::new(),
            tls_key: String::new(),
            token: String::new(),
            nkey_seed: String::new(),
            credentials_file: String::new(),
            replicas: 1,
            op_timeout: GoDuration::millis(200),
        }
    }
}

impl Default for Oidc {
    fn default() -> Self {
        Oidc {
            issuer: "https://localhost:9200".into(),
            insecure: false,
            access_token_verify_method: "jwt".into(),
            access_token_verify_aud: Vec::new(),
            skip_user_info: false,
            rewrite_well_known: false,
            user_info_cache: StoreConfig {
                database: "cache-userinfo".into(),
                ttl: GoDuration::secs(10),
                ..StoreConfig::default()
            },
            jwks: Jwks::default(),
            request_timeout: GoDuration::secs(3),
        }
    }
}

impl Default for Jwks {
    fn default() -> Self {
        Jwks {
            refresh_interval: 60,
            refresh_timeout: 10,
            refresh_limit: 60,
            refresh_unknown_kid: true,
        }
    }
}

impl Default for RoleAssignment {
    fn default() -> Self {
        RoleAssignment {
            driver: "default".into(),
            oidc_role_mapper: OidcRoleMapper::default(),
        }
    }
}

impl Default for OidcRoleMapper {
    fn default() -> Self {
        let mapping = |role_name: &str, claim_value: &str| RoleMapping {
            role_name: role_name.into(),
            claim_value: claim_value.into(),
        };
        OidcRoleMapper {
            role_claim: "roles".into(),
            role_mapping: vec![
                mapping("admin", "ocisAdmin"),
                mapping("spaceadmin", "ocisSpaceAdmin"),
                mapping("user", "ocisUser"),
                mapping("user-light", "ocisGuest"),
            ],
        }
    }
}

impl Default for PreSignedUrl {
    fn default() -> Self {
        PreSignedUrl {
            enabled: true,
            allowed_http_methods: strings(&["GET"]),
            signing_keys: StoreConfig {
                store: "nats-js-kv".into(),
                database: "proxy".into(),
                table: "signing-keys".into(),
                ttl: GoDuration::secs(12 * 3600),
                disable_persistence: true,
                ..StoreConfig::default()
            },
            max_lifetime: GoDuration::secs(7 * 24 * 3600),
            serve_signing_keys: false,
        }
    }
}

impl Default for AutoProvisionClaims {
    fn default() -> Self {
        AutoProvisionClaims {
            username: "preferred_username".into(),
            email: "email".into(),
            display_name: "name".into(),
            groups: "groups".into(),
        }
    }
}

impl Default for Events {
    fn default() -> Self {
        Events {
            endpoint: DEFAULT_NATS_ADDRESS.into(),
            cluster: "ocis-cluster".into(),
            tls_insecure: false,
            tls_root_ca_certificate: String::new(),
            enable_tls: false,
            username: String::new(),
            password: String::new(),
            tls_certificate: String::new(),
            tls_key: String::new(),
            token: String::new(),
            nkey_seed: String::new(),
            credentials_file: String::new(),
            stream_replicas: 1,
        }
    }
}

impl Default for Reva {
    fn default() -> Self {
        Reva {
            address: "com.owncloud.api.gateway".into(),
            tls: GrpcClientTls::default(),
        }
    }
}

impl Default for Mfa {
    fn default() -> Self {
        Mfa {
            enabled: false,
            auth_level_name: strings(&["advanced"]),
            session_duration: GoDuration::secs(3600),
        }
    }
}

impl Default for BruteForce {
    fn default() -> Self {
        BruteForce {
            enabled: true,
            window: GoDuration::secs(60),
            max_failures_per_address: 50,
            max_failures_per_user: 10,
            max_failures_per_share: 10,
            block: GoDuration::secs(60),
            max_block: GoDuration::secs(3600),
        }
    }
}

impl Default for ServiceRegistry {
    fn default() -> Self {
        ServiceRegistry {
            enabled: false,
            addresses: strings(&[DEFAULT_NATS_ADDRESS]),
            bucket: "service-registry".into(),
            username: String::new(),
            password: String::new(),
            enable_tls: false,
            tls_insecure: false,
            tls_root_ca_certificate: String::new(),
            tls_certificate: String::new(),
            tls_key: String::new(),
            token: String::new(),
            nkey_seed: String::new(),
            credentials_file: String::new(),
        }
    }
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream {
            connect_timeout: GoDuration::secs(5),
            response_header_timeout: GoDuration::secs(60),
            pool_idle_timeout: GoDuration::secs(90),
            unhealthy_backoff: GoDuration::secs(10),
        }
    }
}
