//! The picker's view: the snapshot it holds plus its own per-endpoint counters, swapped whole
//! when a newer snapshot arrives. The request path only `load_full()`s it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::model::{EndpointId, Load, Snapshot};
use crate::scheduling::LocalLoad;

/// This picker's counters for one endpoint; they survive snapshot changes.
#[derive(Debug, Default)]
pub struct EndpointCounters {
    /// Requests routed to the endpoint, ever.
    pub picks: AtomicU64,
    pub inflight_requests: AtomicI64,
    pub inflight_tokens: AtomicI64,
    /// What this picker last reported to the leader (already inside the snapshot's shared load).
    pub reported_requests: AtomicI64,
    pub reported_tokens: AtomicI64,
}

impl EndpointCounters {
    pub fn start(&self, tokens: i64) {
        self.picks.fetch_add(1, Ordering::Relaxed);
        self.inflight_requests.fetch_add(1, Ordering::Relaxed);
        self.inflight_tokens.fetch_add(tokens, Ordering::Relaxed);
    }

    pub fn finish(&self, tokens: i64) {
        self.inflight_requests.fetch_sub(1, Ordering::Relaxed);
        self.inflight_tokens.fetch_sub(tokens, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub struct PickerView {
    pub snapshot: Arc<Snapshot>,
    /// Same order as `snapshot.endpoints`.
    pub counters: Vec<Arc<EndpointCounters>>,
    /// `picks` of each endpoint when its current metrics arrived.
    baseline: Vec<u64>,
}

impl PickerView {
    pub fn empty() -> Self {
        PickerView { snapshot: Snapshot::empty(), counters: Vec::new(), baseline: Vec::new() }
    }

    /// The scheduler's input: sends since the endpoint's last scrape and in-flight load.
    pub fn local_loads(&self) -> Vec<LocalLoad> {
        self.counters
            .iter()
            .zip(&self.baseline)
            .map(|(c, base)| LocalLoad {
                sent_since_scrape: c.picks.load(Ordering::Relaxed).saturating_sub(*base),
                // The snapshot's shared load already holds what this picker reported; count
                // only the change since (the scorer adds the shared load and clamps at zero).
                inflight: Load {
                    requests: c.inflight_requests.load(Ordering::Relaxed) - c.reported_requests.load(Ordering::Relaxed),
                    tokens: c.inflight_tokens.load(Ordering::Relaxed) - c.reported_tokens.load(Ordering::Relaxed),
                },
            })
            .collect()
    }

    pub fn is_ready(&self) -> bool {
        !self.snapshot.endpoints.is_empty()
    }
}

/// Builds views from snapshots; owns the counters registry (only this task touches it).
#[derive(Debug, Default)]
pub struct ViewBuilder {
    counters: HashMap<EndpointId, (Arc<EndpointCounters>, Option<SystemTime>, u64)>,
}

impl ViewBuilder {
    /// The next view, or `None` when `snapshot` is not newer than `current` (fencing).
    pub fn next(&mut self, current: &PickerView, snapshot: Arc<Snapshot>) -> Option<PickerView> {
        if current.is_ready() && !snapshot.is_newer_than(&current.snapshot) {
            return None;
        }
        let mut counters = Vec::with_capacity(snapshot.endpoints.len());
        let mut baseline = Vec::with_capacity(snapshot.endpoints.len());
        for e in &snapshot.endpoints {
            let scraped_at = e.metrics.sample().map(|s| s.scraped_at);
            let entry = self.counters.entry(e.endpoint.id.clone()).or_insert_with(|| (Arc::default(), None, 0));
            if entry.1 != scraped_at {
                entry.1 = scraped_at;
                entry.2 = entry.0.picks.load(Ordering::Relaxed);
            }
            counters.push(entry.0.clone());
            baseline.push(entry.2);
        }
        // Forget endpoints that left the pool once nothing is in flight to them.
        self.counters
            .retain(|id, (c, _, _)| snapshot.index_of(id).is_some() || c.inflight_requests.load(Ordering::Relaxed) > 0);
        Some(PickerView { snapshot, counters, baseline })
    }
}

/// Follows a snapshot channel into `target` until the sender is gone. `on_change` runs after each
/// swap (readiness, prefix-index pruning).
pub async fn follow(
    mut rx: watch::Receiver<Arc<Snapshot>>,
    target: Arc<ArcSwap<PickerView>>,
    mut on_change: impl FnMut(&PickerView) + Send,
) {
    let mut builder = ViewBuilder::default();
    loop {
        let snapshot = rx.borrow_and_update().clone();
        if let Some(view) = builder.next(&target.load(), snapshot) {
            on_change(&view);
            target.store(Arc::new(view));
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}
