//! Traces end to end: real `gatehouse` nodes exporting OTLP to the harness's real OTLP receiver,
//! recording upstreams that show the `traceparent` a backend receives, and the log lines that must
//! lead to the same trace. One node; trusted and untrusted callers; sampling at ratio 0; two nodes
//! in a chain; a 502; OTLP over HTTP with collector headers; a collector that is down or slow.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use gatehouse_tests::client::{get, get_from, get_with};
use gatehouse_tests::node::{GatehouseNode, NodeOptions};
use gatehouse_tests::otlp::{Behaviour, Kind, OtlpReceiver, Protocol, RecordedSpan, SpanStatus};
use gatehouse_tests::upstream::Upstream;
use gatehouse_tests::wait_until;

/// Spans leave a node in batches at most a second apart; this bounds the wait for them.
const ARRIVAL: Duration = Duration::from_secs(10);

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn client_traceparent(flags: &str) -> String {
    format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-{flags}")
}

fn routes(backend: &str) -> String {
    format!(
        "policies:
  - name: ocis
    routes:
      - endpoint: /
        backend: {backend}
        unprotected: true
"
    )
}

/// A node exporting to `otlp` over gRPC, named `node_id`.
fn traced(yaml: &str, otlp: &OtlpReceiver, node_id: &str) -> NodeOptions {
    NodeOptions::new(yaml)
        .traced_to(otlp)
        .env("PROXY_NODE_ID", node_id)
}

