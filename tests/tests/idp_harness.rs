//! Smoke tests of the test OpenID provider harness: the real `oidc-provider` process serves what
//! the gateway's tests rely on (discovery, JWKS, token formats and claims, userinfo, failure
//! injection, key rotation, request counts).

use std::time::Duration;

use gatehouse_tests::client;
use gatehouse_tests::idp::{GW_AUDIENCE, Idp, TokenOptions};
use serde_json::{Value, json};

async fn get_json(url: &str) -> Value {
    let reply = client::get(url).await;
    assert_eq!(reply.status, 200, "GET {url}: {}", reply.text());
    serde_json::from_slice(&reply.body).expect("JSON")
}

fn kids(jwks: &Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .expect("keys array")
        .iter()
        .map(|k| k["kid"].as_str().expect("kid").to_string())
        .collect()
}

fn modulus_of(jwks: &Value, kid: &str) -> String {
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .and_then(|k| k["n"].as_str())
        .unwrap_or_else(|| panic!("no key {kid} in {jwks}"))
        .to_string()
}

#[tokio::test]
async fn discovery_and_jwks_are_served() {
    let idp = Idp::start();
    let discovery = get_json(&idp.discovery_url()).await;
    assert_eq!(discovery["issuer"], idp.issuer());
    assert_eq!(discovery["jwks_uri"], idp.jwks_url());
    assert_eq!(discovery["userinfo_endpoint"], idp.userinfo_url());
    assert_eq!(discovery["token_endpoint"], idp.token_url());

    let jwks = get_json(&idp.jwks_url()).await;
    assert_eq!(kids(&jwks), ["k1"]);
    let key = &jwks["keys"][0];
    assert_eq!(key["kty"], "RSA");
    assert_eq!(key["alg"], "RS256");
    assert!(key.get("d").is_none(), "private key published: {key}");
}

#[tokio::test]
async fn password_grant_jwt_carries_identity_roles_and_requested_claims() {
    let idp = Idp::start();
    let t = idp.user_token("einstein", TokenOptions::jwt()).await;
    let header = t.access_header();
    assert_eq!(header["kid"], "k1");
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["typ"], "at+jwt");
    let c = t.access_claims();
    assert_eq!(c["iss"], idp.issuer());
    assert_eq!(c["aud"], GW_AUDIENCE);
    assert_eq!(c["sub"], "einstein");
    assert_eq!(c["preferred_username"], "einstein");
    assert_eq!(c["email"], "einstein@example.org");
    assert_eq!(c["roles"], json!(["ocisAdmin"]));
    assert!(c["groups"].as_array().unwrap().contains(&json!("users")));
    assert!(c.get("acr").is_none(), "acr without asking: {c}");
    let sid = c["sid"].as_str().expect("sid");
    let id = t.id_claims();
    assert_eq!(id["sid"], sid);
    assert_eq!(id["aud"], "gw-test");
    assert_eq!(id["groups"], c["groups"]);

    let crafted = idp
        .user_token(
            "marie",
            TokenOptions::jwt()
                .acr("advanced")
                .sid("session-7")
                .extra_claims(json!({
                    "spaces": ["spaceid=vault36,roleid=overseer"],
                    "roles": ["ocisSpaceAdmin"],
                    "groups": null,
                    "sub": "mallory"
                })),
        )
        .await;
    let c = crafted.access_claims();
    assert_eq!(c["sub"], "marie", "registered claims cannot be overridden");
    assert_eq!(c["acr"], "advanced");
    assert_eq!(c["sid"], "session-7");
    assert_eq!(c["spaces"], json!(["spaceid=vault36,roleid=overseer"]));
    assert_eq!(c["roles"], json!(["ocisSpaceAdmin"]));
    assert!(c.get("groups").is_none(), "null did not remove groups: {c}");
    let id = crafted.id_claims();
    assert_eq!(id["acr"], "advanced");
    assert_eq!(id["sid"], "session-7");

    let newton = idp.user_token("newton", TokenOptions::jwt()).await;
    let c = newton.access_claims();
    assert_eq!(c["groups"], json!([]));
    assert!(c.get("roles").is_none(), "newton has no roles: {c}");

    let other = idp
        .user_token("einstein", TokenOptions::jwt().resource("urn:other"))
        .await;
    assert_eq!(other.access_claims()["aud"], "urn:other");
}

