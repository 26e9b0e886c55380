//! NatsKvStore, NearCache and ServiceRegistry against a real 3-node JetStream cluster.
//! Every test starts its own cluster.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use gatehouse_nats::{NatsKvOptions, NatsKvStore, ServiceRegistry};
use gatehouse_shared::store::{NearCache, NearCacheOptions, Store, StoreError};
use gatehouse_tests::nats::NatsCluster;

// base32("signing-keys_einstein"), computed independently of the crate under test.
const EINSTEIN_KEY: &str = "ONUWO3TJNZTS223FPFZV6ZLJNZZXIZLJNY======";

/// Logs go to the test's captured output (shown when it fails); `RUST_LOG` overrides the level.
fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "gatehouse_nats=debug,async_nats=info".into()),
        )
        .with_test_writer()
        .try_init();
}

fn opts(cluster: &NatsCluster, node: usize, bucket: &str) -> NatsKvOptions {
    NatsKvOptions {
        servers: cluster.client_urls_from(node),
        bucket: bucket.to_owned(),
        table: "signing-keys".to_owned(),
        replicas: 3,
        memory_storage: false,
        max_age: Duration::from_secs(3600),
        op_timeout: Duration::from_secs(2),
        per_key_ttl: true,
        ..NatsKvOptions::default()
    }
}

/// A plain async-nats view of the bucket, as a Go service would have.
async fn raw_kv(cluster: &NatsCluster, bucket: &str) -> (async_nats::Client, kv::Store) {
    let client = async_nats::connect(cluster.client_urls()).await.unwrap();
    let js = jetstream::new(client.clone());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match js.get_key_value(bucket).await {
            Ok(kv) => return (client, kv),
            Err(e) => assert!(Instant::now() < deadline, "opening {bucket}: {e}"),
        }
    }
}

