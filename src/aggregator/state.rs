//! The aggregator's state as plain data: apply events, build the next snapshot.
//!
//! What pickers report is bounded here, whoever sends it: each load is clamped to
//! [`MAX_REPORTED_REQUESTS`] and its siblings and kept only for endpoints in the set, so one
//! reporter's share of a sum is bounded and the sums cannot wrap; each reporter may add at most
//! [`MAX_HASHES_PER_REPORTER`] routed hashes to a snapshot, so a flood from one cannot crowd out
//! the others (the excess is counted). Refusing reports outright is the wire's job (`wire.rs`).
//!
//! Building costs O(endpoints changed), not O(endpoints), once the publisher hands its snapshots
//! back ([`AggregatorState::recycle`]): every endpoint has a slot (its latest metrics and the sums
//! of the live picker reports for it) stamped with the first build that includes its latest
//! change, and a recycled snapshot that nobody else holds any more is updated in place at the
//! slots changed since it was built. Cloning every endpoint (its strings and labels) is what a
//! full build costs: 10,000 of them take longer than the 5 ms publish interval. A full build
//! still happens after the endpoint set changes, or when every recycled snapshot is in use.
//! [`AggregatorState::changes`] tells the publisher which positions a build changed, so deltas to
//! pickers are computed from those alone (`wire::snapshot_delta_to_proto_at`).
//! It does not publish or encode.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::model::{Endpoint, EndpointId, EndpointState, Load, MetricsState, RoutedBlocks, Snapshot, unix_micros};
use crate::protocol::{
    MAX_REPORTED_REQUESTS, MAX_REPORTED_SENT, MAX_REPORTED_TOKENS, MetricsScraped, PickerLoads, PickerReport,
    ScrapeFailed,
};

#[derive(Debug)]
pub struct AggregatorState {
    epoch: u64,
    seq: u64,
    /// One per endpoint of the set, in id order (the snapshot's order).
    slots: Vec<Slot>,
    /// Position of each id in `slots`.
    index: HashMap<EndpointId, usize>,
    /// Latest report of each picker's load, and when it came. The slots hold their sums, kept in
    /// step, so a snapshot costs O(endpoints), not O(endpoints × pickers).
    picker_loads: HashMap<String, (SystemTime, PickerLoads)>,
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
    objectives: Arc<BTreeMap<String, i32>>,
    /// Snapshots built so far. Slots are stamped in builds, not in `seq`, which restarts with
    /// every term.
    builds: u64,
    /// Bumped whenever the endpoint set changes (positions move).
    membership: u64,
    /// The last snapshot built.
    last: Option<Built>,
    /// Published snapshots handed back for reuse, oldest first.
    reuse: VecDeque<(Built, Arc<Snapshot>)>,
    /// Positions the last build may have changed since the one before (`None`: the set changed).
    changes: Option<Arc<[u32]>>,
}

/// Which build made a snapshot, and over which endpoint set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Built {
    build: u64,
    membership: u64,
    epoch: u64,
    seq: u64,
}

/// One endpoint: what a snapshot shows of it, and the sums of the live reports for it.
#[derive(Debug)]
struct Slot {
    /// Shared with every snapshot built from this slot until the endpoint changes.
    endpoint: Arc<Endpoint>,
    metrics: MetricsState,
    /// Sum of the live reports' in-flight load.
    inflight: Load,
    /// Sum of the live reports' sends since a scrape, by that scrape's time in µs (as the wire
    /// carries it); few entries (reports refer to the last scrape or two); zero sums removed.
    sent: Vec<(i64, i64)>,
    /// The first build that includes this slot's latest change.
    changed_at: u64,
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
/// Published snapshots kept for reuse. Each is a whole snapshot held a little longer than its
/// readers need it; three cover the readers of a few publish intervals ago.
const REUSE: usize = 3;

// === impl Slot ===

impl Slot {
    fn new(endpoint: Arc<Endpoint>, metrics: MetricsState, changed_at: u64) -> Self {
        Slot { endpoint, metrics, inflight: Load::default(), sent: Vec::new(), changed_at }
    }

