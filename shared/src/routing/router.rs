//! The compiled router (spec §1.3): policy selection, then the first matching route.
//!
//! Everything that can be decided once is decided in [`Router::new`]: regular expressions are
//! compiled, backend URLs parsed, query endpoints split, routes bucketed by type and method, and
//! every configuration problem is reported at once. [`Router::route`] then only compares strings;
//! it allocates only to build the `path?query` subject of a protected regex route, at most once
//! per request.
//!
//! Deliberate differences from oCIS (spec §11.1, §11.2):
//! * for each route type, routes restricted to the request method are tried first and then the
//!   generic routes of that type; oCIS instead switches to the method bucket for all later types,
//!   so a `REPORT` that misses the `REPORT` regex never reaches a prefix route (and can panic);
//! * the fallback is the first `/` prefix route of the method bucket, else of the generic bucket,
//!   wherever it sits in the list (oCIS only looks at the first route); no fallback is an error,
//!   never a panic;
//! * an unprotected regex route is matched against the path only and from its start, so neither
//!   text placed in the query string nor text in the middle of a protected path can select it;
//!   protected regex routes still see `path?query`, unanchored, as in oCIS.

use regex::Regex;

use super::config::{PolicyConfig, PolicySelectorConfig, RouteConfig, RouteType};
use super::selector::{Selector, UserProperties};
use super::url::{form_decode_owned, query_first_value_is, raw_query_pairs};

/// A problem in the routing configuration, with the YAML field it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// e.g. `policies[ocis].routes[3].endpoint` or `policy_selector.static.policy`.
    pub field: String,
    pub message: String,
}

impl ConfigIssue {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigIssue {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

fn join_issues(issues: &[ConfigIssue]) -> String {
    issues
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Routing failures. None is retryable: configuration errors stop start-up, request-time errors
/// are answered with 500 (as oCIS does) because they stem from the configuration or the client's
/// selector cookie, not from a transient condition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    #[error("invalid routing configuration: {}", join_issues(.0))]
    InvalidConfig(Vec<ConfigIssue>),
    /// The selector produced a name (from a cookie or a claim) that is not a configured policy.
    /// The name is truncated to 64 characters since it may come from the client.
    #[error("policy {0:?} chosen by the policy selector is not configured")]
    UnknownPolicy(String),
    #[error("no route of policy {policy:?} matches and the policy has no \"/\" fallback route")]
    NoRoute { policy: String },
}

/// What the router needs to know about a request. `path` must already be normalised
/// ([`normalize_path`](super::normalize_path)); `query` is the raw query without `?`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// The raw `Cookie` header; several headers should be joined with `"; "`.
    pub cookie_header: Option<&'a str>,
    /// OIDC claims, when the request is already authenticated (claims selector).
    pub claims: Option<&'a serde_json::Value>,
    /// The resolved user, when known (regex selector).
    pub user: Option<&'a UserProperties>,
}

/// Where a route sends its requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Backend(Backend),
    /// A service name to resolve through the service registry.
    Service(String),
}

/// A static upstream, parsed from the route's `backend` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// `http` or `https`.
    pub scheme: String,
    /// `host[:port]`, also the `Host` header for `apache_vhost` routes.
    pub authority: String,
    /// Prepended to the request path (see [`upstream_path_and_query`](super::upstream_path_and_query)).
    pub base_path: String,
    /// Prepended to the request query.
    pub base_query: Option<String>,
}

/// The route chosen for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteMatch<'a> {
    pub policy: &'a str,
    /// Index of the policy in the router; with `route_index` a stable identity of the route, so
    /// callers can keep per-route data in plain vectors built once from [`Router::routes`].
    pub policy_index: usize,
    /// Index of the route in its policy's `routes` list.
    pub route_index: usize,
    pub target: &'a Target,
    /// Skip proxy authentication.
    pub unprotected: bool,
    /// Send the upstream authority as the `Host` header.
    pub apache_vhost: bool,
    /// Step-up authentication is required (Gatehouse addition).
    pub require_mfa: bool,
    pub endpoint: &'a str,
}

