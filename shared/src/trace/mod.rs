//! Request tracing on the OpenTelemetry API, shared by the node and the NATS adapters.
//!
//! Why the API directly and not `tracing` spans bridged by `tracing-opentelemetry`: the bridge
//! records every field of a span before the sampler decides, so an *unsampled* span still costs
//! about 2 µs (../shared/notes/tracing.md), several times per request. Here sampling is decided
//! once, by the request's SERVER span; every other span is a child that is only built when its
//! trace is sampled ([`Span::child`]). An unsampled or untraced request pays one thread-local read
//! per would-be child span and nothing else.
//!
//! The node installs the tracer at start-up ([`install`]) when tracing is enabled; until then
//! (and for good when it is disabled) [`enabled`] is false and every helper here is a no-op.
//! Spans find their parent through the OpenTelemetry context attached to the running future
//! ([`Instrumented`]); work moved to another task must carry the context explicitly
//! (`opentelemetry::context::FutureExt::with_current_context`).
//!
//! - [`propagate`]: W3C `traceparent`/`tracestate`/`baggage` in and out of HTTP headers and strings.
//! - [`http`]: the HTTP semantic conventions (span names, known methods, redacted queries) and the
//!   CLIENT span every outgoing HTTP call of the gateway opens.
//! - [`settings`]: how the tracing configuration (oCIS, OpenTelemetry and Gatehouse settings)
//!   resolves to one exporter plan.

pub mod http;
pub mod propagate;
pub mod settings;

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context as TaskContext, Poll};

use opentelemetry::global::BoxedTracer;
use opentelemetry::trace::{
    Link, Span as _, SpanBuilder, SpanContext, SpanKind, Status, TraceContextExt as _, Tracer as _,
};
use opentelemetry::{Context, KeyValue};

pub use opentelemetry::trace::SpanKind as Kind;

/// The instrumentation scope of every span Gatehouse creates.
pub const SCOPE: &str = "gatehouse";

/// Attribute of a span link that makes the linked trace's sampling decision count for the new
/// trace (the node's sampler honours it). Set only on links to contexts the cluster itself wrote
/// — never on a link to a client's context, which must not be able to force sampling.
pub const CLUSTER_LINK: &str = "gatehouse.link.cluster";

static TRACER: OnceLock<BoxedTracer> = OnceLock::new();

/// Whether the sampler can sample a new trace (a root without a trusted parent or a cluster
/// link). False at ratio 0: the server span then decides without asking the SDK.
static NEW_TRACES_SAMPLED: AtomicBool = AtomicBool::new(true);

/// Makes `tracer` the one every span is started with. `new_traces_sampled` is false when the
/// sampler's ratio for new traces is 0. Returns false if a tracer was installed before (the
/// first stays).
pub fn install(tracer: BoxedTracer, new_traces_sampled: bool) -> bool {
    let fresh = TRACER.set(tracer).is_ok();
    if fresh {
        NEW_TRACES_SAMPLED.store(new_traces_sampled, Ordering::Relaxed);
    }
    fresh
}

/// Whether a new trace (no trusted parent, no cluster link) can be sampled at all.
#[inline]
pub fn new_traces_sampled() -> bool {
    NEW_TRACES_SAMPLED.load(Ordering::Relaxed)
}

/// Whether tracing is on in this process.
#[inline]
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// The installed tracer, if tracing is on.
pub fn tracer() -> Option<&'static BoxedTracer> {
    TRACER.get()
}

/// Whether the context's span belongs to a sampled trace.
pub fn is_sampled(cx: &Context) -> bool {
    cx.span().span_context().is_sampled()
}

/// Whether tracing is on and the current span belongs to a sampled trace (so that a child span
/// would record): lets callers skip preparing what only a recording span needs.
pub fn current_is_sampled() -> bool {
    enabled() && Context::map_current(is_sampled)
}

/// The ids log lines carry: `(trace_id, span_id)` of the current span, if there is one.
pub fn current_ids() -> Option<(opentelemetry::TraceId, opentelemetry::SpanId)> {
    Context::map_current(|cx| {
        let sc = cx.span().span_context().clone();
        sc.is_valid().then(|| (sc.trace_id(), sc.span_id()))
    })
}

/// Sets an attribute on the current span if it records (a fact about the request noted where no
/// span of its own is worth opening).
pub fn set_current(key: &'static str, value: impl Into<opentelemetry::Value>) {
    if !enabled() {
        return;
    }
    Context::map_current(|cx| {
        let span = cx.span();
        if span.is_recording() {
            span.set_attribute(KeyValue::new(key, value));
        }
    });
}

/// Links the current span (if it records) to the trace `cause` belongs to — work of another node
/// this request depends on (`why` says what: `group sync`, `logout`).
pub fn link_current(cause: &Context, why: &'static str) {
    if !enabled() {
        return;
    }
    let sc = cause.span().span_context().clone();
    if !sc.is_valid() {
        return;
    }
    Context::map_current(|cx| {
        let span = cx.span();
        if span.is_recording() {
            span.add_link(
                sc,
                vec![
                    KeyValue::new(CLUSTER_LINK, true),
                    KeyValue::new("gatehouse.link.cause", why),
                ],
            );
        }
    });
}

