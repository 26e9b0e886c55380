//! Traces across a cluster: three gateway nodes on a real 3-node NATS JetStream cluster with a
//! real OpenID provider, exporting to the harness's OTLP receiver. A first OIDC login is one trace
//! showing the IdP calls, the state-store round trips, the provisioning and the events it caused
//! (whose trace context is read back from JetStream); the same token on another node costs no
//! IdP call; a back-channel logout received by one node shows up on the others, linked to it.

use std::time::Duration;

use gatehouse_tests::client::{bearer, get_with};
use gatehouse_tests::idp::{Idp, TokenOptions};
use gatehouse_tests::nats::NatsCluster;
use gatehouse_tests::node::{GatehouseNode, NodeOptions};
use gatehouse_tests::otlp::{Kind, OtlpReceiver, RecordedSpan};
use gatehouse_tests::upstream::Upstream;

const ARRIVAL: Duration = Duration::from_secs(15);

struct Cluster {
    nats: NatsCluster,
    idp: Idp,
    otlp: OtlpReceiver,
    _up: Upstream,
    nodes: Vec<GatehouseNode>,
}

async fn cluster() -> Cluster {
    let nats = NatsCluster::start(3);
    let idp = Idp::start();
    let otlp = OtlpReceiver::start().await;
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
token_manager: {{jwt_secret: cluster-trace-secret}}
tracing: {{enabled: true, type: otlp, endpoint: \"127.0.0.1:{port}\"}}
",
        up = up.url(),
        iss = idp.issuer(),
        port = otlp.grpc_port(),
    );
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(
            GatehouseNode::start_with(
                NodeOptions::new(&yaml).env("PROXY_NODE_ID", &format!("node-{i}")),
            )
            .await,
        );
    }
    Cluster {
        nats,
        idp,
        otlp,
        _up: up,
        nodes,
    }
}

async fn server_span(otlp: &OtlpReceiver, request_id: &str) -> RecordedSpan {
    otlp.wait_span(ARRIVAL, |s| {
        s.kind == Kind::Server && s.attr_str("request_id") == Some(request_id)
    })
    .await
    .unwrap_or_else(|| panic!("no SERVER span for {request_id}: {:#?}", otlp.spans()))
}

