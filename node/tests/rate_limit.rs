//! The rate-limit layers in their places in the pipeline, over real sockets: an address rule
//! refuses before any authenticator runs (a flood of bad credentials costs no verification and
//! reaches nothing), a user rule does not count requests that have no user (public shares), and
//! a refusal answers 429 with `Retry-After` and is counted by rule.

mod common;

use std::sync::Arc;

use gatehouse_node::identity::{Identity, IdentityStores};
use gatehouse_node::telemetry::Metrics;
use gatehouse_shared::config::parse_yaml;
use gatehouse_shared::events::NoopSink;
use gatehouse_shared::store::MemoryStore;
use gatehouse_tests::client::get_with;
use gatehouse_tests::shares::{FixtureShare, ShareFixture};
use gatehouse_tests::upstream::Upstream;

struct Gateway {
    addr: std::net::SocketAddr,
    metrics: Arc<Metrics>,
    _shutdown: tokio_util::sync::DropGuard,
}

async fn gateway(up: &Upstream, shares: &ShareFixture, rules: &str) -> Gateway {
    let yaml = format!(
        "http:\n  addr: 127.0.0.1:0\n  tls: false\n  workers: 1\ntoken_manager:\n  jwt_secret: rate-limit-test\n\
         public_shares:\n  url: {}\n\
         policies:\n  - name: ocis\n    routes:\n      - endpoint: /\n        backend: {}\n\
         rate_limits:\n{rules}",
        shares.url(),
        up.url()
    );
    let config = parse_yaml(&yaml, std::path::Path::new("rate-limit-test.yaml")).unwrap();
    let stores = IdentityStores {
        userinfo: Arc::new(MemoryStore::new()),
        state: Arc::new(MemoryStore::new()),
        signing_keys: None,
    };
    let metrics = Metrics::new("rate-limit-test");
    let identity = Identity::build(&config, stores, Arc::new(NoopSink), metrics.clone())
        .await
        .unwrap();
    let (addr, _shutdown) = common::serve(&config, identity).await;
    Gateway {
        addr,
        metrics,
        _shutdown,
    }
}

#[tokio::test]
async fn an_address_rule_refuses_before_authentication() {
    let up = Upstream::start("files").await;
    let shares = ShareFixture::start().await;
    shares.add_share(FixtureShare::new("s-pw", "pwtoken").with_password("secret"));
    let gw = gateway(
        &up,
        &shares,
        "  - {name: everything, requests: 3, period: 1m}\n",
    )
    .await;
    let url = format!("http://{}/dav/public-files/pwtoken/a.txt", gw.addr);
    let mut statuses = Vec::new();
    // `public:wrong1` … `public:wrong6`: wrong share passwords, each new to the share cache.
    for i in 1..=6 {
        let auth = format!(
            "Basic cHVibGljOndyb25n{}",
            ["MQ==", "Mg==", "Mw==", "NA==", "NQ==", "Ng=="][i - 1]
        );
        let headers = [
            ("public-token", "pwtoken"),
            ("authorization", auth.as_str()),
        ];
        let r = get_with(&url, &headers).await;
        if r.status == 429 {
            // One token per 20 s.
            assert_eq!(r.header("retry-after"), Some("20"));
        }
        statuses.push(r.status.as_u16());
    }
    assert_eq!(statuses, [401, 401, 401, 429, 429, 429]);
    assert_eq!(up.count(), 0);
    assert_eq!(
        shares.count(),
        3,
        "the share service was asked only for the admitted requests"
    );
    let text = gw.metrics.encode();
    assert!(
        text.contains("gatehouse_rate_limited_total{rule=\"everything\"} 3"),
        "{text}"
    );
    // Refused requests were not authenticated: three refusals by the authenticators only.
    assert!(
        text.contains("gatehouse_authentications_total{result=\"refused\"} 3"),
        "{text}"
    );
}

#[tokio::test]
async fn a_user_rule_does_not_count_requests_without_a_user() {
    let up = Upstream::start("files").await;
    let shares = ShareFixture::start().await;
    shares.add_share(FixtureShare::new("s-open", "opentoken"));
    let gw = gateway(
        &up,
        &shares,
        "  - {name: users, per: user, requests: 1, period: 1m}\n",
    )
    .await;
    let url = format!("http://{}/dav/public-files/opentoken/a.txt", gw.addr);
    for _ in 0..5 {
        let r = get_with(&url, &[("public-token", "opentoken")]).await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(up.count(), 5);
}
