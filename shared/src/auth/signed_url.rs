//! Pre-signed URLs (`OC-Signature`): the oCIS scheme that lets a client hand out a link which
//! authenticates as its owner for a limited time, without any bearer token.
//!
//! The web and desktop clients fetch a per-user signing key from the ocs service, sign
//! `https://<host><path>?<other params sorted>&OC-Credential=…&OC-Date=…&OC-Expires=…&OC-Verb=…`
//! with PBKDF2-HMAC-SHA512 and append `OC-Algo` and `OC-Signature`. The gateway must recompute
//! that signature byte for byte, so the canonical form below follows Go's `net/url` encoding
//! exactly (form encoding of the query, Go's `EscapedPath` for the path).
//!
//! The work is split so that the cheap part runs first and without I/O: [`check`] rejects
//! malformed, mismatched and expired URLs before the caller resolves the user or reads the key
//! from the store (oCIS does those backend calls first); [`verify_signature`] then costs one or two
//! 10 000-round key derivations and belongs off the async executor.
//!
//! Deliberate differences from oCIS:
//! * an empty signing key rejects every signature (oCIS accepts any signature then);
//! * the signature comparison is constant-time;
//! * an optional maximum lifetime for `OC-Expires` (oCIS has none);
//! * an `OC-Date` more than [`MAX_FUTURE_SKEW`] in the future is rejected (oCIS accepts it);
//! * `OC-Expires` must be a non-negative decimal number of seconds; oCIS appends `s` and parses a
//!   Go duration, so `-5`, `1m` (= 1 ms) or `1h1m` were accepted there;
//! * `OC-Date` is parsed as strict RFC 3339 (uppercase `T`/`Z`, two-digit fields); the error text
//!   for an unparseable date is ours, not Go's;
//! * the mismatch error does not carry the expected signature (oCIS logs a valid signature);
//! * the signing parameters must be valid UTF-8 after decoding.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::StatusCode;

use super::query::{Query, unescape};
use sha2::{Digest, Sha256, Sha512};

pub const OC_SIGNATURE: &str = "OC-Signature";
pub const OC_CREDENTIAL: &str = "OC-Credential";
pub const OC_DATE: &str = "OC-Date";
pub const OC_EXPIRES: &str = "OC-Expires";
pub const OC_VERB: &str = "OC-Verb";
pub const OC_ALGO: &str = "OC-Algo";

/// How far `OC-Date` may lie ahead of the gateway's clock (clients sign with their own clock).
pub const MAX_FUTURE_SKEW: Duration = Duration::from_secs(5 * 60);

const KDF_ITERATIONS: u32 = 10_000;
const KDF_LENGTH: usize = 32;

const SIGNING_PARAMS: [&str; 6] = [
    OC_ALGO,
    OC_CREDENTIAL,
    OC_DATE,
    OC_EXPIRES,
    OC_SIGNATURE,
    OC_VERB,
];

/// The parts of an incoming request that a signature covers.
#[derive(Debug, Clone, Copy)]
pub struct SignedUrlRequest<'a> {
    pub method: &'a str,
    /// The `Host` header (HTTP/1) or `:authority` (HTTP/2).
    pub host: &'a str,
    /// The path as received, still percent-encoded.
    pub path: &'a str,
    /// The raw query string, without `?`.
    pub query: &'a str,
}

/// The signing parameters of a request that passed [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedUrlParams {
    /// `OC-Credential`: the user name the caller resolves (the key is stored under the user id).
    pub credential: String,
    /// `OC-Date` as sent; the canonical URL uses this exact text.
    pub date: String,
    /// `OC-Expires` as sent.
    pub expires: String,
    pub verb: String,
    /// `OC-Algo`, informational only: the algorithm is fixed.
    pub algo: Option<String>,
    pub signature: String,
    pub signed_at: SystemTime,
    pub lifetime: Duration,
    pub expires_at: SystemTime,
}

