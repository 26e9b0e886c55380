//! Liveness and readiness state shared by the server (which drains) and the debug server (which
//! reports).
//!
//! Neither liveness nor readiness holds until the server accepts connections. Readiness turns
//! false the moment draining starts, and until every required dependency has come up (a
//! configured NATS store has connected once, the service registry has loaded). A dependency lost
//! *afterwards* only makes the node degraded — reported in `/readyz`'s body and
//! in the metrics, not in its status. From inside one node a NATS outage of the whole cluster
//! cannot be told from this node being cut off alone, and a load balancer that took every
//! degraded node out would turn a shared outage (cached sessions still served everywhere) into a
//! total one. What a degraded node cannot do (a new login, provisioning) it answers with 503 and
//! `Retry-After`, which the load balancer retries on another node for idempotent requests.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

type Check = Arc<dyn Fn() -> bool + Send + Sync>;

#[derive(Default)]
pub struct Health {
    /// Set once the server accepts connections: the main listener is bound first thing at
    /// start-up, so accepting a TCP connection alone does not mean the node serves.
    serving: AtomicBool,
    draining: AtomicBool,
    dependencies: Checks,
    degraded_when: Checks,
}

impl Health {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn start_serving(&self) {
        self.serving.store(true, Ordering::SeqCst);
    }

    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::SeqCst)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Registers a dependency the node cannot serve well without; `check` must not block.
    pub fn require(
        &self,
        name: impl Into<String>,
        check: impl Fn() -> bool + Send + Sync + 'static,
    ) {
        add(&self.dependencies, name.into(), Arc::new(check));
    }

    /// Registers a dependency whose loss degrades the node without making it unready; `up` must
    /// not block.
    pub fn observe(&self, name: impl Into<String>, up: impl Fn() -> bool + Send + Sync + 'static) {
        add(&self.degraded_when, name.into(), Arc::new(up));
    }

    /// Names of observed dependencies that are currently down.
    pub fn degraded(&self) -> Vec<String> {
        down(&self.degraded_when)
    }

    /// Names of required dependencies that are currently down.
    pub fn failing_dependencies(&self) -> Vec<String> {
        down(&self.dependencies)
    }

    pub fn is_ready(&self) -> bool {
        self.is_serving() && !self.is_draining() && self.failing_dependencies().is_empty()
    }
}

type Checks = RwLock<Vec<(String, Check)>>;

fn add(checks: &Checks, name: String, check: Check) {
    checks
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .push((name, check));
}

fn down(checks: &Checks) -> Vec<String> {
    let checks = checks.read().unwrap_or_else(|e| e.into_inner());
    checks
        .iter()
        .filter(|(_, up)| !up())
        .map(|(n, _)| n.clone())
        .collect()
}
