//! Smoke test of the Redis Sentinel harness: the real master, replica and sentinels replicate a
//! write, fail over when the master dies, and take the old master back as a replica.

use std::time::{Duration, Instant};

use gatehouse_tests::process::wait_for;
use gatehouse_tests::redis::{MASTER_NAME, RedisSentinels};

#[test]
fn the_replica_takes_over_when_the_master_dies() {
    let started = Instant::now();
    let mut redis = RedisSentinels::start();
    println!("ready in {:?}", started.elapsed());

    let nodes = redis.nodes();
    assert_eq!(nodes.len(), 3);
    assert!(
        nodes
            .iter()
            .all(|n| n.ends_with(&format!("/{MASTER_NAME}")))
    );
    assert_eq!(redis.master_index(), 0);
    assert_eq!(redis.master_addr(), redis.data_addr(0));

    let master = redis.master_addr();
    assert_eq!(redis.cli(&master, &["SET", "k", "v"]), "OK");
    let replica = redis.data_addr(1);
    wait_for("the replica to have k", Duration::from_secs(10), || {
        (redis.cli(&replica, &["GET", "k"]) == "v").then_some(())
    });
    assert!(
        redis
            .cli(&replica, &["SET", "k", "w"])
            .starts_with("ERR READONLY"),
        "a replica refuses writes"
    );

    let took = redis.fail_over();
    println!("failover took {took:?}");
    assert_eq!(redis.master_index(), 1, "{}", redis.log_tail());
    let new_master = redis.master_addr();
    assert_eq!(new_master, redis.data_addr(1));
    assert_eq!(redis.cli(&new_master, &["GET", "k"]), "v");

    // The old master comes back and is made a replica of the new one.
    redis.restart_data(0);
    let old = redis.data_addr(0);
    let started = Instant::now();
    wait_for(
        "the old master to become a replica",
        Duration::from_secs(30),
        || (redis.cli(&old, &["ROLE"]).lines().next() == Some("slave")).then_some(()),
    );
    println!(
        "old master demoted {:?} after its restart",
        started.elapsed()
    );
    assert_eq!(redis.master_index(), 1);
    assert_eq!(redis.cli(&new_master, &["SET", "k2", "v2"]), "OK");
    wait_for(
        "the demoted node to have k2",
        Duration::from_secs(10),
        || (redis.cli(&old, &["GET", "k2"]) == "v2").then_some(()),
    );
}
