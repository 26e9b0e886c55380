//! The signing-key endpoint of the oCIS `ocs` service (spec §4.3):
//! `GET /ocs/v{1,2}.php/cloud/user/signing-key`, for clusters without oCIS
//! (`pre_signed_url.serve_signing_keys`).
//!
//! Clients fetch their key here and sign pre-signed URLs with it; the signed-URL authenticator
//! reads it back from the same store (`proxy`/`signing-keys`, key = user id, value = 128 hex
//! characters), so keys handed out by oCIS and by the gateway are interchangeable.
//!
//! Unlike oCIS, which reads and then writes unconditionally, the first key of a user is created
//! with compare-and-set: when two nodes (or two requests) race, the loser returns the winner's
//! key, so no client ever holds a key that was overwritten a moment later. A stored empty key,
//! which would sign nothing (the authenticator refuses it), is replaced the same way.
//!
//! Responses follow the ocs service: the OCS envelope as JSON, or XML when the client asked for
//! `format=xml`; v1 answers HTTP 200 with OCS status 100, v2 mirrors the HTTP status (200) in the
//! OCS status. Store failures are OCS 996 ("Server Error"), which oCIS maps to HTTP 500 on v2 and
//! to HTTP 200 on v1.

use bytes::Bytes;
use gatehouse_shared::store::{Store, StoreError};
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use rand::RngCore;
use serde::Serialize;

use crate::context::Body;

pub const V1_PATH: &str = "/ocs/v1.php/cloud/user/signing-key";
pub const V2_PATH: &str = "/ocs/v2.php/cloud/user/signing-key";

/// Random bytes in a key (hex-encoded: 128 characters), as the ocs service.
const KEY_BYTES: usize = 64;
/// Compare-and-set rounds before giving up (each lost round means another writer succeeded).
const MAX_ATTEMPTS: usize = 3;

const OCS_OK: u16 = 100;
const OCS_BAD_REQUEST: u16 = 400;
const OCS_SERVER_ERROR: u16 = 996;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OcsVersion {
    V1,
    V2,
}

/// The OCS version of a signing-key request path; `None` for any other path.
pub fn route(path: &str) -> Option<OcsVersion> {
    match path {
        V1_PATH => Some(OcsVersion::V1),
        V2_PATH => Some(OcsVersion::V2),
        _ => None,
    }
}

/// Why no key could be handed out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningKeyError {
    #[error("error reading from store: {0}")]
    Read(StoreError),
    #[error("could not persist signing key: {0}")]
    Write(StoreError),
    /// Every compare-and-set round lost, yet no usable key could be read back.
    #[error("could not persist signing key: the stored key kept changing")]
    Contended,
}

impl SigningKeyError {
    pub fn is_retryable(&self) -> bool {
        match self {
            SigningKeyError::Read(e) | SigningKeyError::Write(e) => e.is_retryable(),
            SigningKeyError::Contended => true,
        }
    }

    /// The OCS message, as the ocs service words it.
    fn ocs_message(&self) -> &'static str {
        match self {
            SigningKeyError::Read(_) => "error reading from store",
            SigningKeyError::Write(_) | SigningKeyError::Contended => {
                "could not persist signing key"
            }
        }
    }
}

/// The user's signing key, created if there is none (or an empty one).
pub async fn signing_key(store: &dyn Store, user_id: &str) -> Result<String, SigningKeyError> {
    for _ in 0..MAX_ATTEMPTS {
        let current = store.get(user_id).await.map_err(SigningKeyError::Read)?;
        let revision = match current {
            Some(entry) if !entry.value.is_empty() => {
                return Ok(String::from_utf8_lossy(&entry.value).into_owned());
            }
            Some(entry) => Some(entry.revision),
            None => None,
        };
        let key = new_key();
        let value = Bytes::from(key.clone());
        let written = match revision {
            Some(expected) => store.update(user_id, value, None, expected).await,
            None => store.create(user_id, value, None).await,
        };
        match written {
            Ok(_) => return Ok(key),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(SigningKeyError::Write(e)),
        }
    }
    Err(SigningKeyError::Contended)
}

/// Answers a signing-key request of the authenticated user `user_id`. `xml`: the client asked
/// for `format=xml`.
pub async fn handle(
    store: &dyn Store,
    user_id: &str,
    version: OcsVersion,
    xml: bool,
) -> Response<Body> {
    if user_id.is_empty() {
        return respond(
            version,
            xml,
            Meta::error(OCS_BAD_REQUEST, "missing user in context"),
            None,
        );
    }
    match signing_key(store, user_id).await {
        Ok(key) => respond(
            version,
            xml,
            Meta::ok(version),
            Some(KeyData {
                user: user_id,
                signing_key: &key,
            }),
        ),
        Err(e) => {
            tracing::error!(user_id, error = %e, retryable = e.is_retryable(), "signing key");
            respond(
                version,
                xml,
                Meta::error(OCS_SERVER_ERROR, e.ocs_message()),
                None,
            )
        }
    }
}

fn new_key() -> String {
    let mut bytes = [0u8; KEY_BYTES];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Serialize)]
