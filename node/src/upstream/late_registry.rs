//! The NATS service registry of a node that may start before NATS is reachable.
//!
//! Exiting would only turn a NATS outage into a crash loop. Until the registry is connected it
//! knows no service (service routes answer 502, and the node is unready, so a load balancer sends
//! it nothing); a background task keeps connecting and installs it once it can.

use std::sync::{Arc, OnceLock};

use gatehouse_nats::ServiceRegistry;
use gatehouse_shared::config::NatsSecurity;

use super::ServiceNodes;
use crate::reconnect::until_connected;

#[derive(Default)]
pub struct LateRegistry(OnceLock<ServiceRegistry>);

impl LateRegistry {
    /// The registry, once connected.
    pub fn get(&self) -> Option<&ServiceRegistry> {
        self.0.get()
    }

    pub fn install(&self, registry: ServiceRegistry) {
        let _ = self.0.set(registry);
    }

    /// Connects until it succeeds, then installs the registry.
    pub async fn keep_connecting(
        self: Arc<Self>,
        servers: Vec<String>,
        bucket: String,
        security: NatsSecurity,
    ) {
        let registry = until_connected("service registry", || {
            ServiceRegistry::connect_with(servers.clone(), &bucket, &security)
        })
        .await;
        self.install(registry);
    }
}

impl ServiceNodes for LateRegistry {
    fn nodes(&self, service: &str) -> Vec<String> {
        self.get().map(|r| r.nodes(service)).unwrap_or_default()
    }
}
