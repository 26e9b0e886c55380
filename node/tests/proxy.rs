//! The server, pipeline and reverse proxy over real sockets on 127.0.0.1, against small hyper
//! upstreams started by each test.

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gatehouse_node::health::Health;
use gatehouse_node::identity::Identity;
use gatehouse_node::layers::route::RouteLayer;
use gatehouse_node::pipeline::{self, PipelineParts};
use gatehouse_node::proxy::ProxyOptions;
use gatehouse_node::proxy::forwarded::TrustedProxies;
use gatehouse_node::server::{Server, StartupError};
use gatehouse_node::upstream::Resolver;
use gatehouse_shared::config::{Config, GoDuration, Http};
use gatehouse_shared::routing::{PolicyConfig, RouteConfig, Router};
use gatehouse_shared::security::{Csp, SecurityHeaders};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

type UpBody = BoxBody<Bytes, Infallible>;

const DEADLINE: Duration = Duration::from_secs(10);

fn full(s: impl Into<Bytes>) -> UpBody {
    Full::new(s.into()).boxed()
}

/// Starts an HTTP/1.1 upstream (with upgrade support) answering with `handler`.
async fn spawn_upstream<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<UpBody>> + Send + 'static,
{
    counted_upstream(handler).await.addr
}

/// An upstream that answers with the request line and headers it received.
async fn echo_upstream() -> SocketAddr {
    spawn_upstream(|req: Request<Incoming>| async move {
        let mut s = format!("{} {}\n", req.method(), req.uri());
        for (k, v) in req.headers() {
            s.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
        }
        Response::builder()
            .header("connection", "x-hop")
            .header("x-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("x-end", "kept")
            .body(full(s))
            .unwrap()
    })
    .await
}

fn backend_route(prefix: &str, url: &str) -> RouteConfig {
    RouteConfig {
        endpoint: prefix.to_owned(),
        backend: url.to_owned(),
        ..RouteConfig::default()
    }
}

struct Opts {
    routes: Vec<RouteConfig>,
    services: BTreeMap<String, Vec<String>>,
    trusted: Vec<String>,
    http: Http,
    proxy: ProxyOptions,
    public_url: String,
}

impl Opts {
    fn new(routes: Vec<RouteConfig>) -> Self {
        Self {
            routes,
            services: BTreeMap::new(),
            trusted: vec![],
            http: Http {
                addr: "127.0.0.1:0".into(),
                tls: false,
                drain_timeout: GoDuration::secs(5),
                header_read_timeout: GoDuration::secs(10),
                ..Http::default()
            },
            proxy: ProxyOptions {
                connect_timeout: Some(Duration::from_secs(2)),
                response_header_timeout: Some(Duration::from_secs(5)),
                pool_idle_timeout: None,
                tls: gatehouse_node::proxy::tls::client_config(false, None).unwrap(),
            },
            public_url: String::new(),
        }
    }
}

struct Gateway {
    addr: SocketAddr,
    shutdown: CancellationToken,
    health: Arc<Health>,
    task: JoinHandle<Result<(), StartupError>>,
}

async fn gateway(o: Opts) -> Gateway {
    let trusted = Arc::new(TrustedProxies::parse(&o.trusted).unwrap());
    let parts = PipelineParts {
        rate_limits: None,
        route: RouteLayer::new(Arc::new(
            Router::new(
                &[PolicyConfig {
                    name: "ocis".into(),
                    // These tests are about proxying, not authentication.
                    routes: o
                        .routes
                        .into_iter()
                        .map(|r| RouteConfig {
                            unprotected: true,
                            ..r
                        })
                        .collect(),
                }],
                None,
            )
            .unwrap(),
        ))
        .unwrap(),
        resolver: Arc::new(Resolver::new(&o.services, None, Duration::from_secs(30)).unwrap()),
        security: SecurityHeaders::new(&Csp::load(None, &|_| None).unwrap(), false),
        trusted: trusted.clone(),
        proxy: o.proxy,
        public_url: o.public_url,
        trace_trust: gatehouse_shared::trace::settings::Trust::TrustedProxies,
        metrics: gatehouse_node::telemetry::Metrics::new("test"),
        identity: Identity::standalone(&Config::default()).await.unwrap(),
    };
    let health = Health::new();
    let server = Server::bind(&o.http, trusted, health.clone())
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server.serve(move || pipeline::build(parts.clone()), shutdown.clone()));
    Gateway {
        addr,
        shutdown,
        health,
        task,
    }
}

/// Sends raw bytes, returns everything the gateway answers until it closes the connection.
async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut out))
        .await
        .expect("gateway did not close the connection")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

