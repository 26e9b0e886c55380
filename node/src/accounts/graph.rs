//! The `graph` account backend (alias `cs3`): the users and groups of an oCIS installation,
//! reached through its LibreGraph API (spec §5.2–5.4).
//!
//! oCIS's proxy asks the reva gateway to authenticate users by claim ("machine auth") and uses
//! LibreGraph only to provision; Gatehouse has no reva gateway client, so lookups go to LibreGraph
//! too: `GET /v1.0/users/{id or onPremisesSamAccountName}` and, for mail,
//! `GET /v1.0/users?$filter=mail eq '…'`, both with `$expand=memberOf` so one call yields the
//! groups the minted token needs.
//!
//! Every call carries `x-access-token`: a reva token for the service account
//! (`service_account.service_account_id`, CS3 user type SERVICE), signed with
//! `token_manager.jwt_secret` and reused until shortly before it expires.
//!
//! Failures: no answer, a timeout or a 5xx is retryable; anything else unexpected is not. OData
//! error bodies (`{"error":{"code":…,"message":…}}`) are decoded so `nameAlreadyExists` (a
//! parallel creation, by another Gatehouse node or an oCIS proxy) becomes a re-read.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use gatehouse_shared::token::{Minter, RevaUser, RevaUserId, UserType};
use gatehouse_shared::trace::{self, http as conv, propagate};
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::ClientConfig;
use serde::Deserialize;
use serde_json::{Value, json};

use super::backend::{
    CreateError, Directory, DirectoryUser, LookupKind, NewUser, passwords_unsupported,
};
use super::{AccountError, Group};
use crate::proxy::tls::Connector;

/// The header LibreGraph (like every oCIS service) reads the caller's reva token from.
pub const ACCESS_TOKEN_HEADER: &str = "x-access-token";

/// OData error code of a creation that lost against an existing name.
const NAME_ALREADY_EXISTS: &str = "nameAlreadyExists";

pub struct GraphDirectory {
    client: Client<Connector, Full<Bytes>>,
    /// `<graph url>/v1.0`, without a trailing slash.
    base: String,
    timeout: Duration,
    token: ServiceToken,
}

/// The service account's token, minted once and reused until little of its lifetime is left.
struct ServiceToken {
    minter: Minter,
    user: RevaUser,
    current: Mutex<Option<(String, Instant)>>,
}

