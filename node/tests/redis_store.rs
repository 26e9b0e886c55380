//! The `redis-sentinel` store against real Redis from Debian: a master, a replica and three
//! sentinels on loopback (`gatehouse_tests::redis`). What a Go oCIS node writes is read and
//! what Gatehouse writes is readable by one; compare-and-set is atomic; near-caches on three
//! "nodes" stay coherent within 100 ms; a failover under load costs cached reads nothing and
//! loses no write Redis's replication had time to copy; Redis down answers at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use gatehouse_node::redis::{RedisOptions, RedisStore};
use gatehouse_shared::store::{Change, NearCache, NearCacheOptions, Store, StoreError};
use gatehouse_tests::redis::{self as harness, RedisSentinels};
use gatehouse_tests::wait_until;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn opts(redis: &RedisSentinels, table: &str) -> RedisOptions {
    RedisOptions {
        section: "state_store".to_owned(),
        sentinels: redis
            .nodes()
            .iter()
            .map(|n| n.split('/').next().unwrap().to_owned())
            .collect(),
        master: harness::MASTER_NAME.to_owned(),
        table: table.to_owned(),
        username: String::new(),
        password: String::new(),
        max_age: None,
        op_timeout: Duration::from_secs(1),
    }
}

async fn connect(redis: &RedisSentinels, table: &str) -> RedisStore {
    RedisStore::connect(opts(redis, table))
        .await
        .unwrap_or_else(|e| panic!("connect: {e}\n{}", redis.log_tail()))
}