async fn get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap, String) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::get(path).header("host", "gw.test");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = send
        .send_request(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

#[tokio::test]
async fn prefix_route_joins_path_and_query_and_sets_host() {
    let up = echo_upstream().await;
    let gw = gateway(Opts::new(vec![backend_route(
        "/api",
        &format!("http://{up}/base?b=1"),
    )]))
    .await;
    let (status, headers, body) = get(gw.addr, "/api/x?y=2", &[]).await;
    assert_eq!(status, 200);
    assert!(body.starts_with("GET /base/api/x?b=1&y=2\n"), "{body}");
    assert!(body.contains("\nhost: gw.test\n"), "{body}");
    assert!(body.contains("\nuser-agent: \n"), "{body}");
    assert_eq!(headers["x-end"], "kept");
    assert_eq!(headers["x-content-type-options"], "nosniff");
}

#[tokio::test]
async fn apache_vhost_sends_backend_authority() {
    let up = echo_upstream().await;
    let mut route = backend_route("/", &format!("http://{up}"));
    route.apache_vhost = true;
    let gw = gateway(Opts::new(vec![route])).await;
    let (_, _, body) = get(gw.addr, "/x", &[]).await;
    assert!(body.contains(&format!("\nhost: {up}\n")), "{body}");
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_both_ways() {
    let up = echo_upstream().await;
    let gw = gateway(Opts::new(vec![backend_route("/", &format!("http://{up}"))])).await;
    let out = raw(
        gw.addr,
        b"GET /h HTTP/1.1\r\nHost: gw\r\nConnection: close, x-secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=1\r\nProxy-Authorization: Basic eA==\r\nTE: trailers\r\nUpgrade: h2c\r\nX-Keep: yes\r\n\r\n",
    )
    .await;
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let body = body.to_ascii_lowercase();
    for gone in [
        "x-secret",
        "keep-alive",
        "proxy-authorization",
        "\nte:",
        "upgrade",
        "connection",
    ] {
        assert!(!body.contains(gone), "{gone} reached the upstream: {body}");
    }
    assert!(body.contains("x-keep: yes"));
    let head = head.to_ascii_lowercase();
    assert!(!head.contains("x-hop"), "{head}");
    assert!(!head.contains("keep-alive"), "{head}");
    assert!(head.contains("x-end: kept"), "{head}");
}

#[tokio::test]
async fn forwarded_headers_from_untrusted_peer_are_rebuilt() {
    let up = echo_upstream().await;
    let gw = gateway(Opts::new(vec![backend_route("/", &format!("http://{up}"))])).await;
    let (_, _, body) = get(
        gw.addr,
        "/",
        &[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
        ],
    )
    .await;
    assert!(body.contains("\nx-forwarded-for: 127.0.0.1\n"), "{body}");
    assert!(body.contains("\nx-forwarded-proto: http\n"), "{body}");
    assert!(body.contains("\nx-forwarded-host: gw.test\n"), "{body}");
    assert!(!body.contains("x-real-ip"), "{body}");
}

#[tokio::test]
async fn forwarded_headers_from_trusted_peer_are_extended() {
    let up = echo_upstream().await;
    let mut o = Opts::new(vec![backend_route("/", &format!("http://{up}"))]);
    o.trusted = vec!["127.0.0.0/8".into()];
    let gw = gateway(o).await;
    let (_, _, body) = get(
        gw.addr,
        "/",
        &[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
        ],
    )
    .await;
    assert!(
        body.contains("\nx-forwarded-for: 203.0.113.9, 127.0.0.1\n"),
        "{body}"
    );
    assert!(body.contains("\nx-forwarded-proto: https\n"), "{body}");
}

#[tokio::test]
async fn refused_upstream_is_502_with_empty_body_and_security_headers() {
    let dead = closed_port().await;
    let gw = gateway(Opts::new(vec![backend_route(
        "/",
        &format!("http://{dead}"),
    )]))
    .await;
    let (status, headers, body) = get(gw.addr, "/", &[]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(body, "");
    assert_eq!(headers["x-frame-options"], "SAMEORIGIN");
}

#[tokio::test]
async fn service_with_one_refusing_node_fails_over() {
    let up = echo_upstream().await;
    let dead = closed_port().await;
    let mut o = Opts::new(vec![RouteConfig {
        endpoint: "/".into(),
        service: "com.example.svc".into(),
        unprotected: true,
        ..RouteConfig::default()
    }]);
    o.services.insert(
        "com.example.svc".into(),
        vec![format!("http://{dead}"), format!("http://{up}")],
    );
    let gw = gateway(o).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(get(gw.addr, "/", &[]).await.0.as_u16());
    }
    // The first request hits the refusing node; afterwards it is skipped for the backoff.
    assert_eq!(statuses, [502, 200, 200, 200]);
}

#[tokio::test]
async fn unknown_service_is_502_and_no_route_is_500() {
    let gw = gateway(Opts::new(vec![RouteConfig {
        endpoint: "/svc".into(),
        service: "nobody".into(),
        ..RouteConfig::default()
    }]))
    .await;
    assert_eq!(get(gw.addr, "/svc", &[]).await.0, StatusCode::BAD_GATEWAY);
    let (status, _, body) = get(gw.addr, "/elsewhere", &[]).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body, "");
}

#[tokio::test]
async fn bad_path_is_400_and_dot_segments_are_normalised() {
    let up = echo_upstream().await;
    let gw = gateway(Opts::new(vec![backend_route("/", &format!("http://{up}"))])).await;
    let out = raw(
        gw.addr,
        b"GET /a/../../etc HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    let out = raw(
        gw.addr,
        b"GET /a/./b/../c?q=1 HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.contains("\r\n\r\nGET /a/c?q=1\n"), "{out}");
}

#[tokio::test]
async fn https_redirect_targets_public_url() {
    let up = echo_upstream().await;
    let mut o = Opts::new(vec![backend_route("/", &format!("http://{up}"))]);
    o.public_url = "https://trusted.example".into();
    let gw = gateway(o).await;
    let (status, headers, _) = get(gw.addr, "/foo?bar=1", &[("x-forwarded-proto", "http")]).await;
    assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(headers["location"], "https://trusted.example/foo?bar=1");
    assert_eq!(headers["x-content-type-options"], "nosniff");
}

#[tokio::test]
async fn slow_upstream_is_504() {
    let up = spawn_upstream(|_req| async {
        std::future::pending::<()>().await;
        Response::new(full(""))
    })
    .await;
    let mut o = Opts::new(vec![backend_route("/", &format!("http://{up}"))]);
    o.proxy.response_header_timeout = Some(Duration::from_millis(200));
    let gw = gateway(o).await;
    let (status, _, body) = get(gw.addr, "/", &[]).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(body, "");
}

#[tokio::test]
async fn upgrade_is_bridged() {
    let up = spawn_upstream(|mut req: Request<Incoming>| async move {
        let on = hyper::upgrade::on(&mut req);
        common::spawn_upgraded_echo(on);
        Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "echo")
            .body(full(""))
            .unwrap()
    })
    .await;
    let gw = gateway(Opts::new(vec![backend_route("/", &format!("http://{up}"))])).await;
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    for msg in [&b"ping"[..], b"second message"] {
        tcp.write_all(msg).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(DEADLINE, tcp.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, msg);
    }
}

#[tokio::test]
async fn sse_events_arrive_one_by_one() {
    let (release_tx, release_rx) = mpsc::channel::<()>(1);
    let release_rx = Arc::new(tokio::sync::Mutex::new(release_rx));
    let up = spawn_upstream(move |_req| {
        let release_rx = release_rx.clone();
        async move {
            let (tx, rx) = mpsc::channel::<Bytes>(1);
            tokio::spawn(async move {
                tx.send(Bytes::from_static(b"data: one\n\n")).await.unwrap();
                release_rx.lock().await.recv().await;
                tx.send(Bytes::from_static(b"data: two\n\n")).await.unwrap();
            });
            let stream = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv()
                    .await
                    .map(|b| (Ok::<_, Infallible>(hyper::body::Frame::data(b)), rx))
            });
            let body = http_body_util::StreamBody::new(stream);
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(body.boxed())
                .unwrap()
        }
    })
    .await;
    let gw = gateway(Opts::new(vec![backend_route("/", &format!("http://{up}"))])).await;
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = send
        .send_request(
            Request::get("/sse")
                .header("host", "gw")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = resp.into_body();
    assert_eq!(next_data(&mut body).await, "data: one\n\n");
    release_tx.send(()).await.unwrap();
    assert_eq!(next_data(&mut body).await, "data: two\n\n");
}

