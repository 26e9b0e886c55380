//! The `rate_limits` checks of the request path. The pipeline places one layer per kind of key:
//! the address layer right after routing (a flood costs no authentication), the user layer
//! after the account layer (the user is known only then, from the memo or the resolved
//! account). A request whose route no rule of the layer's kind names passes at the cost of two
//! index lookups.

use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::Either;
use http::{Request, Response};
use tower::{Layer, Service};

use gatehouse_shared::rate_limit::{LimitBy, LimitKey, RateLimitRule, RouteRules};
use gatehouse_shared::routing::Router;

use crate::context::{Body, ConnInfo, SharedTrace};
use crate::error::GatewayError;
use crate::layers::route;
use crate::rate_limit::RateLimiter;

/// The limiter and which of its rules apply to which route; built once per node.
pub struct RouteLimits {
    limiter: Arc<RateLimiter>,
    table: RouteRules,
}

impl RouteLimits {
    pub fn new(limiter: Arc<RateLimiter>, rules: &[RateLimitRule], router: &Router) -> Self {
        let table = RouteRules::new(
            rules,
            router
                .routes()
                .map(|m| (m.policy_index, m.route_index, m.policy, m.endpoint)),
        );
        RouteLimits { limiter, table }
    }
}

#[derive(Clone)]
pub struct RateLimitLayer {
    limits: Option<Arc<RouteLimits>>,
    by: LimitBy,
}

impl RateLimitLayer {
    /// `limits`: `None` when no rule is configured (the layer then only passes requests on).
    pub fn new(limits: Option<Arc<RouteLimits>>, by: LimitBy) -> Self {
        Self { limits, by }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;
    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            limits: self.limits.clone(),
            by: self.by,
        }
    }
}

#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    limits: Option<Arc<RouteLimits>>,
    by: LimitBy,
}

impl<S> RateLimit<S> {
    fn check<B>(&self, req: &Request<B>) -> Result<(), GatewayError> {
        let Some(limits) = &self.limits else {
            return Ok(());
        };
        let Some(routed) = route::routed(req) else {
            return Ok(());
        };
        let rules = limits
            .table
            .rules(routed.policy_index, routed.route_index, self.by);
        if rules.is_empty() {
            return Ok(());
        }
        let key = match self.by {
            LimitBy::Address => req
                .extensions()
                .get::<ConnInfo>()
                .map(|c| LimitKey::address(c.client)),
            LimitBy::User => req
                .extensions()
                .get::<SharedTrace>()
                .and_then(|t| t.user.get())
                .map(|user| LimitKey::User(user.clone())),
        };
        match key {
            Some(key) => limits.limiter.admit(rules, &key, self.by),
            None => Ok(()),
        }
    }
}

impl<S, B> Service<Request<B>> for RateLimit<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = GatewayError>,
{
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = Either<Ready<Result<Response<Body>, GatewayError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        match self.check(&req) {
            Ok(()) => Either::Right(self.inner.call(req)),
            Err(e) => Either::Left(ready(Err(e))),
        }
    }
}
