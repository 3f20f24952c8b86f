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
use super::model_series::{Families, Labels, ModelSeries, SeriesCache};
use super::view::PickerView;
use crate::model::{EndpointId, Snapshot};

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
    /// `inference_objective_request_duration_seconds{model_name,target_model_name}`: request
    /// received to response complete.
    durations: Family<Labels, Histogram>,
    /// `inference_objective_request_sizes`: bytes of the body sent upstream.
    request_sizes: Family<Labels, Histogram>,
    /// `inference_objective_response_sizes`: response body bytes.
    response_sizes: Family<Labels, Histogram>,
    /// `inference_objective_running_requests{model_name}`: routed, response not complete.
    running: Family<Labels, Gauge>,
    /// `inference_objective_normalized_time_per_output_token_seconds`: duration / output tokens.
    ntpot: Family<Labels, Histogram>,
    /// `inference_extension_prefix_indexer_hit_ratio`: longest known cached run / request blocks.
    prefix_hit_ratio: Histogram,
    /// `inference_extension_prefix_indexer_hit_bytes`: prompt bytes the best match covers.
    prefix_hit_bytes: Histogram,
    input_tokens: Family<Labels, Histogram>,
    output_tokens: Family<Labels, Histogram>,
    snapshot_seq: Gauge,
    snapshot_epoch: Gauge,
    snapshot_endpoints: Gauge,
    snapshot_published: Gauge<f64, AtomicU64>,
    prefix_entries: Gauge,
    /// Endpoints whose counters the view builder keeps (listed, or gone with requests in flight).
    tracked_endpoints: Gauge,
    /// Routed-block entries not reported because too many waited for the next report.
    routed_dropped: Counter,
    /// Snapshot updates applied from the leader's stream, `kind` = `full` | `delta`.
    updates: Family<Labels, Counter>,
    /// Its two series, resolved once (an update does not look its label up).
    updates_full: Counter,
    updates_delta: Counter,
    /// Requests refused by a bound, `limit` = the flag that sets it.
    limit_refusals: Family<Labels, Counter>,
    /// Request-header bytes held by streams waiting to be routed.
    pending_header_bytes: Gauge,
    /// The snapshot of the current view, for `switchyard_picker_endpoint_metrics_age_seconds`
    /// (computed at each scrape of /metrics).
    held: Arc<arc_swap::ArcSwap<Snapshot>>,
    /// The `name` label of the `inference_pool_*` gauges.
    pool: Arc<arc_swap::ArcSwap<String>>,
    /// `inference_extension_plugin_duration_seconds{extension_point,plugin_type,plugin_name}`.
    plugin_duration: Family<Labels, Histogram>,
    /// The per-model families, and the (model, target model) series resolved from them.
    families: Families,
    series: SeriesCache,
}

