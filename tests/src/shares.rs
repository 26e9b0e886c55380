//! A share service stand-in: the HTTP contract of docs/public-shares.md over real HTTP on
//! loopback, with public shares held in memory.
//!
//! oCIS validates public-link tokens with a gRPC call to the reva gateway; Gatehouse instead asks
//! a share service `POST /v1/public-shares/authenticate`. This fixture answers that call the way
//! the contract asks a share service to: 200 with the share when the secret fits, 401 when the
//! share needs a secret and none (or an empty password) came, 403 when a wrong one came, 404 for
//! an unknown or expired token, 400 for a request it cannot read. Every call is recorded (method,
//! path, content type, JSON body) for assertions, and the fixture can be told to answer with a
//! fixed status (optionally with `Retry-After`) or to hang, to exercise the caller's failure
//! handling.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::fixture::FixtureServer;
use bytes::Bytes;
use gatehouse_shared::events::GoTime;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{Value, json};

/// The path of the one endpoint of the contract.
pub const AUTHENTICATE_PATH: &str = "/v1/public-shares/authenticate";

/// One request as the fixture received it.
#[derive(Debug, Clone)]
pub struct ShareCall {
    pub method: String,
    pub path: String,
    pub content_type: Option<String>,
    /// The JSON body, `Null` when there was none (or it was not JSON).
    pub body: Value,
}

impl ShareCall {
    /// The `secret.type` of the request body (`password`, `signature`, `none`).
    pub fn secret_type(&self) -> Option<&str> {
        self.body["secret"]["type"].as_str()
    }
}

/// The share's owner, as the contract returns it.
#[derive(Debug, Clone)]
pub struct FixtureOwner {
    pub id: String,
    pub idp: String,
    pub username: String,
    pub display_name: String,
    pub mail: String,
}

impl FixtureOwner {
    /// einstein from the oCIS demo users.
    pub fn einstein() -> Self {
        Self {
            id: "4c510ada-c86b-4815-8820-42cdf82c3d51".into(),
            idp: "https://idp.example.com".into(),
            username: "einstein".into(),
            display_name: "Albert Einstein".into(),
            mail: "einstein@example.org".into(),
        }
    }
}

/// A public share the fixture knows.
#[derive(Debug, Clone)]
pub struct FixtureShare {
    pub id: String,
    pub token: String,
    /// When set, the share is protected and this password opens it.
    pub password: Option<String>,
    /// When set, the share is protected and this (signature, expiration) pair opens it.
    pub signature: Option<(String, String)>,
    pub owner: FixtureOwner,
    /// `(storage_id, space_id, opaque_id)` of the shared resource.
    pub resource: (String, String, String),
    /// `viewer`, `editor` or `uploader` (anything else is passed through, to test callers).
    pub role: String,
    /// RFC 3339; a share past it is answered like an unknown one.
    pub expiration: Option<String>,
}

impl FixtureShare {
    /// An unprotected viewer share of einstein's with a resource derived from `id`.
    pub fn new(id: &str, token: &str) -> Self {
        Self {
            id: id.into(),
            token: token.into(),
            password: None,
            signature: None,
            owner: FixtureOwner::einstein(),
            resource: (
                "storage-1".into(),
                "space-1".into(),
                format!("resource-of-{id}"),
            ),
            role: "viewer".into(),
            expiration: None,
        }
    }

    pub fn with_password(mut self, password: &str) -> Self {
        self.password = Some(password.into());
        self
    }

    pub fn with_signature(mut self, signature: &str, expiration: &str) -> Self {
        self.signature = Some((signature.into(), expiration.into()));
        self
    }

    pub fn with_role(mut self, role: &str) -> Self {
        self.role = role.into();
        self
    }

    pub fn with_expiration(mut self, expiration: &str) -> Self {
        self.expiration = Some(expiration.into());
        self
    }

    fn is_protected(&self) -> bool {
        self.password.is_some() || self.signature.is_some()
    }

    fn is_expired(&self) -> bool {
        self.expiration.as_deref().is_some_and(|e| {
            serde_json::from_value::<GoTime>(json!(e)).is_ok_and(|t| t.0 <= SystemTime::now())
        })
    }

