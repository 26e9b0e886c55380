//! The userinfo answer and the claim set the gateway keeps for a token (spec §4.1 steps 3–4).
//!
//! A provider answers userinfo either with a JSON object or, when asked to sign it, with a JWT
//! (`Content-Type: application/jwt`). A signed answer is verified with the same key set and
//! issuer rule as access tokens; it has no audience check because its audience is the client,
//! not this gateway. The userinfo claims are laid over the access-token claims (userinfo wins on
//! a shared name), and `exp` is then fixed to the access token's expiry — or, for tokens without
//! one, to now plus the user-info cache TTL — so that the cached claims never outlive the token.

use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::jwks::KeySet;
use super::verify::{VerifyError, VerifyPolicy, verify};
use super::{Claims, unix_secs};

/// Why a userinfo answer is unusable. Not retryable: the provider sent something wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserinfoError {
    #[error("userinfo answer is not JSON: {0}")]
    Json(String),
    #[error("userinfo answer is not a JSON object")]
    NotAnObject,
    #[error("signed userinfo answer rejected: {0}")]
    Jwt(VerifyError),
}

/// Whether a `Content-Type` announces a signed (JWT) userinfo answer.
pub fn is_jwt_content_type(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/jwt"))
}

/// Parses a userinfo answer. `keys` is only consulted for signed answers.
pub fn parse_userinfo(
    content_type: Option<&str>,
    body: &[u8],
    keys: &KeySet,
    issuers: &[String],
    now: SystemTime,
) -> Result<Claims, UserinfoError> {
    if is_jwt_content_type(content_type) {
        let token = std::str::from_utf8(body)
            .map_err(|_| UserinfoError::Jwt(VerifyError::Malformed("not UTF-8".to_owned())))?;
        let policy = VerifyPolicy {
            issuers: issuers.to_vec(),
            audiences: Vec::new(),
        };
        return verify(token.trim(), keys, &policy, now).map_err(UserinfoError::Jwt);
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(UserinfoError::NotAnObject),
        Err(e) => Err(UserinfoError::Json(e.to_string())),
    }
}

