//! The `fair` benchmark: one gatehouse node against nginx doing the same work, compared by what
//! each process spends per request rather than by who wins a race for two shared cores.
//!
//! - **The same work.** nginx adds every response header the node adds (learnt from the node's own
//!   answer, with `add_header … always`), a request id both ways, `X-Forwarded-For/Proto/Host`,
//!   keeps a pool of upstream connections, streams bodies unbuffered, and runs as many workers as
//!   the node has HTTP workers.
//! - **CPU time per request of every process** (proxy, upstream, load generator), from each
//!   thread's `schedstat` over the measurement window ([`procstat`]), at saturation (closed loop)
//!   and at 50 % and 80 % of the slower proxy's capacity (open loop, [`load`]). Latency
//!   percentiles are read at the same offered load for both proxies.
//! - **Modes**: unpinned (both proxies with 2 workers, everything shares the 2 cores) and pinned
//!   (1 worker each, the proxy alone on core 1, upstream and load generator on core 0).
//! - **Rounds**: every target once per round, rounds one after another, so that a change in the
//!   machine's load reaches all targets alike; median and range over the rounds, and the steal
//!   time of each measurement.
//!
//! The node-only targets (cached token, cached signed URL, cached public share, tracing at a
//! sampling ratio of 0) are measured at the same offered load as the unprotected pair and
//! compared with the node's unprotected figures. HTTP/2 (h2c, one stream at a time per
//! connection) and TLS (HTTP/1.1, connections kept) are pairs of their own, with their own
//! capacity; the TLS node and the tracing node are further node processes with the same
//! configuration.

pub mod load;
mod procstat;
mod stats;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncBufReadExt, BufReader};

use gatehouse_tests::client::{get, get_with};
use gatehouse_tests::idp::{Idp, TokenOptions};
use gatehouse_tests::lb::Nginx;
use gatehouse_tests::node::{GatehouseNode, NodeOptions};
use gatehouse_tests::otlp::OtlpReceiver;
use gatehouse_tests::shares::{FixtureShare, ShareFixture};
use gatehouse_tests::signing::{Link, sign};

use self::load::{Outcome, Spec};
use self::procstat::Usage;
use self::stats::Spread;

/// Connections of the small-request targets.
const CONNECTIONS: usize = 32;
/// Body size of the streaming targets, and their connections.
const STREAM_BYTES: usize = 1 << 20;
const STREAM_CONNECTIONS: usize = 8;
const WARMUP_MS: u64 = 1000;
/// Offered loads after saturation, as fractions of the slower proxy's capacity.
const LEVELS: [f64; 2] = [0.5, 0.8];

/// How long and how often to measure, and in which modes.
#[derive(Debug, Clone)]
pub struct Settings {
    pub rounds: usize,
    pub seconds: u64,
    pub modes: Vec<Mode>,
    /// The `gatehouse-chaos` binary, whose `load` command is the load generator.
    pub generator: std::path::PathBuf,
    /// Only the targets whose names contain one of these (all when empty); the unprotected pair
    /// is always measured, since the offered loads follow from it.
    pub only: Vec<String>,
}

