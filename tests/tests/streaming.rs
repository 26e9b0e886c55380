//! Bodies stream through a node in both directions without being buffered: 4 GiB each way with
//! bounded memory, server-sent events arrive as they are sent, WebSocket upgrades work, HTTP/2
//! clients are served, and a client that goes away cancels the upstream request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use gatehouse_tests::client::{self, ReqBody};
use gatehouse_tests::node::GatehouseNode;
use gatehouse_tests::upstream::Upstream;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

const GIB4: u64 = 4 * 1024 * 1024 * 1024;
const RSS_BUDGET_KIB: u64 = 64 * 1024;

fn config(up: &Upstream) -> String {
    format!(
        "policies:\n  - name: ocis\n    routes:\n      - endpoint: /up\n        backend: {}\n        unprotected: true\n",
        up.url()
    )
}

/// Samples the node's RSS every 50 ms while `work` runs; returns the peak growth in KiB.
async fn peak_rss_growth<F: std::future::Future<Output = ()>>(
    node: &GatehouseNode,
    work: F,
) -> u64 {
    let base = node.rss_kib();
    let peak = Arc::new(AtomicU64::new(base));
    let done = Arc::new(AtomicBool::new(false));
    let pid = node.pid();
    let (p, d) = (peak.clone(), done.clone());
    let sampler = std::thread::spawn(move || {
        while !d.load(Ordering::SeqCst) {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            if let Some(kib) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
            {
                p.fetch_max(kib, Ordering::SeqCst);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    work.await;
    done.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    peak.load(Ordering::SeqCst).saturating_sub(base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_gib_upload_streams_with_bounded_memory() {
    let up = Upstream::start("up").await;
    let node = GatehouseNode::start(&config(&up)).await;
    let chunk = Bytes::from(vec![7u8; 256 * 1024]);
    let growth = peak_rss_growth(&node, async {
        let chunks = GIB4 / chunk.len() as u64;
        let c = chunk.clone();
        let stream = futures::stream::iter(0..chunks)
            .map(move |_| Ok::<_, std::io::Error>(Frame::data(c.clone())));
        let body: ReqBody = StreamBody::new(stream).map_err(|e| e.into()).boxed();
        let req = http::Request::put(node.url("/up/__upload"))
            .header("content-length", GIB4)
            .body(body)
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(300), client::client().request(req))
            .await
            .expect("upload finished in time")
            .expect("upload answered");
        assert_eq!(resp.status(), 200);
        let text = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            text,
            GIB4.to_string().as_bytes(),
            "the upstream received every byte"
        );
    })
    .await;
    eprintln!("4 GiB upload: peak RSS growth {growth} KiB");
    assert!(
        growth < RSS_BUDGET_KIB,
        "RSS grew by {growth} KiB during a 4 GiB upload"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_gib_download_streams_with_bounded_memory() {
    let up = Upstream::start("up").await;
    let node = GatehouseNode::start(&config(&up)).await;
    let growth = peak_rss_growth(&node, async {
        let req = http::Request::get(node.url(&format!("/up/__download?bytes={GIB4}")))
            .body(client::empty())
            .unwrap();
        let resp = client::client()
            .request(req)
            .await
            .expect("download answered");
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut n: u64 = 0;
        let read = async {
            while let Some(frame) = body.frame().await {
                if let Some(d) = frame.expect("body frame").data_ref() {
                    n += d.len() as u64;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(300), read)
            .await
            .expect("download finished in time");
        assert_eq!(n, GIB4, "every byte arrived");
    })
    .await;
    eprintln!("4 GiB download: peak RSS growth {growth} KiB");
    assert!(
        growth < RSS_BUDGET_KIB,
        "RSS grew by {growth} KiB during a 4 GiB download"
    );
}

#[tokio::test]
async fn server_sent_events_are_not_buffered() {
    let up = Upstream::start("up").await;
    let node = GatehouseNode::start(&config(&up)).await;
    let req = http::Request::get(node.url("/up/__sse"))
        .body(client::empty())
        .unwrap();
    let resp = client::client().request(req).await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("the first event arrives while the upstream still holds the second")
        .unwrap()
        .unwrap();
    assert_eq!(first.data_ref().unwrap().as_ref(), b"data: one\n\n");
    up.release_sse();
    let second = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(second.data_ref().unwrap().as_ref(), b"data: two\n\n");
}

#[tokio::test]
async fn websocket_upgrade_is_proxied() {
    let up = Upstream::start("up").await;
    let node = GatehouseNode::start(&config(&up)).await;
    let tcp = tokio::net::TcpStream::connect(node.http).await.unwrap();
    let url = format!("ws://{}/up/socket", node.http);
    let (mut ws, resp) = tokio_tungstenite::client_async(url, tcp)
        .await
        .expect("websocket handshake");
    assert_eq!(resp.status(), 101);
    for msg in ["hello", "world"] {
        ws.send(tokio_tungstenite::tungstenite::Message::text(msg))
            .await
            .unwrap();
        let echo = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echo.into_text().unwrap().as_str(), msg);
    }
}

#[tokio::test]
async fn http2_clients_are_served() {
    let up = Upstream::start("up").await;
    let node = GatehouseNode::start(&config(&up)).await;
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<ReqBody>();
    let req = http::Request::get(node.url("/up/h2?x=1"))
        .body(client::empty())
        .unwrap();
    let resp = h2.request(req).await.expect("h2c request");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let seen = up.last().unwrap();
    assert_eq!(seen.uri, "/up/h2?x=1");
    assert_eq!(
        seen.headers.get("host").unwrap(),
        node.http.to_string().as_str()
    );
}

#[tokio::test]
async fn client_disconnect_cancels_the_upstream_request() {
    let up = Upstream::start("up").await;
    let node = GatehouseNode::start(&config(&up)).await;
    let req = http::Request::get(node.url("/up/__hang"))
        .body(client::empty())
        .unwrap();
    let res = tokio::time::timeout(Duration::from_millis(500), client::client().request(req)).await;
    assert!(res.is_err(), "the upstream never answers");
    let cancelled =
        gatehouse_tests::wait_until(Duration::from_secs(10), || async { up.hang_dropped() == 1 })
            .await;
    assert!(
        cancelled,
        "the upstream request was not cancelled after the client left"
    );
}
