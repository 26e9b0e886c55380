//! The workers' public-share memo, through the whole pipeline over real sockets: it never
//! answers for longer than the share cache would have (a share that ends is refused from its end
//! on), and requests with other credentials (a share password) are decided afresh every time.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use gatehouse_node::identity::{Identity, IdentityStores};
use gatehouse_node::telemetry::Metrics;
use gatehouse_shared::config::parse_yaml;
use gatehouse_shared::events::{GoTime, NoopSink};
use gatehouse_shared::store::MemoryStore;
use gatehouse_tests::client::get_with;
use gatehouse_tests::shares::{FixtureShare, ShareFixture};
use gatehouse_tests::upstream::Upstream;

const SECRET: &str = "share-memo-test";

struct Gateway {
    addr: std::net::SocketAddr,
    _shutdown: tokio_util::sync::DropGuard,
}

async fn gateway(up: &Upstream, shares: &ShareFixture) -> Gateway {
    let yaml = format!(
        "http:\n  addr: 127.0.0.1:0\n  tls: false\n  workers: 1\ntoken_manager:\n  jwt_secret: {SECRET}\n\
         public_shares:\n  url: {}\n\
         policies:\n  - name: ocis\n    routes:\n      - endpoint: /\n        backend: {}\n",
        shares.url(),
        up.url()
    );
    let config = parse_yaml(&yaml, std::path::Path::new("share-memo-test.yaml")).unwrap();
    let stores = IdentityStores {
        userinfo: Arc::new(MemoryStore::new()),
        state: Arc::new(MemoryStore::new()),
        signing_keys: None,
    };
    let metrics = Metrics::new("share-memo-test");
    let identity = Identity::build(&config, stores, Arc::new(NoopSink), metrics)
        .await
        .unwrap();
    let (addr, _shutdown) = common::serve(&config, identity).await;
    Gateway { addr, _shutdown }
}

fn share_url(gw: &Gateway, token: &str) -> String {
    format!("http://{}/dav/public-files/{token}/file.txt", gw.addr)
}

#[tokio::test]
async fn a_memoised_share_is_refused_from_the_moment_it_ends() {
    let up = Upstream::start("files").await;
    let shares = ShareFixture::start().await;
    let end = SystemTime::now() + Duration::from_millis(1500);
    let expiration = serde_json::to_value(GoTime(end)).unwrap();
    shares.add_share(
        FixtureShare::new("s-ending", "ending").with_expiration(expiration.as_str().unwrap()),
    );
    let gw = gateway(&up, &shares).await;
    let url = share_url(&gw, "ending");
    let headers = [("public-token", "ending")];

    let (mut accepted, mut refused) = (0, 0);
    let mut tokens = std::collections::HashSet::new();
    while refused < 3 {
        let sent = SystemTime::now();
        let reply = get_with(&url, &headers).await;
        let answered = SystemTime::now();
        match reply.status.as_u16() {
            200 => {
                assert!(sent < end, "accepted a request sent after the share ended");
                accepted += 1;
                tokens.insert(up.last().unwrap().headers["x-access-token"].clone());
            }
            401 => {
                assert!(answered >= end, "refused before the share ended");
                refused += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(accepted > 10, "only {accepted} requests accepted");
    assert_eq!(tokens.len(), 1, "one minted token for the whole share");
    assert_eq!(up.count(), accepted, "nothing refused reached the backend");
}

#[tokio::test]
async fn requests_with_a_share_password_are_decided_every_time() {
    let up = Upstream::start("files").await;
    let shares = ShareFixture::start().await;
    shares.add_share(FixtureShare::new("s-pw", "guarded").with_password("right"));
    let gw = gateway(&up, &shares).await;
    let url = share_url(&gw, "guarded");
    let right = "Basic cHVibGljOnJpZ2h0"; // public:right
    let wrong = "Basic cHVibGljOndyb25n"; // public:wrong
    for _ in 0..3 {
        let reply = get_with(
            &url,
            &[("public-token", "guarded"), ("authorization", right)],
        )
        .await;
        assert_eq!(reply.status, 200);
        let reply = get_with(
            &url,
            &[("public-token", "guarded"), ("authorization", wrong)],
        )
        .await;
        assert_eq!(reply.status, 401, "a wrong password after a right one");
        let reply = get_with(&url, &[("public-token", "guarded")]).await;
        assert_eq!(reply.status, 401, "no password after a right one");
    }
    assert_eq!(up.count(), 3);
}
