//! Liveness and readiness state shared by the server (which drains) and the debug server (which
//! reports). Readiness turns false the moment draining starts, or while a required dependency
//! (the NATS connection of a configured store or registry) is down.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

type Check = Arc<dyn Fn() -> bool + Send + Sync>;

#[derive(Default)]
pub struct Health {
    draining: AtomicBool,
    dependencies: RwLock<Vec<(String, Check)>>,
}

impl Health {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
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
        let mut deps = self.dependencies.write().unwrap_or_else(|e| e.into_inner());
        deps.push((name.into(), Arc::new(check)));
    }

    /// Names of required dependencies that are currently down.
    pub fn failing_dependencies(&self) -> Vec<String> {
        let deps = self.dependencies.read().unwrap_or_else(|e| e.into_inner());
        deps.iter()
            .filter(|(_, ok)| !ok())
            .map(|(n, _)| n.clone())
            .collect()
    }

    pub fn is_ready(&self) -> bool {
        !self.is_draining() && self.failing_dependencies().is_empty()
    }
}
