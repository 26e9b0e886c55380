//! Load and fault-injection runner. Its first scenario, `bench`, compares in one run on this machine:
//! the upstream alone, nginx as a plain reverse proxy, and one gatehouse node on an unprotected
//! route — the same upstream, the same load generator (wrk), the same connection count — and
//! reports req/s, p50, p99 and the ratios. Run it on a release build (`chaos/bench.sh`).
//!
//! A fourth target, the "hyper floor", is the smallest possible proxy on the same stack as
//! gatehouse (tokio + hyper + hyper-util's pooled client + mimalloc) that adds the same oCIS
//! response headers and nothing else. It separates what the stack costs from what the
//! gatehouse pipeline costs.

mod floor;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::Command;
use std::time::Duration;

use gatehouse_tests::lb::{LbOptions, Nginx};
use gatehouse_tests::node::{GatehouseNode, NodeOptions};

#[derive(Debug, Clone, serde::Serialize)]
struct Run {
    target: String,
    requests_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
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

/// Runs wrk against `url` and parses its report.
fn wrk(target: &str, url: &str, threads: u32, connections: u32, duration: Duration) -> Run {
    let out = Command::new("wrk")
        .args([
            &format!("-t{threads}"),
            &format!("-c{connections}"),
            &format!("-d{}s", duration.as_secs()),
            "--latency",
            url,
        ])
        .output()
        .expect("run wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "wrk failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut run = Run {
        target: target.into(),
        requests_per_sec: 0.0,
        p50_ms: 0.0,
        p99_ms: 0.0,
        errors: 0,
    };
    for line in text.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            run.requests_per_sec = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = t.strip_prefix("50%") {
            run.p50_ms = parse_ms(v);
        } else if let Some(v) = t.strip_prefix("99%") {
            run.p99_ms = parse_ms(v);
        } else if t.starts_with("Non-2xx or 3xx responses:") || t.starts_with("Socket errors:") {
            run.errors += t
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    run
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
    if scenario != "bench" {
        eprintln!("usage: gatehouse-chaos bench [seconds] [connections]");
        std::process::exit(2);
    }
    let secs: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10);
    let conns: u32 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(32);
    let d = Duration::from_secs(secs);

    let upstream = Nginx::start(
        &[],
        LbOptions {
            workers: 1,
            keepalive: 0,
        },
    )
    .await;
    let nginx = Nginx::start(
        &[upstream.addr],
        LbOptions {
            workers: 1,
            keepalive: 64,
        },
    )
    .await;
    let yaml = format!(
        "policies:\n  - name: ocis\n    routes:\n      - endpoint: /bench\n        backend: {}\n        unprotected: true\n",
        upstream.url("")
    );
    let node =
        GatehouseNode::start_with(NodeOptions::new(&yaml).env("PROXY_LOG_LEVEL", "error")).await;
    let floor_addr = format!("127.0.0.1:{}", gatehouse_tests::free_port());
    let _floor = floor::spawn(&floor_addr, &upstream.url("")).await;
    let floor_url = |p: &str| format!("http://{floor_addr}{p}");

    let path = "/bench/hello";
    // Warm every path once so connection pools exist before measuring.
    for url in [
        upstream.url(path),
        nginx.url(path),
        floor_url(path),
        node.url(path),
    ] {
        wrk("warmup", &url, 1, conns, Duration::from_secs(1));
    }
    let runs = vec![
        wrk("upstream direct", &upstream.url(path), 1, conns, d),
        wrk("nginx reverse proxy", &nginx.url(path), 1, conns, d),
        wrk("hyper floor (same headers)", &floor_url(path), 1, conns, d),
        wrk("gatehouse", &node.url(path), 1, conns, d),
    ];
    println!("| target | req/s | p50 ms | p99 ms | errors |");
    println!("|---|---:|---:|---:|---:|");
    for r in &runs {
        println!(
            "| {} | {:.0} | {:.3} | {:.3} | {} |",
            r.target, r.requests_per_sec, r.p50_ms, r.p99_ms, r.errors
        );
    }
    let (ng, fl, gh) = (&runs[1], &runs[2], &runs[3]);
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
    println!("{}", serde_json::to_string(&runs).unwrap_or_default());
}
