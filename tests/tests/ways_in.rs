//! The ways in besides OIDC bearer tokens, on one node against a real OpenID provider: signed
//! URLs with keys served by the gateway (and step-up inherited from an OIDC login), public-share
//! tokens checked by a share service, and Basic auth against the builtin demo users.

use std::time::{Duration, SystemTime};

use gatehouse_shared::token::RevaClaims;
use gatehouse_tests::client::{bearer, get, get_with};
use gatehouse_tests::idp::{Idp, TokenOptions};
use gatehouse_tests::node::{GatehouseNode, NodeOptions};
use gatehouse_tests::signing::{Link, sign};
use gatehouse_tests::upstream::Upstream;
use gatehouse_tests::wait_until;
use serde_json::Value;

const SECRET: &str = "gatehouse-test-secret";
const ROLE_USER: &str = "d7beeea8-8ff4-406b-8fb6-ab2dd81e6b11";
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

async fn node(idp: &Idp, up: &Upstream, extra: &str) -> GatehouseNode {
    GatehouseNode::start_with(NodeOptions::new(&yaml(idp, up, extra))).await
}

const SIGNED: &str =
    "pre_signed_url:\n  serve_signing_keys: true\n  signing_keys: {store: memory}\n";

/// The claims of the `x-access-token` the upstream received last.
fn backend_token(up: &Upstream) -> RevaClaims {
    up.last_access_token(SECRET)
}

/// `GET /ocs/v1.php/cloud/user/signing-key` as `token`: (user id, key).
async fn signing_key(gw: &GatehouseNode, token: &str) -> (String, String) {
    let r = get_with(
        &gw.url("/ocs/v1.php/cloud/user/signing-key"),
        &[("authorization", &bearer(token))],
    )
    .await;
    assert_eq!(r.status, 200, "{}\n{}", r.text(), gw.logs());
    let v: Value = serde_json::from_slice(&r.body).expect("OCS JSON");
    assert_eq!(v["ocs"]["meta"]["statuscode"], 100, "{v}");
    let data = &v["ocs"]["data"];
    (
        data["user"].as_str().unwrap().to_owned(),
        data["signing-key"].as_str().unwrap().to_owned(),
    )
}

fn link<'a>(gw: &'a str, path: &'a str, params: &'a str, user: &'a str) -> Link<'a> {
    Link {
        host: gw,
        path,
        params,
        user,
        verb: "GET",
        signed_at: SystemTime::now(),
        expires: Duration::from_secs(600),
    }
}

