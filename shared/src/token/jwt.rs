//! Minting and verifying reva `x-access-token`s (spec §6.4).
//!
//! Backends trust the user described in this HS256 JWT because it is signed with the secret they
//! share with the gateway (`OCIS_JWT_SECRET`). Verification accepts HS256 only — a token naming
//! any other algorithm, `none` included, is refused before its signature is looked at — and
//! requires `reva` among the audiences, which reva itself does not check.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Deserializer, Serialize};

use super::TokenError;
use super::user::{RevaUser, Scopes, owner_scope};

/// The audience reva puts in every token it mints.
pub const REVA_AUDIENCE: &str = "reva";

/// reva's default token lifetime (`expires`, 86 400 s).
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(86_400);

/// Longest accepted lifetime (a year); keeps expiry arithmetic far from overflow.
pub const MAX_LIFETIME: Duration = Duration::from_secs(366 * 86_400);

/// reva's clock leeway when checking `exp` (5 s).
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(5);

/// The claims of a reva `x-access-token`, in the order Go writes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevaClaims {
    /// The user's IdP.
    #[serde(default)]
    pub iss: String,
    /// Audiences; reva writes `["reva"]`, older versions a bare string, both are read.
    #[serde(default, deserialize_with = "one_or_many")]
    pub aud: Vec<String>,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Issue time, Unix seconds.
    #[serde(default)]
    pub iat: u64,
    /// The CS3 user the token speaks for.
    pub user: RevaUser,
    /// What the token may be used for.
    #[serde(default)]
    pub scope: Scopes,
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// Signs tokens for users with the shared secret and a fixed lifetime.
#[derive(Clone)]
pub struct Minter {
    key: EncodingKey,
    lifetime: Duration,
}

