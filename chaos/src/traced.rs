//! The `tracing` scenario: what tracing costs a node, in one run on one machine. Three nodes
//! with the same configuration but for tracing — off; on with a sampling ratio of 0; on with
//! every request sampled — all exporting to one real OTLP receiver (which counts spans), each
//! measured on an unprotected route and on a protected route with a cached bearer token.
//!
//! With `GATEHOUSE_BASELINE_BIN` naming an earlier build of the node (before tracing existed), a
//! fourth node runs that build, so that "off" and "ratio 0" are also compared with the figures of
//! before.
//!
//! The primary figure is the node's CPU time per request (`/proc/<pid>/stat`), which does not
//! depend on how much CPU wrk and the upstream took from the same cores; req/s is reported beside
//! it. Targets run in rounds, each round in a rotated order, and the table shows the median and
//! the range over the rounds, so that drift on a shared machine does not favour one node.
//!
//! The run fails when a target answered with errors, when the provider saw a request during the
//! measurement (it must be a cache-hit run), when the ratio-0 node exported a span, or when the
//! fully sampled node exported fewer than two spans (SERVER and upstream CLIENT) per request.

use std::time::Duration;

use gatehouse_tests::client::get_with;
use gatehouse_tests::idp::TokenOptions;
use gatehouse_tests::node::{GatehouseNode, NodeOptions};
use gatehouse_tests::otlp::OtlpReceiver;

use crate::{BENCH_USER, Run, WARMUP, Wrk, node_yaml, provider_and_upstream, unix_now};

/// Rounds over all targets (odd, for a median).
const ROUNDS: usize = 5;

