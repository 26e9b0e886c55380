//! The compose cluster really runs: `compose/docker-compose.test.yml` (the operators' cluster with
//! local images and host networking) is started under a real Docker engine with
//! `docker-compose`, a user logs in at the IdP container, and requests go through the HAProxy
//! container to the three gateway containers and on to the demo backend container, which says
//! what it received. A trace of a request reaches the OTLP receiver, every node exposes its
//! metrics, and a gateway container killed with SIGKILL under load costs no request.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use gatehouse_tests::client::{bearer, get, get_with};
use gatehouse_tests::compose::{
    self, ComposeCluster, IDP, ISSUER, JWT_SECRET, LB, LB_STATS, NODES,
};
use gatehouse_tests::haproxy::server_states_at;
use gatehouse_tests::idp::{TokenOptions, password_token_at};
use gatehouse_tests::otlp::{Kind, OtlpReceiver};
use serde_json::Value;

const START: Duration = Duration::from_secs(120);

/// `(server, status)` of the gateway nodes as the load balancer sees them.
async fn lb_states() -> Vec<(String, String)> {
    server_states_at(LB_STATS, "gatehouse", "gatehouse-").await
}

async fn lb_reports(server: &str, status: &str, within: Duration) -> bool {
    gatehouse_tests::wait_until(within, || async {
        lb_states()
            .await
            .iter()
            .any(|(s, st)| s == server && st.split(' ').next() == Some(status))
    })
    .await
}

