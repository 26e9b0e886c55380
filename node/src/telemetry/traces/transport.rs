//! The OTLP exporter for a [`Plan`]: gRPC over a tonic channel or HTTP/protobuf over a hyper
//! client, both connecting through the node's own rustls connector (`proxy::tls`), so that TLS
//! to the collector uses the same stack, trust store and CA-file handling as TLS to upstreams —
//! no second TLS implementation, no OpenSSL. Connections are made lazily, at the first export:
//! an absent collector never delays or fails start-up (oCIS dials its collector blocking and does
//! not start without it).
//!
//! Headers: the plan's headers (which already include `OTEL_EXPORTER_OTLP_HEADERS` at its
//! precedence) *replace* whatever the exporter library adds from the environment on its own, so
//! the documented precedence holds. Retries are off: a failed batch is dropped and counted by the
//! export task rather than held while newer spans queue up behind it.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use opentelemetry_otlp::{
    Protocol as OtlpProtocol, RetryPolicy, SpanExporter, WithExportConfig as _,
    WithHttpConfig as _, WithTonicConfig as _,
};

use gatehouse_shared::trace::settings::{Plan, Protocol};

use crate::proxy::tls::{Connector, UpstreamTlsError, client_config_for};

/// Bounds name resolution, TCP connect and TLS handshake to the collector.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest collector answer read (an OTLP answer is a few bytes).
const MAX_ANSWER: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error(transparent)]
    Tls(#[from] UpstreamTlsError),
    #[error("tracing.endpoint: {0}")]
    Endpoint(String),
    #[error("trace exporter: {0}")]
    Build(String),
}

/// Builds the exporter; must run inside the node's multi-thread runtime (the gRPC channel's
/// background task is spawned there).
pub fn exporter(plan: &Plan) -> Result<SpanExporter, TransportError> {
    let alpn: &[&[u8]] = match plan.protocol {
        Protocol::Grpc => &[b"h2"],
        Protocol::HttpProtobuf => &[b"http/1.1"],
    };
    let ca = plan.ca_file.as_deref().map(Path::new);
    let tls = client_config_for("tracing.ca_file", plan.insecure, ca, alpn)?;
    let connector = Connector::new(tls, Some(CONNECT_TIMEOUT));
    let built = match plan.protocol {
        Protocol::Grpc => {
            let channel = tonic::transport::Endpoint::from_shared(plan.url.clone())
                .map_err(|e| TransportError::Endpoint(format!("{}: {e}", plan.url)))?
                .timeout(plan.export_timeout)
                .connect_with_connector_lazy(connector);
            let metadata = metadata(&plan.headers)?;
            SpanExporter::builder()
                .with_tonic()
                .with_channel(channel)
                .with_timeout(plan.export_timeout)
                .with_retry_policy(RetryPolicy::disabled())
                .with_interceptor(move |mut req: tonic::Request<()>| {
                    *req.metadata_mut() = metadata.clone();
                    Ok(req)
                })
                .build()
        }
        Protocol::HttpProtobuf => {
            let client = CollectorClient::new(connector, &plan.headers, plan.export_timeout)?;
            SpanExporter::builder()
                .with_http()
                .with_http_client(client)
                .with_endpoint(plan.url.clone())
                .with_protocol(OtlpProtocol::HttpBinary)
                .with_timeout(plan.export_timeout)
                .with_retry_policy(RetryPolicy::disabled())
                .build()
        }
    };
    built.map_err(|e| TransportError::Build(e.to_string()))
}

fn metadata(headers: &[(String, String)]) -> Result<tonic::metadata::MetadataMap, TransportError> {
    let mut map = http::HeaderMap::new();
    for (name, value) in header_pairs(headers)? {
        map.insert(name, value);
    }
    Ok(tonic::metadata::MetadataMap::from_headers(map))
}

fn header_pairs(
    headers: &[(String, String)],
) -> Result<Vec<(HeaderName, HeaderValue)>, TransportError> {
    headers
        .iter()
        .map(|(n, v)| {
            let name = HeaderName::from_bytes(n.as_bytes())
                .map_err(|_| TransportError::Build(format!("tracing.headers: bad name {n:?}")))?;
            let value = HeaderValue::from_str(v)
                .map_err(|_| TransportError::Build(format!("tracing.headers: bad value of {n}")))?;
            Ok((name, value))
        })
        .collect()
}

/// The HTTP client of the OTLP/HTTP exporter.
struct CollectorClient {
    client: Client<Connector, Full<Bytes>>,
    headers: Vec<(HeaderName, HeaderValue)>,
    timeout: Duration,
}

impl std::fmt::Debug for CollectorClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CollectorClient").finish_non_exhaustive()
    }
}

impl CollectorClient {
    fn new(
        connector: Connector,
        headers: &[(String, String)],
        timeout: Duration,
    ) -> Result<Self, TransportError> {
        let mut builder = Client::builder(TokioExecutor::new());
        builder.pool_timer(TokioTimer::new());
        builder.pool_idle_timeout(Duration::from_secs(60));
        Ok(Self {
            client: builder.build(connector),
            headers: header_pairs(headers)?,
            timeout,
        })
    }
}

/// Headers the exporter sets that describe the body; everything else it adds is replaced by the
/// configured headers.
const BODY_HEADERS: [HeaderName; 3] = [
    http::header::CONTENT_TYPE,
    http::header::CONTENT_ENCODING,
    http::header::CONTENT_LENGTH,
];

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for CollectorClient {
    async fn send_bytes(
        &self,
        request: Request<Bytes>,
    ) -> Result<Response<Bytes>, opentelemetry_http::HttpError> {
        let (mut parts, body) = request.into_parts();
        let kept: Vec<(HeaderName, HeaderValue)> = BODY_HEADERS
            .iter()
            .filter_map(|n| parts.headers.get(n).map(|v| (n.clone(), v.clone())))
            .collect();
        parts.headers.clear();
        for (name, value) in kept.into_iter().chain(self.headers.iter().cloned()) {
            parts.headers.insert(name, value);
        }
        let call = async {
            let resp = self
                .client
                .request(Request::from_parts(parts, Full::new(body)))
                .await?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_ANSWER).collect().await?.to_bytes();
            Ok::<_, opentelemetry_http::HttpError>(Response::from_parts(parts, body))
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))?
    }
}
