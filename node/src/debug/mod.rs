//! The debug server (spec §7.4): a separate, normally loopback-only listener for orchestrators and
//! monitoring. It never shares a port with client traffic so that probes and scrapes keep working
//! while the main listener is saturated or draining.
//!
//! | path       | answer |
//! |------------|--------|
//! | `/healthz` | 200 `OK` when start-up has finished and the main listener accepts a TCP connection within 3 s, else 500 with the reason |
//! | `/readyz`  | 200 `OK` when healthy, not draining and every required dependency has come up (`OK, degraded: …` while one is lost again), else 503 with the reason |
//! | `/metrics` | Prometheus text format |
//! | `/config`  | the effective configuration as JSON, secrets masked |
//! | `/debug/state/<key>` | the value this node sees under `<key>` in the shared state store (its near-cache first), 404 when absent |
//!
//! `/debug/state/` exists so an operator can ask "what does *this* node believe?" when nodes
//! disagree; it only reads. When `debug.token` is set, `/metrics`, `/config` and `/debug/state/` require `Authorization: Bearer <token>`
//! (compared in constant time); oCIS protects only `/metrics`, but the configuration reveals the
//! internal topology, so it gets the same protection. Every answer carries no-cache headers and
//! `X-PROXY-VERSION`.

mod client;
mod http_date;

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use client::{FetchError, fetch};
pub use http_date::http_date;

use crate::health::Health;
use crate::telemetry::Metrics;

/// How long `/healthz` waits for the main listener to accept a connection (oCIS: 3 s).
pub const LISTENER_PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// In-flight debug requests get this long to finish once the server is told to stop.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

const UNAUTHORIZED_BODY: &str =
    r#"{"error":{"code":"invalidAuthenticationToken","message":"invalid or missing token"}}"#;

pub struct DebugState {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// The effective configuration, secrets already masked.
    pub config_json: Arc<str>,
    /// `debug.token`; empty means no protection.
    pub token: String,
    pub version: String,
    /// `http.addr`, probed by `/healthz`.
    pub http_addr: String,
    /// The shared state store, read by `/debug/state/<key>`.
    pub state: Option<Arc<dyn gatehouse_shared::store::Store>>,
}

/// Serves the debug endpoints on `listener` until `shutdown` is cancelled, then gives in-flight
/// requests a few seconds to finish.
pub async fn serve(listener: TcpListener, state: DebugState, shutdown: CancellationToken) {
    let state = Arc::new(state);
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _peer)) => {
                let state = Arc::clone(&state);
                let svc = service_fn(move |req| {
                    let state = Arc::clone(&state);
                    async move { Ok::<_, Infallible>(handle(&state, req).await) }
                });
                let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), svc));
                tokio::spawn(async move {
                    if let Err(err) = conn.await {
                        tracing::debug!(error = %err, "debug connection ended with an error");
                    }
                });
            }
            Err(err) => {
                // Typically EMFILE: back off instead of spinning on the accept queue.
                tracing::warn!(error = %err, "debug server: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("debug server: connections still open after the drain timeout");
    }
}

const STATE_PREFIX: &str = "/debug/state/";

async fn state_lookup(state: &DebugState, key: &str) -> Response<Full<Bytes>> {
    let Some(store) = &state.state else {
        return text(StatusCode::NOT_FOUND, "no state store".into());
    };
    match store.get(key).await {
        Ok(Some(entry)) => {
            let mut r = Response::new(Full::new(entry.value));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            r
        }
        Ok(None) => text(StatusCode::NOT_FOUND, "not found".into()),
        Err(err) => text(StatusCode::SERVICE_UNAVAILABLE, err.to_string()),
    }
}

