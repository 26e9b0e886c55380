//! App tokens: the passwords WebDAV clients that cannot do OpenID Connect (rclone, davfs2,
//! scripts) use instead, as the oCIS `auth-app` service hands them out — the record kept in the
//! shared store and the JSON of the `/auth-app/tokens` API, without I/O.
//!
//! A token is 16 random letters and digits (about 95 bits), shown once when it is created. The
//! store keeps per user name one record (`apptokens:<lowercased user name>`) holding, per
//! token, its Argon2id hash (the PHC string, which the list shows in place of the token, as
//! oCIS shows its bcrypt hashes), a short SHA-256 prefix that picks the one hash to verify
//! without trying them all, the label, and the creation and expiry times. Every node reads the
//! same record through its near-cache, so a new or deleted token takes effect on all of them
//! as soon as the store's change feed delivers the record.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::events::time::format_rfc3339_nano;

/// Characters in a token, as oCIS's generator (`3s2K7816M4vuSpd5`).
pub const TOKEN_LEN: usize = 16;
/// The label of a token created without one, as oCIS.
pub const DEFAULT_LABEL: &str = "Generated via API";
/// Tokens one user may hold; creating more is refused.
pub const MAX_TOKENS_PER_USER: usize = 100;

const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// A fresh token.
pub fn generate() -> String {
    let mut rng = rand::thread_rng();
    (0..TOKEN_LEN)
        .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
        .collect()
}

/// The first 16 hex digits of the token's SHA-256: enough to pick its record, far too little to
/// learn anything about a 95-bit random token.
pub fn lookup_id(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Where a user's tokens are kept in the state store.
pub fn store_key(username: &str) -> String {
    format!("apptokens:{}", username.to_lowercase())
}

/// One token as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredToken {
    pub lookup: String,
    /// Argon2id PHC string of the token.
    pub hash: String,
    pub label: String,
    /// Unix milliseconds.
    pub created_ms: u64,
    pub expires_ms: u64,
}

/// A user's tokens as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserTokens {
    pub user_id: String,
    pub tokens: Vec<StoredToken>,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

impl UserTokens {
    /// Drops expired tokens.
    pub fn prune(&mut self, now: SystemTime) {
        let now = unix_ms(now);
        self.tokens.retain(|t| t.expires_ms > now);
    }

    /// The unexpired token whose lookup id is `lookup`, if any (its hash still to be verified).
    pub fn candidate(&self, lookup: &str, now: SystemTime) -> Option<&StoredToken> {
        let now = unix_ms(now);
        self.tokens
            .iter()
            .find(|t| t.lookup == lookup && t.expires_ms > now)
    }

    /// Removes the token given as the plain token (by its lookup id) or as its stored hash (what
    /// the list shows); true if one was removed.
    pub fn remove(&mut self, token_or_hash: &str) -> bool {
        let lookup = lookup_id(token_or_hash);
        let before = self.tokens.len();
        self.tokens
            .retain(|t| t.hash != token_or_hash && t.lookup != lookup);
        self.tokens.len() != before
    }
}

impl StoredToken {
    pub fn new(token: &str, hash: String, label: &str, now: SystemTime, expiry: Duration) -> Self {
        StoredToken {
            lookup: lookup_id(token),
            hash,
            label: label.to_owned(),
            // oCIS's creation date has whole seconds.
            created_ms: unix_ms(now) / 1000 * 1000,
            expires_ms: unix_ms(now + expiry),
        }
    }

    /// The token as the API lists it: the hash in place of the token.
    pub fn listed(&self) -> ApiToken {
        ApiToken {
            token: self.hash.clone(),
            expiration_date: format_rfc3339_nano(from_ms(self.expires_ms)),
            created_date: format_rfc3339_nano(from_ms(self.created_ms)),
            label: self.label.clone(),
        }
    }
}

/// A token in the JSON of the `/auth-app/tokens` API (oCIS's `AuthAppToken`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    pub token: String,
    pub expiration_date: String,
    pub created_date: String,
    pub label: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_alphanumerics() {
        let a = generate();
        assert_eq!(a.len(), TOKEN_LEN);
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(a, generate());
    }

    #[test]
    fn records_find_remove_and_expire_tokens() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut user = UserTokens {
            user_id: "u1".into(),
            tokens: vec![
                StoredToken::new(
                    "tokA",
                    "$argon2id$a".into(),
                    "a",
                    now,
                    Duration::from_secs(60),
                ),
                StoredToken::new(
                    "tokB",
                    "$argon2id$b".into(),
                    "b",
                    now,
                    Duration::from_secs(1),
                ),
            ],
        };
        assert_eq!(user.candidate(&lookup_id("tokA"), now).unwrap().label, "a");
        assert!(user.candidate(&lookup_id("nope"), now).is_none());
        // tokB expires after a second.
        let later = now + Duration::from_secs(2);
        assert!(user.candidate(&lookup_id("tokB"), later).is_none());
        user.prune(later);
        assert_eq!(user.tokens.len(), 1);
        // Deleted by its hash (what the list shows) or by the token itself.
        assert!(!user.remove("$argon2id$b"));
        assert!(user.remove("$argon2id$a"));
        assert!(user.tokens.is_empty());
        user.tokens.push(StoredToken::new(
            "tokC",
            "h".into(),
            "c",
            now,
            Duration::from_secs(60),
        ));
        assert!(user.remove("tokC"));
    }

    #[test]
    fn the_api_shows_ocis_fields() {
        let now = UNIX_EPOCH + Duration::from_millis(1_722_994_962_796);
        let t = StoredToken::new(
            "x",
            "$argon2id$h".into(),
            DEFAULT_LABEL,
            now,
            Duration::from_secs(86_400),
        );
        let json = serde_json::to_value(t.listed()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "token": "$argon2id$h",
                "expiration_date": "2024-08-08T01:42:42.796Z",
                "created_date": "2024-08-07T01:42:42Z",
                "label": "Generated via API",
            })
        );
        assert_eq!(store_key("Einstein"), "apptokens:einstein");
        assert_eq!(lookup_id("x").len(), 16);
    }
}
