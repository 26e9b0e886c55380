//! The HTTP client towards the identity provider and the node's memory of the provider's health.
//!
//! One pooled hyper client (keep-alive on: every cache miss costs a userinfo call, and a new TLS
//! handshake each time, as oCIS does, would double the provider's load), a deadline per call and
//! a cap on answer bodies, so a misbehaving provider can neither hold a request forever nor fill
//! the node's memory.
//!
//! Each call ends in one of three ways, which decide 401 versus 503 upstream (spec §4.1
//! "temporarily unavailable"): success (200), a *transient* failure (timeout, connection error,
//! 429/500/502/503/504) or a *permanent* one (any other status, an oversized body). After a
//! transient failure the [`Gate`] closes: for the `Retry-After` of a 429/503 (seconds, capped),
//! or for an exponential back-off of 1 s doubling to 30 s. While it is closed, calls fail at once
//! without reaching the provider, which gives a struggling provider room to recover instead of
//! a retry storm from every node. The first success opens it and resets the back-off.
//!
//! Every call that reaches the provider is a CLIENT span of the current trace (`gatehouse.idp.call`
//! says which: discovery, JWKS, userinfo, …) and carries the trace context to the provider.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;

use crate::proxy::tls::{Connector, UpstreamTlsError, client_config};
use gatehouse_shared::trace::{self, http as conv, propagate};

/// The longest `Retry-After` honoured: a provider asking for more is asked again after this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const POOL_IDLE: Duration = Duration::from_secs(90);

/// How a call to the provider failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// A recent transient failure closed the gate; nothing was sent.
    Gated { remaining: Duration },
    /// Timeout, connection failure or a retryable status. For gated calls `retry_after` is how
    /// long the gate stays closed.
    Transient {
        reason: String,
        retry_after: Option<Duration>,
        /// The provider gave no answer within the deadline (rather than refusing or failing).
        timed_out: bool,
    },
    /// An answer that will not change by asking again.
    Permanent {
        reason: String,
        status: Option<StatusCode>,
    },
}

/// A 200 answer.
#[derive(Debug, Clone)]
pub struct IdpResponse {
    pub content_type: Option<String>,
    pub body: Bytes,
}

/// The status a successful call answered with (for its span).
trait Answered {
    fn status(&self) -> StatusCode;
}

impl Answered for IdpResponse {
    fn status(&self) -> StatusCode {
        StatusCode::OK
    }
}

impl Answered for RawResponse {
    fn status(&self) -> StatusCode {
        self.status
    }
}

/// An answer of any status, with its headers, for passing through.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// Whether calls may reach the provider, after the transient failures seen so far.
#[derive(Debug, Default)]
pub struct Gate {
    closed_until: Option<Instant>,
    failures: u32,
}

impl Gate {
    /// `Some(remaining)` while closed.
    pub fn check(&self, now: Instant) -> Option<Duration> {
        self.closed_until
            .and_then(|until| until.checked_duration_since(now))
            .filter(|d| !d.is_zero())
    }

    /// Records a transient failure and returns how long the gate stays closed.
    pub fn failed(&mut self, now: Instant, retry_after: Option<Duration>) -> Duration {
        let wait = match retry_after {
            Some(ra) => ra.min(MAX_RETRY_AFTER),
            None => {
                let exp = self.failures.min(16);
                self.failures = self.failures.saturating_add(1);
                BACKOFF_START.saturating_mul(1 << exp).min(BACKOFF_MAX)
            }
        };
        self.closed_until = Some(now + wait);
        wait
    }

    pub fn succeeded(&mut self) {
        self.closed_until = None;
        self.failures = 0;
    }
}

pub struct IdpClient {
    client: Client<Connector, Empty<Bytes>>,
    gate: Mutex<Gate>,
    max_body: usize,
    observer: Option<Arc<dyn IdpObserver>>,
}

/// Told about every call to the identity provider (metrics). `outcome` is `ok`, `rejected`
/// (a permanent answer), `unavailable` (transient) or `backoff` (not sent: backing off);
/// `elapsed` is `None` for calls that were not sent.
pub trait IdpObserver: Send + Sync {
    fn idp_request(&self, endpoint: &str, outcome: &'static str, elapsed: Option<Duration>);
}

impl IdpClient {
    pub fn new(
        insecure: bool,
        connect_timeout: Duration,
        max_body: usize,
    ) -> Result<Self, UpstreamTlsError> {
        let tls = client_config(insecure, None)?;
        let mut builder = Client::builder(TokioExecutor::new());
        builder.pool_timer(TokioTimer::new());
        builder.pool_idle_timeout(POOL_IDLE);
        Ok(Self {
            client: builder.build(Connector::new(tls, Some(connect_timeout))),
            gate: Mutex::new(Gate::default()),
            max_body,
            observer: None,
        })
    }

