//! A `gatehouse` node started from the built binary, with its configuration in a temp directory
//! and a clean environment (only what the test passes, so the host's PROXY_/OCIS_ variables and
//! config files cannot leak in).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Output};
use std::time::Duration;

use crate::process::ChildGuard;

/// The `gatehouse` binary next to the test executable (cargo puts both under target/<profile>/).
/// `GATEHOUSE_BIN` overrides it.
pub fn gatehouse_bin() -> PathBuf {
    if let Ok(p) = std::env::var("GATEHOUSE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("gatehouse");
    assert!(
        bin.exists(),
        "{} not found: build it first (`cargo build --bins`, done by tests/run-all.sh)",
        bin.display()
    );
    bin
}

/// The environment every test node starts from.
fn base_env(home: &std::path::Path) -> Vec<(String, String)> {
    vec![
        ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
        ("HOME".into(), home.display().to_string()),
        ("OCIS_BASE_DATA_PATH".into(), home.display().to_string()),
        (
            "OCIS_CONFIG_DIR".into(),
            home.join("config").display().to_string(),
        ),
    ]
}

/// Runs a `gatehouse` subcommand to completion (for CLI tests).
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> Output {
    let home = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(gatehouse_bin());
    cmd.env_clear()
        .envs(base_env(home.path()))
        .envs(env.iter().copied())
        .args(args);
    cmd.output().expect("run gatehouse")
}

pub struct NodeOptions {
    pub yaml: String,
    pub env: Vec<(String, String)>,
    /// Wait for `/readyz` (true) or only for `/healthz`.
    pub wait_ready: bool,
    /// Another `gatehouse` binary (an earlier build, for benchmarks); default [`gatehouse_bin`].
    pub bin: Option<PathBuf>,
}

impl NodeOptions {
    pub fn new(yaml: &str) -> Self {
        NodeOptions {
            yaml: yaml.to_string(),
            env: Vec::new(),
            wait_ready: true,
            bin: None,
        }
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_string(), v.to_string()));
        self
    }
    /// Tracing on, exported over OTLP gRPC to `receiver` (oCIS's `OCIS_TRACING_*` settings).
    pub fn traced_to(self, receiver: &crate::otlp::OtlpReceiver) -> Self {
        self.env("OCIS_TRACING_ENABLED", "true")
            .env("OCIS_TRACING_TYPE", "otlp")
            .env(
                "OCIS_TRACING_ENDPOINT",
                &format!("127.0.0.1:{}", receiver.grpc_port()),
            )
    }
}

pub struct GatehouseNode {
    pub http: SocketAddr,
    pub debug: SocketAddr,
    proc: ChildGuard,
    opts: NodeOptions,
    /// Processes started so far (each logs to its own file).
    runs: usize,
    dir: tempfile::TempDir,
}

impl GatehouseNode {
    pub async fn start(yaml: &str) -> GatehouseNode {
        Self::start_with(NodeOptions::new(yaml)).await
    }

    pub async fn start_with(opts: NodeOptions) -> GatehouseNode {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("proxy.yaml"), &opts.yaml).expect("write config");
        let mut runs = 0;
        loop {
            runs += 1;
            // Chosen together: two separate choices can return the same port.
            let ports = crate::process::free_ports(2);
            let http: SocketAddr = ([127, 0, 0, 1], ports[0]).into();
            let debug: SocketAddr = ([127, 0, 0, 1], ports[1]).into();
            let log = log_name(runs);
            match spawn(&opts, dir.path(), http, debug, &log).await {
                Ok(proc) => {
                    return GatehouseNode {
                        http,
                        debug,
                        proc,
                        opts,
                        runs,
                        dir,
                    };
                }
                // Between `free_ports` and the node's bind, another process on this machine
                // took a port: choose again.
                Err(PortTaken(log)) if runs < PORT_ATTEMPTS => {
                    eprintln!("gatehouse start {runs}: a chosen port was taken, retrying:\n{log}");
                }
                Err(PortTaken(log)) => {
                    panic!("gatehouse: ports taken on {PORT_ATTEMPTS} attempts:\n{log}")
                }
            }
        }
    }

    /// Starts the node again on the same ports with the same configuration (after it exited or
    /// was killed), and waits for it as [`GatehouseNode::start_with`] does. Each run logs to its
    /// own file; [`GatehouseNode::logs`] reads the current one.
    pub async fn restart(&mut self) {
        self.proc.kill();
        self.runs += 1;
        let log = log_name(self.runs);
        self.proc = spawn(&self.opts, self.dir.path(), self.http, self.debug, &log)
            .await
            .unwrap_or_else(|PortTaken(log)| panic!("gatehouse restart: port taken:\n{log}"));
    }

    /// SIGKILL: the node is gone at once, its connections reset.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.http, path_and_query)
    }

    pub fn debug_url(&self, path: &str) -> String {
        format!("http://{}{}", self.debug, path)
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn rss_kib(&self) -> u64 {
        self.proc.rss_kib()
    }

    pub fn logs(&self) -> String {
        self.proc.log_text()
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn sigterm(&self) {
        self.proc.signal("TERM");
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.proc.wait_timeout(timeout)
    }

    /// JSON access-log lines written so far.
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        self.logs()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v.to_string().contains("access-log"))
            .collect()
    }
}

/// How many times [`GatehouseNode::start_with`] chooses ports.
const PORT_ATTEMPTS: usize = 5;

/// The node exited during start-up because one of its ports was bound by another process; the
/// log it wrote.
struct PortTaken(String);

fn log_name(run: usize) -> String {
    if run == 1 {
        "gatehouse.log".to_owned()
    } else {
        format!("gatehouse.{run}.log")
    }
}

/// Starts the node and waits for it; panics if it exits during start-up for any other reason than
/// a taken port.
async fn spawn(
    opts: &NodeOptions,
    dir: &std::path::Path,
    http: SocketAddr,
    debug: SocketAddr,
    log: &str,
) -> Result<ChildGuard, PortTaken> {
    let mut cmd = Command::new(opts.bin.clone().unwrap_or_else(gatehouse_bin));
    cmd.env_clear()
        .envs(base_env(dir))
        .env("PROXY_HTTP_ADDR", http.to_string())
        .env("PROXY_DEBUG_ADDR", debug.to_string())
        .env("PROXY_TLS", "false")
        .env("PROXY_LOG_LEVEL", "info")
        .envs(opts.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .arg("--config")
        .arg(dir.join("proxy.yaml"))
        .arg("server");
    let mut proc = ChildGuard::spawn("gatehouse", cmd, &dir.join(log));
    let probe = if opts.wait_ready {
        "/readyz"
    } else {
        "/healthz"
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = proc.try_status() {
            let text = proc.log_text();
            if text.to_ascii_lowercase().contains("address already in use") {
                return Err(PortTaken(text));
            }
            panic!("gatehouse exited during start-up ({status}):\n{text}");
        }
        if probe_ok(debug, probe).await {
            return Ok(proc);
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("gatehouse not ready after 30 s:\n{}", proc.log_text());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn probe_ok(addr: SocketAddr, path: &str) -> bool {
    let url = format!("http://{addr}{path}");
    let req = http::Request::get(url)
        .body(crate::client::empty())
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(2), crate::client::client().request(req)).await {
        Ok(Ok(resp)) => resp.status() == http::StatusCode::OK,
        _ => false,
    }
}