async fn next_data(body: &mut Incoming) -> Bytes {
    let frame = tokio::time::timeout(DEADLINE, body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    frame.into_data().unwrap()
}

#[tokio::test]
async fn client_disconnect_cancels_upstream_request() {
    let (arrived_tx, mut arrived_rx) = mpsc::channel::<()>(1);
    let (dropped_tx, mut dropped_rx) = mpsc::channel::<()>(1);
    struct OnDrop(mpsc::Sender<()>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            let _ = self.0.try_send(());
        }
    }
    let up = spawn_upstream(move |_req| {
        let (arrived, dropped) = (arrived_tx.clone(), dropped_tx.clone());
        async move {
            let _guard = OnDrop(dropped);
            arrived.send(()).await.unwrap();
            std::future::pending::<()>().await;
            Response::new(full(""))
        }
    })
    .await;
    let mut o = Opts::new(vec![backend_route("/", &format!("http://{up}"))]);
    o.proxy.response_header_timeout = None;
    let gw = gateway(o).await;
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(b"GET /hold HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    tokio::time::timeout(DEADLINE, arrived_rx.recv())
        .await
        .unwrap()
        .unwrap();
    drop(tcp);
    // The upstream's handler future is dropped only when hyper sees its connection close.
    tokio::time::timeout(DEADLINE, dropped_rx.recv())
        .await
        .expect("upstream connection was not closed after the client left")
        .unwrap();
}

/// Starts `requests` requests on as many connections, all held by the upstream until released,
/// then drains: the listener must refuse new connections at once, every held request must still
/// be answered, and `serve` must return Ok.
async fn drain_finishes_in_flight_requests(workers: usize, requests: usize) {
    let (arrived_tx, mut arrived_rx) = mpsc::channel::<()>(requests);
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let up = spawn_upstream(move |_req| {
        let arrived = arrived_tx.clone();
        let mut release = release_rx.clone();
        async move {
            arrived.send(()).await.unwrap();
            release.wait_for(|r| *r).await.unwrap();
            Response::new(full("finished"))
        }
    })
    .await;
    let mut o = Opts::new(vec![backend_route("/", &format!("http://{up}"))]);
    o.http.workers = workers;
    let gw = gateway(o).await;
    let addr = gw.addr;
    let mut in_flight = Vec::new();
    for _ in 0..requests {
        in_flight.push(tokio::spawn(async move { get(addr, "/slow", &[]).await }));
        // One at a time, so that each connection is accepted (and given to a worker) in turn.
        tokio::time::timeout(DEADLINE, arrived_rx.recv())
            .await
            .unwrap()
            .unwrap();
    }

    gw.shutdown.cancel();
    let refused = tokio::time::timeout(DEADLINE, async {
        loop {
            if TcpStream::connect(addr).await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(refused.is_ok(), "listener still accepting after shutdown");
    assert!(gw.health.is_draining());
    assert!(!gw.task.is_finished());

    release_tx.send(true).unwrap();
    for request in in_flight {
        let (status, _, body) = request.await.unwrap();
        assert_eq!((status.as_u16(), body.as_str()), (200, "finished"));
    }
    let result = tokio::time::timeout(DEADLINE, gw.task)
        .await
        .unwrap()
        .unwrap();
    assert!(result.is_ok());
}

#[tokio::test]
async fn drain_finishes_in_flight_request_and_refuses_new_connections() {
    drain_finishes_in_flight_requests(0, 1).await;
}

#[tokio::test]
async fn drain_finishes_in_flight_requests_on_every_worker() {
    drain_finishes_in_flight_requests(3, 6).await;
}

#[tokio::test]
async fn drain_timeout_bounds_the_wait() {
    let (arrived_tx, mut arrived_rx) = mpsc::channel::<()>(1);
    let up = spawn_upstream(move |_req| {
        let arrived = arrived_tx.clone();
        async move {
            arrived.send(()).await.unwrap();
            std::future::pending::<()>().await;
            Response::new(full(""))
        }
    })
    .await;
    let mut o = Opts::new(vec![backend_route("/", &format!("http://{up}"))]);
    o.proxy.response_header_timeout = None;
    o.http.drain_timeout = GoDuration(Duration::from_millis(300));
    let gw = gateway(o).await;
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    tokio::time::timeout(DEADLINE, arrived_rx.recv())
        .await
        .unwrap()
        .unwrap();
    let started = tokio::time::Instant::now();
    gw.shutdown.cancel();
    let result = tokio::time::timeout(DEADLINE, gw.task)
        .await
        .unwrap()
        .unwrap();
    assert!(result.is_ok());
    assert!(started.elapsed() < DEADLINE);
    let mut buf = Vec::new();
    let n = tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut buf))
        .await
        .unwrap();
    assert!(
        n.is_err() || buf.is_empty(),
        "got a response: {:?}",
        String::from_utf8_lossy(&buf)
    );
}

#[tokio::test]
async fn slowloris_head_is_cut_off() {
    let mut o = Opts::new(vec![]);
    o.http.header_read_timeout = GoDuration(Duration::from_millis(300));
    let gw = gateway(o).await;
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: gw\r\nX-Slow: ")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "connection still open");
    // hyper answers a head timeout by closing the connection, optionally after a 408.
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
}

#[tokio::test]
async fn oversized_head_is_431() {
    let mut o = Opts::new(vec![]);
    o.http.max_header_bytes = 8192;
    let gw = gateway(o).await;
    let big = "a".repeat(20_000);
    let req = format!("GET / HTTP/1.1\r\nHost: gw\r\nX-Big: {big}\r\n\r\n");
    let out = raw(gw.addr, req.as_bytes()).await;
    assert!(
        out.starts_with("HTTP/1.1 431"),
        "{}",
        &out[..out.len().min(200)]
    );
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed() {
    let up = echo_upstream().await;
    let mut o = Opts::new(vec![backend_route("/", &format!("http://{up}"))]);
    o.http.header_read_timeout = GoDuration::default();
    o.http.idle_timeout = GoDuration(Duration::from_millis(300));
    let gw = gateway(o).await;
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut buf))
        .await
        .expect("idle connection not closed")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn bind_conflict_names_the_address() {
    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let http = Http {
        addr: addr.clone(),
        tls: false,
        ..Http::default()
    };
    let err = Server::bind(&http, Arc::default(), Health::new())
        .await
        .err()
        .expect("bind must fail");
    assert!(matches!(err, StartupError::AddrInUse { .. }), "{err}");
    assert!(err.to_string().contains(&addr), "{err}");
}

#[tokio::test]
async fn tls_with_generated_certificate_negotiates_h2() {
    let up = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("proxy/server.crt");
    let key = dir.path().join("proxy/server.key");
    let mut o = Opts::new(vec![backend_route("/", &format!("http://{up}"))]);
    o.http.tls = true;
    o.http.tls_cert = cert.to_string_lossy().into_owned();
    o.http.tls_key = key.to_string_lossy().into_owned();
    let gw = gateway(o).await;

    let pem = std::fs::read(&cert).expect("certificate written at start-up");
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));

    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let resp = send
        .send_request(
            Request::get("https://gw.example/tls?x=1")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("strict-transport-security"));
    let body = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert!(body.starts_with("GET /tls?x=1\n"), "{body}");
    // HTTP/2 has no Host header: it is synthesised from :authority.
    assert!(body.contains("\nhost: gw.example\n"), "{body}");
    assert!(body.contains("\nx-forwarded-proto: https\n"), "{body}");
}