/// A span that records only when its trace is sampled; otherwise (and with tracing off) it is
/// nothing and every method does nothing. Ended explicitly with [`Span::end`], or when the last
/// context holding it is dropped.
#[derive(Clone, Debug, Default)]
#[must_use = "a span records nothing unless it is kept until the work it measures is done"]
pub struct Span {
    cx: Option<Context>,
}

impl Span {
    /// No span.
    pub const NONE: Span = Span { cx: None };

    /// A child of the current span, built only when the current trace is sampled. Outside a
    /// traced unit of work (no current span) there is no span: background work that deserves a
    /// trace of its own uses [`Span::root`].
    pub fn child(name: impl Into<Cow<'static, str>>, kind: SpanKind) -> Span {
        Self::child_with(|| SpanBuilder::from_name(name).with_kind(kind))
    }

    /// [`Span::child`] with a builder (attributes, links) that is only built when needed.
    pub fn child_with(builder: impl FnOnce() -> SpanBuilder) -> Span {
        if !enabled() {
            return Span::NONE;
        }
        Context::map_current(|parent| Self::child_of(parent, builder))
    }

    /// A child of `parent` (rather than of the current span), built only when `parent` is sampled.
    pub fn child_of(parent: &Context, builder: impl FnOnce() -> SpanBuilder) -> Span {
        let Some(tracer) = tracer() else {
            return Span::NONE;
        };
        if !is_sampled(parent) {
            return Span::NONE;
        }
        let span = tracer.build_with_context(builder(), parent);
        Span {
            cx: Some(parent.with_span(span)),
        }
    }

    /// A new trace, sampled by the node's sampler, optionally linked to the traces that caused
    /// the work (`links`, e.g. a logout another node recorded). For background work only.
    pub fn root(
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        links: Vec<(SpanContext, Vec<KeyValue>)>,
    ) -> Span {
        let Some(tracer) = tracer() else {
            return Span::NONE;
        };
        let links = links
            .into_iter()
            .filter(|(sc, _)| sc.is_valid())
            .map(|(sc, attributes)| Link::new(sc, attributes, 0))
            .collect();
        let builder = SpanBuilder::from_name(name)
            .with_kind(kind)
            .with_links(links);
        let span = tracer.build_with_context(builder, &Context::new());
        if !span.span_context().is_sampled() {
            return Span::NONE;
        }
        Span {
            cx: Some(Context::new().with_span(span)),
        }
    }

    pub fn is_recording(&self) -> bool {
        self.cx.is_some()
    }

    /// The context carrying this span, to parent children or to propagate.
    pub fn context(&self) -> Option<&Context> {
        self.cx.as_ref()
    }

    pub fn set(&self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        if let Some(cx) = &self.cx {
            cx.span().set_attribute(KeyValue::new(key, value));
        }
    }

    /// Sets attributes computed only when the span records.
    pub fn set_with(&self, attributes: impl FnOnce() -> Vec<KeyValue>) {
        if let Some(cx) = &self.cx {
            cx.span().set_attributes(attributes());
        }
    }

    /// Marks the span failed: status ERROR with `message`, and `error.type`.
    pub fn fail(&self, error_type: impl Into<opentelemetry::Value>, message: impl Into<String>) {
        if let Some(cx) = &self.cx {
            let span = cx.span();
            span.set_attribute(KeyValue::new(
                opentelemetry_semantic_conventions::attribute::ERROR_TYPE,
                error_type,
            ));
            span.set_status(Status::error(message.into()));
        }
    }

    pub fn add_link(&self, sc: SpanContext, attributes: Vec<KeyValue>) {
        if let Some(cx) = &self.cx
            && sc.is_valid()
        {
            cx.span().add_link(sc, attributes);
        }
    }

    pub fn update_name(&self, name: impl Into<Cow<'static, str>>) {
        if let Some(cx) = &self.cx {
            cx.span().update_name(name);
        }
    }

    /// Runs `fut` with this span as the current one (its children and log lines see it).
    pub fn instrument<F: Future>(&self, fut: F) -> Instrumented<F> {
        Instrumented {
            inner: fut,
            cx: self.cx.clone(),
        }
    }

    pub fn end(self) {
        if let Some(cx) = &self.cx {
            cx.span().end();
        }
    }
}

pin_project_lite::pin_project! {
    /// A future polled with an OpenTelemetry context attached (none: polled as is).
    pub struct Instrumented<F> {
        #[pin]
        inner: F,
        cx: Option<Context>,
    }
}

impl<F: Future> Future for Instrumented<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, task: &mut TaskContext<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _guard = this.cx.as_ref().map(|cx| cx.clone().attach());
        this.inner.poll(task)
    }
}

#[cfg(test)]
mod tests;
