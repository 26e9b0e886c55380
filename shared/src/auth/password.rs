//! Salted slow password hashes for the builtin account backend, and the pieces of HTTP Basic
//! authentication that are pure functions.
//!
//! The builtin backend exists for development and small installations, but its records sit in a
//! state store that is shared by the whole cluster (and, on NATS, readable by anyone holding the
//! bucket's credentials): a leaked record must not give away a password. Hashes are therefore
//! Argon2id in the standard PHC string format (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`),
//! with a fresh 16-byte random salt per hash and the parameters OWASP recommends for Argon2id
//! (19 MiB of memory, 2 passes, 1 lane). Verifying reads the parameters from the stored string,
//! so hashes written with other parameters keep working when the defaults change.
//!
//! Verification is deliberately expensive (tens of milliseconds of one core): callers on an async
//! runtime run it on the blocking pool and bound how many run at once.
//!
//! [`BasicCredentials`] and [`credential_digest`] live here too because decoding base64 and
//! hashing with SHA-256 are pure and this crate already depends on both.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

/// Memory cost in KiB (OWASP: 19 MiB for Argon2id with t=2, p=1).
pub const MEMORY_KIB: u32 = 19 * 1024;
/// Number of passes.
pub const ITERATIONS: u32 = 2;
/// Degree of parallelism (lanes).
pub const PARALLELISM: u32 = 1;
/// Random salt bytes per hash (the PHC recommendation).
const SALT_LEN: usize = 16;

/// Stored hashes asking for more than this are refused instead of computed: a damaged or hostile
/// record must not make one login cost gigabytes of memory or minutes of CPU.
const MAX_MEMORY_KIB: u32 = 256 * 1024;
const MAX_ITERATIONS: u32 = 16;
const MAX_PARALLELISM: u32 = 8;

/// Why a password could not be hashed. Hashing fails only on inputs no caller should produce
/// (a password longer than 4 GiB), so it is never worth retrying.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

