//! One connection to the master, and the supervisor that replaces it when it is lost.
//!
//! A session is the master the sentinels name (the client checks its `ROLE`), a multiplexed
//! connection for commands and a subscription to the table's change channel on the same server.
//! The supervisor turns channel messages into the change feed and pings both connections; when
//! either fails, or an operation reports a broken connection, it drops the session, asks the
//! sentinels again until a master answers, and announces a [`Change::Reset`] (writes made in
//! the gap were not seen). Each new session moves the revision counter up by [`EPOCH_STEP`]: a
//! replica promoted by a failover may not have the last revisions the old master handed out,
//! and revisions must never repeat.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use gatehouse_shared::store::redis_layout::{
    ChangeMessage, REVISION_COUNTER, change_channel, data_key, keyspace_key, keyspace_pattern,
    revision_key,
};
use gatehouse_shared::store::{Change, Entry, StoreError};
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{AsyncConnectionConfig, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo};

use super::{RedisOptions, Shared, connection_lost, is_auth_failure, scripts};

/// How far the revision counter moves at every new session.
const EPOCH_STEP: u64 = 1 << 20;
/// Deadline of finding the master and connecting to it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the connections are pinged; a silent loss is noticed within this plus the timeout.
const PING_EVERY: Duration = Duration::from_millis(500);
/// How long a keyspace notification waits for the channel message of a Gatehouse write.
const PROBE_AFTER: Duration = Duration::from_millis(5);
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_millis(500);

pub(super) struct Session {
    pub master: String,
    pub data: MultiplexedConnection,
    sink: PubSubSink,
    stream: PubSubStream,
}

impl Session {
    pub async fn open(opts: &RedisOptions) -> Result<Session, StoreError> {
        match tokio::time::timeout(CONNECT_TIMEOUT, Self::try_open(opts)).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Unavailable(format!(
                "no answer from the {} within {CONNECT_TIMEOUT:?}",
                opts.describe()
            ))),
        }
    }

    async fn try_open(opts: &RedisOptions) -> Result<Session, StoreError> {
        let refused = |what: &str, e: redis::RedisError| {
            let section = &opts.section;
            if is_auth_failure(&e) {
                StoreError::Misconfigured(format!(
                    "{section}: Redis refused the credentials ({section}.username and {section}.password): {e}"
                ))
            } else {
                StoreError::Unavailable(format!("{what} ({}): {e}", opts.describe()))
            }
        };
        let mut credentials = RedisConnectionInfo::default();
        if !opts.username.is_empty() {
            credentials = credentials.set_username(&opts.username);
        }
        if !opts.password.is_empty() {
            credentials = credentials.set_password(&opts.password);
        }
        let mut sentinels = Vec::with_capacity(opts.sentinels.len());
        for addr in &opts.sentinels {
            let (host, port) = addr
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
                .ok_or_else(|| {
                    StoreError::Misconfigured(format!(
                        "{}.addresses: {addr:?} is not host:port",
                        opts.section
                    ))
                })?;
            let info = ConnectionAddr::Tcp(host, port)
                .into_connection_info()
                .map_err(|e| refused("sentinel address", e))?
                .set_redis_settings(credentials.clone());
            sentinels.push(info);
        }
        let node = SentinelNodeConnectionInfo::default().set_redis_connection_info(credentials);
        let mut sentinel = SentinelClient::build(
            sentinels,
            opts.master.clone(),
            Some(node),
            SentinelServerType::Master,
        )
        .map_err(|e| refused("sentinels", e))?;
        let client = sentinel
            .async_get_client()
            .await
            .map_err(|e| refused("finding the master", e))?;
        let master = client.get_connection_info().addr().to_string();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(opts.op_timeout));
        let mut data = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| refused("connecting to the master", e))?;
        let _: u64 = redis::cmd("INCRBY")
            .arg(REVISION_COUNTER)
            .arg(EPOCH_STEP)
            .query_async(&mut data)
            .await
            .map_err(|e| refused("the revision counter", e))?;
        let mut pubsub = client
            .get_async_pubsub()
            .await
            .map_err(|e| refused("subscribing", e))?;
        pubsub
            .subscribe(change_channel(&opts.table))
            .await
            .map_err(|e| refused("subscribing", e))?;
        pubsub
            .psubscribe(keyspace_pattern(&opts.table))
            .await
            .map_err(|e| refused("subscribing", e))?;
        report_keyspace_events(opts, &mut data).await;
        let (sink, stream) = pubsub.split();
        Ok(Session {
            master,
            data,
            sink,
            stream,
        })
    }
}

