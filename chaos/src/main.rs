//! Load and fault-injection runner. Its first scenario, `bench`, compares in one run on this machine:
//! the upstream alone, nginx as a plain reverse proxy, and one gatehouse node on an unprotected
//! route and on a protected route with a bearer token — the same upstream, the same load
//! generator (wrk), the same connection count — and reports req/s, p50, p99 and the ratios. Run it
//! on a release build (`chaos/bench.sh`).
//!
//! The "hyper floor" is the smallest possible proxy on the same stack as gatehouse (tokio, hyper,
//! hyper-util's pooled client, mimalloc) that adds the same oCIS response headers and nothing
//! else. It separates what the stack costs from what the gatehouse pipeline costs.
//!
//! The authenticated target measures what a request costs once its token is known: a real OpenID
//! provider (the test harness's `oidc-provider`) issues one JWT, the warm-up validates it and
//! provisions the user, and the measured run must be served from the node's caches alone. The run
//! fails when the provider saw a userinfo or JWKS request during the measurement, or when any
//! request of any target was answered with an error status.

mod floor;
mod signed;
mod traced;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gatehouse_chaos::fair;
use gatehouse_tests::client::get_with;
use gatehouse_tests::idp::{Idp, TokenOptions};
use gatehouse_tests::lb::{LbOptions, Nginx};
use gatehouse_tests::node::{GatehouseNode, NodeOptions};

const WARMUP: Duration = Duration::from_secs(1);
/// The user whose token the authenticated target sends (provisioned on the first request).
const BENCH_USER: &str = "einstein";
/// Seconds a token must still be valid after the last measured request.
const TOKEN_MARGIN_SECS: u64 = 30;
/// Targets measured per run (each after a warm-up at most as long as [`WARMUP`]).
const TARGETS: u64 = 6;
/// Units of the CPU times in `/proc/<pid>/stat` (`USER_HZ`: 100 on x86 and arm, part of the ABI).
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

#[derive(Debug, Clone, serde::Serialize)]
struct Run {
    target: String,
    requests_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Socket errors plus error responses.
    errors: u64,
    /// Responses with a status wrk counts as an error (4xx, 5xx).
    non_2xx: u64,
    /// Requests completed during the measurement.
    requests: u64,
    /// CPU time (user + system, all threads) the gatehouse node used per request; set for the
    /// gatehouse targets only. Unlike req/s it does not depend on how much CPU wrk and the
    /// upstream took on this shared machine.
    node_cpu_us_per_req: Option<f64>,
}

fn parse_ms(v: &str) -> f64 {
    let v = v.trim();
    let (num, factor) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (v, 1.0)
    };
    num.parse::<f64>().unwrap_or(f64::NAN) * factor
}

fn sum_of_numbers(line: &str) -> u64 {
    line.split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u64>().ok())
        .sum()
}

/// wrk's `-H` arguments for `headers`.
fn header_args(headers: &[(&str, &str)]) -> Vec<String> {
    headers
        .iter()
        .flat_map(|(name, value)| ["-H".to_owned(), format!("{name}: {value}")])
        .collect()
}

/// wrk settings shared by every target, so that all of them are measured alike.
#[derive(Debug, Clone, Copy)]
struct Wrk {
    threads: u32,
    connections: u32,
}

impl Wrk {
    /// Runs wrk for `duration` against `url` with extra request `headers` and parses its report.
    fn run(&self, target: &str, url: &str, headers: &[(&str, &str)], duration: Duration) -> Run {
        self.run_script(target, url, headers, None, duration)
    }

    /// [`Wrk::run_script`] against a gatehouse node, also measuring the node's CPU per request.
    fn run_on_node(
        &self,
        pid: u32,
        target: &str,
        url: &str,
        headers: &[(&str, &str)],
        script: Option<&std::path::Path>,
        duration: Duration,
    ) -> Run {
        let before = process_cpu(pid);
        let mut run = self.run_script(target, url, headers, script, duration);
        if let (Some(before), Some(after)) = (before, process_cpu(pid))
            && run.requests > 0
        {
            run.node_cpu_us_per_req =
                Some((after - before).as_secs_f64() * 1e6 / run.requests as f64);
        }
        run
    }