/// The Markdown tables with the targets, and every sample as JSON.
pub struct Results {
    pub report: String,
    pub json: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Mode {
    Unpinned,
    Pinned,
}

impl Mode {
    fn workers(self) -> usize {
        match self {
            Mode::Unpinned => 2,
            Mode::Pinned => 1,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Mode::Unpinned => "unpinned, 2 workers each",
            Mode::Pinned => "pinned, 1 worker each: proxy on core 1, upstream and load on core 0",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
enum Proxy {
    Nginx,
    Node,
    /// The node's configuration with tracing on and a sampling ratio of 0.
    NodeTracedZero,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
enum Kind {
    Small,
    Download,
    Upload,
    /// Small requests over HTTP/2 with prior knowledge, or over TLS (HTTP/1.1): compared within
    /// their own pair. The node serves h2c on its plain port and TLS from a second node process.
    H2c,
    Tls,
}

impl Kind {
    fn streams(self) -> bool {
        matches!(self, Kind::Download | Kind::Upload)
    }
}

#[derive(Clone)]
struct Target {
    name: &'static str,
    proxy: Proxy,
    kind: Kind,
    path: String,
    method: &'static str,
    headers: Vec<(String, String)>,
}

/// One measurement of one target.
#[derive(Debug, Clone, serde::Serialize)]
struct Sample {
    mode: Mode,
    phase: String,
    target: &'static str,
    proxy: Proxy,
    kind: Kind,
    round: usize,
    offered: Option<f64>,
    outcome: Outcome,
    proxy_cpu_us: f64,
    upstream_cpu_us: f64,
    generator_cpu_us: f64,
    proxy_switches: f64,
    steal_pct: f64,
}

impl Sample {
    /// Body bytes moved per second of proxy CPU, in MiB.
    fn mib_per_cpu_s(&self) -> f64 {
        let bytes = (self.outcome.bytes_in + self.outcome.bytes_out) as f64;
        let cpu_s = self.proxy_cpu_us * self.outcome.completed as f64 / 1e6;
        bytes / f64::from(1u32 << 20) / cpu_s
    }
}

/// What one mode runs on: the proxies are started per mode (their worker counts differ), the
/// upstream and the provider once.
struct Stack<'a> {
    upstream: &'a Nginx,
    nginx: AlikeNginx,
    node: GatehouseNode,
    /// The same node configuration serving TLS.
    node_tls: GatehouseNode,
    /// The same node configuration with tracing on at ratio 0, and the receiver it exports to
    /// (which must stay empty).
    node_traced: GatehouseNode,
    traced_otlp: OtlpReceiver,
    /// The certificate both proxies present, trusted by the load generator.
    cert_pem: String,
    _certs: tempfile::TempDir,
    mode: Mode,
}

/// The nodes are stopped as an operator would stop them (SIGTERM, then the drain), not killed:
/// a build instrumented for profile-guided optimisation (`chaos/pgo.sh`) writes its profile on
/// a clean exit only.
impl Drop for Stack<'_> {
    fn drop(&mut self) {
        let nodes = [&mut self.node, &mut self.node_tls, &mut self.node_traced];
        for node in &nodes {
            node.sigterm();
        }
        for node in nodes {
            node.wait_exit(Duration::from_secs(20));
        }
    }
}

impl Stack<'_> {
    fn addr(&self, p: Proxy, k: Kind) -> SocketAddr {
        match (p, k) {
            (Proxy::Nginx, Kind::H2c) => self.nginx.h2c,
            (Proxy::Nginx, Kind::Tls) => self.nginx.tls,
            (Proxy::Nginx, _) => self.nginx.nginx.addr,
            (Proxy::Node, Kind::Tls) => self.node_tls.http,
            (Proxy::Node, _) => self.node.http,
            (Proxy::NodeTracedZero, _) => self.node_traced.http,
        }
    }
    fn pid(&self, p: Proxy, k: Kind) -> u32 {
        match (p, k) {
            (Proxy::Nginx, _) => self.nginx.nginx.pid(),
            (Proxy::Node, Kind::Tls) => self.node_tls.pid(),
            (Proxy::Node, _) => self.node.pid(),
            (Proxy::NodeTracedZero, _) => self.node_traced.pid(),
        }
    }
}

/// nginx configured like the node, listening three ways.
struct AlikeNginx {
    nginx: Nginx,
    h2c: SocketAddr,
    tls: SocketAddr,
}

/// The upstream both proxies forward to: a small answer, a 1 MiB file, and a WebDAV store for
/// uploads. A store answers a `PUT` only once it has the whole body (nginx's DAV module writes it
/// to a file, then renames it into place), as a storage backend does; an upstream that answered
/// before reading the body (nginx's `return` does) would measure the proxies' early-answer paths,
/// not an upload. The uploads go to `store`, on tmpfs where there is one, so that the disk is not
/// part of what is measured.
async fn upstream() -> (Nginx, tempfile::TempDir) {
    let shm = std::path::Path::new("/dev/shm");
    let store = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .expect("upload store directory");
    let s = store.path().to_owned();
    let nginx = Nginx::with_conf(|d, port| {
        std::fs::write(d.join("big.bin"), vec![b'd'; STREAM_BYTES]).expect("write big.bin");
        let preamble = Nginx::preamble(d, 1);
        let (d, s) = (d.display(), s.display());
        format!(
            r#"{preamble}
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  server {{
    listen 127.0.0.1:{port};
    client_max_body_size 0;
    location ~ /big$ {{ root {d}; try_files /big.bin =404; }}
    location ~ /upload$ {{
      root {s};
      client_body_temp_path {s}/incoming;
      dav_methods PUT;
      create_full_put_path on;
    }}
    location / {{ default_type text/plain; return 200 "hello from upstream\n"; }}
  }}
}}
"#
        )
    })
    .await;
    (nginx, store)
}

