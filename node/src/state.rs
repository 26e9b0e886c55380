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
            let deferred = DeferredStore::new("nats-js-kv", waiting_for.clone());
            let connected: Arc<OnceLock<Arc<NatsKvStore>>> = Arc::default();
            match NatsKvStore::connect(opts.clone()).await {
                Ok(kv) => install(&deferred, &connected, Arc::new(kv)),
                Err(e) if e.is_retryable() => {
                    tracing::warn!(
                        store = name,
                        error = %e,
                        "cannot reach NATS; the node starts unready and keeps trying"
                    );
                    let (what, deferred, connected) =
                        (name.to_owned(), deferred.clone(), connected.clone());
                    tokio::spawn(async move {
                        let kv =
                            until_connected(&what, || NatsKvStore::connect(opts.clone())).await;
                        install(&deferred, &connected, Arc::new(kv));
                    });
                }
                Err(e) => return Err(e),
            }
            // Unready until connected once; a later loss only degrades (see `health`).
            let probe = Arc::clone(&connected);
            health.require(format!("{name} ({waiting_for})"), move || {
                probe.get().is_some()
            });
            let probe = Arc::clone(&connected);
            health.observe(format!("{name} ({waiting_for})"), move || {
                probe.get().is_some_and(|kv| kv.is_connected())
            });
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
            let waiting_for = opts.describe();
            let deferred = DeferredStore::new("redis-sentinel", waiting_for.clone());
            let connected: Arc<OnceLock<Arc<RedisStore>>> = Arc::default();
            match RedisStore::connect(opts.clone()).await {
                Ok(store) => install_redis(&deferred, &connected, Arc::new(store)),
                Err(e) if e.is_retryable() => {
                    tracing::warn!(
                        store = name,
                        error = %e,
                        "cannot reach Redis; the node starts unready and keeps trying"
                    );
                    let (what, deferred, connected) =
                        (name.to_owned(), deferred.clone(), connected.clone());
                    tokio::spawn(async move {
                        let store =
                            until_connected(&what, || RedisStore::connect(opts.clone())).await;
                        install_redis(&deferred, &connected, Arc::new(store));
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
                probe.get().is_some_and(|store| store.is_connected())
            });
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

fn install_redis(
    deferred: &Arc<DeferredStore>,
    connected: &OnceLock<Arc<RedisStore>>,
    store: Arc<RedisStore>,
) {
    let _ = connected.set(Arc::clone(&store));
    deferred.install(store);
}

fn install(
    deferred: &Arc<DeferredStore>,
    connected: &OnceLock<Arc<NatsKvStore>>,
    kv: Arc<NatsKvStore>,
) {
    let _ = connected.set(Arc::clone(&kv));
    deferred.install(kv);
}