/// Runs for the store's lifetime (the store aborts it when dropped).
pub(super) async fn supervise(shared: Arc<Shared>, mut session: Session) {
    loop {
        let why = serve(&shared, &mut session).await;
        *shared.conn.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let generation = shared.generation.fetch_add(1, Ordering::SeqCst) + 1;
        shared.connected.store(false, Ordering::Relaxed);
        tracing::warn!(store = %shared.opts.section, master = %session.master, reason = %why, "lost the Redis master; finding it again");
        session = reconnect(&shared).await;
        // A loss reported on the old connection before it was dropped must not end the new one.
        let _ = futures::FutureExt::now_or_never(shared.lost.notified());
        *shared.conn.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((generation, session.data.clone()));
        shared.connected.store(true, Ordering::Relaxed);
        shared.reconnects.fetch_add(1, Ordering::Relaxed);
        let _ = shared.feed.send(Change::Reset);
        tracing::info!(store = %shared.opts.section, master = %session.master, "connected to the Redis master");
    }
}

/// Applies the change channel and keyspace notifications until the session fails; returns why.
///
/// A keyspace notification says only that a key changed. Gatehouse's own writes are followed at
/// once by their channel message, which carries the value; a key whose notification is not
/// followed by one within [`PROBE_AFTER`] was changed by someone else (a Go service) and is read
/// back ([`scripts::PROBE`]) to learn its value and revision.
async fn serve(shared: &Shared, session: &mut Session) -> String {
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut foreign: HashSet<String> = HashSet::new();
    let probe_timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(probe_timer);
    loop {
        tokio::select! {
            message = session.stream.next() => match message {
                Some(message) => {
                    if message.from_pattern() {
                        if let Some(key) = keyspace_key(message.get_channel_name(), &shared.opts.table) {
                            if foreign.is_empty() {
                                probe_timer.as_mut().reset(tokio::time::Instant::now() + PROBE_AFTER);
                            }
                            foreign.insert(key);
                        }
                    } else if let Some(key) = apply(shared, message.get_payload_bytes()) {
                        foreign.remove(&key);
                    }
                }
                None => return "the change subscription closed".to_owned(),
            },
            () = &mut probe_timer, if !foreign.is_empty() => {
                for key in std::mem::take(&mut foreign) {
                    if let Err(why) = probe(shared, session, key).await {
                        return why;
                    }
                }
            }
            _ = ping.tick() => {
                if let Err(why) = check(shared, session).await {
                    return why;
                }
            }
            () = shared.lost.notified() => return "an operation lost the connection".to_owned(),
        }
    }
}

async fn check(shared: &Shared, session: &mut Session) -> Result<(), String> {
    let deadline = shared.opts.op_timeout.max(Duration::from_secs(1));
    let ping = redis::cmd("PING");
    match tokio::time::timeout(deadline, ping.query_async::<String>(&mut session.data)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) if !connection_lost(&e) => {}
        Ok(Err(e)) => return Err(format!("ping: {e}")),
        Err(_) => return Err(format!("no answer to a ping within {deadline:?}")),
    }
    match tokio::time::timeout(deadline, session.sink.ping::<redis::Value>()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("ping on the subscription: {e}")),
        Err(_) => Err(format!(
            "no answer to a ping on the subscription within {deadline:?}"
        )),
    }
}