    pub fn set_observer(&mut self, observer: Arc<dyn IdpObserver>) {
        self.observer = Some(observer);
    }

    fn observe(&self, what: &str, outcome: &'static str, elapsed: Option<Duration>) {
        if let Some(o) = &self.observer {
            o.idp_request(what, outcome, elapsed);
        }
    }

    fn gate(&self) -> std::sync::MutexGuard<'_, Gate> {
        self.gate.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// GET `url` (optionally with a bearer token) within `timeout`. `gated` calls respect and
    /// update the [`Gate`]; background refreshes are not gated, so that their failures do not
    /// turn users away and their successes do not hide a failing request path.
    pub async fn get(
        &self,
        what: &str,
        url: &str,
        bearer: Option<&str>,
        timeout: Duration,
        gated: bool,
    ) -> Result<IdpResponse, CallError> {
        if gated && let Some(remaining) = self.gate().check(Instant::now()) {
            self.observe(what, "backoff", None);
            return Err(CallError::Gated { remaining });
        }
        let mut result = self
            .timed(what, url, timeout, self.exchange(what, url, bearer))
            .await;
        if gated {
            match &mut result {
                Ok(_) => self.gate().succeeded(),
                Err(CallError::Transient { retry_after, .. }) => {
                    let wait = self.gate().failed(Instant::now(), *retry_after);
                    *retry_after = Some(wait);
                }
                Err(_) => {}
            }
        }
        result
    }

    /// GET `url` within `timeout` and return whatever the provider answers. Only transport
    /// failures (and a body over the size cap) are errors; the [`Gate`] is neither consulted
    /// nor updated.
    pub async fn fetch_raw(
        &self,
        what: &str,
        url: &str,
        timeout: Duration,
    ) -> Result<RawResponse, CallError> {
        self.timed(what, url, timeout, self.exchange_raw(what, url))
            .await
    }

    /// Runs one call within `timeout` (running out is transient), as a CLIENT span of the
    /// current trace, and reports its outcome and duration to the observer.
    async fn timed<T: Answered>(
        &self,
        what: &str,
        url: &str,
        timeout: Duration,
        call: impl Future<Output = Result<T, CallError>>,
    ) -> Result<T, CallError> {
        let span = match url.parse::<http::Uri>() {
            Ok(uri) if trace::enabled() => conv::client_span(&Method::GET, &uri, "idp", Some(what)),
            _ => trace::Span::NONE,
        };
        span.set("gatehouse.idp.call", what.to_owned());
        let started = Instant::now();
        let result = match tokio::time::timeout(timeout, span.instrument(call)).await {
            Ok(r) => r,
            Err(_) => Err(CallError::Transient {
                reason: format!("{what}: no answer within {timeout:?}"),
                retry_after: None,
                timed_out: true,
            }),
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(CallError::Transient { .. }) => "unavailable",
            Err(_) => "rejected",
        };
        match &result {
            Ok(answer) => conv::record_client_status(&span, answer.status()),
            Err(CallError::Permanent {
                status: Some(status),
                ..
            }) => conv::record_client_status(&span, *status),
            Err(CallError::Permanent { reason, .. } | CallError::Transient { reason, .. }) => {
                span.fail(outcome, reason.clone());
            }
            Err(CallError::Gated { .. }) => {}
        }
        span.end();
        self.observe(what, outcome, Some(started.elapsed()));
        result
    }

    async fn exchange_raw(&self, what: &str, url: &str) -> Result<RawResponse, CallError> {
        let permanent = |reason: String| CallError::Permanent {
            reason,
            status: None,
        };
        let uri: http::Uri = url
            .parse()
            .map_err(|e| permanent(format!("{what}: invalid URL {url:?}: {e}")))?;
        let mut req = Request::builder()
            .method(Method::GET)
            .uri(uri)
            .body(Empty::new())
            .map_err(|e| permanent(format!("{what}: {e}")))?;
        propagate::inject_current(req.headers_mut());
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| CallError::Transient {
                reason: format!("{what}: {}", error_chain(&e)),
                retry_after: None,
                timed_out: false,
            })?;
        let (parts, body) = resp.into_parts();
        let body = self.read_body(what, body).await?;
        Ok(RawResponse {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    async fn read_body(&self, what: &str, body: hyper::body::Incoming) -> Result<Bytes, CallError> {
        Limited::new(body, self.max_body)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    CallError::Permanent {
                        reason: format!("{what}: answer larger than {} bytes", self.max_body),
                        status: None,
                    }
                } else {
                    CallError::Transient {
                        reason: format!("{what}: reading the answer: {e}"),
                        retry_after: None,
                        timed_out: false,
                    }
                }
            })
    }

