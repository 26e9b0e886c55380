//! Scenario 5: every NATS server SIGKILLed at once right after a burst of acknowledged writes,
//! run once with `sync_interval: always` (the repository's configuration) and once with the
//! server's default. The writes are what the gateway writes when users first log in: puts to a
//! replicated (R3), file-backed KV bucket, each awaited until JetStream acknowledged it. After the
//! restart every acknowledged key must still be there.
//!
//! What this can and cannot show: a killed *process* leaves what it had handed to the kernel in the
//! page cache, which survives; losing acknowledged writes to lazy fsync needs the *machine* to lose
//! power (Jepsen simulated that with a file system that forgets unsynced writes). Neither can be
//! done to the test machines, so the default setting's figure here is an upper bound of what it
//! keeps, not a proof that it is safe; `sync_interval: always` is kept for the crash this cannot
//! inject.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use gatehouse_tests::nats::{NatsCluster, NatsOptions};

use super::Target;

/// One setting's result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Durability {
    pub sync_always: bool,
    pub acknowledged: usize,
    pub present_after_restart: usize,
    /// Acknowledged keys missing after the restart.
    pub lost: usize,
    /// Mean time per acknowledged write during the burst (64 in flight).
    pub write_us: f64,
    /// From the last acknowledgement to the last server killed.
    pub kill_after_ms: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DurabilityOutcome {
    pub runs: Vec<Durability>,
    pub targets: Vec<Target>,
}

impl DurabilityOutcome {
    pub fn all_met(&self) -> bool {
        self.targets.iter().all(|t| t.met)
    }

    pub fn text(&self) -> String {
        let mut out = String::from(
            "## nats-crash\n\n| NATS setting | writes acknowledged | present after restart | lost | per write (64 in flight) | killed after the last ack |\n|---|---:|---:|---:|---:|---:|\n",
        );
        for r in &self.runs {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {:.0} µs | {:.1} ms |\n",
                if r.sync_always {
                    "`sync_interval: always`"
                } else {
                    "default (lazy fsync)"
                },
                r.acknowledged,
                r.present_after_restart,
                r.lost,
                r.write_us,
                r.kill_after_ms
            ));
        }
        out.push('\n');
        out.push_str(&super::checklist(&self.targets));
        out
    }
}

const IN_FLIGHT: usize = 64;

fn servers(nats: &NatsCluster) -> Result<Vec<async_nats::ServerAddr>, String> {
    nats.client_urls()
        .iter()
        .map(|u| u.parse().map_err(|e| format!("{u}: {e}")))
        .collect()
}

/// The R3 bucket of the scenario. On a loaded machine the first creation on a fresh cluster can
/// time out while the three servers sync its stream to disk; the request is sent again (and a
/// bucket that was created meanwhile is taken) a few times before that counts as a failure.
async fn create_bucket(js: &jetstream::Context) -> Result<kv::Store, String> {
    let config = kv::Config {
        bucket: "durability".to_owned(),
        num_replicas: 3,
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    };
    let mut last = String::new();
    for _ in 0..3 {
        match js.create_key_value(config.clone()).await {
            Ok(bucket) => return Ok(bucket),
            Err(e) => last = e.to_string(),
        }
        if let Ok(bucket) = js.get_key_value(&config.bucket).await {
            return Ok(bucket);
        }
    }
    Err(format!("create bucket: {last}"))
}

/// A freshly created R3 stream may still be electing its leader, and until it has one every put
/// fails at once with "no responders". The burst starts once a probe write is acknowledged.
async fn wait_writable(bucket: &kv::Store) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match bucket.put("probe", "ready".into()).await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(format!("the new bucket accepts no write within 30 s: {e}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A write that was refused (a leader change in the burst) is sent again, as the gateway's own
/// retry would; only an acknowledged write counts.
async fn put_with_retries(bucket: &kv::Store, key: &str, value: String) -> bool {
    for attempt in 0..5u64 {
        if bucket.put(key, value.clone().into()).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20 * (attempt + 1))).await;
    }
    false
}

async fn one(sync_always: bool, writes: usize) -> Result<Durability, String> {
    let mut nats = NatsCluster::start_with(
        3,
        NatsOptions {
            sync_always,
            any_loopback_address: false,
            ..NatsOptions::default()
        },
    );
    let client = async_nats::connect(servers(&nats)?)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let js = jetstream::new(client.clone());
    let bucket = create_bucket(&js).await?;
    wait_writable(&bucket).await?;
    let started = Instant::now();
    let acked: Vec<String> = futures::stream::iter(0..writes)
        .map(|i| {
            let bucket = bucket.clone();
            async move {
                let key = format!("account.u{i:05}");
                let value = format!("{{\"id\":\"u{i:05}\",\"created\":{i}}}");
                put_with_retries(&bucket, &key, value).await.then_some(key)
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .filter_map(|k| async move { k })
        .collect()
        .await;
    let last_ack = Instant::now();
    let write_us = started.elapsed().as_secs_f64() * 1e6 / acked.len().max(1) as f64;
    for i in 0..nats.len() {
        nats.kill(i);
    }
    let kill_after_ms = last_ack.elapsed().as_secs_f64() * 1000.0;
    drop(client);
    tokio::task::block_in_place(|| nats.restart_all());
    let client = async_nats::connect(servers(&nats)?)
        .await
        .map_err(|e| format!("reconnect: {e}"))?;
    let js = jetstream::new(client);
    // The streams need leaders again before they answer.
    let deadline = Instant::now() + Duration::from_secs(30);
    let bucket = loop {
        match js.get_key_value("durability").await {
            Ok(b) => break b,
            Err(e) if Instant::now() > deadline => {
                return Err(format!(
                    "the bucket does not answer 30 s after the restart: {e}"
                ));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let mut present = 0;
    for key in &acked {
        loop {
            match bucket.get(key).await {
                Ok(Some(_)) => {
                    present += 1;
                    break;
                }
                Ok(None) => break,
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("reading {key} after the restart: {e}"));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
    Ok(Durability {
        sync_always,
        acknowledged: acked.len(),
        present_after_restart: present,
        lost: acked.len() - present,
        write_us,
        kill_after_ms,
    })
}

/// Runs both settings with `writes` writes each.
pub async fn run(writes: usize) -> Result<DurabilityOutcome, String> {
    let always = one(true, writes).await?;
    let default = one(false, writes).await?;
    let targets = vec![
        Target {
            name: "sync_interval always: every acknowledged write survives a crash of all servers"
                .to_owned(),
            met: always.lost == 0 && always.acknowledged == writes,
            measured: format!(
                "{} of {} acknowledged writes present",
                always.present_after_restart, always.acknowledged
            ),
        },
        Target {
            name: "both settings measured".to_owned(),
            met: default.acknowledged == writes,
            measured: format!(
                "default: {} of {} present",
                default.present_after_restart, default.acknowledged
            ),
        },
    ];
    Ok(DurabilityOutcome {
        runs: vec![always, default],
        targets,
    })
}
