//! The picker role: Envoy's ext-proc server (port 9002) and gRPC health (9003), answering every
//! request from the snapshot it holds.
//!
//! Inputs: snapshots, each handed to [`Picker::accept`] in order (by the in-process aggregator's
//! feed in standalone mode, by the leader's stream in [`subscribe`] otherwise). Output: routing
//! answers to Envoy. The request path reads an `Arc<PickerView>` (`ArcSwap::load_full`)
//! and never awaits a lock, an actor or the control plane; the prefix index is shared without an
//! outer lock (sharded inside, see [`PrefixIndex`]). It does not scrape, discover or elect anything.

mod ext_proc;
pub mod limits;
mod metrics;
mod model_series;
mod pick_metrics;
mod pool_metrics;
pub mod proto;
pub mod report;
pub mod request;
pub mod response;
pub mod subscribe;
pub mod tls;
mod trace;
pub mod view;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use thiserror::Error;

pub use ext_proc::ExtProcService;
pub use limits::{LimitError, RequestLimits};
pub use metrics::PickerMetrics;
pub use view::PickerView;

use crate::scheduling::{PrefixIndex, Scheduler};

#[derive(Debug, Clone)]
pub struct PickerSettings {
    /// Larger request bodies get a 413.
    pub max_body_bytes: usize,
    /// Non-streaming responses larger than this are passed through without usage parsing.
    pub max_response_buffer_bytes: usize,
    /// Ignore the proxy's subset hint (`--disable-endpoint-subset-filter`).
    pub disable_subset_filter: bool,
    /// InferenceObjective name → priority (header `x-gateway-inference-objective`).
    pub objectives: HashMap<String, i32>,
    /// Seed of the per-stream RNGs (decisions are reproducible for a seed and request order).
    pub seed: u64,
    /// Header bytes and the request-body deadline.
    pub limits: RequestLimits,
}

impl Default for PickerSettings {
    fn default() -> Self {
        PickerSettings {
            max_body_bytes: 16 * 1024 * 1024,
            max_response_buffer_bytes: 16 * 1024 * 1024,
            disable_subset_filter: false,
            objectives: HashMap::new(),
            seed: SmallRng::from_os_rng().next_u64(),
            limits: RequestLimits::default(),
        }
    }
}

/// Why a request gets an immediate response instead of a destination.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PickError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("system saturated, sheddable request dropped")]
    Shed,
    #[error("{0}")]
    Unschedulable(String),
    #[error("failed to find endpoint candidates for serving the request")]
    NoCandidates,
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Limit(#[from] LimitError),
}

impl PickError {
    /// HTTP status and upstream's error code name.
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            PickError::BadRequest(_) => (400, "BadRequest"),
            PickError::TooLarge(_) => (413, "BadRequest"),
            PickError::Shed | PickError::Unschedulable(_) => (429, "ResourceExhausted"),
            PickError::NoCandidates => (503, "ServiceUnavailable"),
            PickError::Internal(_) => (500, "Internal"),
            PickError::Limit(e) => e.status(),
        }
    }
}

/// State shared by every ext-proc stream of a picker.
pub struct Picker {
    pub view: Arc<ArcSwap<PickerView>>,
    pub scheduler: Scheduler,
    pub prefix: PrefixIndex,
    pub settings: PickerSettings,
    pub metrics: PickerMetrics,
    /// Header bytes held by the streams not routed yet (`limits.max_pending_header_bytes`).
    header_budget: Arc<limits::HeaderBudget>,
    streams: AtomicU64,
    /// Prefix blocks routed since the last report to the leader (bounded).
    routed: Mutex<Vec<crate::model::RoutedBlocks>>,
    /// Set while a reporter drains `routed` (distributed mode only).
    reporting: std::sync::atomic::AtomicBool,
    /// Wakes the reporter: this picker's load or routing changed.
    pub(crate) report_due: tokio::sync::Notify,
    /// Every snapshot accepted, latest last (views are built from it and may skip some).
    snapshots: tokio::sync::watch::Sender<Arc<crate::model::Snapshot>>,
}

/// At most this many routed-block entries wait for the next report.
const MAX_PENDING_ROUTED: usize = 10_000;