    /// Like [`Wrk::run`], with a wrk Lua script (e.g. one that varies the request path).
    fn run_script(
        &self,
        target: &str,
        url: &str,
        headers: &[(&str, &str)],
        script: Option<&std::path::Path>,
        duration: Duration,
    ) -> Run {
        let mut cmd = Command::new("wrk");
        cmd.args([
            format!("-t{}", self.threads),
            format!("-c{}", self.connections),
            format!("-d{}s", duration.as_secs()),
            "--latency".to_owned(),
        ])
        .args(header_args(headers));
        if let Some(script) = script {
            cmd.arg("-s").arg(script);
        }
        let out = cmd
            .arg(url)
            .output()
            .expect("run wrk (apt-get install wrk)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "wrk failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        parse_report(target, &text)
    }
}

/// The runs as a Markdown table.
fn print_table<'a>(runs: impl Iterator<Item = &'a Run>) {
    println!("| target | req/s | p50 ms | p99 ms | node CPU µs/req | errors |");
    println!("|---|---:|---:|---:|---:|---:|");
    for r in runs {
        let cpu = r
            .node_cpu_us_per_req
            .map_or_else(String::new, |us| format!("{us:.1}"));
        println!(
            "| {} | {:.0} | {:.3} | {:.3} | {cpu} | {} |",
            r.target, r.requests_per_sec, r.p50_ms, r.p99_ms, r.errors
        );
    }
}

/// The figures of one wrk `--latency` report.
fn parse_report(target: &str, text: &str) -> Run {
    let mut run = Run {
        target: target.into(),
        requests_per_sec: 0.0,
        p50_ms: 0.0,
        p99_ms: 0.0,
        errors: 0,
        non_2xx: 0,
        requests: 0,
        node_cpu_us_per_req: None,
    };
    for line in text.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            run.requests_per_sec = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = t.strip_prefix("50%") {
            run.p50_ms = parse_ms(v);
        } else if let Some(v) = t.strip_prefix("99%") {
            run.p99_ms = parse_ms(v);
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            run.non_2xx += sum_of_numbers(v);
            run.errors += sum_of_numbers(v);
        } else if let Some(v) = t.strip_prefix("Socket errors:") {
            run.errors += sum_of_numbers(v);
        } else if let Some((n, _)) = t.split_once(" requests in ") {
            run.requests = n.trim().parse().unwrap_or(0);
        }
    }
    run
}

/// CPU time (user + system, all threads) process `pid` has used so far, from `/proc/<pid>/stat`.
fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name, which may itself contain spaces: state is
    // the first, utime the 12th, stime the 13th.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_secs_f64(
        (utime + stime) as f64 / CLOCK_TICKS_PER_SEC,
    ))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The node's configuration: the same upstream behind an unprotected and a protected route.
fn node_yaml(upstream: &str, issuer: &str) -> String {
    fair::node_yaml(upstream, issuer, 0, None)
}

/// What every benchmark scenario starts first: the test OpenID provider and the nginx static
/// upstream all targets proxy to (no keep-alive of its own, one worker).
async fn provider_and_upstream() -> Result<(Idp, Nginx), String> {
    let idp = tokio::task::spawn_blocking(Idp::start)
        .await
        .map_err(|e| format!("starting the OpenID provider: {e}"))?;
    let upstream = Nginx::start(
        &[],
        LbOptions {
            workers: 1,
            keepalive: 0,
        },
    )
    .await;
    Ok((idp, upstream))
}

