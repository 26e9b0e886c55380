//! W3C trace context (`traceparent`, `tracestate`) and W3C baggage across process boundaries,
//! through the process-wide propagator the node installs (trace context + baggage, as oCIS).
//! With tracing off the propagator is the no-op one and injection writes nothing.
//!
//! The common case — a context with neither trace state nor baggage — is written here directly:
//! the propagator's general path formats through `core::fmt` and costs several thousand
//! instructions per request (measured with callgrind, docs/performance.md), more than the rest of
//! an unsampled request's tracing together.

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::Context;
use opentelemetry::baggage::BaggageExt as _;
use opentelemetry::global;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{SpanContext, TraceContextExt as _, TraceState};

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
pub const BAGGAGE: HeaderName = HeaderName::from_static("baggage");

/// The headers that carry trace context and baggage.
pub const HEADERS: [HeaderName; 3] = [TRACEPARENT, TRACESTATE, BAGGAGE];

/// Removes every trace-context and baggage header (a client's, before ours are set).
pub fn strip(headers: &mut HeaderMap) {
    for name in &HEADERS {
        headers.remove(name);
    }
}

/// Whether the request carries any trace-context or baggage header. One pass over the names is
/// cheaper than three hashed look-ups of custom header names, for the usual handful of headers.
pub fn carries_context(headers: &HeaderMap) -> bool {
    headers
        .keys()
        .any(|k| matches!(k.as_str(), "traceparent" | "tracestate" | "baggage"))
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // An empty `tracestate` or `baggage` says nothing; it is not sent.
        if value.is_empty() {
            return;
        }
        let name = match key {
            "traceparent" => TRACEPARENT,
            "tracestate" => TRACESTATE,
            "baggage" => BAGGAGE,
            other => match HeaderName::from_bytes(other.as_bytes()) {
                Ok(n) => n,
                Err(_) => return,
            },
        };
        if let Ok(value) = HeaderValue::try_from(value) {
            self.0.insert(name, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// Writes `cx` into `headers` (replacing a `traceparent` there; callers remove a client's
/// `tracestate` and `baggage` first). A context without a valid span context writes nothing.
pub fn inject(cx: &Context, headers: &mut HeaderMap) {
    let span = cx.span();
    let sc = span.span_context();
    if !sc.is_valid() {
        return;
    }
    if *sc.trace_state() == TraceState::default() && cx.baggage().is_empty() {
        headers.insert(TRACEPARENT, format_traceparent(sc));
        return;
    }
    global::get_text_map_propagator(|p| p.inject_context(cx, &mut HeaderInjector(headers)));
}

/// `00-<trace id>-<span id>-<flags>`, the W3C version-00 form.
fn format_traceparent(sc: &SpanContext) -> HeaderValue {
    const HEX_PAIRS: [[u8; 2]; 256] = {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut t = [[0u8; 2]; 256];
        let mut i = 0;
        while i < 256 {
            t[i] = [HEX[i >> 4], HEX[i & 0x0f]];
            i += 1;
        }
        t
    };
    fn put(out: &mut [u8], bytes: &[u8]) {
        for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
            pair.copy_from_slice(&HEX_PAIRS[usize::from(*b)]);
        }
    }
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
    put(&mut out[3..35], &sc.trace_id().to_bytes());
    put(&mut out[36..52], &sc.span_id().to_bytes());
    put(&mut out[53..55], &[sc.trace_flags().to_u8()]);
    HeaderValue::from_bytes(&out).expect("hex digits and dashes are a valid header value")
}

/// What an outgoing request carries: `span`'s context when it records, else the current one
/// (an unsampled trace still propagates its decision). Nothing when tracing is off.
pub fn inject_span(span: &super::Span, headers: &mut HeaderMap) {
    if !super::enabled() {
        return;
    }
    match span.context() {
        Some(cx) => inject(cx, headers),
        None => inject_current(headers),
    }
}

/// [`inject`] with the current context; nothing when tracing is off.
pub fn inject_current(headers: &mut HeaderMap) {
    if !super::enabled() {
        return;
    }
    Context::map_current(|cx| inject(cx, headers));
}

/// The context (remote span context and baggage) `headers` carry; empty if none or invalid.
pub fn extract(headers: &HeaderMap) -> Context {
    global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)))
}

struct Traceparent(Option<String>);

impl Injector for Traceparent {
    fn set(&mut self, key: &str, value: String) {
        if key == "traceparent" {
            self.0 = Some(value);
        }
    }
}

/// `cx` as a `traceparent` value (for event metadata), if it has a valid span context.
pub fn traceparent(cx: &Context) -> Option<String> {
    let span = cx.span();
    let sc = span.span_context();
    if !sc.is_valid() {
        return None;
    }
    if *sc.trace_state() == TraceState::default() {
        return format_traceparent(sc).to_str().ok().map(str::to_owned);
    }
    let mut out = Traceparent(None);
    global::get_text_map_propagator(|p| p.inject_context(cx, &mut out));
    out.0
}

/// The current context as a `traceparent` value, if there is a current span.
pub fn current_traceparent() -> Option<String> {
    Context::map_current(traceparent)
}

struct Single<'a>(&'a str);

impl Extractor for Single<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == "traceparent").then_some(self.0)
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

/// The remote context a `traceparent` value names (empty if it is invalid).
pub fn from_traceparent(traceparent: &str) -> Context {
    global::get_text_map_propagator(|p| p.extract(&Single(traceparent)))
}