impl ServiceToken {
    fn get(&self) -> Result<String, AccountError> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((token, renew_at)) = current.as_ref()
            && Instant::now() < *renew_at
        {
            return Ok(token.clone());
        }
        let token = self
            .minter
            .mint(&self.user)
            .map_err(|e| AccountError::Backend {
                reason: format!("cannot mint the service account token: {e}"),
                retryable: false,
            })?;
        let lifetime = self.minter.lifetime();
        // Renew once three quarters of the lifetime are gone, leaving receivers ample validity.
        let renew_at = Instant::now() + lifetime - lifetime / 4;
        *current = Some((token.clone(), renew_at));
        Ok(token)
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GraphUser {
    id: String,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    mail: Option<String>,
    #[serde(default)]
    on_premises_sam_account_name: Option<String>,
    #[serde(default)]
    member_of: Option<Vec<GraphGroup>>,
    #[serde(default)]
    account_enabled: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GraphGroup {
    id: String,
    #[serde(default)]
    display_name: Option<String>,
}

#[derive(Debug, Deserialize)]
struct UserList {
    #[serde(default)]
    value: Vec<GraphUser>,
}

#[derive(Debug, Default, Deserialize)]
struct OdataError {
    #[serde(default)]
    error: OdataErrorMain,
}

#[derive(Debug, Default, Deserialize)]
struct OdataErrorMain {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

impl From<GraphGroup> for Group {
    fn from(g: GraphGroup) -> Self {
        Group {
            id: g.id,
            name: g.display_name.unwrap_or_default(),
        }
    }
}

impl From<GraphUser> for DirectoryUser {
    fn from(u: GraphUser) -> Self {
        DirectoryUser {
            id: u.id,
            username: u.on_premises_sam_account_name.unwrap_or_default(),
            display_name: u.display_name.unwrap_or_default(),
            mail: u.mail.unwrap_or_default(),
            groups: u
                .member_of
                .unwrap_or_default()
                .into_iter()
                .map(Group::from)
                .collect(),
            enabled: u.account_enabled != Some(false),
        }
    }
}

/// One answer of LibreGraph.
struct Answer {
    status: StatusCode,
    body: Bytes,
}

impl Answer {
    fn odata_code(&self) -> String {
        serde_json::from_slice::<OdataError>(&self.body)
            .map(|e| e.error.code)
            .unwrap_or_default()
    }

    fn json<T: for<'de> Deserialize<'de>>(&self, what: &str) -> Result<T, AccountError> {
        serde_json::from_slice(&self.body).map_err(|e| AccountError::Backend {
            reason: format!("LibreGraph {what}: unexpected answer: {e}"),
            retryable: false,
        })
    }

    /// The error for a status the caller did not expect.
    fn unexpected(&self, what: &str) -> AccountError {
        let odata = serde_json::from_slice::<OdataError>(&self.body).unwrap_or_default();
        AccountError::Backend {
            reason: format!(
                "LibreGraph {what}: {} {} {}",
                self.status.as_u16(),
                odata.error.code,
                odata.error.message
            )
            .trim_end()
            .to_owned(),
            retryable: self.status.is_server_error()
                || self.status == StatusCode::TOO_MANY_REQUESTS,
        }
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

impl GraphDirectory {
    /// `url` is the base up to `/graph`; `service_account_id` is who the calls are made as.
    pub fn new(
        url: &str,
        timeout: Duration,
        tls: Arc<ClientConfig>,
        minter: Minter,
        service_account_id: &str,
    ) -> Self {
        let mut builder = Client::builder(TokioExecutor::new());
        builder.pool_timer(TokioTimer::new());
        builder.pool_idle_timeout(Duration::from_secs(90));
        let user = RevaUser {
            id: Some(RevaUserId {
                idp: String::new(),
                opaque_id: service_account_id.to_owned(),
                user_type: UserType::SERVICE,
            }),
            ..RevaUser::default()
        };
        Self {
            client: builder.build(Connector::new(tls, Some(timeout))),
            base: format!("{}/v1.0", url.trim_end_matches('/')),
            timeout,
            token: ServiceToken {
                minter,
                user,
                current: Mutex::new(None),
            },
        }
    }

    async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Value>,
    ) -> Result<Answer, AccountError> {
        let what = format!("{method} {path_and_query}");
        let token = self.token.get()?;
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path_and_query}", self.base))
            .header(ACCESS_TOKEN_HEADER, token)
            .header(header::ACCEPT, "application/json");
        let body = match body {
            Some(value) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(value.to_string())
            }
            None => Bytes::new(),
        };
        let mut request = request
            .body(Full::new(body))
            .map_err(|e| AccountError::Backend {
                reason: format!("LibreGraph {what}: cannot build the request: {e}"),
                retryable: false,
            })?;
        let span = conv::client_span(request.method(), request.uri(), "graph", None);
        propagate::inject_span(&span, request.headers_mut());
        let answer = self.exchange(request, &what, &span).await;
        match &answer {
            Ok(a) => conv::record_client_status(&span, a.status),
            Err(e) => span.fail("unavailable", e.to_string()),
        }
        span.end();
        answer
    }

    async fn exchange(
        &self,
        request: Request<Full<Bytes>>,
        what: &str,
        span: &trace::Span,
    ) -> Result<Answer, AccountError> {
        let exchange = span.instrument(async {
            let response =
                self.client
                    .request(request)
                    .await
                    .map_err(|e| AccountError::Backend {
                        reason: format!("LibreGraph {what}: {e}"),
                        retryable: true,
                    })?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| AccountError::Backend {
                    reason: format!("LibreGraph {what}: reading the answer: {e}"),
                    retryable: true,
                })?
                .to_bytes();
            Ok(Answer { status, body })
        });
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(AccountError::Backend {
                    reason: format!("LibreGraph {what}: no answer within {:?}", self.timeout),
                    retryable: true,
                })
            })
    }

    async fn get_user(&self, id_or_name: &str) -> Result<Option<GraphUser>, AccountError> {
        let path = format!("/users/{}?$expand=memberOf", encode(id_or_name));
        let answer = self.call(Method::GET, &path, None).await?;
        match answer.status {
            StatusCode::OK => answer.json("get user").map(Some),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(answer.unexpected("get user")),
        }
    }

    async fn users_by_mail(&self, mail: &str) -> Result<Vec<GraphUser>, AccountError> {
        let filter = format!("mail eq '{}'", mail.replace('\'', "''"));
        let path = format!("/users?$filter={}&$expand=memberOf", encode(&filter));
        let answer = self.call(Method::GET, &path, None).await?;
        match answer.status {
            StatusCode::OK => Ok(answer.json::<UserList>("list users")?.value),
            _ => Err(answer.unexpected("list users")),
        }
    }
}

