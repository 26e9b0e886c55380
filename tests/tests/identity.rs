//! Identity on one node against a real OpenID provider (npm `oidc-provider`): bearer tokens (JWT
//! and opaque), the 401/503 answers, the claims cache, IdP outages and rate limits, key rotation,
//! auto-provisioning with the builtin backend, roles, step-up routes, and the `x-access-token`
//! backends receive.

use std::time::Duration;

use gatehouse_shared::token::RevaClaims;
use gatehouse_tests::client::{bearer, empty, get, get_with, send};
use gatehouse_tests::idp::{Idp, TokenOptions, decode_jwt};
use gatehouse_tests::node::{GatehouseNode, NodeOptions};
use gatehouse_tests::upstream::Upstream;
use gatehouse_tests::wait_until;
use serde_json::json;

const SECRET: &str = "gatehouse-test-secret";
const ROLE_USER: &str = "d7beeea8-8ff4-406b-8fb6-ab2dd81e6b11";
/// Opaque access tokens can only be checked at userinfo (as in oCIS, `jwt` verification refuses them).
const OPAQUE: (&str, &str) = ("PROXY_OIDC_ACCESS_TOKEN_VERIFY_METHOD", "none");
const ROLE_ADMIN: &str = "71881883-1768-46bd-a24d-a356a2afdf7f";

fn yaml(idp: &Idp, up: &Upstream, extra: &str) -> String {
    format!(
        "policies:
  - name: ocis
    routes:
      - endpoint: /open/
        backend: {up}
        unprotected: true
      - endpoint: /mfa/
        backend: {up}
        require_mfa: true
      - endpoint: /
        backend: {up}
oidc:
  issuer: {iss}
auto_provision_accounts: true
token_manager:
  jwt_secret: {SECRET}
{extra}",
        up = up.url(),
        iss = idp.issuer(),
    )
}

async fn node(idp: &Idp, up: &Upstream, extra: &str, env: &[(&str, &str)]) -> GatehouseNode {
    let mut opts = NodeOptions::new(&yaml(idp, up, extra));
    for (k, v) in env {
        opts = opts.env(k, v);
    }
    GatehouseNode::start_with(opts).await
}

/// The claims of the `x-access-token` the upstream received last.
fn backend_token(up: &Upstream) -> RevaClaims {
    up.last_access_token(SECRET)
}

