//! A LibreGraph stand-in: the part of the oCIS graph service's `/graph/v1.0` API the `graph`
//! account backend uses, over real HTTP on loopback, with users and groups held in memory.
//!
//! It answers like the real service where the backend depends on it: `GET /users/{id or
//! onPremisesSamAccountName}` and `GET /groups/{id or displayName}`, `$expand=memberOf` /
//! `$expand=members`, `$filter=mail eq '…'` (or `onPremisesSamAccountName eq '…'`), unique
//! names answered with 409 and OData code `nameAlreadyExists`, unknown items with 404
//! `itemNotFound`, and 401 `unauthenticated` when `x-access-token` is missing. Every call is
//! recorded (method, path, decoded query, JSON body, token) for assertions, and an optional delay
//! before each answer widens races between concurrent clients.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::fixture::FixtureServer;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{Value, json};

/// One request as the fixture received it.
#[derive(Debug, Clone)]
pub struct GraphCall {
    pub method: String,
    /// Percent-decoded path, starting with `/graph/v1.0`.
    pub path: String,
    /// Percent-decoded query parameters.
    pub query: BTreeMap<String, String>,
    /// The JSON body, `Null` when there was none (or it was not JSON).
    pub body: Value,
    /// The `x-access-token` header.
    pub token: Option<String>,
}

#[derive(Debug, Clone)]
pub struct FixtureUser {
    pub id: String,
    pub username: String,
    pub display_name: String,
    pub mail: String,
    pub identities: Value,
    pub enabled: bool,
}

#[derive(Debug, Clone)]
pub struct FixtureGroup {
    pub id: String,
    pub name: String,
    pub members: Vec<String>,
}

#[derive(Default)]
struct Data {
    users: Vec<FixtureUser>,
    groups: Vec<FixtureGroup>,
}

#[derive(Default)]
struct Shared {
    data: Mutex<Data>,
    calls: Mutex<Vec<GraphCall>>,
    delay_ms: AtomicU64,
    next_id: AtomicU64,
}

impl Shared {
    fn new_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::SeqCst) + 1;
        format!("00000000-0000-4000-8000-{n:012x}")
    }
}

pub struct GraphFixture {
    server: FixtureServer,
    shared: Arc<Shared>,
}

impl GraphFixture {
    /// Starts the fixture on a free loopback port.
    pub async fn start() -> GraphFixture {
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let server = FixtureServer::start("graph fixture", move |req| handle(s.clone(), req)).await;
        GraphFixture { server, shared }
    }

    /// The base URL up to `/graph`, as `graph.url` takes it.
    pub fn url(&self) -> String {
        format!("http://{}/graph", self.server.addr)
    }

    /// Waits this long before answering each request.
    pub fn set_delay(&self, delay: Duration) {
        self.shared
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn calls(&self) -> Vec<GraphCall> {
        self.shared.calls.lock().unwrap().clone()
    }

    /// Calls with this method whose path (after `/graph/v1.0`) starts with `path_prefix`.
    pub fn count(&self, method: &str, path_prefix: &str) -> usize {
        let prefix = format!("/graph/v1.0{path_prefix}");
        self.calls()
            .iter()
            .filter(|c| c.method == method && c.path.starts_with(&prefix))
            .count()
    }

    pub fn clear_calls(&self) {
        self.shared.calls.lock().unwrap().clear();
    }

    /// Adds a user directly (no call recorded); returns its id.
    pub fn add_user(&self, username: &str, display_name: &str, mail: &str) -> String {
        let id = self.shared.new_id();
        self.shared.data.lock().unwrap().users.push(FixtureUser {
            id: id.clone(),
            username: username.into(),
            display_name: display_name.into(),
            mail: mail.into(),
            identities: json!([]),
            enabled: true,
        });
        id
    }

    pub fn disable_user(&self, id: &str) {
        let mut data = self.shared.data.lock().unwrap();
        if let Some(u) = data.users.iter_mut().find(|u| u.id == id) {
            u.enabled = false;
        }
    }

    /// Adds a group directly (no call recorded); returns its id.
    pub fn add_group(&self, name: &str) -> String {
        let id = self.shared.new_id();
        self.shared.data.lock().unwrap().groups.push(FixtureGroup {
            id: id.clone(),
            name: name.into(),
            members: Vec::new(),
        });
        id
    }

    pub fn add_member(&self, group_id: &str, user_id: &str) {
        let mut data = self.shared.data.lock().unwrap();
        if let Some(g) = data.groups.iter_mut().find(|g| g.id == group_id) {
            g.members.push(user_id.into());
        }
    }

    pub fn users(&self) -> Vec<FixtureUser> {
        self.shared.data.lock().unwrap().users.clone()
    }

    pub fn user_by_name(&self, username: &str) -> Option<FixtureUser> {
        self.users().into_iter().find(|u| u.username == username)
    }

    pub fn groups(&self) -> Vec<FixtureGroup> {
        self.shared.data.lock().unwrap().groups.clone()
    }

    /// Names of the groups the user is a member of, sorted.
    pub fn group_names_of(&self, user_id: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .groups()
            .into_iter()
            .filter(|g| g.members.iter().any(|m| m == user_id))
            .map(|g| g.name)
            .collect();
        names.sort();
        names
    }
}

/// Decodes `%XX` escapes (and `+` as space in queries); invalid escapes are kept as they are.
pub fn percent_decode(text: &str, plus_is_space: bool) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(hi), Some(lo)) => {
                        out.push((hi * 16 + lo) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(query: Option<&str>) -> BTreeMap<String, String> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k, true), percent_decode(v, true))
        })
        .collect()
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

