//! What an unauthenticated request is told, and which requests need no authentication at all.
//!
//! oCIS answers a request no authenticator accepted with 401, one `WWW-Authenticate` challenge per
//! enabled scheme, and — for WebDAV methods — a Sabre XML error body that desktop and mobile
//! clients parse (spec §3.9). Some clients must only ever be offered one scheme, which operators
//! pin with `auth_middleware.credentials_by_user_agent`. The decisions are pure functions of a
//! few request facts so that they can be tested without a server.
//!
//! Differences from oCIS, on purpose:
//! - A `credentials_by_user_agent` key matches when the request's `User-Agent` *contains* it.
//!   oCIS tests the reverse (the key must contain the User-Agent), so an empty User-Agent matches
//!   every key and a full browser User-Agent matches none. When several keys match, the longest
//!   wins, so the choice does not depend on map order.
//! - The host placed in `realm="…"` is stripped of quotes and backslashes; oCIS copies it verbatim.

use std::collections::BTreeMap;

/// An authentication scheme that can be offered in a challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Basic,
    Bearer,
}

impl Scheme {
    /// The title-cased name used in `WWW-Authenticate`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Basic => "Basic",
            Scheme::Bearer => "Bearer",
        }
    }

    fn parse(value: &str) -> Option<Self> {
        match value.to_ascii_lowercase().as_str() {
            "basic" => Some(Scheme::Basic),
            "bearer" => Some(Scheme::Bearer),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "auth_middleware.credentials_by_user_agent: {user_agent:?} maps to {value:?}, which is neither basic nor bearer"
)]
pub struct ChallengeConfigError {
    pub user_agent: String,
    pub value: String,
}

/// The request facts a 401 answer depends on.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChallengeRequest<'a> {
    pub path: &'a str,
    /// The `Host` the client addressed; becomes the realm.
    pub host: &'a str,
    pub user_agent: &'a str,
    /// `X-Requested-With: XMLHttpRequest` was sent (browsers must not show a login dialog).
    pub xml_http_request: bool,
}

/// Which challenges a node offers; built once from the configuration.
#[derive(Debug, Clone, Default)]
pub struct ChallengePolicy {
    schemes: Vec<Scheme>,
    /// Longest key first.
    by_user_agent: Vec<(String, Scheme)>,
}

impl ChallengePolicy {
    /// `bearer`: an OIDC issuer is configured; `basic`: basic or app-password auth is enabled.
    pub fn new(
        bearer: bool,
        basic: bool,
        credentials_by_user_agent: &BTreeMap<String, String>,
    ) -> Result<Self, ChallengeConfigError> {
        let mut schemes = Vec::new();
        if bearer {
            schemes.push(Scheme::Bearer);
        }
        if basic {
            schemes.push(Scheme::Basic);
        }
        let mut by_user_agent = Vec::new();
        for (user_agent, value) in credentials_by_user_agent {
            let scheme = Scheme::parse(value).ok_or_else(|| ChallengeConfigError {
                user_agent: user_agent.clone(),
                value: value.clone(),
            })?;
            if !user_agent.is_empty() {
                by_user_agent.push((user_agent.clone(), scheme));
            }
        }
        by_user_agent.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        Ok(Self {
            schemes,
            by_user_agent,
        })
    }

    /// The `WWW-Authenticate` values for a 401 answer, in order (possibly none).
    pub fn challenges(&self, req: &ChallengeRequest<'_>) -> Vec<String> {
        if is_public_path(req.path) {
            return Vec::new();
        }
        let realm: String = req
            .host
            .chars()
            .filter(|c| !matches!(c, '"' | '\\') && !c.is_control())
            .collect();
        let challenge = |s: Scheme| format!("{} realm=\"{realm}\", charset=\"UTF-8\"", s.as_str());
        if let Some(scheme) = self.locked_scheme(req.user_agent) {
            return vec![challenge(scheme)];
        }
        if req.xml_http_request {
            return Vec::new();
        }
        self.schemes.iter().map(|s| challenge(*s)).collect()
    }

