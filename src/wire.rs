//! Conversions between the model and the control-plane protocol (`switchyard.v1`).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use switchyard_proto::v1 as pb;

use crate::model::{
    Endpoint, EndpointId, EndpointMetrics, EndpointState, Load, MetricsSample, MetricsState, RoutedBlocks, Snapshot,
};

/// Version of the messages this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

fn micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

fn from_micros(us: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(us.max(0) as u64)
}

pub fn endpoint_to_proto(e: &Endpoint) -> pb::EndpointSpec {
    pb::EndpointSpec {
        id: e.id.to_string(),
        address: e.address.clone(),
        metrics_url: e.metrics_url.clone(),
        engine: e.engine.clone(),
        labels: e.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

pub fn endpoint_from_proto(e: pb::EndpointSpec) -> Endpoint {
    Endpoint {
        id: EndpointId::new(&e.id),
        address: e.address,
        metrics_url: e.metrics_url,
        engine: e.engine,
        labels: e.labels.into_iter().collect(),
    }
}

fn metrics_to_proto(m: &EndpointMetrics, errors: &[String]) -> pb::EndpointMetrics {
    pb::EndpointMetrics {
        queued: m.queued.map(|v| v as f64),
        running: m.running.map(|v| v as f64),
        kv_usage: m.kv_usage,
        running_lora: m.running_lora.clone().unwrap_or_default(),
        waiting_lora: m.waiting_lora.clone().unwrap_or_default(),
        max_lora: m.max_lora,
        cache_block_size: m.cache_block_size,
        cache_num_blocks: m.cache_num_blocks,
        lora_reported: m.running_lora.is_some(),
        errors: errors.to_vec(),
    }
}

fn metrics_from_proto(m: pb::EndpointMetrics) -> (EndpointMetrics, Vec<String>) {
    let lora = m.lora_reported;
    let metrics = EndpointMetrics {
        queued: m.queued.map(|v| v.max(0.0) as u64),
        running: m.running.map(|v| v.max(0.0) as u64),
        kv_usage: m.kv_usage,
        running_lora: lora.then_some(m.running_lora),
        waiting_lora: lora.then_some(m.waiting_lora),
        max_lora: m.max_lora,
        cache_block_size: m.cache_block_size,
        cache_num_blocks: m.cache_num_blocks,
    };
    (metrics, m.errors)
}

/// A full snapshot update.
pub fn snapshot_to_proto(s: &Snapshot) -> pb::SnapshotUpdate {
    pb::SnapshotUpdate {
        version: PROTOCOL_VERSION,
        epoch: s.epoch,
        seq: s.seq,
        full: true,
        base_seq: 0,
        endpoints: s
            .endpoints
            .iter()
            .map(|e| {
                let (metrics, scraped_at) = match &e.metrics {
                    MetricsState::Unknown => (None, 0),
                    MetricsState::Known { sample, .. } => {
                        (Some(metrics_to_proto(&sample.metrics, &sample.errors)), micros(sample.scraped_at))
                    }
                };
                pb::EndpointState {
                    spec: Some(endpoint_to_proto(&e.endpoint)),
                    metrics,
                    scraped_at_unix_micros: scraped_at,
                    inflight_requests: e.shared_load.requests,
                    inflight_tokens: e.shared_load.tokens,
                }
            })
            .collect(),
        removed: Vec::new(),
        prefix_blocks: s
            .routed_blocks
            .iter()
            .map(|b| pb::PrefixBlocks { endpoint_id: b.endpoint.to_string(), hashes: b.hashes.clone() })
            .collect(),
        published_at_unix_micros: micros(s.published_at),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("unsupported protocol version {0}")]
    Version(u32),
    #[error("delta updates are not supported by this picker")]
    Delta,
    #[error("endpoint without spec")]
    MissingSpec,
}

pub fn snapshot_from_proto(u: pb::SnapshotUpdate) -> Result<Snapshot, WireError> {
    if u.version != PROTOCOL_VERSION {
        return Err(WireError::Version(u.version));
    }
    if !u.full {
        return Err(WireError::Delta);
    }
    let endpoints = u
        .endpoints
        .into_iter()
        .map(|e| {
            let endpoint = endpoint_from_proto(e.spec.ok_or(WireError::MissingSpec)?);
            let metrics = match e.metrics {
                None => MetricsState::Unknown,
                Some(m) => {
                    let (metrics, errors) = metrics_from_proto(m);
                    let sample = MetricsSample { metrics, scraped_at: from_micros(e.scraped_at_unix_micros), errors };
                    MetricsState::Known { sample: Arc::new(sample), last_error: None }
                }
            };
            Ok(EndpointState {
                endpoint,
                metrics,
                shared_load: Load { requests: e.inflight_requests, tokens: e.inflight_tokens },
            })
        })
        .collect::<Result<_, WireError>>()?;
    let routed_blocks = u
        .prefix_blocks
        .into_iter()
        .map(|b| RoutedBlocks { endpoint: EndpointId::new(&b.endpoint_id), hashes: b.hashes })
        .collect();
    Ok(Snapshot {
        epoch: u.epoch,
        seq: u.seq,
        endpoints,
        published_at: from_micros(u.published_at_unix_micros),
        routed_blocks,
    })
}

/// A scrape outcome as the scraper role sends it.
pub fn report_from_event(
    scraper_id: &str,
    event: Result<&crate::protocol::MetricsScraped, &crate::protocol::ScrapeFailed>,
) -> pb::MetricsReport {
    match event {
        Ok(m) => pb::MetricsReport {
            version: PROTOCOL_VERSION,
            scraper_id: scraper_id.to_string(),
            endpoint_id: m.endpoint.to_string(),
            scraped_at_unix_micros: micros(m.sample.scraped_at),
            result: Some(pb::metrics_report::Result::Metrics(metrics_to_proto(&m.sample.metrics, &m.sample.errors))),
        },
        Err(f) => pb::MetricsReport {
            version: PROTOCOL_VERSION,
            scraper_id: scraper_id.to_string(),
            endpoint_id: f.endpoint.to_string(),
            scraped_at_unix_micros: micros(f.at),
            result: Some(pb::metrics_report::Result::Error(f.error.to_string())),
        },
    }
}

/// The aggregator's view of a report: a sample, or a failure. `None` for a report without a
/// result (the scraper's hello).
pub fn event_from_report(
    r: pb::MetricsReport,
) -> Option<Result<crate::protocol::MetricsScraped, crate::protocol::ScrapeFailed>> {
    let endpoint = EndpointId::new(&r.endpoint_id);
    let at = from_micros(r.scraped_at_unix_micros);
    match r.result? {
        pb::metrics_report::Result::Metrics(m) => {
            let (metrics, errors) = metrics_from_proto(m);
            Some(Ok(crate::protocol::MetricsScraped {
                endpoint,
                sample: Arc::new(MetricsSample { metrics, scraped_at: at, errors }),
                latency: Duration::ZERO,
            }))
        }
        pb::metrics_report::Result::Error(e) => Some(Err(crate::protocol::ScrapeFailed {
            endpoint,
            error: crate::scraper::ScrapeError::Request(e),
            at,
            latency: Duration::ZERO,
        })),
    }
}

/// A picker's report as the aggregator folds it in.
pub fn report_from_proto(r: pb::PickerReport) -> crate::aggregator::PickerReport {
    crate::aggregator::PickerReport {
        picker: r.picker_id,
        loads: r
            .loads
            .into_iter()
            .map(|l| (EndpointId::new(&l.endpoint_id), Load { requests: l.requests, tokens: l.tokens }))
            .collect(),
        routed: r
            .routed
            .into_iter()
            .map(|b| RoutedBlocks { endpoint: EndpointId::new(&b.endpoint_id), hashes: b.hashes })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_round_trip() {
        let now = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        let ep = |id: &str| Endpoint {
            id: EndpointId::new(id),
            address: "10.0.0.1:8000".into(),
            metrics_url: "http://10.0.0.1:8000/metrics".into(),
            engine: "vllm".into(),
            labels: [("k".to_string(), "v".to_string())].into_iter().collect(),
        };
        let known = MetricsSample {
            metrics: EndpointMetrics {
                queued: Some(3),
                running: Some(1),
                kv_usage: Some(0.5),
                running_lora: Some(vec![]),
                waiting_lora: Some(vec!["a".into()]),
                max_lora: Some(2),
                cache_block_size: Some(16),
                cache_num_blocks: Some(100),
            },
            scraped_at: now,
            errors: vec!["lora: x".into()],
        };
        let snap = Snapshot {
            epoch: 7,
            seq: 9,
            endpoints: vec![
                EndpointState {
                    endpoint: ep("a"),
                    metrics: MetricsState::Unknown,
                    shared_load: Load { requests: 2, tokens: 30 },
                },
                EndpointState {
                    endpoint: ep("b"),
                    metrics: MetricsState::Known { sample: Arc::new(known), last_error: None },
                    shared_load: Load::default(),
                },
            ],
            published_at: now,
            routed_blocks: vec![RoutedBlocks { endpoint: EndpointId::new("b"), hashes: vec![1, 2, 3] }],
        };
        let back = snapshot_from_proto(snapshot_to_proto(&snap)).expect("round trip");
        assert_eq!(back, snap);
        let no_lora = MetricsSample {
            metrics: EndpointMetrics { queued: Some(1), ..Default::default() },
            scraped_at: now,
            errors: vec![],
        };
        let s2 = Snapshot {
            endpoints: vec![EndpointState {
                endpoint: ep("c"),
                metrics: MetricsState::Known { sample: Arc::new(no_lora), last_error: None },
                shared_load: Load::default(),
            }],
            ..snap.clone()
        };
        assert_eq!(snapshot_from_proto(snapshot_to_proto(&s2)).expect("ok"), s2, "absent LoRA stays absent, not empty");
    }

    #[test]
    fn unknown_versions_and_deltas_are_refused() {
        let mut u = snapshot_to_proto(&Snapshot {
            epoch: 1,
            seq: 1,
            endpoints: vec![],
            published_at: UNIX_EPOCH,
            routed_blocks: Vec::new(),
        });
        u.version = 2;
        assert_eq!(snapshot_from_proto(u.clone()), Err(WireError::Version(2)));
        u.version = 1;
        u.full = false;
        assert_eq!(snapshot_from_proto(u), Err(WireError::Delta));
    }
}
