//! The benchmark's load generator, run as its own process (`gatehouse-chaos load <spec>`) so that
//! its CPU time is measured apart from the proxy's and it can be pinned to a core.
//!
//! It keeps `connections` HTTP/1.1 connections and sends either as fast as answers come back
//! (closed loop, for saturation) or at a fixed total rate (open loop, like wrk2): each connection
//! has its own schedule, and a request that could not be sent on time because the previous answer
//! was late is timed from when it should have been sent, so a stall shows in the latencies
//! instead of silently lowering the load (coordinated omission). A request sent late because the
//! timer woke late, with the connection idle, is timed from when it was sent: the timer is not the
//! proxy's fault.
//!
//! It prints `measure` when the warm-up ends and `done` when the measurement ends (the
//! orchestrator reads the processes' counters at both lines), then `result <json>`.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use super::stats::quantile;

/// What to send, how much and for how long.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Spec {
    pub addr: SocketAddr,
    /// Request targets (path and query), used in rotation.
    pub paths: Vec<String>,
    pub method: String,
    pub headers: Vec<(String, String)>,
    /// Size of the request body (0: none).
    pub body_bytes: usize,
    pub connections: usize,
    /// Requests per second over all connections; `None`: closed loop.
    pub rate: Option<f64>,
    pub warmup_ms: u64,
    pub measure_ms: u64,
    /// HTTP/2 with prior knowledge (h2c), one stream at a time per connection.
    #[serde(default)]
    pub http2: bool,
    /// TLS (HTTP/1.1) to `localhost`, trusting this PEM certificate.
    #[serde(default)]
    pub tls_ca_pem: Option<String>,
}

/// What the measurement window saw.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    /// Requests sent and answered inside the window.
    pub completed: u64,
    /// Of those, answers that were not 2xx.
    pub non_2xx: u64,
    /// Connections that failed or broke (over the whole run).
    pub transport_errors: u64,
    pub requests_per_sec: f64,
    pub p50_us: u32,
    pub p99_us: u32,
    pub p999_us: u32,
    pub max_us: u32,
    /// Response body bytes received inside the window.
    pub bytes_in: u64,
    /// Request body bytes sent inside the window.
    pub bytes_out: u64,
    /// Open loop: requests that could not be sent on time because the connection was still busy.
    pub late: u64,
}

#[derive(Default)]
struct ConnStats {
    latencies_us: Vec<u32>,
    non_2xx: u64,
    transport_errors: u64,
    bytes_in: u64,
    bytes_out: u64,
    late: u64,
}

