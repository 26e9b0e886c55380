//! What the brute-force guard (`guard.rs`) and the rate limiter (`rate_limit.rs`) share: both
//! keep counts on every node, publish this node's under a key prefix of the state store and
//! take their peers' from its change feed, and both must warn, but not flood the log, when they
//! have more keys than they can track.

use std::sync::Weak;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use gatehouse_shared::store::{Change, Store};
use tokio::sync::broadcast::error::RecvError;

/// Wall-clock Unix milliseconds: windows and buckets must mean the same moment on every node.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Lets a warning through at most once a minute.
#[derive(Debug, Default)]
pub struct OnceAMinute {
    /// When it last let one through (Unix ms).
    last: AtomicU64,
}

impl OnceAMinute {
    pub fn due(&self) -> bool {
        let now = now_ms();
        let last = self.last.load(Ordering::Relaxed);
        now.saturating_sub(last) >= 60_000
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// Hands every value put under `prefix` in `store` to `handle` with the rest of its key, until
/// `owner` is dropped or the feed ends. A lagging feed skips what it missed.
pub async fn receive<T>(
    store: &dyn Store,
    prefix: &str,
    owner: Weak<T>,
    handle: impl Fn(&T, &str, &[u8]),
) {
    let mut changes = store.changes();
    loop {
        let change = match changes.recv().await {
            Ok(change) => change,
            Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => return,
        };
        let Change::Put { key, entry } = change else {
            continue;
        };
        let Some(rest) = key.strip_prefix(prefix) else {
            continue;
        };
        let Some(owner) = owner.upgrade() else { return };
        handle(&owner, rest, &entry.value);
    }
}
