//! A real OpenID provider for end-to-end tests: panva's certified `oidc-provider` (npm, pinned in
//! `tests/idp/package-lock.json`) run by Node from `tests/idp/provider.mjs` on a free loopback port.
//!
//! Why a real OP instead of a mock: discovery, JWKS, userinfo, token formats and error answers are
//! exactly what a certified provider produces, so the gateway is tested against real behaviour.
//! What the provider adds for tests (see the head of `provider.mjs`):
//! - a resource-owner password grant for the static client `gw-test`/`gw-secret`; users
//!   `einstein`/`relativity` (roles `["ocisAdmin"]`), `marie`/`radioactivity` (roles
//!   `["ocisUser"]`) and `newton`/`gravity` (no roles, no groups);
//! - `resource` ⇒ an RS256 JWT access token (`typ: at+jwt`) with that audience carrying the granted
//!   profile claims, `roles`, `sid` and `acr`; otherwise an opaque token. Both work at userinfo;
//! - optional `acr`, `sid` and `extra_claims` (merged into the access token; `null` removes a
//!   claim; registered claims such as `iss`, `sub`, `aud`, `exp` cannot be overridden);
//! - `/__admin/` endpoints counting requests per path and injecting failures or delays.
//!
//! Keys persist in the provider's temporary directory by kid: [`Idp::restart`] keeps the signing
//! key (JWT access tokens stay valid, opaque ones are lost with the in-memory store) and
//! [`Idp::restart_with_kid`] with a new kid rotates it.
//!
//! Node is `$GATEHOUSE_NODE`, else `node` on `PATH` (≥ 20.12). The npm packages must have been
//! installed with `npm ci` in `tests/idp` (`tests/run-all.sh` does it).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::client;
use crate::process::{self as procs, ChildGuard};

/// The confidential client allowed to use every grant, including `password`.
pub const CLIENT_ID: &str = "gw-test";
pub const CLIENT_SECRET: &str = "gw-secret";
/// The resource (audience) of the gateway's JWT access tokens.
pub const GW_AUDIENCE: &str = "urn:gw";
/// Scope asked for by [`TokenOptions::default`].
pub const DEFAULT_SCOPE: &str = "openid profile email groups roles";
/// The users of the provider with their passwords.
pub const USERS: [(&str, &str); 3] = [
    ("einstein", "relativity"),
    ("marie", "radioactivity"),
    ("newton", "gravity"),
];

/// `Basic` credentials of [`CLIENT_ID`]:[`CLIENT_SECRET`].
const CLIENT_BASIC_AUTH: &str = "Basic Z3ctdGVzdDpndy1zZWNyZXQ=";
const INSTALL_HINT: &str =
    "Install Node.js >= 20.12 (tests/run-all.sh installs it) or set GATEHOUSE_NODE.";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const START_ATTEMPTS: usize = 3;

/// Directory of `provider.mjs`, `package.json` and the lock file.
pub fn provider_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("idp")
}

/// Path of the Node binary (panics with install instructions if there is none).
pub fn node_binary() -> PathBuf {
    procs::find_binary("GATEHOUSE_NODE", "node", INSTALL_HINT)
}

/// How to ask the password grant for a token.
#[derive(Clone, Debug)]
pub struct TokenOptions {
    /// Ask for a JWT access token for [`GW_AUDIENCE`] (`resource=urn:gw`); otherwise opaque.
    pub jwt: bool,
    /// Another resource (audience) for the JWT; implies a JWT.
    pub resource: Option<String>,
    pub scope: String,
    /// `acr` put into the access token, the id_token and userinfo.
    pub acr: Option<String>,
    /// Session id put into the access token and id_token (default: a fresh random one).
    pub sid: Option<String>,
    /// A JSON object merged into the access token claims (`null` values remove claims).
    pub extra_claims: Option<Value>,
}