/// Opens a keep-alive HTTP/1.1 connection.
async fn connect(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

async fn send(
    conn: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    path: &str,
) -> (StatusCode, String) {
    send_method(conn, "GET", path).await
}

async fn send_method(
    conn: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    method: &str,
    path: &str,
) -> (StatusCode, String) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "gw.test")
        .body(Empty::new())
        .unwrap();
    let resp = tokio::time::timeout(DEADLINE, conn.send_request(req))
        .await
        .expect("answered in time")
        .unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn three_workers_serve_six_keep_alive_connections() {
    let up = echo_upstream().await;
    let mut o = Opts::new(vec![backend_route("/", &format!("http://{up}"))]);
    o.http.workers = 3;
    let gw = gateway(o).await;
    let mut conns = Vec::new();
    for i in 0..6 {
        let mut conn = connect(gw.addr).await;
        let (status, body) = send(&mut conn, &format!("/first/{i}")).await;
        assert_eq!(status, 200, "connection {i}: {body}");
        assert!(body.starts_with(&format!("GET /first/{i}\n")), "{body}");
        conns.push(conn);
    }
    for (i, conn) in conns.iter_mut().enumerate() {
        let (status, body) = send(conn, &format!("/again/{i}")).await;
        assert_eq!(status, 200, "connection {i}: {body}");
        assert!(body.starts_with(&format!("GET /again/{i}\n")), "{body}");
    }
    gw.shutdown.cancel();
    let result = tokio::time::timeout(DEADLINE, gw.task)
        .await
        .unwrap()
        .unwrap();
    assert!(result.is_ok());
}