/// A plain put, retried while a fresh bucket is not yet reachable from every node.
async fn raw_put(kv: &kv::Store, key: &str, value: Bytes) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match kv.put(key, value.clone()).await {
            Ok(_) => return,
            Err(e) => assert!(Instant::now() < deadline, "raw put: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

async fn eventually<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_and_compare_and_set_on_r3_bucket() {
    init_logs();
    let cluster = NatsCluster::start(3);
    let store = NatsKvStore::connect(opts(&cluster, 0, "proxy"))
        .await
        .unwrap();
    assert!(store.is_connected());
    assert_eq!(store.kind(), "nats-js-kv");

    let js = jetstream::new(async_nats::connect(cluster.client_urls()).await.unwrap());
    let info = js.get_stream("KV_proxy").await.unwrap();
    assert_eq!(info.cached_info().config.num_replicas, 3);
    assert_eq!(info.cached_info().config.max_messages_per_subject, 1);

    assert_eq!(store.get("einstein").await.unwrap(), None);
    let r1 = store.put("einstein", b("k1"), None).await.unwrap();
    let e = store.get("einstein").await.unwrap().unwrap();
    assert_eq!((&e.value[..], e.revision), (&b"k1"[..], r1));
    // Bucket max-age bounds the expiry of entries without their own.
    let exp = e.expires_at.expect("bucket max-age applies");
    assert!(exp > std::time::SystemTime::now() + Duration::from_secs(3500));

    assert_eq!(
        store.create("einstein", b("x"), None).await,
        Err(StoreError::Conflict {
            key: "einstein".into()
        })
    );
    let r2 = store.update("einstein", b("k2"), None, r1).await.unwrap();
    assert!(r2 > r1);
    assert!(matches!(
        store.update("einstein", b("k3"), None, r1).await,
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(
        &store.get("einstein").await.unwrap().unwrap().value[..],
        b"k2"
    );

    store.delete("einstein").await.unwrap();
    assert_eq!(store.get("einstein").await.unwrap(), None);
    // Create over a deleted key works; a second create conflicts.
    store.create("einstein", b("k4"), None).await.unwrap();
    assert!(matches!(
        store.create("einstein", b("k5"), None).await,
        Err(StoreError::Conflict { .. })
    ));
    assert!(matches!(store.get("").await, Err(StoreError::Invalid(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_ask_the_stream_leader_when_no_replica_answers_direct_gets() {
    init_logs();
    let cluster = NatsCluster::start(1);
    let mut o = opts(&cluster, 0, "nodirect");
    o.replicas = 1;
    let store = NatsKvStore::connect(o).await.unwrap();
    store.put("kept", b("v1"), None).await.unwrap();
    store.put("gone", b("v2"), None).await.unwrap();
    store.delete("gone").await.unwrap();

    // The store bound the bucket as direct-get enabled; the server stops answering those.
    let js = jetstream::new(async_nats::connect(cluster.client_urls()).await.unwrap());
    let mut config = js
        .get_stream("KV_nodirect")
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    assert!(config.allow_direct, "buckets are created for direct gets");
    config.allow_direct = false;
    js.update_stream(config).await.unwrap();

    let t = Instant::now();
    let kept = store.get("kept").await.unwrap().expect("a live entry");
    assert_eq!(&kept.value[..], b"v1");
    assert!(kept.expires_at.is_some(), "bucket max-age still applies");
    assert_eq!(store.get("gone").await.unwrap(), None, "a delete marker");
    assert_eq!(store.get("never").await.unwrap(), None);
    // `create` over a deleted key reads the marker's revision the same way.
    store.create("gone", b("v3"), None).await.unwrap();
    assert_eq!(&store.get("gone").await.unwrap().unwrap().value[..], b"v3");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "reads waited {:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_is_checked_on_read_while_the_server_still_holds_the_entry() {
    init_logs();
    let cluster = NatsCluster::start(3);
    let mut o = opts(&cluster, 1, "cache");
    o.per_key_ttl = false;
    let store = NatsKvStore::connect(o).await.unwrap();
    assert!(!store.per_key_ttl());
    store
        .put("einstein", b("v"), Some(Duration::from_millis(800)))
        .await
        .unwrap();
    assert!(store.get("einstein").await.unwrap().is_some());
    let (_c, raw) = raw_kv(&cluster, "cache").await;

    eventually("envelope expiry", Duration::from_secs(5), || async {
        store.get("einstein").await.unwrap().is_none()
    })
    .await;
    let held = raw.get(EINSTEIN_KEY).await.unwrap();
    assert!(held.is_some(), "the server still holds the expired entry");

    // An expired entry does not block `create`.
    store.create("einstein", b("fresh"), None).await.unwrap();
    assert_eq!(
        &store.get("einstein").await.unwrap().unwrap().value[..],
        b"fresh"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_ttl_is_enforced_by_the_server() {
    init_logs();
    let cluster = NatsCluster::start(3);
    let store = NatsKvStore::connect(opts(&cluster, 2, "ttl"))
        .await
        .unwrap();
    let version = store.client().server_info().version;
    assert!(
        store.per_key_ttl(),
        "server {version} should support per-key TTL"
    );
    let js = jetstream::new(async_nats::connect(cluster.client_urls()).await.unwrap());
    // JetStream API requests can time out while the new R3 stream settles: retried, not failed.
    eventually("the bucket's stream allows message TTLs", Duration::from_secs(10), || async {
        matches!(js.get_stream("KV_ttl").await, Ok(st) if st.cached_info().config.allow_message_ttl)
    })
    .await;

    store
        .put("short", b("s"), Some(Duration::from_millis(1000)))
        .await
        .unwrap();
    store.put("long", b("l"), None).await.unwrap();
    let mut feed = store.changes();
    let (_c, raw) = raw_kv(&cluster, "ttl").await;
    let short = gatehouse_shared::store::encode_key("signing-keys", "short");
    let long = gatehouse_shared::store::encode_key("signing-keys", "long");
    eventually(
        "server-side TTL removal",
        Duration::from_secs(8),
        // A freshly created R3 stream can briefly answer "no responders": not yet, not a failure.
        || async { matches!(raw.get(short.clone()).await, Ok(None)) },
    )
    .await;
    eventually(
        "the key without TTL is still there",
        Duration::from_secs(8),
        || async { matches!(raw.get(long.clone()).await, Ok(Some(_))) },
    )
    .await;
    assert!(store.get("long").await.unwrap().is_some());
    // The server's delete marker reaches the change feed (allowing for one ordered-consumer
    // recovery, which happens at the latest on its 5 s idle heartbeat).
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let change = tokio::time::timeout(Duration::from_secs(8), feed.recv())
            .await
            .expect("feed event")
            .unwrap();
        if matches!(&change, gatehouse_shared::store::Change::Delete { key, .. } if key == "short")
        {
            break;
        }
        assert!(Instant::now() < deadline, "no delete for the expired key");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wire_format_interoperates_with_a_plain_client() {
    init_logs();
    let cluster = NatsCluster::start(3);
    let store = NatsKvStore::connect(opts(&cluster, 0, "proxy"))
        .await
        .unwrap();
    let mut feed = store.changes();
    let (_c, raw) = raw_kv(&cluster, "proxy").await;

    // Written the way go-micro writes it (nil metadata marshals as null).
    raw_put(
        &raw,
        EINSTEIN_KEY,
        Bytes::from_static(
            br#"{"key":"einstein","data":"MDEyMzQ1Njc4OWFiY2RlZg==","metadata":null}"#,
        ),
    )
    .await;
    let e = store.get("einstein").await.unwrap().unwrap();
    assert_eq!(&e.value[..], b"0123456789abcdef");
    let change = tokio::time::timeout(Duration::from_secs(5), feed.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(change.key(), Some("einstein"));

    // Keys of other tables are invisible to this store and its feed.
    raw_put(
        &raw,
        "ON2GC3DFL5SWS3TTORSWS3Q=", // base32("stale_einstein")
        Bytes::from_static(br#"{"key":"einstein","data":"","metadata":{}}"#),
    )
    .await;

    // And the other way round.
    store
        .put("marie", b("fedcba9876543210"), None)
        .await
        .unwrap();
    let got = raw
        .get("ONUWO3TJNZTS223FPFZV63LBOJUWK===") // base32("signing-keys_marie")
        .await
        .unwrap()
        .expect("stored under the base32 key");
    let json: serde_json::Value = serde_json::from_slice(&got).unwrap();
    assert_eq!(json["key"], "marie");
    assert_eq!(json["data"], "ZmVkY2JhOTg3NjU0MzIxMA==");
    assert!(json["metadata"].is_object());
    let next = tokio::time::timeout(Duration::from_secs(5), feed.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        next.key(),
        Some("marie"),
        "the foreign-table write was skipped"
    );
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_caches_on_three_nodes_stay_coherent() {
    init_logs();
    let cluster = NatsCluster::start(3);
    let near_opts = NearCacheOptions {
        capacity: 1000,
        op_timeout: Duration::from_secs(2),
    };
    let mut caches = Vec::new();
    for node in 0..3 {
        let store = NatsKvStore::connect(opts(&cluster, node, "coherence"))
            .await
            .unwrap();
        caches.push(NearCache::new(Arc::new(store), near_opts, None));
    }
    let lags = gatehouse_tests::near_cache_lags(&caches).await;
    let (p50, p99) = (percentile(&lags, 0.5), percentile(&lags, 0.99));
    println!(
        "near-cache coherence over {} observations: p50 {p50:?}, p99 {p99:?}, max {:?}",
        lags.len(),
        lags[lags.len() - 1]
    );
    assert!(p99 < Duration::from_millis(100), "p99 {p99:?} >= 100ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_the_crash_of_the_stream_leader() {
    init_logs();
    let mut cluster = NatsCluster::start(3);
    let writer = NatsKvStore::connect(opts(&cluster, 0, "failover"))
        .await
        .unwrap();
    for i in 0..20 {
        writer
            .put(&format!("k{i}"), b(&format!("v{i}")), None)
            .await
            .unwrap();
    }
    let js = jetstream::new(async_nats::connect(cluster.client_urls()).await.unwrap());
    let mut stream = js.get_stream("KV_failover").await.unwrap();
    let leader_name = stream
        .info()
        .await
        .unwrap()
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .expect("stream leader");
    let leader = cluster
        .index_of(&leader_name)
        .expect("leader is one of ours");

    // A request-path store, connected to any of the three (the client shuffles its list).
    let op_timeout = Duration::from_millis(300);
    let mut o = opts(&cluster, leader, "failover");
    o.op_timeout = op_timeout;
    let store = Arc::new(NatsKvStore::connect(o).await.unwrap());
    let near = NearCache::new(
        store.clone(),
        NearCacheOptions {
            capacity: 100,
            op_timeout,
        },
        None,
    );
    assert_eq!(&near.get("k0").await.unwrap().unwrap().value[..], b"v0");

    cluster.kill(leader);
    let killed = Instant::now();

    // During the outage reads never stall: each returns (value or error) within the deadline.
    let slack = Duration::from_millis(150);
    for i in 0..10 {
        let t = Instant::now();
        let _ = near.get(&format!("uncached{i}")).await;
        assert!(
            t.elapsed() <= op_timeout + slack,
            "get took {:?}",
            t.elapsed()
        );
        let t = Instant::now();
        let _ = store.get("k1").await;
        assert!(
            t.elapsed() <= op_timeout + slack,
            "get took {:?}",
            t.elapsed()
        );
    }
    // The cached key is still served locally.
    assert_eq!(&near.get("k0").await.unwrap().unwrap().value[..], b"v0");

    // Writes and reads resume within the retry window.
    let window = Duration::from_secs(15);
    loop {
        let ok = match store.put("probe", b("after"), None).await {
            Ok(_) => matches!(store.get("probe").await, Ok(Some(e)) if &e.value[..] == b"after"),
            Err(e) => {
                assert!(e.is_retryable(), "unexpected error {e}");
                false
            }
        };
        if ok {
            break;
        }
        assert!(
            killed.elapsed() < window,
            "store unusable {window:?} after the crash"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "store usable again {:?} after SIGKILL of {leader_name}",
        killed.elapsed()
    );
    assert!(store.is_connected());

    for i in 0..20 {
        let e = store
            .get(&format!("k{i}"))
            .await
            .unwrap()
            .expect("data survived");
        assert_eq!(e.value, b(&format!("v{i}")));
    }
    // The near cache is coherent again: a write elsewhere reaches it.
    writer.put("k0", b("after-crash"), None).await.unwrap();
    eventually("change after failover", Duration::from_secs(10), || async {
        matches!(near.get("k0").await, Ok(Some(e)) if &e.value[..] == b"after-crash")
    })
    .await;

    cluster.restart(leader);
    store.put("k1", b("rejoined"), None).await.unwrap();
}

const WEB_KEY_A: &str =
    "ONSXE5TJMNSS24TFM5UXG5DSPFPWG33NFZXXO3TDNRXXKZBOO5SWELTXMVREAN3GGNQUAMJOGAXDA===";
const WEB_KEY_B: &str =
    "ONSXE5TJMNSS24TFM5UXG5DSPFPWG33NFZXXO3TDNRXXKZBOO5SWELTXMVREAOLDGFSEAMJOGAXDA===";
const WEB_SERVICE_A: &str = "eyJuYW1lIjoiY29tLm93bmNsb3VkLndlYi53ZWIiLCJ2ZXJzaW9uIjoiMS4wLjAiLCJtZXRhZGF0YSI6bnVsbCwiZW5kcG9pbnRzIjpbXSwibm9kZXMiOlt7ImlkIjoiY29tLm93bmNsb3VkLndlYi53ZWItN2YzYSIsImFkZHJlc3MiOiIxMjcuMC4wLjE6OTEwMCIsIm1ldGFkYXRhIjp7InByb3RvY29sIjoiaHR0cCIsInJlZ2lzdHJ5IjoibmF0cy1qcy1rdiJ9fV19";
const WEB_SERVICE_B: &str = "eyJuYW1lIjoiY29tLm93bmNsb3VkLndlYi53ZWIiLCJ2ZXJzaW9uIjoiMS4wLjAiLCJtZXRhZGF0YSI6bnVsbCwiZW5kcG9pbnRzIjpbXSwibm9kZXMiOlt7ImlkIjoiY29tLm93bmNsb3VkLndlYi53ZWItOWMxZCIsImFkZHJlc3MiOiIxMjcuMC4wLjI6OTIwMCIsIm1ldGFkYXRhIjp7InByb3RvY29sIjoiaHR0cCIsInVzZV90bHMiOiJ0cnVlIn19XX0=";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_resolves_services_written_by_go_micro() {
    init_logs();
    let cluster = NatsCluster::start(3);
    // The registry starts before any oCIS service created the bucket.
    let registry = ServiceRegistry::connect(cluster.client_urls(), "service-registry")
        .await
        .unwrap();
    assert!(registry.is_connected());
    assert!(registry.nodes("com.owncloud.web.web").is_empty());

    let client = async_nats::connect(cluster.client_urls()).await.unwrap();
    let js = jetstream::new(client);
    let raw = js
        .create_key_value(kv::Config {
            bucket: "service-registry".into(),
            storage: jetstream::stream::StorageType::Memory,
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    let envelope = |key: &str, data: &str| {
        Bytes::from(format!(
            r#"{{"key":"{key}","data":"{data}","metadata":null}}"#
        ))
    };
    raw_put(
        &raw,
        WEB_KEY_A,
        envelope("com.owncloud.web.web@7f3a@1.0.0", WEB_SERVICE_A),
    )
    .await;

    eventually("first node", Duration::from_secs(10), || async {
        registry.nodes("com.owncloud.web.web") == ["http://127.0.0.1:9100"]
    })
    .await;
    assert!(registry.is_loaded());

    raw_put(
        &raw,
        WEB_KEY_B,
        envelope("com.owncloud.web.web@9c1d@1.0.0", WEB_SERVICE_B),
    )
    .await;
    eventually("second node", Duration::from_secs(5), || async {
        registry.nodes("com.owncloud.web.web")
            == ["http://127.0.0.1:9100", "https://127.0.0.2:9200"]
    })
    .await;
    assert_eq!(registry.services(), ["com.owncloud.web.web"]);

    raw.delete(WEB_KEY_A).await.unwrap();
    eventually("deregistration", Duration::from_secs(5), || async {
        registry.nodes("com.owncloud.web.web") == ["https://127.0.0.2:9200"]
    })
    .await;

    // A second mirror started on a populated bucket loads it.
    let late = ServiceRegistry::connect(cluster.client_urls_from(2), "service-registry")
        .await
        .unwrap();
    eventually("late mirror", Duration::from_secs(5), || async {
        late.is_loaded() && late.nodes("com.owncloud.web.web") == ["https://127.0.0.2:9200"]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_fail_at_once_while_nats_is_known_to_be_down() {
    init_logs();
    let mut cluster = NatsCluster::start(1);
    let mut o = opts(&cluster, 0, "fail-fast");
    o.replicas = 1;
    let store = NatsKvStore::connect(o).await.unwrap();
    store.put("k", b("v"), None).await.unwrap();
    cluster.kill(0);
    eventually("the client to notice", Duration::from_secs(10), || async {
        !store.is_connected()
    })
    .await;
    for _ in 0..5 {
        let t0 = Instant::now();
        let err = store.get("k").await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        assert!(
            t0.elapsed() < Duration::from_millis(50),
            "{:?}",
            t0.elapsed()
        );
        assert!(store.put("k", b("w"), None).await.is_err());
    }
    cluster.restart(0);
    eventually(
        "the store to work again",
        Duration::from_secs(15),
        || async { store.get("k").await.is_ok() },
    )
    .await;
}

#[tokio::test]
async fn a_connected_nats_that_does_not_answer_is_waited_for_once_then_probed_in_the_background() {
    init_logs();
    let cluster = NatsCluster::start(1);
    let relay = gatehouse_tests::relay::Relay::start(
        format!("127.0.0.1:{}", cluster.client_port(0))
            .parse()
            .unwrap(),
    )
    .await;
    let mut o = opts(&cluster, 0, "suspect");
    o.servers = vec![format!("nats://{}", relay.addr)];
    o.replicas = 1;
    o.op_timeout = Duration::from_millis(200);
    let store = Arc::new(NatsKvStore::connect(o).await.unwrap());
    store.put("k", b("v"), None).await.unwrap();

    // Slower than op_timeout, while the connection stays up.
    relay.set_delay(Duration::from_millis(400));
    let t0 = Instant::now();
    let first = store.get("k").await.unwrap_err();
    assert!(matches!(first, StoreError::Timeout { .. }), "{first:?}");
    assert!(store.is_connected());
    // Suspect now: operations fail at once while a background probe waits for NATS.
    for _ in 0..20 {
        let t = Instant::now();
        let err = store.get("k").await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        assert!(t.elapsed() < Duration::from_millis(20), "{:?}", t.elapsed());
        assert!(store.put("k", b("w"), None).await.is_err());
    }
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());

    // NATS answers again: a probe succeeds and ends the suspicion.
    relay.set_delay(Duration::ZERO);
    eventually("a probe to succeed", Duration::from_secs(5), || async {
        store.get("k").await.is_ok()
    })
    .await;
    for _ in 0..5 {
        store.get("k").await.unwrap();
    }
}

/// An operation waiting for an answer when the connection drops fails then, not at its deadline:
/// the server that would have answered is gone. (SIGSTOP holds the operation, SIGKILL of the
/// stopped server makes the kernel close its sockets.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_in_flight_when_the_connection_drops_fails_at_once() {
    init_logs();
    let mut cluster = NatsCluster::start(1);
    let mut o = opts(&cluster, 0, "lost");
    o.replicas = 1;
    o.op_timeout = Duration::from_secs(10);
    let store = Arc::new(NatsKvStore::connect(o).await.unwrap());
    store.put("k", b("v"), None).await.unwrap();

    cluster.pause(0);
    let sent = || {
        store
            .client()
            .statistics()
            .out_messages
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let before = sent();
    let waiting = tokio::spawn({
        let store = store.clone();
        async move {
            let t = Instant::now();
            (store.get("never-read").await, t.elapsed())
        }
    });
    // Sent (the kernel buffers it for the frozen server) and unanswered.
    eventually("the read to be sent", Duration::from_secs(5), || async {
        sent() > before
    })
    .await;
    assert!(!waiting.is_finished());
    let killed = Instant::now();
    cluster.kill(0);
    let (result, _) = waiting.await.unwrap();
    let after_kill = killed.elapsed();
    let err = result.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(
        after_kill < Duration::from_secs(1),
        "failed {after_kill:?} after the connection dropped (op_timeout 10 s)"
    );
    // And the next one fails at once too: the client knows it is disconnected.
    let t = Instant::now();
    assert!(store.get("k").await.is_err());
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "{:?}",
        t.elapsed()
    );
}

/// A client that reconnects to a server whose JetStream cannot answer yet (a restarted cluster
/// without its quorum) does not make requests find that out by waiting: the store is suspect
/// from the reconnection until a probe is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_reconnection_nats_is_probed_before_requests_wait_for_it() {
    init_logs();
    let mut cluster = NatsCluster::start(3);
    let mut o = opts(&cluster, 0, "reconnected");
    o.servers = vec![cluster.client_url(0)];
    o.replicas = 3;
    o.op_timeout = Duration::from_secs(2);
    let store = NatsKvStore::connect(o).await.unwrap();
    store.put("k", b("v"), None).await.unwrap();

    for i in 0..3 {
        cluster.kill(i);
    }
    eventually("the client to notice", Duration::from_secs(5), || async {
        !store.is_connected()
    })
    .await;
    cluster.respawn(0);
    eventually(
        "the client to reconnect",
        Duration::from_secs(10),
        || async { store.is_connected() },
    )
    .await;
    // Connected, but no quorum: nothing is waited for.
    for _ in 0..5 {
        let t = Instant::now();
        let err = store.get("k").await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
    }

    cluster.restart_all();
    eventually(
        "a probe to be answered",
        Duration::from_secs(20),
        || async { store.get("k").await.is_ok() },
    )
    .await;
    assert_eq!(store.get("k").await.unwrap().unwrap().value, b("v"));
}
