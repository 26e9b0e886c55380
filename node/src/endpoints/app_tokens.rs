//! The app-token API of the oCIS `auth-app` service, served by the gateway when
//! `auth_middleware.allow_app_auth` is on (the gateway keeps the tokens, see
//! `gatehouse_shared::auth::app_token`):
//!
//! - `POST /auth-app/tokens?expiry=<Go duration>[&label=…]` creates a token for the user of the
//!   request and answers its JSON once, with the plain token (200, as oCIS actually answers: it
//!   writes the body before its 201 header, so Go sends 200);
//! - `GET /auth-app/tokens` lists the user's unexpired tokens, each with its hash as `token`;
//! - `DELETE /auth-app/tokens?token=<token or listed hash>` deletes one (200).
//!
//! The user is the one the account layer minted the `x-access-token` for; a request that
//! authenticated with an app token is refused (403): an app token cannot mint app tokens.
//! Records change with compare-and-set, so two nodes creating tokens for one user at the same
//! moment lose neither. Differences from oCIS: an unknown token to delete is 404 (oCIS: 500), a
//! store failure 503 (oCIS: 500), a non-positive expiry 400, and impersonation (`userID`,
//! `userName`) is answered as oCIS answers it with impersonation off (403).

use std::time::SystemTime;

use bytes::Bytes;
use gatehouse_shared::auth::app_token::{
    ApiToken, DEFAULT_LABEL, MAX_TOKENS_PER_USER, StoredToken, UserTokens, generate, store_key,
};
use gatehouse_shared::auth::password;
use gatehouse_shared::auth::query::Query;
use gatehouse_shared::config::GoDuration;
use gatehouse_shared::store::{Store, StoreError};
use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};

use crate::context::Body;

pub const PATH: &str = "/auth-app/tokens";
/// Compare-and-set rounds before giving up (each lost round means another writer succeeded).
const MAX_ATTEMPTS: usize = 5;

/// Whether `path` is the API (with or without the trailing slash chi accepts).
pub fn route(path: &str) -> bool {
    path == PATH || path.strip_prefix(PATH) == Some("/")
}

/// The user the request acts for.
pub struct Caller {
    pub user_id: String,
    pub username: String,
}

pub async fn handle(
    store: &dyn Store,
    method: &Method,
    query: Option<&str>,
    caller: Option<Caller>,
    via_app_token: bool,
) -> Response<Body> {
    let Some(caller) = caller else {
        return text(StatusCode::UNAUTHORIZED, "no user");
    };
    if via_app_token {
        return text(
            StatusCode::FORBIDDEN,
            "app tokens cannot be managed with an app token",
        );
    }
    let param = |name: &str| {
        query
            .map(Query::parse)
            .and_then(|q| {
                q.first(name)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            })
            .unwrap_or_default()
    };
    match *method {
        Method::POST => {
            if !param("userID").is_empty() || !param("userName").is_empty() {
                return text(StatusCode::FORBIDDEN, "impersonation is not allowed");
            }
            let expiry = match GoDuration::parse(&param("expiry")) {
                Ok(d) if !d.is_zero() => d.0,
                _ => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        "error parsing expiry. Use e.g. 30m or 72h",
                    );
                }
            };
            let label = Some(param("label"))
                .filter(|l| !l.is_empty())
                .unwrap_or_else(|| DEFAULT_LABEL.to_owned());
            let token = generate();
            let hash = {
                let token = token.clone();
                match tokio::task::spawn_blocking(move || password::hash(&token)).await {
                    Ok(Ok(hash)) => hash,
                    _ => return text(StatusCode::INTERNAL_SERVER_ERROR, "cannot hash the token"),
                }
            };
            let now = SystemTime::now();
            let stored = StoredToken::new(&token, hash, &label, now, expiry);
            let created = ApiToken {
                token,
                ..stored.listed()
            };
            let result = change(store, &caller, |tokens| {
                tokens.prune(now);
                if tokens.tokens.len() >= MAX_TOKENS_PER_USER {
                    return Err(Refusal::TooMany);
                }
                tokens.tokens.push(stored.clone());
                Ok(())
            })
            .await;
            match result {
                Ok(()) => json(&created),
                Err(r) => r.response(),
            }
        }
        Method::GET => match read(store, &caller.username).await {
            Ok((tokens, _)) => {
                let now = SystemTime::now();
                let listed: Vec<ApiToken> = tokens
                    .tokens
                    .iter()
                    .filter(|t| {
                        t.expires_ms
                            > now
                                .duration_since(SystemTime::UNIX_EPOCH)
                                .map_or(0, |d| d.as_millis() as u64)
                    })
                    .map(StoredToken::listed)
                    .collect();
                json(&listed)
            }
            Err(e) => unavailable(&e),
        },
        Method::DELETE => {
            let token = param("token");
            if token.is_empty() {
                return text(
                    StatusCode::BAD_REQUEST,
                    "missing auth-app token. Set 'token' parameter",
                );
            }
            let result = change(store, &caller, |tokens| {
                if tokens.remove(&token) {
                    Ok(())
                } else {
                    Err(Refusal::NotFound)
                }
            })
            .await;
            match result {
                Ok(()) => Response::new(empty()),
                Err(r) => r.response(),
            }
        }
        _ => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
    }
}

