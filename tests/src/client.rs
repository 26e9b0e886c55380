//! A small HTTP/1.1 client for assertions (hyper-util's pooled client with a boxed body).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;

pub type ReqBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub fn client() -> Client<HttpConnector, ReqBody> {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(5))
        .build_http()
}

pub fn empty() -> ReqBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

pub fn full(b: impl Into<Bytes>) -> ReqBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// Sends one request and reads the whole answer (30 s limit).
pub async fn send(method: &str, url: &str, headers: &[(&str, &str)], body: ReqBody) -> Reply {
    send_via(client(), method, url, headers, body).await
}

/// [`get_with`] from the local address `from` (another loopback address, to look like another
/// client to the node's trusted-proxy rule).
pub async fn get_from(from: std::net::IpAddr, url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut connector = HttpConnector::new();
    connector.set_local_address(Some(from));
    let client = Client::builder(TokioExecutor::new()).build(connector);
    send_via(client, "GET", url, headers, empty()).await
}

async fn send_via(
    client: Client<HttpConnector, ReqBody>,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: ReqBody,
) -> Reply {
    let mut req = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).unwrap())
        .uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(body).expect("request");
    let fut = async {
        let resp = client
            .request(req)
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e:?}"));
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("read body").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    };
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .unwrap_or_else(|_| panic!("{method} {url}: no answer within 30 s"))
}

/// The `Authorization` value for a bearer token.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

pub async fn get(url: &str) -> Reply {
    send("GET", url, &[], empty()).await
}

pub async fn get_with(url: &str, headers: &[(&str, &str)]) -> Reply {
    send("GET", url, headers, empty()).await
}