#[derive(Debug)]
enum Matcher {
    Prefix,
    Query {
        path: String,
        /// Decoded, first value per key.
        params: Vec<(String, String)>,
    },
    Regex(Regex),
}

#[derive(Debug)]
struct CompiledRoute {
    index: usize,
    endpoint: String,
    matcher: Matcher,
    target: Target,
    unprotected: bool,
    apache_vhost: bool,
    require_mfa: bool,
}

/// Route indexes of one type, generic and per method, in configuration order.
#[derive(Debug, Default)]
struct Buckets {
    generic: Vec<usize>,
    by_method: Vec<(String, Vec<usize>)>,
}

impl Buckets {
    fn push(&mut self, method: &str, route: usize) {
        if method.is_empty() {
            self.generic.push(route);
        } else if let Some((_, list)) = self.by_method.iter_mut().find(|(m, _)| m == method) {
            list.push(route);
        } else {
            self.by_method.push((method.to_owned(), vec![route]));
        }
    }

    fn for_method(&self, method: &str) -> &[usize] {
        self.by_method
            .iter()
            .find(|(m, _)| m == method)
            .map_or(&[], |(_, list)| list.as_slice())
    }
}

#[derive(Debug)]
struct CompiledPolicy {
    index: usize,
    name: String,
    routes: Vec<CompiledRoute>,
    /// In matching order: query, regex, prefix.
    buckets: [Buckets; 3],
}

const MATCH_ORDER: [RouteType; 3] = [RouteType::Query, RouteType::Regex, RouteType::Prefix];

fn bucket_index(kind: RouteType) -> usize {
    match kind {
        RouteType::Query => 0,
        RouteType::Regex => 1,
        RouteType::Prefix => 2,
    }
}

impl CompiledPolicy {
    fn fallback(&self, method: &str) -> Option<&CompiledRoute> {
        let prefix = &self.buckets[bucket_index(RouteType::Prefix)];
        let first_root = |list: &[usize]| {
            list.iter()
                .map(|&i| &self.routes[i])
                .find(|r| r.endpoint == "/")
        };
        first_root(prefix.for_method(method)).or_else(|| first_root(&prefix.generic))
    }
}

impl CompiledRoute {
    fn matches(
        &self,
        path: &str,
        query: Option<&str>,
        path_and_query: &mut Option<String>,
    ) -> bool {
        match &self.matcher {
            Matcher::Prefix => self.endpoint != "/" && path.starts_with(self.endpoint.as_str()),
            Matcher::Query {
                path: prefix,
                params,
            } => {
                path.starts_with(prefix.as_str())
                    && params
                        .iter()
                        .all(|(k, v)| query_first_value_is(query, k, v))
            }
            Matcher::Regex(re) => match query {
                Some(q) if !self.unprotected => {
                    let subject = path_and_query.get_or_insert_with(|| {
                        let mut s = String::with_capacity(path.len() + q.len() + 1);
                        s.push_str(path);
                        s.push('?');
                        s.push_str(q);
                        s
                    });
                    re.is_match(subject)
                }
                _ => re.is_match(path),
            },
        }
    }
}

fn parse_backend(raw: &str) -> Result<Backend, String> {
    let uri: http::Uri = raw
        .parse()
        .map_err(|e| format!("malformed backend URL {raw:?}: {e}"))?;
    let scheme = match uri.scheme_str() {
        Some(s @ ("http" | "https")) => s.to_owned(),
        Some(other) => {
            return Err(format!(
                "backend URL {raw:?} must use http or https, not {other:?}"
            ));
        }
        None => {
            return Err(format!(
                "backend URL {raw:?} must be absolute (http[s]://host)"
            ));
        }
    };
    let authority = uri
        .authority()
        .ok_or_else(|| format!("backend URL {raw:?} has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!(
            "backend URL {raw:?} must not contain user information"
        ));
    }
    if authority.host().is_empty() {
        return Err(format!("backend URL {raw:?} has no host"));
    }
    Ok(Backend {
        scheme,
        authority: authority.as_str().to_owned(),
        base_path: uri.path().to_owned(),
        base_query: uri.query().filter(|q| !q.is_empty()).map(str::to_owned),
    })
}