enum Refusal {
    NotFound,
    TooMany,
    Store(StoreError),
    Contended,
}

impl Refusal {
    fn response(self) -> Response<Body> {
        match self {
            Refusal::NotFound => text(StatusCode::NOT_FOUND, "no such app token"),
            Refusal::TooMany => text(
                StatusCode::CONFLICT,
                "too many app tokens; delete some first",
            ),
            Refusal::Store(e) => unavailable(&e),
            Refusal::Contended => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "app tokens are being changed concurrently; try again",
            ),
        }
    }
}

/// The user's record and its revision (0: none yet).
async fn read(store: &dyn Store, username: &str) -> Result<(UserTokens, u64), StoreError> {
    match store.get(&store_key(username)).await? {
        Some(entry) => {
            let tokens = serde_json::from_slice(&entry.value)
                .map_err(|e| StoreError::Invalid(format!("app-token record: {e}")))?;
            Ok((tokens, entry.revision))
        }
        None => Ok((UserTokens::default(), 0)),
    }
}

/// Applies `edit` to the caller's record with compare-and-set, retrying a lost race.
async fn change(
    store: &dyn Store,
    caller: &Caller,
    mut edit: impl FnMut(&mut UserTokens) -> Result<(), Refusal>,
) -> Result<(), Refusal> {
    let key = store_key(&caller.username);
    for _ in 0..MAX_ATTEMPTS {
        let (mut tokens, revision) = read(store, &caller.username)
            .await
            .map_err(Refusal::Store)?;
        tokens.user_id = caller.user_id.clone();
        edit(&mut tokens)?;
        let value = Bytes::from(serde_json::to_vec(&tokens).unwrap_or_default());
        match store.update(&key, value, None, revision).await {
            Ok(_) => return Ok(()),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(Refusal::Store(e)),
        }
    }
    Err(Refusal::Contended)
}

fn unavailable(e: &StoreError) -> Response<Body> {
    tracing::warn!(error = %e, "app tokens: the state store failed");
    let mut r = text(
        StatusCode::SERVICE_UNAVAILABLE,
        "app tokens are unavailable",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

fn json<T: serde::Serialize>(value: &T) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut r = Response::new(full(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Go's `http.Error`: the message and a newline, as plain text.
fn text(status: StatusCode, message: &str) -> Response<Body> {
    let mut r = Response::new(full(format!("{message}\n").into_bytes()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn full(bytes: Vec<u8>) -> Body {
    Full::new(Bytes::from(bytes))
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn empty() -> Body {
    full(Vec::new())
}
