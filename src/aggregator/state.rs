//! The aggregator's state as plain data: apply events, build the next snapshot.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use std::time::Duration;

use crate::model::{Endpoint, EndpointId, EndpointState, Load, MetricsState, RoutedBlocks, Snapshot, unix_micros};
use crate::protocol::{MetricsScraped, PickerLoads, PickerReport, ScrapeFailed};

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
    /// Hashes dropped because `MAX_PENDING_HASHES` was reached.
    pub dropped_hashes: u64,
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
    /// Adds (`sign` 1) or takes away (`sign` -1) one picker's report. Wrapping arithmetic: a
    /// report is taken away exactly as it was added whatever numbers a picker sends, and a
    /// garbage report cannot make the leader panic (found by fuzzing).
    fn apply(&mut self, loads: &PickerLoads, sign: i64) {
        for (id, l) in &loads.inflight {
            let t = self.inflight.entry(id.clone()).or_default();
            t.requests = t.requests.wrapping_add(sign.wrapping_mul(l.requests));
            t.tokens = t.tokens.wrapping_add(sign.wrapping_mul(l.tokens));
            if *t == Load::default() {
                self.inflight.remove(id);
            }
        }
        for (id, (at, n)) in &loads.sent {
            let by_scrape = self.sent.entry(id.clone()).or_default();
            let key = unix_micros(*at);
            let t = by_scrape.entry(key).or_default();
            *t = t.wrapping_add(sign.wrapping_mul(*n as i64));
            if *t == 0 {
                by_scrape.remove(&key);
                if by_scrape.is_empty() {
                    self.sent.remove(id);
                }
            }
        }
    }
}

