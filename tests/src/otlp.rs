//! A real OTLP trace receiver, because no Jaeger or OpenTelemetry collector can run here: an
//! OTLP/gRPC server (tonic, the generated `TraceService`) and an OTLP/HTTP server (`POST
//! /v1/traces`, protobuf) on loopback, recording every span the nodes export so that tests can
//! assert on whole traces. It can refuse or delay answers, to play a collector that is down or
//! slow, and can count instead of record, for benchmarks.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message as _;
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// How the receiver answers export calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Behaviour {
    /// Record and answer success.
    #[default]
    Accept,
    /// Answer "unavailable" (gRPC) / 503 (HTTP); nothing is recorded.
    Reject,
    /// Answer only after this long, then accept.
    Delay(Duration),
}

/// The protocol a span arrived by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    Http,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Unspecified,
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    Bool(bool),
    Double(f64),
    Array(Vec<AttrValue>),
    Other,
}

impl AttrValue {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            AttrValue::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            AttrValue::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            AttrValue::Bool(b) => Some(*b),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum SpanStatus {
    Unset,
    Ok,
    Error(String),
}

#[derive(Debug, Clone)]
pub struct RecordedLink {
    pub trace_id: String,
    pub span_id: String,
    pub attributes: BTreeMap<String, AttrValue>,
}

/// One exported span with the resource it came with.
#[derive(Debug, Clone)]
pub struct RecordedSpan {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub name: String,
    pub kind: Kind,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub attributes: BTreeMap<String, AttrValue>,
    pub status: SpanStatus,
    pub links: Vec<RecordedLink>,
    pub events: Vec<(String, BTreeMap<String, AttrValue>)>,
    pub resource: BTreeMap<String, AttrValue>,
    pub scope: String,
    pub protocol: Protocol,
}

impl RecordedSpan {
    pub fn attr(&self, key: &str) -> Option<&AttrValue> {
        self.attributes.get(key)
    }

    pub fn attr_str(&self, key: &str) -> Option<&str> {
        self.attr(key).and_then(AttrValue::as_str)
    }

    pub fn attr_i64(&self, key: &str) -> Option<i64> {
        self.attr(key).and_then(AttrValue::as_i64)
    }

    pub fn resource_str(&self, key: &str) -> Option<&str> {
        self.resource.get(key).and_then(AttrValue::as_str)
    }

    /// The `service.instance.id` of the node that exported it.
    pub fn node(&self) -> &str {
        self.resource_str("service.instance.id").unwrap_or("")
    }

    pub fn duration(&self) -> Duration {
        Duration::from_nanos(self.end_unix_nanos.saturating_sub(self.start_unix_nanos))
    }

    pub fn is_error(&self) -> bool {
        matches!(self.status, SpanStatus::Error(_))
    }
}

#[derive(Default)]
struct Shared {
    spans: Mutex<Vec<RecordedSpan>>,
    arrived: Notify,
    behaviour: Mutex<Behaviour>,
    accepted: AtomicUsize,
    rejected: AtomicUsize,
    /// Headers (HTTP) or metadata (gRPC) of every accepted export call.
    headers: Mutex<Vec<http::HeaderMap>>,
    /// Count spans without keeping them (benchmarks).
    count_only: AtomicBool,
    counted: AtomicU64,
}

impl Shared {
    fn behaviour(&self) -> Behaviour {
        *self.behaviour.lock().unwrap()
    }

    /// Applies the behaviour; `true` when the request is to be accepted.
    async fn admit(&self) -> bool {
        match self.behaviour() {
            Behaviour::Accept => true,
            Behaviour::Reject => {
                self.rejected.fetch_add(1, Ordering::SeqCst);
                false
            }
            Behaviour::Delay(d) => {
                tokio::time::sleep(d).await;
                true
            }
        }
    }

