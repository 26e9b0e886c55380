//! The reverse proxy against `https` upstreams: small hyper servers behind rustls with rcgen
//! certificates, the gateway built from a `Config` the way the binary builds it.

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gatehouse_node::health::Health;
use gatehouse_node::identity::Identity as NodeIdentity;
use gatehouse_node::server::{ServerDeps, StartupError};
use gatehouse_node::telemetry::Metrics;
use gatehouse_shared::config::{Config, GoDuration};
use gatehouse_shared::routing::{PolicyConfig, RouteConfig};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(10);

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A self-signed certificate for `localhost` and `127.0.0.1`, its PEM file, and its key.
struct Identity {
    _dir: tempfile::TempDir,
    pem: PathBuf,
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

fn identity() -> Identity {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("upstream-ca.pem");
    std::fs::write(&pem, ck.cert.pem()).unwrap();
    Identity {
        pem,
        cert: ck.cert.der().clone(),
        key: PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()),
        _dir: dir,
    }
}

/// Presents a certificate with a key that does not belong to it: only a client that checks
/// handshake signatures notices.
#[derive(Debug)]
struct MismatchedKey(Arc<CertifiedKey>);

impl ResolvesServerCert for MismatchedKey {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

fn server_config(id: &Identity, mismatched: bool) -> ServerConfig {
    let builder = ServerConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth();
    let mut config = if mismatched {
        let other = rcgen::KeyPair::generate().unwrap();
        let other = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(other.serialize_der()));
        let key = ring().key_provider.load_private_key(other).unwrap();
        builder.with_cert_resolver(Arc::new(MismatchedKey(Arc::new(CertifiedKey::new(
            vec![id.cert.clone()],
            key,
        )))))
    } else {
        builder
            .with_single_cert(
                vec![id.cert.clone()],
                PrivateKeyDer::Pkcs8(id.key.clone_key()),
            )
            .unwrap()
    };
    // Offering h2 shows that the gateway asks for HTTP/1.1 only.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

/// A TLS upstream. Answers with the request line, the SNI and ALPN of its connection, bridges
/// `Upgrade: echo` requests to an echo loop, and answers `/count` with the length of the body it
/// read. Counts requests that reached it.
struct Upstream {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
}

async fn tls_upstream(config: ServerConfig) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let (_, conn) = tls.get_ref();
                let sni = conn.server_name().unwrap_or("-").to_owned();
                let alpn = conn
                    .alpn_protocol()
                    .map_or("-".to_owned(), |p| String::from_utf8_lossy(p).into_owned());
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let (sni, alpn) = (sni.clone(), alpn.clone());
                    async move {
                        if req.uri().path() == "/count" {
                            // Reads the whole body, slowly enough that the sender meets
                            // backpressure, and answers how many bytes arrived.
                            let mut body = req.into_body();
                            let mut n = 0;
                            while let Some(frame) = body.frame().await {
                                n += frame
                                    .ok()
                                    .and_then(|f| f.into_data().ok())
                                    .map_or(0, |d| d.len());
                                tokio::task::yield_now().await;
                            }
                            return Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(
                                n.to_string(),
                            ))));
                        }
                        Ok(answer(req, &sni, &alpn))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Upstream { addr, requests }
}

fn answer(mut req: Request<Incoming>, sni: &str, alpn: &str) -> Response<Full<Bytes>> {
    if req.headers().get("upgrade").is_some_and(|v| v == "echo") {
        let on = hyper::upgrade::on(&mut req);
        common::spawn_upgraded_echo(on);
        return Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "echo")
            .body(Full::default())
            .unwrap();
    }
    let text = format!(
        "{} {} {:?}\nsni={sni}\nalpn={alpn}\n",
        req.method(),
        req.uri(),
        req.version()
    );
    Response::new(Full::new(Bytes::from(text)))
}

fn route(endpoint: &str, backend: &str) -> RouteConfig {
    RouteConfig {
        endpoint: endpoint.to_owned(),
        backend: backend.to_owned(),
        ..RouteConfig::default()
    }
}

