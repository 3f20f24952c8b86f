//! The aggregator's state as plain data: apply events, build the next snapshot.
//!
//! What pickers report is bounded here, whoever sends it: each load is clamped to
//! [`MAX_REPORTED_REQUESTS`] and its siblings and kept only for endpoints in the set, so one
//! reporter's share of a sum is bounded and the sums cannot wrap; each reporter may add at most
//! [`MAX_HASHES_PER_REPORTER`] routed hashes to a snapshot, so a flood from one cannot crowd out
//! the others (the excess is counted). Refusing reports outright is the wire's job (`wire.rs`).

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use std::time::Duration;

use crate::model::{Endpoint, EndpointId, EndpointState, Load, MetricsState, RoutedBlocks, Snapshot, unix_micros};
use crate::protocol::{
    MAX_REPORTED_REQUESTS, MAX_REPORTED_SENT, MAX_REPORTED_TOKENS, MetricsScraped, PickerLoads, PickerReport,
    ScrapeFailed,
};

#[derive(Debug)]
pub struct AggregatorState {
    epoch: u64,
    seq: u64,
    endpoints: BTreeMap<EndpointId, Endpoint>,
    metrics: HashMap<EndpointId, MetricsState>,
    /// Latest report of each picker's load, and when it came.
    picker_loads: HashMap<String, (SystemTime, PickerLoads)>,
    /// Their sums per endpoint, kept in step (a snapshot costs O(endpoints), not O(endpoints ×
    /// pickers)).
    totals: SharedTotals,
    /// Prefix blocks routed since the last snapshot (bounded).
    pending_blocks: Vec<RoutedBlocks>,
    pending_hashes: usize,
    /// Routed hashes each reporter added to the next snapshot, against its budget.
    pending_by_reporter: HashMap<String, usize>,
    /// Hashes dropped because `MAX_PENDING_HASHES` was reached.
    pub dropped_hashes: u64,
    /// Hashes dropped because their reporter had used its budget for the next snapshot.
    pub over_budget_hashes: u64,
    dirty: bool,
    /// From discovery; shared by every snapshot until it changes.
    objectives: std::sync::Arc<BTreeMap<String, i32>>,
}

/// Every live picker report summed per endpoint: in-flight load, and sends since a scrape, by the
/// scrape they refer to. Entries that sum to zero are removed, so it holds at most what the live
/// reports hold.
#[derive(Debug, Default)]
struct SharedTotals {
    inflight: HashMap<EndpointId, Load>,
    /// Keyed by the scrape time in µs, as the wire carries it.
    sent: HashMap<EndpointId, HashMap<i64, i64>>,
}

impl SharedTotals {
    /// Adds (`sign` 1) or takes away (`sign` -1) one picker's report. Reports are bounded on the
    /// way in (`bounded`), so the sums are exact; saturating is a guard, not a mode.
    fn apply(&mut self, loads: &PickerLoads, sign: i64) {
        for (id, l) in &loads.inflight {
            let t = self.inflight.entry(id.clone()).or_default();
            t.requests = t.requests.saturating_add(sign.saturating_mul(l.requests));
            t.tokens = t.tokens.saturating_add(sign.saturating_mul(l.tokens));
            if *t == Load::default() {
                self.inflight.remove(id);
            }
        }
        for (id, (at, n)) in &loads.sent {
            let by_scrape = self.sent.entry(id.clone()).or_default();
            let key = unix_micros(*at);
            let t = by_scrape.entry(key).or_default();
            *t = t.saturating_add(sign.saturating_mul(i64::try_from(*n).unwrap_or(i64::MAX)));
            if *t == 0 {
                by_scrape.remove(&key);
                if by_scrape.is_empty() {
                    self.sent.remove(id);
                }
            }
        }
    }
}

/// Entries held in each of the state's maps, for the leader's gauges: under steady churn each
/// stays bounded by the endpoint set and the live pickers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateSizes {
    pub endpoints: usize,
    pub metrics: usize,
    pub picker_loads: usize,
    pub inflight_totals: usize,
    /// Per-scrape send counts over all endpoints.
    pub sent_totals: usize,
    pub pending_blocks: usize,
}

/// Picker loads older than this are forgotten (the picker is gone).
const PICKER_LOAD_TTL: Duration = Duration::from_secs(2);
/// At most this many routed hashes wait for the next snapshot.
const MAX_PENDING_HASHES: usize = 200_000;
/// At most this many of them from one reporter: 64 requests of 256 blocks (the prefix scorer's
/// default cap) per snapshot, ~6,400 such requests/s per picker at its 10 ms report interval.
pub const MAX_HASHES_PER_REPORTER: usize = 16_384;

impl AggregatorState {
    pub fn new(epoch: u64) -> Self {
        AggregatorState {
            epoch,
            seq: 0,
            endpoints: BTreeMap::new(),
            metrics: HashMap::new(),
            picker_loads: HashMap::new(),
            totals: SharedTotals::default(),
            pending_blocks: Vec::new(),
            pending_hashes: 0,
            pending_by_reporter: HashMap::new(),
            dropped_hashes: 0,
            over_budget_hashes: 0,
            dirty: true,
            objectives: Default::default(),
        }
    }

    pub fn sizes(&self) -> StateSizes {
        StateSizes {
            endpoints: self.endpoints.len(),
            metrics: self.metrics.len(),
            picker_loads: self.picker_loads.len(),
            inflight_totals: self.totals.inflight.len(),
            sent_totals: self.totals.sent.values().map(HashMap::len).sum(),
            pending_blocks: self.pending_blocks.len(),
        }
    }