/// What the demo backend answered, checked: the route's service, and an `x-access-token` that
/// the backend verified with the shared secret and that speaks for `user`. Verified here too.
fn backend_saw(reply_body: &[u8], service: &str, user: &str) -> Value {
    let seen: Value = serde_json::from_slice(reply_body)
        .unwrap_or_else(|e| panic!("demo backend answer is not JSON ({e}): {reply_body:?}"));
    assert_eq!(seen["service"], service, "{seen:#}");
    let token = &seen["x_access_token"];
    assert_eq!(token["verified"], true, "{seen:#}");
    assert_eq!(token["claims"]["user"]["username"], user, "{seen:#}");
    let raw = seen["headers"]["x-access-token"]
        .as_str()
        .expect("token header");
    let claims =
        gatehouse_shared::token::verify(JWT_SECRET.as_bytes(), raw, Duration::from_secs(5))
            .expect("x-access-token signed with OCIS_JWT_SECRET");
    assert_eq!(claims.iss, ISSUER);
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn the_compose_cluster_serves_through_its_load_balancer_and_survives_a_killed_node() {
    let otlp = OtlpReceiver::start().await;
    let cluster = ComposeCluster::start(&format!("127.0.0.1:{}", otlp.grpc_port()));
    let gateways: Vec<&str> = NODES.iter().map(|n| n.0).collect();
    assert!(
        cluster.wait_healthy(&gateways, START).await,
        "gateway containers not healthy within {START:?}:\n{}",
        cluster.logs()
    );
    for (name, _, _) in NODES {
        assert!(
            lb_reports(name, "UP", START).await,
            "the load balancer never saw {name} ready: {:?}\n{}",
            lb_states().await,
            cluster.logs()
        );
    }
    for (name, _, _) in NODES {
        let user = compose::inspect(&cluster.container(name), "{{.Config.User}}");
        assert_eq!(user, "10001:10001", "{name} runs as a non-root user");
    }

    // Without credentials the gateway answers like oCIS, through the load balancer.
    let anonymous = get(&format!("http://{LB}/graph/v1.0/me")).await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.text());

    let token = password_token_at(
        &format!("http://{IDP}/token"),
        "einstein",
        "relativity",
        TokenOptions::jwt(),
    )
    .await;
    assert!(token.is_success(), "{:?}", token.body);
    assert_eq!(token.access_claims()["iss"], ISSUER);
    let auth = bearer(token.access_token());

    // Every node forwards with a valid x-access-token, first login included (auto-provisioned).
    for (name, http, _) in NODES {
        let reply = get_with(
            &format!("http://{http}/remote.php/dav/spaces/x"),
            &[("authorization", &auth)],
        )
        .await;
        assert_eq!(
            reply.status,
            200,
            "{name}: {}\n{}",
            reply.text(),
            cluster.logs()
        );
        backend_saw(&reply.body, "ocdav", "einstein");
    }

    // Through the load balancer, with the trace of one request followed to the receiver.
    let reply = get_with(
        &format!("http://{LB}/graph/v1.0/me"),
        &[
            ("authorization", &auth),
            ("x-request-id", "compose-trace-1"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = backend_saw(&reply.body, "graph", "einstein");
    let server = otlp
        .wait_span(Duration::from_secs(20), |s| {
            s.kind == Kind::Server && s.attr_str("request_id") == Some("compose-trace-1")
        })
        .await
        .unwrap_or_else(|| panic!("no SERVER span of the request: {:#?}", otlp.spans()));
    assert!(
        gateways.contains(&server.node()),
        "service.instance.id {:?}",
        server.node()
    );
    let traceparent = seen["headers"]["traceparent"]
        .as_str()
        .expect("traceparent");
    assert!(
        traceparent.contains(&server.trace_id),
        "the backend got {traceparent}, the trace is {}",
        server.trace_id
    );
    assert!(
        otlp.wait_for(Duration::from_secs(20), |spans| spans
            .iter()
            .any(|s| s.trace_id == server.trace_id && s.kind == Kind::Client))
            .await,
        "no upstream CLIENT span: {}",
        otlp.tree(&server.trace_id)
    );

    for (name, _, debug) in NODES {
        let metrics = get(&format!("http://{debug}/metrics")).await.text();
        assert!(
            metrics.contains(&format!("gatehouse_node_info{{node_id=\"{name}\"")),
            "{name} metrics: {metrics}"
        );
        assert!(metrics.contains("gatehouse_nats_connected"), "{name}");
    }

    // SIGKILL one gateway container in the middle of a steady load through the load balancer:
    // every request still succeeds (HAProxy retries what the dead node dropped elsewhere).
    const LOOPS: usize = 4;
    const PER_LOOP: usize = 400;
    let done = Arc::new(AtomicUsize::new(0));
    let mut loops = Vec::new();
    for l in 0..LOOPS {
        let (auth, done) = (auth.clone(), done.clone());
        loops.push(tokio::spawn(async move {
            let mut failed = Vec::new();
            for i in 0..PER_LOOP {
                let reply = get_with(
                    &format!("http://{LB}/graph/v1.0/me/drive?l={l}&i={i}"),
                    &[("authorization", &auth)],
                )
                .await;
                if reply.status != 200 {
                    failed.push((reply.status.as_u16(), reply.text()));
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
            failed
        }));
    }
    let victim = cluster.container("gatehouse-2");
    assert!(
        gatehouse_tests::wait_until(Duration::from_secs(60), || async {
            done.load(Ordering::SeqCst) >= LOOPS * PER_LOOP / 5
        })
        .await,
        "the load did not get going"
    );
    compose::kill_container(&victim);
    let at_kill = done.load(Ordering::SeqCst);
    let mut failed = Vec::new();
    for l in loops {
        failed.extend(l.await.unwrap());
    }
    assert!(
        LOOPS * PER_LOOP - at_kill >= LOOPS * PER_LOOP / 2,
        "the kill came too late to be under load ({at_kill} requests before it)"
    );
    assert!(
        failed.is_empty(),
        "{} of {} requests failed around the kill: {:?}",
        failed.len(),
        LOOPS * PER_LOOP,
        &failed[..failed.len().min(5)]
    );
    assert_eq!(cluster.state("gatehouse-2").0, "exited");
    assert!(
        lb_reports("gatehouse-2", "DOWN", Duration::from_secs(10)).await,
        "{:?}",
        lb_states().await
    );

    // Started again, the node rejoins and serves the same session without a new login.
    cluster.start_service("gatehouse-2");
    assert!(
        lb_reports("gatehouse-2", "UP", START).await,
        "gatehouse-2 did not rejoin: {:?}\n{}",
        lb_states().await,
        cluster.service_logs("gatehouse-2")
    );
    let reply = get_with(
        &format!("http://{}/graph/v1.0/me", NODES[1].1),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    backend_saw(&reply.body, "graph", "einstein");
}
