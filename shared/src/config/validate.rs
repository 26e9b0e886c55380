//! Sanitising and validation after the environment overlay. Every check runs, so one start-up
//! attempt reports every problem; values are normalised here (`http.root` without a trailing
//! `/`, store kind `mem`/empty → `memory`, empty log level → `error`) so consumers see one
//! spelling.
//!
//! Deliberately *not* checked (yet): `machine_auth_api_key` and the service account, which oCIS
//! requires but which nothing in Gatehouse uses so far; the readability of certificate files,
//! which the server checks when it opens them.

use std::net::{IpAddr, Ipv6Addr};

use ipnet::IpNet;

use super::error::ConfigProblem;
use super::nats;
use super::schema::{Config, MAX_HTTP_WORKERS, StoreConfig};
use crate::store::redis_layout;

struct Problems<'a>(&'a mut Vec<ConfigProblem>);

impl Problems<'_> {
    fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigProblem::new(key, message));
    }
}

/// Store kinds oCIS knows but Gatehouse does not implement.
const UNIMPLEMENTED_STORES: &[&str] = &["redis", "etcd", "ocmem", "nats-js", "ocisstoreservice"];
const SUPPORTED_STORES: &str = "memory, noop, nats-js-kv, redis-sentinel";
const LOG_LEVELS: &[&str] = &["panic", "fatal", "error", "warn", "info", "debug", "trace"];

pub(crate) fn sanitize_and_validate(config: &mut Config, problems: &mut Vec<ConfigProblem>) {
    let mut p = Problems(problems);
    http(config, &mut p);
    oidc(config, &mut p);
    store(
        "oidc.user_info_cache",
        &mut config.oidc.user_info_cache,
        &mut p,
    );
    store(
        "pre_signed_url.signing_keys",
        &mut config.pre_signed_url.signing_keys,
        &mut p,
    );
    store("state_store", &mut config.state_store, &mut p);
    accounts(config, &mut p);
    brute_force(config, &mut p);
    rate_limits(config, &mut p);
    services(config, &mut p);
    misc(config, &mut p);
}

fn http(config: &mut Config, p: &mut Problems<'_>) {
    let http = &mut config.http;
    if let Err(e) = check_host_port(&http.addr, Allow::Listener) {
        p.add("http.addr", e);
    }
    if !http.root.starts_with('/') {
        p.add("http.root", format!("{:?} must start with /", http.root));
    } else {
        let trimmed = http.root.trim_end_matches('/');
        http.root = if trimmed.is_empty() {
            "/".to_owned()
        } else {
            trimmed.to_owned()
        };
    }
    for (key, value) in [
        ("http.header_read_timeout", http.header_read_timeout),
        ("http.idle_timeout", http.idle_timeout),
    ] {
        if value.is_zero() {
            p.add(key, "must be positive");
        }
    }
    if http.max_header_bytes == 0 {
        p.add("http.max_header_bytes", "must be positive");
    }
    if http.workers > MAX_HTTP_WORKERS {
        p.add(
            "http.workers",
            format!(
                "{} is more than the maximum of {MAX_HTTP_WORKERS}",
                http.workers
            ),
        );
    }
    for (i, entry) in http.trusted_proxies.iter().enumerate() {
        if entry.parse::<IpNet>().is_err() && entry.parse::<IpAddr>().is_err() {
            p.add(
                format!("http.trusted_proxies[{i}]"),
                format!("{entry:?} is neither an IP address nor a CIDR (e.g. 10.0.0.0/8)"),
            );
        }
    }
    if let Err(e) = check_host_port(&config.debug.addr, Allow::Listener) {
        p.add("debug.addr", e);
    }
}

fn oidc(config: &mut Config, p: &mut Problems<'_>) {
    let oidc = &config.oidc;
    match oidc.access_token_verify_method.as_str() {
        "jwt" => {}
        "none" if oidc.skip_user_info => p.add(
            "oidc.access_token_verify_method",
            "`none` cannot be combined with oidc.skip_user_info: nothing would verify the token",
        ),
        "none" => {}
        other => p.add(
            "oidc.access_token_verify_method",
            format!("{other:?} is not one of jwt, none"),
        ),
    }
}

