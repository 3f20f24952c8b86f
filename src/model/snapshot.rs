//! The snapshot: everything a picker schedules from, immutable and replaced whole.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{Endpoint, EndpointId, MetricsState};

/// Requests and estimated tokens in flight to an endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    pub requests: i64,
    pub tokens: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EndpointState {
    /// Shared between the snapshots that hold the endpoint unchanged (and with the leader's slot
    /// or the picker's decoder): an update that changes only metrics does not copy the spec's
    /// strings and labels, and dropping a snapshot does not free them.
    pub endpoint: Arc<Endpoint>,
    pub metrics: MetricsState,
    /// In-flight load reported by other pickers (distributed mode); zero in standalone.
    pub shared_load: Load,
    /// Requests the pickers reported sending since the scrape of `metrics` (distributed mode;
    /// zero in standalone): the queue the metrics cannot show yet.
    pub shared_sent_since_scrape: u64,
}

/// Stamped `(epoch, seq)`: `epoch` is the leader term, `seq` grows within an epoch. A receiver
/// never replaces a snapshot with one that is not newer.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub epoch: u64,
    pub seq: u64,
    pub endpoints: Vec<EndpointState>,
    pub published_at: SystemTime,
    /// Prefix blocks the pickers routed since the previous snapshot, for every picker to learn.
    pub routed_blocks: Vec<RoutedBlocks>,
    /// InferenceObjective name → priority, from discovery (Kubernetes); shared, rarely changes.
    pub objectives: Arc<std::collections::BTreeMap<String, i32>>,
    /// The leader's span that published this snapshot (when traced).
    pub publish_span: Option<super::TraceRef>,
}

/// Prefix-block hashes routed to an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutedBlocks {
    pub endpoint: EndpointId,
    pub hashes: Vec<u64>,
}

impl Snapshot {
    pub fn empty() -> Arc<Self> {
        Arc::new(Snapshot {
            epoch: 0,
            seq: 0,
            endpoints: Vec::new(),
            published_at: SystemTime::UNIX_EPOCH,
            routed_blocks: Vec::new(),
            objectives: Default::default(),
            publish_span: None,
        })
    }

    pub fn is_newer_than(&self, other: &Snapshot) -> bool {
        (self.epoch, self.seq) > (other.epoch, other.seq)
    }

    /// Age of the snapshot itself.
    pub fn age(&self, now: SystemTime) -> Duration {
        now.duration_since(self.published_at).unwrap_or_default()
    }
}
