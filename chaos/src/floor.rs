//! The "hyper floor": a reverse proxy with nothing but the stack gatehouse is built on and the
//! response headers oCIS requires, run as a child process of the benchmark. Like a gatehouse node
//! it serves on one single-threaded runtime per core, each with its own upstream pool (here with
//! `SO_REUSEPORT` listeners, which is fine for a benchmark process).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use http::HeaderValue;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// The oCIS response headers gatehouse adds (spec §6.2), with a request id of typical length.
const HEADERS: &[(&str, &str)] = &[
    (
        "content-security-policy",
        "child-src 'self'; connect-src 'self' blob: https://raw.githubusercontent.com/owncloud/awesome-ocis/; \
         default-src 'none'; font-src 'self'; frame-ancestors 'self'; frame-src 'self' blob: \
         https://embed.diagrams.net/; img-src 'self' data: blob: https://raw.githubusercontent.com/owncloud/awesome-ocis/; \
         manifest-src 'self'; media-src 'self'; object-src 'self' blob:; script-src 'self' 'unsafe-inline'; \
         style-src 'self' 'unsafe-inline'",
    ),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "SAMEORIGIN"),
    ("referrer-policy", "no-referrer"),
    ("x-permitted-cross-domain-policies", "none"),
    ("x-robots-tag", "none"),
    ("x-request-id", "bench/AbCdEfGhIj-000001"),
];

/// Serves until killed, on one current-thread runtime per available core.
pub fn run(listen: &str, upstream: &str) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers: Vec<_> = (0..cores)
        .map(|_| {
            let (listen, upstream) = (listen.to_owned(), upstream.to_owned());
            std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("floor runtime")
                    .block_on(serve(&listen, &upstream));
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
}

async fn serve(listen: &str, upstream: &str) {
    let client: Client<_, Incoming> = Client::builder(TokioExecutor::new()).build_http();
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_reuseport(true).expect("SO_REUSEPORT");
    socket
        .bind(listen.parse().expect("listen address"))
        .expect("bind floor proxy");
    let listener = socket.listen(1024).expect("listen");
    let upstream = upstream.trim_end_matches('/').to_string();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (client, upstream) = (client.clone(), upstream.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
                let (client, upstream) = (client.clone(), upstream.clone());
                async move {
                    let pq = req
                        .uri()
                        .path_and_query()
                        .map(|p| p.as_str())
                        .unwrap_or("/");
                    *req.uri_mut() = format!("{upstream}{pq}").parse().expect("upstream uri");
                    let mut resp = client.request(req).await?;
                    for (k, v) in HEADERS {
                        resp.headers_mut().insert(*k, HeaderValue::from_static(v));
                    }
                    Ok::<_, hyper_util::client::legacy::Error>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// The floor proxy as a child process (this binary, `floor-proxy` mode), killed on drop.
pub struct FloorProxy(Child);

impl Drop for FloorProxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub async fn spawn(listen: &str, upstream: &str) -> FloorProxy {
    let exe = std::env::current_exe().expect("current exe");
    let child = Command::new(exe)
        .args(["floor-proxy", listen, upstream])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the floor proxy");
    let guard = FloorProxy(child);
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(listen).await.is_ok() {
            return guard;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("floor proxy did not listen on {listen}");
}
