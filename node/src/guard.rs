//! Brute-force protection of the node: the cluster-wide failure ledger
//! (`gatehouse_shared::auth::brute_force`) connected to the shared state store.
//!
//! The authentication layer asks [`Guard::blocked`] before it runs an authenticator and tells
//! [`Guard::failed`]/[`Guard::succeeded`] how it ended. Checking costs one atomic load while no
//! key is blocked anywhere, and a map lookup under a lock otherwise; it never waits for the
//! network. The counts travel separately:
//! - out: after a failure a task wakes, waits [`COALESCE`] for more, and writes this node's
//!   changed counts to the state store (`bruteforce:<node>:<key>` = `<window start> <count>`,
//!   expiring after two windows); at most one batch is in flight, so a flood of guesses costs the
//!   store a write per key per [`COALESCE`], not one per guess;
//! - in: the store's change feed brings every peer's counts, which the ledger adds up.
//!
//! With the store down the writes fail (debug log) and nothing arrives: every node goes on
//! blocking on its own counts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use gatehouse_shared::auth::brute_force::{GuardKey, Ledger, Limits, Report, Verdict};
use gatehouse_shared::config::BruteForce;
use gatehouse_shared::store::Store;
use tokio::sync::Notify;

use crate::peer_counts::{self, OnceAMinute, now_ms};
use crate::telemetry::Metrics;

const KEY_PREFIX: &str = "bruteforce:";
/// How long a batch of reports waits for further failures.
const COALESCE: Duration = Duration::from_millis(2);
/// Keys tracked per node; a flood of new addresses beyond it is not counted.
const CAPACITY: usize = 200_000;

pub struct Guard {
    ledger: Mutex<Ledger>,
    /// [`Ledger::blocks_until`], readable without the lock.
    blocks_until: AtomicU64,
    /// This process's name in reports: unique even when nodes share a host name.
    node: String,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    /// The "too many keys" warning.
    full_warned: OnceAMinute,
}

fn limits(cfg: &BruteForce) -> Limits {
    let n = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    Limits {
        window: cfg.window.0,
        per_address: n(cfg.max_failures_per_address),
        per_user: n(cfg.max_failures_per_user),
        per_share: n(cfg.max_failures_per_share),
        block: cfg.block.0,
        max_block: cfg.max_block.0,
        capacity: CAPACITY,
    }
}

impl Guard {
    /// `None` when `brute_force.enabled` is off. Spawns the tasks that exchange counts through
    /// `store` (they end when the guard is dropped).
    pub fn start(
        cfg: &BruteForce,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
    ) -> Option<Arc<Guard>> {
        if !cfg.enabled {
            return None;
        }
        let guard = Arc::new(Guard {
            ledger: Mutex::new(Ledger::new(limits(cfg))),
            blocks_until: AtomicU64::new(0),
            node: uuid::Uuid::new_v4().simple().to_string(),
            wake: Arc::new(Notify::new()),
            metrics,
            full_warned: OnceAMinute::default(),
        });
        let ttl = cfg.window.0.saturating_mul(2);
        tokio::spawn(send_reports(
            Arc::downgrade(&guard),
            Arc::clone(&guard.wake),
            Arc::clone(&store),
            ttl,
        ));
        let owner = Arc::downgrade(&guard);
        tokio::spawn(async move {
            peer_counts::receive(&*store, KEY_PREFIX, owner, Guard::receive).await;
        });
        Some(guard)
    }

    fn lock(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long the longest block among `keys` lasts, if any is blocked.
    pub fn blocked(&self, keys: &[GuardKey]) -> Option<Duration> {
        let now = now_ms();
        if self.blocks_until.load(Ordering::Relaxed) <= now {
            return None;
        }
        let ledger = self.lock();
        keys.iter().filter_map(|k| ledger.blocked(k, now)).max()
    }

    /// Counts a failed authentication against each of `keys`.
    pub fn failed(&self, keys: &[GuardKey]) {
        let now = now_ms();
        let mut ledger = self.lock();
        for key in keys {
            let verdict = ledger.failed(key, now);
            self.verdict(key, verdict, "failures on this node and its peers");
        }
        self.blocks_until
            .store(ledger.blocks_until(), Ordering::Relaxed);
        drop(ledger);
        self.wake.notify_one();
    }

    /// A success with these credentials (see [`Ledger::succeeded`]).
    pub fn succeeded(&self, keys: &[GuardKey]) {
        let mut ledger = self.lock();
        for key in keys {
            ledger.succeeded(key);
        }
    }

    fn verdict(&self, key: &GuardKey, verdict: Verdict, why: &str) {
        match verdict {
            Verdict::Counted => {}
            Verdict::Blocked(length) => {
                self.metrics.auth_block(key.kind.as_str());
                tracing::warn!(
                    kind = key.kind.as_str(),
                    key = %redacted(key),
                    block_s = length.as_secs(),
                    "too many failed authentications ({why}): blocked"
                );
            }
            Verdict::Untracked => {
                if self.full_warned.due() {
                    tracing::warn!(
                        kind = key.kind.as_str(),
                        "too many keys with failed authentications to track; new ones are not counted (logged once a minute)"
                    );
                }
            }
        }
    }

    /// A peer's report as stored: `<node>:<key>` and its value.
    fn receive(&self, name: &str, value: &[u8]) {
        let Some((node, key)) = name.split_once(':') else {
            return;
        };
        if let Some(report) = GuardKey::parse(key).and_then(|k| Report::decode_value(k, value)) {
            self.merge(node, &report);
        }
    }

    fn merge(&self, node: &str, report: &Report) {
        if node == self.node {
            return;
        }
        let mut ledger = self.lock();
        let verdict = ledger.merge(node, report, now_ms());
        self.blocks_until
            .store(ledger.blocks_until(), Ordering::Relaxed);
        drop(ledger);
        self.verdict(&report.key, verdict, "failures reported by peers");
    }
}

/// Share tokens are credentials of a kind: logs show only their start.
fn redacted(key: &GuardKey) -> String {
    match key.kind {
        gatehouse_shared::auth::brute_force::KeyKind::Share => {
            let text = key.as_str();
            format!("{}…", &text[..text.len().min(6)])
        }
        _ => key.as_str().to_owned(),
    }
}

async fn send_reports(
    guard: std::sync::Weak<Guard>,
    wake: Arc<Notify>,
    store: Arc<dyn Store>,
    ttl: Duration,
) {
    loop {
        wake.notified().await;
        tokio::time::sleep(COALESCE).await;
        let Some(g) = guard.upgrade() else { return };
        let (node, reports) = {
            let mut ledger = g.lock();
            ledger.prune(now_ms());
            (g.node.clone(), ledger.take_reports())
        };
        drop(g);
        for report in reports {
            let key = format!("{KEY_PREFIX}{node}:{}", report.key.as_str());
            let value = Bytes::from(report.encode_value());
            if let Err(e) = store.put(&key, value, Some(ttl)).await {
                tracing::debug!(error = %e, "cannot share failure counts with peers");
            }
        }
    }
}
