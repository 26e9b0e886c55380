//! The YAML shape of `policies`, `additional_policies` and `policy_selector` (spec §1.1, §1.4),
//! the oCIS default policy, and the merge rule between defaults and operator policies.
//!
//! The key names follow the oCIS proxy configuration so that an existing `proxy.yaml` keeps
//! working. Every struct denies unknown fields: a misspelt key would otherwise silently change
//! which routes are protected.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A named list of routes. Which policy serves a request is decided by the policy selector.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    pub name: String,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

/// One route of a policy.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    #[serde(rename = "type", default)]
    pub kind: RouteType,
    /// Restricts the route to one HTTP method (exact, case-sensitive). Empty: any method.
    #[serde(default)]
    pub method: String,
    /// A path prefix, a path prefix with required query parameters, or a regular expression,
    /// depending on [`RouteConfig::kind`].
    pub endpoint: String,
    /// Static upstream URL (`http[s]://host[:port][/base/path][?query]`).
    #[serde(default)]
    pub backend: String,
    /// Service name resolved through the service registry. Wins over `backend`.
    #[serde(default)]
    pub service: String,
    /// Send the backend host as the outbound `Host` header.
    #[serde(default)]
    pub apache_vhost: bool,
    /// Requests on this route skip proxy authentication.
    #[serde(default)]
    pub unprotected: bool,
    /// Gatehouse addition: with `mfa.enabled`, an authenticated request whose `acr` claim is not
    /// one of `mfa.auth_level_name` is refused with 403 and `X-Ocis-Mfa-Required: true`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_mfa: bool,
}

/// How a route's endpoint is matched. YAML: `prefix` (also empty), `query`, `regex`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum RouteType {
    #[default]
    Prefix,
    Query,
    Regex,
}

impl RouteType {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteType::Prefix => "prefix",
            RouteType::Query => "query",
            RouteType::Regex => "regex",
        }
    }
}

impl fmt::Display for RouteType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for RouteType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for RouteType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TypeVisitor;
        impl Visitor<'_> for TypeVisitor {
            type Value = RouteType;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("one of \"prefix\", \"query\", \"regex\" (empty means prefix)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RouteType, E> {
                match v {
                    "" | "prefix" => Ok(RouteType::Prefix),
                    "query" => Ok(RouteType::Query),
                    "regex" => Ok(RouteType::Regex),
                    other => Err(E::unknown_variant(other, &["prefix", "query", "regex"])),
                }
            }
            fn visit_unit<E: de::Error>(self) -> Result<RouteType, E> {
                Ok(RouteType::Prefix)
            }
        }
        deserializer.deserialize_any(TypeVisitor)
    }
}

/// `policy_selector`: exactly one of the three kinds must be set.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicySelectorConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub r#static: Option<StaticSelector>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claims: Option<ClaimsSelector>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regex: Option<RegexSelector>,
}

impl PolicySelectorConfig {
    /// The selector oCIS uses when none is configured: always policy `ocis`.
    pub fn static_policy(name: impl Into<String>) -> Self {
        PolicySelectorConfig {
            r#static: Some(StaticSelector {
                policy: name.into(),
            }),
            ..Default::default()
        }
    }
}

/// Always the same policy.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StaticSelector {
    pub policy: String,
}

/// The OIDC claim `ocis.routing.policy`, else the selector cookie, else a default.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClaimsSelector {
    pub default_policy: String,
    pub unauthenticated_policy: String,
    /// Empty: `owncloud-selector`.
    pub selector_cookie_name: String,
}

/// The selector cookie, else regular expressions over user properties.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegexSelector {
    pub default_policy: String,
    pub matches_policies: Vec<RegexRuleConfig>,
    pub unauthenticated_policy: String,
    /// Empty: `owncloud-selector`.
    pub selector_cookie_name: String,
}

/// One rule of the regex selector; rules are tried by ascending `priority`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegexRuleConfig {
    pub priority: i64,
    /// `mail`, `username` or `id`.
    pub property: String,
    /// Unanchored regular expression.
    pub r#match: String,
    pub policy: String,
}

/// The name of the default policy.
pub const DEFAULT_POLICY_NAME: &str = "ocis";

