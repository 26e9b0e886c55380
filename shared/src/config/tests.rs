//! Loader behaviour end to end: file lookup, YAML errors with key paths, environment precedence,
//! validation collecting every problem, masking and dumps.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::*;

/// An environment whose HOME is an empty temporary directory, so that no real configuration file
/// on the machine running the tests is picked up.
struct Fixture {
    dir: tempfile::TempDir,
    env: BTreeMap<String, String>,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut env = BTreeMap::new();
        env.insert("HOME".to_owned(), dir.path().display().to_string());
        env.insert(
            "OCIS_CONFIG_DIR".to_owned(),
            dir.path().join("config").display().to_string(),
        );
        Fixture { dir, env }
    }

    fn set(mut self, k: &str, v: &str) -> Self {
        self.env.insert(k.to_owned(), v.to_owned());
        self
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    fn source(&self, file: Option<&Path>) -> ConfigSource {
        ConfigSource {
            file: file.map(Path::to_path_buf),
            env: self.env.clone(),
        }
    }

    fn load_text(&self, text: &str) -> Result<Loaded, ConfigErrors> {
        let path = self.write("explicit.yaml", text);
        load(&self.source(Some(&path)))
    }
}

fn problem<'a>(errors: &'a ConfigErrors, key: &str) -> &'a ConfigProblem {
    errors
        .0
        .iter()
        .find(|p| p.key == key)
        .unwrap_or_else(|| panic!("no problem for {key} in:\n{errors}"))
}

#[test]
fn no_file_means_defaults_with_resolved_paths() {
    let fx = Fixture::new();
    let loaded = load(&fx.source(None)).unwrap();
    assert_eq!(loaded.file, None);
    let home = fx.dir.path();
    let mut expected = Config::default();
    expected.http.tls_cert = home.join(".ocis/proxy/server.crt").display().to_string();
    expected.http.tls_key = home.join(".ocis/proxy/server.key").display().to_string();
    assert_eq!(loaded.config, expected);
}

#[test]
fn base_data_path_comes_from_ocis_base_data_path() {
    let fx = Fixture::new().set("OCIS_BASE_DATA_PATH", "/srv/ocis");
    let c = load(&fx.source(None)).unwrap().config;
    assert_eq!(c.http.tls_cert, "/srv/ocis/proxy/server.crt");
    assert_eq!(c.http.tls_key, "/srv/ocis/proxy/server.key");
}

#[test]
fn csp_file_under_base_is_picked_up_when_present() {
    let fx = Fixture::new();
    let csp = fx.write(".ocis/proxy/csp.yaml", "directives: {}\n");
    let c = load(&fx.source(None)).unwrap().config;
    assert_eq!(c.csp_config_file_location, csp.display().to_string());
}

#[test]
fn file_is_found_in_ocis_config_dir_only_when_set() {
    let fx = Fixture::new();
    fx.write(".ocis/config/proxy.yaml", "http: {addr: '127.0.0.1:1'}\n");
    // OCIS_CONFIG_DIR points elsewhere (and has no file): the home directory is not consulted.
    let loaded = load(&fx.source(None)).unwrap();
    assert_eq!(loaded.file, None);
    let in_dir = fx.write("config/proxy.yaml", "http: {addr: '127.0.0.1:2'}\n");
    let loaded = load(&fx.source(None)).unwrap();
    assert_eq!(loaded.file.as_deref(), Some(in_dir.as_path()));
    assert_eq!(loaded.config.http.addr, "127.0.0.1:2");
}

#[test]
fn file_is_found_in_home_without_ocis_config_dir() {
    let mut fx = Fixture::new();
    fx.env.remove("OCIS_CONFIG_DIR");
    let home_file = fx.write(".ocis/config/proxy.yaml", "http: {addr: '127.0.0.1:1'}\n");
    assert_eq!(config_file_candidates(&fx.env)[0], home_file);
    assert_eq!(
        config_file_candidates(&fx.env)[1],
        Path::new("/etc/ocis/proxy.yaml")
    );
    let loaded = load(&fx.source(None)).unwrap();
    assert_eq!(loaded.file.as_deref(), Some(home_file.as_path()));
    assert_eq!(loaded.config.http.addr, "127.0.0.1:1");
}

#[test]
fn explicit_missing_file_is_an_error_naming_it() {
    let fx = Fixture::new();
    let path = fx.dir.path().join("nope.yaml");
    let err = load(&fx.source(Some(&path))).unwrap_err();
    assert_eq!(err.0.len(), 1);
    assert_eq!(err.0[0].key, path.display().to_string());
    assert!(err.0[0].message.contains("cannot read"), "{err}");
}

