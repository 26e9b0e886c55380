//! The authenticator against a small identity provider served by hyper on 127.0.0.1: discovery,
//! JWKS and userinfo with call counters, and switches for failures (status codes with
//! `Retry-After`, slow answers, the provider gone). The endpoint tests (logout, well-known) use
//! the same provider.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use bytes::Bytes;
use gatehouse_shared::oidc::testing::{self, JWKS, JWKS_ROTATED, JWKS_RSA2, TestKey};
use gatehouse_shared::store::{ManualClock, MemoryStore};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use super::*;
use ::http;

const DEADLINE: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub(crate) enum Userinfo {
    Json(Value),
    Jwt(String),
    Status(u16, Option<u64>),
    Slow(Duration, Value),
}

struct IdpState {
    issuer: String,
    discovery_status: Mutex<u16>,
    discovery_extra: Mutex<Value>,
    jwks: Mutex<String>,
    userinfo: Mutex<Userinfo>,
    discovery_calls: AtomicUsize,
    jwks_calls: AtomicUsize,
    userinfo_calls: AtomicUsize,
    userinfo_auth: Mutex<Vec<String>>,
}

pub(crate) struct Idp {
    state: Arc<IdpState>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Idp {
    pub(crate) async fn start() -> Idp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let state = Arc::new(IdpState {
            issuer: format!("http://{addr}"),
            discovery_status: Mutex::new(200),
            discovery_extra: Mutex::new(json!({})),
            jwks: Mutex::new(JWKS.to_owned()),
            userinfo: Mutex::new(Userinfo::Json(
                json!({"sub": "einstein", "email": "einstein@example.org", "name": "Albert"}),
            )),
            discovery_calls: AtomicUsize::new(0),
            jwks_calls: AtomicUsize::new(0),
            userinfo_calls: AtomicUsize::new(0),
            userinfo_auth: Mutex::new(Vec::new()),
        });
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(listener, Arc::clone(&state), stop.clone()));
        Idp {
            state,
            stop,
            task: Some(task),
        }
    }

    pub(crate) fn issuer(&self) -> String {
        self.state.issuer.clone()
    }

    /// Closes the listener and every open connection.
    pub(crate) async fn shut_down(&mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }

    pub(crate) fn calls(&self) -> (usize, usize, usize) {
        (
            self.state.discovery_calls.load(Ordering::SeqCst),
            self.state.jwks_calls.load(Ordering::SeqCst),
            self.state.userinfo_calls.load(Ordering::SeqCst),
        )
    }

    pub(crate) fn userinfo_calls(&self) -> usize {
        self.state.userinfo_calls.load(Ordering::SeqCst)
    }

    pub(crate) fn set_userinfo(&self, mode: Userinfo) {
        *lock(&self.state.userinfo) = mode;
    }

    pub(crate) fn set_discovery_status(&self, status: u16) {
        *lock(&self.state.discovery_status) = status;
    }

    fn set_jwks(&self, jwks: &str) {
        *lock(&self.state.jwks) = jwks.to_owned();
    }

    pub(crate) fn token(&self, key: TestKey, kid: &str, extra: Value) -> String {
        let alg = if key == TestKey::Ec1 {
            "ES256"
        } else {
            "RS256"
        };
        let mut claims = json!({
            "iss": self.issuer(),
            "sub": "einstein",
            "aud": "web",
            "exp": unix_now() + 300,
            "sid": "session-1",
        });
        for (k, v) in extra.as_object().unwrap() {
            claims[k] = v.clone();
        }
        testing::sign(alg, Some(kid), key, &claims)
    }

    pub(crate) fn rsa1(&self, extra: Value) -> String {
        self.token(TestKey::Rsa1, "rsa1", extra)
    }
}