    fn record(
        &self,
        request: ExportTraceServiceRequest,
        protocol: Protocol,
        headers: http::HeaderMap,
    ) {
        self.accepted.fetch_add(1, Ordering::SeqCst);
        if !self.count_only.load(Ordering::Relaxed) {
            self.headers.lock().unwrap().push(headers);
        }
        let mut out = Vec::new();
        for rs in request.resource_spans {
            let resource = rs
                .resource
                .map(|r| attributes(r.attributes))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                let scope = ss.scope.map(|s| s.name).unwrap_or_default();
                for span in ss.spans {
                    if self.count_only.load(Ordering::Relaxed) {
                        self.counted.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    out.push(convert(span, &resource, &scope, protocol));
                }
            }
        }
        self.counted.fetch_add(out.len() as u64, Ordering::Relaxed);
        self.spans.lock().unwrap().extend(out);
        self.arrived.notify_waiters();
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn value(v: Option<AnyValue>) -> AttrValue {
    match v.and_then(|v| v.value) {
        Some(any_value::Value::StringValue(s)) => AttrValue::Str(s),
        Some(any_value::Value::IntValue(i)) => AttrValue::Int(i),
        Some(any_value::Value::BoolValue(b)) => AttrValue::Bool(b),
        Some(any_value::Value::DoubleValue(d)) => AttrValue::Double(d),
        Some(any_value::Value::ArrayValue(a)) => {
            AttrValue::Array(a.values.into_iter().map(|v| value(Some(v))).collect())
        }
        _ => AttrValue::Other,
    }
}

fn attributes(kvs: Vec<KeyValue>) -> BTreeMap<String, AttrValue> {
    kvs.into_iter()
        .map(|kv| (kv.key, value(kv.value)))
        .collect()
}

fn convert(
    span: opentelemetry_proto::tonic::trace::v1::Span,
    resource: &BTreeMap<String, AttrValue>,
    scope: &str,
    protocol: Protocol,
) -> RecordedSpan {
    let kind = match span.kind {
        1 => Kind::Internal,
        2 => Kind::Server,
        3 => Kind::Client,
        4 => Kind::Producer,
        5 => Kind::Consumer,
        _ => Kind::Unspecified,
    };
    let status = match span.status {
        Some(s) if s.code == 2 => SpanStatus::Error(s.message),
        Some(s) if s.code == 1 => SpanStatus::Ok,
        _ => SpanStatus::Unset,
    };
    RecordedSpan {
        trace_id: hex(&span.trace_id),
        span_id: hex(&span.span_id),
        parent_span_id: (!span.parent_span_id.is_empty()).then(|| hex(&span.parent_span_id)),
        name: span.name,
        kind,
        start_unix_nanos: span.start_time_unix_nano,
        end_unix_nanos: span.end_time_unix_nano,
        attributes: attributes(span.attributes),
        status,
        links: span
            .links
            .into_iter()
            .map(|l| RecordedLink {
                trace_id: hex(&l.trace_id),
                span_id: hex(&l.span_id),
                attributes: attributes(l.attributes),
            })
            .collect(),
        events: span
            .events
            .into_iter()
            .map(|e| (e.name, attributes(e.attributes)))
            .collect(),
        resource: resource.clone(),
        scope: scope.to_owned(),
        protocol,
    }
}

struct Grpc(Arc<Shared>);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        if !self.0.admit().await {
            return Err(tonic::Status::unavailable("collector told to refuse"));
        }
        let (metadata, _, request) = request.into_parts();
        self.0
            .record(request, Protocol::Grpc, metadata.into_headers());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

async fn http_export(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let answer = |status: StatusCode, body: Bytes| {
        let mut resp = Response::new(Full::new(body));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/x-protobuf"),
        );
        Ok(resp)
    };
    if req.method() != Method::POST || req.uri().path() != "/v1/traces" {
        return answer(StatusCode::NOT_FOUND, Bytes::new());
    }
    if req.headers().contains_key(http::header::CONTENT_ENCODING) {
        return answer(StatusCode::UNSUPPORTED_MEDIA_TYPE, Bytes::new());
    }
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, 16 << 20).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return answer(StatusCode::BAD_REQUEST, Bytes::new()),
    };
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return answer(StatusCode::BAD_REQUEST, Bytes::new());
    };
    if !shared.admit().await {
        return answer(StatusCode::SERVICE_UNAVAILABLE, Bytes::new());
    }
    shared.record(request, Protocol::Http, parts.headers);
    let response = ExportTraceServiceResponse {
        partial_success: None,
    };
    answer(StatusCode::OK, Bytes::from(response.encode_to_vec()))
}