/// The oCIS default policy `ocis` (spec §1.2), in configuration order.
pub fn default_policies() -> Vec<PolicyConfig> {
    use RouteType::{Prefix, Query, Regex};
    // (type, method, endpoint, service, unprotected)
    const TABLE: &[(RouteType, &str, &str, &str, bool)] = &[
        (Prefix, "", "/", "com.owncloud.web.web", true),
        (Prefix, "", "/.well-known/ocm", "com.owncloud.web.ocm", true),
        (
            Prefix,
            "",
            "/.well-known/webfinger",
            "com.owncloud.web.webfinger",
            true,
        ),
        (
            Prefix,
            "",
            "/.well-known/openid-configuration",
            "com.owncloud.web.idp",
            true,
        ),
        (Prefix, "", "/branding/logo", "com.owncloud.web.web", false),
        (Prefix, "", "/konnect/", "com.owncloud.web.idp", true),
        (Prefix, "", "/signin/", "com.owncloud.web.idp", true),
        (Prefix, "", "/archiver", "com.owncloud.web.frontend", false),
        (
            Prefix,
            "",
            "/ocs/v2.php/apps/notifications/api/v1/notifications/sse",
            "com.owncloud.sse.sse",
            false,
        ),
        (
            Prefix,
            "",
            "/ocs/v2.php/apps/notifications/api/v1/notifications",
            "com.owncloud.web.userlog",
            false,
        ),
        (
            Regex,
            "",
            "/ocs/v[12].php/cloud/user/signing-key",
            "com.owncloud.web.ocs",
            false,
        ),
        (
            Regex,
            "",
            "/ocs/v[12].php/config",
            "com.owncloud.web.frontend",
            true,
        ),
        (Prefix, "", "/sciencemesh/", "com.owncloud.web.ocm", false),
        (Prefix, "", "/ocm/", "com.owncloud.web.ocm", false),
        (Prefix, "", "/ocs/", "com.owncloud.web.frontend", false),
        (
            Query,
            "",
            "/remote.php/?preview=1",
            "com.owncloud.web.webdav",
            false,
        ),
        (
            Regex,
            "REPORT",
            "(/remote.php)?/(web)?dav",
            "com.owncloud.web.webdav",
            false,
        ),
        (
            Query,
            "",
            "/dav/?preview=1",
            "com.owncloud.web.webdav",
            false,
        ),
        (
            Query,
            "",
            "/webdav/?preview=1",
            "com.owncloud.web.webdav",
            false,
        ),
        (Prefix, "", "/remote.php/", "com.owncloud.web.ocdav", false),
        (Prefix, "", "/dav/", "com.owncloud.web.ocdav", false),
        (Prefix, "", "/webdav/", "com.owncloud.web.ocdav", false),
        (Prefix, "", "/webdav", "com.owncloud.web.ocdav", false),
        (Prefix, "", "/status", "com.owncloud.web.ocdav", true),
        (Prefix, "", "/status.php", "com.owncloud.web.ocdav", true),
        (Prefix, "", "/index.php/", "com.owncloud.web.ocdav", false),
        (Prefix, "", "/apps/", "com.owncloud.web.ocdav", false),
        (Prefix, "", "/data", "com.owncloud.web.frontend", true),
        (Prefix, "", "/app/list", "com.owncloud.web.frontend", true),
        (Prefix, "", "/app/", "com.owncloud.web.frontend", false),
        (
            Prefix,
            "",
            "/graph/v1beta1/extensions/org.libregraph/activities",
            "com.owncloud.web.activitylog",
            false,
        ),
        (
            Prefix,
            "",
            "/graph/v1.0/invitations",
            "com.owncloud.web.invitations",
            false,
        ),
        (Prefix, "", "/graph/", "com.owncloud.web.graph", false),
        (
            Prefix,
            "",
            "/api/v0/settings",
            "com.owncloud.web.settings",
            false,
        ),
        (
            Prefix,
            "",
            "/auth-app/tokens",
            "com.owncloud.web.auth-app",
            false,
        ),
    ];
    let routes = TABLE
        .iter()
        .map(
            |&(kind, method, endpoint, service, unprotected)| RouteConfig {
                kind,
                method: method.to_owned(),
                endpoint: endpoint.to_owned(),
                service: service.to_owned(),
                unprotected,
                ..Default::default()
            },
        )
        .collect();
    vec![PolicyConfig {
        name: DEFAULT_POLICY_NAME.to_owned(),
        routes,
    }]
}

