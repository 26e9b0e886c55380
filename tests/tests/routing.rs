//! The default oCIS route table, selectors, forwarding headers, security headers, errors — through a
//! real `gatehouse` process to real upstream servers.

use std::collections::BTreeMap;
use std::time::Duration;

use gatehouse_tests::client::{self, empty, get, get_with, send};
use gatehouse_tests::idp::{Idp, TokenOptions};
use gatehouse_tests::node::GatehouseNode;
use gatehouse_tests::upstream::Upstream;

/// Every service the default policy names, each served by its own recording upstream.
const SERVICES: &[&str] = &[
    "web",
    "ocm",
    "webfinger",
    "idp",
    "frontend",
    "sse",
    "userlog",
    "ocs",
    "webdav",
    "ocdav",
    "activitylog",
    "invitations",
    "graph",
    "settings",
    "auth-app",
];

struct Backends(BTreeMap<&'static str, Upstream>);

impl Backends {
    async fn start() -> Backends {
        let mut m = BTreeMap::new();
        for s in SERVICES {
            m.insert(*s, Upstream::start(s).await);
        }
        Backends(m)
    }

    fn services_yaml(&self) -> String {
        let mut y = String::from("services:\n");
        for (name, up) in &self.0 {
            // The notification stream is the one default service outside the `web` namespace.
            let namespace = if *name == "sse" { "sse" } else { "web" };
            y.push_str(&format!(
                "  com.owncloud.{namespace}.{name}: [\"{}\"]\n",
                up.url()
            ));
        }
        y
    }

    /// Which upstream saw `method uri` (path and query exactly as sent).
    fn who_got(&self, method: &str, uri: &str) -> Vec<&'static str> {
        self.0
            .iter()
            .filter(|(_, up)| {
                up.requests()
                    .iter()
                    .any(|r| r.method == method && r.uri == uri)
            })
            .map(|(n, _)| *n)
            .collect()
    }
}

