//! An aggregator replica is ready when it leads, its discovery source has synced and it has
//! published a snapshot; its role metrics follow the same outputs.

use std::sync::Arc;

use super::AggregatorOutputs;
use super::metrics::AggregatorMetrics;
use crate::health::Readiness;

/// Keeps `readiness` and `metrics` in step with `outputs` until the aggregator is gone.
pub async fn track_readiness(outputs: AggregatorOutputs, readiness: Arc<Readiness>, metrics: AggregatorMetrics) {
    let AggregatorOutputs { mut snapshots, mut leading, mut synced, .. } = outputs;
    loop {
        let is_leading = *leading.borrow_and_update();
        let is_synced = *synced.borrow_and_update();
        let published = {
            let snapshot = snapshots.borrow_and_update();
            metrics.set_snapshot(&snapshot);
            snapshot.epoch > 0
        };
        metrics.set_leading(is_leading);
        readiness.set_ready(is_leading && is_synced && published);
        tokio::select! {
            r = leading.changed() => if r.is_err() { return },
            r = snapshots.changed() => if r.is_err() { return },
            r = synced.changed() => if r.is_err() { return },
        }
    }
}
