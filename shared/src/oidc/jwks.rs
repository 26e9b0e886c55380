//! The provider's signing keys (JWKS), reduced to what can verify an access token.
//!
//! Only RSA and EC (P-256, P-384) signature keys are kept. A key marked for encryption, a key for
//! an algorithm the gateway does not accept, a symmetric key (`oct`: accepting one would let
//! anyone who read the JWKS forge tokens) or a key whose numbers do not form a public key is
//! skipped with a reason, and the rest of the set stays usable: one odd key at the provider must
//! not lock every user out.
//!
//! Key selection is where algorithm-confusion attacks are stopped: the key is chosen by `kid`
//! and must fit the token's `alg` (RSA key for RS*/PS*, the matching curve for ES*, and the JWK's
//! own `alg` when it names one). A token without `kid` may use the set only when exactly one key
//! fits its algorithm.

use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

use super::verify::{VerifyError, parse_alg};

/// The family and curve of a key, which decide the algorithms it can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    EcP256,
    EcP384,
}

impl KeyKind {
    fn fits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyKind::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyKind::EcP256 => alg == ES256,
            KeyKind::EcP384 => alg == ES384,
        }
    }
}

/// One usable verification key.
#[derive(Debug, Clone)]
pub struct Key {
    pub kid: Option<String>,
    pub kind: KeyKind,
    /// The JWK's `alg`, when it restricts the key to one algorithm.
    pub alg: Option<Algorithm>,
    pub(crate) decoding: DecodingKey,
}

impl Key {
    /// Whether a token signed with `alg` may be verified with this key.
    pub fn fits(&self, alg: Algorithm) -> bool {
        self.kind.fits(alg) && self.alg.is_none_or(|a| a == alg)
    }
}

/// Why a JWKS document is unusable as a whole. Individual bad keys are skipped instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("JWKS is not valid JSON: {0}")]
    Json(String),
    #[error("JWKS has no \"keys\" array")]
    NotAKeySet,
}

#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<Key>,
    skipped: Vec<String>,
}

impl KeySet {
    pub fn parse(body: &[u8]) -> Result<Self, JwksError> {
        let doc: Value =
            serde_json::from_slice(body).map_err(|e| JwksError::Json(e.to_string()))?;
        let Some(entries) = doc.get("keys").and_then(Value::as_array) else {
            return Err(JwksError::NotAKeySet);
        };
        let mut set = KeySet::default();
        for (i, entry) in entries.iter().enumerate() {
            match parse_key(entry) {
                Ok(key) => set.keys.push(key),
                Err(reason) => {
                    let kid = entry.get("kid").and_then(Value::as_str).unwrap_or("");
                    set.skipped.push(format!("key {i} (kid {kid:?}): {reason}"));
                }
            }
        }
        Ok(set)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// Why keys of the document were left out, for the log.
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    /// The key that verifies a token with header `kid` and `alg`.
    ///
    /// `UnknownKid` means a refreshed key set might have it; `KeyMismatch` and `AmbiguousKey` will
    /// not be cured by a refresh.
    pub fn select(&self, kid: Option<&str>, alg: Algorithm) -> Result<&Key, VerifyError> {
        match kid {
            Some(kid) => {
                let mut named = self.keys.iter().filter(|k| k.kid.as_deref() == Some(kid));
                let first = named.next().ok_or(VerifyError::UnknownKid {
                    kid: Some(kid.to_owned()),
                })?;
                std::iter::once(first)
                    .chain(named)
                    .find(|k| k.fits(alg))
                    .ok_or_else(|| VerifyError::KeyMismatch {
                        kid: Some(kid.to_owned()),
                        alg: format!("{alg:?}"),
                    })
            }
            None => {
                let mut fitting = self.keys.iter().filter(|k| k.fits(alg));
                match (fitting.next(), fitting.next()) {
                    (Some(key), None) => Ok(key),
                    (None, _) => Err(VerifyError::UnknownKid { kid: None }),
                    (Some(_), Some(_)) => Err(VerifyError::AmbiguousKey {
                        alg: format!("{alg:?}"),
                    }),
                }
            }
        }
    }
}

fn str_field<'a>(entry: &'a Value, name: &str) -> Result<Option<&'a str>, String> {
    match entry.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("{name} is not a string")),
    }
}

