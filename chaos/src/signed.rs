//! The `signed-urls` scenario: what a pre-signed URL costs on one node, with and without the
//! verified-URL cache, next to the same node's unprotected route (same upstream, same wrk
//! settings, one run).
//!
//! - "one link": every request carries the same signed URL — a download repeated by many clients.
//!   Only the first request pays the PBKDF2 derivation; the rest are cache hits.
//! - "distinct links": every request carries a different signed URL (prepared before the
//!   measurement), so every request derives the key once. The node's
//!   `gatehouse_signed_url_key_derivations_total` must grow by the request count, else the run
//!   did not measure what it claims (it fails if wrk sent more requests than there are links).

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use gatehouse_tests::client::{get, get_with};
use gatehouse_tests::idp::TokenOptions;
use gatehouse_tests::node::{GatehouseNode, NodeOptions};
use gatehouse_tests::signing::{Link, sign};

use crate::{Run, WARMUP, Wrk, node_yaml, print_table, provider_and_upstream};

/// Distinct links prepared for the uncached run (about 4 ms of client CPU each).
const DISTINCT_LINKS: usize = 6000;

async fn derivations(node: &GatehouseNode) -> Result<u64, String> {
    let text = get(&node.debug_url("/metrics")).await.text();
    text.lines()
        .find_map(|l| l.strip_prefix("gatehouse_signed_url_key_derivations_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .ok_or_else(|| "the node exports no gatehouse_signed_url_key_derivations_total".into())
}

pub async fn bench(secs: u64, conns: u32) -> Result<(), String> {
    let d = Duration::from_secs(secs);
    let wrk = Wrk {
        threads: 1,
        connections: conns,
    };
    let (idp, upstream) = provider_and_upstream().await?;
    let node = GatehouseNode::start_with(
        NodeOptions::new(&node_yaml(&upstream.url(""), &idp.issuer()))
            .env("PROXY_LOG_LEVEL", "error"),
    )
    .await;
    let host = node.http.to_string();

    let token = idp.user_token("einstein", TokenOptions::jwt()).await;
    let bearer = format!("Bearer {}", token.access_token());
    let r = get_with(
        &node.url("/ocs/v1.php/cloud/user/signing-key"),
        &[("authorization", &bearer)],
    )
    .await;
    let v: serde_json::Value = serde_json::from_slice(&r.body)
        .map_err(|e| format!("signing key answer {}: {e}", r.status))?;
    let key = v["ocs"]["data"]["signing-key"]
        .as_str()
        .ok_or_else(|| format!("no signing key ({}): {}", r.status, r.text()))?
        .to_owned();

    let now = SystemTime::now();
    let link = |params: &str| {
        sign(
            &Link {
                host: &host,
                path: "/dl/hello",
                params,
                user: "einstein",
                verb: "GET",
                signed_at: now,
                expires: Duration::from_secs(3600),
            },
            &key,
        )
    };
    let one = link("");
    let first = get(&node.url(&one)).await;
    if first.status != 200 {
        return Err(format!(
            "the signed link got {}: {}",
            first.status,
            first.text()
        ));
    }
    // Prepared on all cores before anything is measured.
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut distinct = Vec::with_capacity(DISTINCT_LINKS);
    let chunks: Vec<Vec<String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let link = &link;
                scope.spawn(move || {
                    (t..DISTINCT_LINKS)
                        .step_by(threads)
                        .map(|i| link(&format!("n={i}")))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    for chunk in chunks {
        distinct.extend(chunk);
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let script = dir.path().join("links.lua");
    let mut lua = String::from("local paths = {\n");
    for l in &distinct {
        let _ = writeln!(lua, "  \"{l}\",");
    }
    lua.push_str(
        "}\nlocal i = 0\nrequest = function()\n  i = i + 1\n  if i > #paths then i = 1 end\n  \
         return wrk.format(\"GET\", paths[i])\nend\n",
    );
    std::fs::write(&script, lua).map_err(|e| e.to_string())?;

    wrk.run("warmup", &node.url("/bench/hello"), &[], WARMUP);
    wrk.run("warmup", &node.url(&one), &[], WARMUP);

    let on_node = |target: &str, url: &str, script: Option<&std::path::Path>| {
        wrk.run_on_node(node.pid(), target, url, &[], script, d)
    };
    let open = on_node("gatehouse unprotected", &node.url("/bench/hello"), None);
    let before = derivations(&node).await?;
    let cached = on_node(
        "signed URL, one link (verified cache)",
        &node.url(&one),
        None,
    );
    let after_cached = derivations(&node).await?;
    let uncached = on_node(
        "signed URL, distinct links (a derivation per request)",
        &node.url("/"),
        Some(&script),
    );
    let after_uncached = derivations(&node).await?;

    let runs: Vec<&Run> = vec![&open, &cached, &uncached];
    print_table(runs.iter().copied());
    println!();
    for r in [&cached, &uncached] {
        println!(
            "{} / unprotected: throughput {:.3}x, p50 {:.2}x, p99 {:.2}x",
            r.target,
            r.requests_per_sec / open.requests_per_sec,
            r.p50_ms / open.p50_ms,
            r.p99_ms / open.p99_ms
        );
    }
    println!(
        "cached / uncached signed URL: throughput {:.1}x",
        cached.requests_per_sec / uncached.requests_per_sec
    );
    println!(
        "key derivations: {} during the one-link run, {} during the distinct-links run ({} requests)",
        after_cached - before,
        after_uncached - after_cached,
        uncached.requests
    );

    let mut failures = Vec::new();
    for r in runs.iter().filter(|r| r.non_2xx > 0) {
        failures.push(format!("{}: {} error responses", r.target, r.non_2xx));
    }
    if after_cached - before > 0 {
        failures.push("the one-link run derived keys: the cache was not used".into());
    }
    if uncached.requests > DISTINCT_LINKS as u64 {
        failures.push(format!(
            "the distinct-links run sent {} requests for {DISTINCT_LINKS} links: raise DISTINCT_LINKS",
            uncached.requests
        ));
    } else if after_uncached - after_cached < uncached.requests {
        failures.push(format!(
            "the distinct-links run derived {} keys for {} requests",
            after_uncached - after_cached,
            uncached.requests
        ));
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n"))
    }
}
