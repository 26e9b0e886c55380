//! Connecting in the background when NATS or Redis was unreachable at start-up: the node stays up and
//! unready instead of exiting (a crash loop only adds restarts to an outage), and the component
//! takes effect once a connection succeeds.

use std::future::Future;
use std::time::Duration;

use gatehouse_shared::store::StoreError;

/// Pause before the first retry; it doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Calls `connect` until it succeeds and returns what it produced; `what` names it in the logs.
/// A failure no retry fixes (refused credentials, an untrusted certificate) keeps being retried —
/// the operator may fix the server side — but is logged as an error each time it changes, since
/// the node stays unready until then.
pub async fn until_connected<T, F, Fut>(what: &str, mut connect: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut pause = RETRY_FIRST;
    let mut reported = String::new();
    loop {
        tokio::time::sleep(pause).await;
        match connect().await {
            Ok(connected) => {
                tracing::info!(what, "connected to the server");
                return connected;
            }
            Err(e) if !e.is_retryable() => {
                let message = e.to_string();
                if message != reported {
                    tracing::error!(what, error = %message, "the server refuses this node; it stays unready until this is fixed");
                    reported = message;
                }
                pause = (pause * 2).min(RETRY_MAX);
            }
            Err(e) => {
                tracing::debug!(what, error = %e, "the server is still unreachable");
                pause = (pause * 2).min(RETRY_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tracing::instrument::WithSubscriber as _;

    use super::*;
    use crate::telemetry::logging::tests::Capture;

    #[tokio::test(start_paused = true)]
    async fn a_refusal_is_an_error_once_per_message_and_retrying_goes_on() {
        let capture = Capture::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(capture.clone())
            .with_max_level(tracing::Level::INFO)
            .finish();
        let attempts = AtomicUsize::new(0);
        let got = until_connected("state store", || {
            let n = attempts.fetch_add(1, Ordering::SeqCst);
            async move {
                match n {
                    0 => Err(StoreError::Unavailable("connection refused".into())),
                    1..=3 => Err(StoreError::Misconfigured(
                        "state_store: NATS refused the credentials".into(),
                    )),
                    _ => Ok(n),
                }
            }
        })
        .with_subscriber(subscriber)
        .await;
        assert_eq!(got, 4);
        let lines = capture.lines();
        let errors: Vec<&String> = lines.iter().filter(|l| l.contains("ERROR")).collect();
        assert_eq!(errors.len(), 1, "{lines:#?}");
        assert!(
            errors[0].contains("NATS refused the credentials"),
            "{lines:#?}"
        );
        assert!(
            !lines.iter().any(|l| l.contains("connection refused")),
            "{lines:#?}"
        );
    }
}