async fn serve(listener: TcpListener, state: Arc<IdpState>, stop: CancellationToken) {
    let mut conns = JoinSet::new();
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted.unwrap(),
        };
        let state = Arc::clone(&state);
        conns.spawn(async move {
            let svc = service_fn(move |req| handle(Arc::clone(&state), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
    conns.shutdown().await;
}

fn reply(status: u16, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

async fn handle(
    state: Arc<IdpState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let iss = &state.issuer;
    Ok(match req.uri().path() {
        "/.well-known/openid-configuration" => {
            state.discovery_calls.fetch_add(1, Ordering::SeqCst);
            let status = *lock(&state.discovery_status);
            let mut doc = json!({
                "issuer": iss,
                "jwks_uri": format!("{iss}/jwks"),
                "userinfo_endpoint": format!("{iss}/userinfo"),
                "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            });
            for (k, v) in lock(&state.discovery_extra).as_object().unwrap() {
                doc[k] = v.clone();
            }
            let mut resp = reply(status, "application/json", doc.to_string());
            if status == 503 {
                resp.headers_mut()
                    .insert("retry-after", http::HeaderValue::from_static("1"));
            }
            resp
        }
        "/jwks" => {
            state.jwks_calls.fetch_add(1, Ordering::SeqCst);
            reply(200, "application/json", lock(&state.jwks).clone())
        }
        "/userinfo" => {
            state.userinfo_calls.fetch_add(1, Ordering::SeqCst);
            let auth = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            lock(&state.userinfo_auth).push(auth);
            let mode = lock(&state.userinfo).clone();
            match mode {
                Userinfo::Json(v) => reply(200, "application/json", v.to_string()),
                Userinfo::Jwt(t) => reply(200, "application/jwt", t),
                Userinfo::Status(code, retry_after) => {
                    let mut resp = reply(code, "text/plain", "no".to_owned());
                    if let Some(ra) = retry_after {
                        resp.headers_mut()
                            .insert("retry-after", ra.to_string().parse().unwrap());
                    }
                    resp
                }
                Userinfo::Slow(delay, v) => {
                    tokio::time::sleep(delay).await;
                    reply(200, "application/json", v.to_string())
                }
            }
        }
        _ => reply(404, "text/plain", String::new()),
    })
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub(crate) fn settings(idp: &Idp) -> OidcSettings {
    let mut config = Config::default();
    config.oidc.issuer = idp.issuer();
    let mut s = OidcSettings::from_config(&config);
    s.request_timeout = Duration::from_secs(3);
    s
}

pub(crate) fn authenticator(settings: OidcSettings) -> (OidcAuthenticator, Arc<MemoryStore>) {
    let store = Arc::new(MemoryStore::new());
    let auth = OidcAuthenticator::new(settings, store.clone()).unwrap();
    (auth, store)
}

pub(crate) fn rejected(r: Result<Authenticated, OidcError>) -> String {
    match r {
        Err(OidcError::Rejected { reason }) => reason,
        other => panic!("expected Rejected, got {other:?}"),
    }
}

fn unavailable(r: Result<Authenticated, OidcError>) -> Option<Duration> {
    match r {
        Err(e @ OidcError::Unavailable { .. }) => {
            assert!(e.is_retryable());
            e.retry_after()
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_hit_makes_no_provider_call() {
    let idp = Idp::start().await;
    let (auth, store) = authenticator(settings(&idp));
    let token = idp.rsa1(json!({"name": "from token", "groups": ["g"]}));

    let first = auth.authenticate(&token).await.unwrap();
    assert!(first.new_session);
    assert_eq!(first.cache_key, token_cache_key(&token));
    assert_eq!(first.claims["email"], "einstein@example.org");
    assert_eq!(first.claims["name"], "Albert", "userinfo wins");
    assert_eq!(first.claims["groups"], json!(["g"]), "token claims survive");
    assert_eq!(
        lock(&idp.state.userinfo_auth).as_slice(),
        [format!("Bearer {token}")]
    );
    assert_eq!(idp.calls(), (1, 1, 1));
    assert!(store.get(&first.cache_key).await.unwrap().is_some());

    let second = auth.authenticate(&token).await.unwrap();
    assert!(!second.new_session);
    assert_eq!(second.claims, first.claims);
    assert_eq!(idp.calls(), (1, 1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_on_several_runtimes_share_one_resolution() {
    let idp = Idp::start().await;
    idp.set_userinfo(Userinfo::Slow(
        Duration::from_millis(300),
        json!({"sub": "einstein"}),
    ));
    let (auth, _) = authenticator(settings(&idp));
    let token = idp.rsa1(json!({}));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let auth = auth.clone();
            let token = token.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let calls = (0..5).map(|_| auth.authenticate(&token));
                    futures::future::join_all(calls).await
                })
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in threads {
        results.extend(
            tokio::task::spawn_blocking(move || t.join().unwrap())
                .await
                .unwrap(),
        );
    }
    assert_eq!(results.len(), 20);
    let new_sessions = results
        .into_iter()
        .map(|r| r.unwrap().new_session)
        .filter(|n| *n)
        .count();
    assert_eq!(new_sessions, 1);
    assert_eq!(idp.calls(), (1, 1, 1));
    assert!(lock(&auth.inner.flights).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_refreshes_once_then_is_rate_limited() {
    let idp = Idp::start().await;
    let (auth, _) = authenticator(settings(&idp));
    let unknown = |sub: &str| idp.token(TestKey::Rsa2, "rsa2", json!({"sub": sub}));

    let reason = rejected(auth.authenticate(&unknown("a")).await);
    assert!(reason.contains("rsa2"), "{reason}");
    assert_eq!(idp.calls(), (1, 2, 0), "initial fetch and one refresh");

    let reason = rejected(auth.authenticate(&unknown("b")).await);
    assert!(reason.contains("refresh not allowed"), "{reason}");
    assert_eq!(
        idp.calls(),
        (1, 2, 0),
        "no second refresh within refresh_limit"
    );

    // Known keys keep working meanwhile.
    auth.authenticate(&idp.rsa1(json!({}))).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_refresh_can_be_disabled() {
    let idp = Idp::start().await;
    let mut s = settings(&idp);
    s.jwks_refresh_unknown_kid = false;
    let (auth, _) = authenticator(s);
    auth.authenticate(&idp.rsa1(json!({}))).await.unwrap();
    idp.set_jwks(JWKS_ROTATED);
    rejected(
        auth.authenticate(&idp.token(TestKey::Rsa2, "rsa2", json!({})))
            .await,
    );
    assert_eq!(idp.calls().1, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_is_accepted_after_the_refresh() {
    let idp = Idp::start().await;
    let (auth, _) = authenticator(settings(&idp));
    auth.authenticate(&idp.rsa1(json!({}))).await.unwrap();
    assert_eq!(idp.calls().1, 1);

    idp.set_jwks(JWKS_RSA2);
    let rotated = idp.token(TestKey::Rsa2, "rsa2", json!({}));
    let ok = auth.authenticate(&rotated).await.unwrap();
    assert!(ok.new_session);
    assert_eq!(idp.calls().1, 2);
    // The old key is gone from the new set.
    let reason = rejected(auth.authenticate(&idp.rsa1(json!({"sub": "x"}))).await);
    assert!(reason.contains("rsa1"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_refresh_loads_new_keys_until_shutdown() {
    let idp = Idp::start().await;
    let mut s = settings(&idp);
    s.jwks_refresh_interval = Duration::from_millis(100);
    s.jwks_refresh_unknown_kid = false;
    let (auth, _) = authenticator(s);
    let shutdown = CancellationToken::new();
    auth.spawn_background(shutdown.clone());
    auth.authenticate(&idp.rsa1(json!({}))).await.unwrap();
    idp.set_jwks(JWKS_ROTATED);
    let rotated = idp.token(TestKey::Rsa2, "rsa2", json!({}));
    let start = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        // A fresh subject each time so that the negative cache does not answer.
        let token = idp.token(
            TestKey::Rsa2,
            "rsa2",
            json!({"sub": format!("u{attempts}")}),
        );
        if auth.authenticate(&token).await.is_ok() {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "rotated key never loaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(auth.authenticate(&rotated).await.is_ok());
    shutdown.cancel();
    let after_stop = idp.calls().1;
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_millis(400) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(idp.calls().1 <= after_stop + 1, "refresh stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_without_calls_in_the_window() {
    let idp = Idp::start().await;
    let (auth, _) = authenticator(settings(&idp));
    idp.set_userinfo(Userinfo::Status(429, Some(1)));
    let started = Instant::now();
    let ra = unavailable(auth.authenticate(&idp.rsa1(json!({"sub": "a"}))).await);
    assert_eq!(ra, Some(Duration::from_secs(1)));
    assert_eq!(idp.userinfo_calls(), 1);

    let ra = unavailable(auth.authenticate(&idp.rsa1(json!({"sub": "b"}))).await)
        .expect("remaining time");
    assert!(
        ra > Duration::ZERO && ra <= Duration::from_secs(1),
        "{ra:?}"
    );
    assert_eq!(idp.userinfo_calls(), 1, "no call while paused");

    idp.set_userinfo(Userinfo::Json(json!({"sub": "b"})));
    loop {
        match auth.authenticate(&idp.rsa1(json!({"sub": "b"}))).await {
            Ok(_) => break,
            Err(e) => {
                assert!(e.is_retryable(), "{e}");
                assert_eq!(idp.userinfo_calls(), 1, "no call while paused");
            }
        }
        assert!(started.elapsed() < DEADLINE);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(idp.userinfo_calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_down_is_unavailable_while_cached_tokens_keep_working() {
    let mut idp = Idp::start().await;
    let (auth, _) = authenticator(settings(&idp));
    let known = idp.rsa1(json!({}));
    auth.authenticate(&known).await.unwrap();
    idp.shut_down().await;

    let again = auth.authenticate(&known).await.unwrap();
    assert!(!again.new_session);
    let ra = unavailable(auth.authenticate(&idp.rsa1(json!({"sub": "new"}))).await);
    assert_eq!(ra, Some(Duration::from_secs(1)), "first back-off step");
    // Within the back-off the provider is not tried again, and the answer is the same.
    let ra = unavailable(auth.authenticate(&idp.rsa1(json!({"sub": "other"}))).await);
    assert!(ra.is_some_and(|d| d <= Duration::from_secs(1)));
    assert!(auth.authenticate(&known).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_userinfo_times_out_as_unavailable() {
    let idp = Idp::start().await;
    let mut s = settings(&idp);
    s.request_timeout = Duration::from_millis(300);
    let (auth, _) = authenticator(s);
    idp.set_userinfo(Userinfo::Slow(Duration::from_secs(3), json!({})));
    let started = Instant::now();
    let err = auth.authenticate(&idp.rsa1(json!({}))).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        matches!(
            err,
            OidcError::Unavailable {
                timed_out: true,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn userinfo_status_decides_rejected_or_unavailable() {
    let idp = Idp::start().await;
    for (code, retryable) in [
        (401, false),
        (403, false),
        (404, false),
        (501, false),
        (500, true),
        (502, true),
        (503, true),
        (504, true),
        (429, true),
    ] {
        let (auth, store) = authenticator(settings(&idp));
        idp.set_userinfo(Userinfo::Status(code, None));
        let token = idp.rsa1(json!({"sub": format!("s{code}")}));
        let err = auth.authenticate(&token).await.unwrap_err();
        assert_eq!(err.is_retryable(), retryable, "{code}: {err}");
        assert!(
            !matches!(
                err,
                OidcError::Unavailable {
                    timed_out: true,
                    ..
                }
            ),
            "{code}: an answer is not a timeout"
        );
        assert!(err.to_string().contains(&code.to_string()), "{err}");
        assert!(store.is_empty(), "{code}: nothing cached");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_tokens_are_remembered_briefly() {
    let idp = Idp::start().await;
    let mut s = settings(&idp);
    s.negative_ttl = Duration::from_millis(300);
    let (auth, _) = authenticator(s);
    idp.set_userinfo(Userinfo::Status(401, None));
    let token = idp.rsa1(json!({}));
    rejected(auth.authenticate(&token).await);
    rejected(auth.authenticate(&token).await);
    assert_eq!(idp.userinfo_calls(), 1);

    let forged = idp.token(TestKey::Rsa2, "rsa1", json!({}));
    rejected(auth.authenticate(&forged).await);
    rejected(auth.authenticate(&forged).await);
    assert_eq!(
        idp.calls(),
        (1, 1, 1),
        "bad signature: no userinfo, no refresh"
    );

    idp.set_userinfo(Userinfo::Json(json!({"sub": "einstein"})));
    let start = Instant::now();
    while auth.authenticate(&token).await.is_err() {
        assert!(start.elapsed() < DEADLINE, "negative entry never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(idp.userinfo_calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_checks_happen_before_userinfo() {
    let idp = Idp::start().await;
    let (auth, _) = authenticator(settings(&idp));
    let cases = [
        ("expired", idp.rsa1(json!({"exp": unix_now() - 1}))),
        (
            "wrong issuer",
            idp.rsa1(json!({"iss": "https://elsewhere"})),
        ),
        (
            "alg none",
            testing::unsigned(&json!({"alg": "none"}), &json!({"iss": idp.issuer()})),
        ),
        (
            "hs256 with the public key",
            testing::sign_hmac(
                "HS256",
                Some("rsa1"),
                testing::public_pem(TestKey::Rsa1),
                &json!({"iss": idp.issuer()}),
            ),
        ),
        (
            "key confusion",
            testing::raw(
                &json!({"alg": "ES256", "kid": "rsa1"}),
                &json!({"iss": idp.issuer()}),
                &idp.rsa1(json!({})),
            ),
        ),
        ("opaque", "not-a-jwt".to_owned()),
        ("oversized", "a".repeat(MAX_TOKEN_LEN + 1)),
    ];
    for (name, token) in cases {
        let reason = rejected(auth.authenticate(&token).await);
        assert!(!reason.contains(&token), "{name}: the token is not echoed");
    }
    assert_eq!(idp.userinfo_calls(), 0);
    rejected(auth.authenticate("").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audience_allow_list_accepts_aud_or_azp() {
    let idp = Idp::start().await;
    let mut config = Config::default();
    config.oidc.issuer = idp.issuer();
    config.oidc.access_token_verify_aud = vec![" gw ".into(), "".into()];
    let s = OidcSettings::from_config(&config);
    assert_eq!(s.audiences, vec!["gw"]);
    let (auth, _) = authenticator(s);
    auth.authenticate(&idp.rsa1(json!({"aud": ["x", "gw"]})))
        .await
        .unwrap();
    auth.authenticate(&idp.rsa1(json!({"aud": "x", "azp": "gw"})))
        .await
        .unwrap();
    let reason = rejected(auth.authenticate(&idp.rsa1(json!({"aud": "x"}))).await);
    assert!(reason.contains("audience"), "{reason}");
    assert_eq!(idp.userinfo_calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_user_info_keeps_the_token_claims_only() {
    let idp = Idp::start().await;
    let mut s = settings(&idp);
    s.skip_user_info = true;
    let (auth, store) = authenticator(s);
    let exp = unix_now() + 300;
    let token = idp.rsa1(json!({"exp": exp}));
    let ok = auth.authenticate(&token).await.unwrap();
    assert_eq!(
        Value::Object((*ok.claims).clone()),
        json!({"iss": idp.issuer(), "sub": "einstein", "aud": "web", "exp": exp, "sid": "session-1"})
    );
    assert_eq!(idp.calls(), (1, 1, 0));
    assert!(store.get("session-1").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ad_fs_access_token_issuer_is_the_accepted_iss() {
    let idp = Idp::start().await;
    let adfs = "http://adfs.example.com/adfs/services/trust";
    *lock(&idp.state.discovery_extra) = json!({ "access_token_issuer": adfs });
    let (auth, _) = authenticator(settings(&idp));
    auth.authenticate(&idp.rsa1(json!({ "iss": adfs })))
        .await
        .unwrap();
    let reason = rejected(auth.authenticate(&idp.rsa1(json!({}))).await);
    assert!(reason.contains("issuer"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_userinfo_is_verified_with_the_provider_keys() {
    let idp = Idp::start().await;
    let (auth, _) = authenticator(settings(&idp));
    let info = json!({"iss": idp.issuer(), "sub": "einstein", "aud": "web-client", "email": "signed@example.org"});
    idp.set_userinfo(Userinfo::Jwt(testing::sign(
        "ES256",
        Some("ec1"),
        TestKey::Ec1,
        &info,
    )));
    let ok = auth.authenticate(&idp.rsa1(json!({}))).await.unwrap();
    assert_eq!(ok.claims["email"], "signed@example.org");

    idp.set_userinfo(Userinfo::Jwt(testing::sign(
        "RS256",
        Some("rsa1"),
        TestKey::Rsa2,
        &info,
    )));
    let reason = rejected(auth.authenticate(&idp.rsa1(json!({"sub": "x"}))).await);
    assert!(reason.contains("userinfo"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn none_method_takes_claims_from_userinfo_only() {
    let idp = Idp::start().await;
    let mut s = settings(&idp);
    s.verify_method = VerifyMethod::None;
    let clock = Arc::new(ManualClock::default());
    let store = Arc::new(MemoryStore::with_clock(clock.clone()));
    let auth = OidcAuthenticator::new(s, store.clone())
        .unwrap()
        .with_clock(clock.clone());
    idp.set_userinfo(Userinfo::Json(
        json!({"sub": "einstein", "sid": "from-userinfo"}),
    ));
    let ok = auth.authenticate("opaque-access-token").await.unwrap();
    let now = clock.now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    assert_eq!(
        Value::Object((*ok.claims).clone()),
        json!({"sub": "einstein", "sid": "from-userinfo", "exp": now + 10})
    );
    assert_eq!(idp.calls(), (1, 0, 1));
    assert!(
        store.get("from-userinfo").await.unwrap().is_none(),
        "the session index only comes from a verified access token"
    );
    clock.advance(Duration::from_secs(10));
    assert!(
        auth.authenticate("opaque-access-token")
            .await
            .unwrap()
            .new_session
    );
    assert_eq!(idp.userinfo_calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_and_session_index_expire_with_the_token() {
    let idp = Idp::start().await;
    let clock = Arc::new(ManualClock::default());
    let now = clock.now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let store = Arc::new(MemoryStore::with_clock(clock.clone()));
    let auth = OidcAuthenticator::new(settings(&idp), store.clone())
        .unwrap()
        .with_clock(clock.clone());
    let exp = now + 120;
    let token = idp.rsa1(json!({"exp": exp, "sid": "sid-42"}));
    let ok = auth.authenticate(&token).await.unwrap();
    assert_eq!(ok.claims["exp"], json!(exp));

    let expires = Some(UNIX_EPOCH + Duration::from_secs(exp));
    let index = store.get("sid-42").await.unwrap().expect("session index");
    assert_eq!(index.value, Bytes::from(ok.cache_key.clone()));
    assert_eq!(index.expires_at, expires);
    let entry = store.get(&ok.cache_key).await.unwrap().expect("claims");
    assert_eq!(entry.expires_at, expires);
    assert_eq!(
        gatehouse_shared::oidc::decode_claims(&entry.value).unwrap(),
        *ok.claims
    );

    clock.advance(Duration::from_secs(119));
    assert!(!auth.authenticate(&token).await.unwrap().new_session);
    clock.advance(Duration::from_secs(1));
    let reason = rejected(auth.authenticate(&token).await);
    assert!(reason.contains("expired"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_or_expired_cache_values_are_misses() {
    let idp = Idp::start().await;
    let (auth, store) = authenticator(settings(&idp));
    let garbage = idp.rsa1(json!({"sub": "g"}));
    store
        .put(
            &token_cache_key(&garbage),
            Bytes::from_static(b"\xc1garbage"),
            None,
        )
        .await
        .unwrap();
    assert!(auth.authenticate(&garbage).await.unwrap().new_session);

    let stale = idp.rsa1(json!({"sub": "s"}));
    let old = json!({"sub": "stale", "exp": unix_now() - 5});
    let bytes = encode_claims(old.as_object().unwrap()).unwrap();
    store
        .put(&token_cache_key(&stale), Bytes::from(bytes), None)
        .await
        .unwrap();
    let ok = auth.authenticate(&stale).await.unwrap();
    assert!(ok.new_session);
    assert_eq!(ok.claims["name"], "Albert");
    assert_eq!(idp.userinfo_calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_failures_are_retried_and_success_is_kept() {
    let idp = Idp::start().await;
    let (auth, _) = authenticator(settings(&idp));
    *lock(&idp.state.discovery_status) = 503;
    let ra = unavailable(auth.authenticate(&idp.rsa1(json!({}))).await);
    assert_eq!(ra, Some(Duration::from_secs(1)));
    *lock(&idp.state.discovery_status) = 200;
    let start = Instant::now();
    while auth.authenticate(&idp.rsa1(json!({}))).await.is_err() {
        assert!(start.elapsed() < DEADLINE);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    auth.authenticate(&idp.rsa1(json!({"sub": "other"})))
        .await
        .unwrap();
    assert_eq!(idp.calls().0, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discovery_issuer_mismatch_rejects() {
    let idp = Idp::start().await;
    let mut s = settings(&idp);
    s.issuer = format!("{}/", idp.issuer());
    let (auth, _) = authenticator(s);
    let reason = rejected(auth.authenticate(&idp.rsa1(json!({}))).await);
    assert!(reason.contains("does not equal"), "{reason}");
}

#[test]
fn settings_come_from_the_config() {
    let mut config = Config::default();
    config.oidc.jwks.refresh_interval = 2;
    config.oidc.jwks.refresh_limit = 7;
    config.oidc.access_token_verify_method = "none".into();
    config.oidc.request_timeout = "1500ms".parse().unwrap();
    let s = OidcSettings::from_config(&config);
    assert_eq!(s.jwks_refresh_interval, Duration::from_secs(120));
    assert_eq!(s.jwks_refresh_limit, Duration::from_secs(7));
    assert_eq!(s.jwks_refresh_timeout, Duration::from_secs(10));
    // Zero means what it means in oCIS: keyfunc's default timeout, no rate limit, no interval.
    config.oidc.jwks.refresh_timeout = 0;
    config.oidc.jwks.refresh_limit = 0;
    config.oidc.jwks.refresh_interval = 0;
    let zero = OidcSettings::from_config(&config);
    assert_eq!(zero.jwks_refresh_timeout, Duration::from_secs(60));
    assert_eq!(zero.jwks_refresh_limit, Duration::ZERO);
    assert_eq!(zero.jwks_refresh_interval, Duration::ZERO);
    assert_eq!(s.user_info_ttl, Duration::from_secs(10));
    assert_eq!(s.verify_method, VerifyMethod::None);
    assert_eq!(s.request_timeout, Duration::from_millis(1500));
    assert_eq!(s.max_body, 1024 * 1024);
}

#[test]
fn setup_refuses_unsafe_or_invalid_settings() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let base = OidcSettings::from_config(&Config::default());
    let mut any = base.clone();
    any.verify_method = VerifyMethod::None;
    any.skip_user_info = true;
    assert!(matches!(
        OidcAuthenticator::new(any, store.clone()),
        Err(OidcSetupError::AcceptsAnyToken)
    ));
    let mut other = base.clone();
    other.verify_method = VerifyMethod::Other("jwe".into());
    assert!(matches!(
        OidcAuthenticator::new(other, store.clone()),
        Err(OidcSetupError::VerifyMethod(m)) if m == "jwe"
    ));
    let mut empty = base.clone();
    empty.issuer.clear();
    assert!(matches!(
        OidcAuthenticator::new(empty, store.clone()),
        Err(OidcSetupError::NoIssuer)
    ));
    let mut skip = base;
    skip.skip_user_info = true;
    assert!(OidcAuthenticator::new(skip, store).is_ok());
}

mod logout_markers {
    use gatehouse_shared::oidc::sessions::{
        SessionList, encode_logout_time, logged_out_sid_key, logged_out_sub_key, sessions_key,
    };

    use super::*;

    async fn mark(store: &MemoryStore, key: &str, value: Vec<u8>) {
        store.put(key, Bytes::from(value), None).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cached_tokens_are_listed_per_subject() {
        let idp = Idp::start().await;
        let clock = Arc::new(ManualClock::default());
        let store = Arc::new(MemoryStore::with_clock(clock.clone()));
        let auth = OidcAuthenticator::new(settings(&idp), store.clone())
            .unwrap()
            .with_clock(clock.clone());
        let exp = clock.now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 300;
        let a = auth
            .authenticate(&idp.rsa1(json!({"sid": "s1", "exp": exp})))
            .await
            .unwrap();
        let b = auth
            .authenticate(&idp.rsa1(json!({"sid": "s2", "exp": exp + 60})))
            .await
            .unwrap();
        let entry = store.get(&sessions_key("einstein")).await.unwrap().unwrap();
        let list = SessionList::decode(&entry.value);
        assert_eq!(list.hashes_of_sid("s1").collect::<Vec<_>>(), [&a.cache_key]);
        assert_eq!(list.hashes_of_sid("s2").collect::<Vec<_>>(), [&b.cache_key]);
        assert_eq!(
            entry.expires_at,
            Some(UNIX_EPOCH + Duration::from_secs(exp + 60)),
            "the list lives as long as its last token"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_session_marker_refuses_a_valid_token_without_asking_userinfo() {
        let idp = Idp::start().await;
        let (auth, store) = authenticator(settings(&idp));
        mark(&store, &logged_out_sid_key("gone"), encode_logout_time(1)).await;
        let token = idp.rsa1(json!({"sid": "gone"}));
        let reason = rejected(auth.authenticate(&token).await);
        assert!(reason.contains("logged out"), "{reason}");
        assert_eq!(idp.userinfo_calls(), 0);
        assert!(store.get(&token_cache_key(&token)).await.unwrap().is_none());
        // Other sessions of the subject are not affected.
        assert!(
            auth.authenticate(&idp.rsa1(json!({"sid": "other"})))
                .await
                .is_ok()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_subject_marker_refuses_tokens_issued_up_to_the_logout() {
        let idp = Idp::start().await;
        let (auth, store) = authenticator(settings(&idp));
        let t = unix_now() as i64;
        mark(
            &store,
            &logged_out_sub_key("einstein"),
            encode_logout_time(t),
        )
        .await;
        for iat in [t - 60, t] {
            let reason = rejected(
                auth.authenticate(&idp.rsa1(json!({"iat": iat, "sid": format!("s{iat}")})))
                    .await,
            );
            assert!(reason.contains("logged out"), "iat {iat}: {reason}");
        }
        assert!(
            auth.authenticate(&idp.rsa1(json!({"iat": t + 1})))
                .await
                .is_ok(),
            "issued after the logout"
        );
        let other = idp.token(
            TestKey::Rsa1,
            "rsa1",
            json!({"sub": "marie", "iat": t - 60}),
        );
        assert!(auth.authenticate(&other).await.is_ok(), "another subject");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_marker_refuses_a_cached_token_and_hits_read_markers_locally() {
        // Between a logout's marker and its deletion of the claims, the claims are still cached:
        // a cache hit must check the markers too, and through the near-cache that costs no
        // network read (absence is cached).
        let idp = Idp::start().await;
        let inner = Arc::new(MemoryStore::new());
        let near = gatehouse_shared::store::NearCache::new(
            inner.clone(),
            gatehouse_shared::store::NearCacheOptions {
                capacity: 1000,
                op_timeout: Duration::from_secs(1),
            },
            None,
        );
        let auth = OidcAuthenticator::new(settings(&idp), near.clone()).unwrap();
        let token = idp.rsa1(json!({"sid": "s1"}));
        auth.authenticate(&token).await.unwrap();
        let remote = |n: &gatehouse_shared::store::NearCache| {
            let s = n.stats();
            s.misses + s.remote_hits + s.errors
        };
        let before = remote(&near);
        assert!(!auth.authenticate(&token).await.unwrap().new_session);
        assert_eq!(remote(&near), before, "a cache hit read the store remotely");

        near.put(
            &logged_out_sid_key("s1"),
            Bytes::from(encode_logout_time(1)),
            None,
        )
        .await
        .unwrap();
        assert!(
            near.get(&token_cache_key(&token)).await.unwrap().is_some(),
            "the claims are still cached"
        );
        let reason = rejected(auth.authenticate(&token).await);
        assert!(reason.contains("logged out"), "{reason}");
        assert_eq!(remote(&near), before, "the refusal read the store remotely");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_logout_during_resolution_wins() {
        let idp = Idp::start().await;
        let (auth, store) = authenticator(settings(&idp));
        idp.set_userinfo(Userinfo::Slow(
            Duration::from_millis(300),
            json!({"sub": "einstein"}),
        ));
        let token = idp.rsa1(json!({"sid": "racing"}));
        let resolving = tokio::spawn({
            let auth = auth.clone();
            let token = token.clone();
            async move { auth.authenticate(&token).await }
        });
        // The markers were checked before userinfo was asked; the logout lands meanwhile.
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while idp.userinfo_calls() == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "userinfo never asked"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        mark(&store, &logged_out_sid_key("racing"), encode_logout_time(1)).await;
        let reason = rejected(resolving.await.unwrap());
        assert!(reason.contains("logged out"), "{reason}");
        assert!(
            store.get(&token_cache_key(&token)).await.unwrap().is_none(),
            "the claims written meanwhile are removed"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn logout_tokens_are_verified_with_the_provider_keys() {
        use gatehouse_shared::oidc::logout::BACKCHANNEL_LOGOUT_EVENT;
        let idp = Idp::start().await;
        let (auth, _) = authenticator(settings(&idp));
        let claims = json!({
            "iss": idp.issuer(), "aud": "web", "iat": unix_now(), "jti": "j",
            "sid": "s1", "events": {BACKCHANNEL_LOGOUT_EVENT: {}},
        });
        let token = testing::sign("RS256", Some("rsa1"), TestKey::Rsa1, &claims);
        let logout = auth.verify_logout(&token).await.unwrap();
        assert_eq!(logout.sid.as_deref(), Some("s1"));
        assert_eq!(logout.sub, None);
        // A key the provider publishes only after a rotation: one refresh, then accepted.
        idp.set_jwks(JWKS_ROTATED);
        let rotated = testing::sign("RS256", Some("rsa2"), TestKey::Rsa2, &claims);
        assert!(auth.verify_logout(&rotated).await.is_ok());
        let forged = testing::sign("RS256", Some("rsa1"), TestKey::Rsa2, &claims);
        assert!(matches!(
            auth.verify_logout(&forged).await,
            Err(OidcError::Rejected { .. })
        ));
    }
}