    /// A new term: snapshots restart at seq 1 under the new epoch.
    pub fn on_new_term(&mut self, epoch: u64) {
        self.epoch = epoch;
        self.seq = 0;
        self.dirty = true;
    }

    pub fn on_endpoints(&mut self, endpoints: Vec<Endpoint>) {
        let next: BTreeMap<EndpointId, Endpoint> = endpoints.into_iter().map(|e| (e.id.clone(), e)).collect();
        if next != self.endpoints {
            // Metrics of a changed endpoint (new address or engine) no longer apply.
            self.metrics.retain(|id, _| next.get(id).is_some_and(|e| self.endpoints.get(id) == Some(e)));
            self.endpoints = next;
            self.dirty = true;
        }
    }

    /// InferenceObjective priorities from discovery.
    pub fn on_objectives(&mut self, objectives: &BTreeMap<String, i32>) {
        if *self.objectives != *objectives {
            self.objectives = std::sync::Arc::new(objectives.clone());
            self.dirty = true;
        }
    }

    pub fn on_scraped(&mut self, msg: MetricsScraped) {
        if !self.endpoints.contains_key(&msg.endpoint) {
            return;
        }
        self.metrics.insert(msg.endpoint, MetricsState::Known { sample: msg.sample, last_error: None });
        self.dirty = true;
    }

    pub fn on_failed(&mut self, msg: ScrapeFailed) {
        if !self.endpoints.contains_key(&msg.endpoint) {
            return;
        }
        // The last good sample stays (it ages); a never-scraped endpoint stays Unknown.
        if let Some(MetricsState::Known { last_error, .. }) = self.metrics.get_mut(&msg.endpoint) {
            let e = msg.error.to_string();
            if last_error.as_deref() != Some(e.as_str()) {
                *last_error = Some(e);
                self.dirty = true;
            }
        }
    }

    pub fn on_picker_report(&mut self, r: PickerReport, now: SystemTime) {
        let PickerReport { picker, loads, routed } = r;
        let loads = self.bounded(loads);
        if !loads.is_empty() || self.picker_loads.contains_key(&picker) {
            if let Some((_, old)) = self.picker_loads.remove(&picker) {
                self.totals.apply(&old, -1);
            }
            self.totals.apply(&loads, 1);
            self.picker_loads.insert(picker.clone(), (now, loads));
            self.dirty = true;
        }
        let mut used = self.pending_by_reporter.get(&picker).copied().unwrap_or(0);
        for mut b in routed {
            if !self.endpoints.contains_key(&b.endpoint) || b.hashes.is_empty() {
                continue;
            }
            let (budget, room) = (MAX_HASHES_PER_REPORTER - used, MAX_PENDING_HASHES - self.pending_hashes);
            if b.hashes.len() > budget.min(room) {
                // The first hashes are the prompt's first blocks, the ones most shared: keep those.
                let excess = (b.hashes.len() - budget.min(room)) as u64;
                if budget <= room {
                    self.over_budget_hashes += excess;
                } else {
                    self.dropped_hashes += excess;
                }
                b.hashes.truncate(budget.min(room));
                if b.hashes.is_empty() {
                    continue;
                }
            }
            used += b.hashes.len();
            self.pending_hashes += b.hashes.len();
            self.pending_blocks.push(b);
            self.dirty = true;
        }
        if used > 0 {
            self.pending_by_reporter.insert(picker, used);
        }
    }

    /// One reporter's loads as they are folded in: endpoints of the set only, each count clamped
    /// to what an honest picker could report (at least 0), zeros left out.
    fn bounded(&self, mut loads: PickerLoads) -> PickerLoads {
        loads.inflight.retain(|id, l| {
            l.requests = l.requests.clamp(0, MAX_REPORTED_REQUESTS);
            l.tokens = l.tokens.clamp(0, MAX_REPORTED_TOKENS);
            *l != Load::default() && self.endpoints.contains_key(id)
        });
        loads.sent.retain(|id, (_, n)| {
            *n = (*n).min(MAX_REPORTED_SENT);
            *n > 0 && self.endpoints.contains_key(id)
        });
        loads
    }

    /// The next snapshot when anything changed since the last one.
    pub fn build(&mut self, now: SystemTime) -> Option<Snapshot> {
        if !self.dirty {
            return None;
        }
        self.dirty = false;
        self.seq += 1;
        let totals = &mut self.totals;
        self.picker_loads.retain(|_, (at, loads)| {
            let live = now.duration_since(*at).unwrap_or_default() <= PICKER_LOAD_TTL;
            if !live {
                totals.apply(loads, -1);
            }
            live
        });
        let endpoints = self
            .endpoints
            .values()
            .map(|e| {
                let metrics = self.metrics.get(&e.id).cloned().unwrap_or_default();
                let shared = self.totals.inflight.get(&e.id).copied().unwrap_or_default();
                let shared = Load { requests: shared.requests.max(0), tokens: shared.tokens.max(0) };
                // Counts against an older scrape are already in the metrics.
                let sent = metrics
                    .sample()
                    .and_then(|s| self.totals.sent.get(&e.id)?.get(&unix_micros(s.scraped_at)).copied())
                    .unwrap_or(0)
                    .max(0) as u64;
                EndpointState { endpoint: e.clone(), metrics, shared_load: shared, shared_sent_since_scrape: sent }
            })
            .collect();
        self.pending_hashes = 0;
        self.pending_by_reporter.clear();
        let routed_blocks = std::mem::take(&mut self.pending_blocks);
        Some(Snapshot {
            epoch: self.epoch,
            seq: self.seq,
            endpoints,
            published_at: now,
            routed_blocks,
            objectives: self.objectives.clone(),
            publish_span: None,
        })
    }
}

#[cfg(test)]
mod tests;
