//! The key under which the claims of a bearer token are cached.
//!
//! oCIS keys its user-info cache by SHAKE-256 of the raw token (64 bytes of output), encoded as
//! URL-safe base64 *with* padding, i.e. 88 characters (spec §4.1, §6.6). Using the same derivation
//! lets Go and Rust nodes share one cache bucket, and keeps raw tokens out of the store.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE;
use sha3::Shake256;
use sha3::digest::{ExtendableOutput, Update, XofReader};

/// Number of SHAKE-256 output bytes oCIS uses for the cache key.
const DIGEST_LEN: usize = 64;

/// Length of the encoded key: 64 bytes in padded base64.
pub const TOKEN_CACHE_KEY_LEN: usize = 88;

/// The user-info cache key of `token`: SHAKE-256 → 64 bytes → URL-safe base64 with padding.
pub fn token_cache_key(token: &str) -> String {
    let mut hasher = Shake256::default();
    hasher.update(token.as_bytes());
    let mut digest = [0u8; DIGEST_LEN];
    hasher.finalize_xof().read(&mut digest);
    URL_SAFE.encode(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values computed independently with Python:
    // base64.urlsafe_b64encode(hashlib.shake_256(data).digest(64))
    const VECTORS: &[(&str, &str)] = &[
        (
            "",
            "RrndKwuojRMjOz_rdD7rJD_NUupiuBuCtQwnZG7Vdi_XXcTd2MDyAMsFAZ1ntZL2_IIcSUeatIZAKS6ss7fEvg==",
        ),
        (
            "abc",
            "SDNmYBNgqHccaGMIDMQRTY20RTD48eHuT5TqN-eLVznVoVvvGGpThsdXRMBSfh-qn4cm5GKhKk_rBr2IAedR5A==",
        ),
        (
            "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIiwidHlwIjoiSldUIn0.eyJpc3MiOiJodHRwczovL2lkcC5leGFtcGxlLmNvbSIsInN1YiI6ImVpbnN0ZWluIiwiYXVkIjoid2ViIiwiZXhwIjoxNzAwMDAwMDAwfQ.c2lnbmF0dXJl",
            "-92m4OZtLkfugUHj0Ri3xJFhKieChc3BB1OlZFRTc0R9RSHfJLNUSGWsOUCt8EnmMCc7NdYWgvTeDnk4_f5N5Q==",
        ),
    ];

    #[test]
    fn matches_independently_computed_vectors() {
        for (token, expected) in VECTORS {
            assert_eq!(token_cache_key(token), *expected, "token {token:?}");
        }
    }

    #[test]
    fn key_is_88_url_safe_chars_with_padding() {
        for (token, _) in VECTORS {
            let key = token_cache_key(token);
            assert_eq!(key.len(), TOKEN_CACHE_KEY_LEN);
            assert!(key.ends_with("=="));
            assert!(!key.contains('+') && !key.contains('/'));
        }
    }

    #[test]
    fn different_tokens_give_different_keys() {
        assert_ne!(token_cache_key("a"), token_cache_key("b"));
    }
}
