//! Connection and bucket bootstrap shared by the KV store and the registry reader.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use gatehouse_shared::config::NatsSecurity;
use gatehouse_shared::store::StoreError;
use tokio::sync::Notify;

use crate::security;

/// Connection attempts and bucket creation at start-up are bounded by this, independently of
/// the (much shorter) per-operation deadline.
pub(crate) const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);

/// The state of one NATS client, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnectionStats {
    pub connected: bool,
    /// Connections made since start (the first one included).
    pub connects: u64,
}

impl ConnectionStats {
    pub fn of(client: &async_nats::Client) -> Self {
        ConnectionStats {
            connected: client.connection_state() == async_nats::connection::State::Connected,
            connects: client
                .statistics()
                .connects
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Connections after the first: how often the client lost and regained the server.
    pub fn reconnects(&self) -> u64 {
        self.connects.saturating_sub(1)
    }
}

/// Why the client could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    #[error("no NATS server address configured")]
    NoServers,
    #[error("invalid NATS server address {0:?}")]
    InvalidAddress(String),
}

/// What the client tells about its server connection, for the KV store's fail-fast logic.
#[derive(Clone, Default)]
pub(crate) struct ConnectionEvents(Arc<Events>);

#[derive(Default)]
struct Events {
    /// The connection dropped: answers to requests sent on it will not come (the server that
    /// would route them is gone), so whoever waits for one stops waiting at once.
    lost: Notify,
    /// A connection after the first: the server may be up before JetStream answers (a
    /// restarted cluster elects its leaders first).
    regained: Notify,
    connected_once: AtomicBool,
    /// The server refused a publish or subscription (a permission violation).
    denied: Notify,
    last_denial: std::sync::Mutex<String>,
}

impl ConnectionEvents {
    /// Resolves at the next loss of the connection. Registered when created: a loss between
    /// this call and the first poll is not missed.
    pub(crate) fn next_loss(&self) -> impl Future<Output = ()> + '_ {
        let mut notified = Box::pin(self.0.lost.notified());
        notified.as_mut().enable();
        notified
    }

    /// Resolves at the next reconnection.
    pub(crate) fn next_reconnect(&self) -> impl Future<Output = ()> + '_ {
        self.0.regained.notified()
    }

    /// Resolves at the next permission violation the server reports that concerns `bucket`,
    /// with the server's text. Registered when created, as [`Self::next_loss`]: create it before
    /// the operation it watches is first polled, since the server may answer that operation
    /// (and the event be delivered on another thread) before this future would be polled.
    pub(crate) fn next_denial<'a>(&'a self, bucket: &'a str) -> impl Future<Output = String> + 'a {
        let registered = || {
            let mut notified = Box::pin(self.0.denied.notified());
            notified.as_mut().enable();
            notified
        };
        let mut notified = registered();
        async move {
            loop {
                notified.await;
                // The next one is registered before this one's text is read: a denial of
                // another bucket followed at once by this bucket's is not missed.
                notified = registered();
                let text = self
                    .0
                    .last_denial
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                if text.contains(&format!("KV_{bucket}"))
                    || text.contains(&format!("$KV.{bucket}."))
                {
                    return text;
                }
            }
        }
    }

    fn on(&self, event: &async_nats::Event, section: &str) {
        match event {
            async_nats::Event::Disconnected => self.0.lost.notify_waiters(),
            async_nats::Event::Connected if self.0.connected_once.swap(true, Ordering::AcqRel) => {
                self.0.regained.notify_waiters();
            }
            async_nats::Event::ServerError(err) => {
                if let Some(text) = security::report_server_error(section, err) {
                    *self.0.last_denial.lock().unwrap_or_else(|e| e.into_inner()) = text.to_owned();
                    self.0.denied.notify_waiters();
                }
            }
            _ => {}
        }
    }
}

pub(crate) async fn client(
    servers: &[String],
    name: &str,
    security: &NatsSecurity,
) -> Result<(async_nats::Client, ConnectionEvents), StoreError> {
    if servers.is_empty() {
        return Err(StoreError::Misconfigured(
            ConnectError::NoServers.to_string(),
        ));
    }
    let mut addrs = Vec::with_capacity(servers.len());
    for s in servers {
        let addr: async_nats::ServerAddr = s.parse().map_err(|_| {
            StoreError::Misconfigured(ConnectError::InvalidAddress(s.clone()).to_string())
        })?;
        addrs.push(addr);
    }
    let mut opts = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(2))
        // Reconnect fast: the cluster has other nodes, and every second offline is a second of
        // requests served without coherence.
        .reconnect_delay_callback(|attempts| {
            if attempts <= 1 {
                Duration::ZERO
            } else {
                let exp = u32::try_from(attempts).unwrap_or(u32::MAX).min(10);
                Duration::from_millis(25u64.saturating_mul(1 << exp)).min(Duration::from_secs(1))
            }
        })
        .max_reconnects(None::<usize>);
    let events = ConnectionEvents::default();
    let told = events.clone();
    let section = security.section.clone();
    opts = opts.event_callback(move |event| {
        told.on(&event, &section);
        std::future::ready(())
    });
    opts = security::apply(opts, security).await?;
    match tokio::time::timeout(STARTUP_TIMEOUT, opts.connect(addrs)).await {
        Ok(Ok(client)) => Ok((client, events)),
        Ok(Err(e)) => Err(security::connect_error(security, &e)),
        Err(_) => Err(StoreError::Timeout {
            op: "connect",
            after: STARTUP_TIMEOUT,
        }),
    }
}