#[tokio::test]
async fn userinfo_answers_for_opaque_and_jwt_tokens() {
    let idp = Idp::start();
    let opaque = idp.user_token("marie", TokenOptions::opaque()).await;
    assert_eq!(
        opaque.access_token().split('.').count(),
        1,
        "not opaque: {}",
        opaque.access_token()
    );
    let reply = idp.userinfo(opaque.access_token()).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let info: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(info["sub"], "marie");
    assert_eq!(info["email"], "marie@example.org");
    assert_eq!(
        info["groups"],
        json!([
            "users",
            "radium-lovers",
            "polonium-lovers",
            "physics-lovers"
        ])
    );
    assert_eq!(info["roles"], json!(["ocisUser"]));
    assert!(info.get("acr").is_none());

    let jwt = idp
        .user_token("einstein", TokenOptions::jwt().acr("mfa"))
        .await;
    let reply = idp.userinfo(jwt.access_token()).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let info: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(info["sub"], "einstein");
    assert_eq!(info["acr"], "mfa");

    let narrow = idp
        .user_token("newton", TokenOptions::opaque().scope("openid groups"))
        .await;
    let info: Value =
        serde_json::from_slice(&idp.userinfo(narrow.access_token()).await.body).unwrap();
    assert_eq!(info, json!({"sub": "newton", "groups": []}));

    let reply = idp.userinfo("not-a-token").await;
    assert_eq!(reply.status, 401);
}

#[tokio::test]
async fn wrong_credentials_are_refused() {
    let idp = Idp::start();
    let t = idp
        .password_token("einstein", "gravity", TokenOptions::jwt())
        .await;
    assert_eq!(t.status, 400);
    assert_eq!(t.error(), Some("invalid_grant"));
    assert!(!t.is_success());
    let t = idp
        .password_token("nobody", "relativity", TokenOptions::opaque())
        .await;
    assert_eq!(t.error(), Some("invalid_grant"));
    let t = idp
        .password_token("marie", "radioactivity", TokenOptions::opaque())
        .await;
    assert!(t.is_success());
}

#[tokio::test]
async fn injected_failures_answer_with_retry_after_until_cleared_or_used_up() {
    let idp = Idp::start();
    let token = idp.user_token("einstein", TokenOptions::opaque()).await;

    idp.fail("/me", 429, Some(2), None).await;
    for _ in 0..2 {
        let reply = idp.userinfo(token.access_token()).await;
        assert_eq!(reply.status, 429);
        assert_eq!(reply.header("retry-after"), Some("2"));
    }
    idp.clear_failures().await;
    assert_eq!(idp.userinfo(token.access_token()).await.status, 200);

    idp.fail("/jwks", 503, None, Some(1)).await;
    let reply = client::get(&idp.jwks_url()).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("retry-after"), None);
    assert_eq!(client::get(&idp.jwks_url()).await.status, 200);

    idp.delay(
        "/.well-known/openid-configuration",
        Duration::from_millis(300),
        Some(1),
    )
    .await;
    let started = std::time::Instant::now();
    let reply = client::get(&idp.discovery_url()).await;
    assert_eq!(reply.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn restarts_keep_or_rotate_the_signing_key() {
    let mut idp = Idp::start();
    let issuer = idp.issuer();
    let k1 = modulus_of(&get_json(&idp.jwks_url()).await, "k1");

    idp.restart();
    assert_eq!(idp.issuer(), issuer);
    let jwks = get_json(&idp.jwks_url()).await;
    assert_eq!(kids(&jwks), ["k1"]);
    assert_eq!(modulus_of(&jwks, "k1"), k1, "restart changed the key");

    idp.restart_with_kid("k2");
    let jwks = get_json(&idp.jwks_url()).await;
    assert_eq!(kids(&jwks), ["k2"]);
    assert_ne!(modulus_of(&jwks, "k2"), k1);
    let t = idp.user_token("einstein", TokenOptions::jwt()).await;
    assert_eq!(t.access_header()["kid"], "k2");
    assert_eq!(idp.kid(), "k2");

    idp.restart_with_keys("k3", &["k1"]);
    let jwks = get_json(&idp.jwks_url()).await;
    assert_eq!(kids(&jwks), ["k3", "k1"]);
    assert_eq!(modulus_of(&jwks, "k1"), k1);
    let t = idp.user_token("marie", TokenOptions::jwt()).await;
    assert_eq!(t.access_header()["kid"], "k3");
    assert_eq!(t.id_claims()["iss"], issuer);

    idp.kill();
    assert!(!idp.is_running());
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", idp.port()))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn stats_count_requests_per_path() {
    let idp = Idp::start();
    let token = idp.user_token("einstein", TokenOptions::opaque()).await;
    idp.reset_stats().await;
    assert_eq!(idp.count("/me").await, 0);
    for _ in 0..3 {
        assert_eq!(idp.userinfo(token.access_token()).await.status, 200);
    }
    idp.fail("/me", 500, None, Some(1)).await;
    assert_eq!(idp.userinfo(token.access_token()).await.status, 500);
    get_json(&idp.jwks_url()).await;
    assert_eq!(idp.count("/me").await, 4);
    assert_eq!(idp.count("/jwks").await, 1);
    assert_eq!(idp.count("/token").await, 0);
    let stats = idp.stats().await;
    assert!(
        stats
            .as_object()
            .unwrap()
            .keys()
            .all(|k| !k.starts_with("/__admin")),
        "admin calls counted: {stats}"
    );
    idp.reset_stats().await;
    assert_eq!(idp.count("/me").await, 0);
}
