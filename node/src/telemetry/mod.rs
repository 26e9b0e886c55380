//! Logging, metrics and traces: how the node reports what it does. The layers that feed these
//! live in `crate::layers`; the debug server exposes the metrics; `traces` exports spans.

pub mod logging;
pub mod metrics;
pub mod scrape;
pub mod traces;

pub use gatehouse_shared::store::{Outcome, StoreObserver};
pub use metrics::{AuthResult, MethodLabel, MethodMetrics, Metrics};

/// This machine's host name, as logs and traces report it (visible ASCII only).
pub fn host_name() -> String {
    let host: String = gethostname::gethostname()
        .to_string_lossy()
        .chars()
        .filter(char::is_ascii_graphic)
        .take(64)
        .collect();
    if host.is_empty() {
        "localhost".to_owned()
    } else {
        host
    }
}

/// The node's id in logs, metrics and traces: `node_id` when configured, else the host name.
pub fn node_id(configured: &str) -> String {
    if configured.is_empty() {
        host_name()
    } else {
        configured.to_owned()
    }
}
