//! Three gateway nodes whose state is in Redis behind Sentinel, selected as oCIS selects it
//! (`OCIS_CACHE_STORE=redis-sentinel`, `OCIS_CACHE_STORE_NODES=<sentinel>/<master>,…`), with
//! their events on NATS (oCIS has no Redis event bus): the claims cache, accounts and logouts
//! are shared through Redis, a master failover under load costs cached sessions nothing, and
//! Redis down gets the same answers as NATS down.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gatehouse_tests::client::{bearer, get_with};
use gatehouse_tests::idp::{Idp, TokenOptions};
use gatehouse_tests::nats::{NatsCluster, published_event_types};
use gatehouse_tests::node::{GatehouseNode, NodeOptions};
use gatehouse_tests::redis::RedisSentinels;
use gatehouse_tests::upstream::Upstream;
use gatehouse_tests::wait_until;

struct Cluster {
    redis: RedisSentinels,
    nats: NatsCluster,
    idp: Idp,
    up: Upstream,
    nodes: Vec<GatehouseNode>,
}

/// Store calls get 2 s instead of 200 ms, as in the NATS cluster tests: these check sharing and
/// failover on a 2-core machine, not latency.
async fn cluster(env: &[(&str, &str)]) -> Cluster {
    let redis = tokio::task::block_in_place(RedisSentinels::start);
    let nats = NatsCluster::start(1);
    let idp = Idp::start();
    let up = Upstream::start("backend").await;
    let yaml = format!(
        "policies:
  - name: ocis
    routes:
      - endpoint: /backchannel_logout
        backend: {up}
        unprotected: true
      - endpoint: /
        backend: {up}
oidc:
  issuer: {iss}
  user_info_cache: {{op_timeout: 2s}}
state_store: {{op_timeout: 2s}}
events: {{endpoint: \"{events}\"}}
auto_provision_accounts: true
token_manager: {{jwt_secret: redis-cluster-secret}}
",
        up = up.url(),
        iss = idp.issuer(),
        events = nats.client_url(0).trim_start_matches("nats://"),
    );
    let nodes_list = redis.nodes().join(",");
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let mut opts = NodeOptions::new(&yaml)
            .env("OCIS_CACHE_STORE", "redis-sentinel")
            .env("OCIS_CACHE_STORE_NODES", &nodes_list);
        for (k, v) in env {
            opts = opts.env(k, v);
        }
        nodes.push(GatehouseNode::start_with(opts).await);
    }
    Cluster {
        redis,
        nats,
        idp,
        up,
        nodes,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_and_accounts_are_shared_through_redis_and_events_go_to_nats() {
    // Opaque tokens: every validation is a visible userinfo call at the IdP.
    let c = cluster(&[("PROXY_OIDC_ACCESS_TOKEN_VERIFY_METHOD", "none")]).await;
    let t = c.idp.user_token("marie", TokenOptions::opaque()).await;
    c.idp.reset_stats().await;
    let auth = bearer(t.access_token());
    let r = get_with(&c.nodes[0].url("/a"), &[("authorization", &auth)]).await;
    assert_eq!(r.status, 200, "{}", c.nodes[0].logs());
    for (i, node) in c.nodes.iter().enumerate().skip(1) {
        let r = get_with(&node.url("/b"), &[("authorization", &auth)]).await;
        assert_eq!(r.status, 200, "node {i}: {}", node.logs());
    }
    assert_eq!(
        c.idp.count("/me").await,
        1,
        "nodes 2 and 3 used the claims cached in Redis"
    );

    // Thirty first logins of one user at the same moment, spread over the nodes: the account is
    // created once (compare-and-set in Redis), announced once on NATS.
    let mut tokens = Vec::new();
    for _ in 0..30 {
        tokens.push(c.idp.user_token("einstein", TokenOptions::opaque()).await);
    }
    let tasks: Vec<_> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let url = c.nodes[i % 3].url(&format!("/login/{i}"));
            let auth = bearer(t.access_token());
            tokio::spawn(async move { get_with(&url, &[("authorization", &auth)]).await.status })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), 200);
    }
    let ids: std::collections::BTreeSet<String> =
        c.up.requests()
            .iter()
            .filter(|r| r.uri.starts_with("/login/"))
            .map(|r| {
                let token = r.headers["x-access-token"].to_str().unwrap();
                let claims = gatehouse_shared::token::verify(
                    b"redis-cluster-secret",
                    token,
                    Duration::from_secs(5),
                )
                .unwrap();
                claims.user.id.unwrap().opaque_id
            })
            .collect();
    assert_eq!(ids.len(), 1, "one account: {ids:?}");
    let nats = &c.nats;
    let created = || async move {
        published_event_types(nats)
            .await
            .iter()
            .filter(|t| t.as_str() == "events.UserCreated")
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(10), || async { created().await >= 2 }).await,
        "{:?}",
        published_event_types(&c.nats).await
    );
    // marie and einstein, once each.
    assert_eq!(created().await, 2);
    // Redis holds oCIS's layout: the claims cache under its (empty) table, the state under
    // `gatehouse-state:`.
    let master = c.redis.master_addr();
    let keys = c.redis.cli(&master, &["KEYS", "gatehouse-state:*"]);
    assert!(
        !keys.is_empty() && keys != "(nil)",
        "no state keys in Redis"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_back_channel_logout_on_one_node_ends_the_session_on_all_within_100ms() {
    let c = cluster(&[]).await;
    let session = c
        .idp
        .user_token("marie", TokenOptions::jwt().sid("session-to-end"))
        .await;
    let end = bearer(session.access_token());
    for node in &c.nodes {
        for _ in 0..2 {
            let r = get_with(&node.url("/warm"), &[("authorization", &end)]).await;
            assert_eq!(r.status, 200, "{}", node.logs());
        }
    }
    let (status, _) = c
        .idp
        .backchannel_logout(
            &c.nodes[0].url("/backchannel_logout"),
            Some("session-to-end"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let done = Instant::now();
    let mut refused_after = Vec::new();
    for node in &c.nodes[1..] {
        loop {
            let r = get_with(&node.url("/after"), &[("authorization", &end)]).await;
            if r.status == 401 {
                refused_after.push(done.elapsed());
                break;
            }
            assert_eq!(r.status, 200);
            assert!(
                done.elapsed() < Duration::from_secs(5),
                "the session still works on a peer 5 s after the logout"
            );
        }
    }
    println!("peers refused the ended session after {refused_after:?}");
    assert!(
        refused_after
            .iter()
            .all(|d| *d < Duration::from_millis(100)),
        "peers took {refused_after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_failover_under_load_costs_cached_sessions_nothing() {
    let mut c = cluster(&[]).await;
    let cached = c.idp.user_token("marie", TokenOptions::jwt()).await;
    let cached = bearer(cached.access_token());
    for node in &c.nodes {
        let r = get_with(&node.url("/warm"), &[("authorization", &cached)]).await;
        assert_eq!(r.status, 200, "{}", node.logs());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for node in &c.nodes {
        let url = node.url("/load");
        let (stop, failures, sent, auth) = (
            Arc::clone(&stop),
            Arc::clone(&failures),
            Arc::clone(&sent),
            cached.clone(),
        );
        load.push(tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let r = get_with(&url, &[("authorization", &auth)]).await;
                slowest = slowest.max(t0.elapsed());
                sent.fetch_add(1, Ordering::Relaxed);
                if r.status != 200 {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
            slowest
        }));
    }
    let took = tokio::task::block_in_place(|| c.redis.fail_over());
    // New logins need the store: they work again once the nodes found the new master.
    let killed = Instant::now();
    let (idp, nodes) = (&c.idp, &c.nodes);
    for node in nodes {
        assert!(
            wait_until(Duration::from_secs(15), || async move {
                let fresh = idp.user_token("einstein", TokenOptions::jwt()).await;
                get_with(
                    &node.url("/fresh"),
                    &[("authorization", &bearer(fresh.access_token()))],
                )
                .await
                .status
                    == 200
            })
            .await,
            "no new login after the failover: {}",
            node.logs()
        );
    }
    let logins_back = killed.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut slowest = Duration::ZERO;
    for task in load {
        slowest = slowest.max(task.await.unwrap());
    }
    println!(
        "failover took {took:?}; new logins on every node {logins_back:?} after it; {} cached \
         requests, {} failed, slowest {slowest:?}",
        sent.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed)
    );
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "a cached session failed"
    );
    assert!(slowest < Duration::from_millis(500), "{slowest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_a_redis_outage_cached_sessions_work_and_new_logins_are_answered_at_once() {
    let mut c = cluster(&[]).await;
    let cached = c.idp.user_token("marie", TokenOptions::jwt()).await;
    let cached = bearer(cached.access_token());
    for node in &c.nodes {
        let r = get_with(&node.url("/warm"), &[("authorization", &cached)]).await;
        assert_eq!(r.status, 200, "{}", node.logs());
    }
    let metrics = |node: &GatehouseNode| {
        let url = node.debug_url("/metrics");
        async move { gatehouse_tests::client::get(&url).await.text() }
    };
    let connected = r#"gatehouse_redis_connected{client="state"} 1"#;
    assert!(metrics(&c.nodes[0]).await.contains(connected));
    tokio::task::block_in_place(|| c.redis.kill_all_data());
    for node in &c.nodes {
        assert!(
            wait_until(Duration::from_secs(15), || async {
                metrics(node)
                    .await
                    .contains(r#"gatehouse_redis_connected{client="state"} 0"#)
            })
            .await
        );
    }
    let (slowest_cached, answers) =
        gatehouse_tests::store_outage_answers(&c.nodes, &c.idp, &cached, "einstein").await;
    println!("cached sessions: slowest {slowest_cached:?}; new logins: {answers:?}");
    for (status, retry_after, took) in &answers {
        assert!(
            *status == 503 && *retry_after,
            "a new login during the outage: {answers:?}"
        );
        assert!(*took < Duration::from_millis(500), "{answers:?}");
    }
    assert!(
        slowest_cached < Duration::from_millis(500),
        "{slowest_cached:?}"
    );

    // Redis back: the nodes reconnect by themselves and new logins work.
    tokio::task::block_in_place(|| {
        c.redis.restart_data(0);
        c.redis.restart_data(1);
    });
    let (idp, node) = (&c.idp, &c.nodes[0]);
    assert!(
        wait_until(Duration::from_secs(20), || async move {
            let fresh = idp.user_token("einstein", TokenOptions::jwt()).await;
            get_with(
                &node.url("/again"),
                &[("authorization", &bearer(fresh.access_token()))],
            )
            .await
            .status
                == 200
        })
        .await,
        "{}",
        node.logs()
    );
    let text = metrics(node).await;
    assert!(text.contains(connected), "{text}");
    assert!(
        text.contains(r#"gatehouse_redis_reconnects_total{client="state"} 1"#),
        "{text}"
    );
}
