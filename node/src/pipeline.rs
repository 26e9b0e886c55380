//! The request pipeline, assembled in one place and read top to bottom in the order a request
//! travels through it. Everything above the error boundary sees only responses; everything below
//! it reports failures as [`GatewayError`](crate::error::GatewayError), which the boundary turns into the response.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use tower::{Service, ServiceBuilder};

use gatehouse_shared::config::Config;

use crate::context::Body;
use crate::error::ErrorResponseLayer;
use crate::identity::Identity;
use crate::identity::memo::{IdentityMemo, WorkerMemos};
use crate::layers::access_log::{AccessLogBody, AccessLogLayer};
use crate::layers::account::AccountLayer;
use crate::layers::authenticate::AuthenticateLayer;
use crate::layers::endpoints::EndpointsLayer;
use crate::layers::metrics::MetricsLayer;
use crate::layers::redirect::RedirectLayer;
use crate::layers::request_id::RequestIdLayer;
use crate::layers::route::RouteLayer;
use crate::layers::security::SecurityLayer;
use crate::layers::trace::{TraceLayer, TracedBody};
use crate::proxy::forwarded::{TrustedProxies, TrustedProxyError};
use crate::proxy::tls::UpstreamTlsError;
use crate::proxy::{Proxy, ProxyOptions};
use crate::rate_limit::RouteLimits;
use crate::telemetry::Metrics;
use crate::upstream::{Resolver, ServiceNodes, UpstreamUrlError};
use gatehouse_shared::routing::{Router, RoutingError, effective_policies};
use gatehouse_shared::security::{Csp, CspError, SecurityHeaders};
use gatehouse_shared::trace::settings::{self, Trust};

/// The pieces of the pipeline that are built from configuration once at start-up. Cloning is
/// cheap (the tables are shared); every HTTP worker builds its own pipeline from a clone, so each
/// has its own upstream connection pool.
#[derive(Clone)]
pub struct PipelineParts {
    pub route: RouteLayer,
    /// `rate_limits` and the routes they apply to (checked by the route and account layers);
    /// `None` without rules.
    pub rate_limits: Option<Arc<RouteLimits>>,
    pub resolver: Arc<Resolver>,
    pub security: SecurityHeaders,
    pub trusted: Arc<TrustedProxies>,
    pub proxy: ProxyOptions,
    /// `ocis_url`, the only host the HTTPS redirect targets; empty disables it.
    pub public_url: String,
    /// Whose incoming trace context is continued (`tracing.trust_incoming`).
    pub trace_trust: Trust,
    pub metrics: Arc<Metrics>,
    pub identity: Identity,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("invalid route table: {0}")]
    Routing(#[from] RoutingError),
    #[error("invalid content security policy: {0}")]
    Csp(#[from] CspError),
    #[error("invalid upstream URL (a `services` entry or a route backend): {0}")]
    Upstream(#[from] UpstreamUrlError),
    #[error(transparent)]
    TrustedProxies(#[from] TrustedProxyError),
    /// Names `backend_https_cacert` when that file is the cause.
    #[error(transparent)]
    UpstreamTls(#[from] UpstreamTlsError),
}

impl PipelineParts {
    pub fn from_config(
        config: &Config,
        registry: Option<Arc<dyn ServiceNodes>>,
        metrics: Arc<Metrics>,
        identity: Identity,
    ) -> Result<Self, PipelineError> {
        let policies = effective_policies(&config.policies, &config.additional_policies);
        let router = Router::new(&policies, config.policy_selector.as_ref())?;
        let csp_path = (!config.csp_config_file_location.is_empty())
            .then(|| Path::new(&config.csp_config_file_location));
        let csp = Csp::load(csp_path, &|name| std::env::var(name).ok())?;
        let rate_limits = identity
            .rate_limiter
            .clone()
            .map(|limiter| Arc::new(RouteLimits::new(limiter, &router)));
        Ok(Self {
            route: RouteLayer::new(Arc::new(router))?.with_rate_limits(rate_limits.clone()),
            rate_limits,
            resolver: Arc::new(Resolver::new(
                &config.services,
                registry,
                config.upstream.unhealthy_backoff.0,
            )?),
            security: SecurityHeaders::new(&csp, config.http.force_strict_transport_security),
            trusted: Arc::new(TrustedProxies::parse(&config.http.trusted_proxies)?),
            proxy: ProxyOptions::from_config(config)?,
            public_url: config.ocis_url.clone(),
            // Validated when the configuration was loaded.
            trace_trust: settings::trust(&config.tracing).unwrap_or(Trust::TrustedProxies),
            metrics,
            identity,
        })
    }
}

/// The whole request service, outermost layer first.
pub fn build(
    parts: PipelineParts,
) -> impl Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future: Send + 'static,
> + Clone
+ Send
+ Sync
+ 'static {
    // One set of memos per worker: `build` runs once for each worker runtime.
    let memo = Arc::new(WorkerMemos {
        tokens: IdentityMemo::with_epoch(parts.identity.memo_epoch.clone()),
        signed_urls: parts
            .identity
            .signed_url_epoch
            .clone()
            .map(IdentityMemo::with_epoch),
        shares: IdentityMemo::new(),
    });
    ServiceBuilder::new()
        .layer(RequestIdLayer::default())
        .map_response(|r: Response<TracedBody<AccessLogBody<Body>>>| {
            r.map(http_body_util::BodyExt::boxed_unsync)
        })
        .layer(TraceLayer::new(parts.trusted.clone(), parts.trace_trust))
        .layer(AccessLogLayer)
        .layer(MetricsLayer::new(parts.metrics))
        .layer(SecurityLayer::new(parts.security))
        .layer(ErrorResponseLayer)
        .layer(RedirectLayer::new(&parts.public_url))
        // Routing, then the route's `per: address` rate limits.
        .layer(parts.route)
        .layer(AuthenticateLayer::new(
            parts.identity.authenticators.clone(),
            memo.clone(),
        ))
        // The account, then the route's `per: user` rate limits.
        .layer(
            AccountLayer::new(parts.identity.accounts.clone(), memo)
                .with_rate_limits(parts.rate_limits),
        )
        .layer(EndpointsLayer::new(parts.identity.endpoints.clone()))
        .service(Proxy::new(parts.resolver, parts.trusted, &parts.proxy))
}
