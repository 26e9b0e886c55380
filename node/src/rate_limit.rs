//! Request-volume limits of the node: the token buckets of `gatehouse_shared::rate_limit`,
//! one set per `rate_limits` rule, connected to the shared state store so that every node's
//! buckets are drained by the whole cluster's requests.
//!
//! Where they are checked: [`RouteLimits`] knows which rules apply to each route; the route layer
//! asks it for the `per: address` rules as soon as the route is known (before any authenticator,
//! so a flood costs no verification and reaches no backend) and the account layer for the
//! `per: user` rules once the account is (from the memo, or resolved). Neither is a layer of its
//! own: each layer wraps every request's future once more, and moving that future costs more
//! than the check (about 100 instructions per layer and request, measured with callgrind). A
//! route no rule names costs two index lookups.
//!
//! [`RateLimiter::admit`] takes a token from each rule's bucket under that rule's lock and never
//! waits for the network. Admissions travel separately:
//! - out: after an admission a task wakes, waits [`SHARE_INTERVAL`] for more, and writes one
//!   batch of this node's admissions per key since the last batch under `ratelimit:<node>`
//!   (expiring after [`REPORT_TTL`]), so the store sees one write per node per interval however
//!   many clients are sending;
//! - in: the store's change feed brings every peer's batches, which are taken from the same
//!   buckets.
//!
//! With the store down the writes fail (debug log) and nothing arrives: every node goes on
//! limiting on its own admissions. A batch lost on the way is admitted twice at most, once per
//! node that did not hear of it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use gatehouse_shared::rate_limit::{
    Buckets, LimitBy, LimitKey, Rate, RateLimitRule, RouteRules, Taken, decode_batch, encode_batch,
};
use gatehouse_shared::routing::Router;
use gatehouse_shared::store::Store;
use prometheus::IntCounter;
use tokio::sync::Notify;

use crate::error::GatewayError;
use crate::layers::route::RouteInfo;
use crate::peer_counts::{self, OnceAMinute, now_ms};
use crate::telemetry::Metrics;

const KEY_PREFIX: &str = "ratelimit:";
/// How long a batch of admissions waits for more before it is written.
const SHARE_INTERVAL: Duration = Duration::from_millis(10);
/// Batches are read as they arrive; an old one is of no use to anyone.
const REPORT_TTL: Duration = Duration::from_secs(30);
/// Entries per stored batch (about 60 bytes each): far below NATS's 1 MiB message limit.
const BATCH_ENTRIES: usize = 4_000;
/// Keys tracked per rule and node; new keys beyond it are admitted uncounted (and logged).
const CAPACITY: usize = 100_000;
/// Buckets that have refilled are forgotten at most this often.
const PRUNE_EVERY: Duration = Duration::from_secs(1);

struct Rule {
    name: Arc<str>,
    buckets: Mutex<Buckets>,
    refused: IntCounter,
}

pub struct RateLimiter {
    rules: Vec<Rule>,
    /// The configuration of `rules`, index for index: which routes each applies to.
    configs: Vec<RateLimitRule>,
    by_name: HashMap<Arc<str>, usize>,
    /// This process's name in batches: unique even when nodes share a host name.
    node: String,
    wake: Arc<Notify>,
    /// The "too many keys" warning.
    full_warned: OnceAMinute,
}

impl RateLimiter {
    /// `None` without rules. Spawns the tasks that exchange admissions through `store` (they
    /// end when the limiter is dropped). The rules are validated (`config::validate`).
    pub fn start(
        rules: &[RateLimitRule],
        store: Arc<dyn Store>,
        metrics: &Metrics,
    ) -> Option<Arc<RateLimiter>> {
        if rules.is_empty() {
            return None;
        }
        // A rule that admits nothing is refused by validation; were one to get here, it is
        // left out of both lists, so their indices still agree.
        let (rules, configs): (Vec<Rule>, Vec<RateLimitRule>) = rules
            .iter()
            .filter_map(|r| {
                let rule = Rule {
                    name: r.name.as_str().into(),
                    buckets: Mutex::new(Buckets::new(Rate::of(r)?, CAPACITY)),
                    refused: metrics.rate_limited(&r.name),
                };
                Some((rule, r.clone()))
            })
            .unzip();
        let by_name = rules
            .iter()
            .enumerate()
            .map(|(i, r)| (r.name.clone(), i))
            .collect();
        let limiter = Arc::new(RateLimiter {
            rules,
            configs,
            by_name,
            node: uuid::Uuid::new_v4().simple().to_string(),
            wake: Arc::new(Notify::new()),
            full_warned: OnceAMinute::default(),
        });
        tokio::spawn(send_batches(
            Arc::downgrade(&limiter),
            Arc::clone(&limiter.wake),
            Arc::clone(&store),
        ));
        let owner = Arc::downgrade(&limiter);
        tokio::spawn(async move {
            peer_counts::receive(&*store, KEY_PREFIX, owner, RateLimiter::merge).await;
        });
        Some(limiter)
    }

