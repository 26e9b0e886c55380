//! Verification of an OpenID Connect back-channel logout token (spec §7.3 step 2).
//!
//! The IdP posts a signed logout token when a session ends; the gateway then forgets the
//! session's cached claims on every node. A forged logout token could only log users out, but
//! it would do so at will, so the token is checked as strictly as an access token: signature by
//! the provider's keys with an algorithm the provider announces for ID tokens (RS256 when it
//! announces none), the configured issuer, the back-channel logout event, a `sid` or `sub`, and
//! no `nonce` (OpenID Connect Back-Channel Logout 1.0 §2.6).
//!
//! Differences from oCIS: `exp`, when present, must lie in the future (oCIS does not check it),
//! a repeated `logout_token` form field is refused, and the result names what to log out — the session, or, with only `sub`, every session of
//! the subject (oCIS answers a `sub`-only token with "nothing to do").

use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use super::Claims;
use super::jwks::KeySet;
use super::verify::{VerifyError, VerifyPolicy, verify};

/// The member of the `events` claim that marks a back-channel logout token.
pub const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// What a valid logout token asks to end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logout {
    /// The session (`sid`), when the token names one.
    pub sid: Option<String>,
    /// The subject (`sub`), when the token names one.
    pub sub: Option<String>,
    /// When the provider issued the logout token (`iat`, Unix seconds), if it says. Dates a
    /// logout by subject on the provider's clock, the clock its access tokens' `iat` uses.
    pub iat: Option<i64>,
}

/// Why a logout token was refused; the endpoint answers 400 with `invalid_request`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogoutTokenError {
    #[error("logout token: {0}")]
    Token(#[from] VerifyError),
    #[error("logout token: algorithm {0:?} is not one the provider signs ID tokens with")]
    AlgorithmNotAnnounced(String),
    #[error("logout token: neither sid nor sub")]
    NoSubject,
    #[error("logout token: no back-channel logout event")]
    NoLogoutEvent,
    #[error("logout token: must not contain a nonce")]
    Nonce,
}

impl LogoutTokenError {
    /// Whether a refreshed key set might accept the token.
    pub fn is_unknown_kid(&self) -> bool {
        matches!(self, LogoutTokenError::Token(e) if e.is_unknown_kid())
    }
}

/// Verifies `token` against `keys`. `signing_algs` are the provider's announced ID-token
/// algorithms (discovery `id_token_signing_alg_values_supported`); empty means `RS256` only.
/// No audience is checked: the gateway has no client id of its own, as in oCIS.
pub fn verify_logout_token(
    token: &str,
    keys: &KeySet,
    issuer: &str,
    signing_algs: &[String],
    now: SystemTime,
) -> Result<Logout, LogoutTokenError> {
    let alg = header_alg(token)?;
    let announced = if signing_algs.is_empty() {
        alg == "RS256"
    } else {
        signing_algs.contains(&alg)
    };
    if !announced {
        return Err(LogoutTokenError::AlgorithmNotAnnounced(alg));
    }
    let policy = VerifyPolicy {
        issuers: vec![issuer.to_owned()],
        audiences: Vec::new(),
    };
    let claims = verify(token, keys, &policy, now)?;
    check_claims(&claims)
}