/// `gatehouse-chaos load <spec as JSON>`: runs one load on a single-threaded runtime and prints
/// its progress lines and outcome on stdout.
pub fn child(spec_json: &str) -> Result<(), String> {
    let spec: Spec = serde_json::from_str(spec_json).map_err(|e| format!("load spec: {e}"))?;
    if spec.paths.is_empty() || spec.connections == 0 {
        return Err("load spec: no paths or no connections".into());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let outcome = runtime.block_on(generate(spec))?;
    let json = serde_json::to_string(&outcome).map_err(|e| e.to_string())?;
    say(&format!("result {json}"));
    Ok(())
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

struct Prepared {
    spec: Spec,
    tls: Option<TlsConnector>,
    method: Method,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
    measure_start: Instant,
    end: Instant,
}

async fn generate(spec: Spec) -> Result<Outcome, String> {
    let method = Method::from_bytes(spec.method.as_bytes()).map_err(|e| e.to_string())?;
    // HTTP/2 carries the authority in the request URI instead.
    let mut headers = Vec::new();
    if !spec.http2 {
        headers.push((
            http::header::HOST,
            HeaderValue::from_str(&spec.addr.to_string()).map_err(|e| e.to_string())?,
        ));
    }
    for (n, v) in &spec.headers {
        headers.push((
            HeaderName::from_bytes(n.as_bytes()).map_err(|e| format!("header {n}: {e}"))?,
            HeaderValue::from_str(v).map_err(|e| format!("header {n}: {e}"))?,
        ));
    }
    let start = Instant::now();
    let measure_start = start + Duration::from_millis(spec.warmup_ms);
    let end = measure_start + Duration::from_millis(spec.measure_ms);
    let tls = spec.tls_ca_pem.as_deref().map(tls_connector).transpose()?;
    let p = std::sync::Arc::new(Prepared {
        tls,
        body: Bytes::from(vec![b'u'; spec.body_bytes]),
        method,
        headers,
        measure_start,
        end,
        spec,
    });
    let conns: Vec<_> = (0..p.spec.connections)
        .map(|i| tokio::spawn(connection(i, p.clone(), start)))
        .collect();
    tokio::time::sleep_until(measure_start).await;
    say("measure");
    tokio::time::sleep_until(end).await;
    say("done");
    let mut all = ConnStats::default();
    for c in conns {
        let s = c.await.map_err(|e| e.to_string())?;
        all.latencies_us.extend(s.latencies_us);
        all.non_2xx += s.non_2xx;
        all.transport_errors += s.transport_errors;
        all.bytes_in += s.bytes_in;
        all.bytes_out += s.bytes_out;
        all.late += s.late;
    }
    all.latencies_us.sort_unstable();
    let l = &all.latencies_us;
    Ok(Outcome {
        completed: l.len() as u64,
        non_2xx: all.non_2xx,
        transport_errors: all.transport_errors,
        requests_per_sec: l.len() as f64 / (p.spec.measure_ms as f64 / 1000.0),
        p50_us: quantile(l, 0.5),
        p99_us: quantile(l, 0.99),
        p999_us: quantile(l, 0.999),
        max_us: l.last().copied().unwrap_or(0),
        bytes_in: all.bytes_in,
        bytes_out: all.bytes_out,
        late: all.late,
    })
}

/// A client TLS configuration that trusts only `pem` (the benchmark's self-signed certificate).
fn tls_connector(pem: &str) -> Result<TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_bytes()) {
        roots
            .add(cert.map_err(|e| format!("tls_ca_pem: {e}"))?)
            .map_err(|e| format!("tls_ca_pem: {e}"))?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(std::sync::Arc::new(config)))
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    async fn ready(&mut self) -> Result<(), hyper::Error> {
        match self {
            Sender::H1(s) => s.ready().await,
            Sender::H2(s) => s.ready().await,
        }
    }

    async fn send(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> Result<http::Response<hyper::body::Incoming>, hyper::Error> {
        match self {
            Sender::H1(s) => s.send_request(req).await,
            Sender::H2(s) => s.send_request(req).await,
        }
    }
}

async fn connect(p: &Prepared) -> Result<Sender, String> {
    let tcp = tokio::net::TcpStream::connect(p.spec.addr)
        .await
        .map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    match &p.tls {
        Some(tls) => {
            let name =
                rustls::pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
            let stream = tls.connect(name, tcp).await.map_err(|e| e.to_string())?;
            handshake(stream, p.spec.http2).await
        }
        None => handshake(tcp, p.spec.http2).await,
    }
}

async fn handshake<T>(io: T, h2: bool) -> Result<Sender, String>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if h2 {
        let (send, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok(Sender::H2(send))
    } else {
        let (send, conn) = http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok(Sender::H1(send))
    }
}

async fn connection(i: usize, p: std::sync::Arc<Prepared>, start: Instant) -> ConnStats {
    let spec = &p.spec;
    let mut s = ConnStats::default();
    // Open loop: this connection's share of the rate, its schedule offset so that the
    // connections do not fire together.
    let interval = spec
        .rate
        .map(|r| Duration::from_secs_f64(spec.connections as f64 / r));
    let mut next = start
        + interval.map_or(Duration::ZERO, |iv| {
            iv.mul_f64(i as f64 / spec.connections as f64)
        });
    let mut prev_done = start;
    let mut k = i;
    'connections: while Instant::now() < p.end {
        let mut send = match connect(&p).await {
            Ok(send) => send,
            Err(_) => {
                s.transport_errors += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        loop {
            if interval.is_some() && next > Instant::now() {
                tokio::time::sleep_until(next).await;
            }
            let now = Instant::now();
            if now >= p.end {
                break 'connections;
            }
            let late = interval.is_some() && prev_done > next;
            let sent_at = if late { next } else { now };
            if let Some(iv) = interval {
                next += iv;
            }
            let mut req = Request::new(Full::new(p.body.clone()));
            *req.method_mut() = p.method.clone();
            let path = &spec.paths[k % spec.paths.len()];
            let uri = if spec.http2 {
                format!("http://{}{path}", spec.addr).parse()
            } else {
                path.parse()
            };
            *req.uri_mut() = match uri {
                Ok(u) => u,
                Err(_) => break 'connections,
            };
            k += 1;
            let h = req.headers_mut();
            for (n, v) in &p.headers {
                h.insert(n.clone(), v.clone());
            }
            if send.ready().await.is_err() {
                s.transport_errors += 1;
                continue 'connections;
            }
            let resp = match send.send(req).await {
                Ok(r) => r,
                Err(_) => {
                    s.transport_errors += 1;
                    continue 'connections;
                }
            };
            let ok = resp.status().is_success();
            let mut body = resp.into_body();
            let mut bytes = 0u64;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => bytes += f.data_ref().map_or(0, |d| d.len() as u64),
                    Err(_) => {
                        s.transport_errors += 1;
                        continue 'connections;
                    }
                }
            }
            let done = Instant::now();
            prev_done = done;
            if sent_at >= p.measure_start && done <= p.end {
                let us = done.duration_since(sent_at).as_micros();
                s.latencies_us.push(u32::try_from(us).unwrap_or(u32::MAX));
                s.bytes_in += bytes;
                s.bytes_out += p.body.len() as u64;
                s.late += u64::from(late);
                if !ok {
                    s.non_2xx += 1;
                }
            }
        }
    }
    s
}
