//! Configuration mistakes stop start-up with a message naming the field, a non-zero exit status,
//! and no panic or stack trace; the CLI subcommands work against a real node.

use gatehouse_tests::node::{GatehouseNode, run_cli};

fn write(dir: &tempfile::TempDir, yaml: &str) -> String {
    let p = dir.path().join("proxy.yaml");
    std::fs::write(&p, yaml).unwrap();
    p.display().to_string()
}

fn assert_clean_failure(out: &std::process::Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let all = format!("{stdout}{stderr}");
    assert!(
        !out.status.success(),
        "expected failure, got success:\n{all}"
    );
    assert!(
        all.contains(needle),
        "message should name `{needle}`:\n{all}"
    );
    assert!(
        !all.contains("panicked") && !all.contains("stack backtrace"),
        "no panic:\n{all}"
    );
}

#[test]
fn unknown_key_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(&dir, "http:\n  adr: 0.0.0.0:9200\n");
    let out = run_cli(&["--config", &f, "server"], &[("PROXY_TLS", "false")]);
    assert_clean_failure(&out, "http.adr");
}

#[test]
fn invalid_regex_route_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        &dir,
        "policies:\n  - name: ocis\n    routes:\n      - type: regex\n        endpoint: '([\\])\\w+'\n        backend: http://127.0.0.1:1\n",
    );
    let out = run_cli(&["--config", &f, "config", "check"], &[]);
    assert_clean_failure(&out, "endpoint");
    let out = run_cli(&["--config", &f, "server"], &[("PROXY_TLS", "false")]);
    assert_clean_failure(&out, "endpoint");
}

#[test]
fn invalid_environment_value_names_the_variable() {
    let out = run_cli(&["config", "check"], &[("PROXY_TLS", "maybe")]);
    assert_clean_failure(&out, "PROXY_TLS");
}

#[test]
fn invalid_duration_and_every_problem_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(&dir, "upstream:\n  connect_timeout: soon\n");
    let out = run_cli(
        &["--config", &f, "config", "check"],
        &[("PROXY_OIDC_ACCESS_TOKEN_VERIFY_METHOD", "magic")],
    );
    assert_clean_failure(&out, "upstream.connect_timeout");
}

#[test]
fn missing_explicit_config_file_is_an_error() {
    let out = run_cli(
        &["--config", "/nonexistent/proxy.yaml", "config", "check"],
        &[],
    );
    assert_clean_failure(&out, "/nonexistent/proxy.yaml");
}

#[test]
fn config_check_and_dump() {
    let out = run_cli(&["config", "check"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_cli(
        &["config", "dump"],
        &[
            ("PROXY_DEBUG_TOKEN", "s3cret"),
            ("PROXY_HTTP_ADDR", "127.0.0.1:9999"),
        ],
    );
    assert!(out.status.success());
    let dump = String::from_utf8_lossy(&out.stdout);
    assert!(dump.contains("127.0.0.1:9999"), "{dump}");
    assert!(!dump.contains("s3cret"), "secrets are masked: {dump}");
    let out = run_cli(&["version"], &[]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[tokio::test]
async fn address_in_use_is_a_clear_start_up_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let debug = format!("127.0.0.1:{}", gatehouse_tests::free_port());
    let out = run_cli(
        &["server"],
        &[
            ("PROXY_HTTP_ADDR", &addr),
            ("PROXY_DEBUG_ADDR", &debug),
            ("PROXY_TLS", "false"),
            ("PROXY_LOG_LEVEL", "info"),
        ],
    );
    assert_clean_failure(&out, &format!("http.addr: cannot listen on {addr}"));
    // The main listener is bound first: nothing (the debug server's `/healthz` would dial the
    // port and reach the process holding it) has started when the conflict stops start-up.
    let all = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(!all.contains("debug server listening"), "{all}");
    assert!(!all.contains("connected successfully"), "{all}");
}

#[tokio::test]
async fn health_command_reports_a_running_node() {
    let node = GatehouseNode::start("").await;
    let debug = node.debug.to_string();
    let out = run_cli(&["health"], &[("PROXY_DEBUG_ADDR", &debug)]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    drop(node);
    let out = run_cli(&["health"], &[("PROXY_DEBUG_ADDR", &debug)]);
    assert!(!out.status.success(), "health fails when nothing answers");
}

#[test]
fn unreadable_backend_ca_file_is_reported_by_config_check() {
    let out = run_cli(
        &["config", "check"],
        &[("PROXY_HTTPS_CACERT", "/nonexistent/ca.pem")],
    );
    assert_clean_failure(&out, "backend_https_cacert");
}

#[test]
fn role_and_space_mapping_mistakes_stop_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        &dir,
        "role_assignment:\n  driver: oidc\n  oidc_role_mapper:\n    role_claim: roles\n    role_mapping:\n      - role_name: superuser\n        claim_value: admins\n",
    );
    let out = run_cli(&["--config", &f, "config", "check"], &[]);
    assert_clean_failure(&out, "role_assignment");
    let out = run_cli(&["--config", &f, "server"], &[("PROXY_TLS", "false")]);
    assert_clean_failure(&out, "superuser");

    let f = write(
        &dir,
        "claim_space_management:\n  enabled: true\n  claim: spaces\n  regexp: 'spaces-(.*)'\n  mapping: ['a:viewer']\n",
    );
    let out = run_cli(&["--config", &f, "config", "check"], &[]);
    assert_clean_failure(&out, "claim_space_management");
}
