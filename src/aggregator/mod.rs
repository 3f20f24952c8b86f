//! The aggregator: merges the endpoint set (discovery) and scrape results into versioned,
//! immutable snapshots and publishes them, coalesced to at most one per interval.
//!
//! Inputs: the endpoint set of a discovery source (a `watch` channel the actor follows for its
//! whole life: it owns the set and hands every new one to its [`Assigner`]), `ScrapeReports`
//! (scrapers, in batches), picker reports, leadership events.
//! Output: `Arc<Snapshot>` on a `watch` channel, stamped `(epoch, seq)`. In standalone mode the
//! epoch is fixed (local leadership); the distributed leader takes it from its etcd term.
//! It does not scrape, discover or schedule.

pub mod assign;
pub mod election;
pub mod metrics;
mod readiness;
pub mod serve;
mod state;

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::watch;

pub use assign::{Assigner, RemoteScraping};
pub use readiness::track_readiness;
pub use state::AggregatorState;

pub use crate::protocol::{PickerLoads, PickerReport};

use crate::discovery::EndpointSet;
use crate::model::{RoutedBlocks, Snapshot};
use crate::protocol::ScrapeReports;

/// This replica became the leader (or is alone, in standalone mode).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct LeadershipAcquired {
    pub epoch: u64,
}

/// This replica must stop publishing now.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct LeadershipLost;

pub struct Aggregator {
    state: AggregatorState,
    tx: watch::Sender<Arc<Snapshot>>,
    routed: Arc<RoutedLog>,
    leading: watch::Sender<bool>,
    publish_interval: Duration,
    /// The discovery source's sets; taken when the actor starts.
    source: Option<watch::Receiver<Arc<EndpointSet>>>,
    synced: watch::Sender<bool>,
    assigner: Assigner,
    gauges: metrics::StateGauges,
}

/// What an aggregator publishes: snapshots, the prefix blocks each carried, whether it currently
/// leads, and whether its discovery source has synced.
#[derive(Clone)]
pub struct AggregatorOutputs {
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub routed: Arc<RoutedLog>,
    pub leading: watch::Receiver<bool>,
    pub synced: watch::Receiver<bool>,
    /// What the leader holds (its role registers them).
    pub gauges: metrics::StateGauges,
}

/// The prefix blocks of the recent snapshots, and which endpoint positions each changed. The
/// `watch` channel keeps only the latest snapshot; a picker stream that skipped some (it was busy,
/// or snapshots came faster than it sends) takes the blocks of the skipped ones from here, so
/// routing knowledge is not lost with them; a delta is built from the changed positions alone.
#[derive(Debug, Default)]
pub struct RoutedLog {
    entries: std::sync::Mutex<LogEntries>,
    /// Routed hashes dropped because too many waited for the next snapshot.
    pub hashes_dropped: prometheus_client::metrics::counter::Counter,
    /// Routed hashes dropped because their reporter had used its budget for the next snapshot.
    pub hashes_over_budget: prometheus_client::metrics::counter::Counter,
    /// Deltas sent without the blocks of skipped snapshots (no longer remembered).
    pub gaps: prometheus_client::metrics::counter::Counter,
}

/// `(epoch, seq)` of a snapshot, the blocks it carried, and the positions it changed since the
/// snapshot before it (`None`: the endpoint set changed).
#[derive(Debug)]
struct RoutedEntry {
    epoch: u64,
    seq: u64,
    blocks: Arc<[RoutedBlocks]>,
    changed: Option<Arc<[u32]>>,
}

#[derive(Debug, Default)]
struct LogEntries {
    entries: std::collections::VecDeque<RoutedEntry>,
    /// Hashes held in `entries`.
    hashes: usize,
}

fn hash_count(blocks: &[RoutedBlocks]) -> usize {
    blocks.iter().map(|b| b.hashes.len()).sum()
}

impl RoutedLog {
    /// Snapshots remembered; at the 5 ms publish interval, 2.5 s.
    const CAPACITY: usize = 512;
    /// Hashes remembered over all of them (8 MB), whichever limit comes first.
    const MAX_HASHES: usize = 1 << 20;

