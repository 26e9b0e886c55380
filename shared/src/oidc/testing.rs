//! Fixed test keys and token builders, shared with the node's tests (which cannot see this
//! crate's `cfg(test)` items).
//!
//! The keys under `testdata/` were generated once with `openssl` for tests only; they are public
//! and must never be trusted by a deployment. Nothing outside tests calls into this module.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::Value;

/// `rsa1` (alg RS256) and `ec1` (ES256, P-256).
pub const JWKS: &str = include_str!("testdata/jwks.json");
/// [`JWKS`] plus `rsa2` (no alg: any RSA algorithm).
pub const JWKS_ROTATED: &str = include_str!("testdata/jwks_rotated.json");
/// Only `rsa2`.
pub const JWKS_RSA2: &str = include_str!("testdata/jwks_rsa2.json");

/// The issuer the unit tests use.
pub const ISS: &str = "https://idp.example.com";
/// The fixed "now" of the unit tests (Unix seconds).
pub const NOW: u64 = 1_700_000_000;

/// [`NOW`] as a `SystemTime`.
pub fn now() -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_secs(NOW)
}

/// The key set of [`JWKS`].
pub fn keys() -> super::KeySet {
    super::KeySet::parse(JWKS.as_bytes()).expect("the committed test JWKS parses")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestKey {
    Rsa1,
    Rsa2,
    Ec1,
}

fn private_pem(key: TestKey) -> &'static [u8] {
    match key {
        TestKey::Rsa1 => include_bytes!("testdata/rsa1.pem"),
        TestKey::Rsa2 => include_bytes!("testdata/rsa2.pem"),
        TestKey::Ec1 => include_bytes!("testdata/ec256.pem"),
    }
}

/// The public key in PEM (SubjectPublicKeyInfo), e.g. as a forged HMAC secret.
pub fn public_pem(key: TestKey) -> &'static [u8] {
    match key {
        TestKey::Rsa1 => include_bytes!("testdata/rsa1.pub.pem"),
        TestKey::Rsa2 => include_bytes!("testdata/rsa2.pub.pem"),
        TestKey::Ec1 => include_bytes!("testdata/ec256.pub.pem"),
    }
}

fn encoding_key(key: TestKey) -> EncodingKey {
    let pem = private_pem(key);
    match key {
        TestKey::Rsa1 | TestKey::Rsa2 => EncodingKey::from_rsa_pem(pem),
        TestKey::Ec1 => EncodingKey::from_ec_pem(pem),
    }
    .expect("committed test key parses")
}

fn header(alg: &str, kid: Option<&str>) -> Header {
    let alg: Algorithm = alg.parse().expect("known algorithm");
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    h
}

/// A token signed with `alg` by `key`, header `kid` as given.
pub fn sign(alg: &str, kid: Option<&str>, key: TestKey, claims: &Value) -> String {
    sign_value(alg, kid, key, claims)
}

/// Like [`sign`], for payloads that need not be objects.
pub fn sign_value(alg: &str, kid: Option<&str>, key: TestKey, payload: &Value) -> String {
    jsonwebtoken::encode(&header(alg, kid), payload, &encoding_key(key)).expect("signing works")
}

/// An HMAC-signed token with `secret` as key.
pub fn sign_hmac(alg: &str, kid: Option<&str>, secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(&header(alg, kid), claims, &EncodingKey::from_secret(secret))
        .expect("signing works")
}

/// A token with an arbitrary header and the signature part of `signature_from`.
pub fn raw(header: &Value, claims: &Value, signature_from: &str) -> String {
    let sig = signature_from.rsplit('.').next().unwrap_or("");
    format!(
        "{}.{}.{sig}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// An unsigned token (`alg: none` style): header, payload and an empty signature replaced by
/// a dummy so that only the algorithm can be the reason for rejection.
pub fn unsigned(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}.AAAA",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}
