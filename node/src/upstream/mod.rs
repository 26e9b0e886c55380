//! Turns a route target (a static backend, or a service name) into the base URL of one upstream.
//!
//! A `backend` target names its URL directly. A `service` target is looked up first in the static
//! `services` map of the configuration (round-robin over its URLs, skipping for a while a URL that
//! refused a connection), then in the oCIS NATS service registry when one is configured. Nothing in
//! here performs I/O on the request path: the registry is read from its local copy.

mod balancer;
mod late_registry;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::uri::{Authority, Scheme};

pub use balancer::{Balancer, Pick};
use gatehouse_shared::routing::Backend;
pub use late_registry::LateRegistry;

/// Where service names are looked up when the `services` map does not know them. Implemented for
/// the NATS service registry; tests use a fixed map.
pub trait ServiceNodes: Send + Sync {
    /// Base URLs (`http://host:port`) of the live nodes of `service`, without a network call.
    fn nodes(&self, service: &str) -> Vec<String>;
}

impl ServiceNodes for gatehouse_nats::ServiceRegistry {
    fn nodes(&self, service: &str) -> Vec<String> {
        gatehouse_nats::ServiceRegistry::nodes(self, service)
    }
}

/// A parsed upstream base URL: scheme and authority go into the outgoing URI, `base_path` is
/// joined with the request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamBase {
    pub scheme: Scheme,
    pub authority: Authority,
    pub base_path: String,
    pub base_query: Option<String>,
    /// The URL as configured, for logs and the access log.
    pub url: Arc<str>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UpstreamUrlError {
    #[error("upstream URL {0:?} is not an absolute http(s) URL")]
    Invalid(String),
}

impl UpstreamBase {
    pub fn parse(url: &str) -> Result<Self, UpstreamUrlError> {
        let invalid = || UpstreamUrlError::Invalid(url.to_owned());
        let uri: http::Uri = url.parse().map_err(|_| invalid())?;
        let scheme = uri.scheme().cloned().ok_or_else(invalid)?;
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(invalid());
        }
        let authority = uri.authority().cloned().ok_or_else(invalid)?;
        let (base_path, base_query) = match uri.path_and_query() {
            Some(pq) => (pq.path().to_owned(), pq.query().map(str::to_owned)),
            None => (String::new(), None),
        };
        let base_path = if base_path == "/" && !url.ends_with('/') {
            String::new()
        } else {
            base_path
        };
        Ok(Self {
            scheme,
            authority,
            base_path,
            base_query,
            url: Arc::from(url),
        })
    }
}

/// The upstream chosen for one request. `report_refused` must be called when connecting to it
/// failed, so that the balancer skips it for a while.
#[derive(Debug, Clone)]
pub struct Chosen {
    pub base: Arc<UpstreamBase>,
    pick: Option<Pick>,
}

impl Chosen {
    /// A static backend: nothing to balance, nothing to mark unhealthy.
    pub fn fixed(base: Arc<UpstreamBase>) -> Self {
        Self { base, pick: None }
    }

    pub fn report_refused(&self) {
        if let Some(pick) = &self.pick {
            pick.mark_unhealthy();
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("service {0:?} is not in the services map and has no registered node")]
    NoNode(String),
    #[error("registry returned an unusable node URL: {0}")]
    BadNode(#[from] UpstreamUrlError),
}

/// Resolves targets; built once at start-up, shared by all requests.
pub struct Resolver {
    services: HashMap<String, Balancer>,
    registry: Option<Arc<dyn ServiceNodes>>,
    registry_rr: AtomicUsize,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("services", &self.services.keys().collect::<Vec<_>>())
            .field("registry", &self.registry.is_some())
            .finish()
    }
}

impl Resolver {
    /// `services` is the configuration's service-name → URLs map; every URL is validated here so
    /// that a typo stops start-up.
    pub fn new(
        services: &std::collections::BTreeMap<String, Vec<String>>,
        registry: Option<Arc<dyn ServiceNodes>>,
        unhealthy_backoff: Duration,
    ) -> Result<Self, UpstreamUrlError> {
        let mut map = HashMap::with_capacity(services.len());
        for (name, urls) in services {
            let bases = urls
                .iter()
                .map(|u| UpstreamBase::parse(u).map(Arc::new))
                .collect::<Result<Vec<_>, _>>()?;
            if !bases.is_empty() {
                map.insert(name.clone(), Balancer::new(bases, unhealthy_backoff));
            }
        }
        Ok(Self {
            services: map,
            registry,
            registry_rr: AtomicUsize::new(0),
        })
    }

