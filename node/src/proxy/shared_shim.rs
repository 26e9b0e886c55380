//! TODO(merge): temporary stand-ins for `gatehouse_shared::{routing, security}`, which other helpers
//! implement in parallel. The signatures follow the agreed API so that the merge is a change of
//! `use` paths (`crate::proxy::shared_shim::X` → `gatehouse_shared::X`) plus deleting this file.
//! Behaviour is the minimum the node's own tests need: prefix routes only, no selectors.

pub mod routing {
    use std::borrow::Cow;

    pub use gatehouse_shared::routing::{PolicyConfig, PolicySelectorConfig};

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Backend {
        pub scheme: String,
        pub authority: String,
        pub base_path: String,
        pub base_query: Option<String>,
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Target {
        Backend(Backend),
        Service(String),
    }

    #[derive(Debug, thiserror::Error)]
    pub enum RoutingError {
        #[error("no route matches")]
        NoRoute,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("invalid request path")]
    pub struct PathError;

    pub struct RouteRequest<'a> {
        pub method: &'a str,
        pub path: &'a str,
        pub query: Option<&'a str>,
        pub cookie_header: Option<&'a str>,
        pub claims: Option<()>,
        pub user: Option<()>,
    }

    #[derive(Debug)]
    pub struct RouteMatch<'a> {
        pub policy: &'a str,
        pub route_index: usize,
        pub target: &'a Target,
        pub unprotected: bool,
        pub apache_vhost: bool,
        pub endpoint: &'a str,
    }

    /// One prefix route of the shim router.
    #[derive(Debug, Clone)]
    pub struct ShimRoute {
        pub endpoint: String,
        pub target: Target,
        pub unprotected: bool,
        pub apache_vhost: bool,
    }

    #[derive(Debug, Default)]
    pub struct Router {
        routes: Vec<ShimRoute>,
    }

    impl Router {
        pub fn new(
            _policies: &[PolicyConfig],
            _selector: Option<&PolicySelectorConfig>,
        ) -> Result<Router, RoutingError> {
            Ok(Router::default())
        }

        /// Shim-only constructor used by the node's tests.
        pub fn from_routes(routes: Vec<ShimRoute>) -> Router {
            Router { routes }
        }

        pub fn route(&self, req: &RouteRequest<'_>) -> Result<RouteMatch<'_>, RoutingError> {
            let found = self
                .routes
                .iter()
                .enumerate()
                .find(|(_, r)| r.endpoint != "/" && req.path.starts_with(r.endpoint.as_str()))
                .or_else(|| {
                    self.routes
                        .iter()
                        .enumerate()
                        .find(|(_, r)| r.endpoint == "/")
                });
            let (i, r) = found.ok_or(RoutingError::NoRoute)?;
            Ok(RouteMatch {
                policy: "ocis",
                route_index: i,
                target: &r.target,
                unprotected: r.unprotected,
                apache_vhost: r.apache_vhost,
                endpoint: &r.endpoint,
            })
        }
    }

    pub fn effective_policies(
        policies: &[PolicyConfig],
        additional: &[PolicyConfig],
    ) -> Vec<PolicyConfig> {
        if policies.is_empty() {
            additional.to_vec()
        } else {
            policies.to_vec()
        }
    }

    pub fn upstream_path_and_query(
        base_path: &str,
        base_query: Option<&str>,
        path: &str,
        query: Option<&str>,
    ) -> String {
        let mut out = String::with_capacity(base_path.len() + path.len() + 2);
        match (base_path.ends_with('/'), path.starts_with('/')) {
            (true, true) => {
                out.push_str(base_path);
                out.push_str(&path[1..]);
            }
            (false, false) => {
                out.push_str(base_path);
                out.push('/');
                out.push_str(path);
            }
            _ => {
                out.push_str(base_path);
                out.push_str(path);
            }
        }
        if out.is_empty() {
            out.push('/');
        }
        let q = match (
            base_query.filter(|q| !q.is_empty()),
            query.filter(|q| !q.is_empty()),
        ) {
            (Some(a), Some(b)) => Some(Cow::Owned(format!("{a}&{b}"))),
            (Some(a), None) => Some(Cow::Borrowed(a)),
            (None, Some(b)) => Some(Cow::Borrowed(b)),
            (None, None) => None,
        };
        if let Some(q) = q {
            out.push('?');
            out.push_str(&q);
        }
        out
    }

    pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, PathError> {
        if !path.starts_with('/') || path.contains('\\') {
            return Err(PathError);
        }
        let lower = path.to_ascii_lowercase();
        if lower.contains("%2e") || lower.contains("%2f") || lower.contains("%5c") {
            return Err(PathError);
        }
        if !path.split('/').any(|s| s == "." || s == "..") && !path.contains("//") {
            return Ok(Cow::Borrowed(path));
        }
        let mut out: Vec<&str> = Vec::new();
        for seg in path.split('/').skip(1) {
            match seg {
                "" | "." => {}
                ".." => {
                    if out.pop().is_none() {
                        return Err(PathError);
                    }
                }
                s => out.push(s),
            }
        }
        let mut s = String::from("/");
        s.push_str(&out.join("/"));
        if path.ends_with('/') && s.len() > 1 {
            s.push('/');
        }
        Ok(Cow::Owned(s))
    }
}

