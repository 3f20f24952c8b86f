//! The picker's Prometheus metrics, upstream names where upstream has them.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::PickError;
use super::response::Usage;
use super::view::PickerView;
use crate::model::{EndpointId, Snapshot};

type Labels = Vec<(String, String)>;

/// Registered under the registry passed in; no globals.
#[derive(Clone)]
pub struct PickerMetrics {
    /// `inference_extension_scheduler_e2e_duration_seconds`: parse + schedule time.
    decision: Histogram,
    /// Picks per endpoint (`switchyard_picker_picks_total{endpoint}`).
    picks: Family<Labels, Counter>,
    /// Decisions made without fresh load metrics.
    load_agnostic: Counter,
    /// `inference_objective_request_error_total{error_code}`.
    errors: Family<Labels, Counter>,
    input_tokens: Family<Labels, Histogram>,
    output_tokens: Family<Labels, Histogram>,
    snapshot_seq: Gauge,
    snapshot_epoch: Gauge,
    snapshot_endpoints: Gauge,
    snapshot_published: Gauge<f64, AtomicU64>,
    prefix_entries: Gauge,
    /// Routed-block entries not reported because too many waited for the next report.
    routed_dropped: Counter,
    /// Snapshot updates applied from the leader's stream, `kind` = `full` | `delta`.
    updates: Family<Labels, Counter>,
    /// Requests refused by a bound, `limit` = the flag that sets it.
    limit_refusals: Family<Labels, Counter>,
    /// Request-header bytes held by streams waiting to be routed.
    pending_header_bytes: Gauge,
    /// The snapshot of the current view, for `switchyard_picker_endpoint_metrics_age_seconds`
    /// (computed at each scrape of /metrics).
    held: Arc<arc_swap::ArcSwap<Snapshot>>,
}