struct Envelope<'a> {
    ocs: Payload<'a>,
}

#[derive(Serialize)]
struct Payload<'a> {
    meta: Meta<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<KeyData<'a>>,
}

#[derive(Serialize)]
struct Meta<'a> {
    status: &'a str,
    statuscode: u16,
    message: &'a str,
}

impl<'a> Meta<'a> {
    fn ok(version: OcsVersion) -> Self {
        Meta {
            status: "ok",
            statuscode: match version {
                OcsVersion::V1 => OCS_OK,
                OcsVersion::V2 => 200,
            },
            message: "OK",
        }
    }

    fn error(statuscode: u16, message: &'a str) -> Self {
        Meta {
            status: "error",
            statuscode,
            message,
        }
    }

    /// The HTTP status, per oCIS's `OcsV1StatusCodes` / `OcsV2StatusCodes` for the codes used here.
    fn http_status(&self, version: OcsVersion) -> StatusCode {
        match (version, self.statuscode) {
            (OcsVersion::V1, _) | (OcsVersion::V2, OCS_OK) => StatusCode::OK,
            (OcsVersion::V2, OCS_SERVER_ERROR) => StatusCode::INTERNAL_SERVER_ERROR,
            (OcsVersion::V2, code) => {
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
        }
    }
}

#[derive(Serialize)]
struct KeyData<'a> {
    user: &'a str,
    #[serde(rename = "signing-key")]
    signing_key: &'a str,
}

fn respond(
    version: OcsVersion,
    xml: bool,
    meta: Meta<'_>,
    data: Option<KeyData<'_>>,
) -> Response<Body> {
    let status = meta.http_status(version);
    let payload = Payload { meta, data };
    let (body, content_type) = if xml {
        (to_xml(&payload), "application/xml; charset=utf-8")
    } else {
        // Serialising structs of strings and integers cannot fail.
        let mut json = serde_json::to_vec(&Envelope { ocs: payload }).unwrap_or_default();
        json.push(b'\n');
        (json, "application/json")
    };
    let mut resp = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// The envelope as Go's `encoding/xml` writes the ocs service's response, with the XML header
/// go-chi's renderer puts in front.
fn to_xml(payload: &Payload<'_>) -> Vec<u8> {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ocs><meta>");
    let meta = &payload.meta;
    push_element(&mut out, "status", meta.status);
    push_element(&mut out, "statuscode", &meta.statuscode.to_string());
    push_element(&mut out, "message", meta.message);
    out.push_str("</meta>");
    if let Some(data) = &payload.data {
        out.push_str("<data>");
        push_element(&mut out, "user", data.user);
        push_element(&mut out, "signing-key", data.signing_key);
        out.push_str("</data>");
    }
    out.push_str("</ocs>");
    out.into_bytes()
}

fn push_element(out: &mut String, name: &str, text: &str) {
    out.push('<');
    out.push_str(name);
    out.push('>');
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&#34;"),
            '\'' => out.push_str("&#39;"),
            '\t' => out.push_str("&#x9;"),
            '\n' => out.push_str("&#xA;"),
            '\r' => out.push_str("&#xD;"),
            c => out.push(c),
        }
    }
    out.push_str("</");
    out.push_str(name);
    out.push('>');
}

#[cfg(test)]
mod tests {

    use std::time::Duration;

    use gatehouse_shared::store::testing::FaultyStore;
    use serde_json::{Value, json};

    use super::*;

    const USER: &str = "ddc2004c-0977-11eb-9d3f-a793888cd0f8";

