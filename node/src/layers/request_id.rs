//! Request ids (spec §3.3): every request gets one, the upstream sees it in `X-Request-Id`, and the
//! client gets it back on every response, so one id ties together the client's report, the access
//! log line and the upstream's logs.
//!
//! A client-supplied `X-Request-Id` is kept when it is at most 128 visible ASCII characters;
//! anything else (empty, too long, spaces, control or non-ASCII bytes) is replaced by a generated
//! id, so log lines cannot be forged or bloated through it. Generated ids have chi's shape,
//! `<hostname>/<10 random base62 chars>-<6-digit counter>`: the prefix is drawn once per generator,
//! the counter increments per request.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use http::header::HeaderName;
use http::{HeaderValue, Request, Response};
use rand::Rng as _;
use rand::distributions::Alphanumeric;
use tower::{Layer, Service};

use crate::context::RequestId;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

const MAX_LEN: usize = 128;

/// Whether a client-supplied id is kept.
pub fn is_acceptable(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty() && bytes.len() <= MAX_LEN && bytes.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// Generates chi-style request ids.
pub struct IdGenerator {
    prefix: String,
    counter: AtomicU64,
}

impl IdGenerator {
    /// A generator for this machine's host name.
    pub fn from_hostname() -> Self {
        Self::new(&gethostname::gethostname().to_string_lossy())
    }

    pub fn new(hostname: &str) -> Self {
        let mut host: String = hostname
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(64)
            .collect();
        if host.is_empty() {
            host.push_str("localhost");
        }
        let random: String = rand::thread_rng()
            .sample_iter(&Alphanumeric)
            .take(10)
            .map(char::from)
            .collect();
        Self {
            prefix: format!("{host}/{random}"),
            counter: AtomicU64::new(0),
        }
    }

    pub fn next_id(&self) -> HeaderValue {
        let n = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        // `{prefix}-{n:06}`, without the formatting machinery (most of a microsecond).
        let mut digits = [b'0'; 20];
        let mut at = digits.len();
        let mut rest = n;
        while rest > 0 {
            at -= 1;
            digits[at] = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        let start = at.min(digits.len() - 6);
        // Written once, into the buffer the header value then shares.
        let mut id = bytes::BytesMut::with_capacity(self.prefix.len() + 1 + digits.len() - start);
        id.extend_from_slice(self.prefix.as_bytes());
        id.extend_from_slice(b"-");
        id.extend_from_slice(&digits[start..]);
        // The prefix and the counter are visible ASCII by construction.
        HeaderValue::from_maybe_shared(id.freeze())
            .unwrap_or_else(|_| HeaderValue::from_static("invalid-request-id"))
    }
}

#[derive(Clone)]
pub struct RequestIdLayer {
    generator: Arc<IdGenerator>,
}

impl RequestIdLayer {
    pub fn new(generator: Arc<IdGenerator>) -> Self {
        Self { generator }
    }
}

impl Default for RequestIdLayer {
    fn default() -> Self {
        Self::new(Arc::new(IdGenerator::from_hostname()))
    }
}

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService {
            inner,
            generator: Arc::clone(&self.generator),
        }
    }
}

#[derive(Clone)]
pub struct RequestIdService<S> {
    inner: S,
    generator: Arc<IdGenerator>,
}

impl<S, B, R> Service<Request<B>> for RequestIdService<S>
where
    S: Service<Request<B>, Response = Response<R>>,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = RequestIdFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let value = match req.headers().get(&X_REQUEST_ID) {
            Some(v) if is_acceptable(v) => v.clone(),
            _ => self.generator.next_id(),
        };
        // `insert` also collapses repeated X-Request-Id headers into the one we chose.
        req.headers_mut()
            .insert(X_REQUEST_ID.clone(), value.clone());
        req.extensions_mut().insert(RequestId(value.clone()));
        RequestIdFuture {
            inner: self.inner.call(req),
            value: Some(value),
        }
    }
}

pin_project_lite::pin_project! {
    pub struct RequestIdFuture<F> {
        #[pin]
        inner: F,
        value: Option<HeaderValue>,
    }
}