struct Target<'a> {
    label: String,
    node: &'a GatehouseNode,
    path: &'static str,
    authenticated: bool,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn range(v: &[f64]) -> (f64, f64) {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

pub async fn bench(secs: u64, conns: u32) -> Result<(), String> {
    let d = Duration::from_secs(secs);
    let wrk = Wrk {
        threads: 1,
        connections: conns,
    };
    let (idp, upstream) = provider_and_upstream().await?;
    let otlp = OtlpReceiver::start_counting().await;
    // The ratio-0 node gets a receiver of its own, which must stay empty.
    let zero_otlp = OtlpReceiver::start_counting().await;
    let yaml = node_yaml(&upstream.url(""), &idp.issuer());
    let base = || NodeOptions::new(&yaml).env("PROXY_LOG_LEVEL", "error");
    let traced = |ratio: &str, receiver: &OtlpReceiver| {
        base()
            .traced_to(receiver)
            .env("OTEL_TRACES_SAMPLER_ARG", ratio)
            // Room for a full run's spans: the queue must not be what limits the measurement.
            .env("PROXY_TRACING_QUEUE_SIZE", "65536")
    };
    let off = GatehouseNode::start_with(base()).await;
    let zero = GatehouseNode::start_with(traced("0", &zero_otlp)).await;
    let all = GatehouseNode::start_with(traced("1", &otlp)).await;
    // An earlier build (before tracing existed), to compare "off" with the figures of then.
    let earlier = match std::env::var_os("GATEHOUSE_BASELINE_BIN") {
        Some(bin) => Some(
            GatehouseNode::start_with(NodeOptions {
                bin: Some(bin.into()),
                ..base()
            })
            .await,
        ),
        None => None,
    };
    let mut nodes = vec![("off", &off), ("ratio 0", &zero), ("ratio 1", &all)];
    if let Some(earlier) = &earlier {
        nodes.push(("absent (earlier build)", earlier));
    }

    let token = idp.user_token(BENCH_USER, TokenOptions::jwt()).await;
    let expires = token.access_claims()["exp"].as_u64().unwrap_or(0);
    let per_round = 2 * nodes.len() as u64;
    let needed = unix_now() + (ROUNDS as u64 + 1) * per_round * (secs + WARMUP.as_secs()) + 30;
    if needed > expires {
        return Err(format!(
            "the provider's tokens expire at {expires}, before the end of the run (~{needed}): \
             use fewer seconds per target"
        ));
    }
    let bearer = format!("Bearer {}", token.access_token());
    let auth = [("Authorization", bearer.as_str())];

    let mut targets = Vec::new();
    for (name, node) in nodes {
        let first = get_with(&node.url("/auth/hello"), &auth).await;
        if first.status != 200 {
            return Err(format!(
                "tracing {name}: the token does not open the protected route ({}): {}",
                first.status,
                node.logs()
            ));
        }
        for (path, authenticated) in [("/bench/hello", false), ("/auth/hello", true)] {
            targets.push(Target {
                label: format!(
                    "tracing {name}, {}",
                    if authenticated {
                        "authenticated (cached token)"
                    } else {
                        "unprotected"
                    }
                ),
                node,
                path,
                authenticated,
            });
        }
    }
    let headers = |t: &Target<'_>| -> Vec<(&str, &str)> {
        if t.authenticated {
            auth.to_vec()
        } else {
            Vec::new()
        }
    };
    for t in &targets {
        wrk.run("warmup", &t.node.url(t.path), &headers(t), WARMUP);
    }
    idp.reset_stats().await;
    let before = otlp.span_count();

    let mut runs: Vec<Vec<Run>> = targets.iter().map(|_| Vec::new()).collect();
    let mut served_by_all = 0u64;
    for round in 0..ROUNDS {
        for k in 0..targets.len() {
            let i = (k + round) % targets.len();
            let t = &targets[i];
            let run = wrk.run_on_node(
                t.node.pid(),
                &t.label,
                &t.node.url(t.path),
                &headers(t),
                None,
                d,
            );
            if std::ptr::eq(t.node, &all) {
                served_by_all += run.requests;
            }
            runs[i].push(run);
        }
    }
    let idp_calls = idp.count("/me").await + idp.count("/jwks").await;

    println!("| target | node CPU µs/req (median, min–max) | req/s (median, min–max) | errors |");
    println!("|---|---:|---:|---:|");
    let mut cpu_median = Vec::new();
    let mut rps_median = Vec::new();
    for (t, rs) in targets.iter().zip(&runs) {
        let cpu: Vec<f64> = rs
            .iter()
            .map(|r| r.node_cpu_us_per_req.unwrap_or(f64::NAN))
            .collect();
        let rps: Vec<f64> = rs.iter().map(|r| r.requests_per_sec).collect();
        let errors: u64 = rs.iter().map(|r| r.errors).sum();
        let ((cmin, cmax), (rmin, rmax)) = (range(&cpu), range(&rps));
        let (cm, rm) = (median(cpu), median(rps));
        println!(
            "| {} | {cm:.1} ({cmin:.1}–{cmax:.1}) | {rm:.0} ({rmin:.0}–{rmax:.0}) | {errors} |",
            t.label
        );
        cpu_median.push(cm);
        rps_median.push(rm);
    }
    println!();
    // targets: [off unprot, off auth, zero unprot, zero auth, all unprot, all auth,
    // (earlier unprot, earlier auth)]
    let mut ratios = vec![
        ("ratio 0 / off, unprotected", 0, 2),
        ("ratio 0 / off, authenticated", 1, 3),
        ("ratio 1 / off, unprotected", 0, 4),
        ("ratio 1 / off, authenticated", 1, 5),
    ];
    if earlier.is_some() {
        ratios.push(("off / earlier build, unprotected", 6, 0));
        ratios.push(("off / earlier build, authenticated", 7, 1));
        ratios.push(("ratio 0 / earlier build, unprotected", 6, 2));
        ratios.push(("ratio 0 / earlier build, authenticated", 7, 3));
    }
    for (name, base, other) in ratios {
        println!(
            "{name}: node CPU per request {:.3}x, throughput {:.3}x",
            cpu_median[other] / cpu_median[base],
            rps_median[other] / rps_median[base]
        );
    }
    let exported = otlp.span_count();
    println!(
        "spans received: {exported} (ratio-1 node served {served_by_all} measured requests); \
         identity provider calls during the measurement: {idp_calls}"
    );
    println!(
        "{}",
        serde_json::to_string(&runs.concat()).unwrap_or_default()
    );

    let mut failures = Vec::new();
    for r in runs
        .iter()
        .flatten()
        .filter(|r| r.non_2xx > 0 || r.errors > 0)
    {
        failures.push(format!("{}: {} errors", r.target, r.errors));
    }
    if idp_calls > 0 {
        failures.push(format!(
            "{idp_calls} identity-provider calls: not a cache-hit run"
        ));
    }
    // Every request of the sampled node is at least a SERVER and an upstream CLIENT span; the
    // ratio-0 node exports none, so the receiver's total tells both apart.
    let flushed = otlp
        .wait_for(Duration::from_secs(30), |_| {
            otlp.span_count() - before >= 2 * served_by_all
        })
        .await;
    if !flushed {
        failures.push(format!(
            "expected at least {} spans from the sampled node, received {}",
            2 * served_by_all,
            otlp.span_count() - before
        ));
    }
    if zero_otlp.span_count() > 0 {
        failures.push(format!(
            "the ratio-0 node exported {} spans",
            zero_otlp.span_count()
        ));
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n"))
    }
}