fn parse_traceparent(tp: &str) -> (String, String, String) {
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {tp:?}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

fn upstream_traceparent(up: &Upstream) -> Option<String> {
    up.last().and_then(|r| {
        r.headers
            .get("traceparent")
            .map(|v| v.to_str().unwrap().to_owned())
    })
}

async fn server_span(otlp: &OtlpReceiver, request_id: &str) -> RecordedSpan {
    server_span_on(otlp, request_id, None).await
}

/// The SERVER span of `request_id` (on `node` when given).
async fn server_span_on(otlp: &OtlpReceiver, request_id: &str, node: Option<&str>) -> RecordedSpan {
    otlp.wait_span(ARRIVAL, |s| {
        s.kind == Kind::Server
            && s.attr_str("request_id") == Some(request_id)
            && node.is_none_or(|n| s.node() == n)
    })
    .await
    .unwrap_or_else(|| panic!("no SERVER span for {request_id}: {:#?}", otlp.spans()))
}

/// The access-log line of `request_id` in the node's log.
fn access_line(node: &GatehouseNode, request_id: &str) -> serde_json::Value {
    node.access_log()
        .into_iter()
        .find(|l| l["request_id"] == request_id)
        .unwrap_or_else(|| panic!("no access-log line for {request_id}:\n{}", node.logs()))
}

#[tokio::test(flavor = "multi_thread")]
async fn one_request_is_one_server_span_and_one_upstream_span_seen_by_the_backend_and_the_log() {
    let otlp = OtlpReceiver::start().await;
    let up = Upstream::start("backend").await;
    let node = GatehouseNode::start_with(traced(&routes(&up.url()), &otlp, "node-a")).await;

    let reply = get_with(
        &node.url("/files/report.txt?OC-Signature=secret&x=1"),
        &[("x-request-id", "req-one"), ("user-agent", "trace-test/1")],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    let server = server_span(&otlp, "req-one").await;
    assert!(
        otlp.wait_for(ARRIVAL, |spans| spans
            .iter()
            .any(|s| s.parent_span_id.as_deref() == Some(&server.span_id)))
            .await
    );
    let trace = otlp.trace(&server.trace_id);
    let tree = otlp.tree(&server.trace_id);
    assert_eq!(trace.len(), 2, "{tree}");
    assert_eq!(
        trace.iter().filter(|s| s.kind == Kind::Server).count(),
        1,
        "exactly one SERVER span: {tree}"
    );
    assert_eq!(server.parent_span_id, None, "a new trace: {tree}");
    assert_eq!(server.name, "GET /");
    assert_eq!(server.attr_str("http.request.method"), Some("GET"));
    assert_eq!(server.attr_str("http.route"), Some("/"));
    assert_eq!(server.attr_str("url.path"), Some("/files/report.txt"));
    assert_eq!(
        server.attr_str("url.query"),
        Some("OC-Signature=REDACTED&x=1"),
        "secrets never reach the trace"
    );
    assert_eq!(server.attr_str("url.scheme"), Some("http"));
    assert_eq!(server.attr_i64("http.response.status_code"), Some(200));
    assert_eq!(server.attr_str("client.address"), Some("127.0.0.1"));
    assert_eq!(server.attr_str("network.peer.address"), Some("127.0.0.1"));
    assert_eq!(server.attr_str("user_agent.original"), Some("trace-test/1"));
    assert_eq!(
        server
            .attr_str("gatehouse.upstream")
            .map(|u| u.trim_end_matches('/')),
        Some(up.url().as_str())
    );
    assert_eq!(server.status, SpanStatus::Unset);
    assert_eq!(server.resource_str("service.name"), Some("proxy"));
    assert_eq!(server.node(), "node-a");
    assert!(server.resource_str("service.version").is_some());
    assert!(server.resource_str("host.name").is_some());
    assert_eq!(server.scope, "gatehouse");
    assert_eq!(server.protocol, Protocol::Grpc);

    let client = trace.iter().find(|s| s.kind == Kind::Client).expect(&tree);
    assert_eq!(
        client.parent_span_id.as_deref(),
        Some(server.span_id.as_str())
    );
    assert_eq!(client.name, "GET");
    assert_eq!(client.attr_str("server.address"), Some("127.0.0.1"));
    assert_eq!(
        client.attr_i64("server.port"),
        Some(i64::from(up.addr().port()))
    );
    assert_eq!(client.attr_i64("http.response.status_code"), Some(200));
    assert!(
        client
            .attr_str("url.full")
            .is_some_and(|u| u.contains("OC-Signature=REDACTED")),
        "{client:?}"
    );
    assert!(server.start_unix_nanos <= client.start_unix_nanos);
    assert!(client.end_unix_nanos <= server.end_unix_nanos, "{tree}");

    // The backend continues the upstream span.
    let (t, s, flags) = parse_traceparent(&upstream_traceparent(&up).expect("traceparent"));
    assert_eq!(
        (t.as_str(), s.as_str(), flags.as_str()),
        (server.trace_id.as_str(), client.span_id.as_str(), "01")
    );

    // The access-log line leads to the trace.
    let line = access_line(&node, "req-one");
    assert_eq!(line["trace_id"], server.trace_id.as_str());
    assert_eq!(line["span_id"], server.span_id.as_str());
    assert_eq!(line["node_id"], "node-a");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trusted_callers_context_is_continued_an_untrusted_one_only_linked() {
    let otlp = OtlpReceiver::start().await;
    let up = Upstream::start("backend").await;
    // 127.0.0.2 is a trusted proxy; 127.0.0.1 an ordinary client.
    let node = GatehouseNode::start_with(
        traced(&routes(&up.url()), &otlp, "node-a").env("PROXY_TRUSTED_PROXIES", "127.0.0.2"),
    )
    .await;
    let sampled = client_traceparent("01");
    let headers = |id: &'static str| {
        vec![
            ("x-request-id", id),
            ("traceparent", sampled.as_str()),
            ("tracestate", "vendor=client"),
            ("baggage", "tenant=evil"),
        ]
    };

    let reply = get_with(&node.url("/untrusted"), &headers("req-untrusted")).await;
    assert_eq!(reply.status, 200);
    let forwarded = up.last().unwrap();
    let server = server_span(&otlp, "req-untrusted").await;
    assert_ne!(
        server.trace_id, CLIENT_TRACE,
        "outsiders do not choose our trace ids"
    );
    assert_eq!(server.parent_span_id, None);
    assert_eq!(server.links.len(), 1, "{server:?}");
    assert_eq!(server.links[0].trace_id, CLIENT_TRACE);
    assert_eq!(server.links[0].span_id, CLIENT_SPAN);
    let (t, _, _) = parse_traceparent(forwarded.headers["traceparent"].to_str().unwrap());
    assert_eq!(
        t, server.trace_id,
        "the backend sees our trace, not the client's"
    );
    assert!(!forwarded.headers.contains_key("tracestate"));
    assert!(!forwarded.headers.contains_key("baggage"));

    let trusted: IpAddr = "127.0.0.2".parse().unwrap();
    let reply = get_from(trusted, &node.url("/trusted"), &headers("req-trusted")).await;
    assert_eq!(reply.status, 200);
    let forwarded = up.last().unwrap();
    let server = server_span(&otlp, "req-trusted").await;
    assert_eq!(server.trace_id, CLIENT_TRACE);
    assert_eq!(server.parent_span_id.as_deref(), Some(CLIENT_SPAN));
    assert!(server.links.is_empty());
    assert_eq!(server.attr_str("network.peer.address"), Some("127.0.0.2"));
    let (t, s, _) = parse_traceparent(forwarded.headers["traceparent"].to_str().unwrap());
    assert_eq!(t, CLIENT_TRACE);
    assert_ne!(s, CLIENT_SPAN, "the backend's parent is our upstream span");
    assert_eq!(forwarded.headers["tracestate"], "vendor=client");
    assert_eq!(forwarded.headers["baggage"], "tenant=evil");
}

#[tokio::test(flavor = "multi_thread")]
async fn at_ratio_zero_only_a_trusted_sampled_parent_is_traced_and_ids_still_propagate() {
    let otlp = OtlpReceiver::start().await;
    let up = Upstream::start("backend").await;
    let node = GatehouseNode::start_with(
        traced(&routes(&up.url()), &otlp, "node-a")
            .env("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
            .env("OTEL_TRACES_SAMPLER_ARG", "0")
            .env("PROXY_TRUSTED_PROXIES", "127.0.0.2"),
    )
    .await;

    // Not sampled: nothing is exported, but the backend and the log share a trace id.
    let reply = get_with(&node.url("/plain"), &[("x-request-id", "req-plain")]).await;
    assert_eq!(reply.status, 200);
    let (t, s, flags) = parse_traceparent(&upstream_traceparent(&up).expect("traceparent"));
    assert_eq!(flags, "00", "the decision travels: not sampled");
    let line = access_line(&node, "req-plain");
    assert_eq!(line["trace_id"], t.as_str());
    assert_eq!(
        line["span_id"],
        s.as_str(),
        "unsampled: the backend's parent is the server span"
    );

    // An outsider's sampled flag does not force sampling.
    let sampled = client_traceparent("01");
    let reply = get_with(
        &node.url("/forced"),
        &[("x-request-id", "req-forced"), ("traceparent", &sampled)],
    )
    .await;
    assert_eq!(reply.status, 200);
    let (_, _, flags) = parse_traceparent(&upstream_traceparent(&up).unwrap());
    assert_eq!(flags, "00");

    // A trusted caller's sampled parent is followed. Spans leave in the order they end, so
    // once these arrived, the ones above would have too.
    let trusted: IpAddr = "127.0.0.2".parse().unwrap();
    let reply = get_from(
        trusted,
        &node.url("/followed"),
        &[("x-request-id", "req-followed"), ("traceparent", &sampled)],
    )
    .await;
    assert_eq!(reply.status, 200);
    let server = server_span(&otlp, "req-followed").await;
    assert_eq!(server.trace_id, CLIENT_TRACE);
    assert!(
        otlp.wait_for(ARRIVAL, |spans| spans.len() >= 2).await,
        "{:#?}",
        otlp.spans()
    );
    let exported: Vec<_> = otlp.spans().into_iter().map(|s| s.trace_id).collect();
    assert!(
        exported.iter().all(|t| t == CLIENT_TRACE),
        "only the followed trace is exported: {exported:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_through_two_nodes_is_one_trace() {
    let otlp = OtlpReceiver::start().await;
    let up = Upstream::start("backend").await;
    // B trusts A (loopback); A's route points at B.
    let b = GatehouseNode::start_with(
        traced(&routes(&up.url()), &otlp, "node-b").env("PROXY_TRUSTED_PROXIES", "127.0.0.1"),
    )
    .await;
    let a = GatehouseNode::start_with(traced(
        &routes(&format!("http://{}", b.http)),
        &otlp,
        "node-a",
    ))
    .await;

    let reply = get_with(&a.url("/chain"), &[("x-request-id", "req-chain")]).await;
    assert_eq!(reply.status, 200);
    let a_server = server_span_on(&otlp, "req-chain", Some("node-a")).await;
    assert!(
        otlp.wait_for(ARRIVAL, |spans| spans
            .iter()
            .filter(|s| s.trace_id == a_server.trace_id)
            .count()
            >= 4)
            .await,
        "{}",
        otlp.tree(&a_server.trace_id)
    );
    let trace = otlp.trace(&a_server.trace_id);
    let tree = otlp.tree(&a_server.trace_id);
    assert_eq!(trace.len(), 4, "{tree}");
    let a_client = trace
        .iter()
        .find(|s| s.kind == Kind::Client && s.node() == "node-a")
        .expect(&tree);
    let b_server = trace
        .iter()
        .find(|s| s.kind == Kind::Server && s.node() == "node-b")
        .expect(&tree);
    let b_client = trace
        .iter()
        .find(|s| s.kind == Kind::Client && s.node() == "node-b")
        .expect(&tree);
    assert_eq!(
        a_client.parent_span_id.as_deref(),
        Some(a_server.span_id.as_str())
    );
    assert_eq!(
        b_server.parent_span_id.as_deref(),
        Some(a_client.span_id.as_str()),
        "{tree}"
    );
    assert_eq!(
        b_client.parent_span_id.as_deref(),
        Some(b_server.span_id.as_str())
    );
    assert_eq!(
        b_server.attr_str("request_id"),
        Some("req-chain"),
        "the request id travels too"
    );
    let (t, s, _) = parse_traceparent(&upstream_traceparent(&up).unwrap());
    assert_eq!(
        (t.as_str(), s.as_str()),
        (a_server.trace_id.as_str(), b_client.span_id.as_str())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_502_is_an_error_on_both_spans() {
    let otlp = OtlpReceiver::start().await;
    let closed = gatehouse_tests::free_port();
    let node = GatehouseNode::start_with(traced(
        &routes(&format!("http://127.0.0.1:{closed}")),
        &otlp,
        "node-a",
    ))
    .await;
    let reply = get_with(&node.url("/down"), &[("x-request-id", "req-502")]).await;
    assert_eq!(reply.status, 502);
    let server = server_span(&otlp, "req-502").await;
    assert_eq!(server.attr_i64("http.response.status_code"), Some(502));
    assert_eq!(server.attr_str("error.type"), Some("502"));
    assert_eq!(
        server.attr_str("gatehouse.error"),
        Some("upstream_unavailable")
    );
    assert!(server.is_error(), "{server:?}");
    assert!(
        otlp.wait_for(ARRIVAL, |s| s.iter().any(|s| s.kind == Kind::Client))
            .await
    );
    let client = otlp
        .trace(&server.trace_id)
        .into_iter()
        .find(|s| s.kind == Kind::Client)
        .expect("upstream span");
    assert!(client.is_error());
    assert_eq!(client.attr_str("error.type"), Some("connect"));
    // The warning about the upstream carries the trace too.
    let warning = node
        .logs()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["message"] == "upstream unavailable")
        .expect("upstream warning");
    assert_eq!(warning["trace_id"], server.trace_id.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn otlp_over_http_with_collector_headers_from_the_opentelemetry_variables() {
    let otlp = OtlpReceiver::start().await;
    let up = Upstream::start("backend").await;
    let node = GatehouseNode::start_with(
        NodeOptions::new(&routes(&up.url()))
            .env("OCIS_TRACING_ENABLED", "true")
            .env("OCIS_TRACING_TYPE", "otlp")
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp.http_endpoint())
            .env(
                "OTEL_EXPORTER_OTLP_HEADERS",
                "authorization=Bearer%20collector-token",
            )
            .env("OTEL_SERVICE_NAME", "edge-proxy")
            .env("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test"),
    )
    .await;
    let reply = get_with(&node.url("/over-http"), &[("x-request-id", "req-http")]).await;
    assert_eq!(reply.status, 200);
    let server = server_span(&otlp, "req-http").await;
    assert_eq!(server.protocol, Protocol::Http);
    assert_eq!(server.resource_str("service.name"), Some("edge-proxy"));
    assert_eq!(server.resource_str("deployment.environment"), Some("test"));
    let headers = otlp.request_headers();
    assert!(
        headers.iter().all(|h| h
            .get("authorization")
            .is_some_and(|v| v == "Bearer collector-token")),
        "{headers:?}"
    );
    // The configured token is masked wherever the configuration is shown.
    let config = get(&node.debug_url("/config")).await.text();
    assert!(!config.contains("collector-token"), "{config}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_collector_that_is_down_or_slow_costs_requests_nothing_and_is_logged_once() {
    let up = Upstream::start("backend").await;
    let closed = gatehouse_tests::free_port();
    let node = GatehouseNode::start_with(
        NodeOptions::new(&routes(&up.url()))
            .env("OCIS_TRACING_ENABLED", "true")
            .env("OCIS_TRACING_TYPE", "otlp")
            .env("OCIS_TRACING_ENDPOINT", &format!("127.0.0.1:{closed}"))
            .env("PROXY_TRACING_EXPORT_TIMEOUT", "1s"),
    )
    .await;
    let started = Instant::now();
    for i in 0..200 {
        let reply = get(&node.url(&format!("/r/{i}"))).await;
        assert_eq!(reply.status, 200);
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "200 requests took {:?}",
        started.elapsed()
    );
    let failing = |logs: &str| logs.matches("trace export failing").count();
    assert!(
        wait_until(ARRIVAL, || async { failing(&node.logs()) >= 1 }).await,
        "{}",
        node.logs()
    );
    // More requests, more failed batches: still one line for the outage.
    for i in 0..50 {
        assert_eq!(get(&node.url(&format!("/s/{i}"))).await.status, 200);
    }
    assert!(
        wait_until(ARRIVAL, || async {
            metric(&node, "gatehouse_trace_export_failures_total").await >= 2.0
        })
        .await,
        "{}",
        get(&node.debug_url("/metrics")).await.text()
    );
    assert_eq!(failing(&node.logs()), 1, "{}", node.logs());
    assert!(
        metric(
            &node,
            r#"gatehouse_trace_spans_dropped_total{reason="export_failed"}"#
        )
        .await
            >= 200.0
    );

    // A collector that answers too late is the same outage for the node.
    let otlp = OtlpReceiver::start().await;
    otlp.set_behaviour(Behaviour::Delay(Duration::from_secs(30)));
    let slow = GatehouseNode::start_with(
        traced(&routes(&up.url()), &otlp, "node-slow").env("PROXY_TRACING_EXPORT_TIMEOUT", "1s"),
    )
    .await;
    let started = Instant::now();
    for i in 0..100 {
        assert_eq!(get(&slow.url(&format!("/t/{i}"))).await.status, 200);
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        wait_until(ARRIVAL, || async { failing(&slow.logs()) == 1 }).await,
        "{}",
        slow.logs()
    );
    assert!(otlp.spans().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_collectors_are_trusted_through_a_ca_file_or_refused() {
    let otlp = OtlpReceiver::start().await;
    let up = Upstream::start("backend").await;
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let http_port = gatehouse_tests::free_port();
    let grpc_backend = format!("127.0.0.1:{}", otlp.grpc_port()).parse().unwrap();
    let http_backend = format!("127.0.0.1:{}", otlp.http_port()).parse().unwrap();
    let front =
        gatehouse_tests::lb::Nginx::tls_front(&cert, &key, grpc_backend, http_backend, http_port)
            .await;
    let grpc_url = format!("https://localhost:{}", front.addr.port());
    let http_url = format!("https://localhost:{http_port}");
    let node = |protocol: &str, url: &str, id: &str| {
        NodeOptions::new(&routes(&up.url()))
            .env("OCIS_TRACING_ENABLED", "true")
            .env("OCIS_TRACING_TYPE", "otlp")
            .env("PROXY_TRACING_PROTOCOL", protocol)
            .env("PROXY_TRACING_ENDPOINT", url)
            .env("PROXY_TRACING_EXPORT_TIMEOUT", "2s")
            .env("PROXY_NODE_ID", id)
    };
    let ca = cert.display().to_string();

    for (protocol, url, id) in [
        ("grpc", grpc_url.as_str(), "tls-grpc"),
        ("http/protobuf", http_url.as_str(), "tls-http"),
    ] {
        let trusted = GatehouseNode::start_with(
            node(protocol, url, id).env("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca),
        )
        .await;
        let request_id = format!("req-{id}");
        assert_eq!(
            get_with(&trusted.url("/tls"), &[("x-request-id", &request_id)])
                .await
                .status,
            200
        );
        let span = server_span(&otlp, &request_id).await;
        assert_eq!(span.node(), id);

        // Without the CA the collector's certificate is refused: spans are dropped, requests
        // are served, the outage is logged once.
        let untrusted =
            GatehouseNode::start_with(node(protocol, url, &format!("{id}-untrusted"))).await;
        assert_eq!(get(&untrusted.url("/tls")).await.status, 200);
        assert!(
            wait_until(ARRIVAL, || async {
                untrusted.logs().contains("trace export failing")
            })
            .await,
            "{}",
            untrusted.logs()
        );

        // `insecure` accepts it, with a warning at start-up.
        let insecure = GatehouseNode::start_with(
            node(protocol, url, &format!("{id}-insecure")).env("PROXY_TRACING_INSECURE", "true"),
        )
        .await;
        assert!(
            insecure.logs().contains("is not verified"),
            "{}",
            insecure.logs()
        );
        let request_id = format!("req-{id}-insecure");
        assert_eq!(
            get_with(&insecure.url("/tls"), &[("x-request-id", &request_id)])
                .await
                .status,
            200
        );
        server_span(&otlp, &request_id).await;
    }
}

/// The value of one series on the node's `/metrics` (0 when absent).
async fn metric(node: &GatehouseNode, series: &str) -> f64 {
    get(&node.debug_url("/metrics"))
        .await
        .text()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}
