//! The picker's spans: `gateway.request` for an ext-proc stream (continuing the caller's
//! `traceparent`) and its child `schedule`, which names the candidates, the endpoint chosen, each
//! scorer's score for it and for the runner-up, the age of the metrics used and the snapshot's
//! `(epoch, seq)`, and links to the leader's span that published that snapshot. Scores are
//! computed only for sampled requests. With traces off and the log below debug, nothing would
//! show these spans (the picker logs per request at debug only), so they are not created at all:
//! a span costs its fields' formatting for the log layer on every request.

/// Whether this stream's spans would reach anything: an exporter, or the log at debug level.
pub(super) fn wanted() -> bool {
    crate::telemetry::traces_on() || tracing::enabled!(tracing::Level::DEBUG)
}

use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::view::PickerView;
use crate::scheduling::Explanation;
use crate::telemetry::propagation;

/// The span of one ext-proc stream, child of the caller's span when the request carries one.
pub(super) fn request_span(headers: &[(String, Vec<u8>)], request_id: &str) -> tracing::Span {
    if !wanted() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "gateway.request",
        otel.kind = "server",
        request_id = %request_id,
        model = Empty,
        target_model = Empty,
        destination = Empty,
        error = Empty,
    );
    let incoming = headers.iter().filter_map(|(k, v)| Some((k.as_str(), std::str::from_utf8(v).ok()?)));
    if let Some(parent) = propagation::extract(incoming) {
        let _ = span.set_parent(parent);
    }
    span
}

/// The `schedule` span under `parent`, linked to the publish of the snapshot it reads.
pub(super) fn schedule_span(parent: &tracing::Span, view: &PickerView, candidates: usize) -> tracing::Span {
    if parent.is_none() {
        return tracing::Span::none();
    }
    let s = &view.snapshot;
    let span = tracing::info_span!(
        parent: parent,
        "schedule",
        candidates,
        snapshot_epoch = s.epoch,
        snapshot_seq = s.seq,
        chosen = Empty,
        chosen_id = Empty,
        metrics_age_ms = Empty,
        load_agnostic = Empty,
        runner_up = Empty,
    );
    if let Some(publish) = &s.publish_span {
        propagation::link(&span, publish);
    }
    span
}

/// Whether the span is recorded (then the scheduler explains its decision).
pub(super) fn is_sampled(span: &tracing::Span) -> bool {
    use opentelemetry::trace::TraceContextExt as _;
    !span.is_none() && span.context().span().span_context().is_sampled()
}

/// Records the decision on the `schedule` span.
pub(super) fn record_decision(
    span: &tracing::Span,
    view: &PickerView,
    primary: usize,
    load_agnostic: bool,
    explanation: Option<&Explanation>,
) {
    if span.is_none() {
        return;
    }
    let state = &view.snapshot.endpoints[primary];
    span.record("chosen", state.endpoint.address.as_str());
    span.record("chosen_id", state.endpoint.id.as_str());
    span.record("load_agnostic", load_agnostic);
    if let Some(age) = state.metrics.age(std::time::SystemTime::now()) {
        span.record("metrics_age_ms", age.as_millis() as u64);
    }
    let Some(e) = explanation else { return };
    if let Some(r) = e.runner_up {
        span.record("runner_up", view.snapshot.endpoints[r].endpoint.id.as_str());
    }
    for (scorer, winner, runner_up) in &e.scores {
        span.set_attribute(format!("score.{scorer}"), *winner);
        if let Some(r) = runner_up {
            span.set_attribute(format!("runner_up.score.{scorer}"), *r);
        }
    }
}
