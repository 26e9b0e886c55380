//! OpenID Connect bearer-token logic, without any I/O (spec §4.1).
//!
//! Everything that decides whether a bearer token is acceptable lives here so that it can be
//! tested table-driven with real keys and a fixed clock: the discovery document and its issuer
//! check ([`discovery`]), the IdP key set ([`jwks`]), access-token verification ([`verify`]),
//! the userinfo answer and how it is merged with the token's claims ([`userinfo`]), and the
//! msgpack form in which claims are shared with oCIS nodes through the user-info cache
//! ([`cache`]), back-channel logout tokens ([`logout`]) and the session index and logout markers
//! kept next to the cached claims ([`sessions`]). The node fetches the documents and calls these functions; it makes no security
//! decision of its own.

pub mod cache;
pub mod discovery;
pub mod jwks;
pub mod logout;
pub mod sessions;
#[doc(hidden)]
pub mod testing;
pub mod userinfo;
pub mod verify;

pub use cache::{CacheCodecError, Cached, decode_claims, encode_claims, read_cached};
pub use discovery::{Discovery, DiscoveryError, discovery_url};
pub use jwks::{JwksError, Key, KeySet};
pub use logout::{
    Logout, LogoutRequestError, LogoutTokenError, logout_token_from_form, verify_logout_token,
};
pub use userinfo::{UserinfoError, merge_claims, parse_userinfo};
pub use verify::{MAX_TOKEN_LEN, VerifyError, VerifyPolicy, verify};

/// A claim set as it comes out of a token or a userinfo answer.
pub type Claims = serde_json::Map<String, serde_json::Value>;

/// Seconds since the Unix epoch of `t` (negative before 1970), with the fraction.
fn unix_secs_f64(t: std::time::SystemTime) -> f64 {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// Whole seconds since the Unix epoch of `t`, truncated like Go's `time.Unix()` for times after 1970.
fn unix_secs(t: std::time::SystemTime) -> i64 {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}