fn check_claims(claims: &Claims) -> Result<Logout, LogoutTokenError> {
    let text = |name: &str| {
        claims
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let (sid, sub) = (text("sid"), text("sub"));
    if sid.is_none() && sub.is_none() {
        return Err(LogoutTokenError::NoSubject);
    }
    let has_event = claims
        .get("events")
        .and_then(Value::as_object)
        .is_some_and(|events| events.contains_key(BACKCHANNEL_LOGOUT_EVENT));
    if !has_event {
        return Err(LogoutTokenError::NoLogoutEvent);
    }
    if claims.contains_key("nonce") {
        return Err(LogoutTokenError::Nonce);
    }
    let iat = claims.get("iat").and_then(Value::as_i64);
    Ok(Logout { sid, sub, iat })
}

/// Why a logout request carries no usable `logout_token`; the endpoint answers 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogoutRequestError {
    #[error("content type must be application/x-www-form-urlencoded")]
    ContentType,
    #[error("malformed form body: {0}")]
    Form(&'static str),
    #[error("logout_token is missing")]
    NoToken,
    #[error("logout_token is given more than once")]
    RepeatedToken,
}

/// The `logout_token` of a back-channel logout request (OpenID Connect Back-Channel Logout 1.0
/// §2.5): an `application/x-www-form-urlencoded` POST body. Parsing is strict (bad
/// percent-escapes, non-UTF-8 text and `;` separators are errors, like Go's `ParseForm`), and a
/// repeated `logout_token` is refused rather than resolved by picking one.
pub fn logout_token_from_form(
    content_type: Option<&[u8]>,
    body: &[u8],
) -> Result<String, LogoutRequestError> {
    let media_type = content_type
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim);
    if !media_type.is_some_and(|m| m.eq_ignore_ascii_case("application/x-www-form-urlencoded")) {
        return Err(LogoutRequestError::ContentType);
    }
    let mut token = None;
    for pair in body.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
        if pair.contains(&b';') {
            return Err(LogoutRequestError::Form("';' is not a separator"));
        }
        let (name, value) = match pair.iter().position(|b| *b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        };
        if form_decode(name)? != "logout_token" {
            continue;
        }
        if token.is_some() {
            return Err(LogoutRequestError::RepeatedToken);
        }
        token = Some(form_decode(value)?);
    }
    token
        .filter(|t| !t.is_empty())
        .ok_or(LogoutRequestError::NoToken)
}

fn form_decode(raw: &[u8]) -> Result<String, LogoutRequestError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = |b: u8| (b as char).to_digit(16);
                let byte = raw
                    .get(i + 1..i + 3)
                    .and_then(|h| Some(hex(h[0])? * 16 + hex(h[1])?))
                    .ok_or(LogoutRequestError::Form("invalid percent-escape"))?;
                // Two hex digits never exceed 255.
                out.push(byte as u8);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| LogoutRequestError::Form("not UTF-8"))
}