/// The `bench` scenario. Every process it starts is owned by a local guard, so they are all
/// stopped when it returns, also with an error.
async fn bench(secs: u64, conns: u32) -> Result<(), String> {
    let d = Duration::from_secs(secs);
    let wrk = Wrk {
        threads: 1,
        connections: conns,
    };

    let (idp, upstream) = provider_and_upstream().await?;
    let nginx = Nginx::start(
        &[upstream.addr],
        LbOptions {
            workers: 1,
            keepalive: 64,
        },
    )
    .await;
    let node = GatehouseNode::start_with(
        NodeOptions::new(&node_yaml(&upstream.url(""), &idp.issuer()))
            .env("PROXY_LOG_LEVEL", "error"),
    )
    .await;
    let floor_addr = format!("127.0.0.1:{}", gatehouse_tests::free_port());
    let _floor = floor::spawn(&floor_addr, &upstream.url("")).await;
    let floor_url = |p: &str| format!("http://{floor_addr}{p}");

    let token = idp.user_token(BENCH_USER, TokenOptions::jwt()).await;
    let expires = token.access_claims()["exp"].as_u64().unwrap_or(0);
    let needed = unix_now() + TARGETS * (WARMUP.as_secs() + secs) + TOKEN_MARGIN_SECS;
    if needed > expires {
        return Err(format!(
            "the provider's tokens expire at {expires}, before the end of the run (~{needed}): \
             use fewer seconds per target"
        ));
    }
    let bearer = format!("Bearer {}", token.access_token());
    let auth_headers = [("Authorization", bearer.as_str())];

    let (open, protected) = ("/bench/hello", "/auth/hello");
    // The protected route must really be protected, and the token must open it.
    let anonymous = get_with(&node.url(protected), &[]).await;
    let first = get_with(&node.url(protected), &auth_headers).await;
    if anonymous.status != 401 || first.status != 200 {
        return Err(format!(
            "{protected}: {} without a token (want 401), {} with one (want 200): {}\n{}",
            anonymous.status,
            first.status,
            first.text(),
            node.logs()
        ));
    }

    // Warm every path once so connection pools and caches exist before measuring.
    for url in [
        upstream.url(open),
        nginx.url(open),
        floor_url(open),
        node.url(open),
    ] {
        wrk.run("warmup", &url, &[], WARMUP);
    }
    wrk.run("warmup", &node.url(protected), &auth_headers, WARMUP);
    idp.reset_stats().await;

    let on_node = |target: &str, url: &str, headers: &[(&str, &str)]| {
        wrk.run_on_node(node.pid(), target, url, headers, None, d)
    };
    let runs = vec![
        wrk.run("upstream direct", &upstream.url(open), &[], d),
        wrk.run("nginx reverse proxy", &nginx.url(open), &[], d),
        wrk.run("hyper floor (same headers)", &floor_url(open), &[], d),
        on_node("gatehouse unprotected", &node.url(open), &[]),
        // Control: the same bytes from the client and to the upstream as the authenticated
        // target except the minted x-access-token, and no authentication work.
        on_node(
            "gatehouse unprotected + the same Authorization header",
            &node.url(open),
            &auth_headers,
        ),
        on_node(
            "gatehouse authenticated (cached token)",
            &node.url(protected),
            &auth_headers,
        ),
    ];
    let idp_userinfo = idp.count("/me").await;
    let idp_jwks = idp.count("/jwks").await;

    print_table(runs.iter());
    let (ng, fl, gh, hd, au) = (&runs[1], &runs[2], &runs[3], &runs[4], &runs[5]);
    let cpu = |r: &Run| r.node_cpu_us_per_req.unwrap_or(f64::NAN);
    println!();
    println!(
        "gatehouse / nginx: throughput {:.2}x, p50 {:.2}x, p99 {:.2}x (target: throughput >= 1.0x, p99 <= 1.5x)",
        gh.requests_per_sec / ng.requests_per_sec,
        gh.p50_ms / ng.p50_ms,
        gh.p99_ms / ng.p99_ms
    );
    println!(
        "gatehouse / hyper floor: throughput {:.2}x, p99 {:.2}x; hyper floor / nginx: throughput {:.2}x",
        gh.requests_per_sec / fl.requests_per_sec,
        gh.p99_ms / fl.p99_ms,
        fl.requests_per_sec / ng.requests_per_sec
    );
    let auth_ratio = au.requests_per_sec / gh.requests_per_sec;
    println!(
        "authenticated / unprotected: throughput {:.2}x ({}), p50 {:.2}x, p99 {:.2}x (target: throughput >= 0.90x)",
        auth_ratio,
        if auth_ratio >= 0.90 { "met" } else { "NOT met" },
        au.p50_ms / gh.p50_ms,
        au.p99_ms / gh.p99_ms
    );
    println!(
        "authenticated / unprotected: node CPU per request {:.2}x; authenticated / unprotected with the same header: throughput {:.2}x, node CPU per request {:.2}x",
        cpu(au) / cpu(gh),
        au.requests_per_sec / hd.requests_per_sec,
        cpu(au) / cpu(hd)
    );
    println!(
        "authenticated / nginx: throughput {:.2}x, p50 {:.2}x, p99 {:.2}x",
        au.requests_per_sec / ng.requests_per_sec,
        au.p50_ms / ng.p50_ms,
        au.p99_ms / ng.p99_ms
    );
    println!(
        "identity provider calls during the measurement: userinfo {idp_userinfo}, jwks {idp_jwks}"
    );
    println!("{}", serde_json::to_string(&runs).unwrap_or_default());

    let mut failures = Vec::new();
    for r in runs.iter().filter(|r| r.non_2xx > 0) {
        failures.push(format!("{}: {} error responses", r.target, r.non_2xx));
    }
    if idp_userinfo + idp_jwks > 0 {
        failures.push(format!(
            "the authenticated run was not served from the caches: {idp_userinfo} userinfo and \
             {idp_jwks} JWKS requests reached the provider"
        ));
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n"))
    }
}

