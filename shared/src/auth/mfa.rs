//! Step-up authentication (`mfa`): whether a user's login counts as multi-factor, and the
//! request headers that carry that fact to backends.
//!
//! The IdP states how a user authenticated in the standard `acr` claim; a login counts as MFA
//! when that value is one of `mfa.auth_level_name`. Backends learn the result from request
//! headers, which is only trustworthy if clients can never send those headers themselves —
//! [`is_reserved_header`] names every header the gateway removes before it sets its own.
//!
//! Both marker generations of oCIS are sent: `X-Multi-Factor-Authentication` (`true`/`false`)
//! and the auto-propagated `X-Ocis-Autoprop-Mfa-Authenticated` (`true` only).

use serde_json::Value;

use super::claims::{ClaimPath, string_claim};

pub const MFA_HEADER: &str = "x-multi-factor-authentication";
pub const MFA_AUTOPROP_HEADER: &str = "x-ocis-autoprop-mfa-authenticated";
/// Response header of a refusal for missing step-up authentication.
pub const MFA_REQUIRED_HEADER: &str = "x-ocis-mfa-required";

#[derive(Debug, Clone)]
pub struct MfaPolicy {
    enabled: bool,
    levels: Vec<String>,
    acr: ClaimPath,
}

impl MfaPolicy {
    pub fn new(enabled: bool, auth_level_names: &[String]) -> Self {
        Self {
            enabled,
            levels: auth_level_names
                .iter()
                .map(|l| l.trim().to_owned())
                .filter(|l| !l.is_empty())
                .collect(),
            acr: ClaimPath::parse("acr"),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether these claims satisfy step-up authentication. With MFA disabled every login does,
    /// as in oCIS (backends may then assume MFA everywhere).
    pub fn satisfied(&self, claims: &Value) -> bool {
        if !self.enabled {
            return true;
        }
        string_claim(claims, &self.acr).is_some_and(|acr| self.levels.iter().any(|l| l == acr))
    }
}

/// Headers a client may not send: the gateway sets them after authentication.
pub fn is_reserved_header(name: &str) -> bool {
    let name = name.as_bytes();
    let starts = |prefix: &str| {
        name.len() >= prefix.len() && name[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    };
    name.eq_ignore_ascii_case(MFA_HEADER.as_bytes())
        || name.eq_ignore_ascii_case(b"x-access-token")
        || starts("x-ocis-autoprop-")
        || starts("m-ocis-autoprop-")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn acr_must_name_a_configured_level() {
        let p = MfaPolicy::new(true, &["advanced".into(), " strong ".into(), "".into()]);
        assert!(p.satisfied(&json!({"acr": "advanced"})));
        assert!(p.satisfied(&json!({"acr": "strong"})));
        assert!(!p.satisfied(&json!({"acr": "regular"})));
        assert!(!p.satisfied(&json!({"acr": ""})));
        assert!(!p.satisfied(&json!({"acr": 2})));
        assert!(!p.satisfied(&json!({})));
        assert!(
            !p.satisfied(&json!({"acr": "Advanced"})),
            "exact comparison"
        );
    }

    #[test]
    fn disabled_means_every_login_counts() {
        let p = MfaPolicy::new(false, &["advanced".into()]);
        assert!(p.satisfied(&json!({})));
        assert!(!p.enabled());
    }

    #[test]
    fn reserved_headers() {
        for h in [
            "X-Multi-Factor-Authentication",
            "x-access-token",
            "X-Ocis-Autoprop-Mfa-Authenticated",
            "x-ocis-autoprop-anything",
            "M-Ocis-Autoprop-Foo",
        ] {
            assert!(is_reserved_header(h), "{h}");
        }
        for h in [
            "authorization",
            "x-ocis-autopro",
            "x-access-tokens",
            "x-request-id",
        ] {
            assert!(!is_reserved_header(h), "{h}");
        }
    }
}