/// The `alg` of the token's header, read before verification so that algorithms the provider
/// does not announce are refused without touching a key.
fn header_alg(token: &str) -> Result<String, LogoutTokenError> {
    let header = token
        .split('.')
        .next()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| VerifyError::Malformed("no header".into()))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| VerifyError::Malformed("header is not base64url".into()))?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|_| VerifyError::Malformed("header is not JSON".into()))?;
    value
        .get("alg")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| VerifyError::Malformed("header has no alg".into()).into())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::oidc::testing::{self, ISS, NOW, TestKey, keys, now};

    fn good() -> Value {
        json!({
            "iss": ISS, "sub": "einstein", "aud": "web", "iat": NOW, "jti": "j1",
            "sid": "a-session-id",
            "events": { BACKCHANNEL_LOGOUT_EVENT: {} },
        })
    }

    fn rs256(claims: &Value) -> String {
        testing::sign("RS256", Some("rsa1"), TestKey::Rsa1, claims)
    }

    fn check(token: &str) -> Result<Logout, LogoutTokenError> {
        verify_logout_token(
            token,
            &keys(),
            ISS,
            &["RS256".into(), "ES256".into()],
            now(),
        )
    }

    #[test]
    fn a_good_token_names_the_session_and_subject() {
        assert_eq!(
            check(&rs256(&good())).unwrap(),
            Logout {
                sid: Some("a-session-id".into()),
                sub: Some("einstein".into()),
                iat: Some(NOW as i64),
            }
        );
        let mut only_sub = good();
        only_sub.as_object_mut().unwrap().remove("sid");
        only_sub.as_object_mut().unwrap().remove("iat");
        assert_eq!(
            check(&rs256(&only_sub)).unwrap(),
            Logout {
                sid: None,
                sub: Some("einstein".into()),
                iat: None,
            }
        );
    }

    #[test]
    fn the_upstream_rejection_cases() {
        let with = |f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
            let mut c = good();
            f(c.as_object_mut().unwrap());
            rs256(&c)
        };
        type Expect = fn(&LogoutTokenError) -> bool;
        let cases: Vec<(&str, String, Expect)> = vec![
            (
                "issuer mismatch",
                with(&|c| {
                    c.insert("iss".into(), json!("https://other"));
                }),
                |e| matches!(e, LogoutTokenError::Token(VerifyError::WrongIssuer { .. })),
            ),
            (
                "signed by a key the provider does not publish",
                testing::sign("RS256", Some("rsa1"), TestKey::Rsa2, &good()),
                |e| matches!(e, LogoutTokenError::Token(VerifyError::BadSignature)),
            ),
            (
                "neither sid nor sub",
                with(&|c| {
                    c.remove("sid");
                    c.remove("sub");
                }),
                |e| matches!(e, LogoutTokenError::NoSubject),
            ),
            (
                "nonce present",
                with(&|c| {
                    c.insert("nonce".into(), json!("n"));
                }),
                |e| matches!(e, LogoutTokenError::Nonce),
            ),
            (
                "wrong event member",
                with(&|c| {
                    c.insert(
                        "events".into(),
                        json!({"http://schemas.openid.net/event/other": {}}),
                    );
                }),
                |e| matches!(e, LogoutTokenError::NoLogoutEvent),
            ),
            (
                "no events",
                with(&|c| {
                    c.remove("events");
                }),
                |e| matches!(e, LogoutTokenError::NoLogoutEvent),
            ),
            (
                "expired",
                with(&|c| {
                    c.insert("exp".into(), json!(NOW - 1));
                }),
                |e| matches!(e, LogoutTokenError::Token(VerifyError::Expired)),
            ),
        ];
        for (name, token, expected) in cases {
            let err = check(&token).unwrap_err();
            assert!(expected(&err), "{name}: {err:?}");
        }
    }

    #[test]
    fn only_announced_algorithms() {
        let es = testing::sign("ES256", Some("ec1"), TestKey::Ec1, &good());
        assert!(check(&es).is_ok());
        let only_rs = verify_logout_token(&es, &keys(), ISS, &["RS256".into()], now());
        assert!(
            matches!(only_rs, Err(LogoutTokenError::AlgorithmNotAnnounced(ref a)) if a == "ES256"),
            "{only_rs:?}"
        );
        // Nothing announced: RS256 only.
        assert!(verify_logout_token(&rs256(&good()), &keys(), ISS, &[], now()).is_ok());
        assert!(verify_logout_token(&es, &keys(), ISS, &[], now()).is_err());
        let hs = testing::sign_hmac("HS256", None, b"secret", &good());
        assert!(check(&hs).is_err());
        for garbage in ["", "x", "%%%.a.b", "e30.e30.", "bm90LWpzb24.e30.sig"] {
            assert!(check(garbage).is_err(), "{garbage:?}");
        }
    }

    #[test]
    fn the_form_body() {
        let form = Some(&b"application/x-www-form-urlencoded"[..]);
        assert_eq!(
            logout_token_from_form(form, b"logout_token=a.b-c_d%2Be+f").unwrap(),
            "a.b-c_d+e f"
        );
        assert_eq!(
            logout_token_from_form(
                Some(b"Application/X-WWW-Form-Urlencoded; charset=utf-8"),
                b"other=1&logout_token=t&&x"
            )
            .unwrap(),
            "t"
        );
        let err = |ct: Option<&[u8]>, body: &[u8]| logout_token_from_form(ct, body).unwrap_err();
        assert_eq!(
            err(None, b"logout_token=t"),
            LogoutRequestError::ContentType
        );
        assert_eq!(
            err(Some(b"application/json"), b"{\"logout_token\":\"t\"}"),
            LogoutRequestError::ContentType
        );
        assert_eq!(err(form, b""), LogoutRequestError::NoToken);
        assert_eq!(err(form, b"logout_token="), LogoutRequestError::NoToken);
        assert_eq!(err(form, b"token=t"), LogoutRequestError::NoToken);
        assert_eq!(
            err(form, b"logout_token=a&logout_token=b"),
            LogoutRequestError::RepeatedToken
        );
        for bad in [
            &b"logout_token=%zz"[..],
            b"logout_token=%4",
            b"logout_token=%ff",
            b"a=1;logout_token=t",
        ] {
            assert!(
                matches!(err(form, bad), LogoutRequestError::Form(_)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn unknown_kid_is_reported_for_a_refresh() {
        let token = testing::sign("RS256", Some("rsa2"), TestKey::Rsa2, &good());
        let err = check(&token).unwrap_err();
        assert!(err.is_unknown_kid(), "{err:?}");
    }
}