/// The thread's id as the kernel knows it, to check later that the thread is gone.
#[cfg(target_os = "linux")]
fn kernel_thread() -> std::path::PathBuf {
    std::path::Path::new("/proc").join(std::fs::read_link("/proc/thread-self").unwrap())
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn connections_are_spread_over_worker_threads_that_end_with_serve() {
    let http = Http {
        addr: "127.0.0.1:0".into(),
        tls: false,
        workers: 3,
        ..Http::default()
    };
    let server = Server::bind(&http, Arc::default(), Health::new())
        .await
        .unwrap();
    assert_eq!(server.workers(), 3);
    let addr = server.local_addr().unwrap();
    let made = Arc::new(std::sync::Mutex::new(Vec::new()));
    let made_by = made.clone();
    let shutdown = CancellationToken::new();
    // Every worker builds its own service; each response names the thread that produced it.
    let task = tokio::spawn(server.serve(
        move || {
            let me = std::thread::current().name().unwrap_or("").to_owned();
            made_by.lock().unwrap().push((me, kernel_thread()));
            tower::service_fn(|_req: Request<Incoming>| async {
                let me = std::thread::current().name().unwrap_or("").to_owned();
                let body = Full::new(Bytes::from(me)).map_err(|e| match e {});
                Ok::<_, Infallible>(Response::new(body.boxed_unsync()))
            })
        },
        shutdown.clone(),
    ));

    let mut conns = Vec::new();
    let mut served_by = Vec::new();
    for _ in 0..6 {
        let mut conn = connect(addr).await;
        let (status, thread) = send(&mut conn, "/").await;
        assert_eq!(status, 200);
        served_by.push(thread);
        conns.push(conn);
    }
    for (conn, thread) in conns.iter_mut().zip(&served_by) {
        assert_eq!(
            &send(conn, "/").await.1,
            thread,
            "a connection stays on its worker"
        );
    }
    let mut per_thread = BTreeMap::new();
    for thread in &served_by {
        *per_thread.entry(thread.clone()).or_insert(0) += 1;
    }
    assert_eq!(
        per_thread,
        BTreeMap::from([
            ("gatehouse-http-0".to_owned(), 2),
            ("gatehouse-http-1".to_owned(), 2),
            ("gatehouse-http-2".to_owned(), 2),
        ]),
        "the least busy worker gets each new connection"
    );
    let made: Vec<_> = made.lock().unwrap().clone();
    let mut makers: Vec<&str> = made.iter().map(|(name, _)| name.as_str()).collect();
    makers.sort_unstable();
    assert_eq!(
        makers,
        ["gatehouse-http-0", "gatehouse-http-1", "gatehouse-http-2"],
        "one service per worker, built on the worker"
    );

    shutdown.cancel();
    let result = tokio::time::timeout(DEADLINE, task).await.unwrap().unwrap();
    assert!(result.is_ok());
    for (name, tid) in &made {
        assert!(!tid.exists(), "{name} still running after serve returned");
    }
}

// ---- the upstream connection pool (one per worker, driven by the requests that use it) ----

/// Counts the upstream's accepted connections.
struct Counted {
    addr: SocketAddr,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
}

/// Like [`spawn_upstream`], counting the connections it accepts.
async fn counted_upstream<F, Fut>(handler: F) -> Counted
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<UpBody>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let h = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let h = h.clone();
                    async move { Ok::<_, Infallible>(h(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Counted { addr, accepted }
}

fn one_worker(routes: Vec<RouteConfig>) -> Opts {
    let mut o = Opts::new(routes);
    o.http.workers = 1;
    o
}

/// A gateway with one HTTP worker (so one upstream pool) routing everything to `upstream`.
async fn one_worker_gateway(upstream: SocketAddr) -> Gateway {
    gateway(one_worker(vec![backend_route(
        "/",
        &format!("http://{upstream}"),
    )]))
    .await
}

/// One request on a connection of its own.
async fn request(addr: SocketAddr, method: &str, path: &str) -> (StatusCode, String) {
    send_method(&mut connect(addr).await, method, path).await
}

#[tokio::test]
async fn one_upstream_connection_serves_sequential_requests_with_and_without_bodies() {
    let up = counted_upstream(|req: Request<Incoming>| async move {
        match req.uri().path() {
            "/none" => Response::builder().status(204).body(full("")).unwrap(),
            "/zero" => Response::new(full("")),
            _ => Response::new(full("a body")),
        }
    })
    .await;
    let gw = one_worker_gateway(up.addr).await;
    for round in 0..3 {
        assert_eq!(
            request(gw.addr, "GET", "/body").await,
            (StatusCode::OK, "a body".into())
        );
        assert_eq!(
            request(gw.addr, "GET", "/none").await.0,
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            request(gw.addr, "GET", "/zero").await,
            (StatusCode::OK, String::new())
        );
        assert_eq!(
            request(gw.addr, "HEAD", "/body").await,
            (StatusCode::OK, String::new())
        );
        assert_eq!(
            up.accepted.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "round {round}: every answer should have returned the connection to the pool"
        );
    }
}

/// A raw upstream that answers one request per connection and then closes it without saying so
/// (no `Connection: close`), telling the test once it has closed.
async fn closing_upstream() -> (
    SocketAddr,
    mpsc::Receiver<()>,
    Arc<std::sync::atomic::AtomicUsize>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (closed_tx, closed_rx) = mpsc::channel(8);
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let closed = closed_tx.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                drop(tcp);
                let _ = closed.send(()).await;
            });
        }
    });
    (addr, closed_rx, accepted)
}