/// Whether the server is at least `major.minor` (its version string may carry a suffix).
pub(crate) fn server_at_least(version: &str, major: u64, minor: u64) -> bool {
    let mut parts = version
        .trim_start_matches('v')
        .split(['.', '-', '+'])
        .map(|p| p.parse::<u64>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(ma), Some(mi)) => (ma, mi) >= (major, minor),
        _ => false,
    }
}

/// Whether a JetStream API error says the stream does not exist.
fn is_stream_not_found(err: &jetstream::context::GetStreamError) -> bool {
    matches!(
        err.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(e)
            if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

/// The bucket, or `None` if it does not exist.
pub(crate) async fn lookup_bucket(
    js: &jetstream::Context,
    bucket: &str,
) -> Result<Option<kv::Store>, StoreError> {
    match js.get_stream(format!("KV_{bucket}")).await {
        Ok(_) => js
            .get_key_value(bucket)
            .await
            .map(Some)
            .map_err(|e| StoreError::Unavailable(format!("opening bucket {bucket}: {e}"))),
        Err(e) if is_stream_not_found(&e) => Ok(None),
        Err(e) => Err(StoreError::Unavailable(format!(
            "looking up bucket {bucket}: {e}"
        ))),
    }
}

/// Opens the bucket, creating it with `config` if missing. A concurrent creator (another
/// Gatehouse node or an oCIS service) is tolerated: whoever wins fixes the configuration, and
/// the loser opens the winner's bucket. JetStream still electing its leaders at start-up is
/// retried until [`STARTUP_TIMEOUT`].
pub(crate) async fn open_or_create_bucket(
    js: &jetstream::Context,
    config: kv::Config,
    events: &ConnectionEvents,
) -> Result<kv::Store, StoreError> {
    let bucket = config.bucket.clone();
    // A refused look-up or creation does not go away by retrying: stop start-up with it.
    let denied = events.next_denial(&bucket);
    let attempt = async {
        let mut backoff = Duration::from_millis(50);
        loop {
            let err = match lookup_bucket(js, &bucket).await {
                Ok(Some(store)) => return Ok(store),
                Ok(None) => match js.create_key_value(config.clone()).await {
                    Ok(store) => return Ok(store),
                    Err(e)
                        if e.kind()
                            == jetstream::context::CreateKeyValueErrorKind::LimitMarkersNotSupported =>
                    {
                        return Err(StoreError::Unavailable(format!(
                            "creating bucket {bucket}: {e}"
                        )));
                    }
                    // Possibly lost a creation race: look again.
                    Err(e) => StoreError::Unavailable(format!("creating bucket {bucket}: {e}")),
                },
                Err(e) => e,
            };
            tracing::debug!(bucket, error = %err, "bucket not ready yet, retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    };
    tokio::select! {
        r = tokio::time::timeout(STARTUP_TIMEOUT, attempt) => match r {
            Ok(r) => r,
            Err(_) => Err(StoreError::Timeout {
                op: "open bucket",
                after: STARTUP_TIMEOUT,
            }),
        },
        text = denied => Err(StoreError::Misconfigured(format!(
            "NATS refused to open or create the bucket {bucket}: {text} (grant the permission, \
             or create the bucket beforehand; docs/operations.md)"
        ))),
    }
}

/// When the server stored `entry`.
pub(crate) fn stored_at(entry: &kv::Entry) -> std::time::SystemTime {
    let nanos = entry.created.unix_timestamp_nanos();
    let nanos = u64::try_from(nanos).unwrap_or(0);
    std::time::UNIX_EPOCH + Duration::from_nanos(nanos)
}

#[cfg(test)]
mod tests {
    use super::server_at_least;

    #[test]
    fn versions() {
        assert!(server_at_least("2.15.1", 2, 11));
        assert!(server_at_least("2.11.0-RC.1", 2, 11));
        assert!(server_at_least("v3.0.0", 2, 11));
        assert!(!server_at_least("2.10.27", 2, 11));
        assert!(!server_at_least("2.9.10", 2, 11));
        assert!(!server_at_least("garbage", 2, 11));
    }
}
