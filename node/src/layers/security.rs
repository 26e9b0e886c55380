//! Security response headers (CSP, nosniff, frame options, HSTS, …; spec §6.2) on every response
//! the gateway sends, including its own error responses and redirects. HSTS depends on whether the
//! client connection is TLS, which the server records in [`ConnInfo`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use tower::{Layer, Service};

use crate::context::ConnInfo;
use gatehouse_shared::security::SecurityHeaders;

#[derive(Clone)]
pub struct SecurityLayer {
    headers: Arc<SecurityHeaders>,
}

impl SecurityLayer {
    pub fn new(headers: SecurityHeaders) -> Self {
        Self {
            headers: Arc::new(headers),
        }
    }
}

impl<S> Layer<S> for SecurityLayer {
    type Service = Security<S>;
    fn layer(&self, inner: S) -> Security<S> {
        Security {
            inner,
            headers: self.headers.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Security<S> {
    inner: S,
    headers: Arc<SecurityHeaders>,
}

impl<S, B, RB> Service<Request<B>> for Security<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = SecurityFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let tls = req.extensions().get::<ConnInfo>().is_some_and(|c| c.tls);
        SecurityFuture {
            inner: self.inner.call(req),
            headers: self.headers.clone(),
            tls,
        }
    }
}

pin_project_lite::pin_project! {
    pub struct SecurityFuture<F> {
        #[pin]
        inner: F,
        headers: Arc<SecurityHeaders>,
        tls: bool,
    }
}

impl<F, RB, E> Future for SecurityFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<RB>, E>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut resp = ready!(this.inner.poll(cx))?;
        this.headers.apply(resp.headers_mut(), *this.tls);
        Poll::Ready(Ok(resp))
    }
}