fn near(store: RedisStore) -> Arc<NearCache> {
    NearCache::new(
        Arc::new(store),
        NearCacheOptions {
            capacity: 1000,
            op_timeout: Duration::from_secs(2),
        },
        None,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_compare_and_set_and_expiry() {
    let redis = tokio::task::block_in_place(RedisSentinels::start);
    let s = connect(&redis, "t:").await;
    assert_eq!(s.kind(), "redis-sentinel");
    assert_eq!(s.get("k").await.unwrap(), None);

    let r1 = s.create("k", b("one"), None).await.unwrap();
    assert!(matches!(
        s.create("k", b("again"), None).await,
        Err(StoreError::Conflict { .. })
    ));
    let got = s.get("k").await.unwrap().unwrap();
    assert_eq!(
        (&got.value[..], got.revision, got.expires_at),
        (&b"one"[..], r1, None)
    );

    let r2 = s.update("k", b("two"), None, r1).await.unwrap();
    assert!(r2 > r1);
    assert!(matches!(
        s.update("k", b("stale"), None, r1).await,
        Err(StoreError::Conflict { .. })
    ));
    assert!(matches!(
        s.update("missing", b("x"), None, r1).await,
        Err(StoreError::Conflict { .. })
    ));
    // expected 0 is "create".
    assert!(matches!(
        s.update("k", b("x"), None, 0).await,
        Err(StoreError::Conflict { .. })
    ));
    let r3 = s.put("k", b("three"), None).await.unwrap();
    assert!(r3 > r2);
    assert_eq!(s.get("k").await.unwrap().unwrap().revision, r3);

    s.delete("k").await.unwrap();
    assert_eq!(s.get("k").await.unwrap(), None);
    s.delete("k").await.unwrap();

    // A per-entry TTL is the key's TTL and comes back as the entry's expiry.
    let before = SystemTime::now();
    s.put("short", b("v"), Some(Duration::from_millis(300)))
        .await
        .unwrap();
    let e = s.get("short").await.unwrap().unwrap();
    let left = e.expires_at.unwrap().duration_since(before).unwrap();
    assert!(left <= Duration::from_millis(400), "{left:?}");
    assert!(
        wait_until(Duration::from_secs(3), || async {
            s.get("short").await.unwrap().is_none()
        })
        .await
    );
    // Once expired, the key is free for `create` again.
    s.create("short", b("new"), None).await.unwrap();

    // 50 writers racing for one key: compare-and-set lets exactly one win.
    let s = Arc::new(s);
    let base = s.put("race", b("0"), None).await.unwrap();
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let s = Arc::clone(&s);
            tokio::spawn(async move { s.update("race", b(&i.to_string()), None, base).await })
        })
        .collect();
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => wins += 1,
            Err(StoreError::Conflict { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(wins, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_layout_is_go_micros_and_go_writers_are_understood() {
    let redis = tokio::task::block_in_place(RedisSentinels::start);
    let master = redis.master_addr();
    let s = connect(&redis, "signing-keys").await;

    // Gatehouse writes `<table><key>` with the raw value and the TTL on the key.
    s.put(
        "einstein",
        b("0123456789abcdef"),
        Some(Duration::from_secs(60)),
    )
    .await
    .unwrap();
    assert_eq!(
        redis.cli(&master, &["GET", "signing-keyseinstein"]),
        "0123456789abcdef"
    );
    let pttl: u64 = redis
        .cli(&master, &["PTTL", "signing-keyseinstein"])
        .parse()
        .unwrap();
    assert!((59_000..=60_000).contains(&pttl), "{pttl}");

    // What go-micro's Write does (`SET key value PX ttl`) is read with its TTL and a revision.
    redis.cli(
        &master,
        &["SET", "signing-keysmarie", "go-written", "PX", "30000"],
    );
    let e = s.get("marie").await.unwrap().unwrap();
    assert_eq!(&e.value[..], b"go-written");
    assert!(e.revision > 0);
    let left = e
        .expires_at
        .unwrap()
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(
        left > Duration::from_secs(28) && left <= Duration::from_secs(30),
        "{left:?}"
    );
    // The revision stays while the value does…
    assert_eq!(s.get("marie").await.unwrap().unwrap().revision, e.revision);
    // …and a Go write in between makes it stale: compare-and-set refuses, a read renumbers.
    redis.cli(&master, &["SET", "signing-keysmarie", "go-again"]);
    assert!(matches!(
        s.update("marie", b("mine"), None, e.revision).await,
        Err(StoreError::Conflict { .. })
    ));
    let again = s.get("marie").await.unwrap().unwrap();
    assert_eq!(&again.value[..], b"go-again");
    assert!(again.revision > e.revision);
    s.update("marie", b("mine"), None, again.revision)
        .await
        .unwrap();
    assert_eq!(redis.cli(&master, &["GET", "signing-keysmarie"]), "mine");

    // A Go deletion is a miss; go-micro's List (`SCAN <table>*`) sees only data keys.
    redis.cli(&master, &["DEL", "signing-keyseinstein"]);
    assert_eq!(s.get("einstein").await.unwrap(), None);
    let listed = redis.cli(&master, &["KEYS", "signing-keys*"]);
    assert_eq!(listed, "signing-keysmarie");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_caches_on_three_nodes_stay_coherent_within_100ms() {
    let redis = tokio::task::block_in_place(RedisSentinels::start);
    let mut caches = Vec::new();
    for _ in 0..3 {
        caches.push(near(connect(&redis, "coherence:").await));
    }
    let lags = gatehouse_tests::near_cache_lags(&caches).await;
    let at = |p: f64| lags[((lags.len() as f64 * p) as usize).min(lags.len() - 1)];
    println!(
        "redis near-cache coherence over {} observations: p50 {:?}, p99 {:?}, max {:?}",
        lags.len(),
        at(0.5),
        at(0.99),
        lags[lags.len() - 1]
    );
    assert!(at(0.99) < Duration::from_millis(100), "p99 {:?}", at(0.99));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failover_under_load_costs_cached_reads_nothing_and_writes_come_back() {
    let mut redis = tokio::task::block_in_place(RedisSentinels::start);
    let writer = connect(&redis, "failover:").await;
    let mut feed = writer.changes();
    let writer = Arc::new(writer);
    let reader = near(connect(&redis, "failover:").await);
    reader.put("session", b("cached"), None).await.unwrap();
    assert!(reader.get("session").await.unwrap().is_some());

    let stop = Arc::new(AtomicBool::new(false));
    let read_failures = Arc::new(AtomicUsize::new(0));
    let reads = Arc::new(AtomicUsize::new(0));
    let read_task = {
        let (reader, stop, failures, reads) = (
            Arc::clone(&reader),
            Arc::clone(&stop),
            Arc::clone(&read_failures),
            Arc::clone(&reads),
        );
        tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                match reader.get("session").await {
                    Ok(Some(e)) if &e.value[..] == b"cached" => {}
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                slowest = slowest.max(t0.elapsed());
                reads.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            slowest
        })
    };
    // Writes go on throughout; each acknowledged key is recorded with the moment of its ack.
    let write_task = {
        let (writer, stop) = (Arc::clone(&writer), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut acked: Vec<(String, Instant)> = Vec::new();
            let mut refused = 0usize;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("w{i}");
                i += 1;
                match writer.put(&key, b("x"), None).await {
                    Ok(_) => acked.push((key, Instant::now())),
                    Err(_) => refused += 1,
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (acked, refused)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed_at = Instant::now();
    let took = tokio::task::block_in_place(|| redis.fail_over());
    // Writes come back on the new master.
    let back = wait_until(Duration::from_secs(10), || async {
        writer.put("probe", b("after"), None).await.is_ok()
    })
    .await;
    assert!(back, "writes never came back\n{}", redis.log_tail());
    let writes_back_after = killed_at.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let slowest_read = read_task.await.unwrap();
    let (acked, refused) = write_task.await.unwrap();

    // The reader's cache was reset by the failover (changes may have been missed) and reads
    // the session again from the new master: it was replicated long before the kill.
    let mut saw_reset = false;
    while let Ok(change) = feed.try_recv() {
        saw_reset |= change == Change::Reset;
    }
    assert!(
        saw_reset,
        "the writer announced no reset after the failover"
    );
    // One failover, one new session: writes that failed on the old connection while the new
    // one was being set up did not make the store drop the new one too.
    assert_eq!(writer.stats().reconnects, 1);

    // Redis replicates asynchronously: a write acknowledged just before the master died may be
    // lost (documented by Redis). Anything acknowledged 1 s before the kill must be there.
    let mut lost = Vec::new();
    let mut lost_old = Vec::new();
    for (key, at) in &acked {
        if writer.get(key).await.unwrap().is_none() {
            lost.push(key.clone());
            if *at + Duration::from_secs(1) < killed_at {
                lost_old.push(key.clone());
            }
        }
    }
    println!(
        "failover: sentinels took {took:?}, writes back {writes_back_after:?} after the kill; \
         {} writes acknowledged, {refused} refused during the failover, {} lost (all within the \
         last second before the kill: {}); {} cached reads, {} failed, slowest {slowest_read:?}",
        acked.len(),
        lost.len(),
        lost_old.is_empty(),
        reads.load(Ordering::Relaxed),
        read_failures.load(Ordering::Relaxed),
    );
    assert!(
        lost_old.is_empty(),
        "acknowledged long before the kill and lost: {lost_old:?}"
    );
    assert_eq!(
        read_failures.load(Ordering::Relaxed),
        0,
        "a cached read failed"
    );
    assert!(
        slowest_read < Duration::from_millis(100),
        "{slowest_read:?}"
    );
    assert!(
        refused > 0,
        "no write was refused: the failover did not happen under load"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_answers_at_once_and_the_store_recovers_by_itself() {
    let mut redis = tokio::task::block_in_place(RedisSentinels::start);
    let store = connect(&redis, "down:").await;
    let mut feed = store.changes();
    let cache = near(connect(&redis, "down:").await);
    cache.put("cached", b("v"), None).await.unwrap();
    store.put("k", b("v"), None).await.unwrap();

    tokio::task::block_in_place(|| redis.kill_all_data());
    assert!(
        wait_until(Duration::from_secs(5), || async { !store.is_connected() }).await,
        "the store never noticed"
    );
    let t0 = Instant::now();
    let err = store.get("k").await.unwrap_err();
    assert!(
        t0.elapsed() < Duration::from_millis(50),
        "{:?}",
        t0.elapsed()
    );
    assert!(err.is_retryable(), "{err}");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert!(err.to_string().contains("Redis master"), "{err}");
    let err = store.put("k2", b("v"), None).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    // What the near-cache holds is still served.
    assert_eq!(&cache.get("cached").await.unwrap().unwrap().value[..], b"v");

    tokio::task::block_in_place(|| {
        redis.restart_data(0);
        redis.restart_data(1);
    });
    assert!(
        wait_until(Duration::from_secs(20), || async {
            store.put("k3", b("back"), None).await.is_ok()
        })
        .await,
        "never reconnected\n{}",
        redis.log_tail()
    );
    assert!(store.is_connected());
    assert_eq!(store.stats().reconnects, 1);
    let mut saw_reset = false;
    while let Ok(change) = feed.try_recv() {
        saw_reset |= change == Change::Reset;
    }
    assert!(saw_reset);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_stop_start_up_naming_the_settings() {
    let redis = tokio::task::block_in_place(|| {
        RedisSentinels::start_with(harness::RedisOptions {
            password: Some("right".to_owned()),
        })
    });
    let mut o = opts(&redis, "auth:");
    o.password = "right".to_owned();
    let s = RedisStore::connect(o.clone()).await.unwrap();
    s.put("k", b("v"), None).await.unwrap();

    for wrong in ["", "wrong"] {
        o.password = wrong.to_owned();
        let err = match RedisStore::connect(o.clone()).await {
            Ok(_) => panic!("connected with password {wrong:?}"),
            Err(e) => e,
        };
        assert!(!err.is_retryable(), "{err}");
        assert!(
            err.to_string()
                .contains("state_store.username and state_store.password"),
            "{err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_writes_reach_near_caches_through_keyspace_notifications() {
    let redis = tokio::task::block_in_place(RedisSentinels::start);
    let master = redis.master_addr();
    assert_eq!(
        redis.cli(&master, &["CONFIG", "SET", "notify-keyspace-events", "K$g"]),
        "OK"
    );
    let cache = near(connect(&redis, "signing-keys").await);
    let mut feed = cache.changes();
    // The node has looked and found nothing: a negative entry, answered locally from now on.
    assert_eq!(cache.get("einstein").await.unwrap(), None);
    let misses = cache.stats().misses;
    assert_eq!(cache.get("einstein").await.unwrap(), None);
    assert_eq!(
        cache.stats().misses,
        misses,
        "the negative entry answers locally"
    );

    // oCIS's ocs service writes a signing key (go-micro: SET <table><key> value PX ttl).
    let t0 = Instant::now();
    redis.cli(
        &master,
        &["SET", "signing-keyseinstein", "go-key", "PX", "60000"],
    );
    assert!(
        wait_until(Duration::from_secs(2), || async {
            matches!(cache.get("einstein").await, Ok(Some(e)) if &e.value[..] == b"go-key")
        })
        .await,
        "the Go write never reached the near-cache"
    );
    let seen_after = t0.elapsed();
    // Go deletes it again.
    let t0 = Instant::now();
    redis.cli(&master, &["DEL", "signing-keyseinstein"]);
    assert!(
        wait_until(Duration::from_secs(2), || async {
            matches!(cache.get("einstein").await, Ok(None))
        })
        .await,
        "the Go deletion never reached the near-cache"
    );
    let deleted_after = t0.elapsed();
    println!("Go write seen after {seen_after:?}, Go deletion after {deleted_after:?}");
    assert!(seen_after < Duration::from_millis(100), "{seen_after:?}");
    assert!(
        deleted_after < Duration::from_millis(100),
        "{deleted_after:?}"
    );

    // Gatehouse's own writes are announced once, by their channel message, not read back.
    while feed.try_recv().is_ok() {}
    let writer = connect(&redis, "signing-keys").await;
    for i in 0..20 {
        writer.put(&format!("k{i}"), b("v"), None).await.unwrap();
    }
    let mut announced = 0;
    let deadline = Instant::now() + Duration::from_secs(2);
    while announced < 20 && Instant::now() < deadline {
        if let Ok(Ok(Change::Put { .. })) =
            tokio::time::timeout(Duration::from_millis(50), feed.recv()).await
        {
            announced += 1;
        }
    }
    assert_eq!(announced, 20);
    // No probe followed (a probe would announce each key a second time).
    let extra = tokio::time::timeout(Duration::from_millis(100), feed.recv()).await;
    assert!(extra.is_err(), "a Gatehouse write was read back: {extra:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_min_replicas_unmet_reads_work_and_writes_are_refused_cleanly() {
    let mut redis = tokio::task::block_in_place(RedisSentinels::start);
    let master = redis.master_addr();
    let s = connect(&redis, "minrep:").await;
    s.put("present", b("v"), None).await.unwrap();
    assert_eq!(
        redis.cli(&master, &["CONFIG", "SET", "min-replicas-max-lag", "1"]),
        "OK"
    );
    assert_eq!(
        redis.cli(&master, &["CONFIG", "SET", "min-replicas-to-write", "1"]),
        "OK"
    );
    tokio::task::block_in_place(|| redis.kill_data(1));
    // The master refuses writes once its replica lags beyond a second.
    assert!(
        wait_until(Duration::from_secs(10), || async {
            redis
                .cli(&master, &["SET", "probe", "x"])
                .contains("NOREPLICAS")
        })
        .await,
        "the master kept accepting writes"
    );
    assert_eq!(s.get("missing").await.unwrap(), None);
    assert_eq!(&s.get("present").await.unwrap().unwrap().value[..], b"v");
    let err = s.put("k", b("v"), None).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert!(err.to_string().contains("NOREPLICAS"), "{err}");
    // A refused write is an answer, not a lost connection.
    assert!(s.is_connected());
    assert_eq!(s.stats().reconnects, 0);
}
