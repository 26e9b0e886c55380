//! HTTPS redirect (spec §3.6): a request that a TLS-terminating proxy marked with
//! `X-Forwarded-Proto: http` gets a 308 to the configured public URL (`ocis_url`). The target host
//! is never taken from the request, so the redirect cannot be pointed elsewhere; with no public
//! URL configured the layer does nothing.

use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::Either;
use http::header::{HeaderValue, LOCATION};
use http::{Request, Response, StatusCode};
use tower::{Layer, Service};

use crate::context::Body;
use crate::error::empty_body;
use crate::proxy::forwarded::X_FORWARDED_PROTO;
use gatehouse_shared::security::https_redirect;

#[derive(Clone)]
pub struct RedirectLayer {
    trusted_url: Option<Arc<str>>,
}

impl RedirectLayer {
    /// `trusted_url` is `ocis_url`; empty disables the redirect.
    pub fn new(trusted_url: &str) -> Self {
        Self {
            trusted_url: (!trusted_url.is_empty()).then(|| Arc::from(trusted_url)),
        }
    }
}

impl<S> Layer<S> for RedirectLayer {
    type Service = Redirect<S>;
    fn layer(&self, inner: S) -> Redirect<S> {
        Redirect {
            inner,
            trusted_url: self.trusted_url.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Redirect<S> {
    inner: S,
    trusted_url: Option<Arc<str>>,
}

impl<S, B> Service<Request<B>> for Redirect<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response<Body>, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if let Some(url) = &self.trusted_url {
            let proto = req
                .headers()
                .get(&X_FORWARDED_PROTO)
                .and_then(|v| v.to_str().ok());
            if let Some(location) = https_redirect(url, proto, req.uri().path(), req.uri().query())
                && let Ok(location) = HeaderValue::try_from(location)
            {
                let mut resp = Response::new(empty_body());
                *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
                resp.headers_mut().insert(LOCATION, location);
                return Either::Left(ready(Ok(resp)));
            }
        }
        Either::Right(self.inner.call(req))
    }
}
