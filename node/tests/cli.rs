//! The `gatehouse` binary as an operator uses it: exit codes, messages, and a running node's debug
//! server. Every child runs with a cleared environment so the host's `PROXY_*`/`OCIS_*`/`RUST_LOG`
//! cannot leak in.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use gatehouse_node::debug::fetch;

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");
const DEBUG_TOKEN: &str = "s3cr3t-debug-token";

fn gatehouse(home: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home);
    cmd
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().unwrap();
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    http_addr: String,
    debug_addr: String,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let http_addr = format!("127.0.0.1:{}", free_port());
    let debug_addr = format!("127.0.0.1:{}", free_port());
    let config = dir.path().join("proxy.yaml");
    let yaml = format!(
        "http:\n  addr: {http_addr}\n  tls: false\n\
         debug:\n  addr: {debug_addr}\n  token: {DEBUG_TOKEN}\n\
         log:\n  level: info\n  file: {log}\n\
         machine_auth_api_key: test-machine-auth-key\n\
         service_account:\n  service_account_id: sa-id\n  service_account_secret: sa-secret\n",
        log = dir.path().join("gatehouse.log").display()
    );
    std::fs::write(&config, yaml).unwrap();
    Setup {
        dir,
        config,
        http_addr,
        debug_addr,
    }
}

fn assert_no_panic(stderr: &str) {
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("RUST_BACKTRACE"), "{stderr}");
}