#[tokio::test]
async fn signed_urls_with_gateway_served_keys() {
    let idp = Idp::start();
    let up = Upstream::start("files").await;
    let gw = node(&idp, &up, SIGNED).await;
    let host = gw.http.to_string();
    let t = idp.user_token("einstein", TokenOptions::jwt()).await;

    // The key is created once and then served again; format=xml gives the XML envelope.
    let (user_id, key) = signing_key(&gw, t.access_token()).await;
    assert_eq!(key.len(), 128);
    assert!(key.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(
        signing_key(&gw, t.access_token()).await,
        (user_id.clone(), key.clone())
    );
    let xml = get_with(
        &gw.url("/ocs/v2.php/cloud/user/signing-key?format=xml"),
        &[("authorization", &bearer(t.access_token()))],
    )
    .await;
    assert_eq!(xml.status, 200);
    assert!(xml.text().contains(&key), "{}", xml.text());
    // Anonymous callers get nothing: the endpoint is protected.
    assert_eq!(
        get(&gw.url("/ocs/v1.php/cloud/user/signing-key"))
            .await
            .status,
        401
    );

    let url = sign(
        &link(&host, "/files/report.pdf", "x=1&id=7", "einstein"),
        &key,
    );
    let before = up.count();
    for _ in 0..2 {
        let r = get(&gw.url(&url)).await;
        assert_eq!(r.status, 200, "{}\n{}", r.text(), gw.logs());
    }
    assert_eq!(up.count(), before + 2);
    let claims = backend_token(&up);
    assert_eq!(claims.user.username, "einstein");
    assert_eq!(claims.user.roles().unwrap(), [ROLE_USER]);
    assert_eq!(claims.user.id.unwrap().opaque_id, user_id);
    let last = up.last().unwrap();
    assert!(
        last.uri.contains("OC-Signature="),
        "the query reaches the backend"
    );

    // Every tampering, expiry and misuse is refused before reaching the backend.
    let refused = [
        ("tampered parameter", url.replace("x=1", "x=2")),
        ("tampered path", url.replace("report.pdf", "other.pdf")),
        (
            "other user's name",
            sign(&link(&host, "/files/r", "", "marie"), &key),
        ),
        (
            "unknown user",
            sign(&link(&host, "/files/r", "", "nobody"), &key),
        ),
        (
            "wrong key",
            sign(&link(&host, "/files/r", "", "einstein"), &"0".repeat(128)),
        ),
        (
            "expired",
            sign(
                &Link {
                    signed_at: SystemTime::now() - Duration::from_secs(700),
                    ..link(&host, "/files/r", "", "einstein")
                },
                &key,
            ),
        ),
        (
            "lifetime beyond the maximum",
            sign(
                &Link {
                    expires: Duration::from_secs(8 * 24 * 3600),
                    ..link(&host, "/files/r", "", "einstein")
                },
                &key,
            ),
        ),
        (
            "signed for PUT, used with GET",
            sign(
                &Link {
                    verb: "PUT",
                    ..link(&host, "/files/r", "", "einstein")
                },
                &key,
            ),
        ),
        (
            "signed for another host",
            sign(&link("evil.example", "/files/r", "", "einstein"), &key),
        ),
    ];
    for (case, url) in refused {
        let r = get(&gw.url(&url)).await;
        assert_eq!(r.status, 401, "{case}: {}", r.text());
    }
    assert_eq!(
        up.count(),
        before + 2,
        "nothing refused reached the backend"
    );
}

#[tokio::test]
async fn signed_urls_inherit_step_up_from_the_users_oidc_login() {
    let idp = Idp::start();
    let up = Upstream::start("files").await;
    let gw = node(
        &idp,
        &up,
        &format!("{SIGNED}mfa:\n  enabled: true\n  auth_level_name: [advanced]\n"),
    )
    .await;
    let host = gw.http.to_string();
    let regular = idp.user_token("marie", TokenOptions::jwt()).await;
    let (_, key) = signing_key(&gw, regular.access_token()).await;
    let url = sign(&link(&host, "/mfa/secret", "", "marie"), &key);

    // Without a step-up login the signed URL is not step-up either.
    let r = get(&gw.url(&url)).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.headers["x-ocis-mfa-required"], "true");
    let plain = sign(&link(&host, "/files/a", "", "marie"), &key);
    assert_eq!(get(&gw.url(&plain)).await.status, 200);
    assert_eq!(
        up.last().unwrap().headers["x-multi-factor-authentication"],
        "false"
    );

    // One request with an `advanced` acr proves it for the session duration.
    let advanced = idp
        .user_token("marie", TokenOptions::jwt().acr("advanced"))
        .await;
    let r = get_with(
        &gw.url("/files/x"),
        &[("authorization", &bearer(advanced.access_token()))],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(
        wait_until(Duration::from_secs(5), || async {
            get(&gw.url(&url)).await.status == 200
        })
        .await,
        "the signed URL inherits the step-up\n{}",
        gw.logs()
    );
    let last = up.last().unwrap();
    assert_eq!(last.headers["x-multi-factor-authentication"], "true");
    assert_eq!(last.headers["x-ocis-autoprop-mfa-authenticated"], "true");
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

#[tokio::test]
async fn basic_auth_against_the_demo_users() {
    let idp = Idp::start();
    let up = Upstream::start("files").await;
    let gw = node(
        &idp,
        &up,
        "enable_basic_auth: true\nbuiltin_accounts:\n  demo_users: true\n",
    )
    .await;
    assert!(
        gw.logs().contains("WARNING: Basic auth is enabled"),
        "a warning says basic auth is on\n{}",
        gw.logs()
    );

    let r = get_with(
        &gw.url("/files/x"),
        &[("authorization", &basic("einstein", "relativity"))],
    )
    .await;
    assert_eq!(r.status, 200, "{}\n{}", r.text(), gw.logs());
    let claims = backend_token(&up);
    assert_eq!(claims.user.username, "einstein");
    assert_eq!(claims.user.roles().unwrap(), [ROLE_USER]);
    assert!(
        up.last().unwrap().headers.get("authorization").is_none(),
        "passwords are not handed to backends"
    );
    let r = get_with(
        &gw.url("/files/x"),
        &[("authorization", &basic("admin", "admin"))],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(backend_token(&up).user.roles().unwrap(), [ROLE_ADMIN]);

    let before = up.count();
    for (user, password) in [
        ("einstein", "wrong"),
        ("einstein", ""),
        ("nobody", "relativity"),
    ] {
        let r = get_with(
            &gw.url("/files/x"),
            &[("authorization", &basic(user, password))],
        )
        .await;
        assert_eq!(r.status, 401, "{user}:{password}");
        let challenges: Vec<_> = r
            .headers
            .get_all("www-authenticate")
            .iter()
            .map(|v| v.to_str().unwrap().split(' ').next().unwrap().to_owned())
            .collect();
        assert_eq!(challenges, ["Bearer", "Basic"]);
    }
    assert_eq!(up.count(), before);

    // Bearer tokens keep working next to Basic.
    let t = idp.user_token("marie", TokenOptions::jwt()).await;
    let r = get_with(
        &gw.url("/files/y"),
        &[("authorization", &bearer(t.access_token()))],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(backend_token(&up).user.username, "marie");
}

#[tokio::test]
async fn basic_auth_is_off_by_default() {
    let idp = Idp::start();
    let up = Upstream::start("files").await;
    let gw = node(&idp, &up, "builtin_accounts:\n  demo_users: true\n").await;
    let r = get_with(
        &gw.url("/files/x"),
        &[("authorization", &basic("einstein", "relativity"))],
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn public_share_tokens_checked_by_the_share_service() {
    use gatehouse_tests::shares::{Failure, FixtureShare, ShareFixture};
    let idp = Idp::start();
    let up = Upstream::start("dav").await;
    let shares = ShareFixture::start().await;
    shares.add_share(FixtureShare::new("s-open", "opentoken"));
    shares.add_share(FixtureShare::new("s-pw", "pwtoken").with_password("examples3cr3t"));
    shares.add_share(
        FixtureShare::new("s-sig", "sigtoken")
            .with_signature("examplesignature", "2099-01-01T00:00:00Z"),
    );
    let gw = node(
        &idp,
        &up,
        &format!("public_shares:\n  url: {}\n", shares.url()),
    )
    .await;
    let dav = |token: &str| gw.url(&format!("/dav/public-files/{token}/doc.txt"));

    // A share token in the header or the query, with the right secret, reaches the backend
    // with a token minted for the share (a client's own x-access-token is replaced).
    let r = get_with(
        &dav("opentoken"),
        &[("public-token", "opentoken"), ("x-access-token", "forged")],
    )
    .await;
    assert_eq!(r.status, 200, "{}\n{}", r.text(), gw.logs());
    let claims = backend_token(&up);
    assert_eq!(claims.user.username, "einstein", "the owner, as reva does");
    assert!(
        claims.scope.contains_key("publicshare:s-open"),
        "{:?}",
        claims.scope.keys()
    );
    assert!(
        !claims.scope.contains_key("user"),
        "no owner scope for a guest"
    );
    let r = get_with(
        &dav("pwtoken"),
        &[
            ("public-token", "pwtoken"),
            ("authorization", &basic("public", "examples3cr3t")),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(backend_token(&up).scope.contains_key("publicshare:s-pw"));
    assert!(up.last().unwrap().headers.get("authorization").is_none());
    let r = get(&gw.url(
        "/dav/public-files/sigtoken/a?public-token=sigtoken&signature=examplesignature&expiration=2099-01-01T00%3A00%3A00Z",
    ))
    .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Wrong or missing secrets, unknown tokens: 401, nothing reaches the backend.
    let before = up.count();
    for (case, url, headers) in [
        ("wrong password", dav("pwtoken"), vec![("public-token", "pwtoken".to_owned()), ("authorization", basic("public", "nope"))]),
        ("no password", dav("pwtoken"), vec![("public-token", "pwtoken".to_owned())]),
        ("unknown token", dav("nosuch"), vec![("public-token", "nosuch".to_owned())]),
        (
            "signature without expiration",
            gw.url("/dav/public-files/sigtoken/a?public-token=sigtoken&signature=examplesignature"),
            vec![],
        ),
        (
            "wrong signature",
            gw.url("/dav/public-files/sigtoken/a?public-token=sigtoken&signature=forged&expiration=2099-01-01T00%3A00%3A00Z"),
            vec![],
        ),
    ] {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = get_with(&url, &headers).await;
        assert_eq!(r.status, 401, "{case}: {}", r.text());
    }
    assert_eq!(up.count(), before, "nothing refused reached the backend");

    // A public path without any token passes on anonymously (the backend decides); a share
    // token never opens a path that is not public, such as the signing-key endpoint.
    let r = get(&gw.url("/dav/public-files/whatever")).await;
    assert_eq!(r.status, 200);
    assert!(up.last().unwrap().headers.get("x-access-token").is_none());
    let r = get_with(
        &gw.url("/ocs/v1.php/cloud/user/signing-key"),
        &[("public-token", "opentoken")],
    )
    .await;
    assert_eq!(r.status, 401);

    // The share service down: 503, not 401 (the link may well be good).
    shares.set_failure(Failure::Status(503, Some(7)));
    let r = get_with(&dav("pwtoken2"), &[("public-token", "pwtoken2")]).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.headers.get("retry-after").is_some());
}