/// Every event on `main-queue` with its NATS headers: `(event type, metadata traceparent,
/// header traceparent)`.
async fn published_events(nats: &NatsCluster) -> Vec<(String, String, Option<String>)> {
    let client = async_nats::connect(nats.client_urls()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let Ok(name) = js.stream_by_subject("main-queue").await else {
        return Vec::new();
    };
    let mut stream = js.get_stream(name).await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        let Ok(msg) = stream.get_raw_message(seq).await else {
            continue;
        };
        let envelope: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
        let header = msg
            .headers
            .get("traceparent")
            .map(|v| v.as_str().to_owned());
        out.push((
            envelope["Metadata"]["eventtype"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            envelope["Metadata"]["traceparent"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            header,
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_first_login_is_one_trace_with_the_idp_the_store_and_its_events() {
    let c = cluster().await;
    let token = c.idp.user_token("einstein", TokenOptions::jwt()).await;
    let auth = bearer(token.access_token());
    let reply = get_with(
        &c.nodes[0].url("/first"),
        &[("authorization", &auth), ("x-request-id", "login-1")],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", c.nodes[0].logs());

    let server = server_span(&c.otlp, "login-1").await;
    let trace_id = server.trace_id.clone();
    // Everything the login caused ends before (or, for events, soon after) the response.
    assert!(
        c.otlp
            .wait_for(ARRIVAL, |spans| {
                let of = |name: &str| {
                    spans
                        .iter()
                        .any(|s| s.trace_id == trace_id && s.name.starts_with(name))
                };
                of("send main-queue") && of("provision user") && of("GET")
            })
            .await,
        "{}",
        c.otlp.tree(&trace_id)
    );
    let trace = c.otlp.trace(&trace_id);
    let tree = c.otlp.tree(&trace_id);
    assert!(trace.iter().all(|s| s.node() == "node-0"), "{tree}");
    assert_eq!(
        trace.iter().filter(|s| s.kind == Kind::Server).count(),
        1,
        "{tree}"
    );

    let authenticate = trace
        .iter()
        .find(|s| s.name == "authenticate")
        .expect(&tree);
    assert_eq!(
        authenticate.parent_span_id.as_deref(),
        Some(server.span_id.as_str())
    );
    assert_eq!(authenticate.attr_str("gatehouse.auth.method"), Some("oidc"));
    assert_eq!(
        authenticate.attr_str("gatehouse.auth.result"),
        Some("accepted")
    );

    let idp_calls: Vec<&str> = trace
        .iter()
        .filter(|s| s.kind == Kind::Client && s.attr_str("service.peer.name") == Some("idp"))
        .filter_map(|s| s.attr_str("gatehouse.idp.call"))
        .collect();
    for call in ["discovery", "jwks", "userinfo"] {
        assert!(
            idp_calls.contains(&call),
            "{call} missing: {idp_calls:?}\n{tree}"
        );
    }
    let kv: Vec<&RecordedSpan> = trace
        .iter()
        .filter(|s| s.attr_str("db.system.name") == Some("nats"))
        .collect();
    assert!(
        kv.iter().any(
            |s| s.attr_str("db.collection.name") == Some("cache-userinfo")
                && s.attr_str("db.operation.name") == Some("put")
        ),
        "the claims are written to the shared cache: {tree}"
    );
    assert!(
        kv.iter().any(
            |s| s.attr_str("db.collection.name") == Some("gatehouse-state")
                && s.attr_str("db.operation.name") == Some("create")
        ),
        "the provisioning lease: {tree}"
    );
    assert!(
        kv.iter()
            .all(|s| s.kind == Kind::Client && !s.attributes.contains_key("key")),
        "no raw keys"
    );

    let account = trace
        .iter()
        .find(|s| s.name == "resolve account")
        .expect(&tree);
    let provision = trace
        .iter()
        .find(|s| s.name == "provision user")
        .expect(&tree);
    assert_eq!(
        provision.parent_span_id.as_deref(),
        Some(account.span_id.as_str()),
        "{tree}"
    );
    assert_eq!(
        provision
            .attributes
            .get("gatehouse.account.created")
            .and_then(|v| v.as_bool()),
        Some(true)
    );
    assert!(
        account
            .attr_str("enduser.id")
            .is_some_and(|id| !id.is_empty())
    );
    assert!(trace.iter().any(|s| s.name == "assign role"), "{tree}");

    // The events: PRODUCER spans of this trace, whose context the bus carries.
    let producers: Vec<&RecordedSpan> = trace.iter().filter(|s| s.kind == Kind::Producer).collect();
    assert!(!producers.is_empty(), "{tree}");
    for p in &producers {
        assert_eq!(p.attr_str("messaging.system"), Some("nats"));
        assert_eq!(p.attr_str("messaging.destination.name"), Some("main-queue"));
        assert!(p.attr_str("messaging.message.id").is_some());
    }
    let events = published_events(&c.nats).await;
    let signed_in = events
        .iter()
        .find(|(t, _, _)| t.ends_with("UserSignedIn"))
        .unwrap_or_else(|| panic!("no UserSignedIn on main-queue: {events:?}"));
    let producer = producers
        .iter()
        .find(|p| {
            p.attr_str("gatehouse.event.type")
                .is_some_and(|t| t.ends_with("UserSignedIn"))
        })
        .expect(&tree);
    let want = format!("00-{trace_id}-{}-01", producer.span_id);
    assert_eq!(
        signed_in.1, want,
        "go-micro metadata carries the PRODUCER span"
    );
    assert_eq!(
        signed_in.2.as_deref(),
        Some(want.as_str()),
        "so do the NATS headers"
    );

    // The same token on another node: served from the shared cache, no IdP call in its trace.
    let reply = get_with(
        &c.nodes[1].url("/second"),
        &[("authorization", &auth), ("x-request-id", "login-2")],
    )
    .await;
    assert_eq!(reply.status, 200);
    let other = server_span(&c.otlp, "login-2").await;
    assert_eq!(other.node(), "node-1");
    assert_ne!(other.trace_id, trace_id);
    let second = c.otlp.trace(&other.trace_id);
    assert!(
        second
            .iter()
            .all(|s| s.attr_str("service.peer.name") != Some("idp")),
        "{}",
        c.otlp.tree(&other.trace_id)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_logout_received_by_one_node_is_applied_by_every_node_linked_to_its_trace() {
    let c = cluster().await;
    let token = c
        .idp
        .user_token("marie", TokenOptions::jwt().sid("traced-session"))
        .await;
    let auth = bearer(token.access_token());
    assert_eq!(
        get_with(&c.nodes[0].url("/in"), &[("authorization", &auth)])
            .await
            .status,
        200
    );

    let (status, body) = c
        .idp
        .backchannel_logout(
            &c.nodes[2].url("/backchannel_logout"),
            Some("traced-session"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let logout = c
        .otlp
        .wait_span(ARRIVAL, |s| {
            s.kind == Kind::Server && s.attr_str("url.path") == Some("/backchannel_logout")
        })
        .await
        .expect("the logout request's span");
    assert_eq!(logout.node(), "node-2");
    // Every node drops its memos in reaction, in a trace of its own linked to the logout.
    assert!(
        c.otlp
            .wait_for(ARRIVAL, |spans| {
                (0..3).all(|i| {
                    spans.iter().any(|s| {
                        s.name == "apply logout"
                            && s.node() == format!("node-{i}")
                            && s.links.iter().any(|l| l.trace_id == logout.trace_id)
                    })
                })
            })
            .await,
        "{:#?}",
        c.otlp
            .spans()
            .into_iter()
            .filter(|s| s.name == "apply logout")
            .collect::<Vec<_>>()
    );
    let applied = c
        .otlp
        .spans()
        .into_iter()
        .find(|s| s.name == "apply logout" && s.node() == "node-0")
        .unwrap();
    assert_eq!(applied.kind, Kind::Consumer);
    assert_ne!(applied.trace_id, logout.trace_id);
    assert_eq!(
        applied.links[0]
            .attributes
            .get("gatehouse.link.cause")
            .and_then(|v| v.as_str()),
        Some("logout")
    );
    // And the session is over on the node that first served it.
    assert_eq!(
        get_with(&c.nodes[0].url("/out"), &[("authorization", &auth)])
            .await
            .status,
        401
    );
}
