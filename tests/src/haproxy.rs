//! HAProxy from Debian as a load balancer with *active* health checks: every gateway node is
//! checked on its debug server's `/readyz` (nginx open source only notices failed requests), and
//! idempotent requests that fail to connect or get a 503 are retried on another node. Its CSV
//! statistics say which servers it considers up.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::ChildGuard;

pub fn haproxy_bin() -> PathBuf {
    if let Ok(p) = std::env::var("GATEHOUSE_HAPROXY") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from("/usr/sbin/haproxy");
    assert!(
        p.exists(),
        "haproxy not found: install it (`apt-get install haproxy`, done by tests/run-all.sh)"
    );
    p
}

/// One gateway node as HAProxy sees it: where it serves and where its `/readyz` is.
#[derive(Debug, Clone, Copy)]
pub struct Backend {
    pub http: SocketAddr,
    pub debug: SocketAddr,
}

pub struct HaProxy {
    pub addr: SocketAddr,
    stats: SocketAddr,
    proc: ChildGuard,
    _dir: tempfile::TempDir,
}

/// How often a node's readiness is checked; two failures take it out, one success brings it back.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(100);

impl HaProxy {
    /// HAProxy in front of `backends`. It counts as started when its CLI socket (in this
    /// instance's own directory) answers `show info`, which HAProxy serves only after binding every
    /// listener: a TCP connect could be answered by another process holding the port. When another
    /// process took a port between `free_ports` and HAProxy's bind, new ones are chosen.
    pub async fn balance(backends: &[Backend]) -> HaProxy {
        const ATTEMPTS: usize = 5;
        let dir = tempfile::tempdir().expect("tempdir");
        let cli = dir.path().join("haproxy.sock");
        for attempt in 1..=ATTEMPTS {
            // Chosen together: two separate choices can return the same port.
            let ports = crate::process::free_ports(2);
            let addr: SocketAddr = ([127, 0, 0, 1], ports[0]).into();
            let stats: SocketAddr = ([127, 0, 0, 1], ports[1]).into();
            let conf_path = dir.path().join("haproxy.cfg");
            std::fs::write(&conf_path, config(backends, addr, stats, &cli))
                .expect("write haproxy.cfg");
            let mut cmd = Command::new(haproxy_bin());
            cmd.arg("-db").arg("-f").arg(&conf_path);
            let log = dir.path().join(format!("haproxy.{attempt}.log"));
            let mut proc = ChildGuard::spawn("haproxy", cmd, &log);
            match proc
                .started(ChildGuard::log_text, || answers_show_info(&cli))
                .await
            {
                Ok(()) => {
                    return HaProxy {
                        addr,
                        stats,
                        proc,
                        _dir: dir,
                    };
                }
                Err(_) if attempt < ATTEMPTS => {
                    eprintln!("haproxy start {attempt}: a port was taken, retrying");
                }
                Err(log) => panic!("haproxy: ports taken on {ATTEMPTS} attempts:\n{log}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    /// `(server name, status)` of every gateway node, status as HAProxy reports it (`UP`,
    /// `DOWN`, `UP 1/2`, …).
    pub async fn server_states(&self) -> Vec<(String, String)> {
        server_states_at(&self.stats.to_string(), "nodes", "gw").await
    }

    /// Waits until HAProxy reports every server with `want` (`UP` or `DOWN`) for the ones named.
    pub async fn wait_states(&self, want: &[(&str, &str)], within: Duration) -> bool {
        crate::wait_until(within, || async {
            let states = self.server_states().await;
            want.iter().all(|(name, status)| {
                states
                    .iter()
                    .any(|(n, s)| n == name && s.split(' ').next() == Some(*status))
            })
        })
        .await
    }

    pub fn logs(&self) -> String {
        self.proc.log_text()
    }
}

/// `(server, status)` of the servers of `backend` whose names start with `prefix`, from the CSV
/// statistics of any HAProxy serving `stats uri /stats` at `stats_addr` (also one in a container).
pub async fn server_states_at(
    stats_addr: &str,
    backend: &str,
    prefix: &str,
) -> Vec<(String, String)> {
    let csv = crate::client::get(&format!("http://{stats_addr}/stats;csv"))
        .await
        .text();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .trim_start_matches("# ")
        .split(',')
        .collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    // No CSV header (HAProxy not answering its stats yet): no server is known yet, and callers
    // that wait for states ask again.
    let (Some(px), Some(sv), Some(status)) = (col("pxname"), col("svname"), col("status")) else {
        return Vec::new();
    };
    lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f.len() > status && f[px] == backend && f[sv].starts_with(prefix))
        .map(|f| (f[sv].to_owned(), f[status].to_owned()))
        .collect()
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        self.proc.terminate(Duration::from_secs(5));
    }
}

/// The configuration: the gateway frontend on `addr`, node health from `/readyz`, statistics on
/// `stats`, the CLI on the unix socket `cli`.
fn config(backends: &[Backend], addr: SocketAddr, stats: SocketAddr, cli: &Path) -> String {
    let inter = CHECK_INTERVAL.as_millis();
    let servers: String = backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            format!(
                "  server gw{i} {} check port {} inter {inter}ms fall 2 rise 1\n",
                b.http,
                b.debug.port()
            )
        })
        .collect();
    let cli = cli.display();
    format!(
        "global
  maxconn 4096
  stats socket {cli} mode 600
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  retries 2
  option redispatch 1
  retry-on conn-failure empty-response 503
frontend gateway
  bind {addr}
  default_backend nodes
backend nodes
  balance roundrobin
  option httpchk GET /readyz
  http-check expect status 200
{servers}listen stats
  bind {stats}
  stats enable
  stats uri /stats
"
    )
}

/// Whether an HAProxy answers `show info` on the CLI socket `cli`.
async fn answers_show_info(cli: &Path) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut conn) = tokio::net::UnixStream::connect(cli).await else {
        return false;
    };
    let mut info = String::new();
    conn.write_all(b"show info\n").await.is_ok()
        && conn.read_to_string(&mut info).await.is_ok()
        && info.contains("Name: HAProxy")
}
