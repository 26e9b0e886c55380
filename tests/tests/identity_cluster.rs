//! Identity on a cluster: three gateway nodes sharing the claims cache, accounts, provisioning
//! leases and group-sync marks through a real 3-node NATS JetStream cluster, with a real OpenID
//! provider and (for the `graph` backend) the LibreGraph fixture: shared claims cache, exactly-once
//! provisioning and group sync, signing keys issued once for the whole cluster, and a back-channel
//! logout received by one node taking effect on all of them.

use std::time::{Duration, Instant, SystemTime};

use gatehouse_shared::token::verify;
use gatehouse_tests::client::{bearer, get, get_with};
use gatehouse_tests::graph::GraphFixture;
use gatehouse_tests::idp::{Idp, TokenOptions};
use gatehouse_tests::nats::{NatsCluster, published_event_types};
use gatehouse_tests::node::{GatehouseNode, NodeOptions};
use gatehouse_tests::signing::{Link, sign};
use gatehouse_tests::upstream::Upstream;
use gatehouse_tests::wait_until;

const SECRET: &str = "cluster-test-secret";

struct Cluster {
    nats: NatsCluster,
    idp: Idp,
    up: Upstream,
    nodes: Vec<GatehouseNode>,
}

/// `backend` is further YAML, e.g. selecting the account backend (empty: builtin); `@ADDRESSES@`
/// in it becomes the NATS client addresses. Store operations get
/// 2 s instead of the production 200 ms: these tests check exactly-once behaviour on a shared
/// 2-core machine, not latency, and a timed-out store call is (correctly) a 503.
async fn cluster(backend: &str, env: &[(&str, &str)]) -> Cluster {
    let nats = NatsCluster::start(3);
    let idp = Idp::start();
    let up = Upstream::start("backend").await;
    let addresses = nats
        .client_urls()
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let events = nats.client_url(0).trim_start_matches("nats://").to_owned();
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
  user_info_cache: {{store: nats-js-kv, addresses: [{addresses}], replicas: 3, op_timeout: 2s}}
state_store: {{store: nats-js-kv, addresses: [{addresses}], replicas: 3, op_timeout: 2s}}
events: {{endpoint: \"{events}\", stream_replicas: 3}}
auto_provision_accounts: true
token_manager: {{jwt_secret: {SECRET}}}
{backend}",
        up = up.url(),
        iss = idp.issuer(),
        backend = backend.replace("@ADDRESSES@", &addresses),
    );
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let mut opts = NodeOptions::new(&yaml);
        for (k, v) in env {
            opts = opts.env(k, v);
        }
        nodes.push(GatehouseNode::start_with(opts).await);
    }
    Cluster {
        nats,
        idp,
        up,
        nodes,
    }
}

/// `n` fresh JWTs of `user`, sent at the same moment, spread round-robin over the nodes; the
/// statuses in token order.
async fn first_logins(c: &Cluster, user: &str, n: usize) -> Vec<u16> {
    let mut tokens = Vec::new();
    for _ in 0..n {
        let t = c.idp.user_token(user, TokenOptions::jwt()).await;
        tokens.push(t.access_token().to_owned());
    }
    let tasks: Vec<_> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let url = c.nodes[i % c.nodes.len()].url(&format!("/login/{i}"));
            let auth = bearer(t);
            tokio::spawn(async move { get_with(&url, &[("authorization", &auth)]).await.status })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.expect("login task").as_u16());
    }
    statuses
}

/// The user id inside every `x-access-token` the upstream received.
fn backend_user_ids(up: &Upstream) -> Vec<String> {
    up.requests()
        .iter()
        .map(|r| {
            let token = r.headers["x-access-token"].to_str().unwrap();
            let claims = verify(SECRET.as_bytes(), token, Duration::from_secs(5)).unwrap();
            claims.user.id.unwrap().opaque_id
        })
        .collect()
}

#[tokio::test]
async fn a_token_validated_on_one_node_is_a_cache_hit_on_the_others() {
    // An opaque token, so that every validation is a visible userinfo call at the IdP.
    let c = cluster("", &[("PROXY_OIDC_ACCESS_TOKEN_VERIFY_METHOD", "none")]).await;
    let t = c.idp.user_token("marie", TokenOptions::opaque()).await;
    c.idp.reset_stats().await;
    let auth = bearer(t.access_token());
    let r = get_with(&c.nodes[0].url("/a"), &[("authorization", &auth)]).await;
    assert_eq!(r.status, 200, "{}", c.nodes[0].logs());
    assert_eq!(c.idp.count("/me").await, 1);
    for (i, node) in c.nodes.iter().enumerate().skip(1) {
        let r = get_with(&node.url("/b"), &[("authorization", &auth)]).await;
        assert_eq!(r.status, 200, "node {i}: {}", node.logs());
    }
    assert_eq!(
        c.idp.count("/me").await,
        1,
        "nodes 2 and 3 used the shared cache"
    );
    let ids = backend_user_ids(&c.up);
    assert_eq!(ids.len(), 3);
    assert!(ids.iter().all(|id| id == &ids[0]), "one account: {ids:?}");
}

