//! App tokens on a two-node cluster with a real OpenID provider and a real NATS: a user logs in
//! with OIDC on one node, creates an app token, uses it as Basic credentials on the other node,
//! lists it, deletes it, and is refused afterwards (measured: how soon after the deletion the
//! other node refuses); an app token cannot mint app tokens; an expired one is refused; the
//! API's mistakes get oCIS's answers.

use std::time::{Duration, Instant};

use base64::Engine as _;
use gatehouse_tests::client::{bearer, get_with, send};
use gatehouse_tests::idp::{Idp, TokenOptions};
use gatehouse_tests::nats::NatsCluster;
use gatehouse_tests::node::{GatehouseNode, NodeOptions};
use gatehouse_tests::upstream::Upstream;
use gatehouse_tests::wait_until;
use serde_json::Value;

const SECRET: &str = "app-token-test-secret";

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

async fn call(node: &GatehouseNode, method: &str, path: &str, auth: &str) -> (u16, String) {
    let r = send(
        method,
        &node.url(path),
        &[("authorization", auth)],
        gatehouse_tests::client::full(""),
    )
    .await;
    (r.status.as_u16(), r.text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_token_created_on_one_node_works_on_the_other_until_deleted() {
    let idp = Idp::start();
    let up = Upstream::start("dav").await;
    let nats = NatsCluster::start(1);
    let yaml = format!(
        "policies:
  - name: ocis
    routes:
      - endpoint: /
        backend: {up}
oidc:
  issuer: {iss}
auto_provision_accounts: true
token_manager:
  jwt_secret: {SECRET}
state_store: {{store: nats-js-kv, addresses: [\"{nats}\"], op_timeout: 2s}}
",
        up = up.url(),
        iss = idp.issuer(),
        nats = nats.client_url(0).trim_start_matches("nats://"),
    );
    let mut nodes = Vec::new();
    for _ in 0..2 {
        nodes.push(
            GatehouseNode::start_with(NodeOptions::new(&yaml).env("PROXY_ENABLE_APP_AUTH", "true"))
                .await,
        );
    }
    let oidc = bearer(
        idp.user_token("marie", TokenOptions::jwt())
            .await
            .access_token(),
    );

    // Create on node 0 with the OIDC login.
    let (status, body) = call(
        &nodes[0],
        "POST",
        "/auth-app/tokens?expiry=1h&label=rclone",
        &oidc,
    )
    .await;
    assert_eq!(status, 200, "{body}\n{}", nodes[0].logs());
    let created: Value = serde_json::from_str(&body).unwrap();
    let token = created["token"].as_str().unwrap().to_owned();
    assert_eq!(token.len(), 16);
    assert_eq!(created["label"], "rclone");
    assert!(created["expiration_date"].as_str().unwrap().ends_with('Z'));
    assert!(created["created_date"].as_str().is_some());

    // Use it on node 1, as marie: the backend gets marie's account, the same as with OIDC.
    let r = get_with(&nodes[0].url("/dav/oidc"), &[("authorization", &oidc)]).await;
    assert_eq!(r.status, 200);
    let oidc_user = up.last_access_token(SECRET).user.id.unwrap().opaque_id;
    let app = basic("marie", &token);
    let r = get_with(&nodes[1].url("/dav/app"), &[("authorization", &app)]).await;
    assert_eq!(r.status, 200, "{}", nodes[1].logs());
    let claims = up.last_access_token(SECRET);
    assert_eq!(claims.user.id.unwrap().opaque_id, oidc_user);
    assert_eq!(claims.user.username, "marie");
    assert!(
        up.last().unwrap().headers.get("authorization").is_none(),
        "the app token is not forwarded"
    );

    // Wrong token, other user's name: refused.
    for auth in [
        basic("marie", "wrong-token-0000"),
        basic("einstein", &token),
    ] {
        let r = get_with(&nodes[1].url("/dav/x"), &[("authorization", &auth)]).await;
        assert_eq!(r.status, 401);
    }
    // An app token cannot manage app tokens.
    let (status, _) = call(&nodes[1], "POST", "/auth-app/tokens?expiry=1h", &app).await;
    assert_eq!(status, 403);
    let (status, _) = call(&nodes[1], "GET", "/auth-app/tokens", &app).await;
    assert_eq!(status, 403);

    // Listed on node 1 (with the hash in place of the token).
    let (status, body) = call(&nodes[1], "GET", "/auth-app/tokens", &oidc).await;
    assert_eq!(status, 200, "{body}");
    let listed: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(listed.len(), 1, "{body}");
    assert_eq!(listed[0]["label"], "rclone");
    let hash = listed[0]["token"].as_str().unwrap().to_owned();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!body.contains(&token));

    // API mistakes.
    let (status, body) = call(&nodes[0], "POST", "/auth-app/tokens?expiry=soon", &oidc).await;
    assert_eq!(
        (status, body.trim()),
        (400, "error parsing expiry. Use e.g. 30m or 72h")
    );
    let (status, body) = call(&nodes[0], "DELETE", "/auth-app/tokens", &oidc).await;
    assert_eq!(
        (status, body.trim()),
        (400, "missing auth-app token. Set 'token' parameter")
    );
    let (status, _) = call(
        &nodes[0],
        "POST",
        "/auth-app/tokens?expiry=1h&userName=einstein",
        &oidc,
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = call(
        &nodes[0],
        "DELETE",
        "/auth-app/tokens?token=nosuchtoken",
        &oidc,
    )
    .await;
    assert_eq!(status, 404);

    // Delete on node 0 (by the listed hash, as the web client does); node 1 refuses soon after.
    let path = format!("/auth-app/tokens?token={}", url_escape(&hash));
    let (status, body) = call(&nodes[0], "DELETE", &path, &oidc).await;
    assert_eq!(status, 200, "{body}");
    let deleted = Instant::now();
    let node1 = &nodes[1];
    let refused = wait_until(Duration::from_secs(1), || async {
        get_with(&node1.url("/dav/after"), &[("authorization", &app)])
            .await
            .status
            == 401
    })
    .await;
    let took = deleted.elapsed();
    println!("node 1 refused the deleted token {took:?} after the deletion");
    assert!(refused, "node 1 still accepts the deleted token after 1 s");
    let (_, body) = call(&nodes[1], "GET", "/auth-app/tokens", &oidc).await;
    assert_eq!(body.trim(), "[]");

    // Tokens created at the same moment on both nodes are all kept (compare-and-set).
    let creations: Vec<_> = (0..6)
        .map(|i| {
            let url = nodes[i % 2].url(&format!("/auth-app/tokens?expiry=1h&label=c{i}"));
            let auth = oidc.clone();
            tokio::spawn(async move {
                send(
                    "POST",
                    &url,
                    &[("authorization", &auth)],
                    gatehouse_tests::client::full(""),
                )
                .await
                .status
                .as_u16()
            })
        })
        .collect();
    for c in creations {
        assert_eq!(c.await.unwrap(), 200);
    }
    let (_, body) = call(&nodes[0], "GET", "/auth-app/tokens", &oidc).await;
    let listed: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(listed.len(), 6, "{body}");

    // An expired token is refused.
    let (status, body) = call(&nodes[0], "POST", "/auth-app/tokens?expiry=1s", &oidc).await;
    assert_eq!(status, 200);
    let short: Value = serde_json::from_str(&body).unwrap();
    let short = basic("marie", short["token"].as_str().unwrap());
    let r = get_with(&nodes[1].url("/dav/short"), &[("authorization", &short)]).await;
    assert_eq!(r.status, 200);
    assert!(
        wait_until(Duration::from_secs(3), || async {
            get_with(&node1.url("/dav/short"), &[("authorization", &short)])
                .await
                .status
                == 401
        })
        .await,
        "an expired token is still accepted"
    );
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