/// Picker loads older than this are forgotten (the picker is gone).
const PICKER_LOAD_TTL: Duration = Duration::from_secs(2);
/// At most this many routed hashes wait for the next snapshot.
const MAX_PENDING_HASHES: usize = 200_000;

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
            dropped_hashes: 0,
            dirty: true,
            objectives: Default::default(),
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
        if !r.loads.is_empty() || self.picker_loads.contains_key(&r.picker) {
            if let Some((_, old)) = self.picker_loads.remove(&r.picker) {
                self.totals.apply(&old, -1);
            }
            self.totals.apply(&r.loads, 1);
            self.picker_loads.insert(r.picker, (now, r.loads));
            self.dirty = true;
        }
        for b in r.routed {
            if !self.endpoints.contains_key(&b.endpoint) || b.hashes.is_empty() {
                continue;
            }
            if self.pending_hashes + b.hashes.len() > MAX_PENDING_HASHES {
                self.dropped_hashes += b.hashes.len() as u64;
                continue;
            }
            self.pending_hashes += b.hashes.len();
            self.pending_blocks.push(b);
            self.dirty = true;
        }
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
        let routed_blocks = std::mem::take(&mut self.pending_blocks);
        Some(Snapshot {
            epoch: self.epoch,
            seq: self.seq,
            endpoints,
            published_at: now,
            routed_blocks,
            objectives: self.objectives.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::model::{EndpointMetrics, MetricsSample};
    use crate::protocol::ScrapeError;

    fn ep(id: &str, addr: &str) -> Endpoint {
        Endpoint {
            id: EndpointId::new(id),
            address: addr.into(),
            metrics_url: format!("http://{addr}/metrics"),
            engine: "vllm".into(),
            labels: Default::default(),
        }
    }

    fn scraped(id: &str, queued: u64) -> MetricsScraped {
        MetricsScraped {
            endpoint: EndpointId::new(id),
            sample: Arc::new(MetricsSample {
                metrics: EndpointMetrics { queued: Some(queued), ..Default::default() },
                scraped_at: SystemTime::UNIX_EPOCH,
                errors: vec![],
            }),
            latency: Duration::ZERO,
        }
    }

    #[test]
    fn snapshots_are_versioned_and_coalesced() {
        let mut s = AggregatorState::new(7);
        s.on_endpoints(vec![ep("a", "1.1.1.1:80"), ep("b", "1.1.1.2:80")]);
        let first = s.build(SystemTime::UNIX_EPOCH).expect("first");
        assert_eq!((first.epoch, first.seq, first.endpoints.len()), (7, 1, 2));
        assert!(first.endpoints.iter().all(|e| e.metrics == MetricsState::Unknown));
        assert!(s.build(SystemTime::UNIX_EPOCH).is_none(), "nothing changed");
        s.on_scraped(scraped("a", 3));
        s.on_scraped(scraped("a", 4));
        s.on_scraped(scraped("ghost", 1));
        let second = s.build(SystemTime::UNIX_EPOCH).expect("second");
        assert_eq!(second.seq, 2);
        assert!(second.is_newer_than(&first));
        assert_eq!(second.endpoints[0].metrics.sample().and_then(|x| x.metrics.queued), Some(4));
    }

    #[test]
    fn failures_keep_the_last_sample_and_unknown_stays_unknown() {
        let mut s = AggregatorState::new(1);
        s.on_endpoints(vec![ep("a", "1.1.1.1:80"), ep("b", "1.1.1.2:80")]);
        s.on_scraped(scraped("a", 3));
        let fail = |id: &str| ScrapeFailed {
            endpoint: EndpointId::new(id),
            error: ScrapeError::Refused,
            at: SystemTime::UNIX_EPOCH,
            latency: Duration::ZERO,
        };
        s.on_failed(fail("a"));
        s.on_failed(fail("b"));
        let snap = s.build(SystemTime::UNIX_EPOCH).expect("snapshot");
        match &snap.endpoints[0].metrics {
            MetricsState::Known { sample, last_error } => {
                assert_eq!(sample.metrics.queued, Some(3));
                assert_eq!(last_error.as_deref(), Some("connection refused"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(snap.endpoints[1].metrics, MetricsState::Unknown);
    }

    #[test]
    fn picker_reports_are_summed_and_blocks_forwarded_once() {
        let mut s = AggregatorState::new(1);
        s.on_endpoints(vec![ep("a", "1.1.1.1:80")]);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        let load = |r: i64| PickerLoads {
            inflight: [(EndpointId::new("a"), Load { requests: r, tokens: 10 * r })].into_iter().collect(),
            sent: HashMap::new(),
        };
        let blocks = vec![RoutedBlocks { endpoint: EndpointId::new("a"), hashes: vec![1, 2] }];
        s.on_picker_report(PickerReport { picker: "p1".into(), loads: load(2), routed: blocks.clone() }, t0);
        s.on_picker_report(PickerReport { picker: "p2".into(), loads: load(3), routed: vec![] }, t0);
        let snap = s.build(t0).expect("snapshot");
        assert_eq!(snap.endpoints[0].shared_load, Load { requests: 5, tokens: 50 });
        assert_eq!(snap.routed_blocks, blocks);
        s.on_scraped(scraped("a", 1));
        let next = s.build(t0).expect("snapshot");
        assert!(next.routed_blocks.is_empty(), "blocks go out once");
        // A picker that stops reporting is forgotten.
        s.on_scraped(scraped("a", 2));
        let later = s.build(t0 + Duration::from_secs(5)).expect("snapshot");
        assert_eq!(later.endpoints[0].shared_load, Load::default());
    }

    #[test]
    fn sends_since_a_scrape_count_only_against_that_scrape() {
        let mut s = AggregatorState::new(1);
        s.on_endpoints(vec![ep("a", "1.1.1.1:80")]);
        let at = |ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        let scrape = |ms: u64| MetricsScraped {
            endpoint: EndpointId::new("a"),
            sample: Arc::new(MetricsSample { metrics: EndpointMetrics::default(), scraped_at: at(ms), errors: vec![] }),
            latency: Duration::ZERO,
        };
        let report = |picker: &str, scrape_ms: u64, n: u64| PickerReport {
            picker: picker.into(),
            loads: PickerLoads {
                inflight: HashMap::new(),
                sent: [(EndpointId::new("a"), (at(scrape_ms), n))].into_iter().collect(),
            },
            routed: vec![],
        };
        s.on_scraped(scrape(100));
        s.on_picker_report(report("p1", 100, 2), at(120));
        s.on_picker_report(report("p2", 100, 3), at(120));
        s.on_picker_report(report("p3", 50, 7), at(120));
        let snap = s.build(at(120)).expect("snapshot");
        assert_eq!(snap.endpoints[0].shared_sent_since_scrape, 5, "p3's sends are in the 100 ms scrape already");
        // A new scrape absorbs them all, until the pickers report against it.
        s.on_scraped(scrape(150));
        assert_eq!(s.build(at(150)).expect("snapshot").endpoints[0].shared_sent_since_scrape, 0);
        s.on_picker_report(report("p1", 150, 1), at(160));
        assert_eq!(s.build(at(160)).expect("snapshot").endpoints[0].shared_sent_since_scrape, 1);
    }

    proptest::proptest! {
        /// The running totals always equal a fresh sum over the live reports, whatever the order
        /// of reports, replacements and expiries.
        #[test]
        fn running_totals_equal_a_fresh_sum(
            steps in proptest::collection::vec(
                (
                    0usize..4,
                    proptest::collection::vec((0usize..3, -2i64..4, 0u64..3, 0u64..3), 0..4),
                    0u64..1500,
                    proptest::option::of((0usize..3, 0u64..3)),
                ),
                1..40,
            ),
        ) {
            let mut s = AggregatorState::new(1);
            let ids = ["a", "b", "c"];
            s.on_endpoints(ids.iter().map(|id| ep(id, "1.1.1.1:80")).collect());
            let at = |ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
            let mut now = 1_000_000;
            for (picker, entries, advance, scrape) in steps {
                now += advance;
                if let Some((e, when)) = scrape {
                    let sample = MetricsSample { metrics: EndpointMetrics::default(), scraped_at: at(when), errors: vec![] };
                    let endpoint = EndpointId::new(ids[e]);
                    s.on_scraped(MetricsScraped { endpoint, sample: Arc::new(sample), latency: Duration::ZERO });
                }
                let mut loads = PickerLoads::default();
                for (e, requests, sent, scrape) in entries {
                    let id = EndpointId::new(ids[e]);
                    loads.inflight.insert(id.clone(), Load { requests, tokens: 10 * requests });
                    loads.sent.insert(id, (at(scrape), sent));
                }
                s.on_picker_report(PickerReport { picker: format!("p{picker}"), loads, routed: vec![] }, at(now));
                let Some(snap) = s.build(at(now)) else { continue };
                for st in &snap.endpoints {
                    let (mut load, mut sent) = (Load::default(), 0);
                    let scraped_at = st.metrics.sample().map(|x| x.scraped_at);
                    for (_, l) in s.picker_loads.values() {
                        if let Some(x) = l.inflight.get(&st.endpoint.id) {
                            load.requests += x.requests;
                            load.tokens += x.tokens;
                        }
                        if let Some((when, n)) = l.sent.get(&st.endpoint.id)
                            && Some(*when) == scraped_at
                        {
                            sent += n;
                        }
                    }
                    proptest::prop_assert_eq!(st.shared_load, load);
                    proptest::prop_assert_eq!(st.shared_sent_since_scrape, sent);
                }
                let mut fresh = SharedTotals::default();
                for (_, l) in s.picker_loads.values() {
                    fresh.apply(l, 1);
                }
                proptest::prop_assert_eq!(&s.totals.inflight, &fresh.inflight);
                proptest::prop_assert_eq!(&s.totals.sent, &fresh.sent);
            }
        }
    }

    #[test]
    fn changed_endpoint_forgets_old_metrics() {
        let mut s = AggregatorState::new(1);
        s.on_endpoints(vec![ep("a", "1.1.1.1:80")]);
        s.on_scraped(scraped("a", 3));
        s.on_endpoints(vec![ep("a", "9.9.9.9:80")]);
        let snap = s.build(SystemTime::UNIX_EPOCH).expect("snapshot");
        assert_eq!(snap.endpoints[0].metrics, MetricsState::Unknown);
    }
}