#[tokio::test]
async fn an_idle_connection_the_upstream_closed_is_replaced_without_an_error() {
    let (addr, mut closed, accepted) = closing_upstream().await;
    let gw = one_worker_gateway(addr).await;
    for i in 1..=3 {
        assert_eq!(
            request(gw.addr, "GET", "/x").await,
            (StatusCode::OK, "ok".into())
        );
        tokio::time::timeout(DEADLINE, closed.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), i);
    }
}

#[tokio::test]
async fn connections_idle_longer_than_the_pool_idle_timeout_are_closed() {
    // The upstream tells when the gateway closes its connection.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (eof_tx, mut eof_rx) = mpsc::channel::<std::time::Instant>(1);
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let mut head = Vec::new();
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tcp.read(&mut buf).await.unwrap();
            head.extend_from_slice(&buf[..n]);
        }
        tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .unwrap();
        while tcp.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        let _ = eof_tx.send(std::time::Instant::now()).await;
    });
    let mut o = one_worker(vec![backend_route("/", &format!("http://{addr}"))]);
    let idle = Duration::from_millis(300);
    o.proxy.pool_idle_timeout = Some(idle);
    let gw = gateway(o).await;
    assert_eq!(request(gw.addr, "GET", "/x").await.0, StatusCode::OK);
    let answered = std::time::Instant::now();
    let closed = tokio::time::timeout(DEADLINE, eof_rx.recv())
        .await
        .expect("the idle upstream connection was never closed")
        .unwrap();
    let after = closed - answered;
    assert!(
        after >= idle,
        "closed after {after:?}, before the idle timeout {idle:?}"
    );
}

#[tokio::test]
async fn an_answer_before_the_upload_ended_does_not_leave_a_busy_connection_in_the_pool() {
    let up = counted_upstream(|req: Request<Incoming>| async move {
        if req.uri().path() == "/upload" {
            // Refuses without reading the body.
            return Response::builder()
                .status(413)
                .body(full("too big"))
                .unwrap();
        }
        Response::new(full("fine"))
    })
    .await;
    let gw = one_worker_gateway(up.addr).await;
    // Announces a megabyte and sends only the start of it.
    let mut tcp = start_upload(gw.addr, 4096).await;
    let head = read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    // The upload is still unfinished; other requests get a connection that is free.
    for _ in 0..3 {
        assert_eq!(
            request(gw.addr, "GET", "/other").await,
            (StatusCode::OK, "fine".into())
        );
    }
}

/// Reads one HTTP/1.1 message head (up to its blank line) from `tcp`.
async fn read_head(tcp: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(DEADLINE, tcp.read_exact(&mut byte))
            .await
            .expect("no complete head")
            .expect("connection closed inside a head");
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .unwrap_or(0)
}

/// Reads one response with a `Content-Length` body: its status line and body.
async fn read_response(tcp: &mut TcpStream) -> (String, String) {
    let head = read_head(tcp).await;
    let mut body = vec![0u8; content_length(&head)];
    tokio::time::timeout(DEADLINE, tcp.read_exact(&mut body))
        .await
        .expect("no complete body")
        .unwrap();
    let status = head.lines().next().unwrap().to_owned();
    (status, String::from_utf8(body).unwrap())
}

