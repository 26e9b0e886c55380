//! The security response headers of the newest oCIS proxy (spec §6.2), built once and applied to
//! every response.
//!
//! `X-XSS-Protection` is deliberately absent (newest oCIS dropped it; modern browsers ignore or
//! misuse it). HSTS is sent on TLS requests, or on every request when forced — behind a
//! TLS-terminating load balancer the gateway cannot tell, so operators force it.

use http::header::{
    CONTENT_SECURITY_POLICY, REFERRER_POLICY, STRICT_TRANSPORT_SECURITY, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};
use http::{HeaderMap, HeaderName, HeaderValue};

use super::csp::Csp;

/// `Strict-Transport-Security` value (ten years, subdomains, preload list).
pub const HSTS_VALUE: &str = "max-age=315360000; includeSubDomains; preload";

const X_PERMITTED_CROSS_DOMAIN_POLICIES: HeaderName =
    HeaderName::from_static("x-permitted-cross-domain-policies");
const X_ROBOTS_TAG: HeaderName = HeaderName::from_static("x-robots-tag");

/// The pre-built header set.
#[derive(Debug, Clone)]
pub struct SecurityHeaders {
    always: [(HeaderName, HeaderValue); 6],
    force_hsts: bool,
}

impl SecurityHeaders {
    pub fn new(csp: &Csp, force_hsts: bool) -> Self {
        SecurityHeaders {
            always: [
                (CONTENT_SECURITY_POLICY, csp.http_header_value().clone()),
                (X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
                (X_FRAME_OPTIONS, HeaderValue::from_static("SAMEORIGIN")),
                (REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
                (
                    X_PERMITTED_CROSS_DOMAIN_POLICIES,
                    HeaderValue::from_static("none"),
                ),
                (X_ROBOTS_TAG, HeaderValue::from_static("none")),
            ],
            force_hsts,
        }
    }

    /// Sets (replacing any existing value) the security headers on a response to a request that
    /// arrived over TLS or not.
    pub fn apply(&self, headers: &mut HeaderMap, request_is_tls: bool) {
        for (name, value) in &self.always {
            headers.insert(name.clone(), value.clone());
        }
        if request_is_tls || self.force_hsts {
            headers.insert(
                STRICT_TRANSPORT_SECURITY,
                HeaderValue::from_static(HSTS_VALUE),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(force_hsts: bool, tls: bool) -> HeaderMap {
        let csp =
            Csp::from_yaml("directives:\n  default-src: [\"'none'\"]", "t", &|_| None).unwrap();
        let mut map = HeaderMap::new();
        map.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        SecurityHeaders::new(&csp, force_hsts).apply(&mut map, tls);
        map
    }

    #[test]
    fn newest_ocis_header_set() {
        let h = headers(false, false);
        assert_eq!(h["content-security-policy"], "default-src 'none'");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["x-frame-options"], "SAMEORIGIN");
        assert_eq!(h.get_all("x-frame-options").iter().count(), 1);
        assert_eq!(h["referrer-policy"], "no-referrer");
        assert_eq!(h["x-permitted-cross-domain-policies"], "none");
        assert_eq!(h["x-robots-tag"], "none");
        assert!(!h.contains_key("x-xss-protection"));
        assert!(!h.contains_key("strict-transport-security"));
        assert_eq!(h.len(), 6);
    }

    #[test]
    fn strict_transport_security_on_tls() {
        // TestStrictTransportSecurity
        let h = headers(false, true);
        assert_eq!(
            h["strict-transport-security"],
            "max-age=315360000; includeSubDomains; preload"
        );
    }

    #[test]
    fn strict_transport_security_forced_on_plain_http() {
        // TestStrictTransportSecurity_ForceOnHTTP
        let h = headers(true, false);
        assert_eq!(
            h["strict-transport-security"],
            "max-age=315360000; includeSubDomains; preload"
        );
    }
}