impl Picker {
    pub fn new(scheduler: Scheduler, settings: PickerSettings, metrics: PickerMetrics) -> Self {
        let timer = metrics.plugin_timer(&scheduler.plugins());
        let scheduler = scheduler.with_plugin_timer(timer);
        let header_budget =
            limits::HeaderBudget::new(settings.limits.max_pending_header_bytes, metrics.pending_header_bytes());
        Picker {
            view: Arc::new(ArcSwap::from_pointee(PickerView::empty())),
            prefix: PrefixIndex::with_max_entries(scheduler.config.prefix.max_index_entries),
            scheduler,
            settings,
            metrics,
            header_budget,
            streams: AtomicU64::new(0),
            routed: Mutex::new(Vec::new()),
            reporting: std::sync::atomic::AtomicBool::new(false),
            report_due: tokio::sync::Notify::new(),
            snapshots: tokio::sync::watch::channel(crate::model::Snapshot::empty()).0,
        }
    }

    /// Request-header bytes held right now by streams waiting to be routed.
    pub fn pending_header_bytes(&self) -> usize {
        self.header_budget.held()
    }

    fn rng(&self) -> SmallRng {
        let n = self.streams.fetch_add(1, Ordering::Relaxed);
        SmallRng::seed_from_u64(self.settings.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    fn next_request_id(&self) -> String {
        let n = self.streams.load(Ordering::Relaxed);
        format!("{:016x}{:016x}", self.settings.seed, n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    /// This picker's in-flight load changed: the other pickers should hear of it soon.
    pub(crate) fn note_load_changed(&self) {
        if self.reporting.load(Ordering::Relaxed) {
            self.report_due.notify_one();
        }
    }

    /// Records blocks routed by this picker, for the next report to the leader.
    pub(crate) fn note_routed(&self, endpoint: &crate::model::EndpointId, hashes: &[u64]) {
        if hashes.is_empty() || !self.reporting.load(Ordering::Relaxed) {
            return;
        }
        let mut routed = self.routed.lock().unwrap_or_else(|p| p.into_inner());
        if routed.len() < MAX_PENDING_ROUTED {
            routed.push(crate::model::RoutedBlocks { endpoint: endpoint.clone(), hashes: hashes.to_vec() });
        } else {
            self.metrics.record_routed_dropped();
        }
    }

    /// Starts recording routed blocks for a reporter.
    pub fn enable_reporting(&self) {
        self.reporting.store(true, Ordering::Relaxed);
    }

    /// Takes the routed blocks recorded since the last call.
    pub fn take_routed(&self) -> Vec<crate::model::RoutedBlocks> {
        std::mem::take(&mut *self.routed.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The one way a snapshot enters the picker; it must see every snapshot, in order. The prefix
    /// index learns from it (the blocks other pickers routed; endpoints that left are pruned),
    /// then it is published to the view follower, which may skip some.
    pub fn accept(&self, snapshot: Arc<crate::model::Snapshot>) {
        self.learn(&snapshot);
        self.snapshots.send_replace(snapshot);
    }

    /// The latest snapshot accepted.
    pub fn held(&self) -> Arc<crate::model::Snapshot> {
        self.snapshots.borrow().clone()
    }

    /// The snapshots accepted from now on (the current one first).
    pub fn snapshots(&self) -> tokio::sync::watch::Receiver<Arc<crate::model::Snapshot>> {
        self.snapshots.subscribe()
    }

    /// O(endpoints + blocks) per snapshot; nothing when it routed no blocks and the prefix index
    /// is empty (the positions by id are built only when asked for).
    fn learn(&self, snapshot: &crate::model::Snapshot) {
        let index = std::cell::OnceCell::new();
        let index = || -> &HashMap<&crate::model::EndpointId, usize> {
            index.get_or_init(|| snapshot.endpoints.iter().enumerate().map(|(i, e)| (&e.endpoint.id, i)).collect())
        };
        // Block by block: picks in the meantime see the index part-way through this update.
        let prefix = &self.prefix;
        for b in &snapshot.routed_blocks {
            if let Some(&i) = index().get(&b.endpoint) {
                let capacity = self.scheduler.prefix_capacity(snapshot, i);
                prefix.insert(&snapshot.endpoints[i].endpoint.id, &b.hashes, capacity);
            }
        }
        prefix.retain(|id| index().contains_key(id));
    }

    /// Called when a new view is installed: updates the gauges.
    pub fn on_view(&self, view: &PickerView) {
        let entries = self.prefix.len();
        self.metrics.record_snapshot(view, entries);
    }
}