/// nginx configured to do what the node does on an unprotected route, on a plain HTTP/1.1
/// port, an h2c port and a TLS port (`cert`, `key`: PEM files).
async fn nginx_alike(
    upstream: SocketAddr,
    workers: usize,
    add: &[(String, String)],
    cert: &std::path::Path,
    key: &std::path::Path,
) -> AlikeNginx {
    let mut server = String::from(
        r#"    client_max_body_size 0;
    proxy_http_version 1.1;
    proxy_request_buffering off;
    proxy_buffering off;
    proxy_buffer_size 64k;
    proxy_buffers 4 64k;
    proxy_busy_buffers_size 128k;
    client_body_buffer_size 64k;
    proxy_set_header Connection "";
    proxy_set_header Host $http_host;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_set_header X-Forwarded-Proto $scheme;
    proxy_set_header X-Forwarded-Host $host;
    proxy_set_header X-Request-Id $request_id;
    add_header X-Request-Id $request_id always;
"#,
    );
    for (n, v) in add {
        let v = v.replace('\\', "\\\\").replace('"', "\\\"");
        let _ = writeln!(server, "    add_header {n} \"{v}\" always;");
    }
    server.push_str("    location / { proxy_pass http://up; }\n");
    let (h2c, tls) = (gatehouse_tests::free_port(), gatehouse_tests::free_port());
    let (cert, key) = (cert.display(), key.display());
    let nginx = Nginx::with_conf(|d, port| {
        let preamble = Nginx::preamble(d, workers);
        format!(
            r#"{preamble}
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  upstream up {{
    server {upstream};
    keepalive 64;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
  }}
  server {{
    listen 127.0.0.1:{port} reuseport;
{server}  }}
  server {{
    listen 127.0.0.1:{h2c} reuseport http2;
{server}  }}
  server {{
    listen 127.0.0.1:{tls} reuseport ssl;
    ssl_certificate {cert};
    ssl_certificate_key {key};
{server}  }}
}}
"#
        )
    })
    .await;
    let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    AlikeNginx {
        nginx,
        h2c: at(h2c),
        tls: at(tls),
    }
}

/// A benchmark node's configuration: `/bench` unprotected, everything else protected (bearer
/// tokens, signed URLs with keys in memory, public shares checked by `shares` if given),
/// `workers` HTTP workers (0: one per core).
pub fn node_yaml(upstream: &str, issuer: &str, workers: usize, shares: Option<&str>) -> String {
    let shares = shares.map_or(String::new(), |url| {
        format!("public_shares:\n  url: {url}\n")
    });
    format!(
        "http:
  workers: {workers}
policies:
  - name: ocis
    routes:
      - endpoint: /bench
        backend: {upstream}
        unprotected: true
      - endpoint: /
        backend: {upstream}
oidc:
  issuer: {issuer}
auto_provision_accounts: true
token_manager:
  jwt_secret: bench-secret
pre_signed_url:
  serve_signing_keys: true
  signing_keys: {{store: memory}}
{shares}"
    )
}

/// Response headers the node adds that the upstream did not send and nginx does not set itself
/// (its own request id is configured separately): what nginx must add to do the same work.
fn added_headers(node: &http::HeaderMap, upstream: &http::HeaderMap) -> Vec<(String, String)> {
    const OWN: [&str; 7] = [
        "date",
        "server",
        "content-length",
        "content-type",
        "connection",
        "keep-alive",
        "x-request-id",
    ];
    let mut out: Vec<(String, String)> = node
        .iter()
        .filter(|(n, _)| !OWN.contains(&n.as_str()) && !upstream.contains_key(*n))
        .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    out.sort();
    out
}