/// An upstream written on the socket, for answers hyper's server would not give: on `/upload` it
/// answers as soon as it has the head; `refuse` then closes without reading the body, otherwise
/// it reads the body afterwards and reports its length on `uploaded`. Other requests get "fine".
async fn early_answering_upstream(refuse: bool) -> (Counted, mpsc::UnboundedReceiver<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    let (uploaded_tx, uploaded) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let uploaded = uploaded_tx.clone();
            tokio::spawn(async move {
                loop {
                    let head = read_head(&mut tcp).await;
                    let length = content_length(&head);
                    if head.starts_with("PUT /upload ") && refuse {
                        let _ = tcp
                            .write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 7\r\nConnection: close\r\n\r\ntoo big")
                            .await;
                        return;
                    }
                    let answer: &[u8] = if head.starts_with("PUT /upload ") {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nstored"
                    } else {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfine"
                    };
                    tcp.write_all(answer).await.unwrap();
                    let mut body = vec![0u8; length];
                    if tcp.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    if head.starts_with("PUT /upload ") {
                        let _ = uploaded.send(body.len());
                    }
                }
            });
        }
    });
    (Counted { addr, accepted }, uploaded)
}

const UPLOAD: usize = 1024 * 1024;

/// A connection to `gw` with a `PUT /upload` of [`UPLOAD`] bytes begun: its head and `sent` bytes.
async fn start_upload(gw: SocketAddr, sent: usize) -> TcpStream {
    let mut tcp = TcpStream::connect(gw).await.unwrap();
    let head = format!("PUT /upload HTTP/1.1\r\nHost: gw\r\nContent-Length: {UPLOAD}\r\n\r\n");
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&vec![b'x'; sent]).await.unwrap();
    tcp
}

/// The connection serves another request after the upload.
async fn next_request_is_answered(tcp: &mut TcpStream) {
    tcp.write_all(b"GET /other HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_response(tcp).await,
        ("HTTP/1.1 200 OK".to_owned(), "fine".to_owned())
    );
}