#[tokio::test]
async fn jwt_login_provisions_the_user_and_backends_get_a_minted_token() {
    let idp = Idp::start();
    let up = Upstream::start("files").await;
    let gw = node(&idp, &up, "", &[]).await;
    let t = idp.user_token("einstein", TokenOptions::jwt()).await;

    let r = get_with(
        &gw.url("/files/x"),
        &[
            ("authorization", &bearer(t.access_token())),
            ("x-access-token", "forged"),
            ("x-ocis-autoprop-anything", "forged"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}\n{}", r.text(), gw.logs());
    let claims = backend_token(&up);
    assert_eq!(claims.user.username, "einstein");
    assert_eq!(claims.user.display_name, "Albert Einstein");
    assert_eq!(claims.user.mail, "einstein@example.org");
    assert_eq!(claims.iss, idp.issuer());
    let mut groups = claims.user.groups.clone();
    groups.sort();
    assert_eq!(
        groups,
        ["physics-lovers", "sailing-lovers", "users", "violin-haters"]
    );
    assert_eq!(claims.user.roles().unwrap(), [ROLE_USER]);
    let last = up.last().unwrap();
    assert!(last.headers.get("x-ocis-autoprop-anything").is_none());
    assert!(
        last.headers.get("authorization").is_none(),
        "the IdP token is not handed to backends"
    );
    assert_eq!(last.headers["x-multi-factor-authentication"], "true");

    // The same user again: same account, no second provisioning.
    let id = claims.user.id.clone().unwrap().opaque_id;
    let t2 = idp.user_token("einstein", TokenOptions::jwt()).await;
    let r = get_with(
        &gw.url("/files/y"),
        &[("authorization", &bearer(t2.access_token()))],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(backend_token(&up).user.id.unwrap().opaque_id, id);
}

#[tokio::test]
async fn unauthenticated_requests_are_answered_like_ocis() {
    let idp = Idp::start();
    let up = Upstream::start("any").await;
    let gw = node(
        &idp,
        &up,
        "auth_middleware:\n  credentials_by_user_agent:\n    mirall: basic\n",
        &[],
    )
    .await;
    let host = gw.http.to_string();

    let r = get(&gw.url("/graph/v1.0/me")).await;
    assert_eq!(r.status, 401);
    let challenges: Vec<_> = r.headers.get_all("www-authenticate").iter().collect();
    assert_eq!(
        challenges,
        [format!("Bearer realm=\"{host}\", charset=\"UTF-8\"").as_str()]
    );
    assert!(r.body.is_empty());

    let r = send("PROPFIND", &gw.url("/remote.php/webdav/"), &[], empty()).await;
    assert_eq!(r.status, 401);
    let body = r.text();
    assert!(body.starts_with("<?xml"), "{body}");
    assert!(
        body.contains("Sabre\\DAV\\Exception\\PermissionDenied"),
        "{body}"
    );

    let r = get_with(&gw.url("/x"), &[("x-requested-with", "XMLHttpRequest")]).await;
    assert_eq!(r.status, 401);
    assert!(r.headers.get("www-authenticate").is_none());

    let r = get_with(&gw.url("/x"), &[("user-agent", "Mozilla/5.0 mirall/3.1")]).await;
    assert_eq!(
        r.headers["www-authenticate"],
        format!("Basic realm=\"{host}\", charset=\"UTF-8\"").as_str()
    );

    assert_eq!(up.count(), 0, "nothing unauthenticated reached the backend");
    // Requests that pass without credentials: unprotected routes, public paths, OPTIONS and the
    // IdP token endpoint. A client's own x-access-token survives only on unprotected routes.
    let r = get_with(&gw.url("/open/x"), &[("x-access-token", "transfer")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().unwrap().headers["x-access-token"], "transfer");
    let r = get_with(
        &gw.url("/remote.php/dav/public-files/abc"),
        &[("x-access-token", "forged")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(up.last().unwrap().headers.get("x-access-token").is_none());
    let r = send("OPTIONS", &gw.url("/graph/v1.0/me"), &[], empty()).await;
    assert_eq!(r.status, 200);
    let r = send("POST", &gw.url("/konnect/v1/token"), &[], empty()).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.count(), 4);
}

#[tokio::test]
async fn bad_tokens_get_401_never_500() {
    let idp = Idp::start();
    let up = Upstream::start("any").await;
    let gw = node(
        &idp,
        &up,
        "",
        &[("PROXY_OIDC_ACCESS_TOKEN_VERIFY_AUD", "urn:gw")],
    )
    .await;
    let good = idp.user_token("marie", TokenOptions::jwt()).await;
    let parts: Vec<&str> = good.access_token().split('.').collect();
    let b64 = |v: serde_json::Value| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let (_, claims) = decode_jwt(good.access_token());
    let alg_none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"})),
        parts[1]
    );
    let hs256 = format!(
        "{}.{}.{}",
        b64(json!({"alg": "HS256", "kid": "k1"})),
        parts[1],
        parts[2]
    );
    let mut expired_claims = claims.clone();
    expired_claims["exp"] = json!(1_000_000_000);
    let tampered = format!("{}.{}.{}", parts[0], b64(expired_claims), parts[2]);
    let other_audience = idp
        .user_token("marie", TokenOptions::jwt().resource("urn:other"))
        .await;
    let huge = "a".repeat(20_000);
    for (name, token) in [
        ("garbage", "garbage"),
        ("three dots", "a.b.c"),
        ("alg none", alg_none.as_str()),
        ("HS256 with the RS256 signature", hs256.as_str()),
        ("payload changed (expired)", tampered.as_str()),
        ("audience not allowed", other_audience.access_token()),
        ("oversized", huge.as_str()),
    ] {
        let r = get_with(&gw.url("/x"), &[("authorization", &bearer(token))]).await;
        assert_eq!(r.status, 401, "{name}: {}", r.text());
    }
    let r = get_with(
        &gw.url("/x"),
        &[("authorization", &bearer(good.access_token()))],
    )
    .await;
    assert_eq!(r.status, 200, "{}", gw.logs());
    assert_eq!(up.count(), 1);
    assert!(
        !gw.logs().contains(good.access_token()),
        "tokens are never logged"
    );
}

#[tokio::test]
async fn opaque_tokens_are_checked_once_at_userinfo() {
    let idp = Idp::start();
    let up = Upstream::start("any").await;
    let gw = node(&idp, &up, "", &[OPAQUE]).await;
    let t = idp.user_token("marie", TokenOptions::opaque()).await;
    idp.reset_stats().await;
    for i in 0..5 {
        let r = get_with(
            &gw.url(&format!("/x/{i}")),
            &[("authorization", &bearer(t.access_token()))],
        )
        .await;
        assert_eq!(r.status, 200, "{}", gw.logs());
    }
    assert_eq!(idp.count("/me").await, 1, "{}", idp.stats().await);
    assert_eq!(backend_token(&up).user.username, "marie");

    // Concurrent first uses of one new token: one userinfo call.
    let t = idp.user_token("marie", TokenOptions::opaque()).await;
    idp.reset_stats().await;
    let auth = bearer(t.access_token());
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let url = gw.url("/x");
            let auth = auth.clone();
            tokio::spawn(async move { get_with(&url, &[("authorization", &auth)]).await.status })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(idp.count("/me").await, 1);

    // What the node reports about it.
    let metrics = get(&gw.debug_url("/metrics")).await.text();
    assert_eq!(
        metric(
            &metrics,
            r#"gatehouse_idp_requests_total{endpoint="userinfo",outcome="ok"}"#
        ),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            r#"gatehouse_authentications_total{result="accepted"}"#
        ),
        Some(25.0)
    );
}

/// The value of one series in a Prometheus text exposition.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test]
async fn idp_outage_keeps_cached_sessions_and_answers_503_for_new_ones() {
    let mut idp = Idp::start();
    let up = Upstream::start("any").await;
    let gw = node(&idp, &up, "", &[OPAQUE]).await;
    let known = idp.user_token("einstein", TokenOptions::opaque()).await;
    let fresh = idp.user_token("marie", TokenOptions::opaque()).await;
    let r = get_with(
        &gw.url("/x"),
        &[("authorization", &bearer(known.access_token()))],
    )
    .await;
    assert_eq!(r.status, 200);

    idp.kill();
    let r = get_with(
        &gw.url("/x"),
        &[("authorization", &bearer(known.access_token()))],
    )
    .await;
    assert_eq!(r.status, 200, "a cached session survives an IdP outage");
    let r = get_with(
        &gw.url("/x"),
        &[("authorization", &bearer(fresh.access_token()))],
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.text());
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1);
    assert!(r.headers.get("www-authenticate").is_none());
}

#[tokio::test]
async fn idp_rate_limit_is_answered_with_503_and_honoured() {
    let idp = Idp::start();
    let up = Upstream::start("any").await;
    let gw = node(&idp, &up, "", &[OPAQUE]).await;
    let t = idp.user_token("marie", TokenOptions::opaque()).await;
    idp.fail("/me", 429, Some(2), None).await;
    idp.reset_stats().await;
    let auth = bearer(t.access_token());
    let r = get_with(&gw.url("/x"), &[("authorization", &auth)]).await;
    assert_eq!(r.status, 503);
    assert!(
        r.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    let r = get_with(&gw.url("/x"), &[("authorization", &auth)]).await;
    assert_eq!(r.status, 503);
    assert_eq!(idp.count("/me").await, 1, "no call while Retry-After runs");
    let metrics = get(&gw.debug_url("/metrics")).await.text();
    assert_eq!(
        metric(
            &metrics,
            r#"gatehouse_idp_requests_total{endpoint="userinfo",outcome="unavailable"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            r#"gatehouse_idp_requests_total{endpoint="userinfo",outcome="backoff"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &metrics,
            r#"gatehouse_authentications_total{result="idp_unavailable"}"#
        ),
        Some(2.0)
    );

    idp.clear_failures().await;
    let ok = wait_until(Duration::from_secs(10), || async {
        get_with(&gw.url("/x"), &[("authorization", &auth)])
            .await
            .status
            == 200
    })
    .await;
    assert!(ok, "the token works once the IdP answers again");
}

#[tokio::test]
async fn key_rotation_at_the_idp_is_picked_up() {
    let mut idp = Idp::start_with_kid("k1");
    let up = Upstream::start("any").await;
    let gw = node(&idp, &up, "", &[("PROXY_OIDC_SKIP_USER_INFO", "true")]).await;
    let old = idp.user_token("einstein", TokenOptions::jwt()).await;
    let r = get_with(
        &gw.url("/x"),
        &[("authorization", &bearer(old.access_token()))],
    )
    .await;
    assert_eq!(r.status, 200, "{}", gw.logs());

    idp.restart_with_kid("k2");
    let new = idp.user_token("einstein", TokenOptions::jwt()).await;
    assert_eq!(new.access_header()["kid"], "k2");
    let r = get_with(
        &gw.url("/x"),
        &[("authorization", &bearer(new.access_token()))],
    )
    .await;
    assert_eq!(r.status, 200, "{}", gw.logs());
    // A token signed with a key that was never published stays refused.
    let parts: Vec<&str> = new.access_token().split('.').collect();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        parts[1],
        &old.access_token().split('.').nth(2).unwrap()
    );
    let r = get_with(&gw.url("/x"), &[("authorization", &bearer(&forged))]).await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn oidc_roles_quotas_and_claim_managed_spaces() {
    let idp = Idp::start();
    let up = Upstream::start("any").await;
    let extra = format!(
        "role_assignment:
  driver: oidc
role_quotas:
  {ROLE_ADMIN}: 1000000
claim_space_management:
  enabled: true
  claim: spaces
  regexp: 'spaceid=([a-zA-Z0-9-]+),roleid=(.*)'
  mapping: ['overseer:manager', 'worker:editor', 'ghoul:viewer']
"
    );
    let gw = node(&idp, &up, &extra, &[("PROXY_OIDC_SKIP_USER_INFO", "true")]).await;
    let spaces = json!({"spaces": ["spaceid=vault36,roleid=worker", "spaceid=vault36,roleid=overseer",
                                   "spaceid=vault76,roleid=ghoul", "spaceid=x,roleid=radroach"]});
    let t = idp
        .user_token("einstein", TokenOptions::jwt().extra_claims(spaces))
        .await;
    let r = get_with(
        &gw.url("/x"),
        &[("authorization", &bearer(t.access_token()))],
    )
    .await;
    assert_eq!(r.status, 200, "{}", gw.logs());
    let user = backend_token(&up).user;
    assert_eq!(user.roles().unwrap(), [ROLE_ADMIN]);
    let opaque = user.opaque.expect("opaque entries");
    assert_eq!(opaque.map["quota"].value, b"1000000");
    let spaces: serde_json::Value =
        serde_json::from_slice(&opaque.map["claim-managed-spaces"].value).unwrap();
    assert_eq!(spaces, json!({"vault36": "manager", "vault76": "viewer"}));

    // newton's token has no role claim value that maps: refused with 403, not 500.
    let t = idp.user_token("newton", TokenOptions::jwt()).await;
    let r = get_with(
        &gw.url("/x"),
        &[("authorization", &bearer(t.access_token()))],
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    // marie (ocisUser) gets the user role and no quota.
    let t = idp.user_token("marie", TokenOptions::jwt()).await;
    let r = get_with(
        &gw.url("/x"),
        &[("authorization", &bearer(t.access_token()))],
    )
    .await;
    assert_eq!(r.status, 200);
    let user = backend_token(&up).user;
    assert_eq!(user.roles().unwrap(), [ROLE_USER]);
}

#[tokio::test]
async fn step_up_routes_require_a_sufficient_acr() {
    let idp = Idp::start();
    let up = Upstream::start("any").await;
    let gw = node(
        &idp,
        &up,
        "mfa:\n  enabled: true\n",
        &[("PROXY_OIDC_SKIP_USER_INFO", "true")],
    )
    .await;
    let plain = idp.user_token("marie", TokenOptions::jwt()).await;
    let strong = idp
        .user_token("marie", TokenOptions::jwt().acr("advanced"))
        .await;

    let r = get_with(
        &gw.url("/mfa/secret"),
        &[("authorization", &bearer(plain.access_token()))],
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.headers["x-ocis-mfa-required"], "true");

    let r = get_with(
        &gw.url("/files"),
        &[
            ("authorization", &bearer(plain.access_token())),
            ("x-multi-factor-authentication", "true"),
            ("x-ocis-autoprop-mfa-authenticated", "true"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let last = up.last().unwrap();
    assert_eq!(last.headers["x-multi-factor-authentication"], "false");
    assert!(
        last.headers
            .get("x-ocis-autoprop-mfa-authenticated")
            .is_none()
    );

    let r = get_with(
        &gw.url("/mfa/secret"),
        &[("authorization", &bearer(strong.access_token()))],
    )
    .await;
    assert_eq!(r.status, 200, "{}", gw.logs());
    let last = up.last().unwrap();
    assert_eq!(last.headers["x-multi-factor-authentication"], "true");
    assert_eq!(last.headers["x-ocis-autoprop-mfa-authenticated"], "true");
}

#[tokio::test]
async fn unknown_users_are_refused_without_autoprovisioning() {
    let idp = Idp::start();
    let up = Upstream::start("any").await;
    let gw = node(
        &idp,
        &up,
        "",
        &[("PROXY_AUTOPROVISION_ACCOUNTS", "false"), OPAQUE],
    )
    .await;
    let t = idp.user_token("marie", TokenOptions::opaque()).await;
    let r = get_with(
        &gw.url("/x"),
        &[("authorization", &bearer(t.access_token()))],
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(up.count(), 0);
}
