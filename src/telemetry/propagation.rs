//! W3C trace context in and out: `traceparent` from the headers Envoy forwards, `traceparent`
//! for the headers the model server receives, and span references carried in snapshots (plain
//! data in the model, turned into span links here).

use std::collections::HashMap;

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState};
use opentelemetry::{Context, propagation::TextMapPropagator as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::model::TraceRef;

/// The context a request's `traceparent` (and `tracestate`) header names, if any.
pub fn extract<'a>(headers: impl IntoIterator<Item = (&'a str, &'a str)>) -> Option<Context> {
    let map: HashMap<String, String> = headers
        .into_iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("traceparent") || k.eq_ignore_ascii_case("tracestate"))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    if map.is_empty() {
        return None;
    }
    let cx = TraceContextPropagator::new().extract(&map);
    cx.span().span_context().is_valid().then_some(cx)
}

/// The `traceparent` value that continues `span`'s trace downstream (`None` while traces are off).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    if span.is_none() {
        return None;
    }
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut map: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut map);
    map.remove("traceparent")
}

/// A reference to `span` for a snapshot (`None` while traces are off or it is not sampled).
pub fn trace_ref(span: &tracing::Span) -> Option<TraceRef> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    (sc.is_valid() && sc.is_sampled()).then(|| TraceRef {
        trace_id: u128::from_be_bytes(sc.trace_id().to_bytes()),
        span_id: u64::from_be_bytes(sc.span_id().to_bytes()),
    })
}

/// Links `span` to the span `r` refers to (another process's, typically).
pub fn link(span: &tracing::Span, r: &TraceRef) {
    let sc = SpanContext::new(
        TraceId::from_bytes(r.trace_id.to_be_bytes()),
        SpanId::from_bytes(r.span_id.to_be_bytes()),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    span.add_link(sc);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_is_extracted_and_garbage_is_not() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = extract([("traceparent", tp)]).expect("valid");
        assert_eq!(cx.span().span_context().trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(extract([("traceparent", "00-zz-00-01")]).is_none());
        assert!(extract([("x-other", tp)]).is_none());
    }
}
