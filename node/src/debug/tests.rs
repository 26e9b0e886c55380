use std::time::Duration;

use http::StatusCode;
use tokio::task::JoinHandle;

use super::*;

const T: Duration = Duration::from_secs(5);

struct Running {
    addr: String,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
    /// Stands in for the main listener; the kernel completes handshakes without `accept`.
    main: Option<TcpListener>,
}

async fn start(token: &str) -> Running {
    let r = starting(token).await;
    r.health.start_serving();
    r
}

/// The debug server of a node whose main listener is bound but whose start-up has not finished.
async fn starting(token: &str) -> Running {
    let main = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let debug = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = debug.local_addr().unwrap().to_string();
    let health = Health::new();
    let metrics = Metrics::new("9.9.9-test");
    let state = DebugState {
        state: None,
        metrics: Arc::clone(&metrics),
        health: Arc::clone(&health),
        config_json: Arc::from(r#"{"debug":{"token":"***"}}"#),
        token: token.to_owned(),
        version: "9.9.9-test".into(),
        http_addr: main.local_addr().unwrap().to_string(),
    };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve(debug, state, shutdown.clone()));
    Running {
        addr,
        health,
        metrics,
        shutdown,
        task,
        main: Some(main),
    }
}

async fn get(r: &Running, path: &str, bearer: Option<&str>) -> Response<Bytes> {
    fetch(&r.addr, path, bearer, T).await.unwrap()
}

#[tokio::test]
async fn healthz_follows_the_main_listener() {
    let mut r = starting("").await;
    // Bound (it accepts a connection) but not serving yet.
    let resp = get(&r, "/healthz", None).await;
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(String::from_utf8_lossy(resp.body()).contains("starting"));
    let resp = get(&r, "/readyz", None).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(String::from_utf8_lossy(resp.body()).contains("starting"));

    r.health.start_serving();
    let resp = get(&r, "/healthz", None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.body(), "OK");
    assert_eq!(
        resp.headers()[header::CONTENT_TYPE],
        "text/plain; charset=utf-8"
    );

    drop(r.main.take());
    let resp = get(&r, "/healthz", None).await;
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(String::from_utf8_lossy(resp.body()).contains("unreachable"));
    let resp = get(&r, "/readyz", None).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn readyz_reports_draining_and_failing_dependencies() {
    let r = start("").await;
    let resp = get(&r, "/readyz", None).await;
    assert_eq!(
        (resp.status(), resp.body().as_ref()),
        (StatusCode::OK, &b"OK"[..])
    );

    let nats_up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = Arc::clone(&nats_up);
    r.health.require("nats state store", move || {
        flag.load(std::sync::atomic::Ordering::SeqCst)
    });
    let resp = get(&r, "/readyz", None).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.body(), "dependencies down: nats state store");
    nats_up.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(get(&r, "/readyz", None).await.status(), StatusCode::OK);

    // A dependency that is only observed degrades the node without making it unready.
    let connected = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = Arc::clone(&connected);
    r.health.observe("nats state store", move || {
        flag.load(std::sync::atomic::Ordering::SeqCst)
    });
    let resp = get(&r, "/readyz", None).await;
    assert_eq!(
        (resp.status(), resp.body().as_ref()),
        (
            StatusCode::OK,
            &b"OK, degraded: nats state store unreachable"[..]
        )
    );
    connected.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(get(&r, "/readyz", None).await.body().as_ref(), b"OK");

    r.health.start_draining();
    let resp = get(&r, "/readyz", None).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.body(), "draining");
    // Liveness is unaffected by draining.
    assert_eq!(get(&r, "/healthz", None).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn metrics_and_config_require_the_token_when_set() {
    let r = start("s3cret").await;
    for path in ["/metrics", "/config"] {
        for bearer in [None, Some("wrong"), Some("s3cre"), Some("s3crett")] {
            let resp = get(&r, path, bearer).await;
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{path} {bearer:?}");
            assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
            let body: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
            assert_eq!(body["error"]["code"], "invalidAuthenticationToken");
            assert_eq!(body["error"]["message"], "invalid or missing token");
        }
    }
    r.metrics.method(&http::Method::DELETE).started();
    let resp = get(&r, "/metrics", Some("s3cret")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let text = String::from_utf8_lossy(resp.body());
    assert!(
        text.contains(r#"ocis_proxy_build_info{version="9.9.9-test"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"ocis_proxy_requests_total{method="DELETE"} 1"#),
        "{text}"
    );

    let resp = get(&r, "/config", Some("s3cret")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.body(), r#"{"debug":{"token":"***"}}"#);
    // Health endpoints stay open for probes.
    assert_eq!(get(&r, "/healthz", None).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn without_token_metrics_are_open_and_common_headers_are_set() {
    let r = start("").await;
    let resp = get(&r, "/metrics", None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let h = resp.headers();
    assert_eq!(h["x-proxy-version"], "9.9.9-test");
    assert_eq!(
        h[header::CACHE_CONTROL],
        "no-cache, no-store, max-age=0, must-revalidate"
    );
    assert_eq!(h[header::EXPIRES], "Thu, 01 Jan 1970 00:00:00 GMT");
    assert!(h[header::LAST_MODIFIED].to_str().unwrap().ends_with(" GMT"));

    let resp = get(&r, "/debug/pprof/", None).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(resp.headers()["x-proxy-version"], "9.9.9-test");
}

#[tokio::test]
async fn stops_accepting_when_cancelled() {
    let r = start("").await;
    assert_eq!(get(&r, "/healthz", None).await.status(), StatusCode::OK);
    r.shutdown.cancel();
    tokio::time::timeout(T, r.task)
        .await
        .expect("serve returns")
        .unwrap();
    let err = fetch(&r.addr, "/healthz", None, T).await.unwrap_err();
    assert!(matches!(err, FetchError::Connect { .. }), "{err}");
    assert!(err.is_retryable());
}

#[test]
fn probe_address_replaces_wildcards() {
    assert_eq!(probe_address("0.0.0.0:9200"), "127.0.0.1:9200");
    assert_eq!(probe_address("[::]:9200"), "[::1]:9200");
    assert_eq!(probe_address(":9200"), "127.0.0.1:9200");
    assert_eq!(probe_address("10.1.2.3:9200"), "10.1.2.3:9200");
    assert_eq!(probe_address("proxy.internal:9200"), "proxy.internal:9200");
}

#[test]
fn bearer_comparison() {
    let hv = |s: &str| HeaderValue::from_str(s).unwrap();
    assert!(bearer_matches(Some(&hv("Bearer tok")), "tok"));
    assert!(bearer_matches(Some(&hv("bearer tok")), "tok"));
    assert!(!bearer_matches(Some(&hv("Bearer tok2")), "tok"));
    assert!(!bearer_matches(Some(&hv("Bearer to")), "tok"));
    assert!(!bearer_matches(Some(&hv("Basic tok")), "tok"));
    assert!(!bearer_matches(Some(&hv("Bearer")), "tok"));
    assert!(!bearer_matches(None, "tok"));
}
