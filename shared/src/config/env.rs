//! The one table of settings: YAML key, environment variables, documentation and the setter the
//! environment overlay uses. docs/configuration.md is generated from it, so an environment
//! variable cannot be honoured without being documented, nor documented without being honoured.
//!
//! Environment semantics follow oCIS (`ocis-pkg/config/envdecode`): a setting lists several
//! variables, resolved left to right, and the last one that is *set* (even to an empty value)
//! wins, so the service-specific `PROXY_*` name overrides the global `OCIS_*` one.

use std::collections::BTreeMap;

use super::duration::GoDuration;
use super::error::ConfigProblem;
use super::schema::Config;

/// How an environment value is written into the configuration.
#[derive(Clone, Copy)]
pub enum Setter {
    /// No environment variable: the key can only be set in the YAML file.
    YamlOnly,
    Str(fn(&mut Config) -> &mut String),
    /// Go `strconv.ParseBool` syntax.
    Bool(fn(&mut Config) -> &mut bool),
    /// Comma separated; items trimmed, empty items dropped.
    List(fn(&mut Config) -> &mut Vec<String>),
    /// Go duration syntax.
    Duration(fn(&mut Config) -> &mut GoDuration),
    U64(fn(&mut Config) -> &mut u64),
    Usize(fn(&mut Config) -> &mut usize),
    /// `name=url1|url2,name2=url3`, replacing the whole `services` map.
    Services,
    /// A floating-point number.
    F64(fn(&mut Config) -> &mut f64),
    /// `key=value,key2=value2` (W3C baggage / OpenTelemetry style: items trimmed, values
    /// percent-decoded), replacing the whole map.
    Pairs(fn(&mut Config) -> &mut BTreeMap<String, String>),
}

/// One documented configuration key.
#[derive(Clone, Copy)]
pub struct Setting {
    /// Dotted YAML key path, e.g. `oidc.user_info_cache.ttl`.
    pub key: &'static str,
    /// Environment variables in precedence order (the last one set wins).
    pub env: &'static [&'static str],
    /// Shown in the reference instead of the value taken from `Config::default()`.
    pub default_doc: Option<&'static str>,
    pub description: &'static str,
    pub setter: Setter,
}

/// A group of settings, one table in the reference.
pub struct Section {
    pub title: &'static str,
    pub intro: &'static str,
    /// Keys oCIS does not have.
    pub gatehouse: bool,
    pub settings: &'static [Setting],
}

const fn set(
    key: &'static str,
    env: &'static [&'static str],
    setter: Setter,
    description: &'static str,
) -> Setting {
    Setting {
        key,
        env,
        default_doc: None,
        description,
        setter,
    }
}

const fn yaml(key: &'static str, description: &'static str) -> Setting {
    set(key, &[], Setter::YamlOnly, description)
}

impl Setting {
    const fn shown_default(mut self, text: &'static str) -> Self {
        self.default_doc = Some(text);
        self
    }
}

macro_rules! string { ($($f:tt)+) => { Setter::Str(|c| &mut c.$($f)+) }; }
macro_rules! boolean { ($($f:tt)+) => { Setter::Bool(|c| &mut c.$($f)+) }; }
macro_rules! list { ($($f:tt)+) => { Setter::List(|c| &mut c.$($f)+) }; }
macro_rules! duration { ($($f:tt)+) => { Setter::Duration(|c| &mut c.$($f)+) }; }
macro_rules! uint { ($($f:tt)+) => { Setter::U64(|c| &mut c.$($f)+) }; }
macro_rules! usize { ($($f:tt)+) => { Setter::Usize(|c| &mut c.$($f)+) }; }

const STORE_KINDS: &str =
    "Store kind: `memory` (also `mem` or empty), `noop`, `nats-js-kv` or `redis-sentinel`.";

