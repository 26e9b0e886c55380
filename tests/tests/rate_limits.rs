//! Request-volume limits across the cluster, with a real NATS and a real OpenID provider: one
//! client address flooding an unprotected route and one user flooding a protected one, round
//! robin over one node and over three nodes that share their admissions; other addresses and
//! users meanwhile; routes no rule names; and NATS down, where each node limits on its own.
//!
//! A flooding client sends as fast as the nodes answer (one request at a time, or four at once),
//! so the rate it achieves is the rate of 200 answers; refused requests get 429 with
//! `Retry-After`.

use std::time::{Duration, Instant};

use gatehouse_tests::client::{bearer, get_with};
use gatehouse_tests::idp::{Idp, TokenOptions};
use gatehouse_tests::nats::NatsCluster;
use gatehouse_tests::node::{GatehouseNode, NodeOptions};
use gatehouse_tests::upstream::Upstream;

const SECRET: &str = "rate-limit-test-secret";
/// Both rules: 20 requests per second, burst 20.
const RATE: usize = 20;
const FLOOD: Duration = Duration::from_secs(3);

/// Most requests a rule admits during [`FLOOD`]: the burst plus the rate, plus `slack`.
fn bound(slack: usize) -> usize {
    RATE + RATE * FLOOD.as_secs() as usize + slack
}

struct Flood {
    admitted: usize,
    refused: usize,
    other: usize,
}

/// One client sending to `path` for [`FLOOD`] over `senders` connections at once, each round
/// robin over `nodes`.
async fn flood(
    nodes: &[GatehouseNode],
    path: &str,
    headers: &[(&str, &str)],
    senders: usize,
) -> Flood {
    let urls: Vec<String> = nodes.iter().map(|n| n.url(path)).collect();
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    // A refusal says when the bucket has a token again. Peers report what they admitted every
    // 10 ms, so each of the other nodes may have spent up to a burst (plus that lag's worth)
    // before this one hears of it: the bucket then owes up to one burst per peer, a second each
    // at this rule, and the header rounds up.
    let max_retry = nodes.len() as u64;
    let tasks: Vec<_> = (0..senders)
        .map(|s| {
            let (urls, headers) = (urls.clone(), headers.clone());
            tokio::spawn(async move {
                let headers: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let mut f = Flood {
                    admitted: 0,
                    refused: 0,
                    other: 0,
                };
                let started = Instant::now();
                let mut i = s;
                while started.elapsed() < FLOOD {
                    let r = get_with(&urls[i % urls.len()], &headers).await;
                    match r.status.as_u16() {
                        200 => f.admitted += 1,
                        429 => {
                            f.refused += 1;
                            let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
                            assert!((1..=max_retry).contains(&retry), "Retry-After {retry}");
                        }
                        _ => f.other += 1,
                    }
                    i += 1;
                }
                f
            })
        })
        .collect();
    let mut total = Flood {
        admitted: 0,
        refused: 0,
        other: 0,
    };
    for t in tasks {
        let f = t.await.unwrap();
        total.admitted += f.admitted;
        total.refused += f.refused;
        total.other += f.other;
    }
    total
}

/// Requests of other clients during a flood, each from its own address (with `auth`, all as
/// that user), spread over the nodes one every `every`: how many, how many not answered 200,
/// and the slowest.
fn bystanders(
    urls: Vec<String>,
    auth: Option<String>,
    every: Duration,
) -> tokio::task::JoinHandle<(usize, usize, Duration)> {
    tokio::spawn(async move {
        let (mut sent, mut failed, mut slowest) = (0, 0, Duration::ZERO);
        let started = Instant::now();
        while started.elapsed() < FLOOD {
            let from = format!("198.51.100.{}", sent % 200 + 1);
            let mut headers = vec![("x-forwarded-for", from.as_str())];
            if let Some(a) = &auth {
                headers.push(("authorization", a));
            }
            let t0 = Instant::now();
            let r = get_with(&urls[sent % urls.len()], &headers).await;
            slowest = slowest.max(t0.elapsed());
            if r.status != 200 {
                failed += 1;
            }
            sent += 1;
            tokio::time::sleep(every).await;
        }
        (sent, failed, slowest)
    })
}

