//! Verification of a JWT access token against the provider's keys (spec §4.1 step 2).
//!
//! The token is taken apart here rather than handed to a general JWT library, because every
//! rejection needs its own kind: the node refreshes the key set on [`VerifyError::UnknownKid`]
//! only, and the log must say why a user was turned away. Only the signature check itself is
//! delegated to `jsonwebtoken`'s crypto.
//!
//! Semantics follow golang-jwt v5 as oCIS uses it: `exp` and `nbf` are checked only when present
//! (`exp <= now` is expired, `nbf > now` is not yet valid), with **no leeway**; `iat` is not
//! checked; `iss` must equal one of the accepted issuers exactly. The audience check is the
//! newer oCIS allow-list: empty means no check, otherwise any configured value must appear in
//! `aud` (string or array) or equal `azp`.

use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde_json::Value;

use super::jwks::KeySet;
use super::{Claims, unix_secs_f64};

/// Tokens longer than this are rejected before any decoding.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// What a verified token must satisfy besides its signature.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyPolicy {
    /// Accepted `iss` values; empty accepts any issuer.
    pub issuers: Vec<String>,
    /// Audience allow-list; empty disables the check.
    pub audiences: Vec<String>,
}

/// Why a token was not accepted. None of these is retryable with the same key set;
/// [`VerifyError::UnknownKid`] may pass after the key set is refreshed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("token is {len} bytes, more than the {MAX_TOKEN_LEN} accepted")]
    Oversized { len: usize },
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("unsigned token (alg none)")]
    AlgNone,
    #[error("symmetric algorithm {0} is not accepted")]
    HmacAlg(String),
    #[error("algorithm {0:?} is not supported")]
    UnsupportedAlg(String),
    #[error("key {kid:?} cannot verify algorithm {alg}")]
    KeyMismatch { kid: Option<String>, alg: String },
    #[error("no key with kid {kid:?} in the provider's key set")]
    UnknownKid { kid: Option<String> },
    #[error("token has no kid and several keys fit algorithm {alg}")]
    AmbiguousKey { alg: String },
    #[error("signature does not verify")]
    BadSignature,
    #[error("issuer {found:?} is not accepted")]
    WrongIssuer { found: Option<String> },
    #[error("audience not accepted")]
    WrongAudience,
    #[error("token is expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
}

impl VerifyError {
    pub fn is_unknown_kid(&self) -> bool {
        matches!(self, VerifyError::UnknownKid { .. })
    }
}

/// The algorithms a provider key may sign with. Everything else is refused with its own kind.
pub(crate) fn parse_alg(alg: &str) -> Result<Algorithm, VerifyError> {
    use Algorithm::*;
    Ok(match alg {
        "RS256" => RS256,
        "RS384" => RS384,
        "RS512" => RS512,
        "PS256" => PS256,
        "PS384" => PS384,
        "PS512" => PS512,
        "ES256" => ES256,
        "ES384" => ES384,
        "HS256" | "HS384" | "HS512" => return Err(VerifyError::HmacAlg(alg.to_owned())),
        a if a.eq_ignore_ascii_case("none") => return Err(VerifyError::AlgNone),
        // ES512 (P-521) has no verifier in jsonwebtoken's rust_crypto backend.
        other => return Err(VerifyError::UnsupportedAlg(other.to_owned())),
    })
}

fn decode_json_part(part: &str, what: &str) -> Result<Claims, VerifyError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| VerifyError::Malformed(format!("{what} is not base64url")))?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(VerifyError::Malformed(format!(
            "{what} is not a JSON object"
        ))),
        Err(_) => Err(VerifyError::Malformed(format!("{what} is not JSON"))),
    }
}

/// A numeric date claim (`exp`, `nbf`) in seconds, `None` when absent.
fn numeric_date(claims: &Claims, name: &str) -> Result<Option<f64>, VerifyError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .map(Some)
            .ok_or_else(|| VerifyError::Malformed(format!("{name} is not a number"))),
        Some(_) => Err(VerifyError::Malformed(format!("{name} is not a number"))),
    }
}