#[test]
fn from_process_uses_proxy_config_file_when_no_file_is_given() {
    // Only reads the environment; PROXY_CONFIG_FILE is not set by the test harness.
    let src = ConfigSource::from_process(Some(PathBuf::from("/x/proxy.yaml")));
    assert_eq!(src.file.as_deref(), Some(Path::new("/x/proxy.yaml")));
    if std::env::var_os(CONFIG_FILE_ENV).is_none() {
        assert_eq!(ConfigSource::from_process(None).file, None);
    }
}

#[test]
fn empty_file_and_empty_sections_mean_defaults() {
    let fx = Fixture::new();
    let a = fx.load_text("").unwrap().config;
    let b = fx.load_text("# only a comment\n").unwrap().config;
    let c = fx.load_text("http:\noidc:\n").unwrap().config;
    assert_eq!(a, b);
    assert_eq!(a, c);
    assert_eq!(a.http.addr, "0.0.0.0:9200");
}

#[test]
fn partial_blocks_keep_sibling_defaults() {
    let fx = Fixture::new();
    let c = fx
        .load_text(
            "oidc:\n  user_info_cache:\n    store: nats-js-kv\n    addresses: [n1:4222, n2:4222]\n",
        )
        .unwrap()
        .config;
    let cache = &c.oidc.user_info_cache;
    assert_eq!(cache.store, "nats-js-kv");
    assert_eq!(cache.addresses, vec!["n1:4222", "n2:4222"]);
    assert_eq!(cache.database, "cache-userinfo");
    assert_eq!(cache.ttl, GoDuration::secs(10));
    assert_eq!(c.oidc.issuer, "https://localhost:9200");
}

#[test]
fn unknown_key_names_its_full_path() {
    let fx = Fixture::new();
    let err = fx.load_text("http:\n  adr: 0.0.0.0:1\n").unwrap_err();
    let p = problem(&err, "http.adr");
    assert!(p.message.contains("unknown field `adr`"), "{p}");
    assert!(
        err.to_string().starts_with("http.adr: unknown field"),
        "{err}"
    );
}

#[test]
fn wrong_type_names_its_full_path() {
    let fx = Fixture::new();
    let err = fx
        .load_text("oidc:\n  jwks:\n    refresh_interval: soon\nhttp:\n  tls: maybe\n")
        .unwrap_err();
    assert!(
        problem(&err, "oidc.jwks.refresh_interval")
            .message
            .contains("invalid"),
        "{err}"
    );
    assert!(
        problem(&err, "http.tls").message.contains("invalid"),
        "{err}"
    );
}

#[test]
fn bare_number_duration_in_yaml_is_refused_with_a_hint() {
    let fx = Fixture::new();
    let err = fx
        .load_text("upstream:\n  connect_timeout: 5\n")
        .unwrap_err();
    let p = problem(&err, "upstream.connect_timeout");
    assert!(p.message.contains("\"5s\""), "{p}");
    let ok = fx
        .load_text("upstream:\n  connect_timeout: 1m30s\n")
        .unwrap()
        .config;
    assert_eq!(ok.upstream.connect_timeout, GoDuration::secs(90));
}

#[test]
fn yaml_syntax_error_names_the_file() {
    let fx = Fixture::new();
    let err = fx.load_text("http: [unclosed\n").unwrap_err();
    assert!(err.0[0].key.ends_with("explicit.yaml"), "{err}");
    assert!(err.0[0].message.starts_with("invalid YAML"), "{err}");
    let err = fx.load_text("- a\n- b\n").unwrap_err();
    assert!(err.0[0].message.contains("mapping"), "{err}");
}

#[test]
fn environment_wins_over_file_and_proxy_beats_ocis() {
    let fx = Fixture::new()
        .set("OCIS_LOG_LEVEL", "info")
        .set("PROXY_LOG_LEVEL", "debug")
        .set("OCIS_OIDC_ISSUER", "https://idp.example")
        .set("PROXY_HTTP_ADDR", "127.0.0.1:9999");
    let c = fx
        .load_text("log: {level: warn}\nhttp: {addr: '0.0.0.0:1', root: /proxy/}\noidc: {issuer: https://file}\n")
        .unwrap()
        .config;
    assert_eq!(c.log.level, "debug");
    assert_eq!(c.oidc.issuer, "https://idp.example");
    assert_eq!(c.http.addr, "127.0.0.1:9999");
    assert_eq!(c.http.root, "/proxy", "trailing slash stripped");
}