    /// Adds (`sign` 1) or takes away (`sign` -1) one report's entries for this endpoint. Reports
    /// are bounded on the way in (`bounded`), so the sums are exact; saturating is a guard, not a
    /// mode.
    fn apply(&mut self, inflight: Option<&Load>, sent: Option<&(SystemTime, u64)>, sign: i64) {
        if let Some(l) = inflight {
            self.inflight.requests = self.inflight.requests.saturating_add(sign.saturating_mul(l.requests));
            self.inflight.tokens = self.inflight.tokens.saturating_add(sign.saturating_mul(l.tokens));
        }
        if let Some((at, n)) = sent {
            let key = unix_micros(*at);
            let n = sign.saturating_mul(i64::try_from(*n).unwrap_or(i64::MAX));
            match self.sent.iter().position(|(k, _)| *k == key) {
                Some(i) => {
                    self.sent[i].1 = self.sent[i].1.saturating_add(n);
                    if self.sent[i].1 == 0 {
                        self.sent.swap_remove(i);
                    }
                }
                None if n != 0 => self.sent.push((key, n)),
                None => {}
            }
        }
    }

    /// The shared load and the sends since the current scrape, as a snapshot shows them.
    fn shared(&self) -> (Load, u64) {
        let load = Load { requests: self.inflight.requests.max(0), tokens: self.inflight.tokens.max(0) };
        // Counts against an older scrape are already in the metrics.
        let sent = self
            .metrics
            .sample()
            .and_then(|s| {
                let key = unix_micros(s.scraped_at);
                self.sent.iter().find(|(k, _)| *k == key).map(|(_, n)| *n)
            })
            .unwrap_or(0)
            .max(0) as u64;
        (load, sent)
    }

    fn state(&self) -> EndpointState {
        let (shared_load, shared_sent_since_scrape) = self.shared();
        EndpointState {
            endpoint: self.endpoint.clone(),
            metrics: self.metrics.clone(),
            shared_load,
            shared_sent_since_scrape,
        }
    }

    /// Brings `e` (this endpoint in an older snapshot of the same set) up to date without
    /// cloning the endpoint itself.
    fn refresh(&self, e: &mut EndpointState) {
        debug_assert!(e.endpoint.id == self.endpoint.id);
        let (shared_load, shared_sent_since_scrape) = self.shared();
        e.metrics = self.metrics.clone();
        e.shared_load = shared_load;
        e.shared_sent_since_scrape = shared_sent_since_scrape;
    }
}

/// Replaces one picker's report (`old`, if any, by `new`) in the sums of the slots of the set,
/// stamping the slots whose snapshot view changed. A replaced report mostly repeats the old one,
/// so a slot is stamped on what a snapshot would show, not on being touched: taking a load away
/// and adding it back is no change.
fn replace_loads(
    slots: &mut [Slot],
    index: &HashMap<EndpointId, usize>,
    old: Option<&PickerLoads>,
    new: &PickerLoads,
    stamp: u64,
) {
    // (slot, in-flight load, sends since a scrape, sign): one report entry to add or take away.
    type Op<'a> = (usize, Option<&'a Load>, Option<&'a (SystemTime, u64)>, i64);
    let mut ops: Vec<Op<'_>> = Vec::new();
    for (loads, sign) in old.into_iter().map(|l| (l, -1)).chain([(new, 1)]) {
        for (id, l) in &loads.inflight {
            ops.extend(index.get(id).map(|&i| (i, Some(l), None, sign)));
        }
        for (id, s) in &loads.sent {
            ops.extend(index.get(id).map(|&i| (i, None, Some(s), sign)));
        }
    }
    let before: Vec<(Load, u64)> = ops.iter().map(|&(i, ..)| slots[i].shared()).collect();
    for &(i, inflight, sent, sign) in &ops {
        slots[i].apply(inflight, sent, sign);
    }
    for (&(i, ..), before) in ops.iter().zip(before) {
        if slots[i].shared() != before {
            slots[i].changed_at = stamp;
        }
    }
}

// === impl AggregatorState ===

impl AggregatorState {
    pub fn new(epoch: u64) -> Self {
        AggregatorState {
            epoch,
            seq: 0,
            slots: Vec::new(),
            index: HashMap::new(),
            picker_loads: HashMap::new(),
            pending_blocks: Vec::new(),
            pending_hashes: 0,
            pending_by_reporter: HashMap::new(),
            dropped_hashes: 0,
            over_budget_hashes: 0,
            dirty: true,
            objectives: Default::default(),
            builds: 0,
            membership: 0,
            last: None,
            reuse: VecDeque::new(),
            changes: None,
        }
    }