impl std::fmt::Debug for Minter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minter")
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl Minter {
    /// A minter for `secret`; an empty secret, or a lifetime under one second or over
    /// [`MAX_LIFETIME`], is refused.
    pub fn new(secret: &[u8], lifetime: Duration) -> Result<Self, TokenError> {
        if secret.is_empty() {
            return Err(TokenError::EmptySecret);
        }
        if lifetime.as_secs() == 0 || lifetime > MAX_LIFETIME {
            return Err(TokenError::InvalidLifetime(lifetime));
        }
        Ok(Self {
            key: EncodingKey::from_secret(secret),
            lifetime,
        })
    }

    /// How long minted tokens are valid.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// A token for `user` with the owner scope, issued now.
    pub fn mint(&self, user: &RevaUser) -> Result<String, TokenError> {
        self.mint_at(user, &owner_scope(), SystemTime::now())
    }

    /// A token for `user` with `scope`, issued at `now` and expiring `lifetime` later.
    pub fn mint_at(
        &self,
        user: &RevaUser,
        scope: &Scopes,
        now: SystemTime,
    ) -> Result<String, TokenError> {
        self.mint_until(user, scope, now, None)
    }

    /// Like [`mint_at`](Self::mint_at), but the token expires no later than `not_after` (a
    /// public share's own expiry, for instance). Times are truncated to whole seconds.
    pub fn mint_until(
        &self,
        user: &RevaUser,
        scope: &Scopes,
        now: SystemTime,
        not_after: Option<SystemTime>,
    ) -> Result<String, TokenError> {
        let iat = unix_seconds(now);
        let mut exp = iat.saturating_add(self.lifetime.as_secs());
        if let Some(limit) = not_after {
            exp = exp.min(unix_seconds(limit));
        }
        let claims = RevaClaims {
            iss: user.idp().to_owned(),
            aud: vec![REVA_AUDIENCE.to_owned()],
            exp,
            iat,
            user: user.clone(),
            scope: scope.clone(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key)
            .map_err(|e| TokenError::Encoding(e.to_string()))
    }
}

/// Verify `token` against `secret` now; see [`verify_at`].
pub fn verify(secret: &[u8], token: &str, leeway: Duration) -> Result<RevaClaims, TokenError> {
    verify_at(secret, token, leeway, SystemTime::now())
}

/// Verify `token` as of `now`: HS256 only, valid signature, `reva` among the audiences and
/// `exp + leeway` not yet passed.
pub fn verify_at(
    secret: &[u8],
    token: &str,
    leeway: Duration,
    now: SystemTime,
) -> Result<RevaClaims, TokenError> {
    if secret.is_empty() {
        return Err(TokenError::EmptySecret);
    }
    check_algorithm(token)?;

    let mut validation = Validation::new(Algorithm::HS256);
    // Expiry is checked below against the injected time, not jsonwebtoken's system clock.
    validation.validate_exp = false;
    validation.set_required_spec_claims(&["exp", "aud"]);
    validation.set_audience(&[REVA_AUDIENCE]);

    let data = jsonwebtoken::decode::<RevaClaims>(
        token.as_bytes(),
        &DecodingKey::from_secret(secret),
        &validation,
    )
    .map_err(|e| match e.kind() {
        ErrorKind::InvalidSignature => TokenError::Signature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => TokenError::Algorithm,
        ErrorKind::InvalidAudience => TokenError::Audience,
        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => TokenError::Audience,
        _ => TokenError::Malformed(e.to_string()),
    })?;

    let claims = data.claims;
    if claims.exp.saturating_add(leeway.as_secs()) < unix_seconds(now) {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

/// Refuse any header whose `alg` is not exactly `HS256`, before the library parses it.
fn check_algorithm(token: &str) -> Result<(), TokenError> {
    #[derive(Deserialize)]
    struct AlgOnly {
        alg: String,
    }
    let header = token
        .split('.')
        .next()
        .ok_or_else(|| TokenError::Malformed("empty token".into()))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|e| TokenError::Malformed(format!("header: {e}")))?;
    let parsed: AlgOnly = serde_json::from_slice(&bytes)
        .map_err(|e| TokenError::Malformed(format!("header: {e}")))?;
    if parsed.alg == "HS256" {
        Ok(())
    } else {
        Err(TokenError::Algorithm)
    }
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::user::{RevaUserId, UserType};

    const SECRET: &[u8] = b"a-shared-ocis-jwt-secret";

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn user() -> RevaUser {
        let mut user = RevaUser {
            id: Some(RevaUserId {
                idp: "https://idp.example.com".into(),
                opaque_id: "u-1".into(),
                user_type: UserType::PRIMARY,
            }),
            username: "einstein".into(),
            groups: vec!["physics".into()],
            ..RevaUser::default()
        };
        user.set_roles(&["admin-role".into()]).unwrap();
        user
    }

    fn minter() -> Minter {
        Minter::new(SECRET, Duration::from_secs(3600)).unwrap()
    }

    fn sign_raw(header_json: &str, claims: &serde_json::Value, secret: &[u8]) -> String {
        use jsonwebtoken::crypto::sign;
        let h = URL_SAFE_NO_PAD.encode(header_json);
        let c = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap());
        let msg = format!("{h}.{c}");
        let sig = sign(
            msg.as_bytes(),
            &EncodingKey::from_secret(secret),
            Algorithm::HS256,
        )
        .unwrap();
        format!("{msg}.{sig}")
    }

    fn good_claims() -> serde_json::Value {
        serde_json::json!({"iss": "x", "aud": ["reva"], "exp": 2000, "iat": 1000, "user": {}, "scope": {}})
    }

    #[test]
    fn empty_secret_is_refused() {
        assert!(matches!(
            Minter::new(b"", DEFAULT_LIFETIME),
            Err(TokenError::EmptySecret)
        ));
        assert!(matches!(
            Minter::new(SECRET, Duration::ZERO),
            Err(TokenError::InvalidLifetime(_))
        ));
        assert!(matches!(
            Minter::new(SECRET, MAX_LIFETIME + Duration::from_secs(1)),
            Err(TokenError::InvalidLifetime(_))
        ));
        assert!(matches!(
            verify_at(b"", "a.b.c", DEFAULT_LEEWAY, t(0)),
            Err(TokenError::EmptySecret)
        ));
    }

    #[test]
    fn round_trip_carries_reva_claims() {
        let token = minter().mint_at(&user(), &owner_scope(), t(1_000)).unwrap();
        let claims = verify_at(SECRET, &token, DEFAULT_LEEWAY, t(1_500)).unwrap();
        assert_eq!(claims.iss, "https://idp.example.com");
        assert_eq!(claims.aud, vec!["reva".to_owned()]);
        assert_eq!(claims.iat, 1_000);
        assert_eq!(claims.exp, 4_600);
        assert_eq!(claims.user, user());
        assert_eq!(claims.scope, owner_scope());
        assert_eq!(claims.user.roles().unwrap(), vec!["admin-role".to_owned()]);

        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::HS256);
    }

    #[test]
    fn mint_until_caps_the_expiry() {
        let m = minter();
        let capped = m
            .mint_until(&user(), &owner_scope(), t(1_000), Some(t(1_600)))
            .unwrap();
        assert_eq!(
            verify_at(SECRET, &capped, DEFAULT_LEEWAY, t(1_000))
                .unwrap()
                .exp,
            1_600
        );
        let later = m
            .mint_until(&user(), &owner_scope(), t(1_000), Some(t(9_000)))
            .unwrap();
        assert_eq!(
            verify_at(SECRET, &later, DEFAULT_LEEWAY, t(1_000))
                .unwrap()
                .exp,
            4_600
        );
    }

    #[test]
    fn mint_uses_the_current_time() {
        let token = minter().mint(&user()).unwrap();
        let claims = verify(SECRET, &token, DEFAULT_LEEWAY).unwrap();
        assert_eq!(claims.exp - claims.iat, 3600);
    }

    #[test]
    fn tampered_signature_is_rejected() {
        let token = minter().mint_at(&user(), &owner_scope(), t(1_000)).unwrap();
        let (rest, sig) = token.rsplit_once('.').unwrap();
        let mut sig = sig.as_bytes().to_vec();
        sig[0] = if sig[0] == b'A' { b'B' } else { b'A' };
        let tampered = format!("{rest}.{}", String::from_utf8(sig).unwrap());
        assert!(matches!(
            verify_at(SECRET, &tampered, DEFAULT_LEEWAY, t(1_000)),
            Err(TokenError::Signature)
        ));
    }

    #[test]
    fn tampered_payload_is_rejected() {
        let token = minter().mint_at(&user(), &owner_scope(), t(1_000)).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let mut claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        claims["user"]["username"] = "mallory".into();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap()),
            parts[2]
        );
        assert!(matches!(
            verify_at(SECRET, &forged, DEFAULT_LEEWAY, t(1_000)),
            Err(TokenError::Signature)
        ));
    }

    #[test]
    fn wrong_secret_is_rejected() {
        let token = minter().mint_at(&user(), &owner_scope(), t(1_000)).unwrap();
        assert!(matches!(
            verify_at(b"another secret", &token, DEFAULT_LEEWAY, t(1_000)),
            Err(TokenError::Signature)
        ));
    }

    #[test]
    fn alg_none_is_rejected() {
        let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let c = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&good_claims()).unwrap());
        for token in [format!("{h}.{c}."), format!("{h}.{c}")] {
            assert!(matches!(
                verify_at(SECRET, &token, DEFAULT_LEEWAY, t(1_000)),
                Err(TokenError::Algorithm)
            ));
        }
    }

    #[test]
    fn other_algorithms_are_rejected_even_with_a_valid_hmac() {
        for alg in ["HS384", "HS512", "RS256", "hs256"] {
            let token = sign_raw(&format!(r#"{{"alg":"{alg}"}}"#), &good_claims(), SECRET);
            assert!(
                matches!(
                    verify_at(SECRET, &token, DEFAULT_LEEWAY, t(1_000)),
                    Err(TokenError::Algorithm)
                ),
                "{alg}"
            );
        }
        let ok = sign_raw(r#"{"alg":"HS256"}"#, &good_claims(), SECRET);
        assert!(verify_at(SECRET, &ok, DEFAULT_LEEWAY, t(1_000)).is_ok());
    }

    #[test]
    fn expiry_honours_the_leeway() {
        let token = minter().mint_at(&user(), &owner_scope(), t(1_000)).unwrap();
        let exp = 4_600;
        assert!(verify_at(SECRET, &token, DEFAULT_LEEWAY, t(exp)).is_ok());
        assert!(verify_at(SECRET, &token, DEFAULT_LEEWAY, t(exp + 5)).is_ok());
        assert!(matches!(
            verify_at(SECRET, &token, DEFAULT_LEEWAY, t(exp + 6)),
            Err(TokenError::Expired)
        ));
        assert!(matches!(
            verify_at(SECRET, &token, Duration::ZERO, t(exp + 1)),
            Err(TokenError::Expired)
        ));
    }

    #[test]
    fn audience_must_contain_reva() {
        let mut claims = good_claims();
        claims["aud"] = serde_json::json!(["web", "reva"]);
        let ok = sign_raw(r#"{"alg":"HS256"}"#, &claims, SECRET);
        assert!(verify_at(SECRET, &ok, DEFAULT_LEEWAY, t(1_000)).is_ok());

        claims["aud"] = serde_json::json!("reva");
        let bare = sign_raw(r#"{"alg":"HS256"}"#, &claims, SECRET);
        assert_eq!(
            verify_at(SECRET, &bare, DEFAULT_LEEWAY, t(1_000))
                .unwrap()
                .aud,
            vec!["reva".to_owned()]
        );

        claims["aud"] = serde_json::json!(["web"]);
        let wrong = sign_raw(r#"{"alg":"HS256"}"#, &claims, SECRET);
        assert!(matches!(
            verify_at(SECRET, &wrong, DEFAULT_LEEWAY, t(1_000)),
            Err(TokenError::Audience)
        ));

        claims.as_object_mut().unwrap().remove("aud");
        let missing = sign_raw(r#"{"alg":"HS256"}"#, &claims, SECRET);
        assert!(matches!(
            verify_at(SECRET, &missing, DEFAULT_LEEWAY, t(1_000)),
            Err(TokenError::Audience)
        ));
    }

    #[test]
    fn token_without_exp_is_rejected() {
        let mut claims = good_claims();
        claims.as_object_mut().unwrap().remove("exp");
        let token = sign_raw(r#"{"alg":"HS256"}"#, &claims, SECRET);
        assert!(matches!(
            verify_at(SECRET, &token, DEFAULT_LEEWAY, t(1_000)),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for token in [
            "",
            "a",
            "a.b",
            "a.b.c",
            "....",
            "eyJhbGciOiJIUzI1NiJ9.bm9wZQ.c2ln",
        ] {
            assert!(
                matches!(
                    verify_at(SECRET, token, DEFAULT_LEEWAY, t(1_000)),
                    Err(TokenError::Malformed(_)) | Err(TokenError::Signature)
                ),
                "{token:?}"
            );
        }
    }
}