#[tokio::test]
async fn fifty_simultaneous_first_logins_create_the_user_once() {
    let c = cluster("", &[("PROXY_OIDC_SKIP_USER_INFO", "true")]).await;
    let statuses = first_logins(&c, "marie", 50).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let ids = backend_user_ids(&c.up);
    assert_eq!(ids.len(), 50);
    assert!(ids.iter().all(|id| id == &ids[0]), "one account: {ids:?}");

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let types = loop {
        let types = published_event_types(&c.nats).await;
        let signed_in = types.iter().filter(|t| *t == "events.UserSignedIn").count();
        if signed_in >= 50 || std::time::Instant::now() > deadline {
            break types;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        types.iter().filter(|t| *t == "events.UserSignedIn").count(),
        50,
        "{types:?}"
    );
    assert_eq!(
        types.iter().filter(|t| *t == "events.UserCreated").count(),
        1,
        "{types:?}"
    );
    // marie's four groups, each created once.
    assert_eq!(
        types.iter().filter(|t| *t == "events.GroupCreated").count(),
        4,
        "{types:?}"
    );
}

#[tokio::test]
async fn graph_provisioning_and_group_sync_happen_once_cluster_wide() {
    let graph = GraphFixture::start().await;
    graph.set_delay(Duration::from_millis(20));
    let backend = format!(
        "account_backend: graph\ngraph: {{url: \"{}\"}}\n\
         service_account: {{service_account_id: gatehouse-sa, service_account_secret: s}}\n",
        graph.url()
    );
    let c = cluster(&backend, &[("PROXY_OIDC_SKIP_USER_INFO", "true")]).await;
    let statuses = first_logins(&c, "einstein", 9).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(graph.count("POST", "/users"), 1, "{:#?}", graph.calls());
    // One sync for the whole cluster: each of einstein's four groups is created and joined once.
    // A second sync racing the first would find the memberships missing and add them again.
    assert_eq!(
        graph.count("POST", "/groups"),
        8,
        "4 groups + 4 memberships: {:#?}",
        graph.calls()
    );
    let joins = graph
        .calls()
        .iter()
        .filter(|c| c.method == "POST" && c.path.ends_with("/members/$ref"))
        .count();
    assert_eq!(joins, 4, "{:#?}", graph.calls());
    let user = graph.user_by_name("einstein").expect("provisioned");
    let mut groups = graph.group_names_of(&user.id);
    groups.sort();
    assert_eq!(
        groups,
        ["physics-lovers", "sailing-lovers", "users", "violin-haters"]
    );
}

#[tokio::test]
async fn signing_keys_are_issued_once_and_signed_urls_work_on_every_node() {
    let c = cluster(
        "pre_signed_url:
  serve_signing_keys: true
  signing_keys: {store: nats-js-kv, addresses: [@ADDRESSES@], replicas: 3, op_timeout: 2s}
",
        &[],
    )
    .await;
    let t = c.idp.user_token("einstein", TokenOptions::jwt()).await;
    let auth = bearer(t.access_token());
    let r = get_with(&c.nodes[0].url("/first"), &[("authorization", &auth)]).await;
    assert_eq!(r.status, 200, "{}", c.nodes[0].logs());

    // Every node asked at the same moment for a key that does not exist yet: one key.
    let tasks: Vec<_> = c
        .nodes
        .iter()
        .map(|n| {
            let url = n.url("/ocs/v1.php/cloud/user/signing-key");
            let auth = auth.clone();
            tokio::spawn(async move { get_with(&url, &[("authorization", &auth)]).await })
        })
        .collect();
    let mut keys = Vec::new();
    for task in tasks {
        let r = task.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        keys.push(v["ocs"]["data"]["signing-key"].as_str().unwrap().to_owned());
    }
    assert!(
        keys.iter().all(|k| k == &keys[0] && k.len() == 128),
        "{keys:?}"
    );

    // A link signed with it works on every node (each signed for the Host it is sent to).
    for (i, node) in c.nodes.iter().enumerate() {
        let host = node.http.to_string();
        let url = sign(
            &Link {
                host: &host,
                path: "/files/shared.pdf",
                params: "",
                user: "einstein",
                verb: "GET",
                signed_at: SystemTime::now(),
                expires: Duration::from_secs(300),
            },
            &keys[0],
        );
        let r = get(&node.url(&url)).await;
        assert_eq!(r.status, 200, "node {i}: {}\n{}", r.text(), node.logs());
    }
}

#[tokio::test]
async fn a_back_channel_logout_on_one_node_ends_the_session_on_all_within_100ms() {
    let c = cluster("", &[]).await;
    let session = c
        .idp
        .user_token("marie", TokenOptions::jwt().sid("session-to-end"))
        .await;
    let other = c
        .idp
        .user_token("marie", TokenOptions::jwt().sid("session-to-keep"))
        .await;
    let (end, keep) = (bearer(session.access_token()), bearer(other.access_token()));
    // Every node has the session cached and memoised.
    for _ in 0..3 {
        for node in &c.nodes {
            for auth in [&end, &keep] {
                let r = get_with(&node.url("/warm"), &[("authorization", auth)]).await;
                assert_eq!(r.status, 200, "{}", node.logs());
            }
        }
    }

    let target = c.nodes[0].url("/backchannel_logout");
    // The bound is for a cluster in its steady state: on a bucket created a moment ago the
    // stream's replicas may still be settling (a fresh run once saw 190 ms for the very first
    // logout). A throwaway session's logout, waited for without a bound, gets past that.
    let warm = c
        .idp
        .user_token("marie", TokenOptions::jwt().sid("warm-up"))
        .await;
    let warm = bearer(warm.access_token());
    for node in &c.nodes {
        let r = get_with(&node.url("/warm"), &[("authorization", &warm)]).await;
        assert_eq!(r.status, 200);
    }
    let (status, _) = c
        .idp
        .backchannel_logout(&target, Some("warm-up"), None)
        .await;
    assert_eq!(status, 200);
    for node in &c.nodes[1..] {
        let warm = &warm;
        assert!(
            wait_until(Duration::from_secs(5), || async move {
                get_with(&node.url("/warm"), &[("authorization", warm)])
                    .await
                    .status
                    == 401
            })
            .await
        );
    }

    let (status, body) = c
        .idp
        .backchannel_logout(&target, Some("session-to-end"), None)
        .await;
    assert_eq!((status, body.trim()), (200, "null"));
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
    // It stays ended (the JWT itself is still valid), and the other session is untouched.
    for node in &c.nodes {
        let r = get_with(&node.url("/later"), &[("authorization", &end)]).await;
        assert_eq!(r.status, 401);
        let r = get_with(&node.url("/later"), &[("authorization", &keep)]).await;
        assert_eq!(r.status, 200);
    }

    // Logout by subject (which oCIS does not support) ends every session of the user.
    let sub = session.access_claims()["sub"].as_str().unwrap().to_owned();
    let (status, _) = c
        .idp
        .backchannel_logout(&c.nodes[2].url("/backchannel_logout"), None, Some(&sub))
        .await;
    assert_eq!(status, 200);
    let done = Instant::now();
    for node in &c.nodes {
        loop {
            let r = get_with(&node.url("/sub"), &[("authorization", &keep)]).await;
            if r.status == 401 {
                break;
            }
            assert!(
                done.elapsed() < Duration::from_millis(100),
                "sub logout too slow"
            );
        }
    }
    // A login after the logout works. Tokens issued in the logout's second (`iat` has one-second
    // resolution) are refused too, so a fresh token may need the next second.
    let node = &c.nodes[1];
    let idp = &c.idp;
    assert!(
        wait_until(Duration::from_secs(3), || async move {
            let fresh = idp.user_token("marie", TokenOptions::jwt()).await;
            let auth = bearer(fresh.access_token());
            get_with(&node.url("/fresh"), &[("authorization", &auth)])
                .await
                .status
                == 200
        })
        .await,
        "a token issued after the logout is accepted"
    );

    // A forged logout token is refused and ends nothing.
    let r = gatehouse_tests::client::send(
        "POST",
        &target,
        &[("content-type", "application/x-www-form-urlencoded")],
        gatehouse_tests::client::full("logout_token=eyJhbGciOiJub25lIn0.e30."),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    // One event per ended session: the warm-up, the sid logout and the subject logout (one
    // session left).
    let nats = &c.nats;
    assert!(
        wait_until(Duration::from_secs(5), || async move {
            published_event_types(nats)
                .await
                .iter()
                .filter(|t| t.as_str() == "events.BackchannelLogout")
                .count()
                == 3
        })
        .await,
        "{:?}",
        published_event_types(&c.nats).await
    );
}

/// One request of the hammer: when it started and ended, and how it was answered.
struct Shot {
    node: usize,
    started: Instant,
    ended: Instant,
    status: u16,
}

#[tokio::test]
async fn an_ended_session_hammered_on_every_node_during_its_logout_never_comes_back() {
    let c = cluster("", &[]).await;
    let session = c
        .idp
        .user_token("marie", TokenOptions::jwt().sid("hammered"))
        .await;
    let auth = bearer(session.access_token());
    for _ in 0..3 {
        for node in &c.nodes {
            let r = get_with(&node.url("/warm"), &[("authorization", &auth)]).await;
            assert_eq!(r.status, 200, "{}", node.logs());
        }
    }

    // Four sequential request loops per node, running through the logout and after it.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut loops = Vec::new();
    for (n, node) in c.nodes.iter().enumerate() {
        for _ in 0..4 {
            let (url, auth, stop) = (node.url("/hammer"), auth.clone(), stop.clone());
            loops.push(tokio::spawn(async move {
                let mut shots = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let started = Instant::now();
                    let status = get_with(&url, &[("authorization", &auth)])
                        .await
                        .status
                        .as_u16();
                    shots.push(Shot {
                        node: n,
                        started,
                        ended: Instant::now(),
                        status,
                    });
                }
                shots
            }));
        }
    }
    // Let every loop get going with the session still valid.
    let up = &c.up;
    let warm = up.count();
    assert!(wait_until(Duration::from_secs(5), || async { up.count() > warm + 50 }).await);

    let logout_node = 1;
    let (status, body) = c
        .idp
        .backchannel_logout(
            &c.nodes[logout_node].url("/backchannel_logout"),
            Some("hammered"),
            None,
        )
        .await;
    assert_eq!((status, body.trim()), (200, "null"));
    let done = Instant::now();
    // Keep hammering for longer than the memo lives (2 s), where a resurrected session would show.
    let until = done + Duration::from_millis(2500);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut shots = Vec::new();
    for l in loops {
        shots.extend(l.await.unwrap());
    }

    let after = |s: &Shot| s.started > done;
    assert!(
        shots.iter().all(|s| s.status == 200 || s.status == 401),
        "only 200 and 401 expected"
    );
    assert!(
        shots.iter().filter(|s| after(s)).count() > 100,
        "too little load after the logout"
    );
    let late: Vec<_> = shots
        .iter()
        .filter(|s| s.status == 200 && s.started > done + Duration::from_millis(100))
        .map(|s| (s.node, s.started - done))
        .collect();
    assert!(
        late.is_empty(),
        "accepted {} times more than 100 ms after the logout, first: {:?}",
        late.len(),
        &late[..late.len().min(10)]
    );
    let on_logout_node: Vec<_> = shots
        .iter()
        .filter(|s| s.node == logout_node && s.status == 200 && after(s))
        .map(|s| s.started - done)
        .collect();
    assert!(
        on_logout_node.is_empty(),
        "the node that ended the session accepted it {} times afterwards, first: {:?}",
        on_logout_node.len(),
        &on_logout_node[..on_logout_node.len().min(10)]
    );
    // Once a node has refused the session, no request it starts later is accepted.
    for n in 0..c.nodes.len() {
        let first_refusal = shots
            .iter()
            .filter(|s| s.node == n && s.status == 401)
            .map(|s| s.ended)
            .min()
            .unwrap_or_else(|| panic!("node {n} never refused the session"));
        let back: Vec<_> = shots
            .iter()
            .filter(|s| s.node == n && s.status == 200 && s.started > first_refusal)
            .map(|s| s.started - first_refusal)
            .collect();
        assert!(
            back.is_empty(),
            "node {n} accepted the ended session {} times after refusing it, first: {:?}",
            back.len(),
            &back[..back.len().min(10)]
        );
    }
    let refused_after: Vec<_> = (0..c.nodes.len())
        .map(|n| {
            shots
                .iter()
                .filter(|s| s.node == n && s.status == 401)
                .map(|s| s.ended.saturating_duration_since(done))
                .min()
        })
        .collect();
    println!(
        "{} requests during and after the logout; first refusal per node after {refused_after:?}",
        shots.len()
    );
}

#[tokio::test]
async fn during_a_nats_outage_cached_sessions_work_and_new_logins_are_answered_at_once() {
    let mut c = cluster("", &[]).await;
    let cached = c.idp.user_token("marie", TokenOptions::jwt()).await;
    let cached = bearer(cached.access_token());
    for node in &c.nodes {
        let r = get_with(&node.url("/warm"), &[("authorization", &cached)]).await;
        assert_eq!(r.status, 200, "{}", node.logs());
    }
    for i in 0..3 {
        c.nats.kill(i);
    }
    // A token no node has seen needs the shared stores, which are known to be down.
    let (slowest_cached, answers) =
        gatehouse_tests::store_outage_answers(&c.nodes, &c.idp, &cached, "einstein").await;
    println!("cached sessions: slowest {slowest_cached:?}; new logins: {answers:?}");
    for (status, retry_after, took) in &answers {
        assert!(
            *status == 200 || (*status == 503 && *retry_after),
            "a new login during the outage: {answers:?}"
        );
        assert!(*took < Duration::from_millis(500), "{answers:?}");
    }
    assert!(
        slowest_cached < Duration::from_millis(500),
        "{slowest_cached:?}"
    );
}