/// `gatehouse-chaos fair [rounds] [seconds] [unpinned|pinned|both]`.
pub async fn run(settings: Settings) -> Result<Results, String> {
    let idp = tokio::task::spawn_blocking(Idp::start)
        .await
        .map_err(|e| format!("starting the OpenID provider: {e}"))?;
    let (upstream, _uploads) = upstream().await;
    // A password-less public link: after its first request the node answers from its cache of
    // accepted shares (30 s), so the share service is not part of what is measured.
    let shares = ShareFixture::start().await;
    shares.add_share(FixtureShare::new("s-bench", BENCH_SHARE));
    let mut samples = Vec::new();
    let mut report = String::new();
    for &mode in &settings.modes {
        let stack = start_mode(mode, &idp, &upstream, &shares.url()).await?;
        // The provider's tokens last 10 minutes, less than one mode of a long run.
        let token = idp.user_token("einstein", TokenOptions::jwt()).await;
        let bearer = format!("Bearer {}", token.access_token());
        let targets: Vec<Target> = targets(&stack, &bearer)
            .await?
            .into_iter()
            .filter(|t| {
                settings.only.is_empty()
                    || t.name.ends_with(" unprotected")
                    || settings.only.iter().any(|o| t.name.contains(o.as_str()))
            })
            .collect();
        let _ = writeln!(report, "\n## {}\n", mode.name());
        samples.extend(run_mode(&settings, &stack, &idp, &targets, &mut report).await?);
        let exported = stack.traced_otlp.span_count();
        if exported > 0 {
            return Err(format!(
                "the node tracing at ratio 0 exported {exported} spans"
            ));
        }
    }
    let bad: Vec<String> = samples
        .iter()
        .filter(|s| {
            s.outcome.non_2xx > 0 || s.outcome.completed == 0 || s.outcome.transport_errors > 0
        })
        .map(|s| {
            format!(
                "{:?} {} {} round {}: {} non-2xx of {}, {} connections broken",
                s.mode,
                s.phase,
                s.target,
                s.round,
                s.outcome.non_2xx,
                s.outcome.completed,
                s.outcome.transport_errors
            )
        })
        .collect();
    if bad.is_empty() {
        Ok(Results {
            report,
            json: serde_json::to_string(&samples).unwrap_or_default(),
        })
    } else {
        Err(bad.join("\n"))
    }
}

/// The public-share token of the benchmark's link.
const BENCH_SHARE: &str = "benchsharetoken";

async fn start_mode<'a>(
    mode: Mode,
    idp: &Idp,
    upstream: &'a Nginx,
    shares: &str,
) -> Result<Stack<'a>, String> {
    // Every node of a mode runs the same configuration; the TLS and tracing ones add to it.
    let yaml = node_yaml(
        &upstream.url(""),
        &idp.issuer(),
        mode.workers(),
        Some(shares),
    );
    let options = || NodeOptions::new(&yaml).env("PROXY_LOG_LEVEL", "error");
    let node = GatehouseNode::start_with(options()).await;
    let probe = "/bench/hello";
    let from_node = get(&node.url(probe)).await;
    let direct = get(&upstream.url(probe)).await;
    if from_node.status != 200 || direct.status != 200 {
        return Err(format!(
            "{probe}: node {}, upstream {}",
            from_node.status, direct.status
        ));
    }
    let add = added_headers(&from_node.headers, &direct.headers);
    let certs = tempfile::tempdir().map_err(|e| e.to_string())?;
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .map_err(|e| e.to_string())?;
    let (cert, key) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    let cert_pem = ck.cert.pem();
    std::fs::write(&cert, &cert_pem).map_err(|e| e.to_string())?;
    std::fs::write(&key, ck.signing_key.serialize_pem()).map_err(|e| e.to_string())?;
    let node_tls = GatehouseNode::start_with(
        options()
            .env("PROXY_TLS", "true")
            .env("PROXY_TRANSPORT_TLS_CERT", &cert.display().to_string())
            .env("PROXY_TRANSPORT_TLS_KEY", &key.display().to_string()),
    )
    .await;
    let traced_otlp = OtlpReceiver::start_counting().await;
    let node_traced = GatehouseNode::start_with(
        options()
            .traced_to(&traced_otlp)
            .env("OTEL_TRACES_SAMPLER_ARG", "0"),
    )
    .await;
    let nginx = nginx_alike(upstream.addr, mode.workers(), &add, &cert, &key).await;
    let from_nginx = get(&nginx.nginx.url(probe)).await;
    let missing: Vec<&str> = add
        .iter()
        .map(|(n, _)| n.as_str())
        .chain(["x-request-id"])
        .filter(|n| !from_nginx.headers.contains_key(*n))
        .collect();
    if from_nginx.status != 200 || !missing.is_empty() {
        return Err(format!(
            "nginx alike: {} and missing {missing:?}",
            from_nginx.status
        ));
    }
    let pinned = mode == Mode::Pinned;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if pinned && cores < 2 {
        return Err(format!(
            "the pinned mode needs 2 cores, this machine has {cores}"
        ));
    }
    let all_cores = format!("0-{}", cores - 1);
    let core = |n: &str| {
        if pinned {
            n.to_owned()
        } else {
            all_cores.clone()
        }
    };
    procstat::pin(&procstat::tree(node.pid()), &core("1"))?;
    procstat::pin(&procstat::tree(node_tls.pid()), &core("1"))?;
    procstat::pin(&procstat::tree(node_traced.pid()), &core("1"))?;
    procstat::pin(&procstat::tree(nginx.nginx.pid()), &core("1"))?;
    procstat::pin(&procstat::tree(upstream.pid()), &core("0"))?;
    procstat::pin(&procstat::tree(idp.pid()), &core("0"))?;
    procstat::pin(&[std::process::id()], &core("0"))?;
    println!(
        "{}: nginx adds {} headers like the node: {}",
        mode.name(),
        add.len(),
        add.iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(Stack {
        upstream,
        nginx,
        node,
        node_tls,
        node_traced,
        traced_otlp,
        cert_pem,
        _certs: certs,
        mode,
    })
}

