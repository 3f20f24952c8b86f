//! The aggregator role's Prometheus metrics: leadership and the snapshot it publishes.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

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
}