    fn to_json(&self) -> Value {
        let (storage_id, space_id, opaque_id) = &self.resource;
        let mut share = json!({
            "id": self.id,
            "token": self.token,
            "owner": {
                "id": self.owner.id,
                "idp": self.owner.idp,
                "username": self.owner.username,
                "display_name": self.owner.display_name,
                "mail": self.owner.mail,
            },
            "resource_id": {
                "storage_id": storage_id,
                "space_id": space_id,
                "opaque_id": opaque_id,
            },
            "role": self.role,
        });
        if let Some(expiration) = &self.expiration {
            share["expiration"] = json!(expiration);
        }
        json!({ "share": share })
    }
}

/// What the fixture does instead of answering normally.
#[derive(Debug, Clone, Default)]
pub enum Failure {
    #[default]
    None,
    /// Answer every call with this status, an error body and, if given, `Retry-After` seconds.
    Status(u16, Option<u64>),
    /// Answer 200 with this raw body.
    Body(String),
    /// Never answer (the connection stays open).
    Hang,
}

#[derive(Default)]
struct Shared {
    shares: Mutex<Vec<FixtureShare>>,
    calls: Mutex<Vec<ShareCall>>,
    failure: Mutex<Failure>,
    delay_ms: AtomicU64,
}

pub struct ShareFixture {
    server: FixtureServer,
    shared: Arc<Shared>,
}

impl ShareFixture {
    /// Starts the fixture on a free loopback port.
    pub async fn start() -> ShareFixture {
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let server = FixtureServer::start("share fixture", move |req| handle(s.clone(), req)).await;
        ShareFixture { server, shared }
    }

    /// The base URL, as `public_shares.url` takes it.
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    pub fn add_share(&self, share: FixtureShare) {
        self.shared.shares.lock().unwrap().push(share);
    }

    pub fn remove_share(&self, token: &str) {
        self.shared
            .shares
            .lock()
            .unwrap()
            .retain(|s| s.token != token);
    }

    pub fn set_failure(&self, failure: Failure) {
        *self.shared.failure.lock().unwrap() = failure;
    }

    /// Waits this long before answering each request.
    pub fn set_delay(&self, delay: Duration) {
        self.shared
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn calls(&self) -> Vec<ShareCall> {
        self.shared.calls.lock().unwrap().clone()
    }

    /// Number of authenticate calls received.
    pub fn count(&self) -> usize {
        self.calls()
            .iter()
            .filter(|c| c.method == "POST" && c.path == AUTHENTICATE_PATH)
            .count()
    }

    pub fn clear_calls(&self) {
        self.shared.calls.lock().unwrap().clear();
    }
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    reply(status, json!({"error": {"code": code, "message": message}}))
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let content_type = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body_bytes = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&body_bytes).unwrap_or(Value::Null);
    shared.calls.lock().unwrap().push(ShareCall {
        method: method.to_string(),
        path: path.clone(),
        content_type,
        body: body.clone(),
    });
    let delay = shared.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let failure = shared.failure.lock().unwrap().clone();
    match failure {
        Failure::None => {}
        Failure::Status(code, retry_after) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut response = error(status, "failure", "failure switched on by the test");
            if let Some(secs) = retry_after {
                response
                    .headers_mut()
                    .insert(http::header::RETRY_AFTER, secs.into());
            }
            return Ok(response);
        }
        Failure::Body(raw) => {
            let mut response = Response::new(Full::new(Bytes::from(raw)));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            return Ok(response);
        }
        Failure::Hang => std::future::pending::<()>().await,
    }
    if path != AUTHENTICATE_PATH {
        return Ok(error(StatusCode::NOT_FOUND, "notFound", "no such endpoint"));
    }
    if method != Method::POST {
        return Ok(error(
            StatusCode::METHOD_NOT_ALLOWED,
            "notAllowed",
            "use POST",
        ));
    }
    Ok(authenticate(&shared, &body))
}

