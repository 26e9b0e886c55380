//! A minimal HTTP/1.1 GET client for the debug endpoints, used by `gatehouse health` (and tests).
//! It avoids a full HTTP client dependency for one local request.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("no answer from {addr} within {after:?}")]
    Timeout { addr: String, after: Duration },
    #[error("invalid request: {0}")]
    Request(#[from] http::Error),
    #[error("HTTP exchange failed: {0}")]
    Http(#[from] hyper::Error),
}

impl FetchError {
    /// Whether trying again may succeed (the server may still be starting).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            FetchError::Connect { .. } | FetchError::Timeout { .. }
        )
    }
}

/// `GET http://<addr><path>`, the whole exchange bounded by `timeout`.
pub async fn fetch(
    addr: &str,
    path: &str,
    bearer: Option<&str>,
    timeout: Duration,
) -> Result<Response<Bytes>, FetchError> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|source| FetchError::Connect {
                addr: addr.to_owned(),
                source,
            })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let conn = tokio::spawn(conn);
        let mut req = Request::get(path).header(header::HOST, addr);
        if let Some(token) = bearer {
            req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let resp = sender
            .send_request(req.body(Empty::<Bytes>::new())?)
            .await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        conn.abort();
        Ok(Response::from_parts(parts, body))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| FetchError::Timeout {
            addr: addr.to_owned(),
            after: timeout,
        })?
}