/// `gatehouse-chaos chaos <scenario|all> [--full] [--out DIR]`: runs fault-injection scenarios
/// and prints each one's table and targets; the exit status is 1 when a target was missed.
async fn chaos(args: &[String]) -> i32 {
    use gatehouse_chaos::scenario::{Scenario, Settings, run};
    let usage = || {
        let names: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
        eprintln!(
            "usage: gatehouse-chaos chaos <{}|nats-crash|all> [--full] [--out DIR]",
            names.join("|")
        );
        2
    };
    let Some(which) = args.first() else {
        return usage();
    };
    let crash = which == "all" || which == "nats-crash";
    let scenarios: Vec<Scenario> = if which == "all" {
        Scenario::ALL.to_vec()
    } else if let Some(s) = Scenario::from_name(which) {
        vec![s]
    } else if crash {
        Vec::new()
    } else {
        return usage();
    };
    let mut settings = Settings::short();
    settings.out_dir = Some("target/chaos".into());
    let mut rest = args[1..].iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--full" => {
                let out = settings.out_dir.take();
                settings = Settings::full();
                settings.out_dir = out;
            }
            "--out" => match rest.next() {
                Some(dir) => settings.out_dir = Some(dir.into()),
                None => return usage(),
            },
            _ => return usage(),
        }
    }
    let mut status = 0;
    for scenario in scenarios {
        match run(scenario, &settings).await {
            Ok(outcome) => {
                println!("{}", outcome.text());
                if !outcome.all_met() {
                    status = 1;
                }
            }
            Err(e) => {
                eprintln!("{}: the scenario could not run: {e}", scenario.name());
                status = 1;
            }
        }
    }
    if crash {
        let writes = if settings.fault >= Settings::full().fault {
            5000
        } else {
            500
        };
        match gatehouse_chaos::scenario::durability::run(writes).await {
            Ok(outcome) => {
                let text = outcome.text();
                println!("{text}");
                if let Some(dir) = &settings.out_dir {
                    let _ = std::fs::create_dir_all(dir);
                    let json = serde_json::to_vec_pretty(&outcome).unwrap_or_default();
                    if let Err(e) = std::fs::write(dir.join("nats-crash.md"), text)
                        .and_then(|()| std::fs::write(dir.join("nats-crash.json"), json))
                    {
                        eprintln!("nats-crash: cannot write to {}: {e}", dir.display());
                        status = 1;
                    }
                }
                if !outcome.all_met() {
                    status = 1;
                }
            }
            Err(e) => {
                eprintln!("nats-crash: the scenario could not run: {e}");
                status = 1;
            }
        }
    }
    if let Some(dir) = &settings.out_dir {
        println!("tables, JSON and plots in {}", dir.display());
    }
    status
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let scenario = args.get(1).map(String::as_str).unwrap_or("bench");
    if scenario == "floor-proxy" {
        // gatehouse-chaos floor-proxy <listen addr> <upstream base url>
        let (Some(listen), Some(upstream)) = (args.get(2), args.get(3)) else {
            eprintln!("usage: gatehouse-chaos floor-proxy <listen> <upstream>");
            std::process::exit(2);
        };
        let (listen, upstream) = (listen.clone(), upstream.clone());
        // The floor runs its own runtimes; keep it off this one.
        let _ = tokio::task::spawn_blocking(move || floor::run(&listen, &upstream)).await;
        return;
    }
    if scenario == "load" {
        // gatehouse-chaos load <spec JSON>: the fair benchmark's load generator process.
        let spec = args.get(2).cloned().unwrap_or_default();
        let done = tokio::task::spawn_blocking(move || fair::load::child(&spec)).await;
        if let Ok(Err(e)) | Err(e) = done.map_err(|e| e.to_string()) {
            eprintln!("load: {e}");
            std::process::exit(1);
        }
        return;
    }
    if scenario == "fair" {
        // gatehouse-chaos fair [rounds] [seconds] [unpinned|pinned|both]
        let rounds = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
        let seconds = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(5);
        let modes = match args.get(4).map(String::as_str) {
            Some("unpinned") => vec![fair::Mode::Unpinned],
            Some("pinned") => vec![fair::Mode::Pinned],
            _ => vec![fair::Mode::Unpinned, fair::Mode::Pinned],
        };
        let settings = fair::Settings {
            rounds,
            seconds,
            modes,
            generator: std::env::current_exe().unwrap_or_else(|_| "gatehouse-chaos".into()),
            // GATEHOUSE_FAIR_ONLY="signed URL,download": a subset, to compare two builds quickly.
            only: std::env::var("GATEHOUSE_FAIR_ONLY")
                .map(|v| {
                    v.split(',')
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
        };
        match fair::run(settings).await {
            Ok(outcome) => {
                println!("{}", outcome.report);
                println!("{}", outcome.json);
            }
            Err(e) => {
                eprintln!("fair benchmark failed: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    if scenario == "chaos" {
        std::process::exit(chaos(&args[2..]).await);
    }
    let secs: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10);
    let conns: u32 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(32);
    let result = match scenario {
        "bench" => bench(secs, conns).await,
        "signed-urls" => signed::bench(secs, conns).await,
        "tracing" => traced::bench(secs, conns).await,
        _ => {
            eprintln!(
                "usage: gatehouse-chaos bench|signed-urls|tracing [seconds] [connections]\n       gatehouse-chaos chaos <scenario|all> [--full] [--out DIR]"
            );
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("bench failed: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "Running 10s test @ http://127.0.0.1:1/auth/hello
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   780.12us  300.00us  12.00ms   90.00%
  Latency Distribution
     50%  781.00us
     75%    0.90ms
     90%    1.10ms
     99%    1.66ms
  384889 requests in 10.00s, 100.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 17
Requests/sec:  38488.95
Transfer/sec:     10.00MB
";

    #[test]
    fn a_report_gives_throughput_percentiles_and_errors() {
        let run = parse_report("auth", REPORT);
        assert_eq!(run.requests_per_sec, 38488.95);
        assert!((run.p50_ms - 0.781).abs() < 1e-9);
        assert!((run.p99_ms - 1.66).abs() < 1e-9);
        assert_eq!(run.non_2xx, 17);
        assert_eq!(run.errors, 20);
        assert_eq!(run.requests, 384889);
    }

    #[test]
    fn cpu_time_of_this_process_grows() {
        let pid = std::process::id();
        let before = process_cpu(pid).expect("own /proc stat");
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(100) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let after = process_cpu(pid).expect("own /proc stat");
        assert!(
            after - before >= Duration::from_millis(50),
            "{before:?} -> {after:?}"
        );
    }

    #[test]
    fn headers_become_wrk_arguments() {
        assert_eq!(
            header_args(&[("Authorization", "Bearer t"), ("X-A", "b")]),
            ["-H", "Authorization: Bearer t", "-H", "X-A: b"]
        );
        assert!(header_args(&[]).is_empty());
    }
}
