//! Series read from the node's components when `/metrics` is scraped rather than counted on the
//! request path: NATS and Redis connection state and reconnects per client, near-cache sizes, the event
//! publisher's queue and counters, readiness and drain. Components register a probe once at
//! start-up; a scrape runs every probe, so a request never pays for these.
//!
//! Label values come from configuration-bound sets only: a fixed client name per NATS
//! or Redis connection, a bucket name per configured store.

use std::sync::{Arc, Mutex};

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use gatehouse_nats::ConnectionStats;

use crate::redis::RedisStats;

type Probe = Box<dyn Fn(&ScrapeMetrics) + Send + Sync>;

pub struct ScrapeMetrics {
    nats_connected: IntGaugeVec,
    nats_reconnects: IntCounterVec,
    redis_connected: IntGaugeVec,
    redis_reconnects: IntCounterVec,
    near_cache_entries: IntGaugeVec,
    events_queued: IntGauge,
    events_published: IntCounter,
    events_retried: IntCounter,
    events_dropped: IntCounter,
    events_duplicates: IntCounter,
    ready: IntGauge,
    draining: IntGauge,
    probes: Mutex<Vec<Probe>>,
}

/// What the event publisher reports at a scrape.
#[derive(Debug, Default)]
pub struct EventCounts {
    pub queued: usize,
    pub published: u64,
    pub retried: u64,
    pub dropped: u64,
    pub duplicates: u64,
}

/// Raises a counter to an external monotonic total.
fn sync(counter: &IntCounter, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}

impl ScrapeMetrics {
    pub(super) fn register(registry: &Registry) -> Self {
        const VALID: &str = "metric definitions are static and valid";
        let gauge_vec = |name: &str, help: &str, label: &str| {
            IntGaugeVec::new(Opts::new(name, help), &[label]).expect(VALID)
        };
        let counter = |name: &str, help: &str| IntCounter::new(name, help).expect(VALID);
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect(VALID);
        let m = ScrapeMetrics {
            nats_connected: gauge_vec(
                "gatehouse_nats_connected",
                "Whether the NATS client is connected (1) or not (0), by client",
                "client",
            ),
            nats_reconnects: IntCounterVec::new(
                Opts::new(
                    "gatehouse_nats_reconnects_total",
                    "Times the NATS client lost its server and connected again, by client",
                ),
                &["client"],
            )
            .expect(VALID),
            redis_connected: gauge_vec(
                "gatehouse_redis_connected",
                "Whether the store has a connection to the Redis master (1) or not (0), by client",
                "client",
            ),
            redis_reconnects: IntCounterVec::new(
                Opts::new(
                    "gatehouse_redis_reconnects_total",
                    "Times the store lost the Redis master and found it again, by client",
                ),
                &["client"],
            )
            .expect(VALID),
            near_cache_entries: gauge_vec(
                "gatehouse_near_cache_entries",
                "Keys held in the node's near-cache of a bucket",
                "bucket",
            ),
            events_queued: gauge(
                "gatehouse_events_queued",
                "Events waiting for the bus to acknowledge them",
            ),
            events_published: counter(
                "gatehouse_events_published_total",
                "Events the bus acknowledged",
            ),
            events_retried: counter(
                "gatehouse_events_retried_total",
                "Event publish attempts that failed and were repeated",
            ),
            events_dropped: counter(
                "gatehouse_events_dropped_total",
                "Events refused because the queue was full",
            ),
            events_duplicates: counter(
                "gatehouse_events_duplicates_total",
                "Re-sent events the bus recognised as already stored",
            ),
            ready: gauge(
                "gatehouse_ready",
                "Whether the node reports ready (1) or not (0)",
            ),
            draining: gauge(
                "gatehouse_draining",
                "Whether the node is draining (1) or not (0)",
            ),
            probes: Mutex::new(Vec::new()),
        };
        for collector in [
            Box::new(m.nats_connected.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.nats_reconnects.clone()),
            Box::new(m.redis_connected.clone()),
            Box::new(m.redis_reconnects.clone()),
            Box::new(m.near_cache_entries.clone()),
            Box::new(m.events_queued.clone()),
            Box::new(m.events_published.clone()),
            Box::new(m.events_retried.clone()),
            Box::new(m.events_dropped.clone()),
            Box::new(m.events_duplicates.clone()),
            Box::new(m.ready.clone()),
            Box::new(m.draining.clone()),
        ] {
            registry.register(collector).expect(VALID);
        }
        m
    }

