//! The aggregator role's Prometheus metrics: leadership and the snapshot it publishes.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::state::StateSizes;
use crate::model::Snapshot;

#[derive(Clone, Default)]
pub struct AggregatorMetrics {
    leader: Gauge,
    epoch: Gauge,
    seq: Gauge,
    endpoints: Gauge,
    /// `change` = `acquired` | `lost`.
    leadership_changes: Family<Vec<(String, String)>, Counter>,
}

impl AggregatorMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = AggregatorMetrics::default();
        registry.register("switchyard_aggregator_leader", "1 while this replica leads", m.leader.clone());
        registry.register("switchyard_aggregator_epoch", "Epoch (etcd term) of the last snapshot", m.epoch.clone());
        registry.register("switchyard_aggregator_snapshot_seq", "Sequence number of the last snapshot", m.seq.clone());
        registry.register(
            "switchyard_aggregator_snapshot_endpoints",
            "Endpoints in the last snapshot",
            m.endpoints.clone(),
        );
        registry.register(
            "switchyard_aggregator_leadership_changes",
            "Leadership acquired or lost by this replica",
            m.leadership_changes.clone(),
        );
        m
    }

    /// Records the leading flag, counting transitions.
    pub fn set_leading(&self, leading: bool) {
        let was = self.leader.set(i64::from(leading)) == 1;
        if was != leading {
            let change = if leading { "acquired" } else { "lost" };
            self.leadership_changes.get_or_create(&vec![("change".into(), change.into())]).inc();
        }
    }

    /// Registers the routed-block log's drop counters.
    pub fn register_routed(registry: &mut Registry, log: &super::RoutedLog) {
        registry.register(
            "switchyard_aggregator_prefix_hashes_dropped",
            "Routed prefix-block hashes dropped because too many waited for the next snapshot",
            log.hashes_dropped.clone(),
        );
        registry.register(
            "switchyard_aggregator_prefix_hashes_over_budget",
            "Routed prefix-block hashes dropped because one picker sent more than its budget per snapshot",
            log.hashes_over_budget.clone(),
        );
        registry.register(
            "switchyard_aggregator_snapshot_delta_gaps",
            "Deltas sent to a picker without the prefix blocks of snapshots it skipped (no longer remembered)",
            log.gaps.clone(),
        );
    }

    /// Registers the snapshot streams' counters.
    pub fn register_subscribers(registry: &mut Registry, subscribers: &super::serve::Subscribers) {
        registry.register(
            "switchyard_aggregator_slow_subscribers_dropped",
            "Picker snapshot streams cut off because their queue stayed full (the picker stopped reading)",
            subscribers.dropped.clone(),
        );
        registry.register(
            "switchyard_aggregator_snapshot_updates_encoded",
            "Snapshot updates built and encoded, each sent to every picker stream that needed it",
            subscribers.encoded.clone(),
        );
    }

    /// Registers `switchyard_aggregator_endpoint_metrics_age_seconds` over the snapshots this
    /// replica publishes: series only while it leads (a follower's last snapshot is not current).
    pub fn register_metrics_age(registry: &mut Registry, outputs: &super::AggregatorOutputs) {
        let (snapshots, leading) = (outputs.snapshots.clone(), outputs.leading.clone());
        crate::metrics_age::MetricsAge::register(
            registry,
            "switchyard_aggregator_endpoint_metrics_age_seconds",
            move || (*leading.borrow()).then(|| snapshots.borrow().clone()),
        );
    }

    pub fn set_snapshot(&self, s: &Snapshot) {
        self.epoch.set(s.epoch as i64);
        self.seq.set(s.seq as i64);
        self.endpoints.set(s.endpoints.len() as i64);
    }
}

/// What the leader holds, set at each publish: `switchyard_aggregator_held_entries{map}` (its
/// maps, the routed-block log, the connected scraper processes) and the open `WatchSnapshots`
/// streams. Under steady churn each stays bounded by the endpoint set and the live pickers and
/// scrapers; one that keeps growing is a leak (the soak benchmark watches them). A follower's are
/// those of its last publish.
#[derive(Clone)]
pub struct StateGauges {
    entries: Family<Vec<(String, String)>, Gauge>,
    /// The handles of `entries`, resolved once: a publish sets them without building labels.
    by_map: [Gauge; HELD_MAPS.len()],
    /// `WatchSnapshots` streams open (each a task holding a picker's stream).
    pub subscribers: Gauge,
}

/// The `map` label values, in the order [`StateGauges::set`] fills them.
const HELD_MAPS: [&str; 9] = [
    "endpoints",
    "metrics",
    "picker_loads",
    "inflight_totals",
    "sent_totals",
    "pending_blocks",
    "routed_log_snapshots",
    "routed_log_hashes",
    "remote_scrapers",
];

impl Default for StateGauges {
    fn default() -> Self {
        let entries: Family<Vec<(String, String)>, Gauge> = Family::default();
        let by_map = HELD_MAPS.map(|m| entries.get_or_create(&vec![("map".to_string(), m.to_string())]).clone());
        StateGauges { entries, by_map, subscribers: Gauge::default() }
    }
}

impl StateGauges {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "switchyard_aggregator_held_entries",
            "Entries the leader holds, by map (set at each publish; bounded by the endpoints, pickers and scrapers)",
            self.entries.clone(),
        );
        registry.register(
            "switchyard_aggregator_subscribers",
            "WatchSnapshots streams open on this replica",
            self.subscribers.clone(),
        );
    }

    /// `routed` = (snapshots, hashes) held by the routed-block log.
    pub(super) fn set(&self, s: &StateSizes, routed: (usize, usize), remote_scrapers: usize) {
        let values = [
            s.endpoints,
            s.metrics,
            s.picker_loads,
            s.inflight_totals,
            s.sent_totals,
            s.pending_blocks,
            routed.0,
            routed.1,
            remote_scrapers,
        ];
        for (g, v) in self.by_map.iter().zip(values) {
            g.set(i64::try_from(v).unwrap_or(i64::MAX));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_leadership_transitions_are_counted_once_each() {
        let mut registry = Registry::default();
        let m = AggregatorMetrics::new(&mut registry);
        for leading in [false, true, true, false, false, true] {
            m.set_leading(leading);
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(text.contains("switchyard_aggregator_leadership_changes_total{change=\"acquired\"} 2"), "{text}");
        assert!(text.contains("switchyard_aggregator_leadership_changes_total{change=\"lost\"} 1"), "{text}");
        assert!(text.contains("switchyard_aggregator_leader 1"), "{text}");
    }

    #[test]
    fn held_entries_are_one_series_per_map_set_at_each_publish() {
        let mut registry = Registry::default();
        let g = StateGauges::default();
        g.register(&mut registry);
        let sizes = StateSizes { endpoints: 7, picker_loads: 2, sent_totals: 5, ..Default::default() };
        g.set(&sizes, (512, 9000), 2);
        g.subscribers.inc();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        for line in [
            "switchyard_aggregator_held_entries{map=\"endpoints\"} 7",
            "switchyard_aggregator_held_entries{map=\"picker_loads\"} 2",
            "switchyard_aggregator_held_entries{map=\"sent_totals\"} 5",
            "switchyard_aggregator_held_entries{map=\"routed_log_snapshots\"} 512",
            "switchyard_aggregator_held_entries{map=\"routed_log_hashes\"} 9000",
            "switchyard_aggregator_held_entries{map=\"remote_scrapers\"} 2",
            "switchyard_aggregator_subscribers 1",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        assert_eq!(text.matches("switchyard_aggregator_held_entries{").count(), HELD_MAPS.len());
    }
}
