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
    /// The view's endpoints and counters, for `switchyard_picker_picks_total{endpoint}` and
    /// `switchyard_picker_herd_share` (read at each scrape of /metrics, see pick_metrics.rs).
    picks: Arc<arc_swap::ArcSwap<super::pick_metrics::Held>>,
    /// Decisions made without fresh load metrics.
    load_agnostic: Counter,
    /// `inference_objective_request_error_total{model_name,target_model_name,error_code}`.
    errors: Family<Labels, Counter>,
    /// `inference_objective_request_total{model_name,target_model_name,priority}`.
    requests: Family<Labels, Counter>,
    /// `inference_extension_scheduler_attempts_total{status}` (success | failure).
    attempts_ok: Counter,
    attempts_failed: Counter,
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
    /// The `name` label of the `inference_pool_*` gauges.
    pool: Arc<arc_swap::ArcSwap<String>>,
}

impl PickerMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = PickerMetrics {
            // Upstream's buckets (0.1 ms .. 100 ms).
            decision: Histogram::new(SCHEDULER_BUCKETS.iter().copied()),
            picks: Arc::default(),
            load_agnostic: Counter::default(),
            errors: Family::default(),
            requests: Family::default(),
            attempts_ok: Counter::default(),
            attempts_failed: Counter::default(),
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
            pool: Arc::new(arc_swap::ArcSwap::from_pointee(super::pool_metrics::DEFAULT_POOL_NAME.to_string())),
        };
        registry.register_collector(Box::new(super::pool_metrics::PoolGauges {
            held: m.held.clone(),
            pool: m.pool.clone(),
            // Upstream counts a pod ready when its metrics are fresher than 2 s.
            fresh_within: Duration::from_secs(2),
        }));
        registry.register(
            "inference_objective_request",
            "Requests scheduled, by model, target model and priority",
            m.requests.clone(),
        );
        registry.register(
            "inference_extension_scheduler_attempts",
            "Scheduling attempts by status (success, failure)",
            AttemptsFamily { ok: m.attempts_ok.clone(), failed: m.attempts_failed.clone() },
        );

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
        registry.register_collector(Box::new(super::pick_metrics::PickCounters::new(m.picks.clone())));
        registry.register(
            "switchyard_picker_load_agnostic_picks",
            "Decisions made while no candidate had fresh metrics",
            m.load_agnostic.clone(),
        );
        registry.register(
            "inference_objective_request_error",
            "Requests answered with an error, by model, target model and code",
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

    /// The pick itself is counted by `EndpointCounters::start`; `_endpoint` stays so the call in
    /// ext_proc.rs need not change.
    pub(super) fn record_pick(&self, _endpoint: &EndpointId, took: Duration, load_agnostic: bool) {
        self.decision.observe(took.as_secs_f64());
        self.attempts_ok.inc();
        if load_agnostic {
            self.load_agnostic.inc();
        }
    }

    /// The `name` label of the `inference_pool_*` gauges (`--pool-name`).
    pub fn set_pool_name(&self, name: &str) {
        self.pool.store(Arc::new(name.to_string()));
    }

    /// `model`/`target` are empty when the error came before the body was parsed.
    pub(super) fn record_error(&self, e: &PickError, model: &str, target: &str) {
        let (_, code) = e.status();
        if let PickError::Limit(l) = e {
            self.limit_refusals.get_or_create(&vec![("limit".into(), l.limit().into())]).inc();
        }
        self.errors.get_or_create(&error_labels(model, target, code)).inc();
    }

    pub(super) fn record_model_server_error(&self, model: &str, target: &str) {
        self.errors.get_or_create(&error_labels(model, target, "ModelServerError")).inc();
    }

    /// A request scheduled (`inference_objective_request_total`).
    pub(super) fn record_request(&self, model: &str, target: &str, priority: i32) {
        let labels = vec![
            ("model_name".into(), model.to_string()),
            ("target_model_name".into(), target.to_string()),
            ("priority".into(), priority.to_string()),
        ];
        self.requests.get_or_create(&labels).inc();
    }

    /// The scheduler found no endpoint (`inference_extension_scheduler_attempts_total{status="failure"}`).
    pub(super) fn record_schedule_failure(&self) {
        self.attempts_failed.inc();
    }

    pub(super) fn record_usage(&self, model: &str, target: &str, u: Usage) {
        let labels = vec![("model_name".into(), model.to_string()), ("target_model_name".into(), target.to_string())];
        self.input_tokens.get_or_create(&labels).observe(u.prompt_tokens as f64);
        self.output_tokens.get_or_create(&labels).observe(u.completion_tokens as f64);
    }

    pub(super) fn record_snapshot(&self, view: &PickerView, prefix_entries: usize) {
        let s = &view.snapshot;
        self.held.store(s.clone());
        let picks = s.endpoints.iter().zip(&view.counters).map(|(e, c)| (e.endpoint.id.clone(), c.clone())).collect();
        self.picks.store(Arc::new(picks));
        self.snapshot_seq.set(s.seq as i64);
        self.snapshot_epoch.set(s.epoch as i64);
        self.snapshot_endpoints.set(s.endpoints.len() as i64);
        let published = s.published_at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        self.snapshot_published.set(published.as_secs_f64());
        self.prefix_entries.set(prefix_entries as i64);
    }
}

/// `inference_extension_scheduler_e2e_duration_seconds` and `_plugin_duration_seconds` buckets, as
/// upstream.
const SCHEDULER_BUCKETS: [f64; 10] = [0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1];

fn error_labels(model: &str, target: &str, code: &str) -> Labels {
    vec![
        ("model_name".into(), model.to_string()),
        ("target_model_name".into(), target.to_string()),
        ("error_code".into(), code.to_string()),
    ]
}

/// The two series of `inference_extension_scheduler_attempts_total`, each a plain counter so a
/// pick increments without building labels.
#[derive(Debug, Clone)]
struct AttemptsFamily {
    ok: Counter,
    failed: Counter,
}

impl prometheus_client::encoding::EncodeMetric for AttemptsFamily {
    fn encode(&self, mut encoder: prometheus_client::encoding::MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        for (status, c) in [("success", &self.ok), ("failure", &self.failed)] {
            c.encode(encoder.encode_family(&[("status", status)])?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Counter
    }
}
