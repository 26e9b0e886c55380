//! Client side of pre-signed URLs: what the oCIS web client does with the key it fetched from
//! `/ocs/v1.php/cloud/user/signing-key`, written out independently of the gateway's verifier
//! (only the key derivation itself is shared).

use std::time::{Duration, SystemTime};

use gatehouse_shared::auth::signed_url::derive_signature;

/// A link to sign: everything the client decides.
pub struct Link<'a> {
    /// The `Host` the client will send (the canonical URL is always `https://` + this).
    pub host: &'a str,
    pub path: &'a str,
    /// Other query parameters, already encoded, in any order (`""` for none).
    pub params: &'a str,
    pub user: &'a str,
    pub verb: &'a str,
    pub signed_at: SystemTime,
    pub expires: Duration,
}

/// `path?…&OC-Signature=…` for `link`, signed with `key` (the 128 hex characters as served).
pub fn sign(link: &Link, key: &str) -> String {
    let date = rfc3339_millis(link.signed_at).replace(':', "%3A");
    let mut others: Vec<&str> = link.params.split('&').filter(|p| !p.is_empty()).collect();
    others.sort_by_key(|p| p.split('=').next().unwrap_or(""));
    let signing = format!(
        "OC-Credential={}&OC-Date={date}&OC-Expires={}&OC-Verb={}",
        link.user,
        link.expires.as_secs(),
        link.verb
    );
    let query = if others.is_empty() {
        signing
    } else {
        format!("{}&{signing}", others.join("&"))
    };
    let canonical = format!("https://{}{}?{query}", link.host, link.path);
    let signature = derive_signature(&canonical, key.as_bytes());
    format!(
        "{}?{query}&OC-Algo=PBKDF2%2F10000-SHA512&OC-Signature={signature}",
        link.path
    )
}

/// `2019-05-14T11:01:58.135Z`, the format the web client sends.
pub fn rfc3339_millis(t: SystemTime) -> String {
    let d = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after the epoch");
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 → (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_formatted_like_the_web_client() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_557_831_718_135);
        assert_eq!(rfc3339_millis(t), "2019-05-14T11:01:58.135Z");
    }

    #[test]
    fn the_upstream_vector_is_reproduced() {
        // spec §4.3: the canonical URL of this link signed with "1234567890".
        let link = Link {
            host: "cloud.example.net",
            path: "/",
            params: "",
            user: "alice",
            verb: "GET",
            signed_at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_557_831_718_135),
            expires: Duration::from_secs(1200),
        };
        let url = sign(&link, "1234567890");
        // The upstream vector signs http://…; ours always signs https://, as oCIS servers do.
        let expected = derive_signature(
            "https://cloud.example.net/?OC-Credential=alice&OC-Date=2019-05-14T11%3A01%3A58.135Z&OC-Expires=1200&OC-Verb=GET",
            b"1234567890",
        );
        assert!(url.ends_with(&format!("&OC-Signature={expected}")), "{url}");
        assert!(url.starts_with("/?OC-Credential=alice&OC-Date=2019-05-14T11%3A01%3A58.135Z&"));
    }
}