fn compile_route(
    policy: &str,
    index: usize,
    route: &RouteConfig,
    issues: &mut Vec<ConfigIssue>,
) -> Option<CompiledRoute> {
    let before = issues.len();
    let field = |name: &str| format!("policies[{policy}].routes[{index}].{name}");
    let endpoint = route.endpoint.as_str();

    let matcher = match route.kind {
        RouteType::Prefix => {
            if !endpoint.starts_with('/') {
                issues.push(ConfigIssue::new(
                    field("endpoint"),
                    format!("prefix endpoint {endpoint:?} must start with '/'"),
                ));
            } else if endpoint.contains('?') {
                issues.push(ConfigIssue::new(
                    field("endpoint"),
                    format!(
                        "prefix endpoint {endpoint:?} contains '?': prefix routes match the path \
                         only, use type: query"
                    ),
                ));
            }
            Matcher::Prefix
        }
        RouteType::Query => {
            let (path, query) = endpoint.split_once('?').unwrap_or((endpoint, ""));
            let mut params: Vec<(String, String)> = Vec::new();
            for (k, v) in raw_query_pairs(query) {
                if let (Some(k), Some(v)) = (form_decode_owned(k), form_decode_owned(v))
                    && !params.iter().any(|(existing, _)| *existing == k)
                {
                    params.push((k, v));
                }
            }
            if !path.starts_with('/') {
                issues.push(ConfigIssue::new(
                    field("endpoint"),
                    format!("query endpoint {endpoint:?} must start with '/'"),
                ));
            }
            if params.is_empty() {
                issues.push(ConfigIssue::new(
                    field("endpoint"),
                    format!("query endpoint {endpoint:?} has no query parameters"),
                ));
            }
            Matcher::Query {
                path: path.to_owned(),
                params,
            }
        }
        // An unprotected regex matches from the start of the path only: unanchored, the default
        // `/ocs/v[12].php/config` would open any protected path that merely contains that text.
        RouteType::Regex => match if route.unprotected {
            Regex::new(&format!("^(?:{endpoint})"))
        } else {
            Regex::new(endpoint)
        } {
            Ok(re) => Matcher::Regex(re),
            Err(e) => {
                issues.push(ConfigIssue::new(
                    field("endpoint"),
                    format!("invalid regular expression: {e}"),
                ));
                Matcher::Prefix
            }
        },
    };

    if !route.method.is_empty() && http::Method::from_bytes(route.method.as_bytes()).is_err() {
        issues.push(ConfigIssue::new(
            field("method"),
            format!("{:?} is not a valid HTTP method", route.method),
        ));
    }

    let backend = if route.backend.is_empty() {
        None
    } else {
        match parse_backend(&route.backend) {
            Ok(b) => Some(b),
            Err(e) => {
                issues.push(ConfigIssue::new(field("backend"), e));
                None
            }
        }
    };
    let target = if !route.service.is_empty() {
        Some(Target::Service(route.service.clone()))
    } else if route.backend.is_empty() {
        issues.push(ConfigIssue::new(
            format!("policies[{policy}].routes[{index}]"),
            "neither backend nor service is set",
        ));
        None
    } else {
        backend.map(Target::Backend)
    };

    if issues.len() != before {
        return None;
    }
    Some(CompiledRoute {
        index,
        endpoint: endpoint.to_owned(),
        matcher,
        target: target?,
        unprotected: route.unprotected,
        apache_vhost: route.apache_vhost,
        require_mfa: route.require_mfa,
    })
}

/// The routing table of all policies plus the policy selector, compiled once.
#[derive(Debug)]
pub struct Router {
    policies: Vec<CompiledPolicy>,
    selector: Selector,
}