    /// Remembers what `s` carried and the positions it changed ([`AggregatorState::changes`]).
    pub fn push(&self, s: &Snapshot, changed: Option<Arc<[u32]>>) {
        let mut log = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        log.hashes += hash_count(&s.routed_blocks);
        let blocks = Arc::from(s.routed_blocks.as_slice());
        log.entries.push_back(RoutedEntry { epoch: s.epoch, seq: s.seq, blocks, changed });
        while log.entries.len() > Self::CAPACITY || (log.hashes > Self::MAX_HASHES && log.entries.len() > 1) {
            if let Some(e) = log.entries.pop_front() {
                log.hashes -= hash_count(&e.blocks);
            }
        }
    }

    /// Snapshots and hashes held.
    pub fn held(&self) -> (usize, usize) {
        let log = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        (log.entries.len(), log.hashes)
    }

    /// Visits the entries of snapshots `after < seq <= upto` of `epoch` in order; `false` when
    /// some of them are no longer remembered (or `visit` said so).
    fn each_between(&self, epoch: u64, after: u64, upto: u64, mut visit: impl FnMut(&RoutedEntry) -> bool) -> bool {
        let log = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut expect = after + 1;
        for e in log.entries.iter() {
            if e.epoch != epoch || e.seq <= after || e.seq > upto {
                continue;
            }
            if e.seq != expect || !visit(e) {
                return false;
            }
            expect += 1;
        }
        expect == upto + 1
    }

    /// The blocks of snapshots `after < seq <= upto` of `epoch`, or `None` when some of them are
    /// no longer remembered.
    pub fn between(&self, epoch: u64, after: u64, upto: u64) -> Option<Vec<RoutedBlocks>> {
        let mut out = Vec::new();
        self.each_between(epoch, after, upto, |e| {
            out.extend(e.blocks.iter().cloned());
            true
        })
        .then_some(out)
    }

    /// The endpoint positions (ascending) that snapshots `after < seq <= upto` of `epoch` may
    /// have changed, or `None` when the endpoint set changed in between or some of them are no
    /// longer remembered (a delta must then compare every endpoint).
    pub fn changed_between(&self, epoch: u64, after: u64, upto: u64) -> Option<Vec<u32>> {
        let mut out = Vec::new();
        let known = self.each_between(epoch, after, upto, |e| match &e.changed {
            Some(c) => {
                out.extend_from_slice(c);
                true
            }
            None => false,
        });
        known.then(|| {
            out.sort_unstable();
            out.dedup();
            out
        })
    }
}

impl Aggregator {
    /// Standalone: leader at once with `epoch`.
    pub fn new(
        epoch: u64,
        publish_interval: Duration,
        source: watch::Receiver<Arc<EndpointSet>>,
        assigner: Assigner,
    ) -> (Self, AggregatorOutputs) {
        let (mut agg, out) = Self::follower(publish_interval, source, assigner);
        agg.state.on_new_term(epoch);
        agg.assigner.lead(epoch);
        agg.leading.send_replace(true);
        (agg, out)
    }

    /// Not leading until told `LeadershipAcquired`. Follows `source` from start to finish and
    /// hands every set to `assigner`.
    pub fn follower(
        publish_interval: Duration,
        source: watch::Receiver<Arc<EndpointSet>>,
        assigner: Assigner,
    ) -> (Self, AggregatorOutputs) {
        let (tx, snapshots) = watch::channel(Snapshot::empty());
        let (leading, leading_rx) = watch::channel(false);
        let (synced, synced_rx) = watch::channel(false);
        let routed = Arc::new(RoutedLog::default());
        let gauges = metrics::StateGauges::default();
        let agg = Aggregator {
            state: AggregatorState::new(0),
            tx,
            routed: routed.clone(),
            leading,
            publish_interval,
            source: Some(source),
            synced,
            assigner,
            gauges: gauges.clone(),
        };
        (agg, AggregatorOutputs { snapshots, routed, leading: leading_rx, synced: synced_rx, gauges })
    }

