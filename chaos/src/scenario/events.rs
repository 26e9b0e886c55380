//! Whether the events raised during a NATS fault all reached the stream once: the nodes queue
//! what they cannot publish and re-send it with its event id as `Nats-Msg-Id`, so after NATS
//! returns every `UserSignedIn` of a successful new login must be there, none twice.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use gatehouse_tests::client::get_with;
use gatehouse_tests::nats::NatsCluster;
use gatehouse_tests::node::GatehouseNode;

/// What the `main-queue` stream holds once every node's queue is empty.
#[derive(Debug, Clone, Copy, Default)]
pub struct EventCount {
    /// `UserSignedIn` messages in the stream.
    pub signed_in: usize,
    /// Messages whose event id was already seen.
    pub duplicates: usize,
    /// Seconds from the call until every node had published what it queued.
    pub drained_after: f64,
}

/// Waits (up to `limit`) until no node has an event left to publish, then reads the stream.
pub async fn count_after_drain(
    nodes: &[GatehouseNode],
    nats: &NatsCluster,
    limit: Duration,
) -> Result<EventCount, String> {
    let started = Instant::now();
    loop {
        let mut queued = 0.0;
        for node in nodes {
            let metrics = get_with(&node.debug_url("/metrics"), &[]).await;
            queued += gauge(
                &String::from_utf8_lossy(&metrics.body),
                "gatehouse_events_queued",
            )
            .ok_or("a node's /metrics has no gatehouse_events_queued")?;
        }
        if queued == 0.0 {
            break;
        }
        if started.elapsed() > limit {
            return Err(format!(
                "{queued} events still queued {limit:?} after the load ended"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drained_after = started.elapsed().as_secs_f64();
    let client = async_nats::connect(nats.client_urls())
        .await
        .map_err(|e| format!("connecting to NATS to read the events: {e}"))?;
    let js = async_nats::jetstream::new(client);
    let name = js
        .stream_by_subject("main-queue")
        .await
        .map_err(|e| format!("no stream captures main-queue: {e}"))?;
    let mut stream = js
        .get_stream(name)
        .await
        .map_err(|e| format!("opening the events stream: {e}"))?;
    let last = stream
        .info()
        .await
        .map_err(|e| format!("events stream info: {e}"))?
        .state
        .last_sequence;
    let mut seen = HashSet::new();
    let mut count = EventCount {
        drained_after,
        ..EventCount::default()
    };
    for seq in 1..=last {
        let Ok(msg) = stream.get_raw_message(seq).await else {
            continue;
        };
        let envelope: serde_json::Value = serde_json::from_slice(&msg.payload)
            .map_err(|e| format!("event {seq} is not JSON: {e}"))?;
        let meta = &envelope["Metadata"];
        if !seen.insert(meta["eventid"].as_str().unwrap_or_default().to_owned()) {
            count.duplicates += 1;
        }
        if meta["eventtype"] == "events.UserSignedIn" {
            count.signed_in += 1;
        }
    }
    Ok(count)
}

fn gauge(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}