#[async_trait]
impl Directory for GraphDirectory {
    async fn find_user(
        &self,
        kind: LookupKind,
        value: &str,
    ) -> Result<Option<DirectoryUser>, AccountError> {
        let found = match kind {
            // The endpoint takes an id or a name; the answer must match the attribute asked for.
            LookupKind::UserId => self.get_user(value).await?.filter(|u| u.id == value),
            LookupKind::Username => self.get_user(value).await?.filter(|u| {
                u.on_premises_sam_account_name
                    .as_deref()
                    .is_some_and(|n| n.to_lowercase() == value.to_lowercase())
            }),
            LookupKind::Mail => {
                let mut matching: Vec<GraphUser> = self
                    .users_by_mail(value)
                    .await?
                    .into_iter()
                    .filter(|u| {
                        u.mail
                            .as_deref()
                            .is_some_and(|m| m.to_lowercase() == value.to_lowercase())
                    })
                    .collect();
                if matching.len() > 1 {
                    return Err(AccountError::Backend {
                        reason: format!(
                            "LibreGraph: {} users have the mail {value:?}",
                            matching.len()
                        ),
                        retryable: false,
                    });
                }
                matching.pop()
            }
        };
        Ok(found.map(DirectoryUser::from))
    }

    async fn create_user(&self, user: &NewUser) -> Result<DirectoryUser, CreateError> {
        let mut body = json!({
            "displayName": user.display_name,
            "onPremisesSamAccountName": user.username,
        });
        if !user.mail.is_empty() {
            body["mail"] = json!(user.mail);
        }
        if let Some(identity) = &user.identity {
            body["identities"] = json!([{
                "issuer": identity.issuer,
                "issuerAssignedId": identity.issuer_assigned_id,
            }]);
        }
        let answer = self.call(Method::POST, "/users", Some(body)).await?;
        match answer.status {
            StatusCode::OK | StatusCode::CREATED => {
                Ok(answer.json::<GraphUser>("create user")?.into())
            }
            _ if answer.odata_code() == NAME_ALREADY_EXISTS => Err(CreateError::AlreadyExists),
            _ => Err(answer.unexpected("create user").into()),
        }
    }

    async fn update_user(
        &self,
        id: &str,
        display_name: Option<&str>,
        mail: Option<&str>,
    ) -> Result<(), AccountError> {
        let mut body = json!({});
        if let Some(name) = display_name {
            body["displayName"] = json!(name);
        }
        if let Some(mail) = mail {
            body["mail"] = json!(mail);
        }
        let path = format!("/users/{}", encode(id));
        let answer = self.call(Method::PATCH, &path, Some(body)).await?;
        if answer.status.is_success() {
            Ok(())
        } else {
            Err(answer.unexpected("update user"))
        }
    }

    async fn find_group(&self, name: &str) -> Result<Option<Group>, AccountError> {
        let path = format!("/groups/{}", encode(name));
        let answer = self.call(Method::GET, &path, None).await?;
        match answer.status {
            StatusCode::OK => {
                let group: GraphGroup = answer.json("get group")?;
                let matches =
                    group.id == name || group.display_name.as_deref().is_some_and(|n| n == name);
                Ok(matches.then(|| group.into()))
            }
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(answer.unexpected("get group")),
        }
    }