async fn targets(stack: &Stack<'_>, bearer: &str) -> Result<Vec<Target>, String> {
    let auth = vec![("authorization".to_owned(), bearer.to_owned())];
    // The first protected request provisions the user the signed link names.
    let r = get_with(
        &stack.node.url("/ocs/v1.php/cloud/user/signing-key"),
        &[("authorization", bearer)],
    )
    .await;
    let v: serde_json::Value = serde_json::from_slice(&r.body)
        .map_err(|e| format!("signing key answer {}: {e}", r.status))?;
    let key = v["ocs"]["data"]["signing-key"]
        .as_str()
        .ok_or_else(|| format!("no signing key ({}): {}", r.status, r.text()))?;
    let host = stack.node.http.to_string();
    let link = sign(
        &Link {
            host: &host,
            path: "/dl/hello",
            params: "",
            user: "einstein",
            verb: "GET",
            signed_at: SystemTime::now(),
            expires: Duration::from_secs(3600),
        },
        key,
    );
    let share_path = format!("/dav/public-files/{BENCH_SHARE}/hello");
    let share = vec![("public-token".to_owned(), BENCH_SHARE.to_owned())];
    for (what, url, h) in [
        ("cached token", stack.node.url("/auth/hello"), &auth[..]),
        ("signed URL", stack.node.url(&link), &[][..]),
        ("public share", stack.node.url(&share_path), &share[..]),
    ] {
        let h: Vec<(&str, &str)> = h.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let r = get_with(&url, &h).await;
        if r.status != 200 {
            return Err(format!("{what}: {} {}", r.status, r.text()));
        }
    }
    let t = |name, proxy, kind, path: &str, method, headers: &[(String, String)]| Target {
        name,
        proxy,
        kind,
        path: path.to_owned(),
        method,
        headers: headers.to_vec(),
    };
    use Kind::*;
    use Proxy::*;
    let open = "/bench/hello";
    Ok(vec![
        t("nginx unprotected", Nginx, Small, open, "GET", &[]),
        t("gatehouse unprotected", Node, Small, open, "GET", &[]),
        t(
            "gatehouse tracing at ratio 0",
            NodeTracedZero,
            Small,
            open,
            "GET",
            &[],
        ),
        t(
            "gatehouse cached token",
            Node,
            Small,
            "/auth/hello",
            "GET",
            &auth,
        ),
        t(
            "gatehouse cached signed URL",
            Node,
            Small,
            &link,
            "GET",
            &[],
        ),
        t(
            "gatehouse cached public share",
            Node,
            Small,
            &share_path,
            "GET",
            &share,
        ),
        t(
            "nginx 1 MiB download",
            Nginx,
            Download,
            "/bench/big",
            "GET",
            &[],
        ),
        t(
            "gatehouse 1 MiB download",
            Node,
            Download,
            "/bench/big",
            "GET",
            &[],
        ),
        t(
            "nginx 1 MiB upload",
            Nginx,
            Upload,
            "/bench/upload",
            "PUT",
            &[],
        ),
        t(
            "gatehouse 1 MiB upload",
            Node,
            Upload,
            "/bench/upload",
            "PUT",
            &[],
        ),
        t("nginx HTTP/2 (h2c)", Nginx, H2c, open, "GET", &[]),
        t("gatehouse HTTP/2 (h2c)", Node, H2c, open, "GET", &[]),
        t("nginx TLS", Nginx, Tls, open, "GET", &[]),
        t("gatehouse TLS", Node, Tls, open, "GET", &[]),
    ])
}