async fn handle(state: &DebugState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let mut resp = match req.uri().path() {
        "/healthz" => match serving(state).await {
            Ok(()) => text(StatusCode::OK, "OK".into()),
            Err(reason) => text(StatusCode::INTERNAL_SERVER_ERROR, reason),
        },
        "/readyz" => match readiness(state).await {
            Ok(()) => {
                let degraded = state.health.degraded();
                if degraded.is_empty() {
                    text(StatusCode::OK, "OK".into())
                } else {
                    text(
                        StatusCode::OK,
                        format!("OK, degraded: {} unreachable", degraded.join(", ")),
                    )
                }
            }
            Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, reason),
        },
        "/metrics" if authorized(state, &req) => {
            let mut r = Response::new(Full::new(Bytes::from(state.metrics.encode())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "/config" if authorized(state, &req) => {
            let bytes = Bytes::copy_from_slice(state.config_json.as_bytes());
            json(StatusCode::OK, bytes)
        }
        path if path.starts_with(STATE_PREFIX) && authorized(state, &req) => {
            state_lookup(state, &path[STATE_PREFIX.len()..]).await
        }
        path if path == "/metrics" || path == "/config" || path.starts_with(STATE_PREFIX) => {
            let mut r = json(
                StatusCode::UNAUTHORIZED,
                Bytes::from_static(UNAUTHORIZED_BODY.as_bytes()),
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        }
        _ => text(StatusCode::NOT_FOUND, "404 page not found".into()),
    };
    let headers = resp.headers_mut();
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store, max-age=0, must-revalidate"),
    );
    headers.insert(
        header::EXPIRES,
        HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"),
    );
    if let Ok(now) = HeaderValue::from_str(&http_date(SystemTime::now())) {
        headers.insert(header::LAST_MODIFIED, now);
    }
    if let Ok(version) = HeaderValue::from_str(&state.version) {
        headers.insert("x-proxy-version", version);
    }
    resp
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

async fn readiness(state: &DebugState) -> Result<(), String> {
    if state.health.is_draining() {
        return Err("draining".into());
    }
    let failing = state.health.failing_dependencies();
    if !failing.is_empty() {
        return Err(format!("dependencies down: {}", failing.join(", ")));
    }
    serving(state).await
}

/// Whether start-up has finished and the main listener accepts a connection.
async fn serving(state: &DebugState) -> Result<(), String> {
    if !state.health.is_serving() {
        return Err("starting: the main listener does not serve yet".into());
    }
    check_listener(&state.http_addr).await
}

fn authorized(state: &DebugState, req: &Request<Incoming>) -> bool {
    state.token.is_empty() || bearer_matches(req.headers().get(header::AUTHORIZATION), &state.token)
}

/// Whether `Authorization` is `Bearer <token>`; the token comparison takes the same time wherever
/// the first difference is.
pub fn bearer_matches(header: Option<&HeaderValue>, token: &str) -> bool {
    let Some(value) = header.map(HeaderValue::as_bytes) else {
        return false;
    };
    let Some((scheme, presented)) = value.split_at_checked(7) else {
        return false;
    };
    scheme.eq_ignore_ascii_case(b"bearer ") && constant_time_eq(presented, token.as_bytes())
}

fn constant_time_eq(presented: &[u8], expected: &[u8]) -> bool {
    let mut diff = presented.len() ^ expected.len();
    for (i, p) in presented.iter().enumerate() {
        let e = expected.get(i).copied().unwrap_or(0);
        diff |= usize::from(p ^ e);
    }
    std::hint::black_box(diff) == 0
}

/// The address to connect to for a listen address: wildcard hosts become loopback of the same
/// family, a bare `:port` means the IPv4 loopback.
pub fn probe_address(listen: &str) -> String {
    if let Ok(addr) = listen.parse::<SocketAddr>() {
        let ip = match addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        return SocketAddr::new(ip, addr.port()).to_string();
    }
    match listen.strip_prefix(':') {
        Some(port) => format!("127.0.0.1:{port}"),
        None => listen.to_owned(),
    }
}

/// Whether the main listener accepts a TCP connection (oCIS's "web reachability" check).
pub async fn check_listener(http_addr: &str) -> Result<(), String> {
    let target = probe_address(http_addr);
    match tokio::time::timeout(
        LISTENER_PROBE_TIMEOUT,
        tokio::net::TcpStream::connect(&target),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(err)) => Err(format!("http listener {target} unreachable: {err}")),
        Err(_) => Err(format!(
            "http listener {target} unreachable: no connection within {LISTENER_PROBE_TIMEOUT:?}"
        )),
    }
}

#[cfg(test)]
mod tests;