fn store(prefix: &str, store: &mut StoreConfig, p: &mut Problems<'_>) {
    match store.store.as_str() {
        "" | "mem" | "memory" => store.store = "memory".to_owned(),
        "noop" => {}
        "nats-js-kv" => {
            if store.addresses.is_empty() {
                p.add(format!("{prefix}.addresses"), "nats-js-kv needs at least one NATS address");
            }
            for (i, addr) in store.addresses.iter().enumerate() {
                if let Err(e) = check_host_port(addr, Allow::NatsUrl) {
                    p.add(format!("{prefix}.addresses[{i}]"), e);
                }
            }
            if store.database.is_empty() {
                p.add(format!("{prefix}.database"), "nats-js-kv needs a bucket name");
            }
            nats::check_store(prefix, store, p.0);
        }
        "redis-sentinel" => redis_sentinel(prefix, store, p),
        other if UNIMPLEMENTED_STORES.contains(&other) => p.add(
            format!("{prefix}.store"),
            format!("store kind {other:?} is not implemented by Gatehouse (supported: {SUPPORTED_STORES})"),
        ),
        other => p.add(
            format!("{prefix}.store"),
            format!("unknown store kind {other:?} (supported: {SUPPORTED_STORES})"),
        ),
    }
    if !(1..=5).contains(&store.replicas) {
        p.add(
            format!("{prefix}.replicas"),
            format!("{} is not between 1 and 5", store.replicas),
        );
    }
    if store.op_timeout.is_zero() {
        p.add(format!("{prefix}.op_timeout"), "must be positive");
    }
}

fn brute_force(config: &Config, p: &mut Problems<'_>) {
    let b = &config.brute_force;
    for (field, zero) in [
        ("window", b.window.is_zero()),
        ("block", b.block.is_zero()),
        ("max_failures_per_address", b.max_failures_per_address == 0),
        ("max_failures_per_user", b.max_failures_per_user == 0),
        ("max_failures_per_share", b.max_failures_per_share == 0),
    ] {
        if zero {
            p.add(format!("brute_force.{field}"), "must be positive");
        }
    }
    for (field, n) in [
        ("max_failures_per_address", b.max_failures_per_address),
        ("max_failures_per_user", b.max_failures_per_user),
        ("max_failures_per_share", b.max_failures_per_share),
    ] {
        if n > u64::from(u32::MAX) {
            p.add(format!("brute_force.{field}"), format!("{n} is too large"));
        }
    }
    if b.max_block.0 < b.block.0 {
        p.add(
            "brute_force.max_block",
            "must be at least brute_force.block",
        );
    }
}

/// Each rule must admit something and name routes that exist: a rule that silently matches
/// nothing would leave an operator believing a route is limited.
fn rate_limits(config: &Config, p: &mut Problems<'_>) {
    if config.rate_limits.is_empty() {
        return;
    }
    let policies =
        crate::routing::effective_policies(&config.policies, &config.additional_policies);
    let mut names = std::collections::HashSet::new();
    for (i, rule) in config.rate_limits.iter().enumerate() {
        let key = |field: &str| format!("rate_limits[{i}].{field}");
        if rule.name.is_empty() {
            p.add(key("name"), "must be set");
        } else if rule.name.chars().any(char::is_whitespace) {
            p.add(
                key("name"),
                format!("{:?} must not contain whitespace", rule.name),
            );
        } else if !names.insert(rule.name.as_str()) {
            p.add(
                key("name"),
                format!("{:?} is used by an earlier rule", rule.name),
            );
        }
        if rule.requests == 0 {
            p.add(key("requests"), "must be positive");
        }
        for (field, n) in [("requests", rule.requests), ("burst", rule.burst)] {
            if n > u64::from(u32::MAX) {
                p.add(key(field), format!("{n} is too large"));
            }
        }
        if rule.period.is_zero() {
            p.add(key("period"), "must be positive");
        }
        let in_scope: Vec<_> = policies
            .iter()
            .filter(|policy| rule.policy.is_empty() || policy.name == rule.policy)
            .collect();
        if in_scope.is_empty() {
            p.add(
                key("policy"),
                format!("no policy is named {:?}", rule.policy),
            );
            continue;
        }
        for (j, endpoint) in rule.endpoints.iter().enumerate() {
            let exists = in_scope
                .iter()
                .any(|policy| policy.routes.iter().any(|r| &r.endpoint == endpoint));
            if !exists {
                p.add(
                    format!("rate_limits[{i}].endpoints[{j}]"),
                    format!(
                        "no route of {} has the endpoint {endpoint:?}",
                        if rule.policy.is_empty() {
                            "any policy".to_owned()
                        } else {
                            format!("policy {:?}", rule.policy)
                        }
                    ),
                );
            }
        }
    }
}