#[test]
fn version_prints_the_crate_version() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, _) = run(gatehouse(dir.path()).arg("version"));
    assert_eq!(code, 0);
    assert!(
        out.starts_with(&format!("gatehouse {}", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
}

#[test]
fn config_check_accepts_a_good_file() {
    let s = setup();
    let (code, out, err) = run(gatehouse(s.dir.path())
        .arg("--config")
        .arg(&s.config)
        .args(["config", "check"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        format!("configuration OK ({})", s.config.display())
    );
}

#[test]
fn config_check_names_an_unknown_key_and_exits_1() {
    let s = setup();
    let mut text = std::fs::read_to_string(&s.config).unwrap();
    text.push_str("bogus_key: 1\n");
    std::fs::write(&s.config, text).unwrap();
    // The file is also found through PROXY_CONFIG_FILE.
    let (code, out, err) = run(gatehouse(s.dir.path())
        .env("PROXY_CONFIG_FILE", &s.config)
        .args(["config", "check"]));
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("bogus_key"), "{err}");
    assert!(!out.contains("configuration OK"));
    assert_no_panic(&err);
}

#[test]
fn config_check_reports_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.yaml");
    let (code, _, err) = run(gatehouse(dir.path())
        .arg("--config")
        .arg(&missing)
        .args(["config", "check"]));
    assert_eq!(code, 1);
    assert!(err.contains("nope.yaml"), "{err}");
    assert_no_panic(&err);
}

/// Needs the configuration serialiser from the config branch: fails before the merge.
#[test]
fn config_dump_masks_the_debug_token() {
    let s = setup();
    let (code, out, err) = run(gatehouse(s.dir.path())
        .arg("--config")
        .arg(&s.config)
        .args(["config", "dump"]));
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains(DEBUG_TOKEN), "{out}");
    assert!(!out.contains("sa-secret"), "{out}");
    let dumped: serde_yaml_ng::Value = serde_yaml_ng::from_str(&out).unwrap();
    assert_eq!(
        dumped["debug"]["addr"].as_str(),
        Some(s.debug_addr.as_str())
    );
    assert!(
        dumped["debug"]["token"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );
}

#[test]
fn health_fails_clearly_when_no_node_runs() {
    let s = setup();
    let (code, _, err) = run(gatehouse(s.dir.path())
        .arg("--config")
        .arg(&s.config)
        .arg("health"));
    assert_eq!(code, 1);
    assert!(err.contains(&s.debug_addr), "{err}");
    assert_no_panic(&err);
}

/// Kills the child on drop so a failing test does not leak a server.
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_for_exit(node: &mut Node, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(status) = node.0.try_wait().unwrap() {
            return status.code();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Starts `gatehouse server` and waits until `gatehouse health` (the container health check)
/// reports it healthy.
async fn start_server(s: &Setup) -> Node {
    let mut node = Node(
        gatehouse(s.dir.path())
            .arg("--config")
            .arg(&s.config)
            .arg("server")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, out, err) = run(gatehouse(s.dir.path())
            .arg("--config")
            .arg(&s.config)
            .arg("health"));
        if code == 0 {
            assert_eq!(out.trim(), "OK");
            return node;
        }
        assert!(
            node.0.try_wait().unwrap().is_none(),
            "server exited early: {err}"
        );
        assert!(Instant::now() < deadline, "never healthy: {err}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_serves_the_debug_endpoints_and_exits_0_on_sigterm() {
    let s = setup();
    let mut node = start_server(&s).await;

    let t = Duration::from_secs(5);
    let resp = fetch(&s.debug_addr, "/metrics", None, t).await.unwrap();
    assert_eq!(
        resp.status(),
        401,
        "the configured debug.token protects /metrics"
    );
    let resp = fetch(&s.debug_addr, "/metrics", Some(DEBUG_TOKEN), t)
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = String::from_utf8_lossy(resp.body());
    assert!(
        text.contains(&format!(
            "ocis_proxy_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
    let resp = fetch(&s.debug_addr, "/readyz", None, t).await.unwrap();
    assert_eq!(resp.status(), 200, "{:?}", resp.body());

    // A second node on the same ports fails clearly, naming the main listener (bound first);
    // given a free main port, it names the debug port.
    let (code, _, err) = run(gatehouse(s.dir.path())
        .arg("--config")
        .arg(&s.config)
        .arg("server"));
    assert_eq!(code, 1);
    assert!(
        err.contains("http.addr") && err.contains(&s.http_addr),
        "{err}"
    );
    assert_no_panic(&err);
    let other_http = format!("127.0.0.1:{}", free_port());
    let (code, _, err) = run(gatehouse(s.dir.path())
        .env("PROXY_HTTP_ADDR", &other_http)
        .arg("--config")
        .arg(&s.config)
        .arg("server"));
    assert_eq!(code, 1);
    assert!(
        err.contains("debug.addr") && err.contains(&s.debug_addr),
        "{err}"
    );
    assert_no_panic(&err);

    let pid = node.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(
        wait_for_exit(&mut node, Duration::from_secs(30)).await,
        Some(0)
    );
    assert!(
        fetch(&s.debug_addr, "/healthz", None, t).await.is_err(),
        "debug server stopped"
    );

    let log = std::fs::read_to_string(s.dir.path().join("gatehouse.log")).unwrap();
    let first: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert_eq!(
        first["level"], "INFO",
        "log.file receives JSON lines: {log}"
    );
}

/// Needs the real server and pipeline (proxy branch, with the observability layers wired into
/// `pipeline::build`): fails before the merge, where the stand-in server answers nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_through_the_listener_get_an_id_a_log_line_and_a_count() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let s = setup();
    let _node = start_server(&s).await;
    let mut stream = tokio::net::TcpStream::connect(&s.http_addr).await.unwrap();
    stream
        .write_all(
            b"GET /no/such/route HTTP/1.1\r\nHost: gw\r\nX-Request-Id: e2e-req-1\r\n\
              Connection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
        .await
        .expect("answer within 10 s")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 "), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("x-request-id: e2e-req-1\r\n"),
        "{answer}"
    );

    let log_path = s.dir.path().join("gatehouse.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let found = log
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"] == "access-log")
            .collect::<Vec<_>>();
        if !found.is_empty() {
            assert_eq!(found.len(), 1, "one line per request: {log}");
            break found.into_iter().next().unwrap();
        }
        assert!(Instant::now() < deadline, "no access-log line: {log}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(line["target"], "access_log");
    assert_eq!(line["request_id"], "e2e-req-1");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/no/such/route");
    assert_eq!(line["remote_addr"], "127.0.0.1");
    let status = line["status"].as_u64().unwrap();
    assert!(
        answer.starts_with(&format!("HTTP/1.1 {status} ")),
        "{answer}"
    );

    let t = Duration::from_secs(5);
    let metrics = fetch(&s.debug_addr, "/metrics", Some(DEBUG_TOKEN), t)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(metrics.body());
    assert!(
        text.contains("ocis_proxy_requests_total{method=\"GET\"} 1\n"),
        "{text}"
    );
}

/// A node against a nats-server with TLS and users: with the documented least-privilege user
/// (its password read from a file) it becomes ready; with a wrong password it exits at once with
/// a message naming the settings, and never prints the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_credentials_and_tls_are_checked_at_start_up() {
    use gatehouse_shared::config::{NatsAuth, NatsSecurity, NatsTls};
    use gatehouse_tests::nats::{NatsCluster, NatsOptions};
    use gatehouse_tests::pki::Pki;

    let s = setup();
    let pki = Pki::create(s.dir.path(), "nats");
    let permissions = include_str!("../../nats/conf/gateway-permissions.conf");
    let nats = NatsCluster::start_with(
        1,
        NatsOptions {
            extra_config: format!(
                "{}authorization {{ users: [\n\
                 {{ user: gatehouse, password: \"gw-pass-1\", permissions: {{\n{permissions}\n}} }}\n\
                 {{ user: admin, password: \"admin-pass\" }} ] }}\n",
                pki.nats_tls_block(false)
            ),
            ..NatsOptions::default()
        },
    );
    // The oCIS ocs service creates the signing-key bucket; the proxy only reads it.
    gatehouse_nats::NatsKvStore::connect(gatehouse_nats::NatsKvOptions {
        servers: nats.client_urls(),
        bucket: "proxy".into(),
        security: NatsSecurity {
            section: "admin".into(),
            tls: Some(NatsTls {
                root_ca: Some(pki.ca.clone()),
                client_certificate: None,
                insecure: false,
            }),
            auth: NatsAuth::UserPassword {
                user: "admin".into(),
                password: "admin-pass".into(),
            },
        },
        ..Default::default()
    })
    .await
    .unwrap();
    let password_file = s.dir.path().join("nats-password");
    let node = |password: &str| {
        std::fs::write(&password_file, format!("{password}\n")).unwrap();
        let mut cmd = gatehouse(s.dir.path());
        cmd.arg("--config")
            .arg(&s.config)
            .arg("server")
            .env("OCIS_CACHE_STORE", "nats-js-kv")
            .env("OCIS_CACHE_STORE_NODES", nats.client_urls().join(","))
            .env("OCIS_CACHE_ENABLE_TLS", "true")
            .env("OCIS_CACHE_TLS_ROOT_CA_CERTIFICATE", &pki.ca)
            .env("OCIS_CACHE_AUTH_USERNAME", "gatehouse")
            .env("OCIS_CACHE_AUTH_PASSWORD_FILE", &password_file)
            .env("OCIS_EVENTS_ENDPOINT", "")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    };

    exits_refusing_credentials(node("not-the-password"), "NATS refused the credentials").await;

    let _good = Node(node("gw-pass-1").spawn().unwrap());
    let ready = gatehouse_tests::wait_until(Duration::from_secs(20), || async {
        fetch(&s.debug_addr, "/readyz", None, Duration::from_secs(2))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(ready, "never ready:\n{}", nats.log(0));
    let log = nats.log(0);
    assert!(
        !log.contains("Publish Violation") && !log.contains("Subscription Violation"),
        "the documented permissions were not enough for a node:\n{log}"
    );
}

/// Runs a node started with the password `not-the-password` and checks that it exits 1 saying
/// `refusal` and naming the settings, without echoing the password or panicking.
async fn exits_refusing_credentials(mut cmd: Command, refusal: &str) {
    let mut wrong = Node(cmd.spawn().unwrap());
    let code = wait_for_exit(&mut wrong, Duration::from_secs(20)).await;
    let mut stderr = String::new();
    std::io::Read::read_to_string(wrong.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(refusal)
            && stderr.contains(".username and ")
            && stderr.contains(".password"),
        "{stderr}"
    );
    assert!(!stderr.contains("not-the-password"), "{stderr}");
    assert_no_panic(&stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_credentials_are_checked_at_start_up_and_a_missing_master_only_delays_readiness() {
    use gatehouse_tests::redis::{RedisOptions, RedisSentinels};

    let s = setup();
    let mut redis = tokio::task::block_in_place(|| {
        RedisSentinels::start_with(RedisOptions {
            password: Some("redis-pass-1".to_owned()),
        })
    });
    let sentinels = redis.nodes().join(",");
    let node = |password: &str| {
        let mut cmd = gatehouse(s.dir.path());
        cmd.arg("--config")
            .arg(&s.config)
            .arg("server")
            .env("OCIS_CACHE_STORE", "redis-sentinel")
            .env("OCIS_CACHE_STORE_NODES", &sentinels)
            .env("OCIS_CACHE_AUTH_PASSWORD", password)
            .env("OCIS_EVENTS_ENDPOINT", "")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    };
    exits_refusing_credentials(node("not-the-password"), "Redis refused the credentials").await;

    // No master (the sentinels answer, the data nodes are down): the node starts, unready.
    tokio::task::block_in_place(|| redis.kill_all_data());
    let _good = Node(node("redis-pass-1").spawn().unwrap());
    let readyz = || async {
        fetch(&s.debug_addr, "/readyz", None, Duration::from_secs(2))
            .await
            .map(|r| r.status().as_u16())
    };
    let up_unready = gatehouse_tests::wait_until(Duration::from_secs(20), || async {
        readyz().await.is_ok_and(|status| status == 503)
    })
    .await;
    assert!(up_unready, "the node did not start unready");
    tokio::task::block_in_place(|| {
        redis.restart_data(0);
        redis.restart_data(1);
    });
    let ready = gatehouse_tests::wait_until(Duration::from_secs(20), || async {
        readyz().await.is_ok_and(|status| status == 200)
    })
    .await;
    assert!(ready, "never ready:\n{}", redis.log_tail());
}

/// With no `policies` configured, the dump shows the default `ocis` policy route by route, and
/// the dump is itself a configuration that routes the same way.
#[test]
fn config_dump_lists_the_route_table_in_force() {
    let s = setup();
    let (code, out, err) = run(gatehouse(s.dir.path())
        .arg("--config")
        .arg(&s.config)
        .args(["config", "dump"]));
    assert_eq!(code, 0, "{err}");
    let dumped: serde_yaml_ng::Value = serde_yaml_ng::from_str(&out).unwrap();
    let policies = dumped["policies"].as_sequence().expect("policies listed");
    assert_eq!(policies.len(), 1, "{out}");
    assert_eq!(policies[0]["name"].as_str(), Some("ocis"));
    let routes = policies[0]["routes"].as_sequence().unwrap();
    assert!(
        routes
            .iter()
            .any(|r| r["endpoint"].as_str() == Some("/remote.php/")),
        "{out}"
    );
    // The dump loads back (secrets masked, so only its shape is checked).
    let again = s.dir.path().join("dumped.yaml");
    std::fs::write(&again, &out).unwrap();
    let (code, _, err) = run(gatehouse(s.dir.path())
        .arg("--config")
        .arg(&again)
        .args(["config", "check"]));
    assert_eq!(code, 0, "{err}");
}