async fn run_mode(
    settings: &Settings,
    stack: &Stack<'_>,
    idp: &Idp,
    targets: &[Target],
    report: &mut String,
) -> Result<Vec<Sample>, String> {
    let mut all = Vec::new();
    let targets = &with_fresh_token(targets, idp).await;
    let saturation = phase(settings, stack, targets, "saturation", |_| None).await?;
    // The slower proxy's capacity per kind, from the unprotected pair (median over rounds).
    let capacity = |kind: Kind| {
        [Proxy::Nginx, Proxy::Node]
            .iter()
            .filter_map(|&p| {
                let rps: Vec<f64> = saturation
                    .iter()
                    .filter(|s| s.kind == kind && s.proxy == p && !s.target.contains("cached"))
                    .map(|s| s.outcome.requests_per_sec)
                    .collect();
                Spread::of(&rps).map(|s| s.median)
            })
            .fold(f64::INFINITY, f64::min)
    };
    let caps = [
        Kind::Small,
        Kind::Download,
        Kind::Upload,
        Kind::H2c,
        Kind::Tls,
    ]
    .map(|k| (k, capacity(k)));
    section(report, "saturation (closed loop)", &saturation);
    all.extend(saturation);
    for level in LEVELS {
        let name = format!("{:.0} % of the slower proxy's capacity", level * 100.0);
        let targets = &with_fresh_token(targets, idp).await;
        let samples = phase(settings, stack, targets, &name, |k| {
            caps.iter().find(|(c, _)| *c == k).map(|(_, r)| r * level)
        })
        .await?;
        section(report, &format!("open loop at {name}"), &samples);
        all.extend(samples);
    }
    ratios(report, &all);
    Ok(all)
}

/// The targets with a new bearer token: the provider's tokens last 10 minutes, a run longer
/// (a phase stays well below that).
async fn with_fresh_token(targets: &[Target], idp: &Idp) -> Vec<Target> {
    let token = idp.user_token("einstein", TokenOptions::jwt()).await;
    let bearer = format!("Bearer {}", token.access_token());
    let mut fresh = targets.to_vec();
    for (name, value) in fresh.iter_mut().flat_map(|t| t.headers.iter_mut()) {
        if name.eq_ignore_ascii_case("authorization") {
            value.clone_from(&bearer);
        }
    }
    fresh
}

async fn phase(
    settings: &Settings,
    stack: &Stack<'_>,
    targets: &[Target],
    name: &str,
    rate: impl Fn(Kind) -> Option<f64>,
) -> Result<Vec<Sample>, String> {
    let mut out = Vec::new();
    for round in 1..=settings.rounds {
        for t in targets {
            let s = measure(settings, stack, t, rate(t.kind), name, round).await?;
            eprintln!(
                "{name} round {round} {}: {:.0} req/s, p99 {} µs, proxy {:.1} µs/req",
                t.name, s.outcome.requests_per_sec, s.outcome.p99_us, s.proxy_cpu_us
            );
            out.push(s);
        }
    }
    Ok(out)
}