pub static SECTIONS: &[Section] = &[
    Section {
        title: "HTTP and TLS",
        intro: "",
        gatehouse: false,
        settings: &[
            set("http.addr", &["PROXY_HTTP_ADDR"], string!(http.addr),
                "Address the proxy listens on (`host:port`; `:port` means all interfaces)."),
            set("http.root", &["PROXY_HTTP_ROOT"], string!(http.root),
                "Path prefix under which the static routes and the proxy are mounted. Must start with `/`; a trailing `/` is removed."),
            set("http.tls", &["PROXY_TLS"], boolean!(http.tls),
                "Serve HTTPS. When the certificate or key file is missing, a self-signed pair is generated at those paths."),
            set("http.tls_cert", &["PROXY_TRANSPORT_TLS_CERT"], string!(http.tls_cert),
                "TLS certificate file (PEM).")
                .shown_default("`<base>/proxy/server.crt`"),
            set("http.tls_key", &["PROXY_TRANSPORT_TLS_KEY"], string!(http.tls_key),
                "TLS private key file (PEM).")
                .shown_default("`<base>/proxy/server.key`"),
            set("http.force_strict_transport_security", &["PROXY_FORCE_STRICT_TRANSPORT_SECURITY"],
                boolean!(http.force_strict_transport_security),
                "Send `Strict-Transport-Security` even on plain-HTTP requests (when TLS terminates in front of the proxy)."),
        ],
    },
    Section {
        title: "Debug server, log, tracing",
        intro: "",
        gatehouse: false,
        settings: &[
            set("debug.addr", &["PROXY_DEBUG_ADDR"], string!(debug.addr),
                "Address of the debug server (`/healthz`, `/readyz`, `/metrics`, `/config`)."),
            set("debug.token", &["PROXY_DEBUG_TOKEN"], string!(debug.token),
                "Bearer token required on the debug server; empty leaves it unprotected. Secret: masked in dumps."),
            set("debug.pprof", &["PROXY_DEBUG_PPROF"], boolean!(debug.pprof),
                "Accepted for compatibility; Gatehouse has no Go pprof endpoints."),
            set("debug.zpages", &["PROXY_DEBUG_ZPAGES"], boolean!(debug.zpages),
                "Accepted for compatibility; Gatehouse has no zpages."),
            set("log.level", &["OCIS_LOG_LEVEL", "PROXY_LOG_LEVEL"], string!(log.level),
                "One of `panic`, `fatal`, `error`, `warn`, `info`, `debug`, `trace`."),
            set("log.pretty", &["OCIS_LOG_PRETTY", "PROXY_LOG_PRETTY"], boolean!(log.pretty),
                "Human-readable log lines instead of JSON."),
            set("log.color", &["OCIS_LOG_COLOR", "PROXY_LOG_COLOR"], boolean!(log.color),
                "Colour the pretty log output."),
            set("log.file", &["OCIS_LOG_FILE", "PROXY_LOG_FILE"], string!(log.file),
                "Write the log to this file instead of standard error."),
            set("tracing.enabled", &["OCIS_TRACING_ENABLED", "PROXY_TRACING_ENABLED"], boolean!(tracing.enabled),
                "Export traces (docs/operations.md, \"Tracing\")."),
            set("tracing.type", &["OCIS_TRACING_TYPE", "PROXY_TRACING_TYPE"], string!(tracing.kind),
                "`otlp`, or empty/`jaeger` (the oCIS default). Gatehouse exports OTLP either way: for `jaeger` it \
                 sends OTLP to the Jaeger host (4317 for gRPC, 4318 for HTTP) and logs a warning."),
            set("tracing.endpoint",
                &["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OCIS_TRACING_ENDPOINT", "PROXY_TRACING_ENDPOINT"],
                string!(tracing.endpoint),
                "Collector: `host:port` (oCIS form, plain gRPC) or a URL (`http://`, `https://`). For `http/protobuf` a URL \
                 without a path gets `/v1/traces`. Empty: `localhost:4317` (gRPC) or `http://localhost:4318/v1/traces` (HTTP)."),
            set("tracing.collector", &["OCIS_TRACING_COLLECTOR", "PROXY_TRACING_COLLECTOR"], string!(tracing.collector),
                "Jaeger collector HTTP URL, used only when `tracing.endpoint` is empty: Gatehouse sends OTLP/HTTP to \
                 port 4318 of its host."),
            set("tracing.service", &["OTEL_SERVICE_NAME", "PROXY_TRACING_SERVICE"], string!(tracing.service),
                "`service.name` of the spans."),
        ],
    },
    Section {
        title: "OpenID Connect",
        intro: "",
        gatehouse: false,
        settings: &[
            set("oidc.issuer", &["OCIS_URL", "OCIS_OIDC_ISSUER", "PROXY_OIDC_ISSUER"], string!(oidc.issuer),
                "Issuer URL; compared byte for byte with the discovery document's `issuer` and the tokens' `iss`."),
            set("oidc.insecure", &["OCIS_INSECURE", "PROXY_OIDC_INSECURE"], boolean!(oidc.insecure),
                "Skip TLS verification of the identity provider."),
            set("oidc.access_token_verify_method", &["PROXY_OIDC_ACCESS_TOKEN_VERIFY_METHOD"],
                string!(oidc.access_token_verify_method),
                "`jwt` (verify access tokens as JWTs against the JWKS) or `none` (opaque tokens, checked through the userinfo endpoint)."),
            set("oidc.access_token_verify_aud", &["PROXY_OIDC_ACCESS_TOKEN_VERIFY_AUD"],
                list!(oidc.access_token_verify_aud),
                "Audience allow-list: a token is accepted when one of these values is in `aud` or equals `azp`. Empty disables the check."),
            set("oidc.skip_user_info", &["PROXY_OIDC_SKIP_USER_INFO"], boolean!(oidc.skip_user_info),
                "Take the claims from the access token only; never call the userinfo endpoint. Not allowed with `access_token_verify_method: none`."),
            set("oidc.rewrite_well_known", &["PROXY_OIDC_REWRITE_WELLKNOWN"], boolean!(oidc.rewrite_well_known),
                "Serve the identity provider's `/.well-known/openid-configuration` under the proxy's own URL."),
            set("oidc.jwks.refresh_interval", &["PROXY_OIDC_JWKS_REFRESH_INTERVAL"], uint!(oidc.jwks.refresh_interval),
                "Minutes between JWKS refreshes; `0` refreshes only on demand (unknown key ids), as in oCIS."),
            set("oidc.jwks.refresh_timeout", &["PROXY_OIDC_JWKS_REFRESH_TIMEOUT"], uint!(oidc.jwks.refresh_timeout),
                "Seconds allowed for one JWKS download; `0` means oCIS's default of 60 seconds."),
            set("oidc.jwks.refresh_limit", &["PROXY_OIDC_JWKS_REFRESH_RATE_LIMIT"], uint!(oidc.jwks.refresh_limit),
                "Minimum seconds between refreshes triggered by an unknown key id; `0` does not limit them, as in oCIS."),
            set("oidc.jwks.refresh_unknown_kid", &["PROXY_OIDC_JWKS_REFRESH_UNKNOWN_KID"],
                boolean!(oidc.jwks.refresh_unknown_kid),
                "Refresh the JWKS when a token names an unknown key id."),
        ],
    },
    Section {
        title: "User-info cache",
        intro: "Caches the identity provider's userinfo answers per access token (`oidc.user_info_cache`). \
                With more than one Gatehouse node use `nats-js-kv`, so that back-channel logout reaches every node.",
        gatehouse: false,
        settings: &[
            set("oidc.user_info_cache.store", &["OCIS_CACHE_STORE", "PROXY_OIDC_USERINFO_CACHE_STORE"],
                string!(oidc.user_info_cache.store), STORE_KINDS),
            set("oidc.user_info_cache.addresses", &["OCIS_CACHE_STORE_NODES", "PROXY_OIDC_USERINFO_CACHE_STORE_NODES"],
                list!(oidc.user_info_cache.addresses), "NATS servers (`host:port`) for `nats-js-kv`; sentinels (`host:port/master-name`) for `redis-sentinel`."),
            set("oidc.user_info_cache.database", &["OCIS_CACHE_DATABASE"], string!(oidc.user_info_cache.database),
                "Key-value bucket name."),
            set("oidc.user_info_cache.table", &["PROXY_OIDC_USERINFO_CACHE_TABLE"], string!(oidc.user_info_cache.table),
                "Key prefix inside the bucket (with `redis-sentinel`: of the Redis key, `<table><key>`, as go-micro writes it)."),
            set("oidc.user_info_cache.ttl", &["OCIS_CACHE_TTL", "PROXY_OIDC_USERINFO_CACHE_TTL"],
                duration!(oidc.user_info_cache.ttl), "Lifetime of a cached answer for a token without `exp` (answers of tokens with `exp` live until it); `0` caches such answers not at all. The bucket keeps entries at least 24 h, or without limit when this is `0`."),
            set("oidc.user_info_cache.disable_persistence",
                &["OCIS_CACHE_DISABLE_PERSISTENCE", "PROXY_OIDC_USERINFO_CACHE_DISABLE_PERSISTENCE"],
                boolean!(oidc.user_info_cache.disable_persistence), "Keep the bucket in memory on the NATS servers."),
            set("oidc.user_info_cache.username", &["OCIS_CACHE_AUTH_USERNAME", "PROXY_OIDC_USERINFO_CACHE_AUTH_USERNAME"],
                string!(oidc.user_info_cache.username), "NATS user name (with `redis-sentinel`: the Redis ACL user, a Gatehouse addition)."),
            set("oidc.user_info_cache.password", &["OCIS_CACHE_AUTH_PASSWORD", "PROXY_OIDC_USERINFO_CACHE_AUTH_PASSWORD"],
                string!(oidc.user_info_cache.password), "NATS password (with `redis-sentinel`: the password of Redis and the sentinels, a Gatehouse addition). Secret: masked in dumps."),
            set("oidc.user_info_cache.enable_tls", &["OCIS_CACHE_ENABLE_TLS", "PROXY_OIDC_USERINFO_CACHE_ENABLE_TLS"],
                boolean!(oidc.user_info_cache.enable_tls), "Connect to NATS with TLS (also on when an address starts with `tls://`); TLS required means TLS or no connection."),
            set("oidc.user_info_cache.tls_insecure", &["OCIS_CACHE_TLS_INSECURE", "PROXY_OIDC_USERINFO_CACHE_TLS_INSECURE"],
                boolean!(oidc.user_info_cache.tls_insecure), "Accept any server certificate (development only: a warning is logged). Ignored when a root CA is set."),
            set("oidc.user_info_cache.tls_root_ca_certificate", &["OCIS_CACHE_TLS_ROOT_CA_CERTIFICATE", "PROXY_OIDC_USERINFO_CACHE_TLS_ROOT_CA_CERTIFICATE"],
                string!(oidc.user_info_cache.tls_root_ca_certificate), "PEM file of the CA that signs the NATS servers' certificates; empty uses the system roots."),
            set("oidc.user_info_cache.tls_certificate", &["PROXY_NATS_TLS_CERTIFICATE", "PROXY_OIDC_USERINFO_CACHE_TLS_CERTIFICATE"],
                string!(oidc.user_info_cache.tls_certificate), "Gatehouse: client certificate (PEM) for NATS servers that verify clients (mutual TLS); needs `tls_key`."),
            set("oidc.user_info_cache.tls_key", &["PROXY_NATS_TLS_KEY", "PROXY_OIDC_USERINFO_CACHE_TLS_KEY"],
                string!(oidc.user_info_cache.tls_key), "Gatehouse: private key (PEM) of `tls_certificate`."),
            set("oidc.user_info_cache.token", &["PROXY_NATS_AUTH_TOKEN", "PROXY_OIDC_USERINFO_CACHE_AUTH_TOKEN"],
                string!(oidc.user_info_cache.token), "Gatehouse: NATS authentication token, instead of a user name and password. Secret: masked in dumps."),
            set("oidc.user_info_cache.nkey_seed", &["PROXY_NATS_AUTH_NKEY_SEED", "PROXY_OIDC_USERINFO_CACHE_AUTH_NKEY_SEED"],
                string!(oidc.user_info_cache.nkey_seed), "Gatehouse: NKey seed (`SU…`) of a NATS NKey user. Secret: masked in dumps."),
            set("oidc.user_info_cache.credentials_file", &["PROXY_NATS_AUTH_CREDENTIALS_FILE", "PROXY_OIDC_USERINFO_CACHE_AUTH_CREDENTIALS_FILE"],
                string!(oidc.user_info_cache.credentials_file), "Gatehouse: NATS `.creds` file (user JWT and NKey seed, decentralised authentication)."),
        ],
    },
    Section {
        title: "Pre-signed URLs",
        intro: "The signing keys are written by the oCIS `ocs` service into the NATS bucket `proxy`; \
                the proxy only reads them, so `signing_keys.store` must stay `nats-js-kv` for signed URLs to work. \
                Note that `OCIS_CACHE_STORE`/`OCIS_CACHE_TTL` also change this store, as in oCIS.",
        gatehouse: false,
        settings: &[
            set("pre_signed_url.enabled", &["PROXY_ENABLE_PRESIGNEDURLS"], boolean!(pre_signed_url.enabled),
                "Accept pre-signed URLs (`OC-Signature`)."),
            yaml("pre_signed_url.allowed_http_methods", "Methods a pre-signed URL may be used with (case-insensitive)."),
            set("pre_signed_url.signing_keys.store", &["OCIS_CACHE_STORE", "PROXY_PRESIGNEDURL_SIGNING_KEYS_STORE"],
                string!(pre_signed_url.signing_keys.store), STORE_KINDS),
            set("pre_signed_url.signing_keys.addresses",
                &["OCIS_CACHE_STORE_NODES", "PROXY_PRESIGNEDURL_SIGNING_KEYS_STORE_NODES"],
                list!(pre_signed_url.signing_keys.addresses), "NATS servers (`host:port`); sentinels (`host:port/master-name`) for `redis-sentinel`."),
            yaml("pre_signed_url.signing_keys.database",
                "Bucket name. Fixed in oCIS (the `ocs` service writes there): change it only if `ocs` is changed too."),
            yaml("pre_signed_url.signing_keys.table", "Key prefix inside the bucket. Fixed in oCIS, see `database`."),
            set("pre_signed_url.signing_keys.ttl", &["OCIS_CACHE_TTL", "PROXY_PRESIGNEDURL_SIGNING_KEYS_STORE_TTL"],
                duration!(pre_signed_url.signing_keys.ttl), "Lifetime of a signing key; `0` keeps keys until they are replaced or deleted (the bucket's max-age when Gatehouse creates it)."),
            set("pre_signed_url.signing_keys.disable_persistence",
                &["OCIS_CACHE_DISABLE_PERSISTENCE", "PROXY_PRESIGNEDURL_SIGNING_KEYS_STORE_DISABLE_PERSISTENCE"],
                boolean!(pre_signed_url.signing_keys.disable_persistence),
                "Read for compatibility; like oCIS, the proxy never creates this bucket, so it has no effect."),
            set("pre_signed_url.signing_keys.username",
                &["OCIS_CACHE_AUTH_USERNAME", "PROXY_PRESIGNEDURL_SIGNING_KEYS_STORE_AUTH_USERNAME"],
                string!(pre_signed_url.signing_keys.username), "NATS user name (with `redis-sentinel`: the Redis ACL user, a Gatehouse addition)."),
            set("pre_signed_url.signing_keys.password",
                &["OCIS_CACHE_AUTH_PASSWORD", "PROXY_PRESIGNEDURL_SIGNING_KEYS_STORE_AUTH_PASSWORD"],
                string!(pre_signed_url.signing_keys.password), "NATS password. Secret: masked in dumps."),
            set("pre_signed_url.signing_keys.enable_tls", &["OCIS_CACHE_ENABLE_TLS", "PROXY_PRESIGNEDURL_SIGNING_KEYS_STORE_ENABLE_TLS"],
                boolean!(pre_signed_url.signing_keys.enable_tls), "Connect to NATS with TLS (also on when an address starts with `tls://`); TLS required means TLS or no connection."),
            set("pre_signed_url.signing_keys.tls_insecure", &["OCIS_CACHE_TLS_INSECURE", "PROXY_PRESIGNEDURL_SIGNING_KEYS_STORE_TLS_INSECURE"],
                boolean!(pre_signed_url.signing_keys.tls_insecure), "Accept any server certificate (development only: a warning is logged). Ignored when a root CA is set."),
            set("pre_signed_url.signing_keys.tls_root_ca_certificate", &["OCIS_CACHE_TLS_ROOT_CA_CERTIFICATE", "PROXY_PRESIGNEDURL_SIGNING_KEYS_STORE_TLS_ROOT_CA_CERTIFICATE"],
                string!(pre_signed_url.signing_keys.tls_root_ca_certificate), "PEM file of the CA that signs the NATS servers' certificates; empty uses the system roots."),
            set("pre_signed_url.signing_keys.tls_certificate", &["PROXY_NATS_TLS_CERTIFICATE", "PROXY_PRESIGNEDURL_SIGNING_KEYS_STORE_TLS_CERTIFICATE"],
                string!(pre_signed_url.signing_keys.tls_certificate), "Gatehouse: client certificate (PEM) for NATS servers that verify clients (mutual TLS); needs `tls_key`."),
            set("pre_signed_url.signing_keys.tls_key", &["PROXY_NATS_TLS_KEY", "PROXY_PRESIGNEDURL_SIGNING_KEYS_STORE_TLS_KEY"],
                string!(pre_signed_url.signing_keys.tls_key), "Gatehouse: private key (PEM) of `tls_certificate`."),
            set("pre_signed_url.signing_keys.token", &["PROXY_NATS_AUTH_TOKEN", "PROXY_PRESIGNEDURL_SIGNING_KEYS_STORE_AUTH_TOKEN"],
                string!(pre_signed_url.signing_keys.token), "Gatehouse: NATS authentication token, instead of a user name and password. Secret: masked in dumps."),
            set("pre_signed_url.signing_keys.nkey_seed", &["PROXY_NATS_AUTH_NKEY_SEED", "PROXY_PRESIGNEDURL_SIGNING_KEYS_STORE_AUTH_NKEY_SEED"],
                string!(pre_signed_url.signing_keys.nkey_seed), "Gatehouse: NKey seed (`SU…`) of a NATS NKey user. Secret: masked in dumps."),
            set("pre_signed_url.signing_keys.credentials_file", &["PROXY_NATS_AUTH_CREDENTIALS_FILE", "PROXY_PRESIGNEDURL_SIGNING_KEYS_STORE_AUTH_CREDENTIALS_FILE"],
                string!(pre_signed_url.signing_keys.credentials_file), "Gatehouse: NATS `.creds` file (user JWT and NKey seed, decentralised authentication)."),
        ],
    },
    Section {
        title: "Accounts, provisioning, authentication, backends",
        intro: "",
        gatehouse: false,
        settings: &[
            set("account_backend", &["PROXY_ACCOUNT_BACKEND_TYPE"], string!(account_backend),
                "Where users and groups live: `builtin` (in the state store, shared by the cluster) or `graph` (an oCIS LibreGraph service at `graph.url`). oCIS's `cs3` is accepted as a name for `graph`."),
            set("user_oidc_claim", &["PROXY_USER_OIDC_CLAIM"], string!(user_oidc_claim),
                "Claim identifying the user (dotted path allowed, `\\.` escapes a dot)."),
            set("user_cs3_claim", &["PROXY_USER_CS3_CLAIM"], string!(user_cs3_claim),
                "CS3 user attribute the claim is matched against: `username`, `mail` or `userid`."),
            set("machine_auth_api_key", &["OCIS_MACHINE_AUTH_API_KEY", "PROXY_MACHINE_AUTH_API_KEY"],
                string!(machine_auth_api_key),
                "Shared secret for machine authentication against the gateway. Not yet required by Gatehouse. Secret: masked in dumps."),
            set("auto_provision_accounts", &["PROXY_AUTOPROVISION_ACCOUNTS"], boolean!(auto_provision_accounts),
                "Create unknown users from their claims."),
            set("auto_provision_claims.username", &["PROXY_AUTOPROVISION_CLAIM_USERNAME"],
                string!(auto_provision_claims.username), "Claim holding the new user's name."),
            set("auto_provision_claims.email", &["PROXY_AUTOPROVISION_CLAIM_EMAIL"],
                string!(auto_provision_claims.email), "Claim holding the e-mail address."),
            set("auto_provision_claims.display_name", &["PROXY_AUTOPROVISION_CLAIM_DISPLAYNAME"],
                string!(auto_provision_claims.display_name), "Claim holding the display name."),
            set("auto_provision_claims.groups", &["PROXY_AUTOPROVISION_CLAIM_GROUPS"],
                string!(auto_provision_claims.groups), "Claim holding the group names."),
            set("enable_basic_auth", &["PROXY_ENABLE_BASIC_AUTH"], boolean!(enable_basic_auth),
                "Accept HTTP basic authentication (development only)."),
            set("insecure_backends", &["PROXY_INSECURE_BACKENDS"], boolean!(insecure_backends),
                "Skip TLS verification of backends."),
            set("backend_https_cacert", &["PROXY_HTTPS_CACERT"], string!(backend_https_cacert),
                "Extra root CA file (PEM) trusted for backends."),
            yaml("auth_middleware.credentials_by_user_agent",
                "Map of user-agent → challenge (`basic` or `bearer`) sent to that client."),
            set("auth_middleware.allow_app_auth", &["PROXY_ENABLE_APP_AUTH"], boolean!(auth_middleware.allow_app_auth),
                "Accept app tokens as Basic credentials (`<user name>:<app token>`), and serve the oCIS `auth-app` API \
                 (`/auth-app/tokens`: create, list, delete) in the gateway, which keeps the tokens, hashed, in `state_store`."),
            set("policies_middleware.query", &["PROXY_POLICIES_QUERY"], string!(policies_middleware.query),
                "Rego query of the policies service; empty disables the policy check."),
            set("service_account.service_account_id", &["OCIS_SERVICE_ACCOUNT_ID", "PROXY_SERVICE_ACCOUNT_ID"],
                string!(service_account.service_account_id), "Service account id; the `graph` backend calls LibreGraph as this user."),
            set("service_account.service_account_secret",
                &["OCIS_SERVICE_ACCOUNT_SECRET", "PROXY_SERVICE_ACCOUNT_SECRET"],
                string!(service_account.service_account_secret),
                "Service account secret. Secret: masked in dumps."),
            set("reva.address", &["OCIS_REVA_GATEWAY"], string!(reva.address), "CS3 gateway (registry name or `host:port`)."),
            set("reva.tls.mode", &["OCIS_GRPC_CLIENT_TLS_MODE"], string!(reva.tls.mode),
                "TLS towards the gateway: `off`, `insecure` or `on`."),
            set("reva.tls.cacert", &["OCIS_GRPC_CLIENT_TLS_CACERT"], string!(reva.tls.cacert),
                "CA file for `reva.tls.mode: on`."),
            set("grpc_client_tls.mode", &["OCIS_GRPC_CLIENT_TLS_MODE"], string!(grpc_client_tls.mode),
                "TLS for the other gRPC clients (settings, policies): `off`, `insecure` or `on`."),
            set("grpc_client_tls.cacert", &["OCIS_GRPC_CLIENT_TLS_CACERT"], string!(grpc_client_tls.cacert),
                "CA file for `grpc_client_tls.mode: on`."),
        ],
    },
    Section {
        title: "Roles, quotas, claim-managed spaces, MFA",
        intro: "",
        gatehouse: false,
        settings: &[
            set("role_assignment.driver", &["PROXY_ROLE_ASSIGNMENT_DRIVER"], string!(role_assignment.driver),
                "`default` (roles kept in the settings service) or `oidc` (roles taken from a claim)."),
            set("role_assignment.oidc_role_mapper.role_claim", &["PROXY_ROLE_ASSIGNMENT_OIDC_CLAIM"],
                string!(role_assignment.oidc_role_mapper.role_claim), "Claim holding the role values (driver `oidc`)."),
            yaml("role_assignment.oidc_role_mapper.role_mapping",
                "Ordered list of `{role_name, claim_value}`; the first entry whose `claim_value` the user has wins.")
                .shown_default("admin←`ocisAdmin`, spaceadmin←`ocisSpaceAdmin`, user←`ocisUser`, user-light←`ocisGuest`"),
            yaml("role_quotas", "Map of role id (UUID) → personal space quota in bytes."),
            set("claim_space_management.enabled", &["OCIS_CLAIM_MANAGED_SPACES_ENABLED"],
                boolean!(claim_space_management.enabled), "Manage space memberships from a claim."),
            set("claim_space_management.claim", &["OCIS_CLAIM_MANAGED_SPACES_CLAIMNAME"],
                string!(claim_space_management.claim), "Claim holding the space entries."),
            set("claim_space_management.regexp", &["OCIS_CLAIM_MANAGED_SPACES_REGEXP"],
                string!(claim_space_management.regexp),
                "Regular expression with exactly two capture groups (space id, role) applied to each entry."),
            set("claim_space_management.mapping", &["OCIS_CLAIM_MANAGED_SPACES_MAPPING"],
                list!(claim_space_management.mapping), "Role mapping, items `oidcRole:ocisRole`."),
            set("mfa.enabled", &["OCIS_MFA_ENABLED"], boolean!(mfa.enabled), "Require step-up authentication where oCIS does."),
            set("mfa.auth_level_name", &["OCIS_MFA_AUTH_LEVEL_NAMES"], list!(mfa.auth_level_name),
                "`acr` values that count as multi-factor."),
        ],
    },
    Section {
        title: "Events, CSP",
        intro: "",
        gatehouse: false,
        settings: &[
            set("events.endpoint", &["OCIS_EVENTS_ENDPOINT", "PROXY_EVENTS_ENDPOINT"], string!(events.endpoint),
                "NATS servers events are published to: `host:port` or `nats://host:port`, several separated by commas (one cluster); empty publishes none."),
            set("events.cluster", &["OCIS_EVENTS_CLUSTER", "PROXY_EVENTS_CLUSTER"], string!(events.cluster),
                "Events cluster id."),
            set("events.tls_insecure", &["OCIS_INSECURE", "PROXY_EVENTS_TLS_INSECURE"], boolean!(events.tls_insecure),
                "Skip TLS verification of the events server."),
            set("events.tls_root_ca_certificate",
                &["OCIS_EVENTS_TLS_ROOT_CA_CERTIFICATE", "PROXY_EVENTS_TLS_ROOT_CA_CERTIFICATE"],
                string!(events.tls_root_ca_certificate), "Root CA file (PEM) of the events server."),
            set("events.enable_tls", &["OCIS_EVENTS_ENABLE_TLS", "PROXY_EVENTS_ENABLE_TLS"], boolean!(events.enable_tls),
                "Connect to the events server with TLS."),
            set("events.username", &["OCIS_EVENTS_AUTH_USERNAME", "PROXY_EVENTS_AUTH_USERNAME"],
                string!(events.username), "NATS user name."),
            set("events.password", &["OCIS_EVENTS_AUTH_PASSWORD", "PROXY_EVENTS_AUTH_PASSWORD"],
                string!(events.password), "NATS password. Secret: masked in dumps."),
            set("events.tls_certificate", &["PROXY_NATS_TLS_CERTIFICATE", "PROXY_EVENTS_TLS_CERTIFICATE"],
                string!(events.tls_certificate), "Gatehouse: client certificate (PEM) for NATS servers that verify clients (mutual TLS); needs `tls_key`."),
            set("events.tls_key", &["PROXY_NATS_TLS_KEY", "PROXY_EVENTS_TLS_KEY"],
                string!(events.tls_key), "Gatehouse: private key (PEM) of `tls_certificate`."),
            set("events.token", &["PROXY_NATS_AUTH_TOKEN", "PROXY_EVENTS_AUTH_TOKEN"],
                string!(events.token), "Gatehouse: NATS authentication token, instead of a user name and password. Secret: masked in dumps."),
            set("events.nkey_seed", &["PROXY_NATS_AUTH_NKEY_SEED", "PROXY_EVENTS_AUTH_NKEY_SEED"],
                string!(events.nkey_seed), "Gatehouse: NKey seed (`SU…`) of a NATS NKey user. Secret: masked in dumps."),
            set("events.credentials_file", &["PROXY_NATS_AUTH_CREDENTIALS_FILE", "PROXY_EVENTS_AUTH_CREDENTIALS_FILE"],
                string!(events.credentials_file), "Gatehouse: NATS `.creds` file (user JWT and NKey seed, decentralised authentication)."),
            set("csp_config_file_location", &["PROXY_CSP_CONFIG_FILE_LOCATION"], string!(csp_config_file_location),
                "YAML file with the Content-Security-Policy directives. When empty and `<base>/proxy/csp.yaml` exists, that file is used; otherwise the built-in policy."),
        ],
    },
    Section {
        title: "Policies (YAML only)",
        intro: "As in oCIS, routing policies can only be set in the file.",
        gatehouse: false,
        settings: &[
            yaml("policies", "Replaces the built-in policies (and their routes) entirely."),
            yaml("additional_policies",
                "Used when `policies` is not set: routes are appended to the built-in policy of the same name, new names are added."),
            yaml("policy_selector", "How a request picks its policy; unset selects the static policy `ocis`.")
                .shown_default("static `ocis`"),
        ],
    },
    Section {
        title: "HTTP limits",
        intro: "Protection against slow or abusive clients and a graceful stop. oCIS has no equivalent settings.",
        gatehouse: true,
        settings: &[
            set("http.header_read_timeout", &["PROXY_HTTP_HEADER_READ_TIMEOUT"], duration!(http.header_read_timeout),
                "Time a client has to send the complete request head. Must be positive."),
            set("http.max_header_bytes", &["PROXY_HTTP_MAX_HEADER_BYTES"], usize!(http.max_header_bytes),
                "Largest request head (request line and headers) accepted, in bytes. Must be positive."),
            set("http.idle_timeout", &["PROXY_HTTP_IDLE_TIMEOUT"], duration!(http.idle_timeout),
                "A keep-alive connection without a request in flight is closed after this long. Must be positive."),
            set("http.drain_timeout", &["PROXY_HTTP_DRAIN_TIMEOUT"], duration!(http.drain_timeout),
                "On SIGTERM/SIGINT, time in-flight requests get to finish; `0s` stops at once."),
            set("http.trusted_proxies", &["PROXY_TRUSTED_PROXIES"], list!(http.trusted_proxies),
                "Peers (IP addresses or CIDRs) whose `X-Forwarded-*`/`X-Real-IP` headers are believed; empty trusts none."),
            set("http.workers", &["PROXY_HTTP_WORKERS"], usize!(http.workers),
                "Threads serving client connections, each with its own single-threaded runtime and upstream connection \
                 pool; the listener hands each accepted connection to the least busy one. `0` means one per available \
                 core. At most 1024."),
        ],
    },
    Section {
        title: "Backends",
        intro: "`services` maps a service name used in a route's `service` field to base URLs and is consulted before \
                the service registry. Requests are spread across a service's URLs round-robin; a URL that refuses \
                connections is skipped for `upstream.unhealthy_backoff`.",
        gatehouse: true,
        settings: &[
            set("ocis_url", &["OCIS_URL"], string!(ocis_url),
                "Public URL of the installation; the HTTP→HTTPS redirect only targets this host."),
            set("services", &["PROXY_SERVICES"], Setter::Services,
                "Map of service name → list of base URLs (`http(s)://host[:port][/path]`). In the environment: \
                 `name=url1|url2,name2=url3`, which replaces the whole map."),
            set("service_registry.enabled", &["PROXY_SERVICE_REGISTRY_ENABLED"], boolean!(service_registry.enabled),
                "Resolve service names through the oCIS NATS service registry (the go-micro `nats-js-kv` registry)."),
            set("service_registry.addresses", &["MICRO_REGISTRY_ADDRESS", "PROXY_SERVICE_REGISTRY_ADDRESSES"],
                list!(service_registry.addresses), "NATS servers (`host:port`) of the registry."),
            set("service_registry.bucket", &["PROXY_SERVICE_REGISTRY_BUCKET"], string!(service_registry.bucket),
                "Key-value bucket the oCIS services register in."),
            set("service_registry.username", &["MICRO_REGISTRY_AUTH_USERNAME", "PROXY_SERVICE_REGISTRY_AUTH_USERNAME"],
                string!(service_registry.username), "NATS user name."),
            set("service_registry.password", &["MICRO_REGISTRY_AUTH_PASSWORD", "PROXY_SERVICE_REGISTRY_AUTH_PASSWORD"],
                string!(service_registry.password), "NATS password. Secret: masked in dumps."),
            set("service_registry.enable_tls", &["MICRO_REGISTRY_ENABLE_TLS", "PROXY_SERVICE_REGISTRY_ENABLE_TLS"],
                boolean!(service_registry.enable_tls), "Connect to NATS with TLS (also on when an address starts with `tls://`); TLS required means TLS or no connection."),
            set("service_registry.tls_insecure", &["MICRO_REGISTRY_TLS_INSECURE", "PROXY_SERVICE_REGISTRY_TLS_INSECURE"],
                boolean!(service_registry.tls_insecure), "Accept any server certificate (development only: a warning is logged). Ignored when a root CA is set."),
            set("service_registry.tls_root_ca_certificate", &["MICRO_REGISTRY_TLS_ROOT_CA_CERTIFICATE", "PROXY_SERVICE_REGISTRY_TLS_ROOT_CA_CERTIFICATE"],
                string!(service_registry.tls_root_ca_certificate), "PEM file of the CA that signs the NATS servers' certificates; empty uses the system roots."),
            set("service_registry.tls_certificate", &["PROXY_NATS_TLS_CERTIFICATE", "PROXY_SERVICE_REGISTRY_TLS_CERTIFICATE"],
                string!(service_registry.tls_certificate), "Gatehouse: client certificate (PEM) for NATS servers that verify clients (mutual TLS); needs `tls_key`."),
            set("service_registry.tls_key", &["PROXY_NATS_TLS_KEY", "PROXY_SERVICE_REGISTRY_TLS_KEY"],
                string!(service_registry.tls_key), "Gatehouse: private key (PEM) of `tls_certificate`."),
            set("service_registry.token", &["PROXY_NATS_AUTH_TOKEN", "PROXY_SERVICE_REGISTRY_AUTH_TOKEN"],
                string!(service_registry.token), "Gatehouse: NATS authentication token, instead of a user name and password. Secret: masked in dumps."),
            set("service_registry.nkey_seed", &["PROXY_NATS_AUTH_NKEY_SEED", "PROXY_SERVICE_REGISTRY_AUTH_NKEY_SEED"],
                string!(service_registry.nkey_seed), "Gatehouse: NKey seed (`SU…`) of a NATS NKey user. Secret: masked in dumps."),
            set("service_registry.credentials_file", &["PROXY_NATS_AUTH_CREDENTIALS_FILE", "PROXY_SERVICE_REGISTRY_AUTH_CREDENTIALS_FILE"],
                string!(service_registry.credentials_file), "Gatehouse: NATS `.creds` file (user JWT and NKey seed, decentralised authentication)."),
            set("upstream.connect_timeout", &["PROXY_UPSTREAM_CONNECT_TIMEOUT"], duration!(upstream.connect_timeout),
                "Time allowed to open a connection to a backend: name resolution, TCP connect and, for https backends, the TLS handshake. Must be positive."),
            set("upstream.response_header_timeout", &["PROXY_UPSTREAM_RESPONSE_HEADER_TIMEOUT"],
                duration!(upstream.response_header_timeout),
                "Time a backend has to send its response head after the request was sent. Must be positive."),
            set("upstream.pool_idle_timeout", &["PROXY_UPSTREAM_POOL_IDLE_TIMEOUT"], duration!(upstream.pool_idle_timeout),
                "Idle pooled backend connections are closed after this long. Must be positive."),
            set("upstream.unhealthy_backoff", &["PROXY_UPSTREAM_UNHEALTHY_BACKOFF"], duration!(upstream.unhealthy_backoff),
                "How long a base URL that refused a connection is skipped; `0s` never skips."),
        ],
    },
    Section {
        title: "Shared state store",
        intro: "Cluster-wide state of the Gatehouse nodes (group-sync marks, provisioning leases and similar). \
                With more than one node use `nats-js-kv`. Only `OCIS_CACHE_STORE`/`OCIS_CACHE_STORE_NODES` and the \
                cache credentials are inherited from oCIS; the TTL is not, because `OCIS_CACHE_TTL` is sized for short-lived caches.",
        gatehouse: true,
        settings: &[
            set("state_store.store", &["OCIS_CACHE_STORE", "PROXY_STATE_STORE"], string!(state_store.store), STORE_KINDS),
            set("state_store.addresses", &["OCIS_CACHE_STORE_NODES", "PROXY_STATE_STORE_NODES"],
                list!(state_store.addresses), "NATS servers (`host:port`); sentinels (`host:port/master-name`) for `redis-sentinel`."),
            set("state_store.database", &["PROXY_STATE_STORE_DATABASE"], string!(state_store.database),
                "Key-value bucket name."),
            set("state_store.table", &["PROXY_STATE_STORE_TABLE"], string!(state_store.table), "Key prefix inside the bucket (with `redis-sentinel`: of the Redis key; empty becomes `<database>:`, so that the state never mixes with oCIS keys)."),
            set("state_store.ttl", &["PROXY_STATE_STORE_TTL"], duration!(state_store.ttl),
                "Bucket-wide maximum age of an entry; `0s` (the default) keeps entries until they are deleted or their own expiry passes. Accounts of the builtin backend and role assignments live here, so do not set a maximum age shorter than they must last."),
            set("state_store.disable_persistence", &["PROXY_STATE_STORE_DISABLE_PERSISTENCE"],
                boolean!(state_store.disable_persistence), "Keep the bucket in memory on the NATS servers."),
            set("state_store.username", &["OCIS_CACHE_AUTH_USERNAME", "PROXY_STATE_STORE_AUTH_USERNAME"],
                string!(state_store.username), "NATS user name (with `redis-sentinel`: the Redis ACL user, a Gatehouse addition)."),
            set("state_store.password", &["OCIS_CACHE_AUTH_PASSWORD", "PROXY_STATE_STORE_AUTH_PASSWORD"],
                string!(state_store.password), "NATS password (with `redis-sentinel`: the password of Redis and the sentinels, a Gatehouse addition). Secret: masked in dumps."),
            set("state_store.enable_tls", &["OCIS_CACHE_ENABLE_TLS", "PROXY_STATE_STORE_ENABLE_TLS"],
                boolean!(state_store.enable_tls), "Connect to NATS with TLS (also on when an address starts with `tls://`); TLS required means TLS or no connection."),
            set("state_store.tls_insecure", &["OCIS_CACHE_TLS_INSECURE", "PROXY_STATE_STORE_TLS_INSECURE"],
                boolean!(state_store.tls_insecure), "Accept any server certificate (development only: a warning is logged). Ignored when a root CA is set."),
            set("state_store.tls_root_ca_certificate", &["OCIS_CACHE_TLS_ROOT_CA_CERTIFICATE", "PROXY_STATE_STORE_TLS_ROOT_CA_CERTIFICATE"],
                string!(state_store.tls_root_ca_certificate), "PEM file of the CA that signs the NATS servers' certificates; empty uses the system roots."),
            set("state_store.tls_certificate", &["PROXY_NATS_TLS_CERTIFICATE", "PROXY_STATE_STORE_TLS_CERTIFICATE"],
                string!(state_store.tls_certificate), "Gatehouse: client certificate (PEM) for NATS servers that verify clients (mutual TLS); needs `tls_key`."),
            set("state_store.tls_key", &["PROXY_NATS_TLS_KEY", "PROXY_STATE_STORE_TLS_KEY"],
                string!(state_store.tls_key), "Gatehouse: private key (PEM) of `tls_certificate`."),
            set("state_store.token", &["PROXY_NATS_AUTH_TOKEN", "PROXY_STATE_STORE_AUTH_TOKEN"],
                string!(state_store.token), "Gatehouse: NATS authentication token, instead of a user name and password. Secret: masked in dumps."),
            set("state_store.nkey_seed", &["PROXY_NATS_AUTH_NKEY_SEED", "PROXY_STATE_STORE_AUTH_NKEY_SEED"],
                string!(state_store.nkey_seed), "Gatehouse: NKey seed (`SU…`) of a NATS NKey user. Secret: masked in dumps."),
            set("state_store.credentials_file", &["PROXY_NATS_AUTH_CREDENTIALS_FILE", "PROXY_STATE_STORE_AUTH_CREDENTIALS_FILE"],
                string!(state_store.credentials_file), "Gatehouse: NATS `.creds` file (user JWT and NKey seed, decentralised authentication)."),
            set("state_store.replicas", &["PROXY_STATE_STORE_REPLICAS"], usize!(state_store.replicas),
                "JetStream replicas of the bucket when Gatehouse creates it (1 to 5; use 3 on a 3-node NATS cluster)."),
            set("state_store.op_timeout", &["PROXY_STATE_STORE_OP_TIMEOUT"], duration!(state_store.op_timeout),
                "Deadline of one store operation on the request path. Must be positive."),
        ],
    },
    Section {
        title: "Account backends and backend tokens",
        intro: "Gatehouse resolves accounts itself instead of asking a reva gateway, and mints the `x-access-token` \
                backends receive with the shared JWT secret.",
        gatehouse: true,
        settings: &[
            set("graph.url", &["PROXY_GRAPH_URL"], string!(graph.url),
                "LibreGraph base URL (up to `/graph`) for `account_backend: graph`."),
            set("graph.timeout", &["PROXY_GRAPH_TIMEOUT"], duration!(graph.timeout),
                "Time allowed for one LibreGraph call. Must be positive."),
            set("builtin_accounts.seed_file", &["PROXY_BUILTIN_ACCOUNTS_FILE"], string!(builtin_accounts.seed_file),
                "YAML file of users and groups the `builtin` backend creates at start-up when they are missing."),
            set("token_manager.jwt_secret", &["OCIS_JWT_SECRET", "PROXY_JWT_SECRET"], string!(token_manager.jwt_secret),
                "HS256 secret of the `x-access-token` shared with the backends. Empty: a random secret per process \
                 (a warning is logged; backends cannot verify such tokens). Secret: masked in dumps."),
            set("token_manager.token_lifetime", &["PROXY_JWT_TOKEN_LIFETIME"], duration!(token_manager.token_lifetime),
                "Lifetime of a minted `x-access-token`. Must be positive."),
        ],
    },
    Section {
        title: "Signed URLs, public shares, basic auth, step-up",
        intro: "Limits and services of the other ways in; docs/security.md explains the choices.",
        gatehouse: true,
        settings: &[
            set("oidc.request_timeout", &["PROXY_OIDC_REQUEST_TIMEOUT"], duration!(oidc.request_timeout),
                "Deadline of one call to the identity provider on the request path (discovery, JWKS for an unknown key id, userinfo). A call that misses it counts as a failure: the node answers 504 with `Retry-After` (503 for the requests that follow while it backs off), so a hung provider holds a login this long at most (oCIS waits 10 s). Must be positive."),
            set("pre_signed_url.max_lifetime", &["PROXY_PRESIGNEDURL_MAX_LIFETIME"], duration!(pre_signed_url.max_lifetime),
                "Longest `OC-Expires` a signed URL may carry; longer ones are refused before any key lookup. `0s`: no limit (as oCIS)."),
            set("pre_signed_url.serve_signing_keys", &["PROXY_PRESIGNEDURL_SERVE_SIGNING_KEYS"],
                boolean!(pre_signed_url.serve_signing_keys),
                "Answer `GET /ocs/v{1,2}.php/cloud/user/signing-key` in the gateway (same format and store as the oCIS `ocs` service), for clusters without oCIS."),
            set("public_shares.url", &["PROXY_PUBLIC_SHARES_URL"], string!(public_shares.url),
                "Base URL of the service that validates public-share tokens (contract: docs/public-shares.md). Empty: requests carrying a share token are refused."),
            set("public_shares.timeout", &["PROXY_PUBLIC_SHARES_TIMEOUT"], duration!(public_shares.timeout),
                "Time allowed for one share validation. Must be positive."),
            set("builtin_accounts.demo_users", &["PROXY_BUILTIN_DEMO_USERS"], boolean!(builtin_accounts.demo_users),
                "Create the oCIS demo users (einstein, marie, richard, moss, katherine, admin) with their well-known passwords. Development only; needs `account_backend: builtin`."),
            set("mfa.session_duration", &["PROXY_MFA_SESSION_DURATION"], duration!(mfa.session_duration),
                "How long a step-up proven by an OIDC request counts for the same user's signed-URL requests. Must be positive."),
        ],
    },
    Section {
        title: "Brute-force protection",
        intro: "Failed authentications (a wrong Basic password or app token, share password or signature, or signed URL; not \
                refused bearer tokens, which are expired sessions rather than guesses) are \
                counted per client address, user name and share token across every node, through the shared state store; \
                past a threshold within the window the key gets 429 with `Retry-After` until its block ends. Requests \
                without credentials are not counted; a success clears the user's and the share's count (not the \
                address's). docs/security.md explains the choices.",
        gatehouse: true,
        settings: &[
            set("brute_force.enabled", &["PROXY_BRUTE_FORCE_ENABLED"], boolean!(brute_force.enabled),
                "Count failures and block. Off: nothing is counted."),
            set("brute_force.window", &["PROXY_BRUTE_FORCE_WINDOW"], duration!(brute_force.window),
                "Failures are counted per window of this length. Must be positive."),
            set("brute_force.max_failures_per_address", &["PROXY_BRUTE_FORCE_MAX_FAILURES_PER_ADDRESS"],
                uint!(brute_force.max_failures_per_address),
                "Failures from one client address (IPv6: one /64) in a window before it is blocked. Must be positive."),
            set("brute_force.max_failures_per_user", &["PROXY_BRUTE_FORCE_MAX_FAILURES_PER_USER"],
                uint!(brute_force.max_failures_per_user),
                "Failures for one user name in a window before it is blocked. Must be positive."),
            set("brute_force.max_failures_per_share", &["PROXY_BRUTE_FORCE_MAX_FAILURES_PER_SHARE"],
                uint!(brute_force.max_failures_per_share),
                "Failures for one public-share token in a window before it is blocked. Must be positive."),
            set("brute_force.block", &["PROXY_BRUTE_FORCE_BLOCK"], duration!(brute_force.block),
                "Length of a key's first block; each further block of the same key doubles it. Must be positive."),
            set("brute_force.max_block", &["PROXY_BRUTE_FORCE_MAX_BLOCK"], duration!(brute_force.max_block),
                "Longest block. At least `block`."),
        ],
    },
    Section {
        title: "Rate limits (YAML only)",
        intro: "Request-volume limits, off unless rules are configured. Each rule is a token bucket per client address \
                (IPv6: one /64) or per authenticated user, applied to the routes it names, and shared across every node \
                through the state store: the cluster admits the rule's rate, not the rate times the nodes. A refused \
                request gets 429 with `Retry-After`; address rules are checked before authentication, user rules after \
                the account is known. docs/operations.md (\"Rate limits\") has an example and the behaviour when NATS fails.",
        gatehouse: true,
        settings: &[
            yaml("rate_limits",
                "List of rules: `name` (unique, no whitespace; the `rule` label of `gatehouse_rate_limited_total`), \
                 `per` (`address` or `user`), `requests` per `period` (default `1s`), `burst` (the bucket size; \
                 0: `requests`), `policy` (empty: every policy) and `endpoints` (routes by their configured `endpoint`; \
                 empty: every route of the policy). A route several rules apply to must pass all of them.")
                .shown_default("none"),
        ],
    },
    Section {
        title: "Tracing",
        intro: "Gatehouse settings of the trace exporter, with the standard OpenTelemetry variables they also \
                read. For every setting the variables are listed in precedence order, the last one set wins: the \
                generic `OTEL_*` one, then the signal-specific `OTEL_*_TRACES_*` one, then `OCIS_*`, then `PROXY_*`; all \
                override `proxy.yaml`.",
        gatehouse: true,
        settings: &[
            set("tracing.protocol", &["OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "PROXY_TRACING_PROTOCOL"],
                string!(tracing.protocol),
                "`grpc` or `http/protobuf` (`http/json` is not supported). Empty: gRPC, or HTTP when only `tracing.collector` is set."),
            set("tracing.headers", &["OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "PROXY_TRACING_HEADERS"],
                Setter::Pairs(|c| &mut c.tracing.headers),
                "Headers sent with every export, e.g. a collector token. In the environment `name=value,name2=value2` \
                 (values percent-decoded), which replaces the whole map. Secret: values masked in dumps."),
            set("tracing.ca_file", &["OTEL_EXPORTER_OTLP_CERTIFICATE", "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "PROXY_TRACING_CA_FILE"],
                string!(tracing.ca_file),
                "PEM file of CA certificates trusted, besides the system store, for an `https` endpoint."),
            set("tracing.insecure", &["PROXY_TRACING_INSECURE"], boolean!(tracing.insecure),
                "Do not verify the certificate of an `https` endpoint (development only; a warning is logged). \
                 Plain-text export is chosen by the endpoint's scheme, not by this switch."),
            set("tracing.sampler", &["OTEL_TRACES_SAMPLER", "PROXY_TRACING_SAMPLER"], string!(tracing.sampler),
                "`parentbased_traceidratio`, `parentbased_always_on`, `parentbased_always_off`, `traceidratio`, \
                 `always_on` or `always_off`. Parent-based samplers follow the decision of a trusted caller."),
            set("tracing.sample_ratio", &["OTEL_TRACES_SAMPLER_ARG", "PROXY_TRACING_SAMPLE_RATIO"],
                Setter::F64(|c| &mut c.tracing.sample_ratio),
                "Share of new traces sampled by the ratio samplers, from 0 to 1."),
            set("tracing.trust_incoming", &["PROXY_TRACING_TRUST_INCOMING"], string!(tracing.trust_incoming),
                "Whose `traceparent`/`tracestate`/`baggage` a request may carry in: `trusted_proxies` (the \
                 `http.trusted_proxies` peers), `always` or `never`. Other callers' context is recorded as a span \
                 link and never forwarded."),
            set("tracing.resource_attributes", &["OTEL_RESOURCE_ATTRIBUTES", "PROXY_TRACING_RESOURCE_ATTRIBUTES"],
                Setter::Pairs(|c| &mut c.tracing.resource_attributes),
                "Extra resource attributes of every span (`key=value,key2=value2`). `service.name`, \
                 `service.instance.id` and `service.version` here are ignored: they come from the settings above, \
                 `node_id` and the build."),
            set("tracing.export_timeout", &["PROXY_TRACING_EXPORT_TIMEOUT"], duration!(tracing.export_timeout),
                "Time allowed for one export call. Must be positive."),
            set("tracing.queue_size", &["OTEL_BSP_MAX_QUEUE_SIZE", "PROXY_TRACING_QUEUE_SIZE"], usize!(tracing.queue_size),
                "Finished spans kept while the collector is slow or unreachable; further spans are dropped and counted. \
                 Must be positive."),
            set("node_id", &["PROXY_NODE_ID"], string!(node_id),
                "This node's name in log lines (`node_id`), metrics (`gatehouse_node_info`) and traces \
                 (`service.instance.id`). Empty: the host name.")
                .shown_default("the host name"),
        ],
    },
    Section {
        title: "Store tuning",
        intro: "JetStream settings Gatehouse adds to the oCIS store definitions.",
        gatehouse: true,
        settings: &[
            set("events.stream_replicas", &["PROXY_EVENTS_STREAM_REPLICAS"], usize!(events.stream_replicas),
                "Replicas of the `main-queue` stream when no stream captures that subject and Gatehouse creates it (1 to 5; use 3 on a 3-node NATS cluster)."),
            set("oidc.user_info_cache.replicas", &["PROXY_OIDC_USERINFO_CACHE_REPLICAS"],
                usize!(oidc.user_info_cache.replicas), "JetStream replicas when Gatehouse creates the bucket (1 to 5)."),
            set("oidc.user_info_cache.op_timeout", &["PROXY_OIDC_USERINFO_CACHE_OP_TIMEOUT"],
                duration!(oidc.user_info_cache.op_timeout), "Deadline of one cache operation. Must be positive."),
            set("pre_signed_url.signing_keys.replicas", &["PROXY_PRESIGNEDURL_SIGNING_KEYS_STORE_REPLICAS"],
                usize!(pre_signed_url.signing_keys.replicas),
                "Validated like the others (1 to 5); the bucket is created by oCIS, not by Gatehouse."),
            set("pre_signed_url.signing_keys.op_timeout", &["PROXY_PRESIGNEDURL_SIGNING_KEYS_STORE_OP_TIMEOUT"],
                duration!(pre_signed_url.signing_keys.op_timeout), "Deadline of one signing-key lookup. Must be positive."),
        ],
    },
];

/// Every documented setting, in reference order.
pub fn settings() -> impl Iterator<Item = &'static Setting> {
    SECTIONS.iter().flat_map(|s| s.settings.iter())
}

/// Go's `strconv.ParseBool`.
pub fn parse_go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Splits an environment list value: comma separated, items trimmed, empty items dropped.
pub fn split_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn parse_services(v: &str) -> Result<BTreeMap<String, Vec<String>>, String> {
    let mut map = BTreeMap::new();
    for item in split_list(v) {
        let (name, urls) = item
            .split_once('=')
            .ok_or_else(|| format!("item {item:?} is not of the form name=url1|url2"))?;
        let name = name.trim();
        if name.is_empty() {
            return Err(format!("item {item:?} has no service name"));
        }
        let urls: Vec<String> = urls
            .split('|')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        map.insert(name.to_owned(), urls);
    }
    Ok(map)
}

/// `key=value,key2=value2` as the OpenTelemetry variables write it (`OTEL_EXPORTER_OTLP_HEADERS`,
/// `OTEL_RESOURCE_ATTRIBUTES`): items and keys trimmed, values percent-decoded, empty items dropped.
fn parse_pairs(v: &str) -> Result<BTreeMap<String, String>, String> {
    let mut map = BTreeMap::new();
    for item in split_list(v) {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| format!("item {item:?} is not of the form key=value"))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("item {item:?} has no key"));
        }
        let value = crate::auth::query::unescape(value.trim(), false)
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| format!("the value of {key:?} is not valid percent-encoded UTF-8"))?;
        map.insert(key.to_owned(), value);
    }
    Ok(map)
}