fn config(routes: Vec<RouteConfig>) -> Config {
    let mut c = Config::default();
    c.http.addr = "127.0.0.1:0".into();
    c.http.tls = false;
    c.http.drain_timeout = GoDuration::secs(5);
    c.token_manager.jwt_secret = "https-upstream-test".into();
    c.policies = vec![PolicyConfig {
        name: "ocis".into(),
        // These tests are about the upstream connection, not authentication.
        routes: routes
            .into_iter()
            .map(|r| RouteConfig {
                unprotected: true,
                ..r
            })
            .collect(),
    }];
    c.upstream.connect_timeout = GoDuration::secs(2);
    c.upstream.response_header_timeout = GoDuration::secs(10);
    c
}

struct Gateway {
    addr: SocketAddr,
    _shutdown: tokio_util::sync::DropGuard,
}

async fn gateway(config: &Config) -> Gateway {
    let identity = NodeIdentity::standalone(config).await.unwrap();
    let (addr, _shutdown) = common::serve(config, identity).await;
    Gateway { addr, _shutdown }
}

/// A gateway routing everything to `up` without verifying its certificate.
async fn insecure_gateway(up: &Upstream) -> Gateway {
    let mut c = config(vec![route(
        "/",
        &format!("https://localhost:{}", up.addr.port()),
    )]);
    c.insecure_backends = true;
    gateway(&c).await
}