/// Why a signed URL was refused. Every variant is the client's fault (401) and retrying the same
/// URL cannot succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignedUrlError {
    #[error("required {0} parameter not found")]
    MissingParameter(&'static str),
    #[error("{0} parameter is not valid UTF-8")]
    InvalidEncoding(&'static str),
    #[error("required OC-Verb parameter did not match request method")]
    VerbMismatch,
    #[error("request method is not listed in PreSignedURLConfig AllowedHTTPMethods")]
    MethodNotAllowed,
    #[error("parsing time {0:?}: not an RFC 3339 date-time")]
    InvalidDate(String),
    /// Same text as Go's `time.ParseDuration(expires + "s")`.
    #[error("time: invalid duration \"{0}s\"")]
    InvalidExpires(String),
    #[error("URL is expired")]
    Expired,
    #[error("URL lifetime {lifetime:?} exceeds the maximum of {max:?}")]
    LifetimeTooLong { lifetime: Duration, max: Duration },
    #[error("OC-Date lies in the future")]
    DateInFuture,
    #[error("no signing key for this user")]
    EmptyKey,
    #[error("signature mismatch")]
    SignatureMismatch,
}

impl SignedUrlError {
    pub fn status(&self) -> StatusCode {
        StatusCode::UNAUTHORIZED
    }

    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// Whether the signed-URL authenticator is responsible for a request: `OC-Signature` is present
/// and non-empty (whether the feature is enabled is the caller's business).
pub fn applies(query: &str) -> bool {
    Query::first_raw(query, OC_SIGNATURE).is_some_and(|v| !v.is_empty())
}

/// The checks that need neither the user nor the key, in oCIS's order plus ours at the end.
pub fn check(
    req: &SignedUrlRequest,
    allowed_methods: &[String],
    max_lifetime: Option<Duration>,
    now: SystemTime,
) -> Result<SignedUrlParams, SignedUrlError> {
    let query = Query::parse(req.query);
    let required = |name: &'static str| -> Result<String, SignedUrlError> {
        match query.first(name) {
            Some(v) if !v.is_empty() => {
                String::from_utf8(v.to_vec()).map_err(|_| SignedUrlError::InvalidEncoding(name))
            }
            _ => Err(SignedUrlError::MissingParameter(name)),
        }
    };
    let signature = required(OC_SIGNATURE)?;
    let credential = required(OC_CREDENTIAL)?;
    let date = required(OC_DATE)?;
    let expires = required(OC_EXPIRES)?;
    let verb = required(OC_VERB)?;
    let algo = query
        .first(OC_ALGO)
        .map(|v| String::from_utf8_lossy(v).into_owned());

    if !verb.eq_ignore_ascii_case(req.method) {
        return Err(SignedUrlError::VerbMismatch);
    }
    if !allowed_methods
        .iter()
        .any(|m| m.eq_ignore_ascii_case(req.method))
    {
        return Err(SignedUrlError::MethodNotAllowed);
    }
    let signed_at =
        parse_rfc3339(&date).ok_or_else(|| SignedUrlError::InvalidDate(date.clone()))?;
    let lifetime =
        parse_seconds(&expires).ok_or_else(|| SignedUrlError::InvalidExpires(expires.clone()))?;
    let expires_at = signed_at
        .checked_add(lifetime)
        .ok_or_else(|| SignedUrlError::InvalidExpires(expires.clone()))?;
    if now >= expires_at {
        return Err(SignedUrlError::Expired);
    }
    if let Some(max) = max_lifetime
        && lifetime > max
    {
        return Err(SignedUrlError::LifetimeTooLong { lifetime, max });
    }
    if signed_at
        .duration_since(now)
        .is_ok_and(|ahead| ahead > MAX_FUTURE_SKEW)
    {
        return Err(SignedUrlError::DateInFuture);
    }
    Ok(SignedUrlParams {
        credential,
        date,
        expires,
        verb,
        algo,
        signature,
        signed_at,
        lifetime,
        expires_at,
    })
}

/// The URLs a valid signature may have been computed over: the canonical URL and, when it
/// contains a `$`, the same with its first `$` as `%24` (oCIS's workaround for reverse proxies
/// that re-encode `$`, ocis issue 10180).
pub fn canonical_urls(req: &SignedUrlRequest, params: &SignedUrlParams) -> Vec<String> {
    let query = Query::parse(req.query);
    let mut remaining: BTreeMap<&[u8], Vec<&[u8]>> = BTreeMap::new();
    for (k, v) in &query.pairs {
        if !SIGNING_PARAMS.iter().any(|p| p.as_bytes() == k.as_slice()) {
            remaining
                .entry(k.as_slice())
                .or_default()
                .push(v.as_slice());
        }
    }
    let mut encoded = String::new();
    for (k, values) in &remaining {
        for v in values {
            push_pair(&mut encoded, k, v);
        }
    }
    for (name, value) in [
        (OC_CREDENTIAL, &params.credential),
        (OC_DATE, &params.date),
        (OC_EXPIRES, &params.expires),
        (OC_VERB, &params.verb),
    ] {
        push_pair(&mut encoded, name.as_bytes(), value.as_bytes());
    }

    let path = escaped_path(req.path);
    let slash = if !path.is_empty() && !path.starts_with('/') {
        "/"
    } else {
        ""
    };
    let url = format!("https://{}{slash}{path}?{encoded}", req.host);
    let mut urls = Vec::with_capacity(2);
    if url.contains('$') {
        let variant = url.replacen('$', "%24", 1);
        urls.push(url);
        urls.push(variant);
    } else {
        urls.push(url);
    }
    urls
}

/// PBKDF2-HMAC-SHA512, 10 000 rounds, 32 bytes, lowercase hex. As in oCIS the URL is the
/// password and the key (its hex text as stored, not decoded) is the salt.
pub fn derive_signature(url: &str, key: &[u8]) -> String {
    let mut out = [0u8; KDF_LENGTH];
    pbkdf2::pbkdf2_hmac::<Sha512>(url.as_bytes(), key, KDF_ITERATIONS, &mut out);
    data_encoding::HEXLOWER.encode(&out)
}

/// Recomputes the signature over every canonical variant and compares in constant time. CPU-bound
/// (two key derivations when the URL contains `$`): call it off the async executor.
pub fn verify_signature(
    req: &SignedUrlRequest,
    params: &SignedUrlParams,
    key: &[u8],
) -> Result<(), SignedUrlError> {
    if key.is_empty() {
        return Err(SignedUrlError::EmptyKey);
    }
    let mut matched = false;
    for url in canonical_urls(req, params) {
        matched |= constant_time_eq(
            derive_signature(&url, key).as_bytes(),
            params.signature.as_bytes(),
        );
    }
    if matched {
        Ok(())
    } else {
        Err(SignedUrlError::SignatureMismatch)
    }
}

/// A digest naming one verification: the request's host, path and query as received (the
/// canonical URL is a function of these, so nothing needs to be re-encoded on a cache hit), the
/// signature and the key it was checked with. A node that remembers URLs it verified keys them by
/// this, so a changed or deleted signing key cannot keep an old URL valid and nothing secret is
/// kept in the cache.
pub fn verification_digest(
    req: &SignedUrlRequest,
    params: &SignedUrlParams,
    key: &[u8],
) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in [
        req.host.as_bytes(),
        req.path.as_bytes(),
        req.query.as_bytes(),
        params.signature.as_bytes(),
        key,
    ] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hasher.finalize().into()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

const UPPER_HEX: &[u8; 16] = b"0123456789ABCDEF";

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~')
}

