//! The hostile-input corpus (issue 4): malicious and malformed requests sent as raw bytes to one
//! node in front of a real OpenID provider, each with the answer it must get and the upstreams it
//! may reach.
//!
//! Why raw TCP: most of these requests cannot be produced by a well-behaved HTTP client (two
//! framings at once, bare CR, obsolete line folding, NUL bytes, absolute- and authority-form
//! targets), and the point is to see what the node does with exactly these bytes.
//!
//! Every case also asserts the invariants of the issue: no 5xx on any answer of the connection,
//! no upstream reached unless the case allows it (so no protected service without credentials),
//! and the node still alive and healthy afterwards. While the corpus runs a background client
//! keeps sending ordinary authenticated requests and must see only 2xx.
//!
//! Signed URLs are signed with a key the node itself issued (`/ocs/v1.php/cloud/user/signing-key`)
//! for the `Host` the raw requests send; share tokens are checked by the share-service fixture.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use gatehouse_shared::oidc::testing::{self, TestKey};
use gatehouse_shared::token::verify;
use gatehouse_tests::client::{bearer, get};
use gatehouse_tests::idp::{Idp, TokenOptions, decode_jwt};
use gatehouse_tests::node::{GatehouseNode, NodeOptions};
use gatehouse_tests::shares::{FixtureShare, ShareFixture};
use gatehouse_tests::signing::{Link, sign};
use gatehouse_tests::upstream::{Recorded, Upstream};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &str = "gatehouse-hostile-secret";
const HOST: &str = "gw.test";
/// How long a connection may stay silent after it answered before the case stops reading.
const IDLE: Duration = Duration::from_millis(800);
/// Longest a case may take; a case still without an answer or close by then has hung the node.
const DEADLINE: Duration = Duration::from_secs(6);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Svc {
    Open,
    Files,
    Mfa,
    Root,
}

const SERVICES: [Svc; 4] = [Svc::Open, Svc::Files, Svc::Mfa, Svc::Root];

