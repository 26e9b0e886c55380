//! Facts about a connection and a request that several layers need, carried in request extensions.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;

use crate::layers::route::Routed;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every response the pipeline produces (upstream bodies are boxed into it).
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Set by the server on every request it reads from a connection. One extension for the
/// connection's facts and the client address: every extension is an allocation, and a request
/// that carries more than three makes the map grow (and allocate) again.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The TCP peer (a load balancer, or the client itself).
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// The connection is TLS (this node terminated TLS).
    pub tls: bool,
    /// The client address as the gateway believes it (after trusted-proxy evaluation of this
    /// request's forwarding headers; the peer's address otherwise).
    pub client: IpAddr,
}

/// The request id (from `X-Request-Id` or generated), set by the request-id layer. It is the
/// header's own value (shared, not copied): visible ASCII, as the layer accepts or makes it.
#[derive(Debug, Clone)]
pub struct RequestId(pub http::HeaderValue);

impl RequestId {
    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or_default()
    }
}

/// Filled in while the request travels down the pipeline, read by the access log and the server
/// span on the way back.
#[derive(Debug, Default)]
pub struct RequestTrace {
    /// The matched route.
    pub route: OnceLock<Routed>,
    /// The upstream base URL the proxy chose.
    pub upstream: OnceLock<Arc<str>>,
}

/// Shared handle to a request's [`RequestTrace`], inserted by the trace layer (or, with tracing
/// off, the access-log layer).
pub type SharedTrace = Arc<RequestTrace>;