fn required<'a>(entry: &'a Value, name: &str) -> Result<&'a str, String> {
    str_field(entry, name)?.ok_or_else(|| format!("{name} missing"))
}

fn b64_len(field: &str, value: &str) -> Result<usize, String> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(value)
        .map(|b| b.len())
        .map_err(|e| format!("{field} is not base64url: {e}"))
}

fn parse_key(entry: &Value) -> Result<Key, String> {
    if !entry.is_object() {
        return Err("not an object".to_owned());
    }
    if let Some(u) = str_field(entry, "use")?
        && u != "sig"
    {
        return Err(format!("use {u:?} is not \"sig\""));
    }
    let alg = match str_field(entry, "alg")? {
        None => None,
        Some(a) => Some(parse_alg(a).map_err(|e| format!("alg {a:?}: {e}"))?),
    };
    let kid = str_field(entry, "kid")?.map(str::to_owned);
    let kty = required(entry, "kty")?;
    let (kind, decoding) = match kty {
        "RSA" => {
            let (n, e) = (required(entry, "n")?, required(entry, "e")?);
            let n_len = b64_len("n", n)?;
            let e_len = b64_len("e", e)?;
            if n_len < 128 {
                return Err(format!("RSA modulus of {} bits is too short", n_len * 8));
            }
            if e_len == 0 || e_len > 8 {
                return Err("RSA exponent out of range".to_owned());
            }
            let key = DecodingKey::from_rsa_components(n, e).map_err(|e| e.to_string())?;
            (KeyKind::Rsa, key)
        }
        "EC" => {
            let (kind, coord_len) = match required(entry, "crv")? {
                "P-256" => (KeyKind::EcP256, 32),
                "P-384" => (KeyKind::EcP384, 48),
                other => return Err(format!("curve {other:?} is not supported")),
            };
            let (x, y) = (required(entry, "x")?, required(entry, "y")?);
            if b64_len("x", x)? != coord_len || b64_len("y", y)? != coord_len {
                return Err("EC coordinates do not fit the curve".to_owned());
            }
            let key = DecodingKey::from_ec_components(x, y).map_err(|e| e.to_string())?;
            let probe = if kind == KeyKind::EcP256 {
                Algorithm::ES256
            } else {
                Algorithm::ES384
            };
            // Building a verifier parses the point; a point off the curve fails here.
            jsonwebtoken::crypto::verify("AA", b"probe", &key, probe)
                .map_err(|_| "EC point is not on the curve".to_owned())?;
            (kind, key)
        }
        other => return Err(format!("key type {other:?} is not used for signatures")),
    };
    if let Some(a) = alg
        && !kind.fits(a)
    {
        return Err(format!("alg {a:?} does not fit a {kind:?} key"));
    }
    Ok(Key {
        kid,
        kind,
        alg,
        decoding,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oidc::testing::{JWKS, JWKS_ROTATED};

    #[test]
    fn parses_rsa_and_ec_keys() {
        let set = KeySet::parse(JWKS.as_bytes()).unwrap();
        assert_eq!(set.len(), 2);
        assert!(set.skipped().is_empty(), "{:?}", set.skipped());
        assert_eq!(set.keys()[0].kind, KeyKind::Rsa);
        assert_eq!(set.keys()[1].kind, KeyKind::EcP256);
        assert_eq!(set.keys()[1].kid.as_deref(), Some("ec1"));
        assert_eq!(KeySet::parse(JWKS_ROTATED.as_bytes()).unwrap().len(), 3);
    }

    #[test]
    fn unusable_keys_are_skipped_and_the_rest_kept() {
        let good: Value = serde_json::from_str(JWKS).unwrap();
        let rsa = good["keys"][0].clone();
        let ec = good["keys"][1].clone();
        let with = |base: &Value, field: &str, v: Value| {
            let mut k = base.clone();
            k[field] = v;
            k
        };
        let bad = vec![
            (
                "oct",
                serde_json::json!({"kty": "oct", "k": "c2VjcmV0", "kid": "h"}),
            ),
            (
                "okp",
                serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}),
            ),
            ("enc", with(&rsa, "use", "enc".into())),
            ("hmac alg", with(&rsa, "alg", "HS256".into())),
            ("rsa alg on ec key", with(&ec, "alg", "RS256".into())),
            ("es512", with(&ec, "alg", "ES512".into())),
            ("p521", with(&ec, "crv", "P-521".into())),
            ("short n", with(&rsa, "n", "AQAB".into())),
            ("bad base64", with(&rsa, "n", "%%%".into())),
            ("missing e", {
                let mut k = rsa.clone();
                k.as_object_mut().unwrap().remove("e");
                k
            }),
            ("off curve", with(&ec, "y", ec["x"].clone())),
            ("kty number", with(&rsa, "kty", 3.into())),
            ("not object", "key".into()),
        ];
        for (name, key) in bad {
            let doc = serde_json::json!({"keys": [key, ec.clone()]});
            let set = KeySet::parse(doc.to_string().as_bytes()).unwrap();
            assert_eq!(set.len(), 1, "{name}");
            assert_eq!(set.skipped().len(), 1, "{name}");
        }
    }

    #[test]
    fn documents_without_a_key_array_are_errors() {
        assert!(matches!(KeySet::parse(b"nope"), Err(JwksError::Json(_))));
        assert_eq!(KeySet::parse(b"{}").unwrap_err(), JwksError::NotAKeySet);
        assert_eq!(
            KeySet::parse(b"{\"keys\": {}}").unwrap_err(),
            JwksError::NotAKeySet
        );
        assert!(KeySet::parse(b"{\"keys\": []}").unwrap().is_empty());
    }

    #[test]
    fn selection_by_kid_and_alg() {
        let set = KeySet::parse(JWKS_ROTATED.as_bytes()).unwrap();
        assert_eq!(
            set.select(Some("rsa1"), Algorithm::RS256)
                .unwrap()
                .kid
                .as_deref(),
            Some("rsa1")
        );
        // rsa2 has no alg in its JWK: any RSA algorithm fits.
        assert!(set.select(Some("rsa2"), Algorithm::PS384).is_ok());
        // rsa1 is restricted to RS256 by its JWK.
        assert!(matches!(
            set.select(Some("rsa1"), Algorithm::PS256),
            Err(VerifyError::KeyMismatch { .. })
        ));
        assert!(matches!(
            set.select(Some("ec1"), Algorithm::RS256),
            Err(VerifyError::KeyMismatch { .. })
        ));
        assert!(matches!(
            set.select(Some("rsa1"), Algorithm::ES256),
            Err(VerifyError::KeyMismatch { .. })
        ));
        assert_eq!(
            set.select(Some("nope"), Algorithm::RS256).unwrap_err(),
            VerifyError::UnknownKid {
                kid: Some("nope".into())
            }
        );
        // Without kid: ES256 has exactly one candidate, RS256 has two (rsa1, rsa2).
        assert_eq!(
            set.select(None, Algorithm::ES256).unwrap().kid.as_deref(),
            Some("ec1")
        );
        assert!(matches!(
            set.select(None, Algorithm::RS256),
            Err(VerifyError::AmbiguousKey { .. })
        ));
        assert_eq!(
            set.select(None, Algorithm::ES384).unwrap_err(),
            VerifyError::UnknownKid { kid: None }
        );
    }
}