    /// Picks a base URL for a service name: the `services` map first, then the registry.
    pub fn resolve_service(&self, name: &str) -> Result<Chosen, ResolveError> {
        if let Some(balancer) = self.services.get(name) {
            let pick = balancer.pick();
            return Ok(Chosen {
                base: pick.base().clone(),
                pick: Some(pick),
            });
        }
        let nodes = self
            .registry
            .as_ref()
            .map(|r| r.nodes(name))
            .unwrap_or_default();
        if nodes.is_empty() {
            return Err(ResolveError::NoNode(name.to_owned()));
        }
        let i = self.registry_rr.fetch_add(1, Ordering::Relaxed) % nodes.len();
        Ok(Chosen {
            base: Arc::new(UpstreamBase::parse(&nodes[i])?),
            pick: None,
        })
    }
}

/// The base URL of a static `backend` route, parsed once when the pipeline is built.
pub fn backend_base(b: &Backend) -> Result<Arc<UpstreamBase>, UpstreamUrlError> {
    let url = format!("{}://{}{}", b.scheme, b.authority, b.base_path);
    let mut base = UpstreamBase::parse(&url)?;
    base.base_path = b.base_path.clone();
    base.base_query = b.base_query.clone();
    Ok(Arc::new(base))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    struct FixedRegistry(Vec<String>);
    impl ServiceNodes for FixedRegistry {
        fn nodes(&self, _service: &str) -> Vec<String> {
            self.0.clone()
        }
    }

    #[test]
    fn parses_base_urls() {
        let b = UpstreamBase::parse("http://127.0.0.1:9100").unwrap();
        assert_eq!(b.authority.as_str(), "127.0.0.1:9100");
        assert_eq!(b.base_path, "");
        let b = UpstreamBase::parse("https://h/base/?x=1").unwrap();
        assert_eq!(b.scheme, Scheme::HTTPS);
        assert_eq!(b.base_path, "/base/");
        assert_eq!(b.base_query.as_deref(), Some("x=1"));
        assert!(UpstreamBase::parse("ftp://h").is_err());
        assert!(UpstreamBase::parse("/relative").is_err());
    }

    #[test]
    fn services_map_wins_then_registry_then_error() {
        let mut services = BTreeMap::new();
        services.insert("svc.a".to_owned(), vec!["http://a1:1".to_owned()]);
        let registry: Arc<dyn ServiceNodes> = Arc::new(FixedRegistry(vec!["http://r1:2".into()]));
        let r = Resolver::new(&services, Some(registry), Duration::from_secs(1)).unwrap();
        let a = r.resolve_service("svc.a").unwrap();
        assert_eq!(&*a.base.url, "http://a1:1");
        let b = r.resolve_service("svc.b").unwrap();
        assert_eq!(&*b.base.url, "http://r1:2");

        let r = Resolver::new(&services, None, Duration::from_secs(1)).unwrap();
        assert!(matches!(
            r.resolve_service("svc.b"),
            Err(ResolveError::NoNode(_))
        ));
    }

    #[test]
    fn invalid_service_url_is_rejected_at_start() {
        let mut services = BTreeMap::new();
        services.insert("s".to_owned(), vec!["not a url".to_owned()]);
        assert!(Resolver::new(&services, None, Duration::from_secs(1)).is_err());
    }

    #[test]
    fn backend_base_keeps_path_and_query() {
        let base = backend_base(&Backend {
            scheme: "http".into(),
            authority: "b:8080".into(),
            base_path: "/base".into(),
            base_query: Some("k=v".into()),
        })
        .unwrap();
        assert_eq!(&*base.url, "http://b:8080/base");
        assert_eq!(base.base_path, "/base");
        assert_eq!(base.base_query.as_deref(), Some("k=v"));
    }
}
