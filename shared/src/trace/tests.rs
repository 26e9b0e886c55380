use std::sync::OnceLock;

use opentelemetry::baggage::BaggageExt as _;
use opentelemetry::trace::{
    SpanContext, SpanKind, TraceContextExt as _, TraceFlags, TraceId, TraceState, Tracer as _,
    TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};

use super::*;

/// One provider per test process (the tracer is process-wide); tests tell their spans apart by
/// trace id.
fn exporter() -> &'static (InMemorySpanExporter, SdkTracerProvider) {
    static SETUP: OnceLock<(InMemorySpanExporter, SdkTracerProvider)> = OnceLock::new();
    SETUP.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        install(
            opentelemetry::global::BoxedTracer::new(Box::new(provider.tracer(SCOPE))),
            true,
        );
        opentelemetry::global::set_text_map_propagator(
            opentelemetry::propagation::TextMapCompositePropagator::new(vec![
                Box::new(TraceContextPropagator::new()),
                Box::new(BaggagePropagator::new()),
            ]),
        );
        (exporter, provider)
    })
}

fn spans_of(trace: TraceId) -> Vec<SpanData> {
    exporter()
        .0
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .filter(|s| s.span_context.trace_id() == trace)
        .collect()
}

/// A remote parent with the given sampling flag.
fn remote(sampled: bool) -> Context {
    exporter();
    let flags = if sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let trace = TraceId::from_bytes(rand_bytes());
    let sc = SpanContext::new(
        trace,
        opentelemetry::SpanId::from_bytes([7; 8]),
        flags,
        true,
        TraceState::default(),
    );
    Context::new().with_remote_span_context(sc)
}

fn rand_bytes() -> [u8; 16] {
    *uuid::Uuid::new_v4().as_bytes()
}

#[test]
fn children_exist_only_inside_a_sampled_trace() {
    let sampled = remote(true);
    let trace = sampled.span().span_context().trace_id();
    {
        let _g = sampled.clone().attach();
        let child = Span::child("work", SpanKind::Internal);
        assert!(child.is_recording());
        child.set("answer", 42);
        child.fail("timeout", "no answer");
        child.end();
    }
    let spans = spans_of(trace);
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].name, "work");
    assert_eq!(
        spans[0].parent_span_id,
        opentelemetry::SpanId::from_bytes([7; 8])
    );
    assert!(spans[0].attributes.contains(&KeyValue::new("answer", 42)));
    assert!(
        spans[0]
            .attributes
            .contains(&KeyValue::new("error.type", "timeout"))
    );
    assert!(matches!(
        spans[0].status,
        opentelemetry::trace::Status::Error { .. }
    ));

    let unsampled = remote(false);
    let _g = unsampled.attach();
    let child = Span::child("skipped", SpanKind::Client);
    assert!(!child.is_recording());
    child.set("ignored", true);
    child.end();
    drop(_g);
    assert!(!Span::child("no parent", SpanKind::Internal).is_recording());
}

#[tokio::test]
async fn instrumented_futures_parent_their_children_and_expose_ids() {
    let parent = remote(true);
    let trace = parent.span().span_context().trace_id();
    let outer = Span {
        cx: Some(parent.clone()),
    };
    assert!(outer.is_recording());
    let inner = outer
        .instrument(async {
            tokio::task::yield_now().await;
            let ids = current_ids().expect("ids inside the span");
            let child = Span::child("inner", SpanKind::Client);
            let child_id = child.context().unwrap().span().span_context().span_id();
            child
                .instrument(async {
                    assert_eq!(current_ids().unwrap().1, child_id);
                })
                .await;
            child.end();
            ids
        })
        .await;
    assert_eq!(inner.0, trace);
    assert!(current_ids().is_none(), "detached after the future");
    let spans = spans_of(trace);
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].name, "inner");
}

#[test]
fn roots_are_sampled_by_the_provider_and_keep_their_links() {
    let cause = remote(true);
    let cause_sc = cause.span().span_context().clone();
    let root = Span::root(
        "reaction",
        SpanKind::Consumer,
        vec![(cause_sc.clone(), vec![KeyValue::new(CLUSTER_LINK, true)])],
    );
    assert!(
        root.is_recording(),
        "the default sampler samples everything"
    );
    let trace = root.context().unwrap().span().span_context().trace_id();
    assert_ne!(trace, cause_sc.trace_id(), "a new trace, linked");
    root.end();
    let spans = spans_of(trace);
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].links.links.len(), 1);
    assert_eq!(spans[0].links.links[0].span_context, cause_sc);
}

#[test]
fn context_travels_through_headers_and_traceparent_strings() {
    let parent = remote(true);
    let sc = parent.span().span_context().clone();
    let mut headers = ::http::HeaderMap::new();
    headers.insert("traceparent", "garbage".parse().unwrap());
    headers.insert("baggage", "client=1".parse().unwrap());
    propagate::strip(&mut headers);
    propagate::inject(&parent, &mut headers);
    let tp = headers["traceparent"].to_str().unwrap().to_owned();
    assert_eq!(
        tp,
        format!("00-{}-{}-01", sc.trace_id(), sc.span_id()),
        "ours replaces the client's"
    );
    assert!(
        !headers.contains_key("baggage"),
        "the client's baggage is gone"
    );
    let back = propagate::extract(&headers);
    assert_eq!(back.span().span_context().trace_id(), sc.trace_id());
    assert!(back.span().span_context().is_remote());
    assert_eq!(
        propagate::traceparent(&parent).as_deref(),
        Some(tp.as_str())
    );
    assert_eq!(
        propagate::from_traceparent(&tp)
            .span()
            .span_context()
            .span_id(),
        sc.span_id()
    );
    assert!(
        !propagate::from_traceparent("00-zz-11-01")
            .span()
            .span_context()
            .is_valid()
    );

    let mut untouched = ::http::HeaderMap::new();
    propagate::inject(&Context::new(), &mut untouched);
    assert!(untouched.is_empty(), "no span, nothing written");
    assert!(propagate::traceparent(&Context::new()).is_none());
}

#[test]
fn the_fast_path_writes_what_the_propagator_writes() {
    use opentelemetry::propagation::TextMapPropagator as _;
    exporter();
    for sampled in [true, false] {
        let cx = remote(sampled);
        let mut ours = ::http::HeaderMap::new();
        propagate::inject(&cx, &mut ours);
        let mut theirs = std::collections::HashMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut theirs);
        assert_eq!(ours["traceparent"], theirs["traceparent"].as_str());
        assert_eq!(
            propagate::traceparent(&cx).as_deref(),
            Some(theirs["traceparent"].as_str())
        );
    }
    // With baggage (or trace state) the propagator writes everything.
    let cx = remote(true).with_baggage(vec![KeyValue::new("tenant", "a")]);
    let mut headers = ::http::HeaderMap::new();
    propagate::inject(&cx, &mut headers);
    assert_eq!(headers["baggage"], "tenant=a");
    assert!(headers.contains_key("traceparent"));
}

#[test]
fn a_span_started_directly_with_the_tracer_is_found_by_children() {
    let tracer = tracer().unwrap_or_else(|| {
        exporter();
        tracer().unwrap()
    });
    let server = tracer.start_with_context("server", &Context::new());
    let cx = Context::new().with_span(server);
    let trace = cx.span().span_context().trace_id();
    let _g = cx.clone().attach();
    Span::child("child", SpanKind::Internal).end();
    cx.span().end();
    let names: Vec<_> = spans_of(trace).into_iter().map(|s| s.name).collect();
    assert_eq!(names.len(), 2);
}