impl Router {
    /// Compiles `policies` (normally [`effective_policies`](super::effective_policies)) and the
    /// selector. Without a selector the first policy is always used (as oCIS's router does).
    /// Every problem found is reported in one [`RoutingError::InvalidConfig`].
    pub fn new(
        policies: &[PolicyConfig],
        selector: Option<&PolicySelectorConfig>,
    ) -> Result<Router, RoutingError> {
        let mut issues = Vec::new();
        if policies.is_empty() {
            issues.push(ConfigIssue::new(
                "policies",
                "at least one policy is required",
            ));
        }
        let mut compiled = Vec::with_capacity(policies.len());
        for (pi, policy) in policies.iter().enumerate() {
            if policy.name.is_empty() {
                issues.push(ConfigIssue::new(
                    format!("policies[{pi}].name"),
                    "policy name must not be empty",
                ));
            }
            if policies[..pi].iter().any(|p| p.name == policy.name) {
                issues.push(ConfigIssue::new(
                    format!("policies[{}].name", policy.name),
                    "duplicate policy name",
                ));
            }
            let mut routes = Vec::with_capacity(policy.routes.len());
            let mut buckets: [Buckets; 3] = Default::default();
            for (ri, route) in policy.routes.iter().enumerate() {
                if let Some(r) = compile_route(&policy.name, ri, route, &mut issues) {
                    buckets[bucket_index(route.kind)].push(&route.method, routes.len());
                    routes.push(r);
                }
            }
            compiled.push(CompiledPolicy {
                index: pi,
                name: policy.name.clone(),
                routes,
                buckets,
            });
        }

        let default_selector;
        let selector_cfg = match selector {
            Some(s) => s,
            None => {
                default_selector = PolicySelectorConfig::static_policy(
                    policies
                        .first()
                        .map(|p| p.name.as_str())
                        .unwrap_or_default(),
                );
                &default_selector
            }
        };
        let is_known = |name: &str| policies.iter().any(|p| p.name == name);
        let selector = Selector::compile(selector_cfg, &is_known, &mut issues);

        match selector {
            Some(selector) if issues.is_empty() => Ok(Router {
                policies: compiled,
                selector,
            }),
            _ => Err(RoutingError::InvalidConfig(issues)),
        }
    }

    /// The cookie a claims or regex selector reads (for the selector-cookie middleware).
    pub fn selector_cookie_name(&self) -> Option<&str> {
        self.selector.cookie_name()
    }

    /// The configured policy the selector chooses for `req`.
    pub fn select_policy<'a>(&'a self, req: &RouteRequest<'_>) -> Result<&'a str, RoutingError> {
        self.policy_for(req).map(|p| p.name.as_str())
    }

    fn policy_for(&self, req: &RouteRequest<'_>) -> Result<&CompiledPolicy, RoutingError> {
        let name = self.selector.select(req);
        self.policies
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| RoutingError::UnknownPolicy(name.chars().take(64).collect()))
    }

    /// Every route of every policy, in configuration order.
    pub fn routes(&self) -> impl Iterator<Item = RouteMatch<'_>> {
        self.policies
            .iter()
            .flat_map(|p| p.routes.iter().map(move |r| route_match(p, r)))
    }

    /// Chooses the route for `req`: query, then regex, then prefix routes; within each type the
    /// routes restricted to the request method first, then the generic ones, each in
    /// configuration order; finally the `/` fallback.
    pub fn route<'a>(&'a self, req: &RouteRequest<'_>) -> Result<RouteMatch<'a>, RoutingError> {
        let policy = self.policy_for(req)?;
        let query = req.query.filter(|q| !q.is_empty());
        let mut path_and_query = None;
        for kind in MATCH_ORDER {
            let buckets = &policy.buckets[bucket_index(kind)];
            for &i in buckets
                .for_method(req.method)
                .iter()
                .chain(&buckets.generic)
            {
                let route = &policy.routes[i];
                if route.matches(req.path, query, &mut path_and_query) {
                    return Ok(route_match(policy, route));
                }
            }
        }
        policy
            .fallback(req.method)
            .map(|route| route_match(policy, route))
            .ok_or_else(|| RoutingError::NoRoute {
                policy: policy.name.clone(),
            })
    }
}

fn route_match<'a>(policy: &'a CompiledPolicy, route: &'a CompiledRoute) -> RouteMatch<'a> {
    RouteMatch {
        policy: &policy.name,
        policy_index: policy.index,
        route_index: route.index,
        target: &route.target,
        unprotected: route.unprotected,
        apache_vhost: route.apache_vhost,
        require_mfa: route.require_mfa,
        endpoint: &route.endpoint,
    }
}
