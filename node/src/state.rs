//! Opens the store a node shares with its peers (`state_store`) from its oCIS-style definition.
//!
//! `memory` and `noop` are in-process. `nats-js-kv` is the JetStream bucket behind a near-cache, so
//! that a hit costs no network call and peers' writes arrive through the bucket's change feed; its
//! connection becomes a readiness dependency of the node.

use std::sync::Arc;

use gatehouse_nats::{NatsKvOptions, NatsKvStore};
use gatehouse_shared::config::StoreConfig;
use gatehouse_shared::store::{
    MemoryStore, NearCache, NearCacheOptions, NoopStore, Store, StoreError, StoreObserver,
};

use crate::health::Health;

/// Entries one node keeps locally per near-cache.
const NEAR_CACHE_CAPACITY: usize = 100_000;

pub async fn open(
    name: &str,
    cfg: &StoreConfig,
    observer: Arc<dyn StoreObserver>,
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
                username: Some(cfg.username.clone()).filter(|u| !u.is_empty()),
                password: Some(cfg.password.clone()).filter(|p| !p.is_empty()),
                op_timeout: cfg.op_timeout.0,
                ..NatsKvOptions::default()
            };
            let kv = Arc::new(NatsKvStore::connect(opts).await?);
            let probe = Arc::clone(&kv);
            health.require(
                format!("{name} (NATS {})", cfg.addresses.join(",")),
                move || probe.is_connected(),
            );
            let near = NearCache::new(
                kv,
                NearCacheOptions {
                    capacity: NEAR_CACHE_CAPACITY,
                    op_timeout: cfg.op_timeout.0,
                },
                Some(observer),
            );
            Ok(near)
        }
        // Validation admits only the kinds above and `memory`.
        _ => Ok(Arc::new(MemoryStore::new())),
    }
}