impl<F, R, E> Future for RequestIdFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut result = ready!(this.inner.poll(cx));
        if let (Ok(resp), Some(value)) = (&mut result, this.value.take()) {
            resp.headers_mut().insert(X_REQUEST_ID.clone(), value);
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http::StatusCode;
    use tower::{ServiceExt as _, service_fn};

    use super::*;

    /// Echoes what the upstream would see: the request header and the extension.
    async fn echo(req: Request<()>) -> Result<Response<(String, String)>, Infallible> {
        let header: Vec<_> = req.headers().get_all(&X_REQUEST_ID).iter().collect();
        assert!(
            header.len() <= 1,
            "a single X-Request-Id reaches the upstream"
        );
        let header = header
            .first()
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let ext = req
            .extensions()
            .get::<RequestId>()
            .map(|r| r.as_str().to_owned())
            .unwrap_or_default();
        let mut resp = Response::new((header, ext));
        *resp.status_mut() = StatusCode::BAD_GATEWAY;
        // An upstream's own id must not win over ours.
        resp.headers_mut()
            .insert(X_REQUEST_ID.clone(), HeaderValue::from_static("upstream"));
        Ok(resp)
    }

    async fn run(layer: &RequestIdLayer, incoming: Option<&[u8]>) -> Response<(String, String)> {
        let mut req = Request::new(());
        if let Some(v) = incoming {
            req.headers_mut()
                .insert(X_REQUEST_ID.clone(), HeaderValue::from_bytes(v).unwrap());
        }
        layer.layer(service_fn(echo)).oneshot(req).await.unwrap()
    }

    fn assert_generated(id: &str, host: &str) {
        let (prefix, counter) = id.rsplit_once('-').expect("counter suffix");
        let (h, random) = prefix.split_once('/').expect("host/random");
        assert_eq!(h, host);
        assert_eq!(random.len(), 10);
        assert!(random.chars().all(|c| c.is_ascii_alphanumeric()));
        assert!(
            counter.len() >= 6 && counter.chars().all(|c| c.is_ascii_digit()),
            "{id}"
        );
    }

    #[tokio::test]
    async fn generates_chi_style_ids_and_propagates_them() {
        let layer = RequestIdLayer::new(Arc::new(IdGenerator::new("node-1")));
        let first = run(&layer, None).await;
        let second = run(&layer, None).await;
        let (upstream_saw, ext) = first.body();
        let returned = first.headers()[&X_REQUEST_ID].to_str().unwrap();
        assert_generated(returned, "node-1");
        assert_eq!(upstream_saw, returned);
        assert_eq!(ext, returned);
        assert!(returned.ends_with("-000001"), "{returned}");
        let second_id = second.headers()[&X_REQUEST_ID].to_str().unwrap();
        assert!(second_id.ends_with("-000002"), "{second_id}");
        assert_eq!(
            returned.rsplit_once('-').unwrap().0,
            second_id.rsplit_once('-').unwrap().0
        );
    }

    #[tokio::test]
    async fn keeps_a_sane_client_id_on_error_responses_too() {
        let layer = RequestIdLayer::new(Arc::new(IdGenerator::new("h")));
        let resp = run(&layer, Some(b"client-abc_123")).await;
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(resp.headers().get_all(&X_REQUEST_ID).iter().count(), 1);
        assert_eq!(resp.headers()[&X_REQUEST_ID], "client-abc_123");
        assert_eq!(resp.body().0, "client-abc_123");
        assert_eq!(resp.body().1, "client-abc_123");
    }

    #[tokio::test]
    async fn replaces_unacceptable_client_ids() {
        let layer = RequestIdLayer::new(Arc::new(IdGenerator::new("h")));
        let long = vec![b'a'; 129];
        let max = vec![b'a'; 128];
        for bad in [
            &b"has space"[..],
            b"",
            b"tab\there",
            b"\xc3\xa9t\xc3\xa9",
            &long,
        ] {
            let resp = run(&layer, Some(bad)).await;
            assert_generated(resp.headers()[&X_REQUEST_ID].to_str().unwrap(), "h");
            assert_eq!(
                resp.body().0,
                resp.headers()[&X_REQUEST_ID].to_str().unwrap()
            );
        }
        let resp = run(&layer, Some(&max)).await;
        assert_eq!(resp.headers()[&X_REQUEST_ID].as_bytes(), &max[..]);
    }

    #[test]
    fn hostname_is_sanitised() {
        let id = IdGenerator::new("my host\n").next_id();
        assert_generated(id.to_str().unwrap(), "myhost");
        let id = IdGenerator::new("").next_id();
        assert_generated(id.to_str().unwrap(), "localhost");
    }

    #[test]
    fn the_counter_is_zero_padded_to_six_digits_and_grows_past_them() {
        let generator = IdGenerator::new("h");
        let first = generator.next_id();
        assert!(first.to_str().unwrap().ends_with("-000001"), "{first:?}");
        generator.counter.store(1_234_566, Ordering::Relaxed);
        let later = generator.next_id();
        assert!(later.to_str().unwrap().ends_with("-1234567"), "{later:?}");
        generator.counter.store(u64::MAX - 1, Ordering::Relaxed);
        let last = generator.next_id();
        assert!(
            later
                .to_str()
                .unwrap()
                .starts_with(first.to_str().unwrap().trim_end_matches("-000001"))
        );
        assert!(
            last.to_str().unwrap().ends_with(&format!("-{}", u64::MAX)),
            "{last:?}"
        );
    }
}