impl Default for TokenOptions {
    /// A JWT access token for [`GW_AUDIENCE`] with [`DEFAULT_SCOPE`].
    fn default() -> Self {
        TokenOptions {
            jwt: true,
            resource: None,
            scope: DEFAULT_SCOPE.to_string(),
            acr: None,
            sid: None,
            extra_claims: None,
        }
    }
}

impl TokenOptions {
    pub fn jwt() -> Self {
        Self::default()
    }

    pub fn opaque() -> Self {
        TokenOptions {
            jwt: false,
            ..Self::default()
        }
    }

    pub fn resource(mut self, resource: &str) -> Self {
        self.resource = Some(resource.to_string());
        self.jwt = true;
        self
    }

    pub fn scope(mut self, scope: &str) -> Self {
        self.scope = scope.to_string();
        self
    }

    pub fn acr(mut self, acr: &str) -> Self {
        self.acr = Some(acr.to_string());
        self
    }

    pub fn sid(mut self, sid: &str) -> Self {
        self.sid = Some(sid.to_string());
        self
    }

    pub fn extra_claims(mut self, claims: Value) -> Self {
        self.extra_claims = Some(claims);
        self
    }

    fn form(&self, user: &str, password: &str) -> String {
        let mut fields: Vec<(&str, String)> = vec![
            ("grant_type", "password".into()),
            ("username", user.into()),
            ("password", password.into()),
            ("scope", self.scope.clone()),
        ];
        if let Some(r) = &self.resource {
            fields.push(("resource", r.clone()));
        } else if self.jwt {
            fields.push(("resource", GW_AUDIENCE.into()));
        }
        if let Some(acr) = &self.acr {
            fields.push(("acr", acr.clone()));
        }
        if let Some(sid) = &self.sid {
            fields.push(("sid", sid.clone()));
        }
        if let Some(extra) = &self.extra_claims {
            fields.push(("extra_claims", extra.to_string()));
        }
        fields
            .iter()
            .map(|(k, v)| format!("{k}={}", form_encode(v)))
            .collect::<Vec<_>>()
            .join("&")
    }
}

/// The token endpoint's answer, successful or not.
#[derive(Clone, Debug)]
pub struct TokenResponse {
    pub status: u16,
    pub body: Value,
}

impl TokenResponse {
    pub fn is_success(&self) -> bool {
        self.status == 200 && self.body.get("access_token").is_some()
    }

    /// The OAuth error code (`invalid_grant`, …) of a failed request.
    pub fn error(&self) -> Option<&str> {
        self.body.get("error").and_then(Value::as_str)
    }

    pub fn access_token(&self) -> &str {
        self.field("access_token")
    }

    pub fn id_token(&self) -> &str {
        self.field("id_token")
    }

    /// Header of the JWT access token.
    pub fn access_header(&self) -> Value {
        decode_jwt(self.access_token()).0
    }

    /// Claims of the JWT access token.
    pub fn access_claims(&self) -> Value {
        decode_jwt(self.access_token()).1
    }

    pub fn id_claims(&self) -> Value {
        decode_jwt(self.id_token()).1
    }

    fn field(&self, name: &str) -> &str {
        self.body
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no {name} in token response {}: {}", self.status, self.body))
    }
}

/// Header and claims of a JWT, unverified (panics on anything else).
pub fn decode_jwt(token: &str) -> (Value, Value) {
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        panic!("not a JWS compact serialisation: {token}");
    };
    let json = |part: &str| -> Value {
        let bytes = base64url_decode(part).unwrap_or_else(|| panic!("bad base64url in {token}"));
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("bad JSON in {token}: {e}"))
    };
    (json(h), json(c))
}

/// A running provider owned by one test; dropping it kills the process.
pub struct Idp {
    node: PathBuf,
    port: u16,
    kid: String,
    extra_kids: Vec<String>,
    log: PathBuf,
    process: ChildGuard,
    // Declared last: removed after the process is killed.
    dir: tempfile::TempDir,
}