/// Reads a key someone else changed and announces what it holds now.
async fn probe(shared: &Shared, session: &mut Session, key: String) -> Result<(), String> {
    let data = data_key(&shared.opts.table, &key);
    let mut invocation = scripts::PROBE.prepare_invoke();
    invocation
        .key(&data)
        .key(revision_key(&data))
        .key(REVISION_COUNTER);
    let read: Result<redis::Value, _> = invocation.invoke_async(&mut session.data).await;
    let change = match read {
        Ok(redis::Value::Array(items)) => match items.as_slice() {
            [revision] => redis::from_redis_value_ref::<u64>(revision)
                .ok()
                .map(|revision| Change::Delete { key, revision }),
            [value, revision, ttl] => {
                let value = redis::from_redis_value_ref::<Vec<u8>>(value).ok();
                let revision = redis::from_redis_value_ref::<u64>(revision).ok();
                let ttl = redis::from_redis_value_ref::<i64>(ttl).ok();
                value
                    .zip(revision)
                    .zip(ttl)
                    .map(|((value, revision), ttl)| Change::Put {
                        key,
                        entry: Entry {
                            value: Bytes::from(value),
                            expires_at: u64::try_from(ttl)
                                .ok()
                                .filter(|ms| *ms > 0)
                                .map(|ms| SystemTime::now() + Duration::from_millis(ms)),
                            revision,
                        },
                    })
            }
            _ => None,
        },
        Ok(_) => None,
        Err(e) if connection_lost(&e) => return Err(format!("reading a changed key: {e}")),
        Err(e) => {
            tracing::debug!(store = %shared.opts.section, error = %e, "cannot read a key changed by another writer");
            None
        }
    };
    match change {
        Some(change) => {
            let _ = shared.feed.send(change);
        }
        // Whatever the key holds is unknown: everything cached is suspect.
        None => {
            let _ = shared.feed.send(Change::Reset);
        }
    }
    Ok(())
}

/// Keyspace notifications are off by default in Redis; without them writes by Go services
/// reach the near-caches only when their entries expire or the node reconnects.
async fn report_keyspace_events(opts: &RedisOptions, data: &mut MultiplexedConnection) {
    let setting: Result<Vec<String>, _> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("notify-keyspace-events")
        .query_async(data)
        .await;
    let flags = match setting {
        Ok(pair) => pair.get(1).cloned().unwrap_or_default(),
        Err(e) => {
            tracing::info!(store = %opts.section, error = %e, "cannot read notify-keyspace-events; writes by other services are seen if it includes K$g");
            return;
        }
    };
    let all = flags.contains('A');
    if !(flags.contains('K') && (all || (flags.contains('$') && flags.contains('g')))) {
        tracing::warn!(
            store = %opts.section,
            notify_keyspace_events = %flags,
            "Redis sends no keyspace notifications for string writes and deletions (notify-keyspace-events lacks K$g): \
             changes made by oCIS services reach this node's near-cache only when the entry expires or the node reconnects"
        );
    }
}

/// Announces one channel message; returns its key.
fn apply(shared: &Shared, payload: &[u8]) -> Option<String> {
    let change = match ChangeMessage::decode(payload) {
        Some(ChangeMessage::Put {
            key,
            revision,
            ttl,
            value,
        }) => Change::Put {
            key,
            entry: Entry {
                value: Bytes::from(value),
                expires_at: ttl.map(|t| SystemTime::now() + t),
                revision,
            },
        },
        Some(ChangeMessage::Delete { key, revision }) => Change::Delete { key, revision },
        None => {
            tracing::debug!(store = %shared.opts.section, "ignoring a malformed change message");
            return None;
        }
    };
    let key = change.key().map(str::to_owned);
    let _ = shared.feed.send(change);
    key
}

async fn reconnect(shared: &Shared) -> Session {
    let mut pause = RETRY_FIRST;
    let mut reported = String::new();
    loop {
        tokio::time::sleep(pause).await;
        match Session::open(&shared.opts).await {
            Ok(session) => return session,
            Err(e) => {
                let message = e.to_string();
                if !e.is_retryable() && message != reported {
                    tracing::error!(store = %shared.opts.section, error = %message, "Redis refuses this node");
                    reported = message;
                } else {
                    tracing::debug!(store = %shared.opts.section, error = %message, "no Redis master yet");
                }
                pause = (pause * 2).min(RETRY_MAX);
            }
        }
    }
}
