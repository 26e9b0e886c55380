//! The metrics an operator of a cluster watches, on a real node with its state on a real NATS
//! JetStream server: connection state and reconnects per NATS client, KV operations and
//! near-cache size per bucket, the event queue, spans, readiness — and the Grafana dashboard and
//! Prometheus configuration in `compose/`, checked against what a node really exports.

use std::collections::BTreeSet;
use std::time::Duration;

use gatehouse_tests::client::get;
use gatehouse_tests::nats::NatsCluster;
use gatehouse_tests::node::{GatehouseNode, NodeOptions};
use gatehouse_tests::otlp::OtlpReceiver;
use gatehouse_tests::upstream::Upstream;
use gatehouse_tests::wait_until;

const SETTLE: Duration = Duration::from_secs(15);

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

async fn metrics(node: &GatehouseNode) -> String {
    get(&node.debug_url("/metrics")).await.text()
}

/// A node with every store and the events on `nats`, tracing to `otlp`, and the builtin demo
/// users (whose creation publishes events).
async fn node_on(nats: &NatsCluster, otlp: &OtlpReceiver, up: &Upstream) -> GatehouseNode {
    let addresses = nats.client_urls().join(",");
    let yaml = format!(
        "policies:
  - name: ocis
    routes:
      - endpoint: /
        backend: {}
        unprotected: true
",
        up.url()
    );
    GatehouseNode::start_with(
        NodeOptions::new(&yaml)
            .env("OCIS_CACHE_STORE", "nats-js-kv")
            .env("OCIS_CACHE_STORE_NODES", &addresses)
            .env("OCIS_EVENTS_ENDPOINT", &addresses.replace("nats://", ""))
            .env("PROXY_BUILTIN_DEMO_USERS", "true")
            .traced_to(otlp)
            .env("PROXY_NODE_ID", "metrics-node"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_metrics_follow_the_node_and_its_nats_connections() {
    let mut nats = NatsCluster::start(1);
    let otlp = OtlpReceiver::start().await;
    let up = Upstream::start("backend").await;
    let node = node_on(&nats, &otlp, &up).await;
    for i in 0..5 {
        assert_eq!(get(&node.url(&format!("/m/{i}"))).await.status, 200);
    }

    assert!(
        wait_until(SETTLE, || async {
            let t = metrics(&node).await;
            value(&t, "gatehouse_events_published_total").unwrap_or(0.0) >= 1.0
                && value(&t, "gatehouse_trace_spans_exported_total").unwrap_or(0.0) >= 5.0
        })
        .await,
        "{}",
        metrics(&node).await
    );
    let text = metrics(&node).await;
    for client in ["state", "userinfo", "signing-keys", "events"] {
        assert_eq!(
            value(
                &text,
                &format!(r#"gatehouse_nats_connected{{client="{client}"}}"#)
            ),
            Some(1.0),
            "{client}\n{text}"
        );
        assert_eq!(
            value(
                &text,
                &format!(r#"gatehouse_nats_reconnects_total{{client="{client}"}}"#)
            ),
            Some(0.0)
        );
    }
    // The demo users were read and written through the state bucket's near-cache.
    assert!(
        value(
            &text,
            r#"gatehouse_near_cache_entries{bucket="gatehouse-state"}"#
        )
        .is_some_and(|n| n > 0.0),
        "{text}"
    );
    assert!(text.contains(r#"gatehouse_store_operations_total{bucket="gatehouse-state""#));
    assert_eq!(value(&text, "gatehouse_events_queued"), Some(0.0));
    assert_eq!(value(&text, "gatehouse_events_dropped_total"), Some(0.0));
    assert_eq!(value(&text, "gatehouse_ready"), Some(1.0));
    assert_eq!(value(&text, "gatehouse_draining"), Some(0.0));
    assert!(
        text.contains(r#"gatehouse_node_info{node_id="metrics-node""#),
        "{text}"
    );

    // NATS goes away and comes back: every client reconnects, and says so.
    nats.restart(0);
    assert!(
        wait_until(SETTLE, || async {
            let t = metrics(&node).await;
            ["state", "userinfo", "events"].iter().all(|c| {
                value(
                    &t,
                    &format!(r#"gatehouse_nats_reconnects_total{{client="{c}"}}"#),
                )
                .unwrap_or(0.0)
                    >= 1.0
                    && value(&t, &format!(r#"gatehouse_nats_connected{{client="{c}"}}"#))
                        == Some(1.0)
            })
        })
        .await,
        "{}",
        metrics(&node).await
    );

    // Draining is visible before the node is gone: a slow request keeps the drain open.
    let slow_url = node.url("/m/slow?gh_sleep_ms=3000");
    // Counted before the request is sent: it may reach the upstream before this task runs again.
    let before = up.count();
    let slow = tokio::spawn(async move { get(&slow_url).await.status });
    assert!(wait_until(SETTLE, || async { up.count() > before }).await);
    node.sigterm();
    assert!(
        wait_until(SETTLE, || async {
            match tokio::time::timeout(Duration::from_secs(1), get(&node.debug_url("/metrics")))
                .await
            {
                Ok(r) => value(&r.text(), "gatehouse_draining") == Some(1.0),
                Err(_) => false,
            }
        })
        .await
    );
    assert_eq!(slow.await.unwrap(), 200, "the in-flight request finished");
}

/// Every metric name a PromQL expression mentions (histogram series mapped to their family).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut word = String::new();
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
            continue;
        }
        let w = std::mem::take(&mut word);
        if ["ocis_", "gatehouse_", "process_"]
            .iter()
            .any(|p| w.starts_with(p))
        {
            out.insert(w);
        }
    }
    out
}

fn expressions(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, child) in map {
                match (k.as_str(), child) {
                    ("expr" | "query" | "definition", serde_json::Value::String(s)) => {
                        out.push(s.clone())
                    }
                    _ => expressions(child, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| expressions(i, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_and_the_scrape_configuration_match_what_a_node_exports() {
    let compose = concat!(env!("CARGO_MANIFEST_DIR"), "/../compose");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{compose}/grafana/gatehouse.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    expressions(&dashboard["panels"], &mut exprs);
    expressions(&dashboard["templating"], &mut exprs);
    let used: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    assert!(used.len() >= 20, "{used:?}");

    let nats = NatsCluster::start(1);
    let otlp = OtlpReceiver::start().await;
    let up = Upstream::start("backend").await;
    let node = node_on(&nats, &otlp, &up).await;
    assert_eq!(get(&node.url("/d")).await.status, 200);
    let text = metrics(&node).await;
    let exported: BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let missing: Vec<&String> = used
        .iter()
        .filter(|name| !exported.contains(name.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard uses metrics no node exports: {missing:?}"
    );

    // Prometheus finds the compose file's gateway service by name and scrapes its debug port.
    let prometheus: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(format!("{compose}/prometheus/prometheus.yml")).unwrap(),
    )
    .unwrap();
    let sd = &prometheus["scrape_configs"][0]["dns_sd_configs"][0];
    let names: Vec<&str> = sd["names"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    let services: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(format!("{compose}/docker-compose.yml")).unwrap(),
    )
    .unwrap();
    let gateway = &services["services"]["gatehouse"];
    assert!(
        gateway.is_mapping(),
        "docker-compose.yml has a gatehouse service"
    );
    assert_eq!(names, ["gatehouse"]);
    let debug_port = gateway["environment"]["PROXY_DEBUG_ADDR"]
        .as_str()
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse::<u64>().ok());
    assert_eq!(sd["port"].as_u64(), debug_port);
}