async fn measure(
    settings: &Settings,
    stack: &Stack<'_>,
    t: &Target,
    rate: Option<f64>,
    phase: &str,
    round: usize,
) -> Result<Sample, String> {
    let streaming = t.kind.streams();
    let spec = Spec {
        addr: stack.addr(t.proxy, t.kind),
        http2: t.kind == Kind::H2c,
        tls_ca_pem: (t.kind == Kind::Tls).then(|| stack.cert_pem.clone()),
        paths: vec![t.path.clone()],
        method: t.method.to_owned(),
        headers: t.headers.clone(),
        body_bytes: if t.kind == Kind::Upload {
            STREAM_BYTES
        } else {
            0
        },
        connections: if streaming {
            STREAM_CONNECTIONS
        } else {
            CONNECTIONS
        },
        rate,
        warmup_ms: WARMUP_MS,
        measure_ms: settings.seconds * 1000,
    };
    let exe = &settings.generator;
    let json = serde_json::to_string(&spec).map_err(|e| e.to_string())?;
    let mut cmd = if stack.mode == Mode::Pinned {
        let mut c = tokio::process::Command::new("taskset");
        c.arg("-c").arg("0").arg(exe);
        c
    } else {
        tokio::process::Command::new(exe)
    };
    let mut child = cmd
        .arg("load")
        .arg(json)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("load generator: {e}"))?;
    let generator = child.id().ok_or("load generator exited at once")?;
    let proxy = procstat::tree(stack.pid(t.proxy, t.kind));
    let upstream = procstat::tree(stack.upstream.pid());
    let read = || {
        (
            procstat::usage(&proxy),
            procstat::usage(&upstream),
            procstat::usage(&[generator]),
            procstat::steal_and_total(),
        )
    };
    let stdout = child.stdout.take().ok_or("no generator stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let (mut before, mut after, mut outcome) = (None, None, None);
    while let Some(line) = lines.next_line().await.map_err(|e| e.to_string())? {
        match line.as_str() {
            "measure" => before = Some(read()),
            "done" => after = Some(read()),
            l => {
                if let Some(json) = l.strip_prefix("result ") {
                    outcome =
                        Some(serde_json::from_str::<Outcome>(json).map_err(|e| e.to_string())?);
                }
            }
        }
    }
    let status = child.wait().await.map_err(|e| e.to_string())?;
    let (Some(b), Some(a), Some(outcome)) = (before, after, outcome) else {
        return Err(format!(
            "{}: the load generator ended with {status}",
            t.name
        ));
    };
    let n = outcome.completed.max(1) as f64;
    let per_req = |after: Usage, before: Usage| (after - before).cpu_ns as f64 / 1e3 / n;
    let (steal, total) = (a.3.0.saturating_sub(b.3.0), a.3.1.saturating_sub(b.3.1));
    Ok(Sample {
        mode: stack.mode,
        phase: phase.to_owned(),
        target: t.name,
        proxy: t.proxy,
        kind: t.kind,
        round,
        offered: rate,
        proxy_cpu_us: per_req(a.0, b.0),
        upstream_cpu_us: per_req(a.1, b.1),
        generator_cpu_us: per_req(a.2, b.2),
        proxy_switches: (a.0 - b.0).context_switches as f64 / n,
        steal_pct: if total > 0 {
            steal as f64 * 100.0 / total as f64
        } else {
            0.0
        },
        outcome,
    })
}

/// Median (min–max) over rounds of `f` for the samples of `target`.
fn spread(samples: &[Sample], target: &str, f: impl Fn(&Sample) -> f64) -> Option<Spread> {
    let v: Vec<f64> = samples
        .iter()
        .filter(|s| s.target == target)
        .map(f)
        .collect();
    Spread::of(&v)
}

