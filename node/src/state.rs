//! Opens the store a node shares with its peers (`state_store`) from its oCIS-style definition.
//!
//! `memory` and `noop` are in-process. `nats-js-kv` (a JetStream bucket) and `redis-sentinel`
//! (Redis behind Sentinel) are networked: each sits behind a near-cache, so that a hit costs no
//! network call and peers' writes arrive through the store's change feed; its connection
//! becomes a readiness dependency of the node, and its connection state and near-cache size are
//! read at every metrics scrape. A node that cannot reach its store at start-up does not exit:
//! the store is a [`DeferredStore`] that answers `Unavailable` while a background task keeps
//! connecting, and the node is unready until it has.

use std::sync::{Arc, OnceLock};

use gatehouse_nats::{NatsKvOptions, NatsKvStore};
use gatehouse_shared::config::StoreConfig;
use gatehouse_shared::store::{
    DeferredStore, MemoryStore, NearCache, NearCacheOptions, NoopStore, Store, StoreError,
};

use crate::health::Health;
use crate::reconnect::until_connected;
use crate::redis::{RedisOptions, RedisStore};
use crate::telemetry::Metrics;

/// Entries one node keeps locally per near-cache.
const NEAR_CACHE_CAPACITY: usize = 100_000;

/// Opens the store `name` (for readiness), configured in `section` (for errors), whose NATS or
/// Redis connection metrics call `client`.
pub async fn open(
    name: &str,
    section: &str,
    client: &'static str,
    cfg: &StoreConfig,
    metrics: &Arc<Metrics>,
    health: &Health,
) -> Result<Arc<dyn Store>, StoreError> {
    match cfg.store.as_str() {
        "noop" => Ok(Arc::new(NoopStore::new())),
        "nats-js-kv" => {
            let opts = NatsKvOptions {
                servers: cfg.addresses.clone(),
                bucket: cfg.database.clone(),
                table: cfg.table.clone(),
                replicas: cfg.replicas,
                memory_storage: cfg.disable_persistence,
                max_age: cfg.ttl.0,
                security: cfg.nats_security(section),
                op_timeout: cfg.op_timeout.0,
                ..NatsKvOptions::default()
            };
            let waiting_for = format!("NATS at {}", cfg.addresses.join(","));
            let (deferred, connected) = connect_or_wait(
                name,
                "nats-js-kv",
                waiting_for,
                health,
                move || NatsKvStore::connect(opts.clone()),
                NatsKvStore::is_connected,
            )
            .await?;
            // Probes hold weak references: metrics never keep a component alive.
            let probe = Arc::downgrade(&connected);
            metrics.scrape().nats(client, move || {
                probe
                    .upgrade()
                    .and_then(|c| c.get().map(|kv| kv.connection()))
                    .unwrap_or_default()
            });
            Ok(near_cache(&cfg.database, deferred, cfg, metrics))
        }
        "redis-sentinel" => {
            let opts = RedisOptions::from_config(section, cfg)?;
            let (deferred, connected) = connect_or_wait(
                name,
                "redis-sentinel",
                opts.describe(),
                health,
                move || RedisStore::connect(opts.clone()),
                RedisStore::is_connected,
            )
            .await?;
            let probe = Arc::downgrade(&connected);
            metrics.scrape().redis(client, move || {
                probe
                    .upgrade()
                    .and_then(|c| c.get().map(|store| store.stats()))
                    .unwrap_or_default()
            });
            // Labelled like the NATS bucket metrics, by the table (the key prefix), or by the
            // database when the table is empty.
            let label = if cfg.table.is_empty() {
                &cfg.database
            } else {
                &cfg.table
            };
            Ok(near_cache(label, deferred, cfg, metrics))
        }
        // Validation admits only the kinds above and `memory`.
        _ => Ok(Arc::new(MemoryStore::new())),
    }
}

/// The near-cache in front of a networked store, with its metrics. Store metrics are labelled by
/// `label`; one name per store opened at start-up (a handful per process), so leaking it for the
/// `'static` label is bounded.
fn near_cache(
    label: &str,
    deferred: Arc<DeferredStore>,
    cfg: &StoreConfig,
    metrics: &Arc<Metrics>,
) -> Arc<dyn Store> {
    let label: &'static str = Box::leak(label.to_owned().into_boxed_str());
    let near = NearCache::named(
        label,
        deferred,
        NearCacheOptions {
            capacity: NEAR_CACHE_CAPACITY,
            op_timeout: cfg.op_timeout.0,
        },
        Some(metrics.clone()),
    );
    let cache = Arc::downgrade(&near);
    metrics.scrape().near_cache(label.to_owned(), move || {
        cache.upgrade().map_or(0, |c| c.stats().entries)
    });
    near
}

/// Connects with `connect` now or, when the server cannot be reached yet, keeps trying in the
/// background while the returned store answers `Unavailable`. Refusals no retry fixes are
/// returned. The node is unready until the store has connected once; a later loss only degrades
/// it (see `health`).
async fn connect_or_wait<S, F, Fut>(
    name: &str,
    kind: &'static str,
    waiting_for: String,
    health: &Health,
    connect: F,
    is_connected: fn(&S) -> bool,
) -> Result<(Arc<DeferredStore>, Arc<OnceLock<Arc<S>>>), StoreError>
where
    S: Store + Send + Sync + 'static,
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<S, StoreError>> + Send,
{
    let deferred = DeferredStore::new(kind, waiting_for.clone());
    let connected: Arc<OnceLock<Arc<S>>> = Arc::default();
    let install = |deferred: &Arc<DeferredStore>, connected: &OnceLock<Arc<S>>, store: S| {
        let store = Arc::new(store);
        let _ = connected.set(Arc::clone(&store));
        deferred.install(store);
    };
    match connect().await {
        Ok(store) => install(&deferred, &connected, store),
        Err(e) if e.is_retryable() => {
            tracing::warn!(
                store = name,
                error = %e,
                "cannot reach {waiting_for}; the node starts unready and keeps trying"
            );
            let (what, deferred, connected) =
                (name.to_owned(), deferred.clone(), connected.clone());
            tokio::spawn(async move {
                let store = until_connected(&what, connect).await;
                install(&deferred, &connected, store);
            });
        }
        Err(e) => return Err(e),
    }
    let probe = Arc::clone(&connected);
    health.require(format!("{name} ({waiting_for})"), move || {
        probe.get().is_some()
    });
    let probe = Arc::clone(&connected);
    health.observe(format!("{name} ({waiting_for})"), move || {
        probe.get().is_some_and(|s| is_connected(s))
    });
    Ok((deferred, connected))
}