fn no_content() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

fn odata_error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    reply(
        status,
        json!({"error": {"code": code, "message": message, "innererror": {"request-id": ""}}}),
    )
}

fn not_found(what: &str) -> Response<Full<Bytes>> {
    odata_error(
        StatusCode::NOT_FOUND,
        "itemNotFound",
        &format!("{what} not found"),
    )
}

fn group_json(g: &FixtureGroup) -> Value {
    json!({"id": g.id, "displayName": g.name})
}

fn user_json(data: &Data, u: &FixtureUser, expand_member_of: bool) -> Value {
    let mut v = json!({
        "id": u.id,
        "displayName": u.display_name,
        "onPremisesSamAccountName": u.username,
        "accountEnabled": u.enabled,
        "identities": u.identities,
    });
    if !u.mail.is_empty() {
        v["mail"] = json!(u.mail);
    }
    if expand_member_of {
        let groups: Vec<Value> = data
            .groups
            .iter()
            .filter(|g| g.members.contains(&u.id))
            .map(group_json)
            .collect();
        v["memberOf"] = Value::Array(groups);
    }
    v
}

fn expands(query: &BTreeMap<String, String>, what: &str) -> bool {
    query
        .get("$expand")
        .is_some_and(|e| e.split(',').any(|x| x.trim() == what))
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().clone();
    let path = percent_decode(req.uri().path(), false);
    let query = parse_query(req.uri().query());
    let token = req
        .headers()
        .get("x-access-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body_bytes = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&body_bytes).unwrap_or(Value::Null);
    shared.calls.lock().unwrap().push(GraphCall {
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        body: body.clone(),
        token: token.clone(),
    });
    let delay = shared.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if token.as_deref().is_none_or(str::is_empty) {
        return Ok(odata_error(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "missing x-access-token",
        ));
    }
    let Some(rest) = path.strip_prefix("/graph/v1.0/") else {
        return Ok(not_found("route"));
    };
    let segments: Vec<&str> = rest.split('/').collect();
    Ok(route(&shared, &method, &segments, &query, &body))
}

fn route(
    shared: &Shared,
    method: &Method,
    segments: &[&str],
    query: &BTreeMap<String, String>,
    body: &Value,
) -> Response<Full<Bytes>> {
    let mut data = shared.data.lock().unwrap();
    match (method, segments) {
        (&Method::GET, ["users"]) => {
            let filter = query.get("$filter").cloned().unwrap_or_default();
            let matcher = parse_eq_filter(&filter);
            let expand = expands(query, "memberOf");
            let value: Vec<Value> = data
                .users
                .iter()
                .filter(|u| match &matcher {
                    Some((field, wanted)) => match field.as_str() {
                        "mail" => u.mail.eq_ignore_ascii_case(wanted),
                        "onPremisesSamAccountName" => u.username.eq_ignore_ascii_case(wanted),
                        _ => false,
                    },
                    None => true,
                })
                .map(|u| user_json(&data, u, expand))
                .collect();
            reply(StatusCode::OK, json!({ "value": value }))
        }
        (&Method::GET, ["users", key]) => {
            match data
                .users
                .iter()
                .find(|u| u.id == *key || u.username.eq_ignore_ascii_case(key))
            {
                Some(u) => reply(
                    StatusCode::OK,
                    user_json(&data, u, expands(query, "memberOf")),
                ),
                None => not_found("user"),
            }
        }
        (&Method::POST, ["users"]) => {
            let text = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
            let (username, display_name) = (text("onPremisesSamAccountName"), text("displayName"));
            if username.is_empty() || display_name.is_empty() {
                return odata_error(
                    StatusCode::BAD_REQUEST,
                    "invalidRequest",
                    "missing required attribute",
                );
            }
            if data
                .users
                .iter()
                .any(|u| u.username.eq_ignore_ascii_case(&username))
            {
                return odata_error(
                    StatusCode::CONFLICT,
                    "nameAlreadyExists",
                    "a user with that name already exists",
                );
            }
            let user = FixtureUser {
                id: shared.new_id(),
                username,
                display_name,
                mail: text("mail"),
                identities: body.get("identities").cloned().unwrap_or(json!([])),
                enabled: true,
            };
            let answer = user_json(&data, &user, false);
            data.users.push(user);
            reply(StatusCode::CREATED, answer)
        }
        (&Method::PATCH, ["users", id]) => {
            let Some(user) = data.users.iter_mut().find(|u| u.id == *id) else {
                return not_found("user");
            };
            if let Some(name) = body.get("displayName").and_then(Value::as_str) {
                user.display_name = name.into();
            }
            if let Some(mail) = body.get("mail").and_then(Value::as_str) {
                user.mail = mail.into();
            }
            let user = user.clone();
            reply(StatusCode::OK, user_json(&data, &user, false))
        }
        (&Method::GET, ["groups", key]) => {
            match data
                .groups
                .iter()
                .find(|g| g.id == *key || g.name.eq_ignore_ascii_case(key))
            {
                Some(g) => {
                    let mut v = group_json(g);
                    if expands(query, "members") {
                        let members: Vec<Value> = data
                            .users
                            .iter()
                            .filter(|u| g.members.contains(&u.id))
                            .map(|u| user_json(&data, u, false))
                            .collect();
                        v["members"] = Value::Array(members);
                    }
                    reply(StatusCode::OK, v)
                }
                None => not_found("group"),
            }
        }
        (&Method::POST, ["groups"]) => {
            let name = body
                .get("displayName")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            if name.is_empty() {
                return odata_error(
                    StatusCode::BAD_REQUEST,
                    "invalidRequest",
                    "missing displayName",
                );
            }
            if data
                .groups
                .iter()
                .any(|g| g.name.eq_ignore_ascii_case(&name))
            {
                return odata_error(
                    StatusCode::CONFLICT,
                    "nameAlreadyExists",
                    "a group with that name already exists",
                );
            }
            let group = FixtureGroup {
                id: shared.new_id(),
                name,
                members: Vec::new(),
            };
            let answer = group_json(&group);
            data.groups.push(group);
            reply(StatusCode::CREATED, answer)
        }
        (&Method::POST, ["groups", id, "members", "$ref"]) => {
            let Some(user_id) = body
                .get("@odata.id")
                .and_then(Value::as_str)
                .and_then(|r| r.rsplit('/').next())
                .map(|s| percent_decode(s, false))
            else {
                return odata_error(
                    StatusCode::BAD_REQUEST,
                    "invalidRequest",
                    "missing @odata.id",
                );
            };
            if !data.users.iter().any(|u| u.id == user_id) {
                return not_found("user");
            }
            let Some(group) = data.groups.iter_mut().find(|g| g.id == *id) else {
                return not_found("group");
            };
            if !group.members.contains(&user_id) {
                group.members.push(user_id);
            }
            no_content()
        }
        (&Method::DELETE, ["groups", id, "members", user_id, "$ref"]) => {
            let Some(group) = data.groups.iter_mut().find(|g| g.id == *id) else {
                return not_found("group");
            };
            let before = group.members.len();
            group.members.retain(|m| m != user_id);
            if group.members.len() == before {
                return not_found("member");
            }
            no_content()
        }
        _ => odata_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "notAllowed",
            "not implemented by the fixture",
        ),
    }
}

/// `field eq 'value'` with `''` standing for a quote.
fn parse_eq_filter(filter: &str) -> Option<(String, String)> {
    let (field, rest) = filter.trim().split_once(" eq ")?;
    let quoted = rest.trim().strip_prefix('\'')?.strip_suffix('\'')?;
    Some((field.trim().to_owned(), quoted.replace("''", "'")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_and_filters() {
        assert_eq!(percent_decode("a%20b%2Fc", false), "a b/c");
        assert_eq!(percent_decode("a+b", true), "a b");
        assert_eq!(percent_decode("100%", false), "100%");
        assert_eq!(percent_decode("%zz", false), "%zz");
        assert_eq!(
            parse_eq_filter("mail eq 'o''brien@x'"),
            Some(("mail".into(), "o'brien@x".into()))
        );
        assert_eq!(parse_eq_filter("mail ne 'x'"), None);
    }
}
