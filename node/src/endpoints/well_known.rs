//! The `/.well-known/openid-configuration` passthrough (spec §7.2), enabled by
//! `oidc.rewrite_well_known`: clients that discover the identity provider through the gateway's
//! host (desktop and mobile apps) get the external provider's document.
//!
//! The provider's answer is copied — status, headers without the hop-by-hop ones, body — as
//! fetched by the OIDC authenticator's client (its TLS settings, `oidc.insecure`, its deadline
//! and body cap). When the provider cannot be reached the gateway answers 502 Bad Gateway, the
//! status of a gateway whose upstream failed; oCIS answers 500 with an empty body.

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderMap, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};

use crate::authn::oidc::OidcAuthenticator;
use crate::context::Body;

/// Headers that describe one connection, not the document (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// `GET <root>/.well-known/openid-configuration`.
pub async fn handle(oidc: &OidcAuthenticator) -> Response<Body> {
    match oidc.fetch_discovery_document().await {
        Ok(upstream) => {
            let mut resp = Response::new(
                Full::new(upstream.body)
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            );
            *resp.status_mut() = upstream.status;
            *resp.headers_mut() = end_to_end(upstream.headers);
            resp
        }
        Err(e) => {
            tracing::warn!(error = ?e, "openid-configuration passthrough: provider not reachable");
            let mut resp = Response::new(
                Empty::<Bytes>::new()
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            );
            *resp.status_mut() = StatusCode::BAD_GATEWAY;
            resp
        }
    }
}

/// `headers` without hop-by-hop headers, including those the `Connection` header names.
fn end_to_end(mut headers: HeaderMap) -> HeaderMap {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(&named) {
        headers.remove(name);
    }
    headers
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use gatehouse_shared::store::MemoryStore;
    use http::HeaderValue;
    use serde_json::Value;

    use super::*;
    use crate::authn::oidc::tests::{Idp, settings};

    async fn get(oidc: &OidcAuthenticator) -> (StatusCode, HeaderMap, Bytes) {
        let resp = handle(oidc).await;
        let (parts, body) = resp.into_parts();
        (
            parts.status,
            parts.headers,
            body.collect().await.unwrap().to_bytes(),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_providers_answer_is_passed_through() {
        let mut idp = Idp::start().await;
        let oidc = OidcAuthenticator::new(settings(&idp), Arc::new(MemoryStore::new())).unwrap();

        let (status, headers, body) = get(&oidc).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        let doc: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(doc["issuer"], idp.issuer());
        assert_eq!(doc["jwks_uri"], format!("{}/jwks", idp.issuer()));

        // Error answers are copied too, with their headers.
        idp.set_discovery_status(503);
        let (status, headers, _) = get(&oidc).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers[header::RETRY_AFTER], "1");

        idp.shut_down().await;
        let (status, _, body) = get(&oidc).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert!(body.is_empty());
    }

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=60"),
        );
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Conn-Only"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-conn-only", HeaderValue::from_static("1"));
        let out = end_to_end(h);
        let mut names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["cache-control", "content-type"]);
    }
}
