//! Readiness behind a real load balancer with active health checks (HAProxy on `/readyz`): a
//! NATS outage of the whole cluster degrades every node but empties no pool, while a draining
//! node is taken out and its traffic goes to the others without a failed request.

use std::time::Duration;

use gatehouse_tests::client::get;
use gatehouse_tests::haproxy::{Backend, CHECK_INTERVAL, HaProxy};
use gatehouse_tests::nats::NatsCluster;
use gatehouse_tests::node::GatehouseNode;
use gatehouse_tests::upstream::Upstream;
use gatehouse_tests::wait_until;

/// Sends `n` requests through the load balancer and returns how many were not 200.
async fn failures(lb: &HaProxy, n: usize) -> usize {
    let mut failed = 0;
    for i in 0..n {
        if get(&lb.url(&format!("/up/{i}"))).await.status != 200 {
            failed += 1;
        }
    }
    failed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_wide_nats_outage_degrades_the_nodes_but_keeps_them_in_the_pool() {
    let mut nats = NatsCluster::start(3);
    let up = Upstream::start("up").await;
    let addresses: Vec<String> = nats
        .client_urls()
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect();
    let yaml = format!(
        "state_store:\n  store: nats-js-kv\n  addresses: [{}]\n  replicas: 3\npolicies:\n  - name: ocis\n    routes:\n      - endpoint: /up\n        backend: {}\n        unprotected: true\n",
        addresses.join(", "),
        up.url()
    );
    let a = GatehouseNode::start(&yaml).await;
    let b = GatehouseNode::start(&yaml).await;
    let lb = HaProxy::balance(&[
        Backend {
            http: a.http,
            debug: a.debug,
        },
        Backend {
            http: b.http,
            debug: b.debug,
        },
    ])
    .await;
    assert!(
        lb.wait_states(&[("gw0", "UP"), ("gw1", "UP")], Duration::from_secs(10))
            .await,
        "{:?}\n{}",
        lb.server_states().await,
        lb.logs()
    );
    assert_eq!(failures(&lb, 50).await, 0);

    // Every NATS node gone: both nodes say they are degraded, and stay ready.
    for i in 0..3 {
        nats.kill(i);
    }
    for node in [&a, &b] {
        let degraded = wait_until(Duration::from_secs(15), || async {
            let r = get(&node.debug_url("/readyz")).await;
            r.status == 200 && r.text().contains("degraded")
        })
        .await;
        assert!(degraded, "{}", node.logs());
    }
    // Over many check intervals the balancer keeps both and every request is served.
    let served_before = up.count();
    let failed = failures(&lb, 300).await;
    assert_eq!(failed, 0, "requests failed during the NATS outage");
    assert!(up.count() >= served_before + 300);
    let states = lb.server_states().await;
    assert!(
        states.iter().all(|(_, s)| s == "UP"),
        "a shared outage must not empty the pool: {states:?}"
    );
    for node in [&a, &b] {
        assert!(
            node.access_log().len() > 100,
            "both nodes kept receiving traffic"
        );
    }

    // A draining node is taken out at once, and nothing fails meanwhile.
    a.sigterm();
    assert!(
        lb.wait_states(&[("gw0", "DOWN"), ("gw1", "UP")], 20 * CHECK_INTERVAL)
            .await,
        "{:?}",
        lb.server_states().await
    );
    assert_eq!(failures(&lb, 50).await, 0);
}
