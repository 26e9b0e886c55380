//! Connecting in the background when NATS was unreachable at start-up: the node stays up and
//! unready instead of exiting (a crash loop only adds restarts to an outage), and the component
//! takes effect once a connection succeeds.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

/// Pause before the first retry; it doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Calls `connect` until it succeeds and returns what it produced; `what` names it in the logs.
pub async fn until_connected<T, E, F, Fut>(what: &str, mut connect: F) -> T
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut pause = RETRY_FIRST;
    loop {
        tokio::time::sleep(pause).await;
        match connect().await {
            Ok(connected) => {
                tracing::info!(what, "connected to NATS");
                return connected;
            }
            Err(e) => {
                tracing::debug!(what, error = %e, "NATS still unreachable");
                pause = (pause * 2).min(RETRY_MAX);
            }
        }
    }
}