impl PickerMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let families = Families {
            requests: Family::default(),
            durations: Family::new_with_constructor(|| Histogram::new(GENERAL_LATENCY_BUCKETS.iter().copied())),
            // 64 B .. 1 GiB, doubling (upstream's).
            request_sizes: Family::new_with_constructor(|| Histogram::new(exponential_buckets(64.0, 2.0, 25))),
            response_sizes: Family::new_with_constructor(|| Histogram::new(RESPONSE_SIZE_BUCKETS.iter().copied())),
            running: Family::default(),
            ntpot: Family::new_with_constructor(|| Histogram::new(NTPOT_BUCKETS.iter().copied())),
            input_tokens: Family::new_with_constructor(|| Histogram::new(exponential_buckets(1.0, 4.0, 11))),
            output_tokens: Family::new_with_constructor(|| Histogram::new(exponential_buckets(1.0, 2.0, 14))),
        };
        let updates = Family::<Labels, Counter>::default();
        let updates_full = updates.get_or_create(&vec![("kind".into(), "full".into())]).clone();
        let updates_delta = updates.get_or_create(&vec![("kind".into(), "delta".into())]).clone();
        let m = PickerMetrics {
            // Upstream's buckets (0.1 ms .. 100 ms).
            decision: Histogram::new(SCHEDULER_BUCKETS.iter().copied()),
            picks: Arc::default(),
            load_agnostic: Counter::default(),
            errors: Family::default(),
            requests: families.requests.clone(),
            attempts_ok: Counter::default(),
            attempts_failed: Counter::default(),
            durations: families.durations.clone(),
            request_sizes: families.request_sizes.clone(),
            response_sizes: families.response_sizes.clone(),
            running: families.running.clone(),
            ntpot: families.ntpot.clone(),
            prefix_hit_ratio: Histogram::new((0..=10).map(|i| f64::from(i) / 10.0)),
            // 0 and powers of two from 16 bytes to 1 MiB (prompt prefixes).
            prefix_hit_bytes: Histogram::new(std::iter::once(0.0).chain((4..=20).map(|p| f64::from(1u32 << p)))),
            input_tokens: families.input_tokens.clone(),
            output_tokens: families.output_tokens.clone(),
            snapshot_seq: Gauge::default(),
            snapshot_epoch: Gauge::default(),
            snapshot_endpoints: Gauge::default(),
            snapshot_published: Gauge::default(),
            prefix_entries: Gauge::default(),
            tracked_endpoints: Gauge::default(),
            routed_dropped: Counter::default(),
            updates_full,
            updates_delta,
            updates,
            limit_refusals: Family::default(),
            pending_header_bytes: Gauge::default(),
            held: Arc::new(arc_swap::ArcSwap::new(Snapshot::empty())),
            pool: Arc::new(arc_swap::ArcSwap::from_pointee(super::pool_metrics::DEFAULT_POOL_NAME.to_string())),
            plugin_duration: Family::new_with_constructor(|| Histogram::new(SCHEDULER_BUCKETS)),
            // The families registered below are the ones the series resolve from.
            families: families.clone(),
            series: SeriesCache::default(),
        };
        registry.register(
            "inference_extension_plugin_duration_seconds",
            "Time each scheduling plugin took per decision",
            m.plugin_duration.clone(),
        );
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
        registry.register(
            "inference_objective_request_duration_seconds",
            "Time from request received to response complete, by model and target model",
            m.durations.clone(),
        );
        registry.register(
            "inference_objective_request_sizes",
            "Request body bytes sent to the model server, by model and target model",
            m.request_sizes.clone(),
        );
        registry.register(
            "inference_objective_response_sizes",
            "Response body bytes, by model and target model",
            m.response_sizes.clone(),
        );
        registry.register(
            "inference_objective_running_requests",
            "Requests routed whose response has not completed, by model",
            m.running.clone(),
        );
        registry.register(
            "inference_objective_normalized_time_per_output_token_seconds",
            "Request duration divided by output tokens, by model and target model",
            m.ntpot.clone(),
        );
        registry.register(
            "inference_extension_prefix_indexer_hit_ratio",
            "Longest run of a request's prefix blocks an endpoint is known to cache, over the request's blocks",
            m.prefix_hit_ratio.clone(),
        );
        registry.register(
            "inference_extension_prefix_indexer_hit_bytes",
            "Prompt bytes covered by the best prefix match, per request with prefix blocks",
            m.prefix_hit_bytes.clone(),
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
            "switchyard_picker_tracked_endpoints",
            "Endpoints whose pick and in-flight counters this picker keeps: those listed, plus those gone with requests in flight",
            m.tracked_endpoints.clone(),
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
        if full { &self.updates_full } else { &self.updates_delta }.inc();
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

    /// The series of requests for `model` served as `target` (see model_series.rs).
    pub(super) fn series(&self, model: &str, target: &str) -> Arc<ModelSeries> {
        self.series.get(&self.families, model, target)
    }

    /// The scheduler found no endpoint (`inference_extension_scheduler_attempts_total{status="failure"}`).
    pub(super) fn record_schedule_failure(&self) {
        self.attempts_failed.inc();
    }

    /// `matched` of the request's `total` prefix blocks are cached somewhere (nothing recorded for
    /// a request without blocks).
    pub(super) fn record_prefix_hit(&self, matched: usize, total: usize, block_bytes: usize) {
        if total > 0 {
            self.prefix_hit_ratio.observe(matched.min(total) as f64 / total as f64);
            self.prefix_hit_bytes.observe(matched.min(total).saturating_mul(block_bytes) as f64);
        }
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
        self.tracked_endpoints.set(view.tracked as i64);
    }
}

impl PickerMetrics {
    /// A plugin timer for `plugins` (`(extension point, type)`, as `Scheduler::plugins` lists
    /// them) with each histogram resolved once: a decision records without building labels.
    pub fn plugin_timer(&self, plugins: &[(&'static str, &'static str)]) -> crate::scheduling::PluginTimer {
        let handles: Vec<Histogram> = plugins
            .iter()
            .map(|(point, kind)| {
                let labels = vec![
                    ("extension_point".to_string(), point.to_string()),
                    ("plugin_type".to_string(), kind.to_string()),
                    ("plugin_name".to_string(), kind.to_string()),
                ];
                self.plugin_duration.get_or_create(&labels).clone()
            })
            .collect();
        Arc::new(move |i, took| {
            if let Some(h) = handles.get(i) {
                h.observe(took.as_secs_f64());
            }
        })
    }
}

/// `inference_extension_scheduler_e2e_duration_seconds` and `_plugin_duration_seconds` buckets, as
/// upstream.
const SCHEDULER_BUCKETS: [f64; 10] = [0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1];

/// `inference_objective_request_duration_seconds` buckets, as upstream (5 ms .. 1 h).
const GENERAL_LATENCY_BUCKETS: [f64; 35] = [
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0,
    45.0, 60.0, 120.0, 180.0, 240.0, 300.0, 360.0, 480.0, 600.0, 900.0, 1200.0, 1800.0, 2700.0, 3600.0,
];

/// `inference_objective_response_sizes` buckets, as upstream (its 32778 included, so the series
/// line up with upstream's dashboards).
const RESPONSE_SIZE_BUCKETS: [f64; 15] =
    [1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32778.0, 65536.0];

/// `inference_objective_normalized_time_per_output_token_seconds` buckets, as upstream.
const NTPOT_BUCKETS: [f64; 13] = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0];

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
