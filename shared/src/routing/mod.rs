//! Policy routing (spec §1): which upstream serves a request and whether it must be
//! authenticated.
//!
//! The flow per request is: [`normalize_path`] (reject or canonicalise the path, the result is
//! also what goes upstream) → [`Router::route`] (policy selector, then the first matching
//! route) → [`upstream_path_and_query`] (the path and query sent to the chosen target).
//! Configuration types mirror the oCIS `proxy.yaml` keys; [`effective_policies`] applies the
//! `policies` / `additional_policies` rule on top of [`default_policies`].

mod config;
mod path;
mod router;
mod selector;
mod url;

#[cfg(test)]
mod tests;

pub use config::{
    ClaimsSelector, DEFAULT_POLICY_NAME, PolicyConfig, PolicySelectorConfig, RegexRuleConfig,
    RegexSelector, RouteConfig, RouteType, StaticSelector, default_policies, effective_policies,
};
pub use path::{PathError, normalize_path};
pub use router::{Backend, ConfigIssue, RouteMatch, RouteRequest, Router, RoutingError, Target};
pub use selector::{DEFAULT_SELECTOR_COOKIE_NAME, ROUTING_POLICY_CLAIM, UserProperties};
pub use url::{
    cookie_value, single_joining_slash, upstream_path_and_query, upstream_path_is_unchanged,
};