    async fn exchange(
        &self,
        what: &str,
        url: &str,
        bearer: Option<&str>,
    ) -> Result<IdpResponse, CallError> {
        let permanent = |reason: String| CallError::Permanent {
            reason,
            status: None,
        };
        let uri: http::Uri = url
            .parse()
            .map_err(|e| permanent(format!("{what}: invalid URL {url:?}: {e}")))?;
        let mut req = Request::builder()
            .method(Method::GET)
            .uri(uri)
            .header(header::ACCEPT, "application/json, application/jwt");
        if let Some(token) = bearer {
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| permanent(format!("{what}: token is not a valid header value")))?;
            req = req.header(header::AUTHORIZATION, value);
        }
        let mut req = req
            .body(Empty::new())
            .map_err(|e| permanent(format!("{what}: {e}")))?;
        propagate::inject_current(req.headers_mut());
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| CallError::Transient {
                reason: format!("{what}: {}", error_chain(&e)),
                retry_after: None,
                timed_out: false,
            })?;
        let status = resp.status();
        if status != StatusCode::OK {
            return Err(classify_status(what, status, resp.headers()));
        }
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = self.read_body(what, resp.into_body()).await?;
        Ok(IdpResponse { content_type, body })
    }
}

fn classify_status(what: &str, status: StatusCode, headers: &http::HeaderMap) -> CallError {
    let reason = format!("{what} answered {status}");
    match status.as_u16() {
        429 | 503 => CallError::Transient {
            reason,
            retry_after: retry_after_secs(headers),
            timed_out: false,
        },
        500 | 502 | 504 => CallError::Transient {
            reason,
            retry_after: None,
            timed_out: false,
        },
        _ => CallError::Permanent {
            reason,
            status: Some(status),
        },
    }
}

/// `Retry-After` in delta-seconds; HTTP dates are ignored (the back-off applies instead).
fn retry_after_secs(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    value.parse::<u64>().ok().map(Duration::from_secs)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_thirty_seconds_and_resets() {
        let t0 = Instant::now();
        let mut gate = Gate::default();
        assert_eq!(gate.check(t0), None);
        let waits: Vec<u64> = (0..7).map(|_| gate.failed(t0, None).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(gate.check(t0), Some(Duration::from_secs(30)));
        assert_eq!(
            gate.check(t0 + Duration::from_secs(29)),
            Some(Duration::from_secs(1))
        );
        assert_eq!(gate.check(t0 + Duration::from_secs(30)), None);
        gate.succeeded();
        assert_eq!(gate.check(t0), None);
        assert_eq!(gate.failed(t0, None), BACKOFF_START);
    }

    #[test]
    fn retry_after_wins_over_backoff_and_is_capped() {
        let t0 = Instant::now();
        let mut gate = Gate::default();
        assert_eq!(
            gate.failed(t0, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        assert_eq!(
            gate.failed(t0, Some(Duration::from_secs(86_400))),
            MAX_RETRY_AFTER
        );
        // Retry-After does not advance the back-off.
        assert_eq!(gate.failed(t0, None), BACKOFF_START);
        assert_eq!(gate.failed(t0, Some(Duration::ZERO)), Duration::ZERO);
        assert_eq!(gate.check(t0), None);
    }

    #[test]
    fn status_classification() {
        let mut headers = http::HeaderMap::new();
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("3"));
        for code in [429u16, 503] {
            let e = classify_status("x", StatusCode::from_u16(code).unwrap(), &headers);
            assert!(
                matches!(e, CallError::Transient { retry_after: Some(d), .. } if d == Duration::from_secs(3)),
                "{code}"
            );
        }
        for code in [500u16, 502, 504] {
            let e = classify_status("x", StatusCode::from_u16(code).unwrap(), &headers);
            assert!(
                matches!(
                    e,
                    CallError::Transient {
                        retry_after: None,
                        ..
                    }
                ),
                "{code}"
            );
        }
        for code in [400u16, 401, 403, 404, 501, 505, 302, 204] {
            let e = classify_status("x", StatusCode::from_u16(code).unwrap(), &headers);
            assert!(matches!(e, CallError::Permanent { .. }), "{code}");
        }
        let mut date = http::HeaderMap::new();
        date.insert(
            header::RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after_secs(&date), None);
    }
}
