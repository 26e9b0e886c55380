//! The node's Prometheus metrics.
//!
//! The request metrics keep the oCIS names and labels (`ocis_proxy_*`, spec §7.5) so existing
//! dashboards and alerts keep working. Two things differ on purpose:
//!
//! - The `method` label is bounded. oCIS uses the raw request method, so a client sending made-up
//!   methods creates unbounded series. Here the nine RFC 9110/5789 methods and the WebDAV methods
//!   (`PROPFIND PROPPATCH MKCOL COPY MOVE LOCK UNLOCK REPORT SEARCH`) keep their name and every other
//!   method is counted as `OTHER`. Methods are case-sensitive, so `get` is `OTHER` too.
//! - The registry is owned by [`Metrics`] instead of being a process-global default, so tests (and
//!   several nodes in one test process) do not share counters.
//!
//! State-store metrics (`gatehouse_store_*`) are fed through [`StoreObserver`], identity-provider
//! calls (`gatehouse_idp_*`) through [`IdpObserver`], authentication results
//! (`gatehouse_authentications_total`) by the authentication layer, and on Linux the standard
//! `process_*` collector (RSS, open fds, CPU seconds) is registered as well.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::Method;
use prometheus::{
    Encoder as _, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use super::scrape::ScrapeMetrics;
use super::traces::{DropReason, ExportObserver};
use super::{Outcome, StoreObserver};
use crate::authn::oidc::IdpObserver;

/// The value of the `method` label a request method is counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodLabel {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Connect,
    Options,
    Trace,
    Patch,
    Propfind,
    Proppatch,
    Mkcol,
    Copy,
    Move,
    Lock,
    Unlock,
    Report,
    Search,
    Other,
}

impl MethodLabel {
    pub const ALL: [MethodLabel; 19] = [
        MethodLabel::Get,
        MethodLabel::Head,
        MethodLabel::Post,
        MethodLabel::Put,
        MethodLabel::Delete,
        MethodLabel::Connect,
        MethodLabel::Options,
        MethodLabel::Trace,
        MethodLabel::Patch,
        MethodLabel::Propfind,
        MethodLabel::Proppatch,
        MethodLabel::Mkcol,
        MethodLabel::Copy,
        MethodLabel::Move,
        MethodLabel::Lock,
        MethodLabel::Unlock,
        MethodLabel::Report,
        MethodLabel::Search,
        MethodLabel::Other,
    ];

    pub fn of(method: &Method) -> Self {
        match method.as_str() {
            "GET" => MethodLabel::Get,
            "HEAD" => MethodLabel::Head,
            "POST" => MethodLabel::Post,
            "PUT" => MethodLabel::Put,
            "DELETE" => MethodLabel::Delete,
            "CONNECT" => MethodLabel::Connect,
            "OPTIONS" => MethodLabel::Options,
            "TRACE" => MethodLabel::Trace,
            "PATCH" => MethodLabel::Patch,
            "PROPFIND" => MethodLabel::Propfind,
            "PROPPATCH" => MethodLabel::Proppatch,
            "MKCOL" => MethodLabel::Mkcol,
            "COPY" => MethodLabel::Copy,
            "MOVE" => MethodLabel::Move,
            "LOCK" => MethodLabel::Lock,
            "UNLOCK" => MethodLabel::Unlock,
            "REPORT" => MethodLabel::Report,
            "SEARCH" => MethodLabel::Search,
            _ => MethodLabel::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MethodLabel::Get => "GET",
            MethodLabel::Head => "HEAD",
            MethodLabel::Post => "POST",
            MethodLabel::Put => "PUT",
            MethodLabel::Delete => "DELETE",
            MethodLabel::Connect => "CONNECT",
            MethodLabel::Options => "OPTIONS",
            MethodLabel::Trace => "TRACE",
            MethodLabel::Patch => "PATCH",
            MethodLabel::Propfind => "PROPFIND",
            MethodLabel::Proppatch => "PROPPATCH",
            MethodLabel::Mkcol => "MKCOL",
            MethodLabel::Copy => "COPY",
            MethodLabel::Move => "MOVE",
            MethodLabel::Lock => "LOCK",
            MethodLabel::Unlock => "UNLOCK",
            MethodLabel::Report => "REPORT",
            MethodLabel::Search => "SEARCH",
            MethodLabel::Other => "OTHER",
        }
    }
}