    pub fn sizes(&self) -> StateSizes {
        StateSizes {
            // Metrics and load sums live in the endpoint slots: one each per slot.
            endpoints: self.index.len(),
            metrics: self.slots.len(),
            picker_loads: self.picker_loads.len(),
            inflight_totals: self.slots.len(),
            sent_totals: self.slots.iter().map(|s| s.sent.len()).sum(),
            pending_blocks: self.pending_blocks.len(),
        }
    }

    /// A new term: snapshots restart at seq 1 under the new epoch.
    pub fn on_new_term(&mut self, epoch: u64) {
        self.epoch = epoch;
        self.seq = 0;
        self.dirty = true;
    }

    /// The stamp of a change made now: the next build includes it.
    fn stamp(&self) -> u64 {
        self.builds + 1
    }

    pub fn on_endpoints(&mut self, endpoints: Vec<Endpoint>) {
        let next: BTreeMap<EndpointId, Endpoint> = endpoints.into_iter().map(|e| (e.id.clone(), e)).collect();
        if next.len() == self.slots.len() && next.values().zip(&self.slots).all(|(e, s)| *e == *s.endpoint) {
            return;
        }
        let stamp = self.stamp();
        let mut old: HashMap<EndpointId, Slot> = self.slots.drain(..).map(|s| (s.endpoint.id.clone(), s)).collect();
        self.slots = next
            .into_values()
            .map(|e| match old.remove(&e.id) {
                Some(s) => {
                    // Metrics of a changed endpoint (new address or engine) no longer apply; an
                    // unchanged one keeps its allocation, shared with the snapshots.
                    let (endpoint, metrics) =
                        if *s.endpoint == e { (s.endpoint, s.metrics) } else { (Arc::new(e), MetricsState::Unknown) };
                    Slot { endpoint, metrics, inflight: s.inflight, sent: s.sent, changed_at: stamp }
                }
                None => {
                    // Joined (or back): the live reports may name it already.
                    let mut s = Slot::new(Arc::new(e), MetricsState::Unknown, stamp);
                    for (_, loads) in self.picker_loads.values() {
                        let id = &s.endpoint.id;
                        let (inflight, sent) = (loads.inflight.get(id).copied(), loads.sent.get(id).copied());
                        s.apply(inflight.as_ref(), sent.as_ref(), 1);
                    }
                    s
                }
            })
            .collect();
        self.index = self.slots.iter().enumerate().map(|(i, s)| (s.endpoint.id.clone(), i)).collect();
        self.membership += 1;
        self.reuse.clear();
        self.dirty = true;
    }

    /// InferenceObjective priorities from discovery.
    pub fn on_objectives(&mut self, objectives: &BTreeMap<String, i32>) {
        if *self.objectives != *objectives {
            self.objectives = Arc::new(objectives.clone());
            self.dirty = true;
        }
    }

    pub fn on_scraped(&mut self, msg: MetricsScraped) {
        let stamp = self.stamp();
        let Some(slot) = self.index.get(&msg.endpoint).and_then(|&i| self.slots.get_mut(i)) else { return };
        slot.metrics = MetricsState::Known { sample: msg.sample, last_error: None };
        slot.changed_at = stamp;
        self.dirty = true;
    }

    pub fn on_failed(&mut self, msg: ScrapeFailed) {
        let stamp = self.stamp();
        let Some(slot) = self.index.get(&msg.endpoint).and_then(|&i| self.slots.get_mut(i)) else { return };
        // The last good sample stays (it ages); a never-scraped endpoint stays Unknown.
        if let MetricsState::Known { last_error, .. } = &mut slot.metrics {
            let e = msg.error.to_string();
            if last_error.as_deref() != Some(e.as_str()) {
                *last_error = Some(e);
                slot.changed_at = stamp;
                self.dirty = true;
            }
        }
    }