#[test]
fn environment_lists_and_durations() {
    let fx = Fixture::new()
        .set("PROXY_OIDC_ACCESS_TOKEN_VERIFY_AUD", " web ,, ocis-app ,")
        .set("PROXY_STATE_STORE_TTL", "1.5h")
        .set("PROXY_HTTP_HEADER_READ_TIMEOUT", "2500ms");
    let c = load(&fx.source(None)).unwrap().config;
    assert_eq!(c.oidc.access_token_verify_aud, vec!["web", "ocis-app"]);
    assert_eq!(c.state_store.ttl, GoDuration::secs(5400));
    assert_eq!(c.http.header_read_timeout, GoDuration::millis(2500));
}

#[test]
fn invalid_environment_value_names_the_variable() {
    let fx = Fixture::new()
        .set("OCIS_INSECURE", "true")
        .set("PROXY_OIDC_INSECURE", "sometimes");
    let err = load(&fx.source(None)).unwrap_err();
    assert_eq!(err.0.len(), 1, "{err}");
    assert_eq!(err.0[0].key, "PROXY_OIDC_INSECURE");
    assert!(err.0[0].message.contains("\"sometimes\""), "{err}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let fx = Fixture::new()
        .set("PROXY_TLS", "nope")
        .set("PROXY_OIDC_ACCESS_TOKEN_VERIFY_METHOD", "opaque")
        .set("PROXY_STATE_STORE", "redis");
    let err = fx
        .load_text(concat!(
            "http:\n  adr: x\n",
            "oidc:\n  jwks: {refresh_limit: -1}\n",
            "tracing: {kind: otlp}\n",
        ))
        .unwrap_err();
    // YAML problems from three sections plus the environment; validation runs on what could be read.
    for key in [
        "http.adr",
        "oidc.jwks.refresh_limit",
        "tracing.kind",
        "PROXY_TLS",
        "oidc.access_token_verify_method",
        "state_store.store",
    ] {
        problem(&err, key);
    }
    assert!(
        problem(&err, "state_store.store")
            .message
            .contains("not implemented by Gatehouse")
    );
    assert_eq!(err.to_string().lines().count(), err.0.len());
}

#[test]
fn redis_sentinel_is_selected_as_ocis_selects_it() {
    let loaded = Fixture::new()
        .set("OCIS_CACHE_STORE", "redis-sentinel")
        .set(
            "OCIS_CACHE_STORE_NODES",
            "sentinel-1:26379/mymaster,sentinel-2:26379/mymaster",
        )
        .load_text("")
        .unwrap();
    let c = &loaded.config;
    for store in [
        &c.oidc.user_info_cache,
        &c.pre_signed_url.signing_keys,
        &c.state_store,
    ] {
        assert_eq!(store.store, "redis-sentinel");
        assert_eq!(
            store.addresses,
            ["sentinel-1:26379/mymaster", "sentinel-2:26379/mymaster"]
        );
    }
    // Go's tables stay as oCIS has them; the Gatehouse-only state gets its own prefix.
    assert_eq!(c.oidc.user_info_cache.table, "");
    assert_eq!(c.pre_signed_url.signing_keys.table, "signing-keys");
    assert_eq!(c.state_store.table, "gatehouse-state:");
}

#[test]
fn redis_sentinel_mistakes_name_the_field() {
    let err = Fixture::new()
        .set("PROXY_STATE_STORE", "redis-sentinel")
        .set("PROXY_STATE_STORE_NODES", "s1:26379/m,s2:26379")
        .set("PROXY_STATE_STORE_ENABLE_TLS", "true")
        .set("PROXY_STATE_STORE_AUTH_TOKEN", "t")
        .set("PROXY_OIDC_USERINFO_CACHE_STORE", "redis-sentinel")
        .load_text("")
        .unwrap_err();
    assert!(
        problem(&err, "state_store.addresses[1]")
            .message
            .contains("<master-name>"),
        "{err}"
    );
    assert!(
        problem(&err, "state_store.enable_tls")
            .message
            .contains("TLS")
    );
    assert!(problem(&err, "state_store.token").message.contains("NATS"));
    // The default address is a NATS one, so a redis-sentinel store without nodes says so.
    problem(&err, "oidc.user_info_cache.addresses[0]");
}

#[test]
fn validation_rules() {
    let fx = Fixture::new();
    let err = fx
        .load_text(concat!(
            "http:\n  root: proxy\n  addr: 'nowhere'\n  trusted_proxies: [10.0.0.0/8, 192.168.1.1, bogus]\n",
            "  workers: 1025\n",
            "oidc:\n  access_token_verify_method: none\n  skip_user_info: true\n",
            "  request_timeout: 0s\n",
            "  user_info_cache: {store: nats-js-kv, replicas: 7}\n",
            "account_backend: ldap\n",
            "role_assignment: {driver: static}\n",
            "log: {level: verbose}\n",
            "services:\n  web: ['http://web:9100', 'web:9100']\n  empty: []\n",
            "state_store: {store: etcd2, op_timeout: 0s}\n",
            "upstream: {connect_timeout: 0s}\n",
            "claim_space_management: {enabled: true, claim: spaces, regexp: '(a)', mapping: ['x']}\n",
        ))
        .unwrap_err();
    for key in [
        "http.root",
        "http.addr",
        "http.trusted_proxies[2]",
        "http.workers",
        "oidc.access_token_verify_method",
        "oidc.user_info_cache.replicas",
        "oidc.request_timeout",
        "account_backend",
        "role_assignment.driver",
        "log.level",
        "services.web[1]",
        "services.empty",
        "state_store.store",
        "state_store.op_timeout",
        "upstream.connect_timeout",
        "claim_space_management.regexp",
        "claim_space_management.mapping[0]",
    ] {
        problem(&err, key);
    }
    assert!(!err.has_key("http.trusted_proxies[0]") && !err.has_key("http.trusted_proxies[1]"));
    assert!(!err.has_key("services.web[0]"));
    assert!(
        problem(&err, "state_store.store")
            .message
            .contains("unknown store kind")
    );
    assert!(problem(&err, "http.workers").message.contains("1024"));
    assert_eq!(err.0.len(), 17, "{err}");
}

#[test]
fn accepted_variants_are_normalised() {
    let fx = Fixture::new();
    let c = fx
        .load_text(concat!(
            "http: {root: /a//, tls: true, tls_cert: /c.pem, workers: 1024}\n",
            "oidc:\n  access_token_verify_method: none\n  user_info_cache: {store: mem}\n",
            "state_store: {store: ''}\n",
            "account_backend: graph\n",
            "service_account: {service_account_id: sa}\n",
            "log: {level: INFO}\n",
        ))
        .unwrap()
        .config;
    assert_eq!(c.http.root, "/a");
    assert_eq!(c.http.workers, 1024, "the maximum is allowed");
    assert_eq!(c.http.tls_cert, "/c.pem", "one of cert/key set is fine");
    assert_eq!(c.oidc.user_info_cache.store, "memory");
    assert_eq!(c.state_store.store, "memory");
    assert_eq!(c.log.level, "info");
    assert_eq!(
        fx.load_text("http: {root: ///}\n")
            .unwrap()
            .config
            .http
            .root,
        "/"
    );
}

#[test]
fn machine_auth_and_service_account_are_not_required() {
    let fx = Fixture::new();
    let c = load(&fx.source(None)).unwrap().config;
    assert!(c.machine_auth_api_key.is_empty());
    assert!(c.service_account.service_account_secret.is_empty());
}

#[test]
fn ocis_style_proxy_yaml_with_policies() {
    let fx = Fixture::new();
    let c = fx
        .load_text(
            r#"
policy_selector:
additional_policies:
  - name: ocis
  - name: extra
policies:
  - name: x
role_assignment:
  driver: oidc
  oidc_role_mapper:
    role_claim: groups
    role_mapping:
      - role_name: admin
        claim_value: my-admins
role_quotas:
  d7beeea8-8ff4-406b-8fb6-ab2dd81e6b11: 2000000000
auth_middleware:
  credentials_by_user_agent:
    "mirall": basic
pre_signed_url:
  allowed_http_methods: [GET, HEAD]
"#,
        )
        .unwrap()
        .config;
    assert_eq!(c.policies.len(), 1);
    assert_eq!(c.policies[0].name, "x");
    let names: Vec<&str> = c
        .additional_policies
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(names, ["ocis", "extra"]);
    assert_eq!(c.policy_selector, None);
    assert_eq!(c.role_assignment.oidc_role_mapper.role_mapping.len(), 1);
    assert_eq!(
        c.role_quotas["d7beeea8-8ff4-406b-8fb6-ab2dd81e6b11"],
        2_000_000_000
    );
    assert_eq!(
        c.auth_middleware.credentials_by_user_agent["mirall"],
        "basic"
    );
    assert_eq!(c.pre_signed_url.allowed_http_methods, ["GET", "HEAD"]);

    let with_selector = fx.load_text("policy_selector: {}\n").unwrap().config;
    assert!(with_selector.policy_selector.is_some());
    let err = fx
        .load_text("policies:\n  - {name: x}\n  - 5\n")
        .unwrap_err();
    assert!(err.0[0].key.starts_with("policies"), "{err}");
}

#[test]
fn defaults_dump_round_trips_and_shows_ocis_defaults() {
    let yaml = Config::default().to_yaml();
    for line in [
        "  addr: 0.0.0.0:9200",
        "  ttl: 12h",
        "  op_timeout: 200ms",
        "  access_token_verify_method: jwt",
        "  bucket: service-registry",
        "account_backend: builtin",
    ] {
        assert!(yaml.contains(line), "{line:?} missing from:\n{yaml}");
    }
    let fx = Fixture::new();
    let loaded = fx.load_text(&yaml).unwrap().config;
    let mut expected = Config::default();
    expected.http.tls_cert = loaded.http.tls_cert.clone();
    expected.http.tls_key = loaded.http.tls_key.clone();
    assert_eq!(loaded, expected);
}

#[test]
fn masking_hides_non_empty_secrets_only() {
    let mut c = Config::default();
    c.debug.token = "t".into();
    c.machine_auth_api_key = "k".into();
    c.service_account.service_account_secret = "s".into();
    c.oidc.user_info_cache.password = "p1".into();
    c.pre_signed_url.signing_keys.password = "p2".into();
    c.state_store.password = "p3".into();
    c.events.password = "p4".into();
    c.services
        .insert("web".into(), vec!["http://u:pw@web:1/x".into()]);
    let m = c.masked();
    for secret in [
        &m.debug.token,
        &m.machine_auth_api_key,
        &m.service_account.service_account_secret,
        &m.oidc.user_info_cache.password,
        &m.pre_signed_url.signing_keys.password,
        &m.state_store.password,
        &m.events.password,
    ] {
        assert_eq!(secret, MASK);
    }
    assert_eq!(m.services["web"], ["http://***@web:1/x"]);
    let dump = m.to_yaml();
    for leaked in ["p1", "p2", "p3", "p4", "u:pw"] {
        assert!(!dump.contains(leaked), "{leaked} leaked");
    }
    assert_eq!(Config::default().masked(), Config::default());
    assert_eq!(c.debug.token, "t", "the original is untouched");
}

#[test]
fn development_features_and_share_service_are_checked() {
    let fx = Fixture::new();
    let err = fx
        .load_text(concat!(
            "account_backend: graph\n",
            "graph: {url: 'http://graph:9120/graph'}\n",
            "service_account: {service_account_id: sa}\n",
            "enable_basic_auth: true\n",
            "builtin_accounts: {demo_users: true}\n",
            "public_shares: {url: 'ftp://shares', timeout: 0s}\n",
            "mfa: {session_duration: 0s}\n",
        ))
        .unwrap_err();
    assert!(
        problem(&err, "enable_basic_auth")
            .message
            .contains("account_backend: builtin")
    );
    for key in [
        "builtin_accounts.demo_users",
        "public_shares.url",
        "public_shares.timeout",
        "mfa.session_duration",
    ] {
        problem(&err, key);
    }
    assert_eq!(err.0.len(), 5, "{err}");

    let c = fx
        .load_text("enable_basic_auth: true\nbuiltin_accounts: {demo_users: true}\n")
        .unwrap()
        .config;
    assert!(c.enable_basic_auth && c.builtin_accounts.demo_users);
    assert_eq!(
        c.pre_signed_url.max_lifetime.as_duration().as_secs(),
        7 * 24 * 3600
    );
}

#[test]
fn load_text_is_load_without_the_file_lookup() {
    let f = Fixture::new().set("PROXY_HTTP_ADDR", "127.0.0.1:9999");
    let text = "http:\n  addr: 0.0.0.0:1\n  tls: false\n";
    let from_file = f.load_text(text).unwrap().config;
    let from_text = load_text(text, Path::new("mem.yaml"), &f.env).unwrap();
    assert_eq!(from_text, from_file);
    assert_eq!(from_text.http.addr, "127.0.0.1:9999");
    assert!(!from_text.http.tls);

    let err = load_text("http: [", Path::new("mem.yaml"), &f.env).unwrap_err();
    assert!(err.has_key("mem.yaml"), "{err}");
    let g = Fixture::new().set("PROXY_TLS", "maybe");
    let err = load_text("", Path::new("mem.yaml"), &g.env).unwrap_err();
    assert!(err.has_key("PROXY_TLS"), "{err}");
}

#[test]
fn the_events_endpoint_is_a_list_of_nats_servers() {
    let ok = Fixture::new()
        .set(
            "OCIS_EVENTS_ENDPOINT",
            "nats-1:4222, nats://nats-2:4222,tls://[::1]:4222",
        )
        .load_text("")
        .unwrap();
    assert_eq!(
        ok.config.events.endpoint,
        "nats-1:4222, nats://nats-2:4222,tls://[::1]:4222"
    );
    let err = Fixture::new()
        .set("OCIS_EVENTS_ENDPOINT", "nats-1:4222,nats-2")
        .load_text("")
        .unwrap_err();
    let p = problem(&err, "events.endpoint");
    assert!(p.message.contains("\"nats-2\""), "{}", p.message);
    assert_eq!(err.0.len(), 1, "{err}");
}

#[test]
fn environment_references_in_the_file_are_expanded_and_undefined_ones_named() {
    let f = Fixture::new()
        .set("NATS_HOST", "nats.internal")
        .set("WORKERS", "3");
    let loaded = f
        .load_text(
            "http:\n  workers: ${WORKERS}\n  addr: ${LISTEN|127.0.0.1:9200}\n\
             state_store:\n  store: nats-js-kv\n  addresses: [\"${NATS_HOST}:4222\"]\n",
        )
        .unwrap()
        .config;
    assert_eq!(loaded.http.workers, 3);
    assert_eq!(loaded.http.addr, "127.0.0.1:9200");
    assert_eq!(loaded.state_store.addresses, ["nats.internal:4222"]);
    let err = f
        .load_text("state_store:\n  password: ${NATS_PASSWORD}\n")
        .unwrap_err();
    let p = problem(&err, "state_store.password");
    assert!(p.message.contains("NATS_PASSWORD"), "{err}");
}

#[test]
fn rate_limit_rules_are_read_and_their_mistakes_name_the_field() {
    let loaded = Fixture::new()
        .load_text(concat!(
            "rate_limits:\n",
            "  - {name: per-address, requests: 100}\n",
            "  - {name: graph, per: user, requests: 5, period: 10s, burst: 20, policy: ocis, endpoints: [/graph/]}\n",
        ))
        .unwrap();
    let rules = &loaded.config.rate_limits;
    assert_eq!(rules[0].per, crate::rate_limit::LimitBy::Address);
    assert_eq!(rules[0].period.0, std::time::Duration::from_secs(1));
    assert_eq!(rules[0].effective_burst(), 100);
    assert_eq!(rules[1].per, crate::rate_limit::LimitBy::User);
    assert_eq!(rules[1].effective_burst(), 20);

    let err = Fixture::new()
        .load_text(concat!(
            "rate_limits:\n",
            "  - {name: a, requests: 0, period: 0s}\n",
            "  - {name: a, requests: 1, policy: nope}\n",
            "  - {name: 'b c', requests: 1, endpoints: [/graph/, /nowhere/]}\n",
            "  - {requests: 99999999999}\n",
        ))
        .unwrap_err();
    problem(&err, "rate_limits[0].requests");
    problem(&err, "rate_limits[0].period");
    assert!(
        problem(&err, "rate_limits[1].name")
            .message
            .contains("earlier rule")
    );
    assert!(
        problem(&err, "rate_limits[1].policy")
            .message
            .contains("nope")
    );
    assert!(
        problem(&err, "rate_limits[2].name")
            .message
            .contains("whitespace")
    );
    assert!(
        problem(&err, "rate_limits[2].endpoints[1]")
            .message
            .contains("/nowhere/")
    );
    assert!(
        !err.0.iter().any(|p| p.key == "rate_limits[2].endpoints[0]"),
        "{err}"
    );
    problem(&err, "rate_limits[3].name");
    assert!(
        problem(&err, "rate_limits[3].requests")
            .message
            .contains("too large")
    );

    let err = Fixture::new()
        .load_text("rate_limits:\n  - {name: x, per: session, requests: 1}\n")
        .unwrap_err();
    assert!(err.to_string().contains("rate_limits"), "{err}");
}
