//! nginx from Debian, as the load balancer in front of gateway nodes and as the baseline reverse
//! proxy of the benchmarks. It runs with its own prefix in a temp directory.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::process::ChildGuard;

pub fn nginx_bin() -> PathBuf {
    if let Ok(p) = std::env::var("GATEHOUSE_NGINX") {
        return PathBuf::from(p);
    }
    for p in ["/usr/sbin/nginx", "/usr/local/sbin/nginx"] {
        if std::path::Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("nginx not found: install it (`apt-get install nginx`, done by tests/run-all.sh)");
}

pub struct Nginx {
    pub addr: SocketAddr,
    proc: ChildGuard,
    _dir: tempfile::TempDir,
}

/// How nginx treats the upstream group.
pub struct LbOptions {
    pub workers: usize,
    /// Keep idle connections to the upstreams (like a production LB does).
    pub keepalive: usize,
}

impl Default for LbOptions {
    fn default() -> Self {
        LbOptions {
            workers: 1,
            keepalive: 64,
        }
    }
}

impl Nginx {
    /// nginx balancing across `backends`, retrying a request on the next one when a backend
    /// refuses or drops the connection (the usual production setting).
    pub async fn balance(backends: &[SocketAddr]) -> Nginx {
        Self::start(backends, LbOptions::default()).await
    }

    pub async fn start(backends: &[SocketAddr], opts: LbOptions) -> Nginx {
        let dir = tempfile::tempdir().expect("tempdir");
        let location = if backends.is_empty() {
            "default_type text/plain; return 200 \"hello from upstream\\n\";"
        } else {
            "proxy_pass http://gw;"
        };
        let servers: String = backends
            .iter()
            .map(|b| format!("    server {b} max_fails=0;\n"))
            .collect();
        let user = if is_root() { "user root root;\n" } else { "" };
        let preamble = Self::preamble(dir.path(), opts.workers);
        let upstream = if backends.is_empty() {
            String::new()
        } else {
            format!(
                "  upstream gw {{\n{servers}    keepalive {};\n  }}",
                opts.keepalive
            )
        };
        Self::spawn(dir, |port| {
            format!(
                r#"{user}{preamble}
  map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}
{upstream}
  server {{
    listen 127.0.0.1:{port} reuseport;
    client_max_body_size 0;
    proxy_http_version 1.1;
    proxy_request_buffering off;
    proxy_buffering off;
    proxy_set_header Host $http_host;
    proxy_set_header Upgrade $http_upgrade;
    proxy_set_header Connection $connection_upgrade;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_next_upstream error timeout;
    proxy_next_upstream_tries 3;
    location / {{ {location} }}
  }}
}}
"#
            )
        })
        .await
    }

    /// nginx terminating TLS in front of an OTLP receiver, with `cert`/`key` (PEM files): gRPC
    /// (HTTP/2) on the returned address's port and OTLP/HTTP on `http_port`, the real TLS a
    /// collector behind a load balancer presents.
    pub async fn tls_front(
        cert: &std::path::Path,
        key: &std::path::Path,
        grpc_backend: SocketAddr,
        http_backend: SocketAddr,
        http_port: u16,
    ) -> Nginx {
        let dir = tempfile::tempdir().expect("tempdir");
        let user = if is_root() { "user root root;\n" } else { "" };
        let (cert, key) = (cert.display(), key.display());
        let preamble = Self::preamble(dir.path(), 1);
        Self::spawn(dir, |port| {
            format!(
                r#"{user}{preamble}
  ssl_certificate {cert};
  ssl_certificate_key {key};
  server {{
    listen 127.0.0.1:{port} ssl http2;
    location / {{ grpc_pass grpc://{grpc_backend}; }}
  }}
  server {{
    listen 127.0.0.1:{http_port} ssl;
    location / {{ proxy_pass http://{http_backend}; }}
  }}
}}
"#
            )
        })
        .await
    }

    /// The start of every configuration here: `workers` worker processes in the foreground, pid,
    /// logs and temp files under `dir`, no access log, and an open `http {` block.
    pub fn preamble(dir: &std::path::Path, workers: usize) -> String {
        let d = dir.display();
        format!(
            r#"worker_processes {workers};
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/tmp_body; proxy_temp_path {d}/tmp_proxy;
  fastcgi_temp_path {d}/tmp_fcgi; uwsgi_temp_path {d}/tmp_uwsgi; scgi_temp_path {d}/tmp_scgi;"#
        )
    }

    /// nginx with a whole configuration of the caller's: `conf` gets the prefix directory (for
    /// `pid`, logs and temp paths) and the port to listen on, and returns `nginx.conf`. The `user`
    /// line is prepended when running as root.
    pub async fn with_conf(conf: impl Fn(&std::path::Path, u16) -> String) -> Nginx {
        let dir = tempfile::tempdir().expect("tempdir");
        let user = if is_root() { "user root root;\n" } else { "" };
        let path = dir.path().to_owned();
        Self::spawn(dir, |port| format!("{user}{}", conf(&path, port))).await
    }

    /// Starts nginx on a port chosen here, with the configuration `conf` makes for it. nginx
    /// writes its pid file only after it has bound every listener, so that file (not a TCP
    /// connect, which any process holding the port would answer) says it is up. When another
    /// process took the port between `free_port` and nginx's bind, a new one is chosen.
    async fn spawn(dir: tempfile::TempDir, conf: impl Fn(u16) -> String) -> Nginx {
        const ATTEMPTS: usize = 5;
        let conf_path = dir.path().join("nginx.conf");
        let (pid_file, error_log) = (dir.path().join("nginx.pid"), dir.path().join("error.log"));
        for attempt in 1..=ATTEMPTS {
            let port = crate::free_port();
            std::fs::write(&conf_path, conf(port)).expect("write nginx.conf");
            let _ = std::fs::remove_file(&error_log);
            let mut cmd = Command::new(nginx_bin());
            cmd.arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(&conf_path)
                .arg("-e")
                .arg(&error_log);
            let out = dir.path().join(format!("nginx.{attempt}.out"));
            let mut proc = ChildGuard::spawn("nginx", cmd, &out);
            let pid = proc.pid().to_string();
            let written = || {
                let now = std::fs::read_to_string(&pid_file).is_ok_and(|p| p.trim() == pid);
                async move { now }
            };
            let log = |p: &ChildGuard| {
                let err = std::fs::read_to_string(&error_log).unwrap_or_default();
                format!("{}\n{err}", p.log_text())
            };
            match proc.started(log, written).await {
                Ok(()) => {
                    return Nginx {
                        addr: SocketAddr::from(([127, 0, 0, 1], port)),
                        proc,
                        _dir: dir,
                    };
                }
                Err(_) if attempt < ATTEMPTS => {
                    eprintln!("nginx start {attempt}: port {port} was taken, retrying");
                }
                Err(log) => panic!("nginx: ports taken on {ATTEMPTS} attempts:\n{log}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// nginx answering every request itself with a small 200 (a fast upstream for benchmarks).
    pub async fn static_ok() -> Nginx {
        Self::start(&[], LbOptions::default()).await
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }
}

impl Drop for Nginx {
    /// SIGTERM lets the master stop its workers; a SIGKILLed master would leave them running.
    fn drop(&mut self) {
        self.proc.terminate(Duration::from_secs(5));
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}