/// The policies in force (spec §1.1): a non-empty `policies` replaces the defaults entirely and
/// `additional` is then ignored; otherwise `additional` is merged into the defaults — routes of a
/// policy with an existing name are appended to it, other policies are added at the end.
pub fn effective_policies(
    policies: &[PolicyConfig],
    additional: &[PolicyConfig],
) -> Vec<PolicyConfig> {
    if !policies.is_empty() {
        return policies.to_vec();
    }
    let mut merged = default_policies();
    for extra in additional {
        match merged.iter_mut().find(|p| p.name == extra.name) {
            Some(existing) => existing.routes.extend(extra.routes.iter().cloned()),
            None => merged.push(extra.clone()),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_yaml_defaults_and_type_spellings() {
        let yaml = r#"
- endpoint: /a
  service: s
- type: ""
  endpoint: /b
  backend: http://b
- type: query
  endpoint: /c?x=1
  service: s
  method: GET
  unprotected: true
  apache_vhost: true
- type: regex
  endpoint: /d.*
  service: s
"#;
        let routes: Vec<RouteConfig> = serde_yaml_ng::from_str(yaml).unwrap();
        assert_eq!(routes[0].kind, RouteType::Prefix);
        assert!(!routes[0].unprotected);
        assert_eq!(routes[1].kind, RouteType::Prefix);
        assert_eq!(routes[1].backend, "http://b");
        assert_eq!(routes[2].kind, RouteType::Query);
        assert_eq!(routes[2].method, "GET");
        assert!(routes[2].unprotected && routes[2].apache_vhost);
        assert_eq!(routes[3].kind, RouteType::Regex);
    }

    #[test]
    fn unknown_route_type_and_unknown_keys_are_rejected() {
        let err = serde_yaml_ng::from_str::<RouteConfig>("type: glob\nendpoint: /").unwrap_err();
        assert!(err.to_string().contains("glob"), "{err}");
        let err =
            serde_yaml_ng::from_str::<RouteConfig>("endpoint: /\nunprotectd: true").unwrap_err();
        assert!(err.to_string().contains("unprotectd"), "{err}");
        assert!(serde_yaml_ng::from_str::<RouteConfig>("service: x").is_err());
    }

    #[test]
    fn selector_yaml_uses_ocis_key_names() {
        let yaml = r#"
regex:
  default_policy: ocis
  unauthenticated_policy: oc10
  selector_cookie_name: sel
  matches_policies:
    - priority: 10
      property: mail
      match: marie@example.org
      policy: ocis
"#;
        let sel: PolicySelectorConfig = serde_yaml_ng::from_str(yaml).unwrap();
        let regex = sel.regex.unwrap();
        assert_eq!(regex.matches_policies[0].r#match, "marie@example.org");
        assert_eq!(regex.matches_policies[0].priority, 10);
        assert_eq!(regex.selector_cookie_name, "sel");
        assert!(sel.r#static.is_none() && sel.claims.is_none());

        let sel: PolicySelectorConfig = serde_yaml_ng::from_str("static:\n  policy: x").unwrap();
        assert_eq!(sel, PolicySelectorConfig::static_policy("x"));
        let sel: PolicySelectorConfig =
            serde_yaml_ng::from_str("claims:\n  default_policy: a\n  unauthenticated_policy: b")
                .unwrap();
        assert_eq!(sel.claims.unwrap().unauthenticated_policy, "b");
        assert!(serde_yaml_ng::from_str::<PolicySelectorConfig>("migration: {}").is_err());
    }

    #[test]
    fn route_type_round_trips_through_yaml() {
        let route = RouteConfig {
            kind: RouteType::Regex,
            endpoint: "/x".into(),
            service: "s".into(),
            ..Default::default()
        };
        let text = serde_yaml_ng::to_string(&route).unwrap();
        assert!(text.contains("type: regex"), "{text}");
        assert_eq!(
            serde_yaml_ng::from_str::<RouteConfig>(&text).unwrap(),
            route
        );
    }

    #[test]
    fn default_policy_is_the_ocis_table() {
        let policies = default_policies();
        assert_eq!(policies.len(), 1);
        let p = &policies[0];
        assert_eq!(p.name, "ocis");
        assert_eq!(p.routes.len(), 35);
        assert_eq!(p.routes[0].endpoint, "/");
        assert!(p.routes[0].unprotected);
        let webdav: Vec<_> = p
            .routes
            .iter()
            .map(|r| r.endpoint.as_str())
            .skip_while(|e| *e != "/webdav/")
            .take(2)
            .collect();
        assert_eq!(webdav, ["/webdav/", "/webdav"]);
        let report: Vec<_> = p.routes.iter().filter(|r| !r.method.is_empty()).collect();
        assert_eq!(report.len(), 1);
        assert_eq!(report[0].method, "REPORT");
        assert!(
            p.routes
                .iter()
                .all(|r| r.backend.is_empty() && !r.service.is_empty())
        );
        assert!(p.routes.iter().all(|r| !r.apache_vhost));
    }

    fn policy(name: &str, endpoints: &[&str]) -> PolicyConfig {
        PolicyConfig {
            name: name.into(),
            routes: endpoints
                .iter()
                .map(|e| RouteConfig {
                    endpoint: (*e).into(),
                    service: "s".into(),
                    ..Default::default()
                })
                .collect(),
        }
    }

    #[test]
    fn policies_replace_defaults_and_ignore_additional() {
        let own = [policy("mine", &["/"])];
        let extra = [policy("ocis", &["/extra"])];
        assert_eq!(effective_policies(&own, &extra), own.to_vec());
    }

    #[test]
    fn additional_policies_are_merged_into_defaults() {
        let extra = [policy("ocis", &["/extra"]), policy("other", &["/o"])];
        let merged = effective_policies(&[], &extra);
        assert_eq!(merged.len(), 2);
        let defaults = &default_policies()[0];
        assert_eq!(merged[0].routes.len(), defaults.routes.len() + 1);
        assert_eq!(merged[0].routes.last().unwrap().endpoint, "/extra");
        assert_eq!(merged[1], extra[1]);
        assert_eq!(effective_policies(&[], &[]), default_policies());
    }
}