/// The answer a case must get.
enum Expect {
    /// The first answer on the connection has one of these statuses.
    Status(&'static [u16]),
    /// The answers on the connection have exactly these statuses, in order.
    Sequence(&'static [u16]),
    /// No 2xx/3xx: a 4xx or the connection closed (not a hang).
    Refused,
    /// The node closes the connection (possibly after a 4xx) before [`DEADLINE`].
    Closed,
}

/// Which upstreams a case may reach.
enum Reach {
    Nothing,
    /// This one any number of times (including never), no other.
    AtMost(Svc),
    /// This one exactly once, no other.
    Exactly(Svc),
}

type Check = Box<dyn Fn(&Recorded) -> Result<(), String> + Send + Sync>;

/// How the bytes are written.
enum Write {
    /// All at once; the connection stays open for reading.
    All,
    /// One byte every 150 ms (slowloris).
    Drip,
}

struct Case {
    category: &'static str,
    name: String,
    bytes: Vec<u8>,
    write: Write,
    expect: Expect,
    reach: Reach,
    /// Applied to every request the allowed upstream received in this case.
    check: Option<Check>,
}

fn case(
    category: &'static str,
    name: impl Into<String>,
    bytes: Vec<u8>,
    expect: Expect,
    reach: Reach,
) -> Case {
    Case {
        category,
        name: name.into(),
        bytes,
        write: Write::All,
        expect,
        reach,
        check: None,
    }
}

impl Case {
    fn check(
        mut self,
        f: impl Fn(&Recorded) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.check = Some(Box::new(f));
        self
    }
    fn drip(mut self) -> Self {
        self.write = Write::Drip;
        self
    }
}

/// A well-formed HTTP/1.1 request head with `Host` and `Connection: close`.
fn req(method: &str, target: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut s = format!("{method} {target} HTTP/1.1\r\nHost: {HOST}\r\n");
    for (k, v) in headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str("Connection: close\r\n\r\n");
    s.into_bytes()
}

fn get_(target: &str) -> Vec<u8> {
    req("GET", target, &[])
}

/// What came back on one connection.
#[derive(Debug)]
struct Outcome {
    statuses: Vec<u16>,
    closed: bool,
    raw: Vec<u8>,
}

impl Outcome {
    fn head(&self) -> String {
        let text = String::from_utf8_lossy(&self.raw);
        text.chars().take(400).collect()
    }
}

/// Status codes of every response head in `raw`, in order. A head may follow the previous body
/// without a line break, so every `HTTP/1.x NNN ` is one (no body here contains that text).
fn statuses(raw: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(raw);
    let mut out = Vec::new();
    let mut rest = text.as_ref();
    while let Some(i) = rest.find("HTTP/1.") {
        rest = &rest[i + "HTTP/1.".len()..];
        let b = rest.as_bytes();
        if b.len() >= 6
            && b[0].is_ascii_digit()
            && b[1] == b' '
            && b[2..5].iter().all(u8::is_ascii_digit)
            && b[5] == b' '
            && let Ok(code) = rest[2..5].parse()
        {
            out.push(code);
        }
    }
    out
}

async fn exchange(addr: std::net::SocketAddr, bytes: Vec<u8>, write: &Write) -> Outcome {
    let stream = TcpStream::connect(addr).await.expect("connect to the node");
    let (mut rd, mut wr) = stream.into_split();
    let drip = matches!(write, Write::Drip);
    let writer = tokio::spawn(async move {
        if drip {
            for b in bytes {
                if wr.write_all(&[b]).await.is_err() {
                    return wr;
                }
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        } else {
            let _ = wr.write_all(&bytes).await;
        }
        // Keep the write half open: a half-close would tell the node the client is gone.
        wr
    });
    let start = Instant::now();
    let mut raw = Vec::new();
    let mut closed = false;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let left = DEADLINE.saturating_sub(start.elapsed());
        if left.is_zero() {
            break;
        }
        let wait = if raw.is_empty() { left } else { IDLE.min(left) };
        match tokio::time::timeout(wait, rd.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => raw.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    writer.abort();
    Outcome {
        statuses: statuses(&raw),
        closed,
        raw,
    }
}

struct Upstreams {
    by_svc: BTreeMap<Svc, Upstream>,
}

impl Upstreams {
    fn counts(&self) -> BTreeMap<Svc, usize> {
        self.by_svc.iter().map(|(s, u)| (*s, u.count())).collect()
    }
}

/// Runs one case and returns what went wrong, if anything.
async fn run(c: &Case, gw: &GatehouseNode, ups: &Upstreams) -> Vec<String> {
    let before = ups.counts();
    let t = Instant::now();
    let out = exchange(gw.http, c.bytes.clone(), &c.write).await;
    let after = ups.counts();
    println!(
        "[{}] {}: {:?} closed={} {:?}",
        c.category,
        c.name,
        out.statuses,
        out.closed,
        t.elapsed()
    );
    let mut errs = Vec::new();
    if let Some(s) = out.statuses.iter().find(|s| **s >= 500) {
        errs.push(format!("answered {s}"));
    }
    let first = out.statuses.first().copied();
    match &c.expect {
        Expect::Status(set) => {
            if !first.is_some_and(|s| set.contains(&s)) {
                errs.push(format!(
                    "expected one of {set:?}, got {first:?} (closed: {})",
                    out.closed
                ));
            }
        }
        Expect::Sequence(want) => {
            if out.statuses != *want {
                errs.push(format!("expected answers {want:?}, got {:?}", out.statuses));
            }
        }
        Expect::Refused => {
            if out.statuses.iter().any(|s| (200..400).contains(s)) {
                errs.push(format!("expected a refusal, got {:?}", out.statuses));
            } else if !out.closed && out.statuses.is_empty() {
                errs.push("no answer and the connection stayed open (hang)".into());
            }
        }
        Expect::Closed => {
            if !out.closed {
                errs.push(format!("connection not closed within {DEADLINE:?}"));
            }
            if out.statuses.iter().any(|s| (200..400).contains(s)) {
                errs.push(format!("expected no success, got {:?}", out.statuses));
            }
        }
    }
    let grew = |s: Svc| after[&s] - before[&s];
    let allowed = match c.reach {
        Reach::Nothing => None,
        Reach::AtMost(s) | Reach::Exactly(s) => Some(s),
    };
    for s in SERVICES {
        if Some(s) != allowed && grew(s) > 0 {
            let got = ups.by_svc[&s].requests();
            errs.push(format!(
                "reached {s:?} ({} request(s), last {:?})",
                grew(s),
                got.last().map(|r| &r.uri)
            ));
        }
    }
    if let Reach::Exactly(s) = c.reach
        && grew(s) != 1
    {
        errs.push(format!(
            "expected exactly one request at {s:?}, got {}",
            grew(s)
        ));
    }
    if let (Some(s), Some(check)) = (allowed, &c.check) {
        let all = ups.by_svc[&s].requests();
        for r in &all[before[&s]..] {
            if let Err(e) = check(r) {
                errs.push(format!("{s:?} received {} {}: {e}", r.method, r.uri));
            }
        }
    }
    if !errs.is_empty() {
        errs.push(format!("answer: {:?}", out.head()));
    }
    errs
}

fn yaml(idp: &Idp, ups: &Upstreams, bg: &Upstream, shares: &ShareFixture) -> String {
    format!(
        "policies:
  - name: ocis
    routes:
      - endpoint: /open/
        backend: {open}
        unprotected: true
      - type: regex
        endpoint: /open-rx/v[12]/config
        backend: {open}
        unprotected: true
      - endpoint: /files/
        backend: {files}
      - endpoint: /mfa/
        backend: {mfa}
        require_mfa: true
      - endpoint: /bg/
        backend: {bg}
      - endpoint: /
        backend: {root}
oidc:
  issuer: {iss}
auto_provision_accounts: true
token_manager:
  jwt_secret: {SECRET}
mfa:
  enabled: true
http:
  header_read_timeout: 1s
pre_signed_url:
  serve_signing_keys: true
  signing_keys: {{store: memory}}
public_shares:
  url: {shares}
# The corpus sends hundreds of bad credentials from one address; the guard stays on (its code
# runs on every case) with limits the corpus does not reach. tests/tests/brute_force.rs tests it.
brute_force:
  max_failures_per_address: 100000
  max_failures_per_user: 100000
  max_failures_per_share: 100000
",
        open = ups.by_svc[&Svc::Open].url(),
        files = ups.by_svc[&Svc::Files].url(),
        mfa = ups.by_svc[&Svc::Mfa].url(),
        root = ups.by_svc[&Svc::Root].url(),
        bg = bg.url(),
        iss = idp.issuer(),
        shares = shares.url(),
    )
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

/// A DER length.
fn der_len(n: usize) -> Vec<u8> {
    if n < 0x80 {
        return vec![n as u8];
    }
    let bytes: Vec<u8> = n
        .to_be_bytes()
        .iter()
        .copied()
        .skip_while(|b| *b == 0)
        .collect();
    let mut out = vec![0x80 | bytes.len() as u8];
    out.extend(bytes);
    out
}

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend(der_len(content.len()));
    out.extend_from_slice(content);
    out
}

fn der_uint(bytes: &[u8]) -> Vec<u8> {
    let mut v = bytes.to_vec();
    if v.first().is_some_and(|b| b & 0x80 != 0) {
        v.insert(0, 0);
    }
    der(0x02, &v)
}

fn pem(label: &str, der: &[u8]) -> String {
    let b = STANDARD.encode(der);
    let lines: Vec<&str> = b
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// The provider's RSA public key as PKCS#1 and SubjectPublicKeyInfo PEM, the secrets an
/// algorithm-confusion attack would use as HMAC key.
fn public_pems(jwk: &Value) -> (String, String) {
    let n = URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap();
    let e = URL_SAFE_NO_PAD.decode(jwk["e"].as_str().unwrap()).unwrap();
    let pkcs1 = der(0x30, &[der_uint(&n), der_uint(&e)].concat());
    let alg_id = der(
        0x30,
        &[
            der(
                0x06,
                &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01],
            ),
            vec![0x05, 0x00],
        ]
        .concat(),
    );
    let mut bits = vec![0u8];
    bits.extend(&pkcs1);
    let spki = der(0x30, &[alg_id, der(0x03, &bits)].concat());
    (pem("RSA PUBLIC KEY", &pkcs1), pem("PUBLIC KEY", &spki))
}

/// The upstream got a token minted by the node for `user`, not anything the client sent.
fn minted_for(user: &'static str) -> impl Fn(&Recorded) -> Result<(), String> {
    move |r| {
        let values: Vec<_> = r.headers.get_all("x-access-token").iter().collect();
        if values.len() != 1 {
            return Err(format!("{} x-access-token headers", values.len()));
        }
        let token = values[0].to_str().map_err(|e| e.to_string())?;
        let claims = verify(SECRET.as_bytes(), token, Duration::from_secs(5))
            .map_err(|e| format!("x-access-token not minted by the node: {e}"))?;
        if claims.user.username != user {
            return Err(format!("token for {}", claims.user.username));
        }
        Ok(())
    }
}

fn header_is(r: &Recorded, name: &str, want: Option<&str>) -> Result<(), String> {
    let got: Vec<_> = r
        .headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    match want {
        None if got.is_empty() => Ok(()),
        Some(w) if got == [w] => Ok(()),
        _ => Err(format!("{name}: {got:?}, expected {want:?}")),
    }
}

/// The upstream's framing is the node's own: never both a length and a transfer coding.
fn single_framing(r: &Recorded) -> Result<(), String> {
    if r.headers.contains_key("content-length") && r.headers.contains_key("transfer-encoding") {
        return Err("both content-length and transfer-encoding".into());
    }
    Ok(())
}

struct Tokens {
    good: String,
    strong: String,
    id_token: String,
    other_aud: String,
    other_good: String,
    jwk: Value,
    kid: String,
}

fn jwt_cases(t: &Tokens) -> Vec<Case> {
    const C: &str = "forged JWT";
    let parts: Vec<&str> = t.good.split('.').collect();
    let (header, claims) = decode_jwt(&t.good);
    let other_sig = t.other_good.rsplit('.').next().unwrap().to_string();
    let with_claims = |f: &dyn Fn(&mut Value)| {
        let mut c = claims.clone();
        f(&mut c);
        format!("{}.{}.{}", parts[0], b64(&c), parts[2])
    };
    let with_header = |f: &dyn Fn(&mut Value)| {
        let mut h = header.clone();
        f(&mut h);
        format!("{}.{}.{}", b64(&h), parts[1], parts[2])
    };
    let (pkcs1, spki) = public_pems(&t.jwk);
    let kid = t.kid.as_str();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut fresh = claims.clone();
    fresh["exp"] = json!(now + 3600);
    let hmac =
        |alg: &str, kid: Option<&str>, secret: &[u8]| testing::sign_hmac(alg, kid, secret, &fresh);
    let mut tokens: Vec<(String, String)> = vec![
        (
            "alg none, empty signature".into(),
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT"})),
                parts[1]
            ),
        ),
        (
            "alg none, kept signature".into(),
            format!(
                "{}.{}.{}",
                b64(&json!({"alg": "none", "kid": kid})),
                parts[1],
                parts[2]
            ),
        ),
        (
            "alg None".into(),
            format!("{}.{}.", b64(&json!({"alg": "None", "kid": kid})), parts[1]),
        ),
        (
            "alg NONE".into(),
            format!("{}.{}.", b64(&json!({"alg": "NONE", "kid": kid})), parts[1]),
        ),
        (
            "alg nOnE, two-part token".into(),
            format!("{}.{}", b64(&json!({"alg": "nOnE"})), parts[1]),
        ),
        (
            "HS256 keyed with the SPKI PEM".into(),
            hmac("HS256", Some(kid), spki.as_bytes()),
        ),
        (
            "HS256 keyed with the PKCS#1 PEM".into(),
            hmac("HS256", Some(kid), pkcs1.as_bytes()),
        ),
        (
            "HS256 keyed with the JWK JSON".into(),
            hmac("HS256", Some(kid), t.jwk.to_string().as_bytes()),
        ),
        (
            "HS384 keyed with the SPKI PEM".into(),
            hmac("HS384", Some(kid), spki.as_bytes()),
        ),
        (
            "HS512 keyed with the modulus".into(),
            hmac(
                "HS512",
                Some(kid),
                &URL_SAFE_NO_PAD
                    .decode(t.jwk["n"].as_str().unwrap())
                    .unwrap(),
            ),
        ),
        (
            "HS256 keyed with the node's jwt_secret".into(),
            hmac("HS256", Some(kid), SECRET.as_bytes()),
        ),
        (
            "HS256 keyed with an empty secret".into(),
            hmac("HS256", None, b""),
        ),
        (
            "HS256 header over the RS256 signature".into(),
            with_header(&|h| h["alg"] = json!("HS256")),
        ),
        (
            "RS256 by another key with the provider's kid".into(),
            testing::sign("RS256", Some(kid), TestKey::Rsa1, &fresh),
        ),
        (
            "RS256 by another key, unknown kid".into(),
            testing::sign("RS256", Some("rsa1"), TestKey::Rsa1, &fresh),
        ),
        (
            "RS256 by another key, no kid".into(),
            testing::sign("RS256", None, TestKey::Rsa2, &fresh),
        ),
        (
            "ES256 by another key with the provider's kid".into(),
            testing::sign("ES256", Some(kid), TestKey::Ec1, &fresh),
        ),
        (
            "PS256 by another key with the provider's kid".into(),
            testing::sign("PS256", Some(kid), TestKey::Rsa1, &fresh),
        ),
        (
            "kid changed".into(),
            with_header(&|h| h["kid"] = json!("other")),
        ),
        (
            "kid path traversal".into(),
            with_header(&|h| h["kid"] = json!("../../../../dev/null")),
        ),
        (
            "kid SQL injection".into(),
            with_header(&|h| h["kid"] = json!("x' UNION SELECT 'secret")),
        ),
        (
            "kid 10 kB".into(),
            with_header(&|h| h["kid"] = json!("k".repeat(10_000))),
        ),
        (
            "kid not a string".into(),
            with_header(&|h| h["kid"] = json!({"a": [1, 2]})),
        ),
        (
            "jku pointing elsewhere".into(),
            with_header(&|h| h["jku"] = json!("http://127.0.0.1:1/jwks")),
        ),
        (
            "embedded jwk".into(),
            with_header(&|h| h["jwk"] = t.jwk.clone()),
        ),
        (
            "crit header".into(),
            with_header(&|h| h["crit"] = json!(["exp"])),
        ),
        (
            "header not JSON".into(),
            format!(
                "{}.{}.{}",
                URL_SAFE_NO_PAD.encode("{alg"),
                parts[1],
                parts[2]
            ),
        ),
        (
            "header a JSON array".into(),
            format!("{}.{}.{}", b64(&json!(["RS256"])), parts[1], parts[2]),
        ),
        (
            "payload a JSON string".into(),
            format!("{}.{}.{}", parts[0], b64(&json!("marie")), parts[2]),
        ),
        (
            "signature stripped".into(),
            format!("{}.{}.", parts[0], parts[1]),
        ),
        (
            "signature part missing".into(),
            format!("{}.{}", parts[0], parts[1]),
        ),
        (
            "signature of another token".into(),
            format!("{}.{}.{other_sig}", parts[0], parts[1]),
        ),
        (
            "signature truncated".into(),
            format!(
                "{}.{}.{}",
                parts[0],
                parts[1],
                &parts[2][..parts[2].len() / 2]
            ),
        ),
        ("signature bit flipped".into(), {
            let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
            sig[0] ^= 1;
            format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(sig))
        }),
        (
            "payload: sub changed".into(),
            with_claims(&|c| c["sub"] = json!("einstein")),
        ),
        (
            "payload: username changed".into(),
            with_claims(&|c| c["preferred_username"] = json!("einstein")),
        ),
        (
            "payload: roles raised".into(),
            with_claims(&|c| c["roles"] = json!(["ocisAdmin"])),
        ),
        (
            "payload: expired".into(),
            with_claims(&|c| c["exp"] = json!(1_000_000_000)),
        ),
        (
            "payload: not yet valid (nbf)".into(),
            with_claims(&|c| c["nbf"] = json!(now + 86_400)),
        ),
        (
            "payload: issued in the future".into(),
            with_claims(&|c| c["iat"] = json!(now + 86_400)),
        ),
        (
            "payload: exp removed".into(),
            with_claims(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
        ),
        (
            "payload: issuer changed".into(),
            with_claims(&|c| c["iss"] = json!("http://evil.example")),
        ),
        (
            "payload: audience changed".into(),
            with_claims(&|c| c["aud"] = json!("urn:other")),
        ),
        (
            "payload: acr raised".into(),
            with_claims(&|c| c["acr"] = json!("advanced")),
        ),
        (
            "payload base64 with padding".into(),
            format!("{}.{}==.{}", parts[0], parts[1], parts[2]),
        ),
        (
            "payload standard base64 alphabet".into(),
            format!(
                "{}.{}.{}",
                parts[0],
                STANDARD.encode(claims.to_string()),
                parts[2]
            ),
        ),
        ("other audience (verify_aud)".into(), t.other_aud.clone()),
        (
            "id_token instead of the access token".into(),
            t.id_token.clone(),
        ),
        (
            "oversized (20 kB)".into(),
            format!("{}.{}.{}", parts[0], "A".repeat(20_000), parts[2]),
        ),
        ("non-base64 parts".into(), "!!!.@@@.###".into()),
        ("three dots".into(), "a.b.c".into()),
        ("only dots".into(), "....".into()),
        (
            "five parts (JWE shape)".into(),
            format!(
                "{}.{}.{}.{}.{}",
                parts[0], parts[1], parts[2], parts[1], parts[2]
            ),
        ),
        ("valid token with a suffix".into(), format!("{}x", t.good)),
        (
            "valid token with a trailing dot".into(),
            format!("{}.", t.good),
        ),
        ("Bearer twice".into(), format!("Bearer {}", t.good)),
        ("non-UTF-8 token".into(), "\u{00ff}\u{00fe}".into()),
    ];
    let mut out: Vec<Case> = tokens
        .drain(..)
        .map(|(name, token)| {
            case(
                C,
                name,
                req("GET", "/files/x", &[("Authorization", &bearer(&token))]),
                Expect::Status(&[401]),
                Reach::Nothing,
            )
        })
        .collect();
    let headers: Vec<(&str, String)> = vec![
        ("empty bearer", "Bearer ".into()),
        ("bare scheme", "Bearer".into()),
        ("empty authorization", "".into()),
        ("lowercase bearer", format!("bearer {}", t.good)),
        ("uppercase BEARER", format!("BEARER {}", t.good)),
        ("token without a scheme", t.good.clone()),
        ("Basic with garbage", "Basic Zm9vOmJhcg==".into()),
        ("Basic not base64", "Basic !!!".into()),
        ("Negotiate", "Negotiate YIIB".into()),
    ];
    for (name, value) in headers {
        out.push(case(
            C,
            name,
            req("GET", "/files/x", &[("Authorization", &value)]),
            Expect::Status(&[401]),
            Reach::Nothing,
        ));
    }
    let get_files = |headers: &[&str]| {
        let host = format!("Host: {HOST}");
        lines(
            &[
                &["GET /files/x HTTP/1.1", host.as_str()],
                headers,
                &["Connection: close"],
            ]
            .concat(),
        )
    };
    let two = get_files(&[
        "Authorization: Bearer forged",
        "Authorization: Bearer a.b.c",
    ]);
    out.push(case(
        C,
        "two forged Authorization headers",
        two,
        Expect::Status(&[401]),
        Reach::Nothing,
    ));
    let cr = get_files(&[&format!(
        "Authorization: Bearer {}\rX-Access-Token: forged",
        t.good
    )]);
    out.push(case(
        C,
        "token followed by a bare CR",
        cr,
        Expect::Status(&[400]),
        Reach::Nothing,
    ));
    let lf = get_files(&[&format!(
        "Authorization: Bearer {}\nX-Access-Token: forged",
        t.good
    )]);
    out.push(
        case(
            C,
            "token followed by a bare LF and x-access-token",
            lf,
            Expect::Status(&[200]),
            Reach::AtMost(Svc::Files),
        )
        .check(minted_for("marie")),
    );
    let fold = get_files(&["Authorization: Bearer", &format!(" {}", t.good)]);
    out.push(case(
        C,
        "token on a folded line",
        fold,
        Expect::Status(&[400]),
        Reach::Nothing,
    ));
    // Step-up: a valid token without the acr must not pass a require_mfa route, whatever the
    // client claims in headers.
    out.push(case(
        "MFA",
        "require_mfa route, token without acr",
        req("GET", "/mfa/x", &[("Authorization", &bearer(&t.good))]),
        Expect::Status(&[403]),
        Reach::Nothing,
    ));
    out.push(case(
        "MFA",
        "require_mfa route, client MFA headers",
        req(
            "GET",
            "/mfa/x",
            &[
                ("Authorization", &bearer(&t.good)),
                ("X-Multi-Factor-Authentication", "true"),
                ("X-Ocis-Autoprop-Mfa-Authenticated", "true"),
            ],
        ),
        Expect::Status(&[403]),
        Reach::Nothing,
    ));
    out.push(case(
        "MFA",
        "require_mfa route, path trick from an open route",
        req(
            "GET",
            "/open/../mfa/x",
            &[
                ("Authorization", &bearer(&t.good)),
                ("X-Multi-Factor-Authentication", "true"),
            ],
        ),
        Expect::Status(&[403]),
        Reach::Nothing,
    ));
    out.push(
        case(
            "MFA",
            "require_mfa route, token with acr (control)",
            req("GET", "/mfa/x", &[("Authorization", &bearer(&t.strong))]),
            Expect::Status(&[200]),
            Reach::Exactly(Svc::Mfa),
        )
        .check(|r| header_is(r, "x-multi-factor-authentication", Some("true"))),
    );
    out
}

fn path_cases() -> Vec<Case> {
    const C: &str = "path trick";
    let refused_400 = [
        "/open/%2e%2e/files/x",
        "/open/%2E%2E/files/x",
        "/open/.%2e/files/x",
        "/open/%2e./files/x",
        "/open/..%2ffiles/x",
        "/open%2f..%2ffiles/x",
        "/open/..%2Ffiles/x",
        "/open/..%5cfiles/x",
        "/open/..%5Cfiles/x",
        "/open/%00/../files/x",
        "/open/x%00",
        "/open/x%00.txt",
        "/open/%2e/x",
        "/open%2fx",
        "/open/x%",
        "/open/x%zz",
        "/open/x%2",
        "/open/../../files/x",
        "/..",
        "/../open/x",
        "/%2e%2e/files/x",
        "/open/%252e%252e/../../../files",
        "/remote.php/dav/public-files/%2e%2e/%2e%2e/%2e%2e/files/x",
        // Readings a backend might make that the router would not (docs/security.md, "One
        // reading of every path").
        "/open/%c0%ae%c0%ae/files/x",
        "/files/%c0%ae%c0%ae/open/x",
        "/open/%ff/x",
        "/open/%C3/x",
        "/open/..;/files/x",
        "/open/..;/../files/x",
        "/files/..;/open/x",
        "/open/.;x/../../files/x",
        "/open/..%3b/files/x",
        "/open/..%20/files/x",
        "/open/%20../files/x",
        "/open/..%C2%A0/files/x",
        "/open/%EF%BC%8E%EF%BC%8E/files/x",
        "/open/..%09/files/x",
        "/open/x%0d%0aX-Injected:%201",
        "/open/x%7f",
        "/open/%252e%252e/files/x",
        "/open/%252E%252E/files/x",
        "/open/%25%32%65%25%32%65/files/x",
        "/open/%252%65%252%65/files/x",
        "/open%252ffiles/x",
        "/open/%255c../files/x",
        "/open/x%2500",
        "/open/%2525252e/x",
    ];
    let mut out: Vec<Case> = refused_400
        .iter()
        .map(|p| {
            case(
                C,
                format!("GET {p}"),
                get_(p),
                Expect::Status(&[400]),
                Reach::Nothing,
            )
        })
        .collect();
    // Raw bytes hyper or the path check must refuse.
    for (name, target) in [
        ("raw backslash", &b"/open/..\\files/x"[..]),
        ("raw backslash at the start", b"/\\files/x"),
        ("raw NUL", b"/open/x\x00/../../files/x"),
        ("raw DEL", b"/open/x\x7f"),
        ("raw tab", b"/open/x\t/../../files"),
        (
            "raw overlong UTF-8 dot-dot",
            b"/open/\xc0\xae\xc0\xae/files/x",
        ),
        ("raw high bytes", b"/open/\xff\xfe"),
    ] {
        let mut bytes = b"GET ".to_vec();
        bytes.extend_from_slice(target);
        bytes.extend_from_slice(
            format!(" HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        out.push(
            case(
                C,
                name,
                bytes,
                Expect::Status(&[400]),
                Reach::AtMost(Svc::Open),
            )
            .check(under_open),
        );
    }
    // Dot segments are resolved before routing: from an open route into a protected one means
    // a protected route, so 401 and no upstream.
    for p in [
        "/open/../files/x",
        "/open/./../files/x",
        "/open/x/../../files/x",
        "/open/x/y/../../../files/x",
        "/open/../",
        "/open/..",
        "/open/../mfa/x",
        "/open;x/../files/x",
        "/./files/x",
        "//open/../files/x",
        "/open//../files/x",
        "/open///..//files/x",
        "//files/x",
        "/files//x",
        "/files;/open/x",
        // An unprotected regex route matches from the start of the path only.
        "/files/x/open-rx/v1/config",
        "/files/open-rx/v2/config",
        "/fil%65s/x",
        "/%6fpen/../files/x",
        "/OPEN/x",
        "/open%20/x",
        "/remote.php/dav/public-files/../files/x",
        "/remote.php/dav/public-files/x/../../files/x",
        "/ocs/v2.php/cloud/capabilities/../../../../files/x",
        "/dav/public-files/../../files/x",
    ] {
        out.push(case(
            C,
            format!("GET {p}"),
            get_(p),
            Expect::Status(&[401]),
            Reach::Nothing,
        ));
    }
    // Spellings that stay inside the open route: they may reach it, and only with a path under
    // it, never decoded into a dot segment.
    for (p, forwarded) in [
        ("/op%65n/x", "/open/x"),
        ("/open-rx/v1/config", "/open-rx/v1/config"),
        ("/open/%E2%82%AC/100%25.txt", "/open/%E2%82%AC/100%25.txt"),
        ("/open/...;x/file..txt", "/open/...;x/file..txt"),
        ("/open/files/../x", "/open/x"),
        ("/open/x?../../files/x", "/open/x?../../files/x"),
        ("/open/x?%2e%2e/files", "/open/x?%2e%2e/files"),
        ("/open//x", "/open/x"),
        ("/open///x//y/", "/open/x/y/"),
    ] {
        out.push(
            case(
                C,
                format!("GET {p}"),
                get_(p),
                Expect::Status(&[200]),
                Reach::Exactly(Svc::Open),
            )
            .check(move |r| {
                if r.uri == forwarded {
                    Ok(())
                } else {
                    Err(format!("forwarded as {}", r.uri))
                }
            }),
        );
    }
    out.push(
        case(
            C,
            "GET /open/x#/../../files/x",
            get_("/open/x#/../../files/x"),
            Expect::Status(&[200]),
            Reach::AtMost(Svc::Open),
        )
        .check(under_open),
    );
    out.push(case(
        C,
        "empty target",
        b"GET  HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n".to_vec(),
        Expect::Status(&[400]),
        Reach::Nothing,
    ));
    out.push(case(
        C,
        "relative target",
        get_("open/x"),
        Expect::Status(&[400]),
        Reach::Nothing,
    ));
    out.push(case(
        C,
        "asterisk target with GET",
        get_("*"),
        Expect::Status(&[400]),
        Reach::Nothing,
    ));
    out
}

fn under_open(r: &Recorded) -> Result<(), String> {
    if r.uri.starts_with("/open/") && !r.uri.split(['/', '?']).any(|s| s == "..") {
        Ok(())
    } else {
        Err("forwarded outside /open/".into())
    }
}

/// Request targets and `Host` values naming other hosts or services.
fn target_cases(ups: &Upstreams) -> Vec<Case> {
    const C: &str = "target and Host";
    let files = ups.by_svc[&Svc::Files].addr();
    let mut out = vec![
        case(
            C,
            "absolute-form to a protected path",
            get_(&format!("http://{HOST}/files/x")),
            Expect::Status(&[401]),
            Reach::Nothing,
        ),
        case(
            C,
            "absolute-form naming the files service",
            get_(&format!("http://{files}/x")),
            Expect::Status(&[401]),
            Reach::Nothing,
        ),
        case(
            C,
            "absolute-form with userinfo",
            get_(&format!("http://user:pw@{files}/files/x")),
            Expect::Status(&[401]),
            Reach::Nothing,
        ),
        case(
            C,
            "absolute-form https",
            get_("https://evil.example/files/x"),
            Expect::Status(&[401]),
            Reach::Nothing,
        ),
        case(
            C,
            "absolute-form with dot segments",
            get_("http://evil.example/open/../files/x"),
            Expect::Status(&[401]),
            Reach::Nothing,
        ),
        case(
            C,
            "authority-form GET",
            get_(&files.to_string()),
            Expect::Status(&[400]),
            Reach::Nothing,
        ),
        case(
            C,
            "CONNECT to the files service",
            req("CONNECT", &files.to_string(), &[]),
            Expect::Status(&[400]),
            Reach::Nothing,
        ),
        case(
            C,
            "CONNECT to a public host",
            req("CONNECT", "evil.example:443", &[]),
            Expect::Status(&[400]),
            Reach::Nothing,
        ),
        case(
            C,
            "OPTIONS asterisk",
            req("OPTIONS", "*", &[]),
            Expect::Status(&[400]),
            Reach::Nothing,
        ),
        case(
            C,
            "Host naming the files service, protected path",
            format!("GET /files/x HTTP/1.1\r\nHost: {files}\r\nConnection: close\r\n\r\n")
                .into_bytes(),
            Expect::Status(&[401]),
            Reach::Nothing,
        ),
        case(
            C,
            "X-Original-URL to a protected path",
            req(
                "GET",
                "/open/x",
                &[
                    ("X-Original-URL", "/files/x"),
                    ("X-Rewrite-URL", "/files/x"),
                ],
            ),
            Expect::Status(&[200]),
            Reach::Exactly(Svc::Open),
        )
        .check(|r| {
            if r.uri == "/open/x" {
                Ok(())
            } else {
                Err(r.uri.clone())
            }
        }),
    ];
    out.push(case(
        C,
        "Host naming the files service, open path",
        format!("GET /open/x HTTP/1.1\r\nHost: {files}\r\nConnection: close\r\n\r\n").into_bytes(),
        Expect::Status(&[200]),
        Reach::Exactly(Svc::Open),
    ));
    out.push(
        case(
            C,
            "absolute-form to another host, open path",
            get_("http://evil.example/open/x"),
            Expect::Status(&[200]),
            Reach::AtMost(Svc::Open),
        )
        .check(under_open),
    );
    out
}

fn smuggling_cases() -> Vec<Case> {
    const C: &str = "smuggling";
    let smuggled = format!("GET /files/smuggled HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    let chunked_then = format!("0\r\n\r\n{smuggled}");
    // A POST to the open route with these header lines and this body, no `Connection: close`,
    // so that a second request hidden in the body would be read on the same connection.
    let post = |headers: &[&str], body: &str| {
        let mut b = lines(
            &[
                &["POST /open/a HTTP/1.1", &format!("Host: {HOST}")],
                headers,
            ]
            .concat(),
        );
        b.extend_from_slice(body.as_bytes());
        b
    };
    let open = |headers: &[&str]| {
        let host = format!("Host: {HOST}");
        lines(
            &[
                &["GET /open/x HTTP/1.1", host.as_str()],
                headers,
                &["Connection: close"],
            ]
            .concat(),
        )
    };
    let te = "Transfer-Encoding: chunked";
    let cl_te = format!("Content-Length: {}", chunked_then.len());
    let te_cl_body = format!("8\r\nSMUGGLED\r\n0\r\n\r\n{smuggled}");
    let bad = |name: &'static str, bytes: Vec<u8>| {
        case(C, name, bytes, Expect::Status(&[400]), Reach::Nothing)
    };
    let to_open = |name: &'static str, bytes: Vec<u8>| {
        case(
            C,
            name,
            bytes,
            Expect::Sequence(&[200]),
            Reach::Exactly(Svc::Open),
        )
    };
    let mut out = vec![
        to_open("CL.TE", post(&[&cl_te, te], &chunked_then)),
        to_open("TE.CL", post(&[te, "Content-Length: 3"], &te_cl_body)),
        to_open(
            "two equal Content-Length",
            post(&["Content-Length: 5", "Content-Length: 5"], "hello"),
        ),
        bad(
            "two different Content-Length",
            post(&["Content-Length: 0", "Content-Length: 40"], &smuggled),
        ),
        bad(
            "Content-Length list",
            post(&["Content-Length: 5, 40"], &format!("hello{smuggled}")),
        ),
        bad(
            "negative Content-Length",
            post(&["Content-Length: -1"], &smuggled),
        ),
        bad(
            "Content-Length with a plus sign",
            post(&["Content-Length: +5"], "hello"),
        ),
        bad(
            "hexadecimal Content-Length",
            post(&["Content-Length: 0x5"], "hello"),
        ),
        bad(
            "overflowing Content-Length",
            post(&["Content-Length: 99999999999999999999999"], "x"),
        ),
        bad(
            "Content-Length with a space inside",
            post(&["Content-Length: 1 0"], "0123456789"),
        ),
        bad(
            "Transfer-Encoding: chunked, identity",
            post(&["Transfer-Encoding: chunked, identity"], &chunked_then),
        ),
        bad(
            "Transfer-Encoding: identity",
            post(&["Transfer-Encoding: identity"], &smuggled),
        ),
        bad(
            "Transfer-Encoding: xchunked",
            post(&["Transfer-Encoding: xchunked"], &chunked_then),
        ),
        bad(
            "Transfer-Encoding twice",
            post(&[te, "Transfer-Encoding: identity"], &chunked_then),
        ),
        bad(
            "Transfer-Encoding with a space before the colon",
            post(&["Transfer-Encoding : chunked"], &chunked_then),
        ),
        bad(
            "Transfer-Encoding folded",
            post(&["Transfer-Encoding:", " chunked"], &chunked_then),
        ),
        bad(
            "Transfer-Encoding with a vertical tab",
            post(&["Transfer-Encoding:\x0bchunked"], &chunked_then),
        ),
        bad(
            "Transfer-Encoding in HTTP/1.0",
            [
                lines(&["POST /open/a HTTP/1.0", &format!("Host: {HOST}"), te]),
                chunked_then.clone().into_bytes(),
            ]
            .concat(),
        ),
        bad("obs-fold continuation line", open(&["X-Foo: a", " b"])),
        bad(
            "obs-fold with a tab",
            open(&["X-Foo: a", "\tX-Access-Token: forged"]),
        ),
        bad("bare CR in a header", open(&["X-Foo: a\rb"])),
        bad("NUL in a header value", open(&["X-Foo: a\x00b"])),
        bad("space in a header name", open(&["X Foo: a"])),
        bad("header line without a colon", open(&["X-Foo"])),
        bad(
            "method with a NUL",
            lines(&["G\x00T /open/x HTTP/1.1", "Host: gw.test"]),
        ),
        bad("HTTP/0.9 request line", lines(&["GET /open/x"])),
        bad(
            "HTTP/2.0 in an HTTP/1 request line",
            lines(&["GET /open/x HTTP/2.0", "Host: gw.test"]),
        ),
        bad(
            "HTTP/1.2",
            lines(&["GET /open/x HTTP/1.2", "Host: gw.test"]),
        ),
        bad(
            "lowercase http version",
            lines(&["GET /open/x http/1.1", "Host: gw.test"]),
        ),
        bad(
            "two spaces in the request line",
            lines(&["GET  /files/x HTTP/1.1", "Host: gw.test"]),
        ),
        case(
            C,
            "bare LF line endings, protected path",
            format!("GET /files/x HTTP/1.1\nHost: {HOST}\nConnection: close\n\n").into_bytes(),
            Expect::Status(&[401]),
            Reach::Nothing,
        ),
        case(
            C,
            "pipelined second request to a protected path",
            [
                lines(&["GET /open/a HTTP/1.1", "Host: gw.test"]),
                smuggled.clone().into_bytes(),
            ]
            .concat(),
            Expect::Sequence(&[200, 401]),
            Reach::Exactly(Svc::Open),
        ),
        case(
            C,
            "HTTP/2 preface on the HTTP/1 port, then garbage",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\ngarbage".to_vec(),
            Expect::Refused,
            Reach::Nothing,
        ),
    ];
    for c in &mut out {
        if c.check.is_none() {
            c.check = Some(Box::new(single_framing));
        }
    }
    out
}

/// A request head from its lines: each ends with CRLF, then the empty line.
fn lines(lines: &[&str]) -> Vec<u8> {
    let mut s = String::new();
    for l in lines {
        s.push_str(l);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

fn oversized_cases() -> Vec<Case> {
    const C: &str = "oversized";
    let big = "a".repeat(70 * 1024);
    let mut many = format!("GET /open/x HTTP/1.1\r\nHost: {HOST}\r\n");
    for i in 0..150 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("Connection: close\r\n\r\n");
    let mut huge_line = format!("GET /open/x HTTP/1.1\r\nHost: {HOST}\r\n");
    for i in 0..40 {
        huge_line.push_str(&format!("X-Big{i}: {}\r\n", "b".repeat(2000)));
    }
    huge_line.push_str("Connection: close\r\n\r\n");
    vec![
        case(
            C,
            "70 kB URL on the open route",
            get_(&format!("/open/{big}")),
            Expect::Status(&[431]),
            Reach::Nothing,
        ),
        case(
            C,
            "70 kB URL on a protected route",
            get_(&format!("/files/{big}")),
            Expect::Status(&[431]),
            Reach::Nothing,
        ),
        case(
            C,
            "70 kB query",
            get_(&format!("/open/x?q={big}")),
            Expect::Status(&[431]),
            Reach::Nothing,
        ),
        case(
            C,
            "70 kB header value",
            req("GET", "/open/x", &[("X-Big", &big)]),
            Expect::Status(&[431]),
            Reach::Nothing,
        ),
        case(
            C,
            "70 kB cookie",
            req("GET", "/files/x", &[("Cookie", &format!("a={big}"))]),
            Expect::Status(&[431]),
            Reach::Nothing,
        ),
        case(
            C,
            "70 kB bearer token",
            req(
                "GET",
                "/files/x",
                &[("Authorization", &format!("Bearer {big}"))],
            ),
            Expect::Status(&[431]),
            Reach::Nothing,
        ),
        case(
            C,
            "70 kB header name",
            format!("GET /open/x HTTP/1.1\r\nHost: {HOST}\r\n{big}: v\r\n\r\n").into_bytes(),
            Expect::Status(&[431]),
            Reach::Nothing,
        ),
        case(
            C,
            "150 headers",
            many.into_bytes(),
            Expect::Status(&[431]),
            Reach::Nothing,
        ),
        case(
            C,
            "40 headers of 2 kB (80 kB head)",
            huge_line.into_bytes(),
            Expect::Status(&[431]),
            Reach::Nothing,
        ),
        case(
            C,
            "70 kB method",
            format!(
                "{} /open/x HTTP/1.1\r\nHost: {HOST}\r\n\r\n",
                "G".repeat(70 * 1024)
            )
            .into_bytes(),
            Expect::Status(&[431]),
            Reach::Nothing,
        ),
        case(
            C,
            "8 kB URL on a protected route, no credentials",
            get_(&format!("/files/{}", "a".repeat(8 * 1024))),
            Expect::Status(&[401]),
            Reach::Nothing,
        ),
    ]
}

fn slow_cases() -> Vec<Case> {
    const C: &str = "slow client";
    vec![
        case(
            C,
            "stops in the middle of the head",
            format!("GET /open/x HTTP/1.1\r\nHost: {HOST}\r\nX-Slow: ").into_bytes(),
            Expect::Closed,
            Reach::Nothing,
        ),
        case(
            C,
            "request line only",
            b"GET /files/x HTTP/1.1\r\n".to_vec(),
            Expect::Closed,
            Reach::Nothing,
        ),
        case(
            C,
            "slowloris: one byte every 150 ms",
            format!(
                "GET /open/x HTTP/1.1\r\nHost: {HOST}\r\nX-Slow: {}\r\n\r\n",
                "s".repeat(40)
            )
            .into_bytes(),
            Expect::Closed,
            Reach::Nothing,
        )
        .drip(),
        // header_read_timeout also covers protocol detection: the first request head must be
        // complete in time whatever the client sent before it. (A client that completes the
        // HTTP/2 handshake and then stays silent gets the server's SETTINGS first, which this
        // harness reads as an answer; node/src/server/tests.rs covers that case.)
        case(
            C,
            "sends a prefix of the HTTP/2 preface and stops",
            b"PRI * HTTP/2.0\r\n".to_vec(),
            Expect::Closed,
            Reach::Nothing,
        ),
        case(
            C,
            "connects and sends nothing",
            Vec::new(),
            Expect::Closed,
            Reach::Nothing,
        ),
    ]
}

/// A client naming the gateway's own headers in `Connection` must not get them removed on the
/// way to the backend (this used to strip the minted x-access-token).
fn connection_cases(good: &str) -> Vec<Case> {
    let auth = bearer(good);
    let files = |name: &str, headers: &[(&str, &str)]| {
        let mut all = vec![("Authorization", auth.as_str())];
        all.extend_from_slice(headers);
        case(
            "header injection",
            name,
            req("GET", "/files/x", &all),
            Expect::Status(&[200]),
            Reach::Exactly(Svc::Files),
        )
    };
    vec![
        files(
            "Connection naming x-access-token",
            &[("Connection", "x-access-token")],
        )
        .check(minted_for("marie")),
        files(
            "Connection naming the MFA header",
            &[
                ("Connection", "X-Multi-Factor-Authentication"),
                ("X-Multi-Factor-Authentication", "true"),
            ],
        )
        .check(|r| header_is(r, "x-multi-factor-authentication", Some("false"))),
    ]
}

/// A malformed chunked body is the client's mistake: 400, never an upstream failure (this used
/// to be answered 502).
fn chunked_body_cases() -> Vec<Case> {
    let smuggled = format!("GET /files/smuggled HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    let post = |headers: &str, body: &str| {
        format!("POST /open/a HTTP/1.1\r\nHost: {HOST}\r\n{headers}\r\n{body}").into_bytes()
    };
    vec![
        case(
            "smuggling",
            "invalid chunk size",
            post(
                "Transfer-Encoding: chunked\r\n",
                &format!("zz\r\nhello\r\n0\r\n\r\n{smuggled}"),
            ),
            Expect::Status(&[400]),
            Reach::AtMost(Svc::Open),
        ),
        case(
            "smuggling",
            "overflowing chunk size",
            post(
                "Transfer-Encoding: chunked\r\n",
                &format!("FFFFFFFFFFFFFFFFFFFF\r\nhello\r\n0\r\n\r\n{smuggled}"),
            ),
            Expect::Status(&[400]),
            Reach::AtMost(Svc::Open),
        ),
        case(
            "smuggling",
            "chunk size with a bare LF",
            post(
                "Transfer-Encoding: chunked\r\n",
                &format!("5\nhello\r\n0\r\n\r\n{smuggled}"),
            ),
            Expect::Status(&[400]),
            Reach::AtMost(Svc::Open),
        ),
    ]
}

/// RFC 9112 §3.2: a missing (HTTP/1.1), repeated or invalid `Host` is refused with 400 before
/// routing (these used to be routed).
fn host_cases(good: &str) -> Vec<Case> {
    let auth = bearer(good);
    let host_case = |name: &'static str, headers: &[&str]| {
        let head = lines(&[&["GET /files/x HTTP/1.1"], headers, &["Connection: close"]].concat());
        case(
            "target and Host",
            name,
            head,
            Expect::Status(&[400]),
            Reach::Nothing,
        )
    };
    vec![
        host_case("two Host headers", &["Host: gw.test", "Host: evil.example"]),
        host_case("Host with a path", &["Host: gw.test/open/"]),
        host_case("no Host, HTTP/1.1, protected path", &[]),
        host_case(
            "two Host headers with a valid token",
            &[
                "Host: a.example",
                "Host: b.example",
                &format!("Authorization: {auth}"),
            ],
        ),
    ]
}

/// KNOWN FAILURES: cases that found a bug in the node. They are built (so their bytes stay
/// reviewable and compile) but not run; each moves back into its category once fixed.
/// Empty since the slow-client cases of bug 4 (header_read_timeout did not cover protocol
/// detection) moved back into `slow_cases`.
fn known_failures() -> Vec<Case> {
    Vec::new()
}

/// The x-access-token is one the node minted for the public share `share_id` (a guest's
/// token: share scope, never the owner scope).
fn minted_for_share(share_id: &'static str) -> impl Fn(&Recorded) -> Result<(), String> {
    move |r| {
        let values: Vec<_> = r.headers.get_all("x-access-token").iter().collect();
        if values.len() != 1 {
            return Err(format!("{} x-access-token headers", values.len()));
        }
        let token = values[0].to_str().map_err(|e| e.to_string())?;
        let claims = verify(SECRET.as_bytes(), token, Duration::from_secs(5))
            .map_err(|e| format!("x-access-token not minted by the node: {e}"))?;
        let scopes: Vec<&String> = claims.scope.keys().collect();
        if scopes != [&format!("publicshare:{share_id}")] {
            return Err(format!("scopes {scopes:?}"));
        }
        Ok(())
    }
}

/// Signed URLs for `marie` (key `key`), aimed at `/files/`.
fn signed_url_cases(key: &str) -> Vec<Case> {
    const C: &str = "signed URL";
    let now = SystemTime::now();
    let link = |path: &'static str, params: &'static str| Link {
        host: HOST,
        path,
        params,
        user: "marie",
        verb: "GET",
        signed_at: now,
        expires: Duration::from_secs(600),
    };
    let valid = sign(&link("/files/report", "id=7"), key);
    let refused = |name: &str, target: String| {
        case(
            C,
            name,
            get_(&target),
            Expect::Status(&[401]),
            Reach::Nothing,
        )
    };
    let mut out = vec![
        case(
            C,
            "valid link",
            get_(&valid),
            Expect::Status(&[200]),
            Reach::Exactly(Svc::Files),
        )
        .check(minted_for("marie")),
        case(
            C,
            "valid link with a forged x-access-token",
            req("GET", &valid, &[("X-Access-Token", "forged")]),
            Expect::Status(&[200]),
            Reach::Exactly(Svc::Files),
        )
        .check(minted_for("marie")),
        refused("tampered parameter", valid.replace("id=7", "id=8")),
        refused("parameter added", format!("{valid}&admin=1")),
        refused(
            "path changed",
            valid.replace("/files/report", "/files/other"),
        ),
        refused("signature truncated", valid[..valid.len() - 1].to_owned()),
        refused("signature upper-cased", {
            let (head, sig) = valid.rsplit_once('=').unwrap();
            format!("{head}={}", sig.to_uppercase())
        }),
        refused("empty signature", {
            let (head, _) = valid.rsplit_once('=').unwrap();
            format!("{head}=")
        }),
        refused(
            "OC-Expires changed",
            valid.replace("OC-Expires=600", "OC-Expires=6000"),
        ),
        refused(
            "OC-Expires negative",
            valid.replace("OC-Expires=600", "OC-Expires=-5"),
        ),
        refused(
            "OC-Expires huge",
            valid.replace("OC-Expires=600", "OC-Expires=99999999999999999999999"),
        ),
        refused(
            "OC-Credential changed to another user",
            valid.replace("OC-Credential=marie", "OC-Credential=einstein"),
        ),
        refused(
            "OC-Credential not UTF-8",
            valid.replace("OC-Credential=marie", "OC-Credential=%FF%FE"),
        ),
        refused(
            "OC-Date not a date",
            valid.replacen("OC-Date=", "OC-Date=yesterday", 1),
        ),
        refused(
            "expired (replayed after its lifetime)",
            sign(
                &Link {
                    signed_at: now - Duration::from_secs(601),
                    ..link("/files/a", "")
                },
                key,
            ),
        ),
        refused(
            "dated an hour in the future",
            sign(
                &Link {
                    signed_at: now + Duration::from_secs(3600),
                    ..link("/files/a", "")
                },
                key,
            ),
        ),
        refused(
            "lifetime beyond the maximum",
            sign(
                &Link {
                    expires: Duration::from_secs(30 * 24 * 3600),
                    ..link("/files/a", "")
                },
                key,
            ),
        ),
        refused(
            "signed for another host",
            sign(
                &Link {
                    host: "evil.test",
                    ..link("/files/a", "")
                },
                key,
            ),
        ),
        refused(
            "signed with another key",
            sign(&link("/files/a", ""), &"ab".repeat(64)),
        ),
        refused("signed with the empty key", sign(&link("/files/a", ""), "")),
        refused(
            "unknown user",
            sign(
                &Link {
                    user: "nobody",
                    ..link("/files/a", "")
                },
                key,
            ),
        ),
        case(
            C,
            "replayed with another method (DELETE)",
            req("DELETE", &valid, &[]),
            Expect::Status(&[401]),
            Reach::Nothing,
        ),
        case(
            C,
            "signed for PUT (not an allowed method)",
            req(
                "PUT",
                &sign(
                    &Link {
                        verb: "PUT",
                        ..link("/files/a", "")
                    },
                    key,
                ),
                &[("Content-Length", "0")],
            ),
            Expect::Status(&[401]),
            Reach::Nothing,
        ),
    ];
    for missing in ["OC-Credential", "OC-Date", "OC-Expires", "OC-Verb"] {
        let target: String = valid
            .split(['?', '&'])
            .enumerate()
            .filter(|(_, p)| !p.starts_with(&format!("{missing}=")))
            .map(|(i, p)| {
                if i == 0 {
                    p.to_owned()
                } else {
                    format!("&{p}")
                }
            })
            .collect::<String>()
            .replacen('&', "?", 1);
        out.push(refused(&format!("{missing} missing"), target));
    }
    out
}

/// Share tokens for the fixture's share `hostile` (password `s3cret`) on a public path.
fn share_cases() -> Vec<Case> {
    const C: &str = "share token";
    let path = "/dav/public-files/hostiletoken/doc.txt";
    let basic = |password: &str| format!("Basic {}", STANDARD.encode(format!("public:{password}")));
    let good = basic("s3cret");
    let refused = |name: &str, target: &str, headers: &[(&str, &str)]| {
        case(
            C,
            name,
            req("GET", target, headers),
            Expect::Status(&[401]),
            Reach::Nothing,
        )
    };
    vec![
        case(
            C,
            "right password",
            req(
                "GET",
                path,
                &[("public-token", "hostiletoken"), ("Authorization", &good)],
            ),
            Expect::Status(&[200]),
            Reach::Exactly(Svc::Root),
        )
        .check(minted_for_share("hostile")),
        case(
            C,
            "right password and a forged x-access-token",
            req(
                "GET",
                path,
                &[
                    ("public-token", "hostiletoken"),
                    ("Authorization", &good),
                    ("X-Access-Token", "forged"),
                ],
            ),
            Expect::Status(&[200]),
            Reach::Exactly(Svc::Root),
        )
        .check(minted_for_share("hostile")),
        refused(
            "wrong password",
            path,
            &[
                ("public-token", "hostiletoken"),
                ("Authorization", &basic("guess")),
            ],
        ),
        refused(
            "empty password",
            path,
            &[
                ("public-token", "hostiletoken"),
                ("Authorization", &basic("")),
            ],
        ),
        refused("no password", path, &[("public-token", "hostiletoken")]),
        refused(
            "unknown token",
            path,
            &[("public-token", "nosuchtoken"), ("Authorization", &good)],
        ),
        refused(
            "token in the query, wrong password",
            &format!("{path}?public-token=hostiletoken"),
            &[("Authorization", &basic("guess"))],
        ),
        refused(
            "two public-token headers",
            path,
            &[
                ("public-token", "nosuchtoken"),
                ("public-token", "hostiletoken"),
                ("Authorization", &good),
            ],
        ),
        refused(
            "signature without expiration",
            &format!("{path}?public-token=hostiletoken&signature=abc"),
            &[],
        ),
        refused(
            "forged signature",
            &format!(
                "{path}?public-token=hostiletoken&signature=abc&expiration=2099-01-01T00%3A00%3A00Z"
            ),
            &[],
        ),
        refused(
            "oversized token",
            path,
            &[
                ("public-token", &"t".repeat(5000)),
                ("Authorization", &good),
            ],
        ),
        refused(
            "right password on a path that is not public",
            "/files/x",
            &[("public-token", "hostiletoken"), ("Authorization", &good)],
        ),
        refused(
            "right password on the signing-key endpoint",
            "/ocs/v1.php/cloud/user/signing-key",
            &[("public-token", "hostiletoken"), ("Authorization", &good)],
        ),
        refused(
            "Basic credentials of a demo user (Basic auth is off)",
            "/files/x",
            &[(
                "Authorization",
                &format!("Basic {}", STANDARD.encode("einstein:relativity")),
            )],
        ),
    ]
}

fn injection_cases(good: &str) -> Vec<Case> {
    const C: &str = "header injection";
    let auth = bearer(good);
    // A token signed like the node's own, for another user (as if the secret had leaked).
    let forged = {
        let user = json!({
            "user": {"username": "einstein"},
            "exp": 4_000_000_000u64,
            "iss": "x",
            "aud": "reva",
        });
        testing::sign_hmac("HS256", None, SECRET.as_bytes(), &user)
    };
    let files = |name: &str, headers: &[(&str, &str)]| {
        let mut all = vec![("Authorization", auth.as_str())];
        all.extend_from_slice(headers);
        case(
            C,
            name,
            req("GET", "/files/x", &all),
            Expect::Status(&[200]),
            Reach::Exactly(Svc::Files),
        )
    };
    let mut out = vec![
        files("x-access-token", &[("X-Access-Token", "forged")]).check(minted_for("marie")),
        files("X-ACCESS-TOKEN upper case", &[("X-ACCESS-TOKEN", "forged")])
            .check(minted_for("marie")),
        files(
            "x-access-token twice",
            &[("x-access-token", "forged1"), ("x-access-token", "forged2")],
        )
        .check(minted_for("marie")),
        files(
            "x-access-token signed with the node's secret for another user",
            &[("X-Access-Token", &forged)],
        )
        .check(minted_for("marie")),
        files(
            "X-Multi-Factor-Authentication",
            &[("X-Multi-Factor-Authentication", "true")],
        )
        .check(|r| header_is(r, "x-multi-factor-authentication", Some("false"))),
        files(
            "X-Ocis-Autoprop-Mfa-Authenticated",
            &[("X-Ocis-Autoprop-Mfa-Authenticated", "true")],
        )
        .check(|r| header_is(r, "x-ocis-autoprop-mfa-authenticated", None)),
        files(
            "X-Ocis-Autoprop-* other",
            &[("X-Ocis-Autoprop-Role", "admin")],
        )
        .check(|r| header_is(r, "x-ocis-autoprop-role", None)),
        files("M-Ocis-Autoprop-*", &[("M-Ocis-Autoprop-Role", "admin")])
            .check(|r| header_is(r, "m-ocis-autoprop-role", None)),
        files("X-Forwarded-For", &[("X-Forwarded-For", "6.6.6.6")])
            .check(|r| header_is(r, "x-forwarded-for", Some("127.0.0.1"))),
        files(
            "X-Forwarded-For twice",
            &[
                ("X-Forwarded-For", "6.6.6.6"),
                ("X-Forwarded-For", "10.0.0.1"),
            ],
        )
        .check(|r| header_is(r, "x-forwarded-for", Some("127.0.0.1"))),
        files("X-Forwarded-Host", &[("X-Forwarded-Host", "evil.example")])
            .check(|r| header_is(r, "x-forwarded-host", Some(HOST))),
        files("X-Forwarded-Proto", &[("X-Forwarded-Proto", "https")])
            .check(|r| header_is(r, "x-forwarded-proto", Some("http"))),
        files("X-Forwarded-Prefix", &[("X-Forwarded-Prefix", "/evil")])
            .check(|r| header_is(r, "x-forwarded-prefix", None)),
        files(
            "Forwarded",
            &[("Forwarded", "for=6.6.6.6;proto=https;host=evil")],
        )
        .check(|r| header_is(r, "forwarded", None)),
        files("X-Real-IP", &[("X-Real-IP", "6.6.6.6")]).check(|r| header_is(r, "x-real-ip", None)),
        files("True-Client-IP", &[("True-Client-IP", "6.6.6.6")])
            .check(|r| header_is(r, "true-client-ip", None)),
        files(
            "Connection naming X-Forwarded-For",
            &[("Connection", "X-Forwarded-For")],
        )
        .check(|r| header_is(r, "x-forwarded-for", Some("127.0.0.1"))),
        files("Authorization is not passed on", &[]).check(|r| header_is(r, "authorization", None)),
    ];
    // Unprotected routes keep a client x-access-token by design (/data transfer tokens), but
    // forwarding headers are still the node's.
    out.push(
        case(
            C,
            "open route: X-Forwarded-For",
            req(
                "GET",
                "/open/x",
                &[
                    ("X-Forwarded-For", "6.6.6.6"),
                    ("X-Forwarded-Proto", "https"),
                ],
            ),
            Expect::Status(&[200]),
            Reach::Exactly(Svc::Open),
        )
        .check(|r| {
            header_is(r, "x-forwarded-for", Some("127.0.0.1")).and(header_is(
                r,
                "x-forwarded-proto",
                Some("http"),
            ))
        }),
    );
    out.push(case(
        C,
        "protected route without a token: x-access-token alone",
        req("GET", "/files/x", &[("X-Access-Token", &forged)]),
        Expect::Status(&[401]),
        Reach::Nothing,
    ));
    out.push(case(
        C,
        "protected route without a token: MFA and autoprop headers alone",
        req(
            "GET",
            "/files/x",
            &[
                ("X-Multi-Factor-Authentication", "true"),
                ("X-Ocis-Autoprop-Mfa-Authenticated", "true"),
            ],
        ),
        Expect::Status(&[401]),
        Reach::Nothing,
    ));
    out
}

/// Ordinary authenticated requests on fresh connections until `stop`; returns every status.
async fn background(
    addr: std::net::SocketAddr,
    token: String,
    stop: Arc<AtomicBool>,
) -> Vec<Option<u16>> {
    let mut seen = Vec::new();
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let bytes = req(
            "GET",
            &format!("/bg/{i}"),
            &[("Authorization", &bearer(&token))],
        );
        let out = exchange(addr, bytes, &Write::All).await;
        seen.push(out.statuses.first().copied());
        // Pacing, so that the corpus and the node share the machine's cores with this client.
        tokio::time::sleep(Duration::from_millis(5)).await;
        i += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_corpus_is_refused_and_the_node_keeps_serving() {
    let started = Instant::now();
    let idp = Idp::start();
    let mut by_svc = BTreeMap::new();
    for s in SERVICES {
        by_svc.insert(s, Upstream::start(&format!("{s:?}").to_lowercase()).await);
    }
    let ups = Upstreams { by_svc };
    let bg = Upstream::start("bg").await;
    let shares = ShareFixture::start().await;
    shares.add_share(FixtureShare::new("hostile", "hostiletoken").with_password("s3cret"));
    let gw = GatehouseNode::start_with(
        NodeOptions::new(&yaml(&idp, &ups, &bg, &shares))
            .env("PROXY_OIDC_ACCESS_TOKEN_VERIFY_AUD", "urn:gw")
            .env("PROXY_OIDC_SKIP_USER_INFO", "true"),
    )
    .await;

    let good = idp.user_token("marie", TokenOptions::jwt()).await;
    let strong = idp
        .user_token("marie", TokenOptions::jwt().acr("advanced"))
        .await;
    let other_good = idp.user_token("einstein", TokenOptions::jwt()).await;
    let other_aud = idp
        .user_token("marie", TokenOptions::jwt().resource("urn:other"))
        .await;
    let bg_token = idp.user_token("einstein", TokenOptions::jwt()).await;
    let jwks: Value = serde_json::from_slice(&get(&idp.jwks_url()).await.body).unwrap();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == idp.kid())
        .expect("the signing key is published")
        .clone();
    let tokens = Tokens {
        good: good.access_token().to_string(),
        strong: strong.access_token().to_string(),
        id_token: good.id_token().to_string(),
        other_aud: other_aud.access_token().to_string(),
        other_good: other_good.access_token().to_string(),
        jwk,
        kid: idp.kid().to_string(),
    };

    // Control: the valid token the injection cases use is accepted.
    let control = req(
        "GET",
        "/files/x",
        &[("Authorization", &bearer(&tokens.good))],
    );
    let out = exchange(gw.http, control.clone(), &Write::All).await;
    assert_eq!(out.statuses, [200], "{}\n{}", out.head(), gw.logs());

    let key_reply = gatehouse_tests::client::get_with(
        &gw.url("/ocs/v1.php/cloud/user/signing-key"),
        &[("authorization", &bearer(&tokens.good))],
    )
    .await;
    let key_json: Value = serde_json::from_slice(&key_reply.body).unwrap_or_default();
    let key = key_json["ocs"]["data"]["signing-key"]
        .as_str()
        .unwrap_or_else(|| panic!("no signing key: {}", key_reply.text()))
        .to_owned();

    let mut corpus = jwt_cases(&tokens);
    corpus.extend(signed_url_cases(&key));
    corpus.extend(share_cases());
    corpus.extend(path_cases());
    corpus.extend(target_cases(&ups));
    corpus.extend(smuggling_cases());
    corpus.extend(oversized_cases());
    corpus.extend(injection_cases(&tokens.good));
    corpus.extend(connection_cases(&tokens.good));
    corpus.extend(chunked_body_cases());
    corpus.extend(host_cases(&tokens.good));
    corpus.extend(slow_cases());
    assert!(corpus.len() >= 100, "only {} cases", corpus.len());
    let known = known_failures();

    let stop = Arc::new(AtomicBool::new(false));
    let bg_task = tokio::spawn(background(
        gw.http,
        bg_token.access_token().to_string(),
        stop.clone(),
    ));

    let corpus_started = Instant::now();
    let mut failures = Vec::new();
    let mut per_category: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &corpus {
        *per_category.entry(c.category).or_default() += 1;
        let mut errs = run(c, &gw, &ups).await;
        if get(&gw.debug_url("/healthz")).await.status != 200 {
            errs.push("node not healthy afterwards".into());
        }
        if !errs.is_empty() {
            failures.push(format!(
                "[{}] {}:\n    {}",
                c.category,
                c.name,
                errs.join("\n    ")
            ));
        }
    }
    let corpus_time = corpus_started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let seen = bg_task.await.unwrap();

    let out = exchange(gw.http, control, &Write::All).await;
    assert_eq!(
        out.statuses,
        [200],
        "an ordinary request after the corpus: {}",
        out.head()
    );
    let logs = gw.logs();
    assert!(!logs.contains("panicked"), "the node panicked:\n{logs}");
    println!("{} known failures not run", known.len());
    println!(
        "{} cases in {corpus_time:?} (test {:?}): {per_category:?}; {} background requests",
        corpus.len(),
        started.elapsed(),
        seen.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        corpus.len(),
        failures.join("\n")
    );
    let bad: Vec<_> = seen
        .iter()
        .filter(|s| !matches!(s, Some(200..=299)))
        .collect();
    assert!(
        seen.len() >= 20,
        "the background client got only {} answers",
        seen.len()
    );
    assert!(
        bad.is_empty(),
        "the background client saw {bad:?} among {} requests",
        seen.len()
    );
    assert_eq!(
        bg.count(),
        seen.len(),
        "every background request reached its upstream"
    );
}