/// Verifies `token` and returns its claims.
pub fn verify(
    token: &str,
    keys: &KeySet,
    policy: &VerifyPolicy,
    now: SystemTime,
) -> Result<Claims, VerifyError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(VerifyError::Oversized { len: token.len() });
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(VerifyError::Malformed(
            "not three dot-separated parts".to_owned(),
        ));
    };
    let header = decode_json_part(header_b64, "header")?;
    let alg = match header.get("alg") {
        Some(Value::String(a)) => parse_alg(a)?,
        _ => return Err(VerifyError::Malformed("header has no alg".to_owned())),
    };
    if signature_b64.is_empty() {
        return Err(VerifyError::Malformed("empty signature".to_owned()));
    }
    let kid = match header.get("kid") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) => Some(k.as_str()),
        Some(_) => return Err(VerifyError::Malformed("kid is not a string".to_owned())),
    };
    let key = keys.select(kid, alg)?;
    let message_len = header_b64.len() + 1 + payload_b64.len();
    let message = &token.as_bytes()[..message_len];
    match jsonwebtoken::crypto::verify(signature_b64, message, &key.decoding, alg) {
        Ok(true) => {}
        Ok(false) => return Err(VerifyError::BadSignature),
        Err(e) => match e.kind() {
            jsonwebtoken::errors::ErrorKind::Base64(_) => {
                return Err(VerifyError::Malformed(
                    "signature is not base64url".to_owned(),
                ));
            }
            _ => return Err(VerifyError::BadSignature),
        },
    }
    let claims = decode_json_part(payload_b64, "payload")?;
    check_claims(&claims, policy, now)?;
    Ok(claims)
}

/// The checks on a signed claim set: time window, issuer, audience.
pub(crate) fn check_claims(
    claims: &Claims,
    policy: &VerifyPolicy,
    now: SystemTime,
) -> Result<(), VerifyError> {
    let now = unix_secs_f64(now);
    if let Some(exp) = numeric_date(claims, "exp")?
        && exp <= now
    {
        return Err(VerifyError::Expired);
    }
    if let Some(nbf) = numeric_date(claims, "nbf")?
        && nbf > now
    {
        return Err(VerifyError::NotYetValid);
    }
    if !policy.issuers.is_empty() {
        let iss = claims.get("iss").and_then(Value::as_str);
        if !iss.is_some_and(|i| policy.issuers.iter().any(|p| p == i)) {
            return Err(VerifyError::WrongIssuer {
                found: claims.get("iss").map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                }),
            });
        }
    }
    if !policy.audiences.is_empty() && !audience_accepted(claims, &policy.audiences) {
        return Err(VerifyError::WrongAudience);
    }
    Ok(())
}