fn redis_sentinel(prefix: &str, store: &mut StoreConfig, p: &mut Problems<'_>) {
    if let Err((i, e)) = redis_layout::parse_sentinel_nodes(&store.addresses) {
        p.add(format!("{prefix}.addresses[{i}]"), e);
    }
    if store.enable_tls {
        p.add(
            format!("{prefix}.enable_tls"),
            "TLS to Redis is not supported (oCIS has none either); redis-sentinel connects in plaintext, so keep it on a private network",
        );
    }
    for (field, value) in [
        ("token", &store.token),
        ("nkey_seed", &store.nkey_seed),
        ("credentials_file", &store.credentials_file),
    ] {
        if !value.is_empty() {
            p.add(
                format!("{prefix}.{field}"),
                "is a NATS credential; redis-sentinel authenticates with username and password",
            );
        }
    }
    // Only Gatehouse writes the state store; in a Redis database shared with oCIS services an
    // empty table would put its keys among theirs.
    if prefix == "state_store" && store.table.is_empty() {
        store.table = format!("{}:", store.database);
    }
}

fn accounts(config: &mut Config, p: &mut Problems<'_>) {
    if !["cs3", "graph", "builtin"].contains(&config.account_backend.as_str()) {
        p.add(
            "account_backend",
            format!(
                "{:?} is not one of cs3, graph, builtin",
                config.account_backend
            ),
        );
    }
    if matches!(config.account_backend.as_str(), "cs3" | "graph") {
        let url = &config.graph.url;
        if !(url.starts_with("http://") || url.starts_with("https://"))
            || url.len() <= "https://".len()
        {
            p.add(
                "graph.url",
                format!(
                    "{url:?} is not an http(s) URL (required by account_backend: {})",
                    config.account_backend
                ),
            );
        }
    }
    if matches!(config.account_backend.as_str(), "cs3" | "graph")
        && config.service_account.service_account_id.is_empty()
    {
        p.add(
            "service_account.service_account_id",
            format!(
                "required by account_backend: {} (LibreGraph is called as the service account)",
                config.account_backend
            ),
        );
    }
    if !(1..=5).contains(&config.events.stream_replicas) {
        p.add(
            "events.stream_replicas",
            format!("{} is not between 1 and 5", config.events.stream_replicas),
        );
    }
    if config.oidc.request_timeout.is_zero() {
        p.add("oidc.request_timeout", "must be positive");
    }
    if config.graph.timeout.is_zero() {
        p.add("graph.timeout", "must be positive");
    }
    let builtin = config.account_backend == "builtin";
    if config.enable_basic_auth && !builtin {
        p.add(
            "enable_basic_auth",
            format!(
                "needs account_backend: builtin (LibreGraph cannot check passwords), not {}",
                config.account_backend
            ),
        );
    }
    if config.builtin_accounts.demo_users && !builtin {
        p.add(
            "builtin_accounts.demo_users",
            format!(
                "needs account_backend: builtin, not {}",
                config.account_backend
            ),
        );
    }
    let share_url = &config.public_shares.url;
    if !share_url.is_empty()
        && (!(share_url.starts_with("http://") || share_url.starts_with("https://"))
            || share_url.len() <= "https://".len())
    {
        p.add(
            "public_shares.url",
            format!("{share_url:?} is not an http(s) URL"),
        );
    }
    if config.public_shares.timeout.is_zero() {
        p.add("public_shares.timeout", "must be positive");
    }
    if config.mfa.session_duration.is_zero() {
        p.add("mfa.session_duration", "must be positive");
    }
    if config.token_manager.token_lifetime.is_zero() {
        p.add("token_manager.token_lifetime", "must be positive");
    }
    if !["username", "mail", "userid"].contains(&config.user_cs3_claim.as_str()) {
        p.add(
            "user_cs3_claim",
            format!(
                "{:?} is not one of username, mail, userid",
                config.user_cs3_claim
            ),
        );
    }
    if !["default", "oidc"].contains(&config.role_assignment.driver.as_str()) {
        p.add(
            "role_assignment.driver",
            format!(
                "{:?} is not one of default, oidc",
                config.role_assignment.driver
            ),
        );
    }
    let csm = &config.claim_space_management;
    if csm.enabled {
        if csm.claim.is_empty() {
            p.add(
                "claim_space_management.claim",
                "required when claim_space_management.enabled is true",
            );
        }
        match regex::Regex::new(&csm.regexp) {
            Ok(re) if re.captures_len() == 3 => {}
            Ok(re) => p.add(
                "claim_space_management.regexp",
                format!(
                    "needs exactly two capture groups, has {}",
                    re.captures_len() - 1
                ),
            ),
            Err(e) => p.add(
                "claim_space_management.regexp",
                format!("invalid regular expression: {e}"),
            ),
        }
        for (i, item) in csm.mapping.iter().enumerate() {
            let ok = item
                .split_once(':')
                .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty());
            if !ok {
                p.add(
                    format!("claim_space_management.mapping[{i}]"),
                    format!("{item:?} is not of the form oidcRole:ocisRole"),
                );
            }
        }
    }
}

