//! Trace export: from the resolved [`Plan`] to a running OpenTelemetry SDK — the resource that
//! names this node, the sampler, the exporter and the export task — and the one tracer every span
//! of the process is started with (`gatehouse_shared::trace::install`).
//!
//! - [`transport`]: the OTLP exporter (gRPC or HTTP/protobuf) over the node's rustls connector.
//! - [`export`]: the bounded queue and the export task (drops counted, one log line per outage).
//! - [`sampler`]: the configured sampler plus the cluster-link rule.
//!
//! With tracing off nothing here runs: no provider, no tracer, no propagator, and the request
//! path's helpers are no-ops (see `gatehouse_shared::trace`).

pub mod export;
pub mod sampler;
pub mod transport;

use std::sync::Arc;

use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{InstrumentationScope, KeyValue, global};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::resource::TelemetryResourceDetector;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanExporter as _};
use opentelemetry_semantic_conventions::attribute as semconv;
use tokio::time::Instant;

use gatehouse_shared::config::{ConfigErrors, Tracing};
use gatehouse_shared::trace::SCOPE;
use gatehouse_shared::trace::settings::{self, Plan};

pub use export::{DropReason, ExportObserver};

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error(transparent)]
    Transport(#[from] transport::TransportError),
}

/// The running trace pipeline; [`TraceGuard::shutdown`] at the end of the drain sends what is
/// still queued.
pub struct TraceGuard {
    provider: SdkTracerProvider,
    task: export::ExportTask,
    plan: Plan,
}

impl TraceGuard {
    /// Where spans go, for the start-up log line.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Exports what is queued (bounded by `deadline`); false if something was left behind.
    pub async fn shutdown(self, deadline: Instant) -> bool {
        let flushed = self.task.shutdown(deadline).await;
        let _ = self.provider.shutdown();
        flushed
    }
}

/// What identifies this node in its spans.
pub struct NodeResource<'a> {
    pub node_id: &'a str,
    pub version: &'a str,
    pub host_name: &'a str,
}

/// Starts tracing as configured; `Ok(None)` when it is off. Must run on the node's multi-thread
/// runtime, which then hosts the export task. Never waits for the collector.
pub fn start(
    tracing: &Tracing,
    node: &NodeResource<'_>,
    observer: Arc<dyn ExportObserver>,
) -> Result<Option<TraceGuard>, TraceError> {
    if !tracing.enabled {
        return Ok(None);
    }
    let plan = settings::resolve(tracing).map_err(ConfigErrors)?;
    let resource = resource(&plan, node);
    let mut exporter = transport::exporter(&plan)?;
    exporter.set_resource(&resource);
    let (processor, task) = export::start(
        exporter,
        plan.queue_size,
        plan.export_timeout,
        plan.url.clone(),
        observer,
    );
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(sampler::NodeSampler::new(plan.sampling))
        .with_resource(resource)
        .build();
    global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ]));
    let scope = InstrumentationScope::builder(SCOPE)
        .with_version(node.version.to_owned())
        .build();
    gatehouse_shared::trace::install(
        global::BoxedTracer::new(Box::new(provider.tracer_with_scope(scope))),
        plan.sampling.ratio > 0.0,
    );
    Ok(Some(TraceGuard {
        provider,
        task,
        plan,
    }))
}

fn resource(plan: &Plan, node: &NodeResource<'_>) -> Resource {
    let mut attributes: Vec<KeyValue> = plan
        .resource
        .iter()
        .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
        .collect();
    attributes.extend([
        KeyValue::new(semconv::SERVICE_VERSION, node.version.to_owned()),
        KeyValue::new(semconv::SERVICE_INSTANCE_ID, node.node_id.to_owned()),
        KeyValue::new(semconv::HOST_NAME, node.host_name.to_owned()),
    ]);
    Resource::builder_empty()
        .with_detector(Box::new(TelemetryResourceDetector))
        .with_service_name(plan.service.clone())
        .with_attributes(attributes)
        .build()
}
