//! The listener against real sockets: how long a client that never completes a request may hold a
//! connection, and that clients that do are not cut off.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use gatehouse_shared::config::{GoDuration, Http};

use super::Server;
use crate::context::Body;
use crate::health::Health;
use crate::proxy::forwarded::TrustedProxies;

const HEADER_READ: Duration = Duration::from_millis(400);
/// Far above `HEADER_READ`: a connection closed before this was closed by the header deadline.
const IDLE: Duration = Duration::from_secs(60);
/// How long a test waits for the server to close a connection.
const CLOSE_DEADLINE: Duration = Duration::from_secs(10);
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame.
const H2_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

struct Running {
    addr: SocketAddr,
    shutdown: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start() -> Running {
    let http = Http {
        addr: "127.0.0.1:0".to_owned(),
        tls: false,
        header_read_timeout: GoDuration(HEADER_READ),
        idle_timeout: GoDuration(IDLE),
        workers: 1,
        ..Http::default()
    };
    let trusted = Arc::new(TrustedProxies::parse(&[]).unwrap());
    let server = Server::bind(&http, trusted, Health::new()).await.unwrap();
    let addr = server.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let service = || {
        tower::service_fn(|req: Request<hyper::body::Incoming>| async move {
            if req.uri().path() == "/slow" {
                tokio::time::sleep(HEADER_READ * 2).await;
            }
            let body: Body = Full::new(Bytes::from_static(b"ok"))
                .map_err(|never| match never {})
                .boxed_unsync();
            Ok::<_, Infallible>(Response::new(body))
        })
    };
    tokio::spawn(server.serve(service, shutdown.clone()));
    Running { addr, shutdown }
}

/// Sends `bytes`, keeps the write side open, and returns how long after connecting the server
/// closed the connection (or `None` if it was still open after [`CLOSE_DEADLINE`]).
async fn closed_after(addr: SocketAddr, bytes: &[u8]) -> Option<Duration> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut buf = [0u8; 1024];
    loop {
        let left = CLOSE_DEADLINE.checked_sub(started.elapsed())?;
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

fn assert_closed_by_header_deadline(what: &str, closed: Option<Duration>) {
    let closed = closed.unwrap_or_else(|| panic!("{what}: still open after {CLOSE_DEADLINE:?}"));
    assert!(
        closed >= HEADER_READ,
        "{what}: closed after {closed:?}, before header_read_timeout"
    );
}

#[tokio::test]
async fn silent_connection_is_closed_after_header_read_timeout() {
    let server = start().await;
    assert_closed_by_header_deadline("nothing sent", closed_after(server.addr, b"").await);
}

#[tokio::test]
async fn prefix_of_the_http2_preface_is_closed_after_header_read_timeout() {
    let server = start().await;
    assert_closed_by_header_deadline(
        "preface prefix",
        closed_after(server.addr, &H2_PREFACE[..16]).await,
    );
}

#[tokio::test]
async fn http2_connection_without_a_request_is_closed_after_header_read_timeout() {
    let server = start().await;
    let bytes = [H2_PREFACE, H2_SETTINGS].concat();
    assert_closed_by_header_deadline(
        "preface and SETTINGS",
        closed_after(server.addr, &bytes).await,
    );
}

#[tokio::test]
async fn http1_head_cut_short_is_closed_after_header_read_timeout() {
    let server = start().await;
    assert_closed_by_header_deadline(
        "request line only",
        closed_after(server.addr, b"GET / HTTP/1.1\r\n").await,
    );
}

#[tokio::test]
async fn http1_head_sent_in_parts_within_the_deadline_is_served() {
    let server = start().await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    tokio::time::sleep(HEADER_READ / 4).await;
    stream
        .write_all(b"Host: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(CLOSE_DEADLINE, stream.read_to_end(&mut answer))
        .await
        .expect("answered")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
}

#[tokio::test]
async fn http2_connection_outlives_the_deadline_once_it_has_made_a_request() {
    let server = start().await;
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (mut client, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let get = || {
        Request::get(format!("http://{}/", server.addr))
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    let first = client.send_request(get()).await.unwrap();
    assert_eq!(first.status(), 200);
    first.into_body().collect().await.unwrap();
    // The deadline only concerns the first request: well past it, the connection still serves.
    tokio::time::sleep(HEADER_READ * 3).await;
    let second = client.send_request(get()).await.unwrap();
    assert_eq!(second.status(), 200);
    assert!(!conn.is_finished());
}

/// Sends one request on `stream` and reads its answer (the test service's body is `ok`).
async fn request(stream: &mut TcpStream, path: &str) {
    let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.ends_with(b"ok") {
        let n = tokio::time::timeout(CLOSE_DEADLINE, stream.read(&mut buf))
            .await
            .expect("answered")
            .unwrap();
        assert!(n > 0, "closed before answering {path}");
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 200 "), "{answer:?}");
}

/// How long after `since` the server closed `stream`, which sends nothing more.
async fn closed_since(stream: &mut TcpStream, since: Instant) -> Option<Duration> {
    let mut buf = [0u8; 1024];
    match tokio::time::timeout(CLOSE_DEADLINE, stream.read(&mut buf)).await {
        Err(_) => None,
        Ok(Ok(0) | Err(_)) => Some(since.elapsed()),
        Ok(Ok(n)) => panic!("unexpected {n} bytes"),
    }
}

#[tokio::test]
async fn http1_keep_alive_connection_is_closed_header_read_timeout_after_its_last_answer() {
    let server = start().await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    // Well past the deadline from the connection's start: each answer restarts it.
    for _ in 0..3 {
        request(&mut stream, "/").await;
        tokio::time::sleep(HEADER_READ / 2).await;
    }
    let answered = Instant::now();
    request(&mut stream, "/").await;
    assert_closed_by_header_deadline("idle keep-alive", closed_since(&mut stream, answered).await);
}

#[tokio::test]
async fn http1_second_head_cut_short_is_closed_after_header_read_timeout() {
    let server = start().await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    request(&mut stream, "/").await;
    let cut = Instant::now();
    stream.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    assert_closed_by_header_deadline(
        "second head cut short",
        closed_since(&mut stream, cut).await,
    );
}

#[tokio::test]
async fn http1_request_slower_than_the_deadline_is_answered_and_the_connection_kept() {
    let server = start().await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    request(&mut stream, "/slow").await;
    request(&mut stream, "/").await;
}