    fn lock(&self, rule: usize) -> Option<MutexGuard<'_, Buckets>> {
        let r = self.rules.get(rule)?;
        Some(r.buckets.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Takes one request of `key` from each of `rules` (indices into the configured list);
    /// refused if any of them has no token, and then none is taken.
    pub fn admit(&self, rules: &[usize], key: &LimitKey) -> Result<(), GatewayError> {
        let now = now_ms();
        for (n, &i) in rules.iter().enumerate() {
            let Some(mut buckets) = self.lock(i) else {
                continue;
            };
            match buckets.take(key, now) {
                Taken::Admitted => {}
                Taken::Untracked => self.warn_full(&self.rules[i].name),
                Taken::Refused(refusal) => {
                    drop(buckets);
                    for &j in &rules[..n] {
                        if let Some(mut earlier) = self.lock(j) {
                            earlier.give_back(key);
                        }
                    }
                    let rule = &self.rules[i];
                    rule.refused.inc();
                    if refusal.first {
                        tracing::warn!(
                            rule = %rule.name,
                            per = kind(key),
                            key = %key.text(),
                            retry_after_ms = u64::try_from(refusal.retry_after.as_millis()).unwrap_or(u64::MAX),
                            "rate limit reached: requests refused until the key's bucket refills"
                        );
                    }
                    return Err(GatewayError::RateLimited {
                        rule: rule.name.clone(),
                        retry_after: refusal.retry_after,
                    });
                }
            }
        }
        self.wake.notify_one();
        Ok(())
    }

    fn warn_full(&self, rule: &str) {
        if self.full_warned.due() {
            tracing::warn!(
                rule,
                "too many keys sending at once to track; new ones are admitted uncounted (logged once a minute)"
            );
        }
    }

    /// This node's admissions since the last call, as stored batches.
    fn batches(&self, prune: bool) -> Vec<String> {
        let now = now_ms();
        let mut entries: Vec<(Arc<str>, LimitKey, u32)> = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let Some(mut buckets) = self.lock(i) else {
                continue;
            };
            entries.extend(
                buckets
                    .take_reports()
                    .into_iter()
                    .map(|(key, count)| (rule.name.clone(), key, count)),
            );
            if prune {
                buckets.prune(now);
            }
        }
        entries
            .chunks(BATCH_ENTRIES)
            .map(|chunk| encode_batch(chunk.iter().map(|(r, k, n)| (&**r, k, *n))))
            .collect()
    }

    fn merge(&self, node: &str, value: &[u8]) {
        if node == self.node {
            return;
        }
        let now = now_ms();
        for (rule, count, key) in decode_batch(value) {
            if let Some(mut buckets) = self.by_name.get(rule).and_then(|&i| self.lock(i)) {
                buckets.merge(&key, count, now);
            }
        }
    }
}

/// The limiter and which of its rules apply to which route; built once per node.
pub struct RouteLimits {
    limiter: Arc<RateLimiter>,
    table: RouteRules,
}

impl RouteLimits {
    pub fn new(limiter: Arc<RateLimiter>, router: &Router) -> Self {
        let table = RouteRules::new(
            &limiter.configs,
            router
                .routes()
                .map(|m| (m.policy_index, m.route_index, m.policy, m.endpoint)),
        );
        RouteLimits { limiter, table }
    }

    /// The `per: address` rules of `route` for a request from `client`.
    pub fn admit_address(&self, route: &RouteInfo, client: IpAddr) -> Result<(), GatewayError> {
        self.admit(route, LimitBy::Address, || LimitKey::address(client))
    }

    /// The `per: user` rules of `route` for a request of the account `user`.
    pub fn admit_user(&self, route: &RouteInfo, user: &Arc<str>) -> Result<(), GatewayError> {
        self.admit(route, LimitBy::User, || LimitKey::User(user.clone()))
    }

    /// The key is made only when a rule of `by` applies to the route.
    fn admit(
        &self,
        route: &RouteInfo,
        by: LimitBy,
        key: impl FnOnce() -> LimitKey,
    ) -> Result<(), GatewayError> {
        let rules = self.table.rules(route.policy_index, route.route_index, by);
        if rules.is_empty() {
            return Ok(());
        }
        self.limiter.admit(rules, &key())
    }
}

fn kind(key: &LimitKey) -> &'static str {
    match key {
        LimitKey::Address(_) => "address",
        LimitKey::User(_) => "user",
    }
}

async fn send_batches(limiter: Weak<RateLimiter>, wake: Arc<Notify>, store: Arc<dyn Store>) {
    let mut pruned = tokio::time::Instant::now();
    loop {
        wake.notified().await;
        tokio::time::sleep(SHARE_INTERVAL).await;
        let Some(l) = limiter.upgrade() else { return };
        let prune = pruned.elapsed() >= PRUNE_EVERY;
        if prune {
            pruned = tokio::time::Instant::now();
        }
        let key = format!("{KEY_PREFIX}{}", l.node);
        let batches = l.batches(prune);
        drop(l);
        for batch in batches {
            if let Err(e) = store.put(&key, Bytes::from(batch), Some(REPORT_TTL)).await {
                tracing::debug!(error = %e, "cannot share rate-limit admissions with peers");
            }
        }
    }
}
