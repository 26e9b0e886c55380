//! Signed-URL parsing and canonicalisation: `METHOD \n HOST \n PATH \n QUERY`, any bytes.
//!
//! The 10 000-round key derivation would dominate every execution, so it only runs for requests
//! that pass the cheap checks and carry a signature of the right length; the canonicalisation
//! property below is checked without it.
#![no_main]

use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gatehouse_shared::auth::signed_url::{
    SignedUrlRequest, applies, canonical_urls, check, verify_signature,
};
use libfuzzer_sys::fuzz_target;

/// The signing key and clock of the oCIS test vector the seed corpus is signed with.
const KEY: &[u8] = b"1234567890";
const NOW_SECS: u64 = 1_557_831_720;
const OTHER_SIGNATURE: &str = "0000000000000000000000000000000000000000000000000000000000000000";

static METHODS: LazyLock<Vec<String>> = LazyLock::new(|| {
    ["get", "PUT", "PROPFIND", "HEAD"]
        .iter()
        .map(|m| (*m).to_owned())
        .collect()
});

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(4, '\n');
    let method = parts.next().unwrap_or_default();
    let host = parts.next().unwrap_or_default();
    let path = parts.next().unwrap_or_default();
    let query = parts.next().unwrap_or_default();
    let req = SignedUrlRequest {
        method,
        host,
        path,
        query,
    };
    let now = UNIX_EPOCH + Duration::from_secs(NOW_SECS);
    let applies = applies(query);
    let max = Some(Duration::from_secs(7 * 24 * 3600));
    let Ok(params) = check(&req, &METHODS, max, now) else {
        return;
    };
    assert!(applies, "check accepted {query:?} but applies() said no");
    // `OC-Expires=0` passes while `OC-Date` lies ahead (within the skew), as in oCIS.
    assert!(params.expires_at > now);
    assert_eq!(
        Some(params.expires_at),
        params.signed_at.checked_add(params.lifetime)
    );
    assert!(params.signed_at <= now + Duration::from_secs(300));
    assert!(params.expires_at > SystemTime::UNIX_EPOCH);

    let urls = canonical_urls(&req, &params);
    let prefix = format!("https://{host}");
    assert!(!urls.is_empty() && urls.len() <= 2, "{urls:?}");
    assert!(urls[0].starts_with(&prefix), "{urls:?}");
    // The variant replaces the first `$` of the whole URL, as oCIS does, even one in the host.
    if let [plain, variant] = urls.as_slice() {
        assert_eq!(*variant, plain.replacen('$', "%24", 1));
    }

    // What is signed cannot depend on the signature: replacing it (as the client does after
    // signing) must leave the canonical URLs unchanged.
    let resigned: Vec<&str> = query
        .split('&')
        .filter(|pair| pair.split_once('=').map_or(*pair, |(k, _)| k) != "OC-Signature")
        .collect();
    let resigned = format!("OC-Signature={OTHER_SIGNATURE}&{}", resigned.join("&"));
    let req2 = SignedUrlRequest {
        query: &resigned,
        ..req
    };
    if let Ok(params2) = check(&req2, &METHODS, max, now)
        && params2.signature == OTHER_SIGNATURE
    {
        assert_eq!(canonical_urls(&req2, &params2), urls, "query {query:?}");
    }

    if params.signature.len() == 64 {
        let _ = verify_signature(&req, &params, KEY);
    }
});