fn authenticate(shared: &Shared, body: &Value) -> Response<Full<Bytes>> {
    let (Some(token), Some(kind)) = (body["token"].as_str(), body["secret"]["type"].as_str())
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalidRequest",
            "token and secret.type are required",
        );
    };
    let text = |k: &str| body["secret"][k].as_str();
    let shares = shared.shares.lock().unwrap();
    let Some(share) = shares.iter().find(|s| s.token == token) else {
        return error(StatusCode::NOT_FOUND, "notFound", "unknown share token");
    };
    if share.is_expired() {
        return error(StatusCode::NOT_FOUND, "notFound", "the share has expired");
    }
    if !share.is_protected() {
        return reply(StatusCode::OK, share.to_json());
    }
    let opened = match kind {
        "password" => match (text("password"), &share.password) {
            (Some(""), _) | (None, _) => {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "password required",
                );
            }
            (Some(given), Some(expected)) => given == expected,
            (Some(_), None) => false,
        },
        "signature" => match (text("signature"), text("expiration"), &share.signature) {
            (Some(sig), Some(exp), Some((want_sig, want_exp))) => {
                sig == want_sig && exp == want_exp
            }
            (Some(_), Some(_), None) => false,
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalidRequest",
                    "signature and expiration are required",
                );
            }
        },
        "none" => {
            return error(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "password required",
            );
        }
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalidRequest",
                "unknown secret type",
            );
        }
    };
    if opened {
        reply(StatusCode::OK, share.to_json())
    } else {
        error(StatusCode::FORBIDDEN, "permissionDenied", "wrong secret")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Empty;
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioExecutor;

    async fn post(fixture: &ShareFixture, body: Value) -> (StatusCode, Value) {
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let request = Request::post(format!("{}{AUTHENTICATE_PATH}", fixture.url()))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let response = client.request(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    #[tokio::test]
    async fn answers_each_case_of_the_contract() {
        let fixture = ShareFixture::start().await;
        fixture.add_share(FixtureShare::new("s-open", "open"));
        fixture.add_share(
            FixtureShare::new("s-pw", "protected")
                .with_password("examples3cr3t")
                .with_signature("examplesignature", "2030-01-01T00:00:00Z"),
        );
        fixture.add_share(
            FixtureShare::new("s-old", "expired").with_expiration("2001-01-01T00:00:00Z"),
        );

        let pw = |p: &str| json!({"type": "password", "password": p});
        let cases = [
            (json!({"token": "open", "secret": {"type": "none"}}), 200),
            (json!({"token": "open", "secret": pw("anything")}), 200),
            (
                json!({"token": "protected", "secret": pw("examples3cr3t")}),
                200,
            ),
            (json!({"token": "protected", "secret": pw("wrong")}), 403),
            (json!({"token": "protected", "secret": pw("")}), 401),
            (
                json!({"token": "protected", "secret": {"type": "none"}}),
                401,
            ),
            (
                json!({"token": "protected", "secret": {"type": "signature",
                    "signature": "examplesignature", "expiration": "2030-01-01T00:00:00Z"}}),
                200,
            ),
            (
                json!({"token": "protected", "secret": {"type": "signature",
                    "signature": "forged", "expiration": "2030-01-01T00:00:00Z"}}),
                403,
            ),
            (json!({"token": "unknown", "secret": {"type": "none"}}), 404),
            (json!({"token": "expired", "secret": {"type": "none"}}), 404),
            (json!({"secret": {"type": "none"}}), 400),
        ];
        for (body, want) in cases {
            let (status, answer) = post(&fixture, body.clone()).await;
            assert_eq!(status.as_u16(), want, "{body}");
            if want == 200 {
                assert_eq!(answer["share"]["token"], body["token"], "{body}");
                assert_eq!(answer["share"]["owner"]["username"], "einstein");
                assert_eq!(answer["share"]["role"], "viewer");
            }
        }
        assert_eq!(fixture.count(), 11);
        assert_eq!(
            fixture.calls()[0].content_type.as_deref(),
            Some("application/json")
        );
        assert_eq!(fixture.calls()[2].secret_type(), Some("password"));
    }

    #[tokio::test]
    async fn failure_switches_and_other_routes() {
        let fixture = ShareFixture::start().await;
        fixture.add_share(FixtureShare::new("s-open", "open"));
        let body = json!({"token": "open", "secret": {"type": "none"}});

        fixture.set_failure(Failure::Status(503, Some(7)));
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let request = Request::post(format!("{}{AUTHENTICATE_PATH}", fixture.url()))
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let response = client.request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[http::header::RETRY_AFTER], "7");

        fixture.set_failure(Failure::Hang);
        let hung = tokio::time::timeout(Duration::from_millis(200), post(&fixture, body.clone()));
        assert!(hung.await.is_err());

        fixture.set_failure(Failure::None);
        assert_eq!(post(&fixture, body).await.0, StatusCode::OK);

        let get: Client<HttpConnector, Empty<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let response = get
            .get(
                format!("{}{AUTHENTICATE_PATH}", fixture.url())
                    .parse()
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    }
}