fn services(config: &mut Config, p: &mut Problems<'_>) {
    for (name, urls) in &config.services {
        if name.is_empty() {
            p.add("services", "a service name is empty");
        }
        if urls.is_empty() {
            p.add(format!("services.{name}"), "needs at least one URL");
        }
        for (i, url) in urls.iter().enumerate() {
            if let Err(e) = check_base_url(url) {
                p.add(format!("services.{name}[{i}]"), e);
            }
        }
    }
    let registry = &config.service_registry;
    if registry.enabled {
        if registry.addresses.is_empty() {
            p.add(
                "service_registry.addresses",
                "needs at least one NATS address when enabled",
            );
        }
        for (i, addr) in registry.addresses.iter().enumerate() {
            if let Err(e) = check_host_port(addr, Allow::NatsUrl) {
                p.add(format!("service_registry.addresses[{i}]"), e);
            }
        }
        if registry.bucket.is_empty() {
            p.add("service_registry.bucket", "must not be empty when enabled");
        }
        nats::check_registry(registry, p.0);
    }
    let up = &config.upstream;
    for (key, value) in [
        ("upstream.connect_timeout", up.connect_timeout),
        (
            "upstream.response_header_timeout",
            up.response_header_timeout,
        ),
        ("upstream.pool_idle_timeout", up.pool_idle_timeout),
    ] {
        if value.is_zero() {
            p.add(key, "must be positive");
        }
    }
}