    fn locked_scheme(&self, user_agent: &str) -> Option<Scheme> {
        if user_agent.is_empty() {
            return None;
        }
        self.by_user_agent
            .iter()
            .find(|(key, _)| user_agent.contains(key.as_str()))
            .map(|(_, s)| *s)
    }
}

/// Paths whose backends do their own access checks (public links, OCM, capabilities): an
/// anonymous request there is passed on instead of being refused (spec §3.9). The signing-key
/// endpoints are deliberately absent: a public-link guest must not obtain the owner's key.
pub const PUBLIC_PATH_PREFIXES: &[&str] = &[
    "/dav/public-files/",
    "/remote.php/dav/ocm/",
    "/dav/ocm/",
    "/ocm/",
    "/remote.php/dav/public-files/",
    "/ocs/v1.php/apps/files_sharing/api/v1/tokeninfo/unprotected",
    "/ocs/v2.php/apps/files_sharing/api/v1/tokeninfo/unprotected",
    "/ocs/v1.php/cloud/capabilities",
    "/ocs/v2.php/cloud/capabilities",
];

pub fn is_public_path(path: &str) -> bool {
    PUBLIC_PATH_PREFIXES.iter().any(|p| path.starts_with(p))
}

/// Requests that pass without any authenticator running, as in oCIS: the OIDC token endpoint
/// (clients authenticate to the IdP there) and CORS preflights.
pub fn skips_authentication(path: &str, method: &http::Method) -> bool {
    method == http::Method::OPTIONS || path == "/konnect/v1/token"
}

/// Methods that only WebDAV clients send; their 401 carries [`WEBDAV_UNAUTHENTICATED_BODY`].
pub fn is_webdav_method(method: &http::Method) -> bool {
    matches!(
        method.as_str(),
        "PROPFIND" | "DELETE" | "PROPPATCH" | "MKCOL" | "COPY" | "MOVE" | "LOCK" | "UNLOCK"
    )
}