#[tokio::test]
async fn an_answer_before_the_upload_ended_is_followed_by_the_rest_of_the_body() {
    let (up, mut uploaded) = early_answering_upstream(false).await;
    let gw = one_worker_gateway(up.addr).await;
    let mut tcp = start_upload(gw.addr, 64 * 1024).await;
    // The answer comes while most of the upload is still to be sent.
    assert_eq!(
        read_response(&mut tcp).await,
        ("HTTP/1.1 200 OK".to_owned(), "stored".to_owned())
    );
    tcp.write_all(&vec![b'x'; UPLOAD - 64 * 1024])
        .await
        .unwrap();
    let got = tokio::time::timeout(DEADLINE, uploaded.recv())
        .await
        .unwrap();
    assert_eq!(got, Some(UPLOAD), "the upstream got the whole upload");
    // The client's connection and the upstream's both serve the next request.
    next_request_is_answered(&mut tcp).await;
    assert_eq!(up.accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_upstream_that_refuses_an_upload_unread_leaves_the_client_its_answer_and_connection() {
    let (up, _uploaded) = early_answering_upstream(true).await;
    let gw = one_worker_gateway(up.addr).await;
    let mut tcp = start_upload(gw.addr, 4096).await;
    let (status, body) = read_response(&mut tcp).await;
    assert!(status.starts_with("HTTP/1.1 413"), "{status}");
    assert_eq!(body, "too big");
    // The rest of the upload is read and dropped by the gateway, not reset.
    tcp.write_all(&vec![b'x'; UPLOAD - 4096]).await.unwrap();
    next_request_is_answered(&mut tcp).await;
    // The refusing connection was closed; the next request had a new one.
    assert_eq!(up.accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_download_abandoned_by_the_client_closes_its_upstream_connection() {
    let (dropped_tx, mut dropped_rx) = mpsc::channel::<()>(1);
    let up = counted_upstream(move |req: Request<Incoming>| {
        let dropped = dropped_tx.clone();
        async move {
            if req.uri().path() != "/endless" {
                return Response::new(full("short"));
            }
            let (tx, rx) = mpsc::channel::<Result<hyper::body::Frame<Bytes>, Infallible>>(1);
            tokio::spawn(async move {
                while tx
                    .send(Ok(hyper::body::Frame::data(Bytes::from_static(
                        &[b'y'; 8192],
                    ))))
                    .await
                    .is_ok()
                {}
                // The body is gone: hyper dropped it when the gateway closed the connection.
                let _ = dropped.send(()).await;
            });
            let frames = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|frame| (frame, rx))
            });
            let body = http_body_util::StreamBody::new(frames);
            Response::new(BodyExt::boxed(body))
        }
    })
    .await;
    let gw = one_worker_gateway(up.addr).await;
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(b"GET /endless HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    let mut start = [0u8; 64];
    tokio::time::timeout(DEADLINE, tcp.read_exact(&mut start))
        .await
        .unwrap()
        .unwrap();
    drop(tcp);
    tokio::time::timeout(DEADLINE, dropped_rx.recv())
        .await
        .expect("the upstream connection of an abandoned download stayed open")
        .unwrap();
    assert_eq!(
        request(gw.addr, "GET", "/short").await,
        (StatusCode::OK, "short".into())
    );
    assert_eq!(up.accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
}

/// A raw upstream: for each request head (bodies are not expected) it writes `answer(path,
/// request number on this connection)`, and closes the connection when that says so — or, for
/// `None`, closes it without answering.
/// What a scripted upstream writes for a request path and the request's number on its
/// connection: the bytes and whether to close afterwards; `None` closes without answering.
type Script = fn(&str, usize) -> Option<(&'static [u8], bool)>;

async fn scripted_upstream(answer: Script) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut pending = Vec::new();
                let mut buf = [0u8; 4096];
                for nth in 1.. {
                    let end = loop {
                        if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match tcp.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => pending.extend_from_slice(&buf[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&pending[..end]).into_owned();
                    pending.drain(..end);
                    let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                    let Some((bytes, close)) = answer(&path, nth) else {
                        return;
                    };
                    if tcp.write_all(bytes).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn interim_chunked_and_close_delimited_answers_are_relayed() {
    let (addr, _) = scripted_upstream(|path, _| {
        Some(match path {
            "/interim" => (
                &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ndone"[..],
                false,
            ),
            "/chunked" => (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n",
                false,
            ),
            "/until-close" => (b"HTTP/1.1 200 OK\r\n\r\nstreamed until the end", true),
            _ => (b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n", false),
        })
    })
    .await;
    let gw = one_worker_gateway(addr).await;
    for _ in 0..2 {
        assert_eq!(
            request(gw.addr, "GET", "/interim").await,
            (StatusCode::OK, "done".into())
        );
        assert_eq!(
            request(gw.addr, "GET", "/chunked").await,
            (StatusCode::OK, "hello world".into())
        );
        assert_eq!(
            request(gw.addr, "GET", "/until-close").await,
            (StatusCode::OK, "streamed until the end".into())
        );
    }
}

#[tokio::test]
async fn a_malformed_or_truncated_upstream_answer_is_a_502_or_a_cut_body() {
    let (addr, _) = scripted_upstream(|path, _| {
        Some(match path {
            "/two-lengths" => (
                &b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd"[..],
                true,
            ),
            "/garbage" => (b"SMTP ready\r\n\r\n", true),
            _ => (
                b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this",
                true,
            ),
        })
    })
    .await;
    let gw = one_worker_gateway(addr).await;
    assert_eq!(
        request(gw.addr, "GET", "/two-lengths").await.0,
        StatusCode::BAD_GATEWAY
    );
    assert_eq!(
        request(gw.addr, "GET", "/garbage").await.0,
        StatusCode::BAD_GATEWAY
    );
    // The client never sees a complete answer: the body ends early, or (when the gateway learns
    // of the cut before it has flushed the head) the connection closes without one.
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/cut")
        .header("host", "gw")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let outcome = tokio::time::timeout(DEADLINE, async move {
        let resp = send.send_request(req).await?;
        assert_eq!(resp.status(), StatusCode::OK);
        resp.into_body().collect().await.map(|b| b.to_bytes())
    })
    .await
    .unwrap();
    assert!(
        outcome.is_err(),
        "a truncated body arrived as complete: {outcome:?}"
    );
}

#[tokio::test]
async fn an_idempotent_request_is_sent_again_when_a_reused_connection_closes_unanswered() {
    // Each connection answers its first request and closes on the second without answering.
    let (addr, accepted) = scripted_upstream(|_, nth| {
        (nth == 1).then_some((
            &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"[..],
            false,
        ))
    })
    .await;
    let gw = one_worker_gateway(addr).await;
    assert_eq!(
        request(gw.addr, "GET", "/first").await,
        (StatusCode::OK, "ok".into())
    );
    assert_eq!(
        request(gw.addr, "GET", "/again").await,
        (StatusCode::OK, "ok".into())
    );
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    // A POST could have been acted on: it is not sent twice.
    let answer = raw(
        gw.addr,
        b"POST /once HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test]
async fn request_bodies_of_unknown_length_are_chunked_and_arrive_whole() {
    let up = counted_upstream(|req: Request<Incoming>| async move {
        let framing = format!(
            "{:?}/{:?}",
            req.headers().get("transfer-encoding"),
            req.headers().get("content-length")
        );
        let body = req.into_body().collect().await.unwrap().to_bytes();
        Response::new(full(format!(
            "{framing} {}",
            String::from_utf8_lossy(&body)
        )))
    })
    .await;
    let gw = one_worker_gateway(up.addr).await;
    let answer = raw(
        gw.addr,
        b"PUT /up HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
          4\r\nabcd\r\n3\r\nefg\r\n0\r\n\r\n",
    )
    .await;
    assert!(
        answer.ends_with("Some(\"chunked\")/None abcdefg"),
        "{answer}"
    );
    let answer = raw(
        gw.addr,
        b"PUT /up HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .await;
    assert!(answer.ends_with("None/Some(\"5\") hello"), "{answer}");
}