    pub fn on_picker_report(&mut self, r: PickerReport, now: SystemTime) {
        let PickerReport { picker, loads, routed } = r;
        let loads = self.bounded(loads);
        if !loads.is_empty() || self.picker_loads.contains_key(&picker) {
            let stamp = self.stamp();
            let old = self.picker_loads.remove(&picker).map(|(_, l)| l);
            replace_loads(&mut self.slots, &self.index, old.as_ref(), &loads, stamp);
            self.picker_loads.insert(picker.clone(), (now, loads));
            self.dirty = true;
        }
        let mut used = self.pending_by_reporter.get(&picker).copied().unwrap_or(0);
        for mut b in routed {
            if !self.index.contains_key(&b.endpoint) || b.hashes.is_empty() {
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
            *l != Load::default() && self.index.contains_key(id)
        });
        loads.sent.retain(|id, (_, n)| {
            *n = (*n).min(MAX_REPORTED_SENT);
            *n > 0 && self.index.contains_key(id)
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
        let stamp = self.stamp();
        let (slots, index) = (&mut self.slots, &self.index);
        self.picker_loads.retain(|_, (at, loads)| {
            let live = now.duration_since(*at).unwrap_or_default() <= PICKER_LOAD_TTL;
            if !live {
                replace_loads(slots, index, Some(loads), &PickerLoads::default(), stamp);
            }
            live
        });
        self.builds = stamp;
        let changes: Arc<[u32]> =
            (0..self.slots.len()).filter(|&i| self.slots[i].changed_at == stamp).map(|i| i as u32).collect();
        let same_set = self.last.is_some_and(|l| l.membership == self.membership);
        self.changes = same_set.then_some(changes);
        self.pending_hashes = 0;
        self.pending_by_reporter.clear();
        let routed_blocks = std::mem::take(&mut self.pending_blocks);
        let snapshot = match self.take_reusable() {
            Some((built, mut s)) => {
                for (slot, e) in self.slots.iter().zip(s.endpoints.iter_mut()) {
                    if slot.changed_at > built.build {
                        slot.refresh(e);
                    }
                }
                s.epoch = self.epoch;
                s.seq = self.seq;
                s.published_at = now;
                s.routed_blocks = routed_blocks;
                s.objectives = self.objectives.clone();
                s.publish_span = None;
                s
            }
            None => Snapshot {
                epoch: self.epoch,
                seq: self.seq,
                endpoints: self.slots.iter().map(Slot::state).collect(),
                published_at: now,
                routed_blocks,
                objectives: self.objectives.clone(),
                publish_span: None,
            },
        };
        self.last = Some(Built { build: stamp, membership: self.membership, epoch: self.epoch, seq: self.seq });
        Some(snapshot)
    }

    /// Positions of the endpoints the last build may have changed since the build before it (a
    /// superset of those that differ), or `None` when the endpoint set changed in between (or
    /// nothing was built before).
    pub fn changes(&self) -> Option<Arc<[u32]>> {
        self.changes.clone()
    }

    /// Hands back the snapshot the last build returned, as published: once nobody else holds it,
    /// a later build updates it in place instead of cloning every endpoint. Any other snapshot
    /// is ignored.
    pub fn recycle(&mut self, published: Arc<Snapshot>) {
        let Some(last) = self.last else { return };
        if (published.epoch, published.seq) != (last.epoch, last.seq) || last.membership != self.membership {
            return;
        }
        self.reuse.push_back((last, published));
        while self.reuse.len() > REUSE {
            self.reuse.pop_front();
        }
    }

    /// The oldest recycled snapshot of the current set that nobody else holds.
    fn take_reusable(&mut self) -> Option<(Built, Snapshot)> {
        for _ in 0..self.reuse.len() {
            let (built, s) = self.reuse.pop_front()?;
            match Arc::try_unwrap(s) {
                Ok(s) if built.membership == self.membership && s.endpoints.len() == self.slots.len() => {
                    return Some((built, s));
                }
                Ok(_) => {}
                Err(s) => self.reuse.push_back((built, s)),
            }
        }
        None
    }
}

#[cfg(test)]
pub(super) mod tests;