fn misc(config: &mut Config, p: &mut Problems<'_>) {
    let level = config.log.level.to_ascii_lowercase();
    if level.is_empty() {
        config.log.level = "error".to_owned();
    } else if LOG_LEVELS.contains(&level.as_str()) {
        config.log.level = level;
    } else {
        p.add(
            "log.level",
            format!(
                "{:?} is not one of {}",
                config.log.level,
                LOG_LEVELS.join(", ")
            ),
        );
    }
    // A comma-separated list of NATS servers, as go-micro and the publisher accept; empty
    // (or only separators and spaces) disables events.
    for server in config.events.endpoint.split(',').map(str::trim) {
        if server.is_empty() {
            continue;
        }
        if let Err(e) = check_host_port(server, Allow::NatsUrl) {
            p.add("events.endpoint", e);
        }
    }
    if config
        .events
        .endpoint
        .split(',')
        .any(|s| !s.trim().is_empty())
    {
        nats::check_events(&config.events, p.0);
    }
    // The exporter settings are checked only when tracing is on (`OTEL_*` variables meant for
    // other programs must not stop a node that does not trace); the trust rule applies always.
    if config.tracing.enabled {
        if let Err(problems) = crate::trace::settings::resolve(&config.tracing) {
            p.0.extend(problems);
        }
    } else if let Err(problem) = crate::trace::settings::trust(&config.tracing) {
        p.0.push(problem);
    }
    let node_id = &config.node_id;
    if node_id.len() > 64 || !node_id.bytes().all(|b| b.is_ascii_graphic()) {
        p.add(
            "node_id",
            format!("{node_id:?} must be at most 64 visible ASCII characters"),
        );
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Allow {
    /// `host:port`, `:port` (all interfaces), `[v6]:port`.
    Listener,
    /// `host:port`, optionally prefixed by `nats://` or `tls://`.
    NatsUrl,
}

fn check_host_port(addr: &str, allow: Allow) -> Result<(), String> {
    let mut rest = addr;
    if allow == Allow::NatsUrl {
        for scheme in ["nats://", "tls://"] {
            if let Some(r) = rest.strip_prefix(scheme) {
                rest = r;
            }
        }
    }
    let bad = |why: &str| Err(format!("{addr:?} is not a host:port address ({why})"));
    let (host, port) = if let Some(r) = rest.strip_prefix('[') {
        let Some((v6, port)) = r.split_once("]:") else {
            return bad("bracketed IPv6 address needs a port");
        };
        if v6.parse::<Ipv6Addr>().is_err() {
            return bad("invalid IPv6 address");
        }
        (None, port)
    } else {
        let Some((host, port)) = rest.rsplit_once(':') else {
            return bad("missing port");
        };
        if host.contains(':') {
            return bad("write IPv6 addresses in brackets");
        }
        (Some(host), port)
    };
    if port.parse::<u16>().is_err() {
        return bad("invalid port");
    }
    match host {
        Some("") if allow == Allow::Listener => Ok(()),
        Some("") => bad("missing host"),
        Some(h) if h.parse::<IpAddr>().is_ok() || is_hostname(h) => Ok(()),
        Some(_) => bad("invalid host name"),
        None => Ok(()),
    }
}

fn is_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn check_base_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(format!(
                "{url:?} must be an absolute http:// or https:// URL"
            ));
        }
    }
    let host = uri.host().unwrap_or("");
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    if uri.query().is_some() {
        return Err(format!("{url:?} is a base URL and cannot carry a query"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        for ok in [
            "0.0.0.0:9200",
            ":9200",
            "[::1]:9200",
            "localhost:80",
            "127.0.0.1:0",
        ] {
            assert!(check_host_port(ok, Allow::Listener).is_ok(), "{ok}");
        }
        for bad in [
            "9200",
            "0.0.0.0",
            "::1:9200",
            "host:99999",
            "ho st:1",
            "[::1]",
        ] {
            assert!(check_host_port(bad, Allow::Listener).is_err(), "{bad}");
        }
        assert!(check_host_port("nats://n1:4222", Allow::NatsUrl).is_ok());
        assert!(check_host_port(":4222", Allow::NatsUrl).is_err());
        assert!(check_host_port("nats://n1:4222", Allow::Listener).is_err());
    }

    #[test]
    fn base_urls() {
        for ok in [
            "http://web:9100",
            "https://10.0.0.1",
            "http://h/prefix",
            "http://[::1]:80",
        ] {
            assert!(check_base_url(ok).is_ok(), "{ok}");
        }
        for bad in ["web:9100", "ftp://h", "/path", "http://h/?q=1", "not a url"] {
            assert!(check_base_url(bad).is_err(), "{bad}");
        }
    }
}