#[tokio::test]
async fn each_default_route_reaches_its_service() {
    let backends = Backends::start().await;
    let idp = Idp::start();
    let yaml = format!(
        "{}oidc:\n  issuer: {}\n  skip_user_info: true\nauto_provision_accounts: true\n",
        backends.services_yaml(),
        idp.issuer()
    );
    let node = GatehouseNode::start(&yaml).await;
    let token = idp.user_token("einstein", TokenOptions::jwt()).await;
    let auth = format!("Bearer {}", token.access_token());

    // (method, path and query, expected service) — spec §1.2 in order, plus fallbacks.
    let cases: &[(&str, &str, &str)] = &[
        ("GET", "/", "web"),
        ("GET", "/index.html", "web"),
        ("GET", "/.well-known/ocm", "ocm"),
        (
            "GET",
            "/.well-known/webfinger?resource=acct:einstein",
            "webfinger",
        ),
        ("GET", "/.well-known/openid-configuration", "idp"),
        ("GET", "/branding/logo", "web"),
        ("POST", "/konnect/v1/token", "idp"),
        ("GET", "/signin/v1/identifier", "idp"),
        ("GET", "/archiver?id=1", "frontend"),
        (
            "GET",
            "/ocs/v2.php/apps/notifications/api/v1/notifications/sse",
            "sse",
        ),
        (
            "GET",
            "/ocs/v2.php/apps/notifications/api/v1/notifications?format=json",
            "userlog",
        ),
        ("GET", "/ocs/v1.php/cloud/user/signing-key", "ocs"),
        ("GET", "/ocs/v2.php/cloud/user/signing-key", "ocs"),
        ("GET", "/ocs/v1.php/config", "frontend"),
        ("GET", "/sciencemesh/find-accepted-users", "ocm"),
        ("POST", "/ocm/shares", "ocm"),
        (
            "GET",
            "/ocs/v1.php/apps/files_sharing/api/v1/shares",
            "frontend",
        ),
        (
            "GET",
            "/remote.php/dav/files/einstein/a.png?preview=1",
            "webdav",
        ),
        ("REPORT", "/remote.php/dav/files/einstein", "webdav"),
        ("REPORT", "/dav/spaces/some-space", "webdav"),
        ("GET", "/dav/files/einstein/a.png?preview=1&x=2", "webdav"),
        ("GET", "/webdav/a.png?preview=1", "webdav"),
        ("PROPFIND", "/remote.php/dav/files/einstein", "ocdav"),
        ("GET", "/dav/files/einstein/a.txt", "ocdav"),
        ("MOVE", "/webdav/a.txt", "ocdav"),
        ("PROPFIND", "/webdav", "ocdav"),
        ("GET", "/status", "ocdav"),
        ("GET", "/status.php", "ocdav"),
        ("GET", "/index.php/apps/files", "ocdav"),
        ("GET", "/apps/files", "ocdav"),
        ("PUT", "/data/some-transfer-token", "frontend"),
        ("GET", "/app/list", "frontend"),
        ("POST", "/app/open?file_id=1", "frontend"),
        (
            "GET",
            "/graph/v1beta1/extensions/org.libregraph/activities?kql=x",
            "activitylog",
        ),
        ("POST", "/graph/v1.0/invitations", "invitations"),
        ("GET", "/graph/v1.0/me", "graph"),
        ("GET", "/api/v0/settings/values-list", "settings"),
        ("POST", "/auth-app/tokens?expiry=1h", "auth-app"),
        ("GET", "/unknown/path", "web"),
        // An unmatched REPORT falls back to `/` deterministically (oCIS drops the connection).
        ("REPORT", "/foo", "web"),
        // Text that appears only in the query never selects the unprotected frontend route.
        ("GET", "/graph/v1.0/me?x=/ocs/v1.php/config", "graph"),
    ];
    let mut failures = Vec::new();
    for (method, uri, want) in cases {
        let reply = send(method, &node.url(uri), &[("authorization", &auth)], empty()).await;
        let got = backends.who_got(method, uri);
        if reply.status != 200 || got != vec![*want] {
            failures.push(format!(
                "{method} {uri}: status {} reached {got:?}, want [{want}]",
                reply.status
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "routing failures:\n{}",
        failures.join("\n")
    );
}

#[tokio::test]
async fn selector_cookie_chooses_the_policy() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let yaml = format!(
        r#"
policy_selector:
  claims:
    default_policy: alpha
    unauthenticated_policy: alpha
    selector_cookie_name: owncloud-selector
policies:
  - name: alpha
    routes:
      - endpoint: /
        backend: {}
        unprotected: true
  - name: beta
    routes:
      - endpoint: /
        backend: {}
        unprotected: true
"#,
        a.url(),
        b.url()
    );
    let node = GatehouseNode::start(&yaml).await;
    assert_eq!(get(&node.url("/x")).await.text(), "a");
    let r = get_with(
        &node.url("/x"),
        &[("cookie", "other=1; owncloud-selector=beta")],
    )
    .await;
    assert_eq!(r.text(), "b");
}

#[tokio::test]
async fn static_selector_and_backend_base_paths() {
    let up = Upstream::start("up").await;
    let yaml = format!(
        r#"
policy_selector:
  static:
    policy: main
policies:
  - name: main
    routes:
      - endpoint: /api
        backend: {url}/service1/?tenant=7
        unprotected: true
      - type: regex
        endpoint: '\/user\/(\d+)'
        backend: {url}
        unprotected: true
      - type: query
        endpoint: /q?format=json
        backend: {url}/query
        unprotected: true
"#,
        url = up.url()
    );
    let node = GatehouseNode::start(&yaml).await;
    get(&node.url("/api/items?page=2")).await;
    assert_eq!(
        up.last().unwrap().uri,
        "/service1/api/items?tenant=7&page=2"
    );
    get(&node.url("/user/1234")).await;
    assert_eq!(up.last().unwrap().uri, "/user/1234");
    get(&node.url("/q/x?format=json&y=1")).await;
    assert_eq!(up.last().unwrap().uri, "/query/q/x?format=json&y=1");
}

#[tokio::test]
async fn forwarding_and_hop_by_hop_headers() {
    let up = Upstream::start("up").await;
    let yaml = format!(
        "policies:\n  - name: ocis\n    routes:\n      - endpoint: /\n        backend: {}\n        unprotected: true\n",
        up.url()
    );
    let node = GatehouseNode::start(&yaml).await;

    let r = get_with(
        &node.url("/a"),
        &[
            ("x-forwarded-for", "203.0.113.66"),
            ("x-real-ip", "203.0.113.67"),
            ("x-forwarded-proto", "https"),
            ("connection", "x-secret"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("authorization", "Bearer kept"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = up.last().unwrap().headers;
    // An untrusted client cannot inject forwarding headers; they are rebuilt, and XFF is never lost.
    assert_eq!(seen.get("x-forwarded-for").unwrap(), "127.0.0.1");
    assert_eq!(seen.get("x-forwarded-proto").unwrap(), "http");
    assert_eq!(
        seen.get("x-forwarded-host").unwrap(),
        node.http.to_string().as_str()
    );
    assert!(seen.get("x-real-ip").is_none());
    for h in ["x-secret", "te", "proxy-authorization"] {
        assert!(
            seen.get(h).is_none(),
            "hop-by-hop header {h} reached the upstream"
        );
    }
    assert_eq!(seen.get("authorization").unwrap(), "Bearer kept");
    assert!(
        seen.get("x-request-id").is_some(),
        "the request id is passed upstream"
    );
}

#[tokio::test]
async fn trusted_proxy_forwarding_is_believed() {
    let up = Upstream::start("up").await;
    let yaml = format!(
        "http:\n  trusted_proxies: [\"127.0.0.1/32\"]\npolicies:\n  - name: ocis\n    routes:\n      - endpoint: /\n        backend: {}\n        unprotected: true\n",
        up.url()
    );
    let node = GatehouseNode::start(&yaml).await;
    get_with(
        &node.url("/a"),
        &[
            ("x-forwarded-for", "198.51.100.7"),
            ("x-forwarded-proto", "https"),
        ],
    )
    .await;
    let seen = up.last().unwrap().headers;
    assert_eq!(
        seen.get("x-forwarded-for").unwrap(),
        "198.51.100.7, 127.0.0.1"
    );
    assert_eq!(seen.get("x-forwarded-proto").unwrap(), "https");
    let log = node.access_log();
    let last = log.last().expect("an access log line");
    assert!(
        last.to_string().contains("198.51.100.7"),
        "access log names the real client: {last}"
    );
}

#[tokio::test]
async fn refused_and_slow_upstreams_give_502_and_504() {
    let slow = Upstream::start("slow").await;
    let dead_port = gatehouse_tests::free_port();
    let yaml = format!(
        r#"
upstream:
  response_header_timeout: 300ms
policies:
  - name: ocis
    routes:
      - endpoint: /dead
        backend: http://127.0.0.1:{dead_port}
        unprotected: true
      - endpoint: /slow
        backend: {}
        unprotected: true
"#,
        slow.url()
    );
    let node = GatehouseNode::start(&yaml).await;
    let r = get(&node.url("/dead/x")).await;
    assert_eq!(r.status, 502);
    assert!(r.body.is_empty());
    let r = get(&node.url("/slow/x?gh_sleep_ms=3000")).await;
    assert_eq!(r.status, 504);
    assert!(r.body.is_empty());
    let logs = node.logs();
    let dead = format!("127.0.0.1:{dead_port}");
    let lines: Vec<_> = logs
        .lines()
        .filter(|l| l.contains(&dead) && !l.contains("access-log"))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "one log line names the refused upstream: {lines:?}"
    );
    assert!(
        lines[0].contains("/dead"),
        "the line names the route: {}",
        lines[0]
    );
}

#[tokio::test]
async fn security_headers_request_id_and_https_redirect() {
    let up = Upstream::start("up").await;
    let yaml = format!(
        "ocis_url: https://cloud.example.test\npolicies:\n  - name: ocis\n    routes:\n      - endpoint: /\n        backend: {}\n        unprotected: true\n",
        up.url()
    );
    let node = GatehouseNode::start(&yaml).await;
    let r = get(&node.url("/page")).await;
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("x-frame-options"), Some("SAMEORIGIN"));
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(r.header("x-robots-tag"), Some("none"));
    assert_eq!(r.header("x-permitted-cross-domain-policies"), Some("none"));
    assert!(
        r.header("strict-transport-security").is_none(),
        "no HSTS on plain HTTP"
    );
    let csp = r.header("content-security-policy").expect("CSP");
    assert!(
        csp.starts_with("child-src 'self'; connect-src 'self'"),
        "{csp}"
    );
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let id = r.header("x-request-id").expect("request id").to_string();
    assert_eq!(
        up.last().unwrap().headers.get("x-request-id").unwrap(),
        id.as_str()
    );

    // A client-chosen request id is kept end to end.
    let r = get_with(&node.url("/page"), &[("x-request-id", "abc-123")]).await;
    assert_eq!(r.header("x-request-id"), Some("abc-123"));

    let r = get_with(
        &node.url("/foo?bar=1"),
        &[("x-forwarded-proto", "http"), ("host", "evil.example")],
    )
    .await;
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some("https://cloud.example.test/foo?bar=1")
    );
    assert!(
        r.header("x-request-id").is_some(),
        "errors and redirects carry a request id too"
    );
}

#[tokio::test]
async fn bad_paths_are_refused_or_normalised_before_routing() {
    let backends = Backends::start().await;
    let node = GatehouseNode::start(&backends.services_yaml()).await;
    // Encoded dots, slashes and backslashes are ambiguous between gateway and backend: refused.
    for p in [
        "/.well-known/..%2fgraph/v1.0/me",
        "/konnect/%2e%2e/graph/v1.0/me",
        "/status.php%5c..%5cgraph",
    ] {
        let r = get(&node.url(p)).await;
        assert_eq!(r.status, 400, "{p}");
        assert!(
            SERVICES.iter().all(|s| backends.0[s].count() == 0),
            "{p} reached a backend"
        );
    }
    // Dot segments are resolved first, so the unprotected `/status` route cannot be used as a
    // springboard: the request is routed as the protected `/dav/` route and, without
    // credentials, refused there.
    let r = get(&node.url("/status/../dav/files/x")).await;
    assert_eq!(r.status, 401);
    assert!(SERVICES.iter().all(|s| backends.0[s].count() == 0));
    let routed = gatehouse_tests::wait_until(Duration::from_secs(5), || async {
        node.access_log()
            .iter()
            .any(|l| l["path"] == "/status/../dav/files/x" && l["route"] == "ocis//dav/")
    })
    .await;
    assert!(routed, "routed by the normalised path: {}", node.logs());
}

#[tokio::test]
async fn metrics_and_access_log() {
    let up = Upstream::start("up").await;
    let yaml = format!(
        "policies:\n  - name: ocis\n    routes:\n      - endpoint: /\n        backend: {}\n        unprotected: true\n",
        up.url()
    );
    let node = GatehouseNode::start(&yaml).await;
    for m in ["GET", "GET", "PROPFIND", "BREW", "FLY"] {
        send(m, &node.url("/m"), &[], empty()).await;
    }
    let metrics = get(&node.debug_url("/metrics")).await.text();
    assert!(
        metrics.contains("ocis_proxy_requests_total{method=\"GET\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ocis_proxy_requests_total{method=\"PROPFIND\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ocis_proxy_requests_total{method=\"OTHER\"} 2"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("BREW"),
        "unknown methods must not become label values"
    );
    assert!(
        metrics.contains("ocis_proxy_build_info{version="),
        "{metrics}"
    );
    assert!(
        metrics.contains("ocis_proxy_duration_seconds_bucket"),
        "{metrics}"
    );

    let ok = gatehouse_tests::wait_until(Duration::from_secs(5), || async {
        node.access_log().len() >= 5
    })
    .await;
    assert!(ok, "one access log line per request: {}", node.logs());
    let line = node
        .access_log()
        .into_iter()
        .find(|l| l.to_string().contains("PROPFIND"))
        .unwrap();
    let s = line.to_string();
    for field in [
        "request_id",
        "method",
        "path",
        "status",
        "duration_ms",
        "bytes",
        "remote_addr",
        "upstream",
    ] {
        assert!(s.contains(field), "access log lacks {field}: {s}");
    }
    let _ = client::client();
}