/// The receiver; both servers stop when it is dropped.
pub struct OtlpReceiver {
    grpc: SocketAddr,
    http: SocketAddr,
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl OtlpReceiver {
    /// Starts both servers on free loopback ports.
    pub async fn start() -> OtlpReceiver {
        let shared = Arc::new(Shared::default());
        let grpc_listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind otlp grpc");
        let http_listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind otlp http");
        let grpc = grpc_listener.local_addr().unwrap();
        let http = http_listener.local_addr().unwrap();
        let service = TraceServiceServer::new(Grpc(shared.clone()));
        let grpc_task = tokio::spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(grpc_listener);
            let _ = tonic::transport::Server::builder()
                .serve_with_incoming(service, incoming)
                .await;
        });
        let http_shared = shared.clone();
        let http_task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = http_listener.accept().await else {
                    continue;
                };
                let shared = http_shared.clone();
                conns.spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req| http_export(shared.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        OtlpReceiver {
            grpc,
            http,
            shared,
            tasks: vec![grpc_task, http_task],
        }
    }

    /// A receiver that counts spans without keeping them (long benchmark runs).
    pub async fn start_counting() -> OtlpReceiver {
        let r = Self::start().await;
        r.shared.count_only.store(true, Ordering::SeqCst);
        r
    }

    /// `http://127.0.0.1:<port>` of the gRPC server.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// `http://127.0.0.1:<port>` of the HTTP server (traces go to `/v1/traces`).
    pub fn http_endpoint(&self) -> String {
        format!("http://{}", self.http)
    }

    pub fn grpc_port(&self) -> u16 {
        self.grpc.port()
    }

    pub fn http_port(&self) -> u16 {
        self.http.port()
    }

    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *self.shared.behaviour.lock().unwrap() = behaviour;
    }

    pub fn spans(&self) -> Vec<RecordedSpan> {
        self.shared.spans.lock().unwrap().clone()
    }

    /// Spans received, including those a counting receiver did not keep.
    pub fn span_count(&self) -> u64 {
        self.shared.counted.load(Ordering::Relaxed)
    }

    /// Every span of one trace, in arrival order.
    pub fn trace(&self, trace_id: &str) -> Vec<RecordedSpan> {
        self.spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect()
    }

    /// Export calls accepted and refused.
    pub fn export_requests(&self) -> (usize, usize) {
        (
            self.shared.accepted.load(Ordering::SeqCst),
            self.shared.rejected.load(Ordering::SeqCst),
        )
    }

    /// The headers (HTTP) or metadata (gRPC) of every accepted export call, in order.
    pub fn request_headers(&self) -> Vec<http::HeaderMap> {
        self.shared.headers.lock().unwrap().clone()
    }

    pub fn clear(&self) {
        self.shared.spans.lock().unwrap().clear();
    }

    /// Waits until the spans received so far satisfy `done`; false after `timeout`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&[RecordedSpan]) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let arrived = self.shared.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if done(&self.shared.spans.lock().unwrap()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return done(&self.shared.spans.lock().unwrap());
            }
        }
    }

    /// Waits for a span matching `pred` and returns it.
    pub async fn wait_span(
        &self,
        timeout: Duration,
        pred: impl Fn(&RecordedSpan) -> bool,
    ) -> Option<RecordedSpan> {
        self.wait_for(timeout, |spans| spans.iter().any(&pred))
            .await;
        self.spans().into_iter().find(|s| pred(s))
    }

    /// One trace as indented text (name, kind, node, duration, status), for failure messages.
    pub fn tree(&self, trace_id: &str) -> String {
        let spans = self.trace(trace_id);
        let mut out = String::new();
        let roots: Vec<&RecordedSpan> = spans
            .iter()
            .filter(|s| {
                s.parent_span_id
                    .as_ref()
                    .is_none_or(|p| !spans.iter().any(|o| &o.span_id == p))
            })
            .collect();
        fn walk(out: &mut String, spans: &[RecordedSpan], s: &RecordedSpan, depth: usize) {
            let _ = writeln!(
                out,
                "{:indent$}{} [{:?}] node={} {:?} {:?}",
                "",
                s.name,
                s.kind,
                s.node(),
                s.duration(),
                s.status,
                indent = depth * 2
            );
            for child in spans
                .iter()
                .filter(|c| c.parent_span_id.as_deref() == Some(&s.span_id))
            {
                walk(out, spans, child, depth + 1);
            }
        }
        for root in roots {
            walk(&mut out, &spans, root, 0);
        }
        out
    }

    /// The spans whose parent is `span_id`.
    pub fn children_of(&self, span_id: &str) -> Vec<RecordedSpan> {
        self.spans()
            .into_iter()
            .filter(|s| s.parent_span_id.as_deref() == Some(span_id))
            .collect()
    }
}
