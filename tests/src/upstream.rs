//! Real HTTP upstreams that record what they received and behave as a test scripts them.
//!
//! Behaviour is chosen by the request, so any route can reach any behaviour:
//! - query `gh_sleep_ms=N`: wait N ms before answering;
//! - path ending in `/__download` with query `bytes=N`: stream N bytes;
//! - path ending in `/__upload`: consume the body as it streams and answer with its length;
//! - path ending in `/__sse`: an event stream; the second event waits for [`Upstream::release_sse`];
//! - path ending in `/__hang`: never answer (records when the proxy gives up the connection);
//! - `Upgrade: websocket`: a WebSocket echo server;
//! - anything else: 200 with the upstream's name as body and in `x-upstream`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Notify;

type Body = BoxBody<Bytes, std::io::Error>;

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query as received.
    pub uri: String,
    pub headers: HeaderMap,
    pub version: http::Version,
}

#[derive(Default)]
struct Shared {
    name: String,
    records: Mutex<Vec<Recorded>>,
    sse_gate: Notify,
    hang_dropped: AtomicUsize,
    uploaded: AtomicUsize,
}

pub struct Upstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    /// Starts an upstream named `name` on a free loopback port.
    pub async fn start(name: &str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("upstream addr");
        let shared = Arc::new(Shared {
            name: name.to_string(),
            ..Shared::default()
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(s.clone(), req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream { addr, shared, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.records.lock().unwrap().clone()
    }

    pub fn last(&self) -> Option<Recorded> {
        self.shared.records.lock().unwrap().last().cloned()
    }

    pub fn count(&self) -> usize {
        self.shared.records.lock().unwrap().len()
    }

    /// The claims of the `x-access-token` the last request carried, verified with the gateway's
    /// JWT `secret`. Panics when there is no request, no token, or a token not signed with it.
    pub fn last_access_token(&self, secret: &str) -> gatehouse_shared::token::RevaClaims {
        let last = self.last().expect("the upstream got a request");
        let token = last
            .headers
            .get("x-access-token")
            .expect("x-access-token sent to the backend")
            .to_str()
            .expect("x-access-token is text");
        gatehouse_shared::token::verify(secret.as_bytes(), token, Duration::from_secs(5))
            .expect("token signed with the secret")
    }

    /// Lets every waiting SSE stream send its second event.
    pub fn release_sse(&self) {
        self.shared.sse_gate.notify_waiters();
    }

    /// How many `/__hang` requests were abandoned by the peer.
    pub fn hang_dropped(&self) -> usize {
        self.shared.hang_dropped.load(Ordering::SeqCst)
    }

    /// Total bytes received by `/__upload` handlers.
    pub fn uploaded_bytes(&self) -> usize {
        self.shared.uploaded.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into())
        .map_err(|never| match never {})
        .boxed()
}

fn query_param(uri: &http::Uri, name: &str) -> Option<u64> {
    uri.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.parse().ok()).flatten()
    })
}

struct HangGuard(Arc<Shared>);
impl Drop for HangGuard {
    fn drop(&mut self) {
        self.0.hang_dropped.fetch_add(1, Ordering::SeqCst);
    }
}

async fn handle(s: Arc<Shared>, mut req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    s.records.lock().unwrap().push(Recorded {
        method: req.method().to_string(),
        uri: req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: req.headers().clone(),
        version: req.version(),
    });
    if let Some(ms) = query_param(req.uri(), "gh_sleep_ms") {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let path = req.uri().path().to_string();

    if req
        .headers()
        .get(http::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
    {
        let key = req
            .headers()
            .get("sec-websocket-key")
            .cloned()
            .unwrap_or(http::HeaderValue::from_static(""));
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                tokio_tungstenite::tungstenite::protocol::Role::Server,
                None,
            )
            .await;
            while let Some(Ok(msg)) = ws.next().await {
                if msg.is_close() {
                    break;
                }
                if ws.send(msg).await.is_err() {
                    break;
                }
            }
        });
        let resp = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", accept)
            .body(full(""))
            .unwrap();
        return Ok(resp);
    }

    if path.ends_with("/__hang") {
        let _guard = HangGuard(s.clone());
        std::future::pending::<()>().await;
    }

    if path.ends_with("/__download") {
        let total = query_param(req.uri(), "bytes").unwrap_or(0);
        let chunk = Bytes::from(vec![0xA5u8; 256 * 1024]);
        let stream = futures::stream::unfold(total, move |left| {
            let chunk = chunk.clone();
            async move {
                if left == 0 {
                    return None;
                }
                let n = left.min(chunk.len() as u64) as usize;
                Some((
                    Ok::<_, std::io::Error>(Frame::data(chunk.slice(..n))),
                    left - n as u64,
                ))
            }
        });
        let resp = Response::builder()
            .header("content-length", total)
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .unwrap();
        return Ok(resp);
    }

    if path.ends_with("/__upload") {
        let mut body = req.into_body();
        let mut n: usize = 0;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => {
                    if let Some(d) = f.data_ref() {
                        n += d.len();
                    }
                }
                Err(_) => break,
            }
        }
        s.uploaded.fetch_add(n, Ordering::SeqCst);
        return Ok(Response::new(full(n.to_string())));
    }

    if path.ends_with("/__sse") {
        let s2 = s.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
        tokio::spawn(async move {
            let released = s2.sse_gate.notified();
            let _ = tx
                .send(Ok(Frame::data(Bytes::from_static(b"data: one\n\n"))))
                .await;
            released.await;
            let _ = tx
                .send(Ok(Frame::data(Bytes::from_static(b"data: two\n\n"))))
                .await;
        });
        let stream = tokio_stream_from(rx);
        let resp = Response::builder()
            .header("content-type", "text/event-stream")
            .header("cache-control", "no-cache")
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .unwrap();
        return Ok(resp);
    }

    // Drain the request body so keep-alive works.
    let _ = req.into_body().collect().await;
    let resp = Response::builder()
        .header("x-upstream", s.name.as_str())
        .body(full(s.name.clone()))
        .unwrap();
    Ok(resp)
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
