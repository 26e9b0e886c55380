//! Policy selectors (spec §1.4): which policy's routes serve a request.
//!
//! Compiled once at start-up; every policy name that comes from the configuration is checked
//! against the configured policies then (oCIS only notices at request time and answers 500).
//! Names that come from the client — the selector cookie — or from the identity provider — the
//! `ocis.routing.policy` claim — can only be checked per request; an unknown one is a
//! [`RoutingError::UnknownPolicy`](super::RoutingError::UnknownPolicy).

use regex::Regex;

use super::config::PolicySelectorConfig;
use super::router::{ConfigIssue, RouteRequest};
use super::url::cookie_value;

/// Cookie that carries the chosen policy when a selector config leaves its name empty.
pub const DEFAULT_SELECTOR_COOKIE_NAME: &str = "owncloud-selector";
/// Top-level OIDC claim read by the claims selector (a single key containing dots).
pub const ROUTING_POLICY_CLAIM: &str = "ocis.routing.policy";

/// The user properties the regex selector can match on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserProperties {
    /// The user's opaque id; empty means unknown (rules on `id` are skipped).
    pub id: String,
    pub username: String,
    pub mail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UserProperty {
    Mail,
    Username,
    Id,
}

#[derive(Debug)]
pub(crate) struct RegexRule {
    property: UserProperty,
    regex: Regex,
    policy: String,
}

#[derive(Debug)]
pub(crate) enum Selector {
    Static(String),
    Claims {
        default_policy: String,
        unauthenticated_policy: String,
        cookie_name: String,
    },
    Regex {
        default_policy: String,
        unauthenticated_policy: String,
        cookie_name: String,
        rules: Vec<RegexRule>,
    },
}

fn cookie_name_or_default(name: &str) -> String {
    if name.is_empty() {
        DEFAULT_SELECTOR_COOKIE_NAME.to_owned()
    } else {
        name.to_owned()
    }
}

impl Selector {
    /// Compiles `cfg`; problems are appended to `issues` and `None` is returned if any was found.
    pub(crate) fn compile(
        cfg: &PolicySelectorConfig,
        is_known_policy: &dyn Fn(&str) -> bool,
        issues: &mut Vec<ConfigIssue>,
    ) -> Option<Selector> {
        let before = issues.len();
        let check_policy = |field: String, name: &str, issues: &mut Vec<ConfigIssue>| {
            if !is_known_policy(name) {
                issues.push(ConfigIssue::new(
                    field,
                    format!("{name:?} is not a configured policy"),
                ));
            }
        };
        let configured = usize::from(cfg.r#static.is_some())
            + usize::from(cfg.claims.is_some())
            + usize::from(cfg.regex.is_some());
        if configured > 1 {
            issues.push(ConfigIssue::new(
                "policy_selector",
                "only one type of policy selector (static, claims or regex) can be configured",
            ));
            return None;
        }
        let selector = if let Some(s) = &cfg.r#static {
            check_policy("policy_selector.static.policy".into(), &s.policy, issues);
            Selector::Static(s.policy.clone())
        } else if let Some(c) = &cfg.claims {
            check_policy(
                "policy_selector.claims.default_policy".into(),
                &c.default_policy,
                issues,
            );
            check_policy(
                "policy_selector.claims.unauthenticated_policy".into(),
                &c.unauthenticated_policy,
                issues,
            );
            Selector::Claims {
                default_policy: c.default_policy.clone(),
                unauthenticated_policy: c.unauthenticated_policy.clone(),
                cookie_name: cookie_name_or_default(&c.selector_cookie_name),
            }
        } else if let Some(r) = &cfg.regex {
            check_policy(
                "policy_selector.regex.default_policy".into(),
                &r.default_policy,
                issues,
            );
            check_policy(
                "policy_selector.regex.unauthenticated_policy".into(),
                &r.unauthenticated_policy,
                issues,
            );
            let mut order: Vec<usize> = (0..r.matches_policies.len()).collect();
            order.sort_by_key(|&i| r.matches_policies[i].priority);
            let mut rules = Vec::with_capacity(order.len());
            for i in order {
                let rule = &r.matches_policies[i];
                let field =
                    |name: &str| format!("policy_selector.regex.matches_policies[{i}].{name}");
                let property = match rule.property.as_str() {
                    "mail" => Some(UserProperty::Mail),
                    "username" => Some(UserProperty::Username),
                    "id" => Some(UserProperty::Id),
                    other => {
                        issues.push(ConfigIssue::new(
                            field("property"),
                            format!("{other:?} is not one of \"mail\", \"username\", \"id\""),
                        ));
                        None
                    }
                };
                let regex = match Regex::new(&rule.r#match) {
                    Ok(re) => Some(re),
                    Err(e) => {
                        issues.push(ConfigIssue::new(
                            field("match"),
                            format!("invalid regular expression: {e}"),
                        ));
                        None
                    }
                };
                check_policy(field("policy"), &rule.policy, issues);
                if let (Some(property), Some(regex)) = (property, regex) {
                    rules.push(RegexRule {
                        property,
                        regex,
                        policy: rule.policy.clone(),
                    });
                }
            }
            Selector::Regex {
                default_policy: r.default_policy.clone(),
                unauthenticated_policy: r.unauthenticated_policy.clone(),
                cookie_name: cookie_name_or_default(&r.selector_cookie_name),
                rules,
            }
        } else {
            issues.push(ConfigIssue::new(
                "policy_selector",
                "missing either a static, claims or regex policy selector",
            ));
            return None;
        };
        (issues.len() == before).then_some(selector)
    }

    /// The cookie that can carry the policy choice, for claims and regex selectors.
    pub(crate) fn cookie_name(&self) -> Option<&str> {
        match self {
            Selector::Static(_) => None,
            Selector::Claims { cookie_name, .. } | Selector::Regex { cookie_name, .. } => {
                Some(cookie_name)
            }
        }
    }

    /// The policy name for `req`; it may name an unknown policy when it came from a cookie or a
    /// claim. An empty cookie counts as absent.
    pub(crate) fn select<'a>(&'a self, req: &RouteRequest<'a>) -> &'a str {
        let cookie = |name: &str| {
            req.cookie_header
                .and_then(|h| cookie_value(h, name))
                .filter(|v| !v.is_empty())
        };
        match self {
            Selector::Static(policy) => policy,
            Selector::Claims {
                default_policy,
                unauthenticated_policy,
                cookie_name,
            } => match req.claims {
                Some(claims) => claims
                    .get(ROUTING_POLICY_CLAIM)
                    .and_then(|v| v.as_str())
                    .filter(|p| !p.is_empty())
                    .or_else(|| cookie(cookie_name))
                    .unwrap_or(default_policy),
                None => cookie(cookie_name).unwrap_or(unauthenticated_policy),
            },
            Selector::Regex {
                default_policy,
                unauthenticated_policy,
                cookie_name,
                rules,
            } => {
                if let Some(policy) = cookie(cookie_name) {
                    return policy;
                }
                let Some(user) = req.user else {
                    return unauthenticated_policy;
                };
                rules
                    .iter()
                    .find(|rule| match rule.property {
                        UserProperty::Mail => rule.regex.is_match(&user.mail),
                        UserProperty::Username => rule.regex.is_match(&user.username),
                        UserProperty::Id => !user.id.is_empty() && rule.regex.is_match(&user.id),
                    })
                    .map_or(default_policy.as_str(), |rule| rule.policy.as_str())
            }
        }
    }
}
