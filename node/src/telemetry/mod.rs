//! Logging and metrics: how the node reports what it does. The layers that feed these live in
//! `crate::layers`; the debug server exposes them.

pub mod logging;
pub mod metrics;

pub use gatehouse_shared::store::{Outcome, StoreObserver};
pub use metrics::{AuthResult, MethodLabel, MethodMetrics, Metrics};