fn hasher() -> Result<Argon2<'static>, PasswordError> {
    let params = Params::new(MEMORY_KIB, ITERATIONS, PARALLELISM, None)
        .map_err(|e| PasswordError::Hash(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// An Argon2id PHC string for `password` with a fresh random salt.
pub fn hash(password: &str) -> Result<String, PasswordError> {
    let salt_bytes: [u8; SALT_LEN] = rand::random();
    let salt =
        SaltString::encode_b64(&salt_bytes).map_err(|e| PasswordError::Hash(e.to_string()))?;
    hasher()?
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

/// Whether `password` matches the Argon2 PHC string `phc`. A malformed string, another
/// algorithm or parameters beyond the limits above give `false`.
pub fn verify(password: &str, phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    if Algorithm::try_from(parsed.algorithm).is_err() {
        return false;
    }
    match Params::try_from(&parsed) {
        Ok(p)
            if p.m_cost() <= MAX_MEMORY_KIB
                && p.t_cost() <= MAX_ITERATIONS
                && p.p_cost() <= MAX_PARALLELISM => {}
        _ => return false,
    }
    Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

/// The user name and password of an `Authorization: Basic` header value (RFC 7617).
#[derive(Clone, PartialEq, Eq)]
pub struct BasicCredentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for BasicCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl BasicCredentials {
    /// Parses `Basic <base64 of user:password>`. The scheme compares without case (RFC 7617
    /// §2, RFC 9110 §11.1); spaces after it are skipped. `None` for another scheme, bad base64,
    /// no colon, or text that is not UTF-8 — the header is then not Basic credentials at all,
    /// as for Go's `Request.BasicAuth`. The password may contain colons; the user name may not.
    pub fn parse(value: &[u8]) -> Option<Self> {
        let (username, password) = decode_basic(value)?;
        Some(Self {
            username: String::from_utf8(username).ok()?,
            password: String::from_utf8(password).ok()?,
        })
    }
}

/// `Basic <base64 of user:password>` → the raw user and password bytes, split at the first `:`;
/// `None` for another scheme, bad base64 or no colon (as Go's `Request.BasicAuth` reads it).
/// For callers that treat a password that is not UTF-8 differently from no password.
pub fn decode_basic(value: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let (scheme, rest) = value.split_at_checked(5)?;
    if !scheme.eq_ignore_ascii_case(b"basic") || rest.first() != Some(&b' ') {
        return None;
    }
    let mut decoded = STANDARD.decode(rest.trim_ascii()).ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let password = decoded.split_off(colon + 1);
    decoded.truncate(colon);
    Some((decoded, password))
}

impl BasicCredentials {
    /// The `Authorization` header value for these credentials (`Basic <base64>`), for clients
    /// and tests.
    pub fn header_value(&self) -> String {
        format!(
            "Basic {}",
            STANDARD.encode(format!("{}:{}", self.username, self.password))
        )
    }
}

/// SHA-256 of `salt`, the user name, a NUL and the password: the key under which a node may
/// remember a successful check without keeping the password. With a per-process random `salt`
/// the digests are useless outside that process.
pub fn credential_digest(salt: &[u8], username: &str, password: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(username.as_bytes());
    h.update([0u8]);
    h.update(password.as_bytes());
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_wrong_password() {
        let phc = hash("relativity").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(verify("relativity", &phc));
        assert!(!verify("Relativity", &phc));
        assert!(!verify("", &phc));
    }

    #[test]
    fn two_hashes_of_one_password_differ() {
        let a = hash("gemini").unwrap();
        let b = hash("gemini").unwrap();
        assert_ne!(a, b);
        assert!(verify("gemini", &a) && verify("gemini", &b));
    }

    #[test]
    fn empty_and_unicode_passwords() {
        let phc = hash("").unwrap();
        assert!(verify("", &phc));
        assert!(!verify(" ", &phc));
        let phc = hash("Skłodowska:ü").unwrap();
        assert!(verify("Skłodowska:ü", &phc));
    }

    #[test]
    fn malformed_or_foreign_hashes_are_false() {
        let good = hash("vista").unwrap();
        let truncated = &good[..good.len() - 10];
        let cases = [
            "",
            "vista",
            "$argon2id$",
            "$argon2id$v=19$m=19456,t=2,p=1$",
            truncated,
            // Another PHC algorithm.
            "$pbkdf2-sha256$i=1000$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
            // Parameters beyond the limits are not computed.
            "$argon2id$v=19$m=4194304,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA",
            "$argon2id$v=19$m=19456,t=1000,p=1$c2FsdHNhbHRzYWx0c2FsdA$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA",
            "{ARGON2}$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$aGFzaA",
        ];
        for case in cases {
            assert!(!verify("vista", case), "{case:?}");
        }
    }

    #[test]
    fn hashes_with_other_parameters_still_verify() {
        let params = Params::new(8 * 1024, 1, 2, None).unwrap();
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let phc = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(b"superfluidity", &salt)
            .unwrap()
            .to_string();
        assert!(phc.contains("m=8192,t=1,p=2"), "{phc}");
        assert!(verify("superfluidity", &phc));
        assert!(!verify("superfluid", &phc));
    }

    fn header(user_pass: &str) -> Vec<u8> {
        format!("Basic {}", STANDARD.encode(user_pass)).into_bytes()
    }

    #[test]
    fn basic_credentials_parse() {
        let c = BasicCredentials::parse(&header("einstein:rel:ativity")).unwrap();
        assert_eq!(c.username, "einstein");
        assert_eq!(c.password, "rel:ativity");
        let c = BasicCredentials::parse(&header(":")).unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("", ""));

        let token = STANDARD.encode("marie:radioactivity");
        for scheme in ["basic", "BASIC", "bAsIc"] {
            let c = BasicCredentials::parse(format!("{scheme} {token}").as_bytes()).unwrap();
            assert_eq!(c.username, "marie");
        }
        assert!(BasicCredentials::parse(format!("Basic    {token}  ").as_bytes()).is_some());

        let c = BasicCredentials {
            username: "katherine".into(),
            password: "ge:mini".into(),
        };
        assert_eq!(
            BasicCredentials::parse(c.header_value().as_bytes()),
            Some(c)
        );
    }

    #[test]
    fn basic_credentials_reject_what_is_not_basic() {
        let token = STANDARD.encode("marie:radioactivity");
        let unpadded = token.trim_end_matches('=').to_owned();
        let not_utf8 = format!("Basic {}", STANDARD.encode(b"m\xffrie:x"));
        let cases: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"Basic".to_vec(),
            b"Basic ".to_vec(),
            format!("Basic{token}").into_bytes(),
            format!("Bearer {token}").into_bytes(),
            format!("Basicx {token}").into_bytes(),
            b"Basic !!!notbase64".to_vec(),
            header("no-colon"),
            not_utf8.into_bytes(),
            format!("Basic {unpadded}").into_bytes(),
            format!("Basic {token} extra").into_bytes(),
        ];
        for case in cases {
            assert_eq!(
                BasicCredentials::parse(&case),
                None,
                "{:?}",
                String::from_utf8_lossy(&case)
            );
        }
    }

    #[test]
    fn debug_hides_the_password() {
        let c = BasicCredentials::parse(&header("moss:vista")).unwrap();
        let shown = format!("{c:?}");
        assert!(
            shown.contains("moss") && !shown.contains("vista"),
            "{shown}"
        );
    }

    #[test]
    fn credential_digest_depends_on_every_input() {
        let d = credential_digest(b"salt", "moss", "vista");
        assert_eq!(d, credential_digest(b"salt", "moss", "vista"));
        assert_ne!(d, credential_digest(b"other", "moss", "vista"));
        assert_ne!(d, credential_digest(b"salt", "mos", "svista"));
        assert_ne!(d, credential_digest(b"salt", "moss", "vistA"));
    }
}
