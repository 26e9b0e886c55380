//! Brute-force protection across the cluster: an attacker guessing a share password from one
//! address through a load-balanced set of nodes, measured on one node and on three sharing
//! their counts through a real NATS; legitimate users from other addresses meanwhile; and NATS
//! down, where the limits fall back to each node's own counts.
//!
//! Every guess is a distinct password, so the share service (a real HTTP fixture) is asked for
//! each one that the gateway lets through: the rate the attacker achieves is the rate of 401
//! answers; blocked guesses get 429 and reach nothing.

use std::time::{Duration, Instant};

use gatehouse_tests::client::get_with;
use gatehouse_tests::idp::Idp;
use gatehouse_tests::nats::NatsCluster;
use gatehouse_tests::node::{GatehouseNode, NodeOptions};
use gatehouse_tests::shares::{FixtureShare, ShareFixture};
use gatehouse_tests::upstream::Upstream;

const SECRET: &str = "brute-force-test-secret";
const WINDOW_S: u64 = 2;
const PER_SHARE: u32 = 10;
const ATTACK: Duration = Duration::from_secs(6);
const ATTACKER: &str = "203.0.113.7";

struct Setup {
    _idp: Idp,
    _up: Upstream,
    shares: ShareFixture,
    nats: NatsCluster,
    nodes: Vec<GatehouseNode>,
}

async fn setup(nodes: usize) -> Setup {
    let idp = Idp::start();
    let up = Upstream::start("dav").await;
    let shares = ShareFixture::start().await;
    shares.add_share(FixtureShare::new("s-pw", "pwtoken").with_password("the-real-one"));
    shares.add_share(FixtureShare::new("s-open", "opentoken"));
    let nats = NatsCluster::start(1);
    let yaml = format!(
        "policies:
  - name: ocis
    routes:
      - endpoint: /
        backend: {up}
oidc:
  issuer: {iss}
http:
  trusted_proxies: [127.0.0.1/32]
token_manager:
  jwt_secret: {SECRET}
public_shares:
  url: {shares}
state_store: {{store: nats-js-kv, addresses: [\"{nats}\"], op_timeout: 1s}}
brute_force:
  window: {WINDOW_S}s
  max_failures_per_share: {PER_SHARE}
  max_failures_per_address: 100000
  block: {WINDOW_S}s
  max_block: {WINDOW_S}s
",
        up = up.url(),
        iss = idp.issuer(),
        shares = shares.url(),
        nats = nats.client_url(0).trim_start_matches("nats://"),
    );
    let mut started = Vec::new();
    for _ in 0..nodes {
        started.push(GatehouseNode::start_with(NodeOptions::new(&yaml)).await);
    }
    Setup {
        _idp: idp,
        _up: up,
        shares,
        nats,
        nodes: started,
    }
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// One attacker guessing for [`ATTACK`], round-robin over `nodes`, one guess at a time: the
/// statuses seen.
async fn attack(nodes: &[GatehouseNode], tag: &str) -> (usize, usize, usize) {
    let (mut checked, mut blocked, mut other) = (0, 0, 0);
    let started = Instant::now();
    let mut i = 0usize;
    while started.elapsed() < ATTACK {
        let node = &nodes[i % nodes.len()];
        let r = get_with(
            &node.url("/dav/public-files/pwtoken/doc.txt"),
            &[
                ("public-token", "pwtoken"),
                ("authorization", &basic("public", &format!("{tag}-{i}"))),
                ("x-forwarded-for", ATTACKER),
            ],
        )
        .await;
        match r.status.as_u16() {
            401 => checked += 1,
            429 => {
                blocked += 1;
                assert!(r.headers.get("retry-after").is_some());
            }
            _ => other += 1,
        }
        i += 1;
    }
    (checked, blocked, other)
}

/// Most guesses a limit of [`PER_SHARE`] per window lets through during [`ATTACK`] (a block
/// as long as the window, so at most one window in two is open, plus the one the attack starts in).
fn bound(per_window_slack: usize) -> usize {
    let windows = (ATTACK.as_secs() / WINDOW_S) as usize + 1;
    windows * (PER_SHARE as usize + per_window_slack)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_guessing_attack_is_held_to_the_limit_cluster_wide_and_per_node_without_nats() {
    let mut s = setup(3).await;
    // One node alone (the other two idle): the reference rate.
    let (one_checked, one_blocked, one_other) = attack(&s.nodes[..1], "one").await;
    // Wait for the key's block to end so the three-node run starts alike.
    tokio::time::sleep(Duration::from_secs(WINDOW_S * 2)).await;

    // Legitimate traffic from other addresses during the three-node attack.
    let legit_nodes: Vec<String> = s
        .nodes
        .iter()
        .map(|n| n.url("/dav/public-files/opentoken/a"))
        .collect();
    let legit = tokio::spawn(async move {
        let mut slowest = Duration::ZERO;
        let mut failures = 0;
        let started = Instant::now();
        let mut i = 0usize;
        while started.elapsed() < ATTACK {
            let t0 = Instant::now();
            let r = get_with(
                &legit_nodes[i % legit_nodes.len()],
                &[
                    ("public-token", "opentoken"),
                    ("x-forwarded-for", &format!("198.51.100.{}", i % 200 + 1)),
                ],
            )
            .await;
            slowest = slowest.max(t0.elapsed());
            if r.status != 200 {
                failures += 1;
            }
            i += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (i, failures, slowest)
    });
    let (three_checked, three_blocked, three_other) = attack(&s.nodes, "three").await;
    let (legit_sent, legit_failed, legit_slowest) = legit.await.unwrap();

    // NATS down: each node limits on its own counts.
    s.nats.kill(0);
    tokio::time::sleep(Duration::from_secs(WINDOW_S * 2)).await;
    let (down_checked, down_blocked, down_other) = attack(&s.nodes, "down").await;
    // The right password still opens the share from elsewhere: no one else is blocked.
    let r = get_with(
        &s.nodes[0].url("/dav/public-files/opentoken/b"),
        &[
            ("public-token", "opentoken"),
            ("x-forwarded-for", "198.51.100.250"),
        ],
    )
    .await;

    println!(
        "guesses checked in {ATTACK:?} (limit {PER_SHARE} per {WINDOW_S} s): one node {one_checked} \
         ({one_blocked} blocked), three nodes {three_checked} ({three_blocked} blocked), three nodes \
         without NATS {down_checked} ({down_blocked} blocked); legitimate requests {legit_sent}, \
         {legit_failed} failed, slowest {legit_slowest:?}; share service calls {}",
        s.shares.count()
    );
    assert_eq!((one_other, three_other, down_other), (0, 0, 0));
    assert!(one_blocked > 0 && three_blocked > 0 && down_blocked > 0);
    assert!(
        one_checked <= bound(0),
        "one node let {one_checked} guesses through"
    );
    // Three nodes: the same limit, give or take what is in flight while counts travel.
    assert!(
        three_checked <= bound(3),
        "three nodes let {three_checked} guesses through (one node: {one_checked})"
    );
    // Without NATS each node counts alone: at most three times the limit, never unlimited.
    assert!(down_checked <= 3 * bound(0), "{down_checked}");
    assert_eq!(legit_failed, 0, "a legitimate request was refused");
    assert!(
        legit_slowest < Duration::from_millis(200),
        "{legit_slowest:?}"
    );
    assert_eq!(r.status, 200);
}