/// Go's `url.QueryEscape`.
fn push_query_escaped(out: &mut String, bytes: &[u8]) {
    for &b in bytes {
        if is_unreserved(b) {
            out.push(char::from(b));
        } else if b == b' ' {
            out.push('+');
        } else {
            push_percent(out, b);
        }
    }
}

fn push_percent(out: &mut String, b: u8) {
    out.push('%');
    out.push(char::from(UPPER_HEX[usize::from(b >> 4)]));
    out.push(char::from(UPPER_HEX[usize::from(b & 15)]));
}

fn push_pair(out: &mut String, key: &[u8], value: &[u8]) {
    if !out.is_empty() {
        out.push('&');
    }
    push_query_escaped(out, key);
    out.push('=');
    push_query_escaped(out, value);
}

/// Go's `URL.EscapedPath`: the path as received when it is a valid encoding, otherwise the
/// decoded path re-escaped.
fn escaped_path(raw: &str) -> String {
    let valid = raw.bytes().all(|b| {
        is_unreserved(b)
            || matches!(
                b,
                b'!' | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
                    | b'['
                    | b']'
                    | b'%'
                    | b'/'
            )
    });
    if valid {
        return raw.to_owned();
    }
    let Some(decoded) = unescape(raw, false) else {
        return raw.to_owned();
    };
    let mut out = String::with_capacity(decoded.len() * 3);
    for b in decoded {
        if is_unreserved(b)
            || matches!(
                b,
                b'$' | b'&' | b'+' | b',' | b'/' | b':' | b';' | b'=' | b'@'
            )
        {
            out.push(char::from(b));
        } else {
            push_percent(&mut out, b);
        }
    }
    out
}