/// The request series of one `method` label, resolved once so the request path does not hash
/// label values.
#[derive(Clone)]
pub struct MethodMetrics {
    requests: IntCounter,
    errors: IntCounter,
    duration: Histogram,
}

impl MethodMetrics {
    /// Counts a request; called before the request is handled.
    pub fn started(&self) {
        self.requests.inc();
    }

    /// Records the end of a request: its duration, and an error when `status` is 5xx.
    pub fn finished(&self, status: u16, elapsed: Duration) {
        self.duration.observe(elapsed.as_secs_f64());
        if status >= 500 {
            self.errors.inc();
        }
    }
}

/// Bucket bounds (seconds) for store operations: a near-cache hit takes microseconds, a NATS round
/// trip about a millisecond, and anything past the op deadline is a problem.
const STORE_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    errors: IntCounterVec,
    duration: HistogramVec,
    per_method: [OnceLock<MethodMetrics>; MethodLabel::ALL.len()],
    store_ops: IntCounterVec,
    store_duration: HistogramVec,
    idp_requests: IntCounterVec,
    idp_duration: HistogramVec,
    /// `gatehouse_authentications_total`, one counter per [`AuthResult`], resolved up front.
    authentications: [IntCounter; AuthResult::ALL.len()],
    /// `gatehouse_auth_blocks_total` by key kind.
    blocks: IntCounterVec,
    /// `gatehouse_rate_limited_total` by rule.
    rate_limited: IntCounterVec,
    /// `gatehouse_signed_url_key_derivations_total`: PBKDF2 runs of signed-URL checks (a cache
    /// hit runs none).
    pub signed_url_derivations: IntCounter,
    node_info: IntGaugeVec,
    trace: TraceMetrics,
    scrape: ScrapeMetrics,
}

/// How the authentication step ended for a request on a protected route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthResult {
    Accepted,
    Refused,
    /// The identity provider could not be asked (503).
    IdpUnavailable,
    /// Nothing accepted the request, and it passed on anonymously (a public path).
    Anonymous,
    /// Refused unchecked (429): its address, user or share is blocked after too many failures.
    Blocked,
}

impl AuthResult {
    pub const ALL: [AuthResult; 5] = [
        AuthResult::Accepted,
        AuthResult::Refused,
        AuthResult::IdpUnavailable,
        AuthResult::Anonymous,
        AuthResult::Blocked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuthResult::Accepted => "accepted",
            AuthResult::Refused => "refused",
            AuthResult::IdpUnavailable => "idp_unavailable",
            AuthResult::Anonymous => "anonymous",
            AuthResult::Blocked => "blocked",
        }
    }
}

/// What happens to finished spans (`gatehouse_trace_*`), fed by the export task. Clones share
/// the same series.
#[derive(Clone)]
pub struct TraceMetrics {
    /// `gatehouse_trace_spans_exported_total`: spans the collector accepted.
    pub spans_exported: IntCounter,
    /// `gatehouse_trace_spans_dropped_total{reason="queue_full"}`.
    pub spans_dropped_queue_full: IntCounter,
    /// `gatehouse_trace_spans_dropped_total{reason="export_failed"}`.
    pub spans_dropped_export_failed: IntCounter,
    /// `gatehouse_trace_export_failures_total`: export calls that failed or timed out.
    pub export_failures: IntCounter,
    /// `gatehouse_trace_queue_spans`: finished spans waiting for export.
    pub queue_depth: IntGauge,
}