pub mod security {
    use std::path::Path;

    use http::header::{HeaderMap, HeaderName, HeaderValue};

    #[derive(Debug, thiserror::Error)]
    #[error("invalid CSP: {0}")]
    pub struct CspError(pub String);

    #[derive(Debug, Clone)]
    pub struct Csp {
        value: String,
    }

    impl Csp {
        pub fn load(
            path: Option<&Path>,
            _env: &dyn Fn(&str) -> Option<String>,
        ) -> Result<Csp, CspError> {
            match path {
                Some(p) => std::fs::read_to_string(p)
                    .map(|_| Csp {
                        value: "default-src 'none'".into(),
                    })
                    .map_err(|e| CspError(format!("{}: {e}", p.display()))),
                None => Ok(Csp {
                    value: "default-src 'none'; frame-ancestors 'self'".into(),
                }),
            }
        }
    }

    #[derive(Debug, Clone)]
    pub struct SecurityHeaders {
        fixed: Vec<(HeaderName, HeaderValue)>,
        hsts: HeaderValue,
        force_hsts: bool,
    }

    impl SecurityHeaders {
        pub fn new(csp: &Csp, force_hsts: bool) -> Self {
            let csp = HeaderValue::from_str(&csp.value)
                .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"));
            let s = HeaderValue::from_static;
            Self {
                fixed: vec![
                    (http::header::CONTENT_SECURITY_POLICY, csp),
                    (http::header::X_CONTENT_TYPE_OPTIONS, s("nosniff")),
                    (http::header::X_FRAME_OPTIONS, s("SAMEORIGIN")),
                    (http::header::REFERRER_POLICY, s("no-referrer")),
                    (
                        HeaderName::from_static("x-permitted-cross-domain-policies"),
                        s("none"),
                    ),
                    (HeaderName::from_static("x-robots-tag"), s("none")),
                ],
                hsts: s("max-age=315360000; includeSubDomains; preload"),
                force_hsts,
            }
        }

        pub fn apply(&self, headers: &mut HeaderMap, request_is_tls: bool) {
            for (k, v) in &self.fixed {
                headers.insert(k.clone(), v.clone());
            }
            if request_is_tls || self.force_hsts {
                headers.insert(http::header::STRICT_TRANSPORT_SECURITY, self.hsts.clone());
            }
        }
    }

    pub fn https_redirect(
        trusted_url: &str,
        forwarded_proto: Option<&str>,
        path: &str,
        query: Option<&str>,
    ) -> Option<String> {
        if !matches!(forwarded_proto, Some("http") | Some("HTTP")) {
            return None;
        }
        let host = trusted_url
            .strip_prefix("https://")
            .or_else(|| trusted_url.strip_prefix("http://"))?
            .trim_end_matches('/');
        if host.is_empty() {
            return None;
        }
        Some(match query {
            Some(q) if !q.is_empty() => format!("https://{host}{path}?{q}"),
            _ => format!("https://{host}{path}"),
        })
    }
}