/// Strict RFC 3339 `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`, as Go's `time.RFC3339` layout reads
/// it (uppercase `T` and `Z`, no leap second).
fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<u32> {
        let digits = b.get(range)?;
        digits.iter().try_fold(0u32, |acc, &d| {
            d.is_ascii_digit().then(|| acc * 10 + u32::from(d - b'0'))
        })
    };
    let lit = |i: usize, c: u8| b.get(i) == Some(&c);
    if !(lit(4, b'-') && lit(7, b'-') && lit(10, b'T') && lit(13, b':') && lit(16, b':')) {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut i = 19;
    let mut nanos = 0u32;
    if matches!(b.get(i), Some(b'.' | b',')) {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            if i - start < 9 {
                nanos = nanos * 10 + u32::from(b[i] - b'0');
            }
            i += 1;
        }
        let digits = i - start;
        if digits == 0 {
            return None;
        }
        if digits < 9 {
            nanos *= 10u32.pow(u32::try_from(9 - digits).ok()?);
        }
    }
    let offset: i64 = match b.get(i)? {
        b'Z' if b.len() == i + 1 => 0,
        sign @ (b'+' | b'-') if b.len() == i + 6 && lit(i + 3, b':') => {
            let (h, m) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if h > 23 || m > 59 {
                return None;
            }
            let secs = i64::from(h * 3600 + m * 60);
            if *sign == b'-' { -secs } else { secs }
        }
        _ => return None,
    };
    let days = days_from_civil(i64::from(year), month, day);
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - offset;
    let base = if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))?
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))?
    };
    base.checked_add(Duration::from_nanos(u64::from(nanos)))
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A non-negative decimal number of seconds (`1200`, `1.5`, `+60`), bounded like a Go duration
/// (at most `i64::MAX` nanoseconds).
fn parse_seconds(s: &str) -> Option<Duration> {
    let s = s.strip_prefix('+').unwrap_or(s);
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: u64 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut nanos = 0u64;
    for (i, d) in frac.bytes().take(9).enumerate() {
        nanos += u64::from(d - b'0') * 10u64.pow(8 - u32::try_from(i).ok()?);
    }
    let total = secs.checked_mul(1_000_000_000)?.checked_add(nanos)?;
    if total > i64::MAX as u64 {
        return None;
    }
    Some(Duration::from_nanos(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2020-02-02T12:30:00Z, the `now` of oCIS's expiry test.
    const EXPIRY_NOW: u64 = 1_580_646_600;
    /// 2019-05-14T11:02:00Z, the `now` of oCIS's validate test.
    const VALIDATE_NOW: u64 = 1_557_831_720;
    const KEY: &[u8] = b"1234567890";
    const ALICE: &str =
        "OC-Credential=alice&OC-Date=2019-05-14T11:01:58.135Z&OC-Expires=1200&OC-Verb=GET";
    /// PBKDF2 over `https://cloud.example.net/?` + ALICE (encoded) with KEY, computed with Python's
    /// `hashlib.pbkdf2_hmac('sha512', url, key, 10000, 32)`.
    const ALICE_SIG: &str = "17691a3ce357b7ac1124c7a7177fc41e038b3d85abdd7cd045e18834ee805ef5";

    fn secs(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    fn methods(m: &[&str]) -> Vec<String> {
        m.iter().map(|s| (*s).to_owned()).collect()
    }

    fn req<'a>(method: &'a str, query: &'a str) -> SignedUrlRequest<'a> {
        SignedUrlRequest {
            method,
            host: "cloud.example.net",
            path: "/",
            query,
        }
    }

    /// `check` then `verify_signature`, as the authenticator will run them.
    fn validate(r: &SignedUrlRequest, now: SystemTime, key: &[u8]) -> Result<(), SignedUrlError> {
        let params = check(r, &methods(&["get"]), None, now)?;
        verify_signature(r, &params, key)
    }

    #[test]
    fn applies_only_with_a_non_empty_signature() {
        for (query, expected) in [
            ("", false),
            ("OC-Signature=something", true),
            ("a=1&OC-Signature=something", true),
            ("OC-Signature=", false),
            ("OC-Signature", false),
            ("oc-signature=something", false),
        ] {
            assert_eq!(applies(query), expected, "{query}");
        }
    }

    #[test]
    fn required_parameters_in_order_with_ocis_texts() {
        let all = [
            ("OC-Signature", "sig"),
            ("OC-Credential", "alice"),
            ("OC-Date", "2020-02-02T12:29:00.000Z"),
            ("OC-Expires", "61"),
            ("OC-Verb", "GET"),
        ];
        let build = |skip: &[&str]| {
            all.iter()
                .filter(|(k, _)| !skip.contains(k))
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("&")
        };
        let run = |query: &str| {
            check(
                &req("GET", query),
                &methods(&["GET"]),
                None,
                secs(EXPIRY_NOW),
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
        };
        assert_eq!(run(&build(&[])), Ok(()));
        for (name, _) in all {
            assert_eq!(
                run(&build(&[name])),
                Err(format!("required {name} parameter not found")),
                "{name}"
            );
            let empty = build(&[]).replace(&format!("{name}="), &format!("{name}=&x-{name}="));
            assert_eq!(
                run(&empty),
                Err(format!("required {name} parameter not found")),
                "empty {name}"
            );
        }
        assert_eq!(
            run(""),
            Err("required OC-Signature parameter not found".into())
        );
        assert_eq!(
            run(&build(&["OC-Credential", "OC-Verb"])),
            Err("required OC-Credential parameter not found".into())
        );
        assert_eq!(
            run(&build(&["OC-Verb", "OC-Expires"])),
            Err("required OC-Expires parameter not found".into())
        );
    }

    #[test]
    fn verb_must_match_the_method_case_insensitively() {
        for (method, verb, ok) in [
            ("GET", "GET", true),
            ("GET", "get", true),
            ("POST", "GET", false),
        ] {
            let query = format!(
                "OC-Signature=s&OC-Credential=a&OC-Date=2020-02-02T12:29:00Z&OC-Expires=61&OC-Verb={verb}"
            );
            let got = check(
                &req(method, &query),
                &methods(&["GET", "POST"]),
                None,
                secs(EXPIRY_NOW),
            );
            match got {
                Ok(p) => assert!(ok, "{method} {verb} passed: {p:?}"),
                Err(e) => {
                    assert!(!ok, "{method} {verb}: {e}");
                    assert_eq!(
                        e.to_string(),
                        "required OC-Verb parameter did not match request method"
                    );
                }
            }
        }
    }

    #[test]
    fn method_must_be_in_the_allowed_list() {
        let query =
            "OC-Signature=s&OC-Credential=a&OC-Date=2020-02-02T12:29:00Z&OC-Expires=61&OC-Verb=GET";
        for (allowed, ok) in [
            (vec![], false),
            (vec!["POST"], false),
            (vec!["GET"], true),
            (vec!["get"], true),
            (vec!["POST", "GET"], true),
        ] {
            let got = check(
                &req("GET", query),
                &methods(&allowed),
                None,
                secs(EXPIRY_NOW),
            );
            match got {
                Ok(_) => assert!(ok, "{allowed:?}"),
                Err(e) => {
                    assert!(!ok, "{allowed:?}: {e}");
                    assert_eq!(
                        e.to_string(),
                        "request method is not listed in PreSignedURLConfig AllowedHTTPMethods"
                    );
                }
            }
        }
    }

    #[test]
    fn expiry_at_2020_02_02_12_30() {
        let cases: [(&str, &str, Result<(), SignedUrlError>); 11] = [
            ("2020-02-02T12:29:00.000Z", "61", Ok(())),
            (
                "2020-02-02T12:29:00.000Z",
                "invalid",
                Err(SignedUrlError::InvalidExpires("invalid".into())),
            ),
            (
                "2020-02-02TTT12:29:00.000Z",
                "61",
                Err(SignedUrlError::InvalidDate(
                    "2020-02-02TTT12:29:00.000Z".into(),
                )),
            ),
            (
                "2020-02-02T12:29:00.000Z",
                "59",
                Err(SignedUrlError::Expired),
            ),
            // exactly at the expiry instant: oCIS requires now strictly before it
            (
                "2020-02-02T12:29:00.000Z",
                "60",
                Err(SignedUrlError::Expired),
            ),
            (
                "2020-02-01T12:29:00.000Z",
                "61",
                Err(SignedUrlError::Expired),
            ),
            // a day ahead: oCIS accepts, we reject (beyond MAX_FUTURE_SKEW)
            (
                "2020-02-03T12:29:00.000Z",
                "61",
                Err(SignedUrlError::DateInFuture),
            ),
            // a client clock a little ahead is tolerated
            ("2020-02-02T12:34:00.000Z", "61", Ok(())),
            (
                "2020-02-02T12:35:01.000Z",
                "61",
                Err(SignedUrlError::DateInFuture),
            ),
            ("2020-02-02T13:29:00%2B01:00", "61", Ok(())),
            // an unencoded `+` is a space in a query
            (
                "2020-02-02T13:29:00+01:00",
                "61",
                Err(SignedUrlError::InvalidDate(
                    "2020-02-02T13:29:00 01:00".into(),
                )),
            ),
        ];
        for (date, expires, expected) in cases {
            let query = format!(
                "OC-Signature=s&OC-Credential=a&OC-Date={date}&OC-Expires={expires}&OC-Verb=GET"
            );
            let got = check(
                &req("GET", &query),
                &methods(&["GET"]),
                None,
                secs(EXPIRY_NOW),
            );
            assert_eq!(got.map(|_| ()), expected, "{date} + {expires}");
        }
        assert_eq!(
            SignedUrlError::InvalidExpires("invalid".into()).to_string(),
            r#"time: invalid duration "invalids""#
        );
    }

    #[test]
    fn max_lifetime_is_enforced_when_configured() {
        let run = |expires: &str, max: Option<u64>| {
            let query = format!(
                "OC-Signature=s&OC-Credential=a&OC-Date=2020-02-02T12:29:00Z&OC-Expires={expires}&OC-Verb=GET"
            );
            check(
                &req("GET", &query),
                &methods(&["GET"]),
                max.map(Duration::from_secs),
                secs(EXPIRY_NOW),
            )
            .map(|p| p.lifetime)
        };
        assert_eq!(run("3600", Some(3600)), Ok(Duration::from_secs(3600)));
        assert_eq!(
            run("3601", Some(3600)),
            Err(SignedUrlError::LifetimeTooLong {
                lifetime: Duration::from_secs(3601),
                max: Duration::from_secs(3600)
            })
        );
        assert_eq!(run("31536000", None), Ok(Duration::from_secs(31_536_000)));
        // an expired URL reports expiry, whatever its lifetime
        assert_eq!(run("1", Some(0)), Err(SignedUrlError::Expired));
    }

    #[test]
    fn expires_is_a_non_negative_decimal_number_of_seconds() {
        for (text, expected) in [
            ("1200", Some(Duration::from_secs(1200))),
            ("+60", Some(Duration::from_secs(60))),
            ("1.5", Some(Duration::from_millis(1500))),
            (".5", Some(Duration::from_millis(500))),
            ("2.", Some(Duration::from_secs(2))),
            ("0.0000000019", Some(Duration::from_nanos(1))),
            ("9223372036", Some(Duration::from_secs(9_223_372_036))),
            ("9223372037", None),
            ("99999999999999999999999", None),
            ("-5", None),
            ("1m", None),
            ("1h1m", None),
            (".", None),
            ("1.2.3", None),
            (" 5", None),
        ] {
            assert_eq!(parse_seconds(text), expected, "{text:?}");
        }
    }

    #[test]
    fn dates_are_strict_rfc3339() {
        for (text, expected) in [
            ("2020-02-02T12:30:00Z", Some(secs(EXPIRY_NOW))),
            ("2020-02-02T12:30:00.000Z", Some(secs(EXPIRY_NOW))),
            ("2020-02-02T14:30:00+02:00", Some(secs(EXPIRY_NOW))),
            ("2020-02-02T10:00:00-02:30", Some(secs(EXPIRY_NOW))),
            (
                "2019-05-14T11:01:58.135Z",
                Some(secs(1_557_831_718) + Duration::from_millis(135)),
            ),
            (
                "2019-05-14T11:01:58.1234567891Z",
                Some(secs(1_557_831_718) + Duration::from_nanos(123_456_789)),
            ),
            ("2020-02-29T00:00:00Z", Some(secs(1_582_934_400))),
            (
                "1969-12-31T23:59:59Z",
                UNIX_EPOCH.checked_sub(Duration::from_secs(1)),
            ),
            ("2019-02-29T00:00:00Z", None),
            ("2020-04-31T00:00:00Z", None),
            ("2020-13-01T00:00:00Z", None),
            ("2020-02-02T24:00:00Z", None),
            ("2020-02-02T12:30:60Z", None),
            ("2020-02-02T12:30:00", None),
            ("2020-02-02T12:30:00z", None),
            ("2020-02-02t12:30:00Z", None),
            ("2020-02-02T12:30:00.Z", None),
            ("2020-02-02T12:30:00+0200", None),
            ("2020-02-02T12:30:00+24:00", None),
            ("2020-02-02T12:30:00Zjunk", None),
            ("2020-2-02T12:30:00Z", None),
            ("2020-02-02T1:30:00Z", None),
            ("", None),
        ] {
            assert_eq!(parse_rfc3339(text), expected, "{text:?}");
        }
    }

    #[test]
    fn key_derivation_matches_ocis_vectors() {
        // password, salt, expected: spec §4.3 (oCIS's createSignature test and its validate URLs)
        for (url, key, expected) in [
            (
                "something",
                "somerandomkey",
                "27d2ebea381384af3179235114801dcd00f91e46f99fca72575301cf3948101d",
            ),
            (
                "http://cloud.example.net/?OC-Credential=alice&OC-Date=2019-05-14T11%3A01%3A58.135Z&OC-Expires=1200&OC-Verb=GET",
                "1234567890",
                "f9e53a1ee23caef10f72ec392c1b537317491b687bfdd224c782be197d9ca2b6",
            ),
            (
                "http://localhost:33001/try?id=1&id=2&OC-Credential=user&OC-Date=2024-02-07T12%3A03%3A11.966Z&OC-Expires=2&OC-Verb=GET",
                "1234567890",
                "86e21a1efbf0be989a206109cfedf70a22f338dc8995e849ce002032bc6741c5",
            ),
        ] {
            assert_eq!(derive_signature(url, key.as_bytes()), expected, "{url}");
        }
    }

    #[test]
    fn canonical_url_sorts_remaining_params_and_fixes_the_signing_order() {
        let query = "OC-Verb=GET&b=x+y&OC-Algo=PBKDF2%2F10000-SHA512&a=2&OC-Signature=s&a=1\
                     &OC-Expires=1200&c=%3a%2F%24&OC-Date=2019-05-14T11%3A01%3A58.135Z\
                     &OC-Credential=al%20ice&d&bad=%zz&semi=1;x=2&A=up";
        let r = SignedUrlRequest {
            method: "GET",
            host: "cloud.example.net:9200",
            path: "/remote.php/dav/files/al%20ice/a$b.txt",
            query,
        };
        let params = check(&r, &methods(&["GET"]), None, secs(VALIDATE_NOW)).unwrap();
        assert_eq!(params.credential, "al ice");
        assert_eq!(params.algo.as_deref(), Some("PBKDF2/10000-SHA512"));
        assert_eq!(
            canonical_urls(&r, &params),
            vec![
                "https://cloud.example.net:9200/remote.php/dav/files/al%20ice/a$b.txt?A=up&a=2&a=1&b=x+y&c=%3A%2F%24&d=\
                 &OC-Credential=al+ice&OC-Date=2019-05-14T11%3A01%3A58.135Z&OC-Expires=1200&OC-Verb=GET"
                    .to_owned(),
                "https://cloud.example.net:9200/remote.php/dav/files/al%20ice/a%24b.txt?A=up&a=2&a=1&b=x+y&c=%3A%2F%24&d=\
                 &OC-Credential=al+ice&OC-Date=2019-05-14T11%3A01%3A58.135Z&OC-Expires=1200&OC-Verb=GET"
                    .to_owned(),
            ]
        );
    }

    #[test]
    fn canonical_path_is_gos_escaped_path() {
        for (raw, expected) in [
            ("/", "/"),
            ("/a%20b/c", "/a%20b/c"),
            ("/a%2Fb", "/a%2Fb"),
            ("/!$&'()*+,;=:@[]~", "/!$&'()*+,;=:@[]~"),
            ("/a b", "/a%20b"),
            ("/ä", "/%C3%A4"),
            ("/a%41 b", "/aA%20b"),
            ("/a\"b%21", "/a%22b%21"),
            ("/a b%zz", "/a b%zz"),
            ("", ""),
        ] {
            assert_eq!(escaped_path(raw), expected, "{raw:?}");
        }
        let query = format!("{ALICE}&OC-Signature=s");
        let r = SignedUrlRequest {
            method: "GET",
            host: "h",
            path: "*",
            query: &query,
        };
        let params = check(&r, &methods(&["GET"]), None, secs(VALIDATE_NOW)).unwrap();
        assert!(canonical_urls(&r, &params)[0].starts_with("https://h/*?OC-Credential"));
    }

    #[test]
    fn validate_like_ocis() {
        let ocis_truncated = "f9e53a1ee23caef10f72ec392c1b537317491b687bfdd224c782be197d9ca2b";
        let cases: Vec<(&str, String, u64, Result<(), SignedUrlError>)> = vec![
            (
                "missing signature",
                ALICE.to_owned(),
                EXPIRY_NOW,
                Err(SignedUrlError::MissingParameter(OC_SIGNATURE)),
            ),
            (
                "expired",
                format!("{ALICE}&OC-Signature={ALICE_SIG}"),
                EXPIRY_NOW,
                Err(SignedUrlError::Expired),
            ),
            (
                "wrong signature",
                format!("{ALICE}&OC-Signature={}", &ALICE_SIG[..63]),
                VALIDATE_NOW,
                Err(SignedUrlError::SignatureMismatch),
            ),
            (
                "oCIS's signature over the http:// URL",
                format!("{ALICE}&OC-Signature={}6", ocis_truncated),
                VALIDATE_NOW,
                Err(SignedUrlError::SignatureMismatch),
            ),
            (
                "uppercase hex",
                format!("{ALICE}&OC-Signature={}", ALICE_SIG.to_uppercase()),
                VALIDATE_NOW,
                Err(SignedUrlError::SignatureMismatch),
            ),
            (
                "valid",
                format!("{ALICE}&OC-Signature={ALICE_SIG}"),
                VALIDATE_NOW,
                Ok(()),
            ),
            (
                "valid, parameters in another order",
                format!(
                    "OC-Signature={ALICE_SIG}&OC-Verb=GET&OC-Expires=1200&OC-Date=2019-05-14T11%3A01%3A58.135Z&OC-Credential=alice"
                ),
                VALIDATE_NOW,
                Ok(()),
            ),
            (
                "valid with OC-Algo",
                format!("{ALICE}&OC-Algo=PBKDF2%2F10000-SHA512&OC-Signature={ALICE_SIG}"),
                VALIDATE_NOW,
                Ok(()),
            ),
            (
                "OC-Algo names another algorithm: still ignored",
                format!("{ALICE}&OC-Algo=MD5&OC-Signature={ALICE_SIG}"),
                VALIDATE_NOW,
                Ok(()),
            ),
            (
                "an unsigned extra parameter",
                format!("{ALICE}&x=1&OC-Signature={ALICE_SIG}"),
                VALIDATE_NOW,
                Err(SignedUrlError::SignatureMismatch),
            ),
        ];
        for (name, query, now, expected) in cases {
            assert_eq!(
                validate(&req("GET", &query), secs(now), KEY),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn validate_repeated_params() {
        // https:// variant of oCIS's `id=1&id=2` case, signature computed with Python.
        let sig = "5b57acada7a997d8bf189b76906f5f046af4795d85e0b536d8857200404b3b30";
        let query = format!(
            "id=1&id=2&OC-Credential=user&OC-Date=2024-02-07T12%3A03%3A11.966Z&OC-Expires=2&OC-Verb=GET&OC-Signature={sig}"
        );
        let mut r = SignedUrlRequest {
            method: "GET",
            host: "localhost:33001",
            path: "/try",
            query: &query,
        };
        assert_eq!(validate(&r, secs(1_707_307_392), KEY), Ok(()));
        let swapped = query.replacen("id=1&id=2", "id=2&id=1", 1);
        r.query = &swapped;
        assert_eq!(
            validate(&r, secs(1_707_307_392), KEY),
            Err(SignedUrlError::SignatureMismatch)
        );
    }

    #[test]
    fn dollar_workaround_accepts_the_first_dollar_encoded() {
        // Signed over `/a%24b/c$d` (Python), received as `/a$b/c$d`.
        let sig = "787278675c76da9021a1517e699c210a418ace22c90d2b0f2a75be90e4520c20";
        let query = format!("{ALICE}&OC-Signature={sig}");
        let r = SignedUrlRequest {
            method: "GET",
            host: "cloud.example.net",
            path: "/a$b/c$d",
            query: &query,
        };
        assert_eq!(validate(&r, secs(VALIDATE_NOW), KEY), Ok(()));
        let other = SignedUrlRequest {
            path: "/a$b/c%24d",
            ..r
        };
        assert_eq!(
            validate(&other, secs(VALIDATE_NOW), KEY),
            Err(SignedUrlError::SignatureMismatch)
        );
    }

    #[test]
    fn the_key_and_the_scheme_matter() {
        let query = format!("{ALICE}&OC-Signature={ALICE_SIG}");
        let r = req("GET", &query);
        assert_eq!(validate(&r, secs(VALIDATE_NOW), KEY), Ok(()));
        // oCIS accepts any signature when the stored key is empty
        assert_eq!(
            validate(&r, secs(VALIDATE_NOW), b""),
            Err(SignedUrlError::EmptyKey)
        );
        assert_eq!(
            validate(&r, secs(VALIDATE_NOW), b"1234567891"),
            Err(SignedUrlError::SignatureMismatch)
        );
        let other_host = SignedUrlRequest {
            host: "cloud.example.org",
            ..r
        };
        assert_eq!(
            validate(&other_host, secs(VALIDATE_NOW), KEY),
            Err(SignedUrlError::SignatureMismatch)
        );
    }

    #[test]
    fn errors_are_unauthorized_and_final() {
        for e in [
            SignedUrlError::MissingParameter(OC_VERB),
            SignedUrlError::Expired,
            SignedUrlError::EmptyKey,
            SignedUrlError::SignatureMismatch,
        ] {
            assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
            assert!(!e.is_retryable());
        }
        assert!(
            !SignedUrlError::SignatureMismatch
                .to_string()
                .contains(ALICE_SIG)
        );
    }

    #[test]
    fn non_utf8_signing_values_are_refused() {
        let query = "OC-Signature=s&OC-Credential=%FF&OC-Date=2020-02-02T12:29:00Z&OC-Expires=61&OC-Verb=GET";
        assert_eq!(
            check(
                &req("GET", query),
                &methods(&["GET"]),
                None,
                secs(EXPIRY_NOW)
            ),
            Err(SignedUrlError::InvalidEncoding(OC_CREDENTIAL))
        );
    }

    #[test]
    fn verification_digest_binds_url_signature_and_key() {
        let query = format!("{ALICE}&OC-Signature={ALICE_SIG}");
        let r = req("GET", &query);
        let params = check(&r, &methods(&["GET"]), None, secs(VALIDATE_NOW)).unwrap();
        let base = verification_digest(&r, &params, KEY);
        assert_eq!(base, verification_digest(&r, &params, KEY));
        assert_ne!(base, verification_digest(&r, &params, b"1234567891"));
        let other_sig = SignedUrlParams {
            signature: "0".repeat(64),
            ..params.clone()
        };
        assert_ne!(base, verification_digest(&r, &other_sig, KEY));
        let other_host = SignedUrlRequest {
            host: "cloud.example.org",
            ..r
        };
        assert_ne!(base, verification_digest(&other_host, &params, KEY));
    }

    #[test]
    fn constant_time_eq_compares_whole_values() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }
}
