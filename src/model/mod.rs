//! Plain data shared by every role: endpoints, engine-neutral metrics, snapshots.
//!
//! Nothing here does I/O or depends on a runtime. Roles exchange these types (in-process) or their
//! protobuf twins (over the control-plane protocol).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

mod snapshot;

pub use snapshot::{EndpointState, Load, RoutedBlocks, Snapshot};

/// A time as the control plane carries it: microseconds since the Unix epoch (0 before it).
pub fn unix_micros(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

/// The inverse of [`unix_micros`] (negative counts as the epoch).
pub fn from_unix_micros(us: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(us.max(0) as u64)
}

/// Stable endpoint identity: `<namespace>/<pod>-rank-<i>` for Kubernetes pods, the configured name
/// for static endpoints.
/// Ids are cloned from one allocation along the pipeline, and `Arc<str>` equality compares
/// pointers before bytes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EndpointId(Arc<str>);

impl EndpointId {
    pub fn new(id: impl AsRef<str>) -> Self {
        Self(Arc::from(id.as_ref()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One model-server endpoint: a ready pod × one active target port, or a static entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub id: EndpointId,
    /// `ip:port` that requests go to (IPv6 bracketed).
    pub address: String,
    /// Full URL of the metrics page.
    pub metrics_url: String,
    /// Engine used to read the metrics page (already resolved: never empty).
    pub engine: String,
    pub labels: BTreeMap<String, String>,
}

/// Engine-neutral metrics of one endpoint. `None` means "not reported" (the engine does not export
/// it, the spec is disabled, or it could not be read), never zero.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointMetrics {
    /// Requests waiting in the engine queue.
    pub queued: Option<u64>,
    /// Requests in the running batch.
    pub running: Option<u64>,
    /// KV-cache usage, 0..=1.
    pub kv_usage: Option<f64>,
    /// LoRA adapters in the running batch (`None`: the engine reports no LoRA info).
    pub running_lora: Option<Vec<String>>,
    /// LoRA adapters requested by waiting requests.
    pub waiting_lora: Option<Vec<String>>,
    /// Maximum number of adapters that can be loaded at once.
    pub max_lora: Option<u32>,
    /// Tokens per KV-cache block.
    pub cache_block_size: Option<u32>,
    /// Number of KV-cache blocks.
    pub cache_num_blocks: Option<u64>,
}

/// The outcome of one scrape: the metrics read, when, and what could not be read.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsSample {
    pub metrics: EndpointMetrics,
    pub scraped_at: SystemTime,
    /// One message per mapped metric that could not be read (missing family, bad value).
    pub errors: Vec<String>,
}

/// What the control plane knows about an endpoint's metrics. A never-scraped endpoint is
/// `Unknown`, which is not the same as idle.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum MetricsState {
    #[default]
    Unknown,
    /// The last successful scrape, plus the error of the latest attempt when it failed since.
    Known { sample: Arc<MetricsSample>, last_error: Option<String> },
}

impl MetricsState {
    pub fn sample(&self) -> Option<&MetricsSample> {
        match self {
            MetricsState::Unknown => None,
            MetricsState::Known { sample, .. } => Some(sample),
        }
    }

    /// Age of the last successful scrape at `now`; `None` when never scraped.
    pub fn age(&self, now: SystemTime) -> Option<std::time::Duration> {
        self.sample().map(|s| now.duration_since(s.scraped_at).unwrap_or_default())
    }
}

/// A reference to a span of some process's trace (W3C ids), carried so that another process's
/// span can link to it: a picker's "apply update" and "schedule" spans link to the leader's
/// "publish" span. Plain data; `telemetry` turns it into a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceRef {
    pub trace_id: u128,
    pub span_id: u64,
}

/// A change of the endpoint set, with before and after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointChange {
    Added(Endpoint),
    Updated { previous: Endpoint, updated: Endpoint },
    Removed(Endpoint),
}

/// The changes that turn `current` into `desired` (ids are unique in `desired`; the last wins).
pub fn diff_endpoints(current: &BTreeMap<EndpointId, Endpoint>, desired: &[Endpoint]) -> Vec<EndpointChange> {
    let desired: BTreeMap<&EndpointId, &Endpoint> = desired.iter().map(|e| (&e.id, e)).collect();
    let mut changes = Vec::new();
    for (id, previous) in current {
        match desired.get(id) {
            None => changes.push(EndpointChange::Removed(previous.clone())),
            Some(updated) if *updated != previous => {
                changes.push(EndpointChange::Updated { previous: previous.clone(), updated: (*updated).clone() })
            }
            Some(_) => {}
        }
    }
    for (id, e) in desired {
        if !current.contains_key(id) {
            changes.push(EndpointChange::Added(e.clone()));
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(id: &str, engine: &str) -> Endpoint {
        Endpoint {
            id: EndpointId::new(id),
            address: "127.0.0.1:1".into(),
            metrics_url: "http://127.0.0.1:1/metrics".into(),
            engine: engine.into(),
            labels: BTreeMap::new(),
        }
    }

    #[test]
    fn diff_reports_added_updated_removed() {
        let current: BTreeMap<_, _> =
            [ep("a", "vllm"), ep("b", "vllm")].into_iter().map(|e| (e.id.clone(), e)).collect();
        let changes = diff_endpoints(&current, &[ep("b", "sglang"), ep("c", "vllm")]);
        assert_eq!(
            changes,
            vec![
                EndpointChange::Removed(ep("a", "vllm")),
                EndpointChange::Updated { previous: ep("b", "vllm"), updated: ep("b", "sglang") },
                EndpointChange::Added(ep("c", "vllm")),
            ]
        );
        assert!(diff_endpoints(&current, &[ep("a", "vllm"), ep("b", "vllm")]).is_empty());
    }

    #[test]
    fn never_scraped_has_no_age() {
        assert_eq!(MetricsState::Unknown.age(SystemTime::now()), None);
        assert!(MetricsState::Unknown.sample().is_none());
    }
}