fn audience_accepted(claims: &Claims, allowed: &[String]) -> bool {
    let allowed = |v: &str| allowed.iter().any(|a| a == v);
    let in_aud = match claims.get("aud") {
        Some(Value::String(a)) => allowed(a),
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(allowed),
        _ => false,
    };
    in_aud
        || claims
            .get("azp")
            .and_then(Value::as_str)
            .is_some_and(allowed)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::oidc::testing::{self, ISS, JWKS_ROTATED, NOW, TestKey, keys, now};

    fn policy() -> VerifyPolicy {
        VerifyPolicy {
            issuers: vec![ISS.to_owned()],
            audiences: vec![],
        }
    }

    fn claims() -> Value {
        json!({"iss": ISS, "sub": "einstein", "aud": "web", "exp": NOW + 60, "sid": "s1"})
    }

    fn with(mut base: Value, field: &str, v: Value) -> Value {
        base[field] = v;
        base
    }

    fn without(mut base: Value, field: &str) -> Value {
        base.as_object_mut().unwrap().remove(field);
        base
    }

    fn rs256(c: &Value) -> String {
        testing::sign("RS256", Some("rsa1"), TestKey::Rsa1, c)
    }

    #[test]
    fn accepts_valid_tokens() {
        let cases = [
            ("rs256", rs256(&claims())),
            (
                "es256",
                testing::sign("ES256", Some("ec1"), TestKey::Ec1, &claims()),
            ),
            ("no exp", rs256(&without(claims(), "exp"))),
            ("nbf now", rs256(&with(claims(), "nbf", NOW.into()))),
            (
                "fractional exp",
                rs256(&with(claims(), "exp", json!(NOW as f64 + 0.5))),
            ),
            (
                "no kid, one ES256 key",
                testing::sign("ES256", None, TestKey::Ec1, &claims()),
            ),
        ];
        for (name, token) in cases {
            let got = verify(&token, &keys(), &policy(), now());
            assert!(got.is_ok(), "{name}: {got:?}");
            assert_eq!(got.unwrap()["sub"], "einstein", "{name}");
        }
    }

    #[test]
    fn accepts_ps256_with_a_key_without_alg() {
        let keys = KeySet::parse(JWKS_ROTATED.as_bytes()).unwrap();
        for alg in ["PS256", "PS384", "PS512", "RS384", "RS512"] {
            let token = testing::sign(alg, Some("rsa2"), TestKey::Rsa2, &claims());
            assert!(verify(&token, &keys, &policy(), now()).is_ok(), "{alg}");
        }
    }

    #[test]
    fn rejects_each_bad_token_with_its_kind() {
        use VerifyError as E;
        let good = rs256(&claims());
        let (h, p, s) = {
            let mut it = good.split('.');
            (
                it.next().unwrap().to_owned(),
                it.next().unwrap().to_owned(),
                it.next().unwrap().to_owned(),
            )
        };
        let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let other_payload = b64(&with(claims(), "sub", "mallory".into()));
        let rsa1_public_pem = testing::public_pem(TestKey::Rsa1);
        type Case = (&'static str, String, fn(&VerifyError) -> bool);
        let cases: Vec<Case> = vec![
            (
                "alg none",
                testing::unsigned(&json!({"alg": "none", "typ": "JWT"}), &claims()),
                |e| matches!(e, E::AlgNone),
            ),
            (
                "alg none, empty signature",
                format!(
                    "{}.{p}.",
                    URL_SAFE_NO_PAD.encode(json!({"alg": "none"}).to_string())
                ),
                |e| matches!(e, E::AlgNone),
            ),
            (
                "alg None",
                testing::unsigned(&json!({"alg": "None"}), &claims()),
                |e| matches!(e, E::AlgNone),
            ),
            (
                "hs256 keyed with the RSA public key",
                testing::sign_hmac("HS256", Some("rsa1"), rsa1_public_pem, &claims()),
                |e| matches!(e, E::HmacAlg(a) if a == "HS256"),
            ),
            (
                "hs512 without kid",
                testing::sign_hmac("HS512", None, b"secret", &claims()),
                |e| matches!(e, E::HmacAlg(_)),
            ),
            (
                "RS256 header on the EC key",
                testing::raw(
                    &json!({"alg": "RS256", "kid": "ec1"}),
                    &claims(),
                    &testing::sign("ES256", Some("ec1"), TestKey::Ec1, &claims()),
                ),
                |e| matches!(e, E::KeyMismatch { .. }),
            ),
            (
                "ES256 header on the RSA key",
                testing::raw(&json!({"alg": "ES256", "kid": "rsa1"}), &claims(), &good),
                |e| matches!(e, E::KeyMismatch { .. }),
            ),
            (
                "PS256 on a key restricted to RS256",
                testing::sign("PS256", Some("rsa1"), TestKey::Rsa1, &claims()),
                |e| matches!(e, E::KeyMismatch { .. }),
            ),
            (
                "ES512",
                testing::raw(&json!({"alg": "ES512", "kid": "ec1"}), &claims(), &good),
                |e| matches!(e, E::UnsupportedAlg(_)),
            ),
            (
                "EdDSA",
                testing::raw(&json!({"alg": "EdDSA"}), &claims(), &good),
                |e| matches!(e, E::UnsupportedAlg(_)),
            ),
            (
                "unknown kid",
                testing::sign("RS256", Some("rsa2"), TestKey::Rsa2, &claims()),
                |e| matches!(e, E::UnknownKid { kid: Some(k) } if k == "rsa2"),
            ),
            (
                "signed by another key under a known kid",
                testing::sign("RS256", Some("rsa1"), TestKey::Rsa2, &claims()),
                |e| matches!(e, E::BadSignature),
            ),
            ("payload swapped", format!("{h}.{other_payload}.{s}"), |e| {
                matches!(e, E::BadSignature)
            }),
            (
                "signature truncated",
                format!("{h}.{p}.{}", &s[..s.len() - 2]),
                |e| matches!(e, E::BadSignature),
            ),
            (
                "wrong iss",
                rs256(&with(claims(), "iss", "https://evil".into())),
                |e| matches!(e, E::WrongIssuer { found: Some(f) } if f == "https://evil"),
            ),
            (
                "iss with trailing slash",
                rs256(&with(claims(), "iss", format!("{ISS}/").into())),
                |e| matches!(e, E::WrongIssuer { .. }),
            ),
            ("no iss", rs256(&without(claims(), "iss")), |e| {
                matches!(e, E::WrongIssuer { found: None })
            }),
            (
                "expired exactly now",
                rs256(&with(claims(), "exp", NOW.into())),
                |e| matches!(e, E::Expired),
            ),
            (
                "expired",
                rs256(&with(claims(), "exp", (NOW - 1).into())),
                |e| matches!(e, E::Expired),
            ),
            (
                "not yet valid",
                rs256(&with(claims(), "nbf", (NOW + 1).into())),
                |e| matches!(e, E::NotYetValid),
            ),
            (
                "exp is a string",
                rs256(&with(claims(), "exp", "soon".into())),
                |e| matches!(e, E::Malformed(_)),
            ),
            ("two parts", format!("{h}.{p}"), |e| {
                matches!(e, E::Malformed(_))
            }),
            ("four parts", format!("{good}.x"), |e| {
                matches!(e, E::Malformed(_))
            }),
            ("empty", String::new(), |e| matches!(e, E::Malformed(_))),
            ("empty signature", format!("{h}.{p}."), |e| {
                matches!(e, E::Malformed(_))
            }),
            ("header not base64", format!("*.{p}.{s}"), |e| {
                matches!(e, E::Malformed(_))
            }),
            ("header padded", format!("{h}=.{p}.{s}"), |e| {
                matches!(e, E::Malformed(_))
            }),
            (
                "header not json",
                format!("{}.{p}.{s}", URL_SAFE_NO_PAD.encode("{")),
                |e| matches!(e, E::Malformed(_)),
            ),
            (
                "header an array",
                format!("{}.{p}.{s}", b64(&json!([1]))),
                |e| matches!(e, E::Malformed(_)),
            ),
            (
                "header without alg",
                format!("{}.{p}.{s}", b64(&json!({"kid": "rsa1"}))),
                |e| matches!(e, E::Malformed(_)),
            ),
            (
                "kid not a string",
                format!("{}.{p}.{s}", b64(&json!({"alg": "RS256", "kid": 1}))),
                |e| matches!(e, E::Malformed(_)),
            ),
            ("signature not base64", format!("{h}.{p}.!!!"), |e| {
                matches!(e, E::Malformed(_))
            }),
            (
                "payload not an object",
                testing::sign_value("RS256", Some("rsa1"), TestKey::Rsa1, &json!("x")),
                |e| matches!(e, E::Malformed(_)),
            ),
            (
                "oversized",
                rs256(&with(claims(), "pad", "x".repeat(9000).into())),
                |e| matches!(e, E::Oversized { .. }),
            ),
        ];
        for (name, token, expected) in cases {
            match verify(&token, &keys(), &policy(), now()) {
                Ok(c) => panic!("{name}: accepted {c:?}"),
                Err(e) => assert!(expected(&e), "{name}: wrong kind {e:?}"),
            }
        }
    }

    #[test]
    fn token_without_kid_needs_exactly_one_fitting_key() {
        let rotated = KeySet::parse(JWKS_ROTATED.as_bytes()).unwrap();
        let token = testing::sign("RS256", None, TestKey::Rsa1, &claims());
        assert!(verify(&token, &keys(), &policy(), now()).is_ok());
        assert!(matches!(
            verify(&token, &rotated, &policy(), now()),
            Err(VerifyError::AmbiguousKey { .. })
        ));
        let empty = KeySet::parse(b"{\"keys\":[]}").unwrap();
        assert!(
            verify(&token, &empty, &policy(), now())
                .unwrap_err()
                .is_unknown_kid()
        );
    }

    #[test]
    fn audience_allow_list() {
        let pol = |aud: &[&str]| VerifyPolicy {
            issuers: vec![ISS.to_owned()],
            audiences: aud.iter().map(|s| s.to_string()).collect(),
        };
        let base = without(claims(), "aud");
        let cases: Vec<(&str, Value, &[&str], bool)> = vec![
            ("no list, no aud", base.clone(), &[], true),
            (
                "aud string",
                with(base.clone(), "aud", "web".into()),
                &["web"],
                true,
            ),
            (
                "aud array",
                with(base.clone(), "aud", json!(["x", "web"])),
                &["other", "web"],
                true,
            ),
            (
                "azp",
                with(base.clone(), "azp", "web".into()),
                &["web"],
                true,
            ),
            (
                "aud mismatch, azp match",
                with(with(base.clone(), "aud", "x".into()), "azp", "web".into()),
                &["web"],
                true,
            ),
            (
                "aud mismatch",
                with(base.clone(), "aud", "x".into()),
                &["web"],
                false,
            ),
            (
                "array mismatch",
                with(base.clone(), "aud", json!(["x", 1])),
                &["web"],
                false,
            ),
            ("no aud", base.clone(), &["web"], false),
            (
                "case differs",
                with(base.clone(), "aud", "Web".into()),
                &["web"],
                false,
            ),
        ];
        for (name, c, aud, ok) in cases {
            let got = verify(&rs256(&c), &keys(), &pol(aud), now());
            assert_eq!(got.is_ok(), ok, "{name}: {got:?}");
            if !ok {
                assert_eq!(got.unwrap_err(), VerifyError::WrongAudience, "{name}");
            }
        }
    }

    #[test]
    fn any_listed_issuer_is_accepted() {
        let adfs = "http://adfs.example.com/adfs/services/trust";
        let pol = VerifyPolicy {
            issuers: vec![adfs.to_owned()],
            audiences: vec![],
        };
        let token = rs256(&with(claims(), "iss", adfs.into()));
        assert!(verify(&token, &keys(), &pol, now()).is_ok());
        assert!(matches!(
            verify(&rs256(&claims()), &keys(), &pol, now()),
            Err(VerifyError::WrongIssuer { .. })
        ));
    }
}