    async fn body(resp: Response<Body>) -> (StatusCode, String, String) {
        let status = resp.status();
        let content_type = resp.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_owned();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            content_type,
            String::from_utf8(bytes.to_vec()).unwrap(),
        )
    }

    async fn json_of(resp: Response<Body>) -> (StatusCode, Value) {
        let (status, content_type, text) = body(resp).await;
        assert_eq!(content_type, "application/json");
        assert!(text.ends_with('\n'));
        (status, serde_json::from_str(&text).unwrap())
    }

    fn is_key(k: &str) -> bool {
        k.len() == 128 && k.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    }

    #[test]
    fn routes_are_exact() {
        assert_eq!(route(V1_PATH), Some(OcsVersion::V1));
        assert_eq!(route(V2_PATH), Some(OcsVersion::V2));
        for other in [
            "/ocs/v3.php/cloud/user/signing-key",
            "/ocs/v1.php/cloud/user/signing-key/",
            "/ocs/v2.php/cloud/user/signing-keys",
            "/ocs/v2.php/cloud/user",
            "/x/ocs/v1.php/cloud/user/signing-key",
            "",
        ] {
            assert_eq!(route(other), None, "{other}");
        }
    }

    #[tokio::test]
    async fn a_new_key_is_created_once_and_then_returned() {
        let store = FaultyStore::memory();
        let (status, v1) = json_of(handle(store.as_ref(), USER, OcsVersion::V1, false).await).await;
        assert_eq!(status, StatusCode::OK);
        let key = v1["ocs"]["data"]["signing-key"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(is_key(&key), "{key}");
        assert_eq!(
            v1,
            json!({"ocs": {
                "meta": {"status": "ok", "statuscode": 100, "message": "OK"},
                "data": {"user": USER, "signing-key": key},
            }})
        );
        let stored = store.get(USER).await.unwrap().unwrap();
        assert_eq!(stored.value, Bytes::from(key.clone()));
        assert_eq!(stored.expires_at, None);

        let (status, v2) = json_of(handle(store.as_ref(), USER, OcsVersion::V2, false).await).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(v2["ocs"]["meta"]["statuscode"], 200);
        assert_eq!(v2["ocs"]["data"]["signing-key"], key.as_str());
        let other = signing_key(store.as_ref(), "another-user").await.unwrap();
        assert_ne!(other, key);
    }

    #[tokio::test]
    async fn a_key_written_by_ocis_is_returned_unchanged() {
        let store = FaultyStore::memory();
        store
            .put(USER, Bytes::from_static(b"1234567890"), None)
            .await
            .unwrap();
        assert_eq!(
            signing_key(store.as_ref(), USER).await.unwrap(),
            "1234567890"
        );
    }

    #[tokio::test]
    async fn an_empty_key_is_replaced() {
        let store = FaultyStore::memory();
        store.put(USER, Bytes::new(), None).await.unwrap();
        let key = signing_key(store.as_ref(), USER).await.unwrap();
        assert!(is_key(&key));
        assert_eq!(
            store.get(USER).await.unwrap().unwrap().value,
            Bytes::from(key)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_concurrent_first_calls_hand_out_one_key() {
        // Both calls read "no key" before either writes: one create wins, the other re-reads.
        let store = FaultyStore::memory();
        store.hold_reads(2);
        let calls: Vec<_> = (0..2)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { signing_key(store.as_ref(), USER).await })
            })
            .collect();
        let mut keys = Vec::new();
        for c in calls {
            keys.push(c.await.unwrap().unwrap());
        }
        assert!(is_key(&keys[0]));
        assert_eq!(keys[0], keys[1]);
        assert_eq!(
            store.get(USER).await.unwrap().unwrap().value,
            Bytes::from(keys[0].clone())
        );
        assert!(store.reads() >= 3, "the loser re-read");
    }

    #[tokio::test]
    async fn xml_when_asked() {
        let store = FaultyStore::memory();
        store
            .put(USER, Bytes::from_static(b"abc123"), None)
            .await
            .unwrap();
        let (status, content_type, text) =
            body(handle(store.as_ref(), USER, OcsVersion::V1, true).await).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type, "application/xml; charset=utf-8");
        assert_eq!(
            text,
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ocs><meta><status>ok</status>\
                 <statuscode>100</statuscode><message>OK</message></meta><data><user>{USER}</user>\
                 <signing-key>abc123</signing-key></data></ocs>"
            )
        );
        let (_, _, v2) = body(handle(store.as_ref(), "a<b&\"c'", OcsVersion::V2, true).await).await;
        assert!(v2.contains("<statuscode>200</statuscode>"), "{v2}");
        assert!(v2.contains("<user>a&lt;b&amp;&#34;c&#39;</user>"), "{v2}");
    }

    #[tokio::test]
    async fn store_failures_are_ocs_996() {
        let store = FaultyStore::memory();
        store.fail_reads(Some(StoreError::Timeout {
            op: "get",
            after: Duration::from_secs(2),
        }));
        let (status, v2) = json_of(handle(store.as_ref(), USER, OcsVersion::V2, false).await).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            v2,
            json!({"ocs": {"meta": {
                "status": "error", "statuscode": 996, "message": "error reading from store"
            }}})
        );
        let (status, v1) = json_of(handle(store.as_ref(), USER, OcsVersion::V1, false).await).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(v1["ocs"]["meta"]["statuscode"], 996);
        let err = signing_key(store.as_ref(), USER).await.unwrap_err();
        assert!(err.is_retryable());

        store.fail_reads(None);
        store.fail_writes(Some(StoreError::Unavailable("no responders".into())));
        let (status, content_type, text) =
            body(handle(store.as_ref(), USER, OcsVersion::V2, true).await).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(content_type, "application/xml; charset=utf-8");
        assert!(
            text.ends_with(
                "<ocs><meta><status>error</status><statuscode>996</statuscode>\
                 <message>could not persist signing key</message></meta></ocs>"
            ),
            "{text}"
        );
        assert_eq!(store.get(USER).await.unwrap(), None);
    }

    #[tokio::test]
    async fn no_user_is_a_bad_request() {
        let store = FaultyStore::memory();
        let (status, v2) = json_of(handle(store.as_ref(), "", OcsVersion::V2, false).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(v2["ocs"]["meta"]["statuscode"], 400);
        assert_eq!(v2["ocs"]["meta"]["message"], "missing user in context");
        let (status, _) = json_of(handle(store.as_ref(), "", OcsVersion::V1, false).await).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(store.get("").await.unwrap(), None);
    }
}