fn section(report: &mut String, title: &str, samples: &[Sample]) {
    let _ = writeln!(report, "### {title}\n");
    let _ = writeln!(
        report,
        "| target | offered req/s | req/s | p50 ms | p99 ms | p99.9 ms | proxy CPU µs/req | upstream µs/req | generator µs/req | proxy switches/req | MiB per proxy CPU s | steal % |"
    );
    let _ = writeln!(
        report,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let mut names: Vec<&str> = Vec::new();
    for s in samples {
        if !names.contains(&s.target) {
            names.push(s.target);
        }
    }
    for name in names {
        let m = |f: &dyn Fn(&Sample) -> f64, d: usize| {
            spread(samples, name, f).map_or_else(String::new, |s| format!("{:.d$}", s.median))
        };
        let cpu = spread(samples, name, |s| s.proxy_cpu_us).map_or_else(String::new, |s| s.show(1));
        let kind = samples.iter().find(|s| s.target == name).map(|s| s.kind);
        let mib = if !kind.is_some_and(Kind::streams) {
            String::new()
        } else {
            spread(samples, name, Sample::mib_per_cpu_s).map_or_else(String::new, |s| s.show(0))
        };
        let steal = spread(samples, name, |s| s.steal_pct).map_or(0.0, |s| s.max);
        let _ = writeln!(
            report,
            "| {name} | {} | {} | {} | {} | {} | {cpu} | {} | {} | {} | {mib} | ≤ {steal:.1} |",
            m(&|s| s.offered.unwrap_or(f64::NAN), 0),
            spread(samples, name, |s| s.outcome.requests_per_sec)
                .map_or_else(String::new, |s| s.show(0)),
            m(&|s| f64::from(s.outcome.p50_us) / 1e3, 3),
            m(&|s| f64::from(s.outcome.p99_us) / 1e3, 3),
            m(&|s| f64::from(s.outcome.p999_us) / 1e3, 3),
            m(&|s| s.upstream_cpu_us, 1),
            m(&|s| s.generator_cpu_us, 1),
            m(&|s| s.proxy_switches, 2),
        );
    }
    let _ = writeln!(report);
}

/// The issue's targets, from the medians of this mode's samples.
fn ratios(report: &mut String, all: &[Sample]) {
    let med = |phase: &str, target: &str, f: &dyn Fn(&Sample) -> f64| {
        let v: Vec<f64> = all
            .iter()
            .filter(|s| s.phase.starts_with(phase) && s.target == target)
            .map(f)
            .collect();
        Spread::of(&v).map_or(f64::NAN, |s| s.median)
    };
    let cpu = |s: &Sample| s.proxy_cpu_us;
    let rps = |s: &Sample| s.outcome.requests_per_sec;
    let p99 = |s: &Sample| f64::from(s.outcome.p99_us);
    let mib = |s: &Sample| s.mib_per_cpu_s();
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    // A ratio of a target left out of the run (`GATEHOUSE_FAIR_ONLY`) is NaN: no line for it.
    let mut line = |text: String| {
        if !text.contains("NaN") {
            let _ = writeln!(report, "- {text}");
        }
    };
    let (ng, gh) = ("nginx unprotected", "gatehouse unprotected");
    for phase in ["saturation", "50 %", "80 %"] {
        let r = med(phase, gh, &cpu) / med(phase, ng, &cpu);
        line(format!(
            "{phase}: gatehouse / nginx proxy CPU per request {r:.2}× (target ≤ 1.0: {})",
            verdict(r <= 1.0)
        ));
    }
    let r = med("saturation", gh, &rps) / med("saturation", ng, &rps);
    line(format!(
        "saturation: gatehouse / nginx throughput {r:.2}× (target ≥ 1.0: {})",
        verdict(r >= 1.0)
    ));
    for phase in ["50 %", "80 %"] {
        let r = med(phase, gh, &p99) / med(phase, ng, &p99);
        line(format!(
            "{phase}: gatehouse / nginx p99 at the same offered load {r:.2}× (target ≤ 1.5: {})",
            verdict(r <= 1.5)
        ));
    }
    for t in [
        "gatehouse cached token",
        "gatehouse cached signed URL",
        "gatehouse cached public share",
    ] {
        let by_cpu = med("50 %", gh, &cpu) / med("50 %", t, &cpu);
        let by_rps = med("saturation", t, &rps) / med("saturation", gh, &rps);
        line(format!(
            "{t} / unprotected: capacity by proxy CPU at 50 % {by_cpu:.2}×, saturation throughput {by_rps:.2}× (target ≥ 0.9: {})",
            verdict(by_cpu >= 0.9)
        ));
    }
    let t = "gatehouse tracing at ratio 0";
    let r = med("50 %", t, &cpu) / med("50 %", gh, &cpu);
    line(format!(
        "{t} / unprotected: proxy CPU per request at 50 % {r:.2}× (target ≤ 1.03: {})",
        verdict(r <= 1.03)
    ));
    for (n, g) in [
        ("nginx HTTP/2 (h2c)", "gatehouse HTTP/2 (h2c)"),
        ("nginx TLS", "gatehouse TLS"),
    ] {
        let r = med("50 %", g, &cpu) / med("50 %", n, &cpu);
        line(format!(
            "{g}: gatehouse / nginx proxy CPU per request at 50 % {r:.2}× (target ≤ 1.0: {})",
            verdict(r <= 1.0)
        ));
    }
    for (n, g) in [
        ("nginx 1 MiB download", "gatehouse 1 MiB download"),
        ("nginx 1 MiB upload", "gatehouse 1 MiB upload"),
    ] {
        let r = med("50 %", g, &mib) / med("50 %", n, &mib);
        line(format!(
            "{g}: bytes per proxy CPU second at 50 % {r:.2}× nginx's (target ≥ 1.0: {})",
            verdict(r >= 1.0)
        ));
    }
    let _ = writeln!(report);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_adds_what_the_node_adds_and_the_upstream_did_not_send() {
        let mut node = http::HeaderMap::new();
        for (n, v) in [
            ("date", "x"),
            ("content-type", "text/plain"),
            ("x-request-id", "id"),
            ("x-frame-options", "SAMEORIGIN"),
            ("content-security-policy", "default-src 'none'"),
            ("etag", "\"1\""),
        ] {
            node.insert(
                http::HeaderName::from_static(n),
                http::HeaderValue::from_static(v),
            );
        }
        let mut up = http::HeaderMap::new();
        up.insert("etag", http::HeaderValue::from_static("\"1\""));
        assert_eq!(
            added_headers(&node, &up),
            vec![
                (
                    "content-security-policy".to_owned(),
                    "default-src 'none'".to_owned()
                ),
                ("x-frame-options".to_owned(), "SAMEORIGIN".to_owned()),
            ]
        );
    }
}