    fn add(&self, probe: impl Fn(&ScrapeMetrics) + Send + Sync + 'static) {
        // A first reading now, so the series exist before the first scrape.
        probe(self);
        self.probes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(probe));
    }

    /// A NATS connection, named `client` (`state`, `userinfo`, `signing-keys`, `registry`,
    /// `events`).
    pub fn nats(
        &self,
        client: &'static str,
        read: impl Fn() -> ConnectionStats + Send + Sync + 'static,
    ) {
        self.add(move |m| {
            let stats = read();
            m.nats_connected
                .with_label_values(&[client])
                .set(i64::from(stats.connected));
            sync(
                &m.nats_reconnects.with_label_values(&[client]),
                stats.reconnects(),
            );
        });
    }

    /// The Redis master connection of the store `client`.
    pub fn redis(
        &self,
        client: &'static str,
        read: impl Fn() -> RedisStats + Send + Sync + 'static,
    ) {
        self.add(move |m| {
            let stats = read();
            m.redis_connected
                .with_label_values(&[client])
                .set(i64::from(stats.connected));
            sync(
                &m.redis_reconnects.with_label_values(&[client]),
                stats.reconnects,
            );
        });
    }

    /// The near-cache of `bucket`; `entries` reads its size.
    pub fn near_cache(&self, bucket: String, entries: impl Fn() -> usize + Send + Sync + 'static) {
        self.add(move |m| {
            m.near_cache_entries
                .with_label_values(&[bucket.as_str()])
                .set(i64::try_from(entries()).unwrap_or(i64::MAX));
        });
    }

    /// The event publisher.
    pub fn events(&self, read: impl Fn() -> EventCounts + Send + Sync + 'static) {
        self.add(move |m| {
            let c = read();
            m.events_queued
                .set(i64::try_from(c.queued).unwrap_or(i64::MAX));
            sync(&m.events_published, c.published);
            sync(&m.events_retried, c.retried);
            sync(&m.events_dropped, c.dropped);
            sync(&m.events_duplicates, c.duplicates);
        });
    }

    /// Readiness and drain.
    pub fn health(&self, health: Arc<crate::health::Health>) {
        self.add(move |m| {
            m.ready.set(i64::from(health.is_ready()));
            m.draining.set(i64::from(health.is_draining()));
        });
    }

    /// Runs every probe (before the registry is encoded).
    pub(super) fn sample(&self) {
        for probe in self.probes.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            probe(self);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::telemetry::Metrics;
    use crate::telemetry::metrics::tests::value_of;

    #[test]
    fn probes_are_read_at_every_scrape() {
        let m = Metrics::new("v");
        let connects = Arc::new(AtomicU64::new(1));
        let c = connects.clone();
        m.scrape().nats("state", move || ConnectionStats {
            connected: c.load(Ordering::SeqCst) % 2 == 1,
            connects: c.load(Ordering::SeqCst),
        });
        m.scrape().near_cache("gatehouse-state".into(), || 42);
        m.scrape().events(|| EventCounts {
            queued: 3,
            published: 10,
            retried: 2,
            dropped: 1,
            duplicates: 0,
        });
        let health = crate::health::Health::new();
        m.scrape().health(health.clone());
        assert_eq!(
            value_of(&m.encode(), "gatehouse_ready"),
            Some(0.0),
            "not ready before the server serves"
        );
        health.start_serving();

        let text = m.encode();
        for (series, want) in [
            (r#"gatehouse_nats_connected{client="state"}"#, 1.0),
            (r#"gatehouse_nats_reconnects_total{client="state"}"#, 0.0),
            (
                r#"gatehouse_near_cache_entries{bucket="gatehouse-state"}"#,
                42.0,
            ),
            ("gatehouse_events_queued", 3.0),
            ("gatehouse_events_published_total", 10.0),
            ("gatehouse_events_retried_total", 2.0),
            ("gatehouse_events_dropped_total", 1.0),
            ("gatehouse_ready", 1.0),
            ("gatehouse_draining", 0.0),
        ] {
            assert_eq!(value_of(&text, series), Some(want), "{series}\n{text}");
        }

        connects.store(4, Ordering::SeqCst);
        health.start_draining();
        let text = m.encode();
        assert_eq!(
            value_of(&text, r#"gatehouse_nats_reconnects_total{client="state"}"#),
            Some(3.0)
        );
        assert_eq!(
            value_of(&text, r#"gatehouse_nats_connected{client="state"}"#),
            Some(0.0)
        );
        assert_eq!(value_of(&text, "gatehouse_ready"), Some(0.0));
        assert_eq!(value_of(&text, "gatehouse_draining"), Some(1.0));
    }
}