impl Idp {
    /// Starts the provider signing with kid `k1` and waits until discovery answers (blocking).
    pub fn start() -> Idp {
        Self::start_with_kid("k1")
    }

    pub fn start_with_kid(kid: &str) -> Idp {
        let node = node_binary();
        check_installed();
        let mut last_failure = String::new();
        for _ in 0..START_ATTEMPTS {
            let dir = tempfile::tempdir().expect("temporary directory");
            let port = crate::free_port();
            let log = dir.path().join("idp.log");
            let process = spawn(&node, port, kid, &[], dir.path(), &log);
            let mut idp = Idp {
                node: node.clone(),
                port,
                kid: kid.to_string(),
                extra_kids: Vec::new(),
                log,
                process,
                dir,
            };
            match idp.wait_ready() {
                Ok(()) => return idp,
                // Most likely a port taken between choosing and binding it: choose again.
                Err(e) => last_failure = e,
            }
        }
        panic!("the OpenID provider did not start after {START_ATTEMPTS} attempts: {last_failure}");
    }

    /// The provider's process id (to pin it, or to read what it used).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// `http://127.0.0.1:<port>`, without a trailing slash, as in discovery.
    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer())
    }

    pub fn discovery_url(&self) -> String {
        self.url("/.well-known/openid-configuration")
    }

    pub fn jwks_url(&self) -> String {
        self.url("/jwks")
    }

    pub fn userinfo_url(&self) -> String {
        self.url("/me")
    }

    pub fn token_url(&self) -> String {
        self.url("/token")
    }

    /// The kid new tokens are signed with.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Everything the provider logged (one line per request), across restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Resource-owner password grant for `user`.
    pub async fn password_token(
        &self,
        user: &str,
        password: &str,
        opts: TokenOptions,
    ) -> TokenResponse {
        password_token_at(&self.token_url(), user, password, opts).await
    }

    /// A successful token for one of [`USERS`] (panics if the grant fails).
    pub async fn user_token(&self, user: &str, opts: TokenOptions) -> TokenResponse {
        let password = USERS
            .iter()
            .find(|(u, _)| *u == user)
            .map(|(_, p)| *p)
            .unwrap_or_else(|| panic!("no test user {user}"));
        let t = self.password_token(user, password, opts).await;
        assert!(t.is_success(), "token for {user}: {} {}", t.status, t.body);
        t
    }

    /// GET userinfo with `token` as bearer.
    pub async fn userinfo(&self, token: &str) -> client::Reply {
        let auth = format!("Bearer {token}");
        client::get_with(&self.userinfo_url(), &[("authorization", &auth)]).await
    }

    /// Requests per path since start or the last [`Idp::reset_stats`], e.g.
    /// `{"/.well-known/openid-configuration": 1, "/jwks": 2, "/me": 5, "/token": 3}`.
    pub async fn stats(&self) -> Value {
        let reply = client::get(&self.url("/__admin/stats")).await;
        assert_eq!(reply.status, 200, "stats: {}", reply.text());
        serde_json::from_slice(&reply.body).expect("stats JSON")
    }

    /// Requests to `path` (e.g. `/me`, `/jwks`, `/token`) counted by [`Idp::stats`].
    pub async fn count(&self, path: &str) -> u64 {
        self.stats()
            .await
            .get(path)
            .and_then(Value::as_u64)
            .unwrap_or(0)
    }

    pub async fn reset_stats(&self) {
        self.admin_post("/__admin/reset", None).await;
    }

    /// Makes `path` answer `status` (with `Retry-After` when given) for the next `count`
    /// requests, or until [`Idp::clear_failures`] when `count` is `None`. Replaces an earlier
    /// rule for the same path. Failed requests are still counted in the stats.
    pub async fn fail(
        &self,
        path: &str,
        status: u16,
        retry_after: Option<u64>,
        count: Option<u64>,
    ) {
        let spec =
            json!({"path": path, "status": status, "retry_after": retry_after, "count": count});
        self.admin_post("/__admin/fail", Some(spec)).await;
    }

    /// Delays the answers of `path` by `delay` (then answers normally) for the next `count`
    /// requests, or until cleared.
    pub async fn delay(&self, path: &str, delay: Duration, count: Option<u64>) {
        let ms = u64::try_from(delay.as_millis()).expect("delay fits u64 ms");
        let spec = json!({"path": path, "delay_ms": ms, "count": count});
        self.admin_post("/__admin/fail", Some(spec)).await;
    }

    pub async fn clear_failures(&self) {
        self.admin_post("/__admin/clear", None).await;
    }

    /// Ends a session as the provider does: it signs a back-channel logout token naming `sid`
    /// and/or `sub` with its own key and POSTs it to `target`. Returns the relying party's
    /// status and body.
    pub async fn backchannel_logout(
        &self,
        target: &str,
        sid: Option<&str>,
        sub: Option<&str>,
    ) -> (u16, String) {
        let spec = json!({"target": target, "sid": sid, "sub": sub});
        let reply = client::send(
            "POST",
            &self.url("/__admin/backchannel-logout"),
            &[("content-type", "application/json")],
            client::full(spec.to_string()),
        )
        .await;
        assert_eq!(reply.status, 200, "backchannel-logout: {}", reply.text());
        let v: Value = serde_json::from_slice(&reply.body).expect("admin answer is JSON");
        let status = v["status"].as_u64().expect("status") as u16;
        (status, v["body"].as_str().unwrap_or_default().to_owned())
    }

    async fn admin_post(&self, path: &str, body: Option<Value>) {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let reply = client::send(
            "POST",
            &self.url(path),
            &[("content-type", "application/json")],
            client::full(body),
        )
        .await;
        assert_eq!(reply.status, 204, "POST {path}: {}", reply.text());
    }

    /// Kills the provider (SIGKILL); the port stays reserved for [`Idp::restart`].
    pub fn kill(&mut self) {
        self.process.kill();
    }

    pub fn is_running(&mut self) -> bool {
        !self.process.has_exited()
    }

    /// Freezes the provider (SIGSTOP): connections are accepted by the kernel but nothing is
    /// answered, as with a hung IdP. Tokens and grants survive, unlike a restart.
    pub fn pause(&self) {
        self.process.signal("STOP");
    }

    /// Lets a paused provider run again (SIGCONT).
    pub fn resume(&self) {
        self.process.signal("CONT");
    }

    /// Kills and starts the provider again on the same port with the same signing key. Opaque
    /// tokens, grants and sessions are lost; JWT access tokens stay valid.
    pub fn restart(&mut self) {
        let (kid, extra) = (self.kid.clone(), self.extra_kids.clone());
        self.restart_inner(&kid, &extra);
    }

    /// Restarts signing with `kid` (a new key unless `kid` was used before by this provider):
    /// the JWKS then holds only that key.
    pub fn restart_with_kid(&mut self, kid: &str) {
        self.restart_inner(kid, &[]);
    }

    /// Restarts signing with `kid` while also publishing the keys `also_published` in the JWKS
    /// (a rotation with overlap: tokens signed by those keys still verify).
    pub fn restart_with_keys(&mut self, kid: &str, also_published: &[&str]) {
        let extra: Vec<String> = also_published.iter().map(|s| s.to_string()).collect();
        self.restart_inner(kid, &extra);
    }

    fn restart_inner(&mut self, kid: &str, extra_kids: &[String]) {
        self.process.kill();
        self.kid = kid.to_string();
        self.extra_kids = extra_kids.to_vec();
        self.process = spawn(
            &self.node,
            self.port,
            kid,
            extra_kids,
            self.dir.path(),
            &self.log,
        );
        if let Err(e) = self.wait_ready() {
            panic!("the restarted OpenID provider did not become ready: {e}");
        }
    }

    /// Waits until discovery answers 200 with this issuer.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut pause = Duration::from_millis(10);
        loop {
            if self.process.has_exited() {
                return Err(format!("provider exited during start-up:\n{}", self.log()));
            }
            if let Some((200, body)) = http_get(self.port, "/.well-known/openid-configuration") {
                let issuer = serde_json::from_str::<Value>(&body)
                    .ok()
                    .and_then(|v| v.get("issuer").and_then(Value::as_str).map(String::from));
                if issuer.as_deref() == Some(self.issuer().as_str()) {
                    return Ok(());
                }
                return Err(format!(
                    "another server answers on port {}: {body}",
                    self.port
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "discovery not answering after {READY_TIMEOUT:?}:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }
}

fn check_installed() {
    let dir = provider_dir();
    assert!(
        dir.join("node_modules/oidc-provider/package.json")
            .is_file(),
        "the test OpenID provider's npm packages are missing: run `npm ci` in {} \
         (tests/run-all.sh does it)",
        dir.display()
    );
}

fn spawn(
    node: &Path,
    port: u16,
    kid: &str,
    extra_kids: &[String],
    dir: &Path,
    log: &Path,
) -> ChildGuard {
    let dir_of_provider = provider_dir();
    let mut cmd = Command::new(node);
    cmd.arg(dir_of_provider.join("provider.mjs"))
        .arg(port.to_string())
        .current_dir(&dir_of_provider)
        .env("IDP_KID", kid)
        .env("IDP_EXTRA_KIDS", extra_kids.join(","))
        .env("IDP_KEYS_FILE", dir.join("keys.json"));
    ChildGuard::spawn("oidc-provider", cmd, log)
}

/// One blocking HTTP/1.0 GET on loopback; `None` while nothing answers.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// `application/x-www-form-urlencoded` value encoding.
fn form_encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Unpadded base64url (as in JWTs); `None` on a character outside the alphabet.
fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().take_while(|c| *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Resource-owner password grant for `user` at the token endpoint `token_url` of a provider
/// running `provider.mjs` (here or in a container).
pub async fn password_token_at(
    token_url: &str,
    user: &str,
    password: &str,
    opts: TokenOptions,
) -> TokenResponse {
    let reply = client::send(
        "POST",
        token_url,
        &[
            ("authorization", CLIENT_BASIC_AUTH),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        client::full(opts.form(user, password)),
    )
    .await;
    let body = serde_json::from_slice(&reply.body).unwrap_or_else(|e| {
        panic!(
            "token endpoint answered {} non-JSON ({e}): {}",
            reply.status,
            reply.text()
        )
    });
    TokenResponse {
        status: reply.status.as_u16(),
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_decodes_all_lengths() {
        assert_eq!(base64url_decode("").unwrap(), b"");
        assert_eq!(base64url_decode("Zg").unwrap(), b"f");
        assert_eq!(base64url_decode("Zm8").unwrap(), b"fo");
        assert_eq!(base64url_decode("Zm9v").unwrap(), b"foo");
        assert_eq!(base64url_decode("Zm9vYg==").unwrap(), b"foob");
        assert_eq!(base64url_decode("-_8").unwrap(), [0xfb, 0xff]);
        assert!(base64url_decode("a+b").is_none());
    }

    #[test]
    fn form_encoding_escapes_reserved_characters() {
        assert_eq!(
            form_encode("a b&c={\"x\":1}"),
            "a%20b%26c%3D%7B%22x%22%3A1%7D"
        );
        assert_eq!(form_encode("urn:gw"), "urn%3Agw");
    }

    #[test]
    fn client_basic_auth_matches_the_client_credentials() {
        let encoded = CLIENT_BASIC_AUTH.strip_prefix("Basic ").unwrap();
        let decoded = base64url_decode(encoded).unwrap();
        assert_eq!(decoded, format!("{CLIENT_ID}:{CLIENT_SECRET}").as_bytes());
    }
}