impl TraceMetrics {
    fn register(registry: &Registry) -> Self {
        const VALID: &str = "metric definitions are static and valid";
        let exported = IntCounter::new(
            "gatehouse_trace_spans_exported_total",
            "Finished spans the trace collector accepted",
        )
        .expect(VALID);
        let dropped = IntCounterVec::new(
            Opts::new(
                "gatehouse_trace_spans_dropped_total",
                "Finished spans that never reached the collector, by reason (queue_full, export_failed)",
            ),
            &["reason"],
        )
        .expect(VALID);
        let failures = IntCounter::new(
            "gatehouse_trace_export_failures_total",
            "Export calls to the trace collector that failed or timed out",
        )
        .expect(VALID);
        let queue = IntGauge::new(
            "gatehouse_trace_queue_spans",
            "Finished spans waiting to be exported",
        )
        .expect(VALID);
        for collector in [
            Box::new(exported.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(dropped.clone()),
            Box::new(failures.clone()),
            Box::new(queue.clone()),
        ] {
            registry.register(collector).expect(VALID);
        }
        TraceMetrics {
            spans_exported: exported,
            spans_dropped_queue_full: dropped.with_label_values(&["queue_full"]),
            spans_dropped_export_failed: dropped.with_label_values(&["export_failed"]),
            export_failures: failures,
            queue_depth: queue,
        }
    }
}

impl ExportObserver for TraceMetrics {
    fn exported(&self, spans: usize) {
        self.spans_exported.inc_by(spans as u64);
    }

    fn dropped(&self, reason: DropReason, spans: usize) {
        match reason {
            DropReason::QueueFull => &self.spans_dropped_queue_full,
            DropReason::ExportFailed => &self.spans_dropped_export_failed,
        }
        .inc_by(spans as u64);
    }

    fn export_failed(&self) {
        self.export_failures.inc();
    }

    fn queued(&self, spans: usize) {
        self.queue_depth
            .set(i64::try_from(spans).unwrap_or(i64::MAX));
    }
}

impl Metrics {
    /// `gatehouse_node_info{node_id, version}` = 1: joins a node's series to its logs and traces.
    pub fn node_started(&self, node_id: &str, version: &str) {
        self.node_info.with_label_values(&[node_id, version]).set(1);
    }

    pub fn trace(&self) -> &TraceMetrics {
        &self.trace
    }

    /// Where components register what is read at scrape time.
    pub fn scrape(&self) -> &ScrapeMetrics {
        &self.scrape
    }