impl PickerMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = PickerMetrics {
            decision: Histogram::new(exponential_buckets(1e-5, 2.0, 18)),
            picks: Family::default(),
            load_agnostic: Counter::default(),
            errors: Family::default(),
            input_tokens: Family::new_with_constructor(|| Histogram::new(exponential_buckets(1.0, 4.0, 11))),
            output_tokens: Family::new_with_constructor(|| Histogram::new(exponential_buckets(1.0, 2.0, 14))),
            snapshot_seq: Gauge::default(),
            snapshot_epoch: Gauge::default(),
            snapshot_endpoints: Gauge::default(),
            snapshot_published: Gauge::default(),
            prefix_entries: Gauge::default(),
            routed_dropped: Counter::default(),
            updates: Family::default(),
            limit_refusals: Family::default(),
            pending_header_bytes: Gauge::default(),
            held: Arc::new(arc_swap::ArcSwap::new(Snapshot::empty())),
        };
        let held = m.held.clone();
        crate::metrics_age::MetricsAge::register(
            registry,
            "switchyard_picker_endpoint_metrics_age_seconds",
            move || Some(held.load_full()),
        );
        registry.register(
            "inference_extension_scheduler_e2e_duration_seconds",
            "Time to parse and schedule a request",
            m.decision.clone(),
        );
        registry.register("switchyard_picker_picks", "Requests routed per endpoint", m.picks.clone());
        registry.register(
            "switchyard_picker_load_agnostic_picks",
            "Decisions made while no candidate had fresh metrics",
            m.load_agnostic.clone(),
        );
        registry.register(
            "inference_objective_request_error",
            "Requests answered with an error, by code",
            m.errors.clone(),
        );
        registry.register("inference_objective_input_tokens", "Prompt tokens per request", m.input_tokens.clone());
        registry.register(
            "inference_objective_output_tokens",
            "Completion tokens per request",
            m.output_tokens.clone(),
        );
        registry.register(
            "switchyard_picker_snapshot_seq",
            "Sequence number of the snapshot held",
            m.snapshot_seq.clone(),
        );
        registry.register(
            "switchyard_picker_snapshot_epoch",
            "Leader epoch of the snapshot held",
            m.snapshot_epoch.clone(),
        );
        registry.register(
            "switchyard_picker_snapshot_endpoints",
            "Endpoints in the snapshot held",
            m.snapshot_endpoints.clone(),
        );
        registry.register(
            "switchyard_picker_snapshot_published_timestamp_seconds",
            "When the snapshot held was published (age = now - this)",
            m.snapshot_published.clone(),
        );
        registry.register(
            "inference_extension_prefix_indexer_size",
            "Entries in the prefix index",
            m.prefix_entries.clone(),
        );
        registry.register(
            "switchyard_picker_routed_blocks_dropped",
            "Routed prefix-block entries not reported to the leader (too many waiting)",
            m.routed_dropped.clone(),
        );
        registry.register(
            "switchyard_picker_snapshot_updates",
            "Snapshot updates applied from the leader's stream (kind: full, delta); a full one after the first means a new leader or a resync",
            m.updates.clone(),
        );
        registry.register(
            "switchyard_picker_limit_refusals",
            "Requests refused by a bound (limit: the flag that sets it; see docs/limits.md)",
            m.limit_refusals.clone(),
        );
        registry.register(
            "switchyard_picker_pending_header_bytes",
            "Request-header bytes held by streams not routed yet (bounded by --max-pending-header-bytes)",
            m.pending_header_bytes.clone(),
        );
        m
    }

    /// The gauge the picker's header budget keeps in step.
    pub(super) fn pending_header_bytes(&self) -> Gauge {
        self.pending_header_bytes.clone()
    }

    pub fn record_update(&self, full: bool) {
        let kind = if full { "full" } else { "delta" };
        self.updates.get_or_create(&vec![("kind".into(), kind.into())]).inc();
    }

    pub(super) fn record_routed_dropped(&self) {
        self.routed_dropped.inc();
    }

    /// Metrics that go nowhere (tools and tests).
    pub fn detached() -> Self {
        Self::new(&mut Registry::default())
    }

    pub(super) fn record_pick(&self, endpoint: &EndpointId, took: Duration, load_agnostic: bool) {
        self.decision.observe(took.as_secs_f64());
        self.picks.get_or_create(&vec![("endpoint".into(), endpoint.to_string())]).inc();
        if load_agnostic {
            self.load_agnostic.inc();
        }
    }

    pub(super) fn record_error(&self, e: &PickError) {
        let (status, code) = e.status();
        if let PickError::Limit(l) = e {
            self.limit_refusals.get_or_create(&vec![("limit".into(), l.limit().into())]).inc();
        }
        self.errors
            .get_or_create(&vec![("error_code".into(), code.to_string()), ("status".into(), status.to_string())])
            .inc();
    }

    pub(super) fn record_model_server_error(&self) {
        self.errors
            .get_or_create(&vec![("error_code".into(), "ModelServerError".into()), ("status".into(), "".into())])
            .inc();
    }

    pub(super) fn record_usage(&self, model: &str, target: &str, u: Usage) {
        let labels = vec![("model_name".into(), model.to_string()), ("target_model_name".into(), target.to_string())];
        self.input_tokens.get_or_create(&labels).observe(u.prompt_tokens as f64);
        self.output_tokens.get_or_create(&labels).observe(u.completion_tokens as f64);
    }

    pub(super) fn record_snapshot(&self, view: &PickerView, prefix_entries: usize) {
        let s = &view.snapshot;
        self.held.store(s.clone());
        self.snapshot_seq.set(s.seq as i64);
        self.snapshot_epoch.set(s.epoch as i64);
        self.snapshot_endpoints.set(s.endpoints.len() as i64);
        let published = s.published_at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        self.snapshot_published.set(published.as_secs_f64());
        self.prefix_entries.set(prefix_entries as i64);
    }
}