/// The claims kept for a token: `userinfo` over `access`, with `exp` set as described in the
/// module documentation. Returns the claims and that `exp` (Unix seconds).
pub fn merge_claims(
    access: &Claims,
    userinfo: Option<Claims>,
    now: SystemTime,
    ttl: Duration,
) -> (Claims, i64) {
    let token_exp = match access.get("exp") {
        Some(Value::Number(n)) => n.as_i64().or_else(|| n.as_f64().map(|f| f.floor() as i64)),
        _ => None,
    };
    let exp = token_exp.unwrap_or_else(|| unix_secs(now + ttl));
    let mut merged = access.clone();
    if let Some(info) = userinfo {
        merged.extend(info);
    }
    merged.insert("exp".to_owned(), Value::from(exp));
    (merged, exp)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::oidc::testing::{self, ISS, NOW, TestKey, keys, now};

    fn obj(v: Value) -> Claims {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn content_type_detection() {
        for ct in [
            "application/jwt",
            "Application/JWT",
            "application/jwt; charset=utf-8",
            " application/jwt ",
        ] {
            assert!(is_jwt_content_type(Some(ct)), "{ct}");
        }
        for ct in [
            None,
            Some("application/json"),
            Some("application/jwt+json"),
            Some(""),
        ] {
            assert!(!is_jwt_content_type(ct), "{ct:?}");
        }
    }

    #[test]
    fn json_answers() {
        let issuers = [ISS.to_owned()];
        let got = parse_userinfo(
            Some("application/json"),
            br#"{"sub":"einstein","email":"e@example.org"}"#,
            &keys(),
            &issuers,
            now(),
        )
        .unwrap();
        assert_eq!(got["email"], "e@example.org");
        // A missing content type is read as JSON, as oCIS does.
        assert!(parse_userinfo(None, b"{}", &keys(), &issuers, now()).is_ok());
        assert_eq!(
            parse_userinfo(None, b"[1]", &keys(), &issuers, now()).unwrap_err(),
            UserinfoError::NotAnObject
        );
        assert!(matches!(
            parse_userinfo(None, b"<html>", &keys(), &issuers, now()),
            Err(UserinfoError::Json(_))
        ));
    }

    #[test]
    fn signed_answers_are_verified_without_audience() {
        let issuers = [ISS.to_owned()];
        let claims = json!({"iss": ISS, "sub": "einstein", "aud": "some-client", "email": "e@x"});
        let signed = testing::sign("ES256", Some("ec1"), TestKey::Ec1, &claims);
        let got = parse_userinfo(
            Some("application/jwt"),
            format!("{signed}\n").as_bytes(),
            &keys(),
            &issuers,
            now(),
        )
        .unwrap();
        assert_eq!(got["email"], "e@x");

        let forged = testing::sign("RS256", Some("rsa1"), TestKey::Rsa2, &claims);
        assert_eq!(
            parse_userinfo(
                Some("application/jwt"),
                forged.as_bytes(),
                &keys(),
                &issuers,
                now()
            )
            .unwrap_err(),
            UserinfoError::Jwt(VerifyError::BadSignature)
        );
        let wrong_iss = testing::sign(
            "RS256",
            Some("rsa1"),
            TestKey::Rsa1,
            &json!({"iss": "https://evil", "sub": "x"}),
        );
        assert!(matches!(
            parse_userinfo(
                Some("application/jwt"),
                wrong_iss.as_bytes(),
                &keys(),
                &issuers,
                now()
            ),
            Err(UserinfoError::Jwt(VerifyError::WrongIssuer { .. }))
        ));
        let none = testing::unsigned(&json!({"alg": "none"}), &claims);
        assert_eq!(
            parse_userinfo(
                Some("application/jwt"),
                none.as_bytes(),
                &keys(),
                &issuers,
                now()
            )
            .unwrap_err(),
            UserinfoError::Jwt(VerifyError::AlgNone)
        );
        // A JSON body under the JWT content type is not a JWT.
        assert!(matches!(
            parse_userinfo(
                Some("application/jwt"),
                b"{\"sub\":\"x\"}",
                &keys(),
                &issuers,
                now()
            ),
            Err(UserinfoError::Jwt(VerifyError::Malformed(_)))
        ));
    }

    #[test]
    fn userinfo_wins_and_exp_comes_from_the_token() {
        let access =
            obj(json!({"sub": "einstein", "sid": "s1", "exp": NOW + 300, "name": "token"}));
        let info = obj(json!({"sub": "einstein", "name": "Albert", "exp": 1, "groups": ["a"]}));
        let (merged, exp) = merge_claims(&access, Some(info), now(), Duration::from_secs(10));
        assert_eq!(exp, (NOW + 300) as i64);
        assert_eq!(
            Value::Object(merged),
            json!({"sub": "einstein", "sid": "s1", "exp": NOW + 300, "name": "Albert", "groups": ["a"]})
        );
    }

    #[test]
    fn a_zero_ttl_keeps_an_answer_without_exp_no_longer_than_now() {
        let (_, exp) = merge_claims(&Claims::new(), None, now(), Duration::ZERO);
        assert_eq!(exp, NOW as i64);
    }

    #[test]
    fn exp_defaults_to_now_plus_ttl() {
        let (merged, exp) = merge_claims(
            &Claims::new(),
            Some(obj(json!({"sub": "x", "exp": 5}))),
            now() + Duration::from_millis(900),
            Duration::from_secs(10),
        );
        assert_eq!(exp, (NOW + 10) as i64);
        assert_eq!(merged["exp"], json!(NOW + 10));
        let (_, exp) = merge_claims(
            &obj(json!({"exp": NOW as f64 + 20.7})),
            None,
            now(),
            Duration::from_secs(10),
        );
        assert_eq!(exp, (NOW + 20) as i64);
    }
}