    pub fn new(version: &str) -> Arc<Metrics> {
        // The definitions below are constants; registering them can only fail through a
        // programming error (a duplicate or malformed name), which the unit tests catch.
        const VALID: &str = "metric definitions are static and valid";
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "ocis_proxy_requests_total",
                "How many requests were processed",
            ),
            &["method"],
        )
        .expect(VALID);
        let errors = IntCounterVec::new(
            Opts::new(
                "ocis_proxy_errors_total",
                "How many requests were answered with a 5xx status",
            ),
            &["method"],
        )
        .expect(VALID);
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "ocis_proxy_duration_seconds",
                "How long requests took until the response head was sent",
            ),
            &["method"],
        )
        .expect(VALID);
        let build_info = IntGaugeVec::new(
            Opts::new("ocis_proxy_build_info", "Build information of the proxy"),
            &["version"],
        )
        .expect(VALID);
        let store_ops = IntCounterVec::new(
            Opts::new(
                "gatehouse_store_operations_total",
                "State-store operations (through the near-cache) by bucket, operation and outcome",
            ),
            &["bucket", "op", "outcome"],
        )
        .expect(VALID);
        let store_duration = HistogramVec::new(
            HistogramOpts::new(
                "gatehouse_store_duration_seconds",
                "How long state-store operations took",
            )
            .buckets(STORE_BUCKETS.to_vec()),
            &["bucket", "op"],
        )
        .expect(VALID);

        let idp_requests = IntCounterVec::new(
            Opts::new(
                "gatehouse_idp_requests_total",
                "Requests to the identity provider by endpoint and outcome (ok, rejected, unavailable, backoff: not sent while backing off)",
            ),
            &["endpoint", "outcome"],
        )
        .expect(VALID);
        let idp_duration = HistogramVec::new(
            HistogramOpts::new(
                "gatehouse_idp_request_duration_seconds",
                "How long requests to the identity provider took",
            ),
            &["endpoint"],
        )
        .expect(VALID);
        let auth = IntCounterVec::new(
            Opts::new(
                "gatehouse_authentications_total",
                "Requests on protected routes by authentication result",
            ),
            &["result"],
        )
        .expect(VALID);
        let authentications = AuthResult::ALL.map(|r| auth.with_label_values(&[r.as_str()]));
        let blocks = IntCounterVec::new(
            Opts::new(
                "gatehouse_auth_blocks_total",
                "Keys blocked after too many failed authentications, by kind (address, user, share)",
            ),
            &["kind"],
        )
        .expect(VALID);
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "gatehouse_rate_limited_total",
                "Requests refused with 429 by a rate_limits rule, by rule",
            ),
            &["rule"],
        )
        .expect(VALID);
        let signed_url_derivations = IntCounter::new(
            "gatehouse_signed_url_key_derivations_total",
            "PBKDF2 key derivations run to check signed URLs (verified URLs are remembered)",
        )
        .expect(VALID);

        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(idp_requests.clone()),
            Box::new(idp_duration.clone()),
            Box::new(auth),
            Box::new(blocks.clone()),
            Box::new(rate_limited.clone()),
            Box::new(signed_url_derivations.clone()),
            Box::new(errors.clone()),
            Box::new(duration.clone()),
            Box::new(build_info.clone()),
            Box::new(store_ops.clone()),
            Box::new(store_duration.clone()),
        ] {
            registry.register(collector).expect(VALID);
        }
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect(VALID);

        build_info.with_label_values(&[version]).set(1);
        // The identity-provider series exist from the start, so that dashboards and alerts see
        // zeros rather than nothing on a node that has not needed its provider yet.
        for endpoint in ["discovery", "jwks", "userinfo"] {
            idp_requests.with_label_values(&[endpoint, "ok"]);
            idp_duration.with_label_values(&[endpoint]);
        }
        let node_info = IntGaugeVec::new(
            Opts::new(
                "gatehouse_node_info",
                "This node's id (as in its log lines and traces) and version",
            ),
            &["node_id", "version"],
        )
        .expect(VALID);
        registry.register(Box::new(node_info.clone())).expect(VALID);
        let trace = TraceMetrics::register(&registry);
        let scrape = ScrapeMetrics::register(&registry);

        let metrics = Metrics {
            registry,
            requests,
            errors,
            duration,
            per_method: Default::default(),
            store_ops,
            store_duration,
            idp_requests,
            idp_duration,
            authentications,
            blocks,
            rate_limited,
            signed_url_derivations,
            node_info,
            trace,
            scrape,
        };
        // oCIS exports the GET series at 0 before the first request.
        metrics.method(&Method::GET);
        Arc::new(metrics)
    }

    /// The series of `method` (after collapsing unknown methods to `OTHER`). A series appears in
    /// the output the first time it is asked for.
    pub fn method(&self, method: &Method) -> &MethodMetrics {
        self.series(MethodLabel::of(method))
    }

    /// The series of one `method` label value.
    pub fn series(&self, label: MethodLabel) -> &MethodMetrics {
        self.per_method[label as usize].get_or_init(|| {
            let value = [label.as_str()];
            MethodMetrics {
                requests: self.requests.with_label_values(&value),
                errors: self.errors.with_label_values(&value),
                duration: self.duration.with_label_values(&value),
            }
        })
    }

    /// For components that add their own collectors (they share this node's `/metrics`).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Every metric in the Prometheus text exposition format.
    pub fn encode(&self) -> String {
        self.scrape.sample();
        let mut out = Vec::new();
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %err, "encoding metrics failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Metrics {
    pub fn authentication(&self, result: AuthResult) {
        self.authentications[result as usize].inc();
    }

    /// A key of `kind` (`address`, `user`, `share`) was blocked.
    pub fn auth_block(&self, kind: &'static str) {
        self.blocks.with_label_values(&[kind]).inc();
    }

    /// The counter of refusals by `rule`, resolved once per rule by the caller.
    pub fn rate_limited(&self, rule: &str) -> IntCounter {
        self.rate_limited.with_label_values(&[rule])
    }
}