    fn on_endpoint_set(&mut self, set: &EndpointSet) {
        self.state.on_endpoints(set.endpoints.clone());
        self.state.on_objectives(&set.objectives);
        self.assigner.assign(&set.endpoints);
        self.synced.send_replace(set.synced);
        // Membership changes are published at once (readiness waits for them).
        self.publish();
    }

    fn publish(&mut self) {
        // Only the current leader publishes.
        if !*self.leading.borrow() {
            return;
        }
        if let Some(mut snapshot) = self.state.build(std::time::SystemTime::now()) {
            let span = tracing::info_span!(
                "publish",
                epoch = snapshot.epoch,
                seq = snapshot.seq,
                endpoints = snapshot.endpoints.len(),
                routed_blocks = snapshot.routed_blocks.len(),
                subscribers = self.tx.receiver_count().saturating_sub(1),
            );
            let _entered = span.enter();
            // Pickers link their spans to this one (when it is sampled).
            snapshot.publish_span = crate::telemetry::propagation::trace_ref(&span);
            self.routed.hashes_dropped.inc_by(std::mem::take(&mut self.state.dropped_hashes));
            self.routed.hashes_over_budget.inc_by(std::mem::take(&mut self.state.over_budget_hashes));
            self.routed.push(&snapshot, self.state.changes());
            let snapshot = Arc::new(snapshot);
            // Once every reader lets it go, a later build updates it in place.
            self.state.recycle(snapshot.clone());
            self.tx.send_replace(snapshot);
            self.gauges.set(&self.state.sizes(), self.routed.held(), self.assigner.remote_scrapers());
        }
    }
}

impl Handler<LeadershipAcquired> for Aggregator {
    type Result = ();

    fn handle(&mut self, msg: LeadershipAcquired, _: &mut Context<Self>) {
        self.state.on_new_term(msg.epoch);
        self.assigner.lead(msg.epoch);
        self.leading.send_replace(true);
        self.publish();
    }
}

/// Stops the actor (its publish timer would keep it alive after its addresses are dropped).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Stop;

impl Handler<Stop> for Aggregator {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        self.leading.send_replace(false);
        self.assigner.stop();
        ctx.stop();
    }
}

/// A picker reported its in-flight load and routed prefix blocks.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct PickerReported(pub PickerReport);

impl Handler<PickerReported> for Aggregator {
    type Result = ();

    fn handle(&mut self, msg: PickerReported, _: &mut Context<Self>) {
        self.state.on_picker_report(msg.0, std::time::SystemTime::now());
    }
}

impl Handler<LeadershipLost> for Aggregator {
    type Result = ();

    fn handle(&mut self, _: LeadershipLost, _: &mut Context<Self>) {
        self.leading.send_replace(false);
        self.assigner.step_down();
    }
}

impl Actor for Aggregator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.publish_interval, |act, _| act.publish());
        if let Some(source) = self.source.take() {
            // The set held now first (a watch stream yields the current value), then each change.
            ctx.add_stream(tokio_stream::wrappers::WatchStream::new(source));
        }
    }
}

impl StreamHandler<Arc<EndpointSet>> for Aggregator {
    fn handle(&mut self, set: Arc<EndpointSet>, _: &mut Context<Self>) {
        self.on_endpoint_set(&set);
    }

    /// The source is gone (shutdown): the last set stays; the actor keeps running until `Stop`.
    fn finished(&mut self, _: &mut Context<Self>) {
        tracing::debug!("endpoint source closed");
    }
}

impl Handler<ScrapeReports> for Aggregator {
    type Result = ();

    fn handle(&mut self, msg: ScrapeReports, _: &mut Context<Self>) {
        for report in msg.0 {
            match report {
                Ok(scraped) => self.state.on_scraped(scraped),
                Err(failed) => self.state.on_failed(failed),
            }
        }
    }
}