    async fn create_group(&self, name: &str, _id: Option<&str>) -> Result<Group, CreateError> {
        let body = json!({ "displayName": name });
        let answer = self.call(Method::POST, "/groups", Some(body)).await?;
        match answer.status {
            StatusCode::OK | StatusCode::CREATED => {
                Ok(answer.json::<GraphGroup>("create group")?.into())
            }
            _ if answer.odata_code() == NAME_ALREADY_EXISTS => Err(CreateError::AlreadyExists),
            _ => Err(answer.unexpected("create group").into()),
        }
    }

    async fn add_member(&self, group: &Group, user_id: &str) -> Result<(), AccountError> {
        let body = json!({ "@odata.id": format!("{}/users/{}", self.base, encode(user_id)) });
        let path = format!("/groups/{}/members/$ref", encode(&group.id));
        let answer = self.call(Method::POST, &path, Some(body)).await?;
        if answer.status.is_success() || answer.odata_code() == NAME_ALREADY_EXISTS {
            Ok(())
        } else {
            Err(answer.unexpected("add group member"))
        }
    }

    async fn remove_member(&self, group: &Group, user_id: &str) -> Result<(), AccountError> {
        let path = format!(
            "/groups/{}/members/{}/$ref",
            encode(&group.id),
            encode(user_id)
        );
        let answer = self.call(Method::DELETE, &path, None).await?;
        if answer.status.is_success() || answer.status == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(answer.unexpected("remove group member"))
        }
    }

    /// oCIS checks passwords in its IdP and reva's auth providers, neither of which Gatehouse
    /// talks to; configuration validation refuses `enable_basic_auth` with this backend.
    async fn check_password(
        &self,
        _username: &str,
        _password: &str,
    ) -> Result<Option<DirectoryUser>, AccountError> {
        Err(passwords_unsupported())
    }

    async fn set_initial_password(
        &self,
        _user_id: &str,
        _password: &str,
    ) -> Result<bool, AccountError> {
        Err(passwords_unsupported())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_keeps_only_unreserved_characters() {
        assert_eq!(encode("einstein"), "einstein");
        assert_eq!(encode("a b/c'd"), "a%20b%2Fc%27d");
        assert_eq!(encode("mail eq 'x@y'"), "mail%20eq%20%27x%40y%27");
        assert_eq!(encode("ü"), "%C3%BC");
    }

    #[tokio::test]
    async fn passwords_are_not_supported_and_not_retryable() {
        let tls = crate::proxy::tls::client_config(true, None).unwrap();
        let minter = Minter::new(b"secret", Duration::from_secs(60)).unwrap();
        // Nothing listens on port 9: a request would fail as retryable, not as unsupported.
        let graph = GraphDirectory::new(
            "http://127.0.0.1:9",
            Duration::from_secs(1),
            tls,
            minter,
            "service",
        );
        let err = graph
            .check_password("einstein", "relativity")
            .await
            .unwrap_err();
        assert_eq!(err, passwords_unsupported());
        assert!(!err.is_retryable());
        let err = graph.set_initial_password("u1", "x").await.unwrap_err();
        assert_eq!(err, passwords_unsupported());
    }

    #[test]
    fn graph_user_json_maps_to_a_directory_user() {
        let user: GraphUser = serde_json::from_value(json!({
            "id": "u1",
            "displayName": "Albert",
            "mail": null,
            "onPremisesSamAccountName": "einstein",
            "accountEnabled": false,
            "memberOf": [{"id": "g1", "displayName": "physics"}]
        }))
        .unwrap();
        let user = DirectoryUser::from(user);
        assert_eq!(user.username, "einstein");
        assert_eq!(user.mail, "");
        assert!(!user.enabled);
        assert_eq!(
            user.groups,
            vec![Group {
                id: "g1".into(),
                name: "physics".into()
            }]
        );
    }
}
