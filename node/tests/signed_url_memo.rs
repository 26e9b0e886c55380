//! The workers' signed-URL memo, through the whole pipeline over real sockets: a repeated signed
//! URL is answered without reading the signing-key store, and every change to that store (a key
//! rotated or deleted) refuses the URLs it invalidates at once, exactly as without the memo.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use gatehouse_node::accounts::backend::NewUser;
use gatehouse_node::identity::{Identity, IdentityStores};
use gatehouse_node::telemetry::Metrics;
use gatehouse_shared::config::parse_yaml;
use gatehouse_shared::events::NoopSink;
use gatehouse_shared::store::testing::FaultyStore;
use gatehouse_shared::store::{MemoryStore, Store};
use gatehouse_tests::signing::{Link, sign};
use gatehouse_tests::upstream::Upstream;

const KEY: &str = "5e9f1a3c7b2d4f6a8c0e1b3d5f7a9c2e4b6d8f0a1c3e5b7d9f2a4c6e8b0d1f3a\
                   7c9e1b3d5f7a9c0e2b4d6f8a1c3e5b7d9f0a2c4e6b8d1f3a5c7e9b0d2f4a6c8e";

struct Gateway {
    addr: std::net::SocketAddr,
    keys: Arc<FaultyStore>,
    user_id: String,
    _shutdown: tokio_util::sync::DropGuard,
}

async fn gateway(up: &Upstream) -> Gateway {
    let yaml = format!(
        "http:\n  addr: 127.0.0.1:0\n  tls: false\n  workers: 1\ntoken_manager:\n  jwt_secret: memo-test\n\
         policies:\n  - name: ocis\n    routes:\n      - endpoint: /\n        backend: {}\n",
        up.url()
    );
    let config = parse_yaml(&yaml, std::path::Path::new("memo-test.yaml")).unwrap();
    let keys = FaultyStore::memory();
    let stores = IdentityStores {
        userinfo: Arc::new(MemoryStore::new()),
        state: Arc::new(MemoryStore::new()),
        signing_keys: Some(keys.clone()),
    };
    let metrics = Metrics::new("memo-test");
    let identity = Identity::build(&config, stores, Arc::new(NoopSink), metrics)
        .await
        .unwrap();
    let user = identity
        .accounts
        .resolver
        .directory()
        .create_user(&NewUser {
            username: "alice".into(),
            display_name: "Alice".into(),
            mail: String::new(),
            identity: None,
            id: None,
        })
        .await
        .unwrap();
    keys.put(&user.id, Bytes::from_static(KEY.as_bytes()), None)
        .await
        .unwrap();
    let (addr, _shutdown) = common::serve(&config, identity).await;
    Gateway {
        addr,
        keys,
        user_id: user.id,
        _shutdown,
    }
}

fn url(gw: &Gateway, path: &str, key: &str) -> String {
    let host = gw.addr.to_string();
    sign(
        &Link {
            host: &host,
            path,
            params: "",
            user: "alice",
            verb: "GET",
            signed_at: SystemTime::now(),
            expires: Duration::from_secs(600),
        },
        key,
    )
}

async fn status(gw: &Gateway, target: &str, headers: &[(&str, &str)]) -> u16 {
    let url = format!("http://{}{target}", gw.addr);
    gatehouse_tests::client::get_with(&url, headers)
        .await
        .status
        .as_u16()
}

#[tokio::test]
async fn a_repeated_signed_url_is_answered_from_the_memo_until_the_key_changes() {
    let up = Upstream::start("files").await;
    let gw = gateway(&up).await;
    let old = url(&gw, "/files/report.pdf", KEY);
    assert_eq!(status(&gw, &old, &[]).await, 200);
    let reads = gw.keys.reads();
    for _ in 0..5 {
        assert_eq!(status(&gw, &old, &[]).await, 200);
    }
    assert_eq!(
        gw.keys.reads(),
        reads,
        "the memo should have answered the repeats"
    );
    // Other credentials on the request: authenticated again, the memo is not consulted.
    assert_eq!(
        status(&gw, &old, &[("authorization", "Basic YWxpY2U6d3Jvbmc=")]).await,
        200
    );
    assert!(gw.keys.reads() > reads);

    // A rotated key refuses the old URL at once; the new key's URLs work.
    let rotated = KEY.replace('a', "b");
    gw.keys
        .put(&gw.user_id, Bytes::from(rotated.clone()), None)
        .await
        .unwrap();
    assert_eq!(status(&gw, &old, &[]).await, 401);
    let fresh = url(&gw, "/files/report.pdf", &rotated);
    assert_eq!(status(&gw, &fresh, &[]).await, 200);
    assert_eq!(status(&gw, &fresh, &[]).await, 200);
    // A deleted key refuses every URL of the user at once.
    gw.keys.delete(&gw.user_id).await.unwrap();
    assert_eq!(status(&gw, &fresh, &[]).await, 401);
    assert_eq!(up.count(), 9, "nothing refused reached the backend");
}