/// The Sabre-style error body of a 401 to a WebDAV method, element for element as the oCIS
/// proxy writes it (capitalised `s:Exception`/`s:Message`).
pub const WEBDAV_UNAUTHENTICATED_BODY: &str = concat!(
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n",
    "<d:error xmlns:d=\"DAV\" xmlns:s=\"http://sabredav.org/ns\">",
    "<s:Exception>Sabre\\DAV\\Exception\\PermissionDenied</s:Exception>",
    "<s:Message>Authentication error</s:Message>",
    "</d:error>"
);

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(bearer: bool, basic: bool, ua: &[(&str, &str)]) -> ChallengePolicy {
        let map = ua
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        ChallengePolicy::new(bearer, basic, &map).unwrap()
    }

    fn req<'a>(path: &'a str, ua: &'a str, xhr: bool) -> ChallengeRequest<'a> {
        ChallengeRequest {
            path,
            host: "cloud.example.com",
            user_agent: ua,
            xml_http_request: xhr,
        }
    }

    #[test]
    fn one_challenge_per_enabled_scheme() {
        let p = policy(true, true, &[]);
        assert_eq!(
            p.challenges(&req("/graph/v1.0/me", "curl/8", false)),
            [
                "Bearer realm=\"cloud.example.com\", charset=\"UTF-8\"",
                "Basic realm=\"cloud.example.com\", charset=\"UTF-8\""
            ]
        );
        assert_eq!(
            policy(true, false, &[]).challenges(&req("/x", "", false)),
            ["Bearer realm=\"cloud.example.com\", charset=\"UTF-8\""]
        );
        assert!(
            policy(false, false, &[])
                .challenges(&req("/x", "", false))
                .is_empty()
        );
    }

    #[test]
    fn xml_http_request_gets_no_challenge() {
        assert!(
            policy(true, true, &[])
                .challenges(&req("/x", "Mozilla/5.0", true))
                .is_empty()
        );
    }

    #[test]
    fn user_agent_lock_matches_when_the_user_agent_contains_the_key() {
        let p = policy(true, true, &[("mirall", "basic"), ("Mozi", "bearer")]);
        assert_eq!(
            p.challenges(&req(
                "/remote.php/webdav",
                "Mozilla/5.0 (Linux) mirall/3.4.0",
                false
            )),
            ["Basic realm=\"cloud.example.com\", charset=\"UTF-8\""],
            "the longer key wins, whatever the order"
        );
        assert_eq!(
            p.challenges(&req("/x", "Mozilla/5.0 (X11)", false)),
            ["Bearer realm=\"cloud.example.com\", charset=\"UTF-8\""]
        );
        // The lock wins over the XMLHttpRequest exception, as in oCIS.
        assert_eq!(p.challenges(&req("/x", "Mozilla/5.0", true)).len(), 1);
        // oCIS's reversed test would match every key for an empty User-Agent; here none matches.
        assert_eq!(p.challenges(&req("/x", "", false)).len(), 2);
        // A key that merely contains the User-Agent does not match.
        assert_eq!(p.challenges(&req("/x", "mir", false)).len(), 2);
    }

    #[test]
    fn invalid_lock_value_is_a_configuration_error() {
        let map = BTreeMap::from([("mirall".to_owned(), "digest".to_owned())]);
        let err = ChallengePolicy::new(true, false, &map).unwrap_err();
        assert!(
            err.to_string().contains("credentials_by_user_agent"),
            "{err}"
        );
        let ok = BTreeMap::from([("mirall".to_owned(), "BASIC".to_owned())]);
        assert!(ChallengePolicy::new(true, false, &ok).is_ok());
    }

    #[test]
    fn public_paths_get_no_challenge() {
        let p = policy(true, true, &[]);
        for path in [
            "/remote.php/dav/public-files/abc",
            "/ocs/v1.php/apps/files_sharing/api/v1/tokeninfo/unprotected/x",
            "/ocs/v2.php/apps/files_sharing/api/v1/tokeninfo/unprotected",
            "/ocs/v1.php/cloud/capabilities",
            "/dav/public-files/x",
        ] {
            assert!(is_public_path(path), "{path}");
            assert!(p.challenges(&req(path, "", false)).is_empty(), "{path}");
        }
        for path in [
            "/ocs/v1.php/cloud/user/signing-key",
            "/ocs/v2.php/cloud/user/signing-key",
            "/remote.php/dav/files/einstein",
            "/dav/public-filesx",
        ] {
            assert!(!is_public_path(path), "{path}");
        }
    }

    #[test]
    fn realm_cannot_break_out_of_its_quotes() {
        let p = policy(true, false, &[]);
        let r = ChallengeRequest {
            path: "/x",
            host: "evil\", Basic realm=\"x",
            user_agent: "",
            xml_http_request: false,
        };
        assert_eq!(
            p.challenges(&r),
            ["Bearer realm=\"evil, Basic realm=x\", charset=\"UTF-8\""]
        );
    }

    #[test]
    fn skipped_and_webdav_requests() {
        assert!(skips_authentication(
            "/konnect/v1/token",
            &http::Method::POST
        ));
        assert!(skips_authentication("/anything", &http::Method::OPTIONS));
        assert!(!skips_authentication(
            "/konnect/v1/token/x",
            &http::Method::POST
        ));
        let propfind = http::Method::from_bytes(b"PROPFIND").unwrap();
        assert!(is_webdav_method(&propfind));
        assert!(is_webdav_method(&http::Method::DELETE));
        assert!(!is_webdav_method(&http::Method::GET));
        assert!(WEBDAV_UNAUTHENTICATED_BODY.starts_with("<?xml"));
        assert!(WEBDAV_UNAUTHENTICATED_BODY.contains("Sabre\\DAV\\Exception\\PermissionDenied"));
    }
}