fn refusals(node: &GatehouseNode, rule: &str, text: &str) -> u64 {
    let line = format!("gatehouse_rate_limited_total{{rule=\"{rule}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(line.as_str()))
        .unwrap_or_else(|| panic!("no {line} on {}", node.debug_url("/metrics")))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn floods_are_held_to_the_configured_rate_cluster_wide_and_per_node_without_nats() {
    let idp = Idp::start();
    let up = Upstream::start("backend").await;
    let mut nats = NatsCluster::start(1);
    let yaml = format!(
        "policies:
  - name: ocis
    routes:
      - endpoint: /
        backend: {up}
      - endpoint: /graph/
        backend: {up}
      - endpoint: /open/
        backend: {up}
        unprotected: true
oidc:
  issuer: {iss}
auto_provision_accounts: true
http:
  trusted_proxies: [127.0.0.1/32]
token_manager:
  jwt_secret: {SECRET}
state_store: {{store: nats-js-kv, addresses: [\"{nats}\"], op_timeout: 1s}}
rate_limits:
  - {{name: open-per-address, per: address, requests: {RATE}, period: 1s, endpoints: [/open/]}}
  - {{name: graph-per-user, per: user, requests: {RATE}, period: 1s, policy: ocis, endpoints: [/graph/]}}
",
        up = up.url(),
        iss = idp.issuer(),
        nats = nats.client_url(0).trim_start_matches("nats://"),
    );
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(GatehouseNode::start_with(NodeOptions::new(&yaml)).await);
    }
    let marie = bearer(
        idp.user_token("marie", TokenOptions::jwt())
            .await
            .access_token(),
    );
    let einstein = bearer(
        idp.user_token("einstein", TokenOptions::jwt())
            .await
            .access_token(),
    );
    // Both users' accounts exist before any flood: provisioning is not what is measured.
    for auth in [&marie, &einstein] {
        for n in &nodes {
            assert_eq!(
                get_with(&n.url("/"), &[("authorization", auth)])
                    .await
                    .status,
                200
            );
        }
    }

    // Per address, unprotected route: one node, then three nodes with bystanders.
    let one = flood(
        &nodes[..1],
        "/open/a",
        &[("x-forwarded-for", "203.0.113.1")],
        1,
    )
    .await;
    let urls = |path: &str| nodes.iter().map(|n| n.url(path)).collect::<Vec<_>>();
    let others = bystanders(urls("/open/b"), None, Duration::from_millis(20));
    // Four connections at once: each node admits while its peers' batches are on the way.
    let three = flood(&nodes, "/open/a", &[("x-forwarded-for", "203.0.113.2")], 4).await;
    let (others_sent, others_failed, others_slowest) = others.await.unwrap();
    // A route no rule names is not limited for the flooding address.
    let elsewhere = get_with(
        &nodes[0].url("/"),
        &[
            ("x-forwarded-for", "203.0.113.2"),
            ("authorization", &marie),
        ],
    )
    .await;
    assert_eq!(elsewhere.status, 200);

    // Per user, protected route: marie floods over three nodes from one address; einstein
    // uses the same route meanwhile.
    // Below the user's rate: about 15 requests a second.
    let einstein_meanwhile = bystanders(
        urls("/graph/me"),
        Some(einstein.clone()),
        Duration::from_millis(65),
    );
    let user = flood(&nodes, "/graph/me", &[("authorization", &marie)], 1).await;
    let (einstein_sent, einstein_failed, _) = einstein_meanwhile.await.unwrap();
    // marie's other routes are untouched.
    let other_route = get_with(&nodes[1].url("/dav"), &[("authorization", &marie)]).await;
    assert_eq!(other_route.status, 200);

    // NATS down: every node limits on its own admissions.
    nats.kill(0);
    let down = flood(&nodes, "/open/a", &[("x-forwarded-for", "203.0.113.3")], 1).await;

    let mut metric = 0;
    for n in &nodes {
        let text = get_with(&n.debug_url("/metrics"), &[]).await.text();
        metric += refusals(n, "open-per-address", &text);
    }

    println!(
        "requests admitted in {FLOOD:?} at {RATE}/s, burst {RATE} (bound {}): one address on one node \
         {} ({} refused), on three nodes over four connections {} ({} refused), on three nodes without NATS {} ({} refused); \
         one user on three nodes {} ({} refused); bystander addresses {others_sent} requests, \
         {others_failed} failed, slowest {others_slowest:?}; another user {einstein_sent} requests, \
         {einstein_failed} failed",
        bound(0),
        one.admitted,
        one.refused,
        three.admitted,
        three.refused,
        down.admitted,
        down.refused,
        user.admitted,
        user.refused,
    );
    for f in [&one, &three, &user, &down] {
        assert_eq!(f.other, 0);
        assert!(f.refused > 0);
    }
    assert!(
        one.admitted <= bound(1),
        "one node admitted {}",
        one.admitted
    );
    assert!(
        one.admitted >= bound(0) - 5,
        "one node admitted only {}",
        one.admitted
    );
    // Three nodes: the same rate, give or take what is admitted while batches travel.
    assert!(
        three.admitted <= bound(6),
        "three nodes admitted {}",
        three.admitted
    );
    assert!(
        user.admitted <= bound(6),
        "three nodes admitted {} of one user",
        user.admitted
    );
    // Without NATS each node limits alone: about three times the rate, never unlimited.
    assert!(down.admitted > bound(6), "{}", down.admitted);
    assert!(down.admitted <= 3 * bound(1), "{}", down.admitted);
    assert_eq!((others_failed, einstein_failed), (0, 0));
    assert!(others_sent >= 50 && einstein_sent >= 30);
    assert_eq!(metric as usize, one.refused + three.refused + down.refused);
}