async fn get(addr: SocketAddr, path: &str) -> (StatusCode, String) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", "gw.test")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = tokio::time::timeout(DEADLINE, send.send_request(req))
        .await
        .expect("gateway answered in time")
        .unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Collects the log lines written on this thread (the tests run on a current-thread runtime, so
/// the gateway's tasks log here too).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let sink = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

#[tokio::test]
async fn trusted_through_backend_https_cacert() {
    let id = identity();
    let up = tls_upstream(server_config(&id, false)).await;
    let port = up.addr.port();
    let mut c = config(vec![
        route("/name/", &format!("https://localhost:{port}/base")),
        route("/ip/", &format!("https://127.0.0.1:{port}")),
    ]);
    c.backend_https_cacert = id.pem.display().to_string();
    let gw = gateway(&c).await;

    let (status, body) = get(gw.addr, "/name/x?q=1").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        "GET /base/name/x?q=1 HTTP/1.1\nsni=localhost\nalpn=http/1.1\n"
    );

    // An IP address is verified against the certificate's IP entry and sent without SNI.
    let (status, body) = get(gw.addr, "/ip/y").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "GET /ip/y HTTP/1.1\nsni=-\nalpn=http/1.1\n");
    assert_eq!(up.requests.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_untrusted_certificate_is_a_502_with_one_log_line() {
    let id = identity();
    let up = tls_upstream(server_config(&id, false)).await;
    let upstream = format!("https://localhost:{}", up.addr.port());
    let c = config(vec![route("/secure/", &upstream)]);
    let logs = Captured::default();
    let _guard = logs.install();
    let gw = gateway(&c).await;

    let (status, body) = get(gw.addr, "/secure/x").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(body, "");
    assert_eq!(up.requests.load(Ordering::SeqCst), 0);
    let lines = logs.lines();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let line = &lines[0];
    assert!(line.contains("upstream unavailable"), "{line}");
    assert!(line.contains("/secure/"), "route named: {line}");
    assert!(line.contains(&upstream), "upstream named: {line}");
    assert!(line.contains("certificate"), "reason given: {line}");
}

#[tokio::test]
async fn insecure_backends_skips_verification() {
    let id = identity();
    let up = tls_upstream(server_config(&id, false)).await;
    let gw = insecure_gateway(&up).await;
    let (status, body) = get(gw.addr, "/x").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.starts_with("GET /x HTTP/1.1\n"), "{body}");
    assert_eq!(up.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn insecure_backends_still_checks_handshake_signatures() {
    let id = identity();
    let up = tls_upstream(server_config(&id, true)).await;
    let gw = insecure_gateway(&up).await;
    let (status, _) = get(gw.addr, "/x").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(up.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_invalid_ca_file_stops_start_up_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "this is not a certificate\n").unwrap();
    let missing = dir.path().join("missing.pem");
    for path in [&not_pem, &missing] {
        let mut c = config(vec![route("/", "https://localhost:1")]);
        c.backend_https_cacert = path.display().to_string();
        let deps = ServerDeps {
            metrics: Metrics::new("test"),
            health: Health::new(),
            registry: None,
            shutdown: CancellationToken::new(),
            identity: NodeIdentity::standalone(&c).await.unwrap(),
            listener: None,
        };
        let err = tokio::time::timeout(DEADLINE, gatehouse_node::server::run(Arc::new(c), deps))
            .await
            .expect("start-up fails at once")
            .unwrap_err();
        assert!(matches!(err, StartupError::Pipeline(_)), "{err:?}");
        let text = err.to_string();
        assert!(text.starts_with("backend_https_cacert: "), "{text}");
        assert!(text.contains(&path.display().to_string()), "{text}");
    }
}

#[tokio::test]
async fn a_service_with_an_https_url_is_reached_over_tls() {
    let id = identity();
    let up = tls_upstream(server_config(&id, false)).await;
    let mut c = config(vec![RouteConfig {
        endpoint: "/graph/".into(),
        service: "com.owncloud.graph.graph".into(),
        ..RouteConfig::default()
    }]);
    c.services = BTreeMap::from([(
        "com.owncloud.graph.graph".to_owned(),
        vec![format!("https://localhost:{}", up.addr.port())],
    )]);
    c.backend_https_cacert = id.pem.display().to_string();
    let gw = gateway(&c).await;
    let (status, body) = get(gw.addr, "/graph/v1.0/me").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.starts_with("GET /graph/v1.0/me HTTP/1.1\nsni=localhost\n"),
        "{body}"
    );
}

#[tokio::test]
async fn a_stalled_tls_handshake_is_bounded_by_the_connect_timeout() {
    // Accepts TCP connections and never answers the ClientHello.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    let mut c = config(vec![route(
        "/",
        &format!("https://localhost:{}", addr.port()),
    )]);
    c.insecure_backends = true;
    c.upstream.connect_timeout = GoDuration(Duration::from_millis(300));
    c.upstream.response_header_timeout = GoDuration::secs(30);
    let gw = gateway(&c).await;
    let started = Instant::now();
    let (status, _) = get(gw.addr, "/x").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_upgrade_is_bridged_to_an_https_upstream() {
    let id = identity();
    let up = tls_upstream(server_config(&id, false)).await;
    let mut c = config(vec![route(
        "/",
        &format!("https://localhost:{}", up.addr.port()),
    )]);
    c.backend_https_cacert = id.pem.display().to_string();
    let gw = gateway(&c).await;
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(DEADLINE, tcp.read_exact(&mut byte))
            .await
            .unwrap()
            .unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
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
async fn a_large_upload_to_an_https_upstream_arrives_whole() {
    let id = identity();
    let up = tls_upstream(server_config(&id, false)).await;
    let gw = insecure_gateway(&up).await;
    const SIZE: usize = 24 * 1024 * 1024;
    for chunked in [false, true] {
        let tcp = TcpStream::connect(gw.addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        // Many frames of 64 KiB: the gateway writes them to TLS faster than the upstream reads.
        let frames = futures::stream::iter((0..SIZE / 65536).map(|_| {
            Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from(vec![b'u'; 65536])))
        }));
        let mut req = Request::put("/count").header("host", "gw.test");
        if !chunked {
            req = req.header("content-length", SIZE);
        }
        let req = req.body(http_body_util::StreamBody::new(frames)).unwrap();
        let resp = tokio::time::timeout(DEADLINE, send.send_request(req))
            .await
            .expect("the upload was answered in time")
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "chunked={chunked}");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, SIZE.to_string(), "chunked={chunked}");
    }
}