impl IdpObserver for Metrics {
    fn idp_request(&self, endpoint: &str, outcome: &'static str, elapsed: Option<Duration>) {
        self.idp_requests
            .with_label_values(&[endpoint, outcome])
            .inc();
        if let Some(elapsed) = elapsed {
            self.idp_duration
                .with_label_values(&[endpoint])
                .observe(elapsed.as_secs_f64());
        }
    }
}

impl StoreObserver for Metrics {
    /// `store` is the near-cache's name: the bucket.
    fn observe(&self, store: &'static str, op: &'static str, outcome: Outcome, elapsed: Duration) {
        self.store_ops
            .with_label_values(&[store, op, outcome.as_str()])
            .inc();
        self.store_duration
            .with_label_values(&[store, op])
            .observe(elapsed.as_secs_f64());
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The value of `series` (name with labels, exactly as exported) in a text exposition.
    pub(crate) fn value_of(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn exports_ocis_names_with_get_preinitialised_and_build_info() {
        let m = Metrics::new("1.2.3");
        let text = m.encode();
        assert_eq!(
            value_of(&text, r#"ocis_proxy_requests_total{method="GET"}"#),
            Some(0.0)
        );
        assert_eq!(
            value_of(&text, r#"ocis_proxy_errors_total{method="GET"}"#),
            Some(0.0)
        );
        assert_eq!(
            value_of(&text, r#"ocis_proxy_duration_seconds_count{method="GET"}"#),
            Some(0.0)
        );
        assert_eq!(
            value_of(&text, r#"ocis_proxy_build_info{version="1.2.3"}"#),
            Some(1.0)
        );
        assert!(text.contains("# TYPE ocis_proxy_duration_seconds histogram"));
        // Default Prometheus buckets, as oCIS.
        assert!(text.contains(r#"ocis_proxy_duration_seconds_bucket{method="GET",le="0.005"}"#));
        assert!(text.contains(r#"ocis_proxy_duration_seconds_bucket{method="GET",le="10"}"#));
        assert!(
            !text.contains(r#"method="POST""#),
            "only GET is pre-initialised"
        );
    }

    #[test]
    fn counts_requests_errors_and_durations_per_method() {
        let m = Metrics::new("v");
        let put = m.method(&Method::PUT);
        put.started();
        put.finished(201, Duration::from_millis(3));
        put.started();
        put.finished(502, Duration::from_millis(20));
        let text = m.encode();
        assert_eq!(
            value_of(&text, r#"ocis_proxy_requests_total{method="PUT"}"#),
            Some(2.0)
        );
        assert_eq!(
            value_of(&text, r#"ocis_proxy_errors_total{method="PUT"}"#),
            Some(1.0)
        );
        assert_eq!(
            value_of(&text, r#"ocis_proxy_duration_seconds_count{method="PUT"}"#),
            Some(2.0)
        );
        assert_eq!(
            value_of(
                &text,
                r#"ocis_proxy_duration_seconds_bucket{method="PUT",le="0.005"}"#
            ),
            Some(1.0)
        );
    }

    #[test]
    fn unknown_methods_collapse_into_one_label() {
        let m = Metrics::new("v");
        for raw in ["FOO", "BAR", "get", "X-ANYTHING"] {
            m.method(&Method::from_bytes(raw.as_bytes()).unwrap())
                .started();
        }
        m.method(&Method::from_bytes(b"PROPFIND").unwrap())
            .started();
        let text = m.encode();
        assert_eq!(
            value_of(&text, r#"ocis_proxy_requests_total{method="OTHER"}"#),
            Some(4.0)
        );
        assert_eq!(
            value_of(&text, r#"ocis_proxy_requests_total{method="PROPFIND"}"#),
            Some(1.0)
        );
        let series = text
            .lines()
            .filter(|l| l.starts_with("ocis_proxy_requests_total{"))
            .count();
        assert_eq!(series, 3, "GET, OTHER, PROPFIND:\n{text}");
    }

    #[test]
    fn every_label_round_trips() {
        for label in MethodLabel::ALL {
            let method = Method::from_bytes(label.as_str().as_bytes()).unwrap();
            assert_eq!(MethodLabel::of(&method), label);
            assert_eq!(MethodLabel::ALL[label as usize], label);
        }
    }

    #[test]
    fn store_observer_records_outcomes_and_durations() {
        let m = Metrics::new("v");
        m.observe(
            "nats-js-kv",
            "get",
            Outcome::LocalHit,
            Duration::from_micros(50),
        );
        m.observe(
            "nats-js-kv",
            "get",
            Outcome::RemoteHit,
            Duration::from_micros(900),
        );
        m.observe("nats-js-kv", "get", Outcome::Miss, Duration::from_millis(1));
        m.observe(
            "nats-js-kv",
            "put",
            Outcome::Error,
            Duration::from_millis(60),
        );
        m.observe(
            "nats-js-kv",
            "create",
            Outcome::Conflict,
            Duration::from_millis(2),
        );
        let text = m.encode();
        for (outcome, op) in [
            ("local_hit", "get"),
            ("remote_hit", "get"),
            ("miss", "get"),
            ("error", "put"),
            ("conflict", "create"),
        ] {
            let series = format!(
                r#"gatehouse_store_operations_total{{bucket="nats-js-kv",op="{op}",outcome="{outcome}"}}"#
            );
            assert_eq!(value_of(&text, &series), Some(1.0), "{series}\n{text}");
        }
        assert_eq!(
            value_of(
                &text,
                r#"gatehouse_store_duration_seconds_bucket{bucket="nats-js-kv",op="get",le="0.0001"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            value_of(
                &text,
                r#"gatehouse_store_duration_seconds_count{bucket="nats-js-kv",op="get"}"#
            ),
            Some(3.0)
        );
    }

    #[test]
    fn span_export_and_node_info_series() {
        let m = Metrics::new("v");
        m.node_started("node-7", "v");
        let t = m.trace();
        t.exported(5);
        t.dropped(DropReason::QueueFull, 2);
        t.dropped(DropReason::ExportFailed, 3);
        t.export_failed();
        t.queued(9);
        let text = m.encode();
        for (series, want) in [
            ("gatehouse_trace_spans_exported_total", 5.0),
            (
                r#"gatehouse_trace_spans_dropped_total{reason="queue_full"}"#,
                2.0,
            ),
            (
                r#"gatehouse_trace_spans_dropped_total{reason="export_failed"}"#,
                3.0,
            ),
            ("gatehouse_trace_export_failures_total", 1.0),
            ("gatehouse_trace_queue_spans", 9.0),
            (r#"gatehouse_node_info{node_id="node-7",version="v"}"#, 1.0),
        ] {
            assert_eq!(value_of(&text, series), Some(want), "{series}\n{text}");
        }
        let fresh = Metrics::new("v").encode();
        assert_eq!(
            value_of(
                &fresh,
                r#"gatehouse_trace_spans_dropped_total{reason="export_failed"}"#
            ),
            Some(0.0),
            "both reasons exist from the start"
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn process_metrics_are_exported() {
        let text = Metrics::new("v").encode();
        let rss = value_of(&text, "process_resident_memory_bytes").expect("rss exported");
        assert!(rss > 0.0);
        assert!(value_of(&text, "process_open_fds").is_some_and(|v| v > 0.0));
    }
}
