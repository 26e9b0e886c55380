//! The node's sampler: the configured OpenTelemetry sampler (parent-based or not, with a ratio for
//! new traces), plus one rule of Gatehouse's own — a new trace that is linked to a sampled trace
//! *the cluster wrote* (a logout another node recorded) is sampled too, so that the reaction is
//! visible next to its cause. Only links marked [`CLUSTER_LINK`] count: a link to a client's
//! context (an untrusted `traceparent`) never forces sampling.
//!
//! Untrusted callers never reach the parent-based branch: the server span's parent is only a
//! remote context the trust rule accepted (`layers/trace.rs`).

use opentelemetry::trace::{Link, SpanKind, TraceId};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::trace::{Sampler, SamplingDecision, SamplingResult, ShouldSample};

use gatehouse_shared::trace::CLUSTER_LINK;
use gatehouse_shared::trace::settings::Sampling;

#[derive(Debug, Clone)]
pub struct NodeSampler {
    inner: Sampler,
}

impl NodeSampler {
    pub fn new(sampling: Sampling) -> Self {
        let root = match sampling.ratio {
            r if r >= 1.0 => Sampler::AlwaysOn,
            r if r <= 0.0 => Sampler::AlwaysOff,
            r => Sampler::TraceIdRatioBased(r),
        };
        let inner = if sampling.parent_based {
            Sampler::ParentBased(Box::new(root))
        } else {
            root
        };
        Self { inner }
    }
}

fn is_cluster_link(link: &Link) -> bool {
    link.span_context.is_sampled()
        && link
            .attributes
            .iter()
            .any(|kv| kv.key.as_str() == CLUSTER_LINK && kv.value == Value::Bool(true))
}

impl ShouldSample for NodeSampler {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        let result =
            self.inner
                .should_sample(parent_context, trace_id, name, span_kind, attributes, links);
        if result.decision == SamplingDecision::RecordAndSample
            || !links.iter().any(is_cluster_link)
        {
            return result;
        }
        SamplingResult {
            decision: SamplingDecision::RecordAndSample,
            ..result
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceState};

    use super::*;

    fn sc(sampled: bool) -> SpanContext {
        SpanContext::new(
            TraceId::from_bytes([1; 16]),
            SpanId::from_bytes([2; 8]),
            if sampled {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            },
            true,
            TraceState::default(),
        )
    }

    fn decide(s: &NodeSampler, parent: Option<&Context>, links: &[Link]) -> SamplingDecision {
        s.should_sample(
            parent,
            TraceId::from_bytes([9; 16]),
            "GET",
            &SpanKind::Server,
            &[],
            links,
        )
        .decision
    }

    #[test]
    fn ratio_zero_samples_nothing_new_but_follows_a_sampled_parent() {
        let s = NodeSampler::new(Sampling {
            parent_based: true,
            ratio: 0.0,
        });
        assert_eq!(decide(&s, None, &[]), SamplingDecision::Drop);
        let parent = Context::new().with_remote_span_context(sc(true));
        assert_eq!(
            decide(&s, Some(&parent), &[]),
            SamplingDecision::RecordAndSample
        );
        let unsampled = Context::new().with_remote_span_context(sc(false));
        let one = NodeSampler::new(Sampling {
            parent_based: true,
            ratio: 1.0,
        });
        assert_eq!(decide(&one, Some(&unsampled), &[]), SamplingDecision::Drop);
        assert_eq!(decide(&one, None, &[]), SamplingDecision::RecordAndSample);
    }

    #[test]
    fn only_sampled_cluster_links_force_sampling() {
        let s = NodeSampler::new(Sampling {
            parent_based: true,
            ratio: 0.0,
        });
        let client = Link::new(sc(true), vec![], 0);
        assert_eq!(
            decide(&s, None, &[client]),
            SamplingDecision::Drop,
            "a client's sampled context must not force sampling"
        );
        let cluster = Link::new(sc(true), vec![KeyValue::new(CLUSTER_LINK, true)], 0);
        assert_eq!(
            decide(&s, None, &[cluster]),
            SamplingDecision::RecordAndSample
        );
        let unsampled_cluster = Link::new(sc(false), vec![KeyValue::new(CLUSTER_LINK, true)], 0);
        assert_eq!(
            decide(&s, None, &[unsampled_cluster]),
            SamplingDecision::Drop
        );
    }
}