/// Forwards the election's events to the aggregator until the election ends.
pub async fn follow_election(
    mut events: tokio::sync::mpsc::Receiver<election::LeadershipEvent>,
    aggregator: Addr<Aggregator>,
) {
    while let Some(event) = events.recv().await {
        match event {
            election::LeadershipEvent::Acquired { epoch } => aggregator.do_send(LeadershipAcquired { epoch }),
            election::LeadershipEvent::Lost { .. } => aggregator.do_send(LeadershipLost),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EndpointId;

    fn snapshot(epoch: u64, seq: u64, hash: u64) -> Snapshot {
        Snapshot {
            epoch,
            seq,
            endpoints: Vec::new(),
            published_at: std::time::SystemTime::UNIX_EPOCH,
            routed_blocks: vec![RoutedBlocks { endpoint: EndpointId::new("a"), hashes: vec![hash] }],
            objectives: Default::default(),
            publish_span: None,
        }
    }

    fn hashes(blocks: Option<Vec<RoutedBlocks>>) -> Option<Vec<u64>> {
        blocks.map(|b| b.into_iter().flat_map(|b| b.hashes).collect())
    }

    #[test]
    fn routed_log_returns_the_blocks_of_skipped_snapshots_or_none_when_forgotten() {
        let log = RoutedLog::default();
        for seq in 1..=4 {
            log.push(&snapshot(2, seq, 10 + seq), None);
        }
        log.push(&snapshot(3, 1, 99), None);
        assert_eq!(hashes(log.between(2, 1, 4)), Some(vec![12, 13, 14]));
        assert_eq!(hashes(log.between(2, 3, 4)), Some(vec![14]));
        assert_eq!(hashes(log.between(3, 0, 1)), Some(vec![99]));
        assert_eq!(hashes(log.between(2, 4, 5)), None, "not published yet");
        for seq in 2..=RoutedLog::CAPACITY as u64 + 1 {
            log.push(&snapshot(3, seq, seq), None);
        }
        assert_eq!(hashes(log.between(2, 1, 4)), None, "pushed out");
        assert_eq!(hashes(log.between(3, 0, 2)), None, "seq 1 pushed out");
        let last = RoutedLog::CAPACITY as u64 + 1;
        assert_eq!(hashes(log.between(3, last - 2, last)), Some(vec![last - 1, last]));
    }

    #[test]
    fn routed_log_unions_the_changed_positions_or_none_across_a_set_change() {
        let log = RoutedLog::default();
        let changed = |p: &[u32]| Some(Arc::from(p));
        log.push(&snapshot(2, 1, 0), None);
        log.push(&snapshot(2, 2, 0), changed(&[4, 1]));
        log.push(&snapshot(2, 3, 0), changed(&[1, 7]));
        log.push(&snapshot(2, 4, 0), None);
        log.push(&snapshot(2, 5, 0), changed(&[0]));
        assert_eq!(log.changed_between(2, 1, 3), Some(vec![1, 4, 7]));
        assert_eq!(log.changed_between(2, 2, 3), Some(vec![1, 7]));
        assert_eq!(log.changed_between(2, 3, 3), Some(vec![]), "nothing between a snapshot and itself");
        assert_eq!(log.changed_between(2, 3, 5), None, "the set changed at 4");
        assert_eq!(log.changed_between(2, 4, 5), Some(vec![0]));
        assert_eq!(log.changed_between(2, 4, 6), None, "not published yet");
        assert_eq!(log.changed_between(1, 0, 1), None, "another term");
    }

    #[test]
    fn routed_log_memory_is_bounded_by_hashes_too() {
        let log = RoutedLog::default();
        let big = |seq: u64| Snapshot {
            routed_blocks: vec![RoutedBlocks {
                endpoint: EndpointId::new("a"),
                hashes: vec![seq; RoutedLog::MAX_HASHES / 3],
            }],
            ..snapshot(1, seq, 0)
        };
        for seq in 1..=5 {
            log.push(&big(seq), None);
        }
        let held = log.entries.lock().map(|l| (l.entries.len(), l.hashes)).expect("lock");
        assert_eq!(held, (3, 3 * (RoutedLog::MAX_HASHES / 3)));
        assert!(log.between(1, 0, 5).is_none(), "the oldest were let go");
        assert_eq!(log.between(1, 2, 5).map(|b| b.len()), Some(3));
    }
}
