//! End-to-end test harness: everything here starts real processes or real servers on loopback
//! with free ports, and stops them when dropped — also when a test panics.
//!
//! - [`process`] child processes killed on drop (their log tails printed on failure), free ports,
//!   tool lookup, deadlines.
//! - [`upstream`] recording HTTP upstreams with scripted behaviours (slow, SSE, upgrade, large bodies).
//! - [`node`] a `gatehouse` node started from the built binary with a given configuration.
//! - [`lb`] nginx as a load balancer in front of nodes (and as the baseline proxy for benchmarks).
//! - [`client`] a small HTTP client for assertions.
//! - [`nats`] a real nats-server JetStream cluster.
//! - [`redis`] a real Redis master and replica with three Redis Sentinels.
//! - [`idp`] a real OpenID provider (npm `oidc-provider`) with a password grant and test controls.
//! - [`graph`] an in-memory LibreGraph (oCIS graph service) stand-in that records its calls.
//! - [`shares`] a share service implementing the public-share contract of docs/public-shares.md.
//! - [`signing`] the client side of pre-signed URLs.
//! - [`otlp`] a real OTLP trace receiver (gRPC and HTTP) recording what nodes export.
//! - [`compose`] the compose cluster (compose/docker-compose.test.yml) under a real Docker engine.
//! - [`relay`] a TCP relay that adds latency to one path (no `netem` on the test machines).
//! - [`partition`] cutting the TCP path to one address with iptables.

pub mod client;
pub mod compose;
pub mod fixture;
pub mod graph;
pub mod haproxy;
pub mod idp;
pub mod lb;
pub mod nats;
pub mod node;
pub mod otlp;
pub mod partition;
pub mod pki;
pub mod process;
pub mod redis;
pub mod relay;
pub mod shares;
pub mod signing;
pub mod upstream;

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    process::free_ports(1)[0]
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub async fn wait_until<F, Fut>(timeout: std::time::Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// How long each of `caches` (but the first) takes to show a change written through the first:
/// ten keys are written and waited for on every cache, then 200 writes and deletions over them
/// are each awaited on every other cache, polled locally. Panics if a change is not visible
/// after 5 s, or if a poll was not answered locally (every change must arrive by the feed).
/// The lags come back sorted.
pub async fn near_cache_lags(
    caches: &[std::sync::Arc<gatehouse_shared::store::NearCache>],
) -> Vec<std::time::Duration> {
    use gatehouse_shared::store::Store as _;
    use std::time::Duration;
    let keys: Vec<String> = (0..10).map(|i| format!("user{i}")).collect();
    for k in &keys {
        caches[0]
            .put(k, bytes::Bytes::from_static(b"initial"), None)
            .await
            .expect("write");
    }
    for cache in &caches[1..] {
        for k in &keys {
            let seen = wait_until(Duration::from_secs(10), || async {
                matches!(cache.get(k).await, Ok(Some(_)))
            })
            .await;
            assert!(seen, "warm-up: {k} never reached a peer");
        }
    }
    let remote_before: Vec<u64> = caches
        .iter()
        .map(|c| c.stats().remote_hits + c.stats().misses)
        .collect();
    let mut lags = Vec::new();
    for i in 0..200 {
        let key = &keys[i % keys.len()];
        let expected = (i % 4 != 3).then(|| format!("v{i}"));
        let started = std::time::Instant::now();
        match &expected {
            Some(v) => {
                caches[0]
                    .put(key, bytes::Bytes::from(v.clone()), None)
                    .await
                    .expect("write");
            }
            None => caches[0].delete(key).await.expect("delete"),
        }
        for cache in &caches[1..] {
            loop {
                let got = cache.get(key).await.expect("read");
                if got.as_ref().map(|e| &e.value[..]) == expected.as_ref().map(|v| v.as_bytes()) {
                    lags.push(started.elapsed());
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "op {i}: the change never became visible"
                );
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
    }
    for (i, c) in caches.iter().enumerate().skip(1) {
        let s = c.stats();
        assert_eq!(
            s.remote_hits + s.misses,
            remote_before[i],
            "cache {i} answered every poll locally: {s:?}"
        );
        assert_eq!(s.errors, 0);
    }
    lags.sort();
    lags
}

/// What clients get from `nodes` while their shared store is down: waits until every node
/// reports itself degraded, then sends 20 rounds of requests with the `cached` session (each must
/// get 200) and one login per node with a fresh token of `user`, which needs the store. Returns
/// the slowest cached request and, per login, its status, whether it carried `Retry-After`, and
/// how long it took.
pub async fn store_outage_answers(
    nodes: &[node::GatehouseNode],
    idp: &idp::Idp,
    cached: &str,
    user: &str,
) -> (std::time::Duration, Vec<(u16, bool, std::time::Duration)>) {
    use std::time::{Duration, Instant};
    for node in nodes {
        let degraded = wait_until(Duration::from_secs(15), || async {
            let r = client::get(&node.debug_url("/readyz")).await;
            r.status == 200 && r.text().contains("degraded")
        })
        .await;
        assert!(degraded, "{}", node.logs());
    }
    let mut slowest_cached = Duration::ZERO;
    for _ in 0..20 {
        for node in nodes {
            let t0 = Instant::now();
            let r = client::get_with(&node.url("/cached"), &[("authorization", cached)]).await;
            slowest_cached = slowest_cached.max(t0.elapsed());
            assert_eq!(r.status, 200, "a cached session during the outage");
        }
    }
    let mut answers = Vec::new();
    for node in nodes {
        let fresh = idp.user_token(user, idp::TokenOptions::jwt()).await;
        let t0 = Instant::now();
        let r = client::get_with(
            &node.url("/new"),
            &[("authorization", &client::bearer(fresh.access_token()))],
        )
        .await;
        answers.push((
            r.status.as_u16(),
            r.headers.get("retry-after").is_some(),
            t0.elapsed(),
        ));
    }
    (slowest_cached, answers)
}