impl Setter {
    /// Writes `value` into `config`. Empty values leave booleans, numbers and durations alone,
    /// as Go's envdecode does (it ignores values it cannot parse for those types).
    fn apply(self, config: &mut Config, value: &str) -> Result<(), String> {
        let skip_empty = matches!(
            self,
            Setter::Bool(_)
                | Setter::Duration(_)
                | Setter::U64(_)
                | Setter::Usize(_)
                | Setter::F64(_)
        ) && value.is_empty();
        if skip_empty {
            return Ok(());
        }
        match self {
            Setter::YamlOnly => {}
            Setter::Str(field) => *field(config) = value.to_owned(),
            Setter::Bool(field) => {
                *field(config) = parse_go_bool(value).ok_or_else(|| {
                    format!(
                        "invalid value {value:?}: expected a boolean \
                         (1, t, T, TRUE, true, True, 0, f, F, FALSE, false, False)"
                    )
                })?;
            }
            Setter::List(field) => *field(config) = split_list(value),
            Setter::Duration(field) => {
                *field(config) = GoDuration::parse(value).map_err(|e| e.to_string())?;
            }
            Setter::U64(field) => {
                *field(config) = value.parse().map_err(|_| {
                    format!("invalid value {value:?}: expected a non-negative integer")
                })?;
            }
            Setter::Usize(field) => {
                *field(config) = value.parse().map_err(|_| {
                    format!("invalid value {value:?}: expected a non-negative integer")
                })?;
            }
            Setter::Services => config.services = parse_services(value)?,
            Setter::F64(field) => {
                *field(config) = value
                    .trim()
                    .parse()
                    .map_err(|_| format!("invalid value {value:?}: expected a number"))?;
            }
            Setter::Pairs(field) => *field(config) = parse_pairs(value)?,
        }
        Ok(())
    }
}

/// Applies the environment to `config`, collecting one problem per variable with a bad value.
/// Variables that are not in the table (including unknown `PROXY_*` ones) are ignored, as in oCIS.
pub fn overlay(
    config: &mut Config,
    env: &BTreeMap<String, String>,
    problems: &mut Vec<ConfigProblem>,
) {
    let secrets = super::secrets::secret_keys();
    for setting in settings() {
        let found = if secrets.contains(&setting.key) {
            super::secrets::from_env(setting.env, env)
        } else {
            setting
                .env
                .iter()
                .rev()
                .find_map(|name| env.get(*name).map(|v| ((*name).to_owned(), Ok(v.clone()))))
        };
        let Some((name, value)) = found else {
            continue;
        };
        let applied = value.and_then(|value| setting.setter.apply(config, &value));
        if let Err(message) = applied {
            problems.push(ConfigProblem::new(
                name,
                format!("{message} (sets {})", setting.key),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn overlaid(pairs: &[(&str, &str)]) -> (Config, Vec<ConfigProblem>) {
        let mut config = Config::default();
        let mut problems = Vec::new();
        overlay(&mut config, &env(pairs), &mut problems);
        (config, problems)
    }

    #[test]
    fn last_set_variable_wins_regardless_of_map_order() {
        let (c, p) = overlaid(&[("OCIS_LOG_LEVEL", "info"), ("PROXY_LOG_LEVEL", "debug")]);
        assert!(p.is_empty());
        assert_eq!(c.log.level, "debug");
        let (c, _) = overlaid(&[("OCIS_LOG_LEVEL", "info")]);
        assert_eq!(c.log.level, "info");
        let (c, _) = overlaid(&[
            ("OCIS_URL", "https://a"),
            ("OCIS_OIDC_ISSUER", "https://b"),
            ("PROXY_OIDC_ISSUER", "https://c"),
        ]);
        assert_eq!(c.oidc.issuer, "https://c");
        let (c, _) = overlaid(&[("OCIS_URL", "https://a"), ("OCIS_OIDC_ISSUER", "https://b")]);
        assert_eq!(c.oidc.issuer, "https://b");
        assert_eq!(c.ocis_url, "https://a");
    }

    #[test]
    fn set_but_empty_counts_as_set_for_strings() {
        let (c, _) = overlaid(&[("OCIS_OIDC_ISSUER", "https://b"), ("PROXY_OIDC_ISSUER", "")]);
        assert_eq!(c.oidc.issuer, "");
    }

    #[test]
    fn empty_value_leaves_bools_numbers_and_durations_alone() {
        let (c, p) = overlaid(&[
            ("PROXY_TLS", ""),
            ("PROXY_HTTP_IDLE_TIMEOUT", ""),
            ("PROXY_OIDC_JWKS_REFRESH_TIMEOUT", ""),
        ]);
        assert!(p.is_empty(), "{p:?}");
        assert!(c.http.tls);
        assert_eq!(c.http.idle_timeout, GoDuration::secs(120));
        assert_eq!(c.oidc.jwks.refresh_timeout, 10);
    }

    #[test]
    fn lists_are_comma_separated_trimmed_without_empty_items() {
        let (c, _) = overlaid(&[("PROXY_TRUSTED_PROXIES", " 10.0.0.0/8 ,, 192.168.1.1 ,")]);
        assert_eq!(c.http.trusted_proxies, vec!["10.0.0.0/8", "192.168.1.1"]);
        let (c, _) = overlaid(&[("OCIS_MFA_AUTH_LEVEL_NAMES", "")]);
        assert!(c.mfa.auth_level_name.is_empty());
    }

    #[test]
    fn bools_follow_go_parse_bool() {
        for (v, want) in [
            ("1", true),
            ("t", true),
            ("TRUE", true),
            ("True", true),
            ("0", false),
            ("F", false),
            ("False", false),
        ] {
            let (c, p) = overlaid(&[("PROXY_ENABLE_BASIC_AUTH", v)]);
            assert!(p.is_empty());
            assert_eq!(c.enable_basic_auth, want, "{v}");
        }
        for bad in ["yes", "on", "tRue", " true"] {
            let (_, p) = overlaid(&[("PROXY_ENABLE_BASIC_AUTH", bad)]);
            assert_eq!(p.len(), 1, "{bad}");
            assert_eq!(p[0].key, "PROXY_ENABLE_BASIC_AUTH");
        }
    }

    #[test]
    fn invalid_values_name_the_variable_that_carried_them() {
        let (_, p) = overlaid(&[
            ("OCIS_CACHE_TTL", "10s"),
            ("PROXY_OIDC_USERINFO_CACHE_TTL", "ten seconds"),
            ("PROXY_HTTP_MAX_HEADER_BYTES", "-1"),
            ("PROXY_STATE_STORE_OP_TIMEOUT", "200"),
        ]);
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "PROXY_OIDC_USERINFO_CACHE_TTL",
                "PROXY_HTTP_MAX_HEADER_BYTES",
                "PROXY_STATE_STORE_OP_TIMEOUT"
            ]
        );
        assert!(
            p[0].message.contains("oidc.user_info_cache.ttl"),
            "{}",
            p[0].message
        );
        assert!(p[2].message.contains("missing unit"), "{}", p[2].message);
    }

    #[test]
    fn global_cache_variables_reach_every_store_they_name() {
        let (c, _) = overlaid(&[
            ("OCIS_CACHE_STORE", "nats-js-kv"),
            ("OCIS_CACHE_TTL", "30s"),
        ]);
        assert_eq!(c.oidc.user_info_cache.store, "nats-js-kv");
        assert_eq!(c.state_store.store, "nats-js-kv");
        assert_eq!(c.pre_signed_url.signing_keys.ttl, GoDuration::secs(30));
        assert_eq!(
            c.state_store.ttl,
            GoDuration::default(),
            "state TTL is not inherited"
        );
    }

    #[test]
    fn services_from_environment() {
        let (c, p) = overlaid(&[(
            "PROXY_SERVICES",
            "web=http://a:1|http://b:2, graph=http://g",
        )]);
        assert!(p.is_empty());
        assert_eq!(c.services["web"], vec!["http://a:1", "http://b:2"]);
        assert_eq!(c.services["graph"], vec!["http://g"]);
        let (_, p) = overlaid(&[("PROXY_SERVICES", "web")]);
        assert_eq!(p[0].key, "PROXY_SERVICES");
    }

    #[test]
    fn unknown_variables_are_ignored() {
        let (c, p) = overlaid(&[
            ("PROXY_NO_SUCH_SETTING", "x"),
            ("PROXY_HTTP_ADR", "1.2.3.4:1"),
        ]);
        assert!(p.is_empty());
        assert_eq!(c, Config::default());
    }

    #[test]
    fn keys_are_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for s in settings() {
            assert!(seen.insert(s.key), "duplicate key {}", s.key);
        }
    }
}
