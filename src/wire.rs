//! Conversions between the model and the control-plane protocol (`switchyard.v1`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use switchyard_proto::v1 as pb;

use crate::model::{
    Endpoint, EndpointId, EndpointMetrics, EndpointState, Load, MetricsSample, MetricsState, RoutedBlocks, Snapshot,
    from_unix_micros, unix_micros,
};

/// Version of the messages this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

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

fn endpoint_state_to_proto(e: &EndpointState) -> pb::EndpointState {
    let (metrics, scraped_at) = match &e.metrics {
        MetricsState::Unknown => (None, 0),
        MetricsState::Known { sample, .. } => {
            (Some(metrics_to_proto(&sample.metrics, &sample.errors)), unix_micros(sample.scraped_at))
        }
    };
    pb::EndpointState {
        spec: Some(endpoint_to_proto(&e.endpoint)),
        metrics,
        scraped_at_unix_micros: scraped_at,
        inflight_requests: e.shared_load.requests,
        inflight_tokens: e.shared_load.tokens,
        sent_since_scrape: e.shared_sent_since_scrape,
    }
}

fn endpoint_state_from_proto(e: pb::EndpointState) -> Result<EndpointState, WireError> {
    let endpoint = endpoint_from_proto(e.spec.ok_or(WireError::MissingSpec)?);
    let metrics = match e.metrics {
        None => MetricsState::Unknown,
        Some(m) => {
            let (metrics, errors) = metrics_from_proto(m);
            let sample = MetricsSample { metrics, scraped_at: from_unix_micros(e.scraped_at_unix_micros), errors };
            MetricsState::Known { sample: Arc::new(sample), last_error: None }
        }
    };
    Ok(EndpointState {
        endpoint,
        metrics,
        shared_load: Load { requests: e.inflight_requests, tokens: e.inflight_tokens },
        shared_sent_since_scrape: e.sent_since_scrape,
    })
}

fn blocks_to_proto(blocks: &[RoutedBlocks]) -> Vec<pb::PrefixBlocks> {
    blocks.iter().map(|b| pb::PrefixBlocks { endpoint_id: b.endpoint.to_string(), hashes: b.hashes.clone() }).collect()
}

/// Whether a picker would see a difference between `a` and `b` (what the wire carries: the
/// latest scrape error stays on the leader).
fn same_on_the_wire(a: &EndpointState, b: &EndpointState) -> bool {
    let metrics = match (&a.metrics, &b.metrics) {
        (MetricsState::Unknown, MetricsState::Unknown) => true,
        (MetricsState::Known { sample: x, .. }, MetricsState::Known { sample: y, .. }) => Arc::ptr_eq(x, y) || x == y,
        _ => false,
    };
    metrics
        && a.shared_load == b.shared_load
        && a.shared_sent_since_scrape == b.shared_sent_since_scrape
        && a.endpoint == b.endpoint
}

/// A full snapshot update.
pub fn snapshot_to_proto(s: &Snapshot) -> pb::SnapshotUpdate {
    pb::SnapshotUpdate {
        version: PROTOCOL_VERSION,
        epoch: s.epoch,
        seq: s.seq,
        full: true,
        base_seq: 0,
        endpoints: s.endpoints.iter().map(endpoint_state_to_proto).collect(),
        removed: Vec::new(),
        prefix_blocks: blocks_to_proto(&s.routed_blocks),
        published_at_unix_micros: unix_micros(s.published_at),
        objectives: s.objectives.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        objectives_changed: true,
    }
}

/// The delta that turns `base` into `next` (same epoch, `next` newer): the endpoints that joined
/// or changed, the ids that left, and `routed`, the prefix blocks routed between the two.
pub fn snapshot_delta_to_proto(base: &Snapshot, next: &Snapshot, routed: &[RoutedBlocks]) -> pb::SnapshotUpdate {
    debug_assert!(base.epoch == next.epoch && next.seq > base.seq);
    let objectives_changed = !Arc::ptr_eq(&base.objectives, &next.objectives) && base.objectives != next.objectives;
    // Usually the endpoint set did not change: compare position by position (ids share their
    // allocation along the pipeline, so equal ids compare by pointer).
    let aligned = base.endpoints.len() == next.endpoints.len()
        && base.endpoints.iter().zip(&next.endpoints).all(|(a, b)| a.endpoint.id == b.endpoint.id);
    let (endpoints, removed) = if aligned {
        let changed = base.endpoints.iter().zip(&next.endpoints).filter(|(a, b)| !same_on_the_wire(a, b));
        (changed.map(|(_, b)| endpoint_state_to_proto(b)).collect(), Vec::new())
    } else {
        let held: HashMap<&EndpointId, &EndpointState> = base.endpoints.iter().map(|e| (&e.endpoint.id, e)).collect();
        let endpoints = next
            .endpoints
            .iter()
            .filter(|e| !held.get(&e.endpoint.id).is_some_and(|h| same_on_the_wire(h, e)))
            .map(endpoint_state_to_proto)
            .collect();
        let kept: HashSet<&EndpointId> = next.endpoints.iter().map(|e| &e.endpoint.id).collect();
        let removed = base
            .endpoints
            .iter()
            .filter(|e| !kept.contains(&e.endpoint.id))
            .map(|e| e.endpoint.id.to_string())
            .collect();
        (endpoints, removed)
    };
    pb::SnapshotUpdate {
        version: PROTOCOL_VERSION,
        epoch: next.epoch,
        seq: next.seq,
        full: false,
        base_seq: base.seq,
        endpoints,
        removed,
        prefix_blocks: blocks_to_proto(routed),
        published_at_unix_micros: unix_micros(next.published_at),
        objectives: if objectives_changed {
            next.objectives.iter().map(|(k, v)| (k.clone(), *v)).collect()
        } else {
            Default::default()
        },
        objectives_changed,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("unsupported protocol version {0}")]
    Version(u32),
    #[error("delta on top of ({epoch}, {base_seq}) but this picker holds ({held_epoch}, {held_seq})")]
    DeltaBase { epoch: u64, base_seq: u64, held_epoch: u64, held_seq: u64 },
    #[error("endpoint without spec")]
    MissingSpec,
    #[error("endpoint {0} appears twice")]
    Duplicate(String),
}

/// The snapshot a full update describes.
pub fn snapshot_from_proto(u: pb::SnapshotUpdate) -> Result<Snapshot, WireError> {
    if u.version != PROTOCOL_VERSION {
        return Err(WireError::Version(u.version));
    }
    if !u.full {
        return Err(WireError::DeltaBase { epoch: u.epoch, base_seq: u.base_seq, held_epoch: 0, held_seq: 0 });
    }
    let mut endpoints = u.endpoints.into_iter().map(endpoint_state_from_proto).collect::<Result<Vec<_>, _>>()?;
    // Snapshots are ordered by id (deltas merge on that order); a sender that does not keep it
    // is put in order here (found by fuzzing).
    if !endpoints.is_sorted_by(|a, b| a.endpoint.id < b.endpoint.id) {
        endpoints.sort_by(|a, b| a.endpoint.id.cmp(&b.endpoint.id));
    }
    if let Some(dup) = endpoints.windows(2).find(|w| w[0].endpoint.id == w[1].endpoint.id) {
        return Err(WireError::Duplicate(dup[0].endpoint.id.to_string()));
    }
    Ok(Snapshot {
        epoch: u.epoch,
        seq: u.seq,
        endpoints,
        published_at: from_unix_micros(u.published_at_unix_micros),
        routed_blocks: blocks_from_proto(u.prefix_blocks),
        objectives: Arc::new(u.objectives.into_iter().collect()),
    })
}

fn blocks_from_proto(blocks: Vec<pb::PrefixBlocks>) -> Vec<RoutedBlocks> {
    blocks.into_iter().map(|b| RoutedBlocks { endpoint: EndpointId::new(&b.endpoint_id), hashes: b.hashes }).collect()
}

/// The snapshot after `u`: a full update replaces `held`; a delta must sit on exactly `held`
/// (same epoch, `base_seq` = its seq), and keeps the unchanged endpoints' samples shared with it.
/// The caller fences first: `u` must be newer than `held`.
pub fn apply_update(held: &Snapshot, u: pb::SnapshotUpdate) -> Result<Snapshot, WireError> {
    if u.full || u.version != PROTOCOL_VERSION {
        return snapshot_from_proto(u);
    }
    if (held.epoch, held.seq) != (u.epoch, u.base_seq) || held.epoch == 0 {
        return Err(WireError::DeltaBase {
            epoch: u.epoch,
            base_seq: u.base_seq,
            held_epoch: held.epoch,
            held_seq: held.seq,
        });
    }
    let mut changed: HashMap<EndpointId, EndpointState> = HashMap::with_capacity(u.endpoints.len());
    for e in u.endpoints {
        let e = endpoint_state_from_proto(e)?;
        if let Some(dup) = changed.insert(e.endpoint.id.clone(), e) {
            return Err(WireError::Duplicate(dup.endpoint.id.to_string()));
        }
    }
    let removed: HashSet<EndpointId> = u.removed.iter().map(EndpointId::new).collect();
    let mut endpoints = Vec::with_capacity(held.endpoints.len() + changed.len());
    for e in &held.endpoints {
        if removed.contains(&e.endpoint.id) {
            continue;
        }
        endpoints.push(changed.remove(&e.endpoint.id).unwrap_or_else(|| e.clone()));
    }
    if !changed.is_empty() {
        // Joined: the leader's order is by id.
        endpoints.extend(changed.into_values());
        endpoints.sort_by(|a, b| a.endpoint.id.cmp(&b.endpoint.id));
    }
    Ok(Snapshot {
        epoch: u.epoch,
        seq: u.seq,
        endpoints,
        published_at: from_unix_micros(u.published_at_unix_micros),
        routed_blocks: blocks_from_proto(u.prefix_blocks),
        objectives: if u.objectives_changed {
            Arc::new(u.objectives.into_iter().collect())
        } else {
            held.objectives.clone()
        },
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
            scraped_at_unix_micros: unix_micros(m.sample.scraped_at),
            result: Some(pb::metrics_report::Result::Metrics(metrics_to_proto(&m.sample.metrics, &m.sample.errors))),
        },
        Err(f) => pb::MetricsReport {
            version: PROTOCOL_VERSION,
            scraper_id: scraper_id.to_string(),
            endpoint_id: f.endpoint.to_string(),
            scraped_at_unix_micros: unix_micros(f.at),
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
    let at = from_unix_micros(r.scraped_at_unix_micros);
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
            error: crate::protocol::ScrapeError::Request(e),
            at,
            latency: Duration::ZERO,
        })),
    }
}

/// A picker's report as the aggregator folds it in.
pub fn report_from_proto(r: pb::PickerReport) -> crate::protocol::PickerReport {
    crate::protocol::PickerReport {
        picker: r.picker_id,
        loads: {
            let mut loads = crate::protocol::PickerLoads::default();
            for l in r.loads {
                let id = EndpointId::new(&l.endpoint_id);
                if l.requests != 0 || l.tokens != 0 {
                    loads.inflight.insert(id.clone(), Load { requests: l.requests, tokens: l.tokens });
                }
                if l.sent_since_scrape > 0 {
                    loads.sent.insert(id, (from_unix_micros(l.scraped_at_unix_micros), l.sent_since_scrape));
                }
            }
            loads
        },
        routed: blocks_from_proto(r.routed),
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

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
                    shared_sent_since_scrape: 4,
                },
                EndpointState {
                    endpoint: ep("b"),
                    metrics: MetricsState::Known { sample: Arc::new(known), last_error: None },
                    shared_load: Load::default(),
                    shared_sent_since_scrape: 0,
                },
            ],
            published_at: now,
            routed_blocks: vec![RoutedBlocks { endpoint: EndpointId::new("b"), hashes: vec![1, 2, 3] }],
            objectives: Arc::new([("critical".to_string(), 2), ("batch".to_string(), -1)].into_iter().collect()),
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
                shared_sent_since_scrape: 0,
            }],
            ..snap.clone()
        };
        assert_eq!(snapshot_from_proto(snapshot_to_proto(&s2)).expect("ok"), s2, "absent LoRA stays absent, not empty");
    }

    fn state(id: &str, queued: Option<u64>, requests: i64) -> EndpointState {
        EndpointState {
            endpoint: Endpoint {
                id: EndpointId::new(id),
                address: format!("10.0.0.{}:8000", id.len()),
                metrics_url: String::new(),
                engine: "vllm".into(),
                labels: Default::default(),
            },
            metrics: match queued {
                None => MetricsState::Unknown,
                Some(q) => MetricsState::Known {
                    sample: Arc::new(MetricsSample {
                        metrics: EndpointMetrics { queued: Some(q), ..Default::default() },
                        scraped_at: UNIX_EPOCH + Duration::from_micros(q),
                        errors: vec![],
                    }),
                    last_error: None,
                },
            },
            shared_load: Load { requests, tokens: 0 },
            shared_sent_since_scrape: requests as u64 * 2,
        }
    }

    fn snapshot(epoch: u64, seq: u64, endpoints: Vec<EndpointState>) -> Snapshot {
        Snapshot {
            epoch,
            seq,
            endpoints,
            published_at: UNIX_EPOCH,
            routed_blocks: Vec::new(),
            objectives: Default::default(),
        }
    }

    #[test]
    fn unknown_versions_and_misplaced_deltas_are_refused() {
        let mut u = snapshot_to_proto(&snapshot(1, 1, vec![]));
        u.version = 2;
        assert_eq!(snapshot_from_proto(u.clone()), Err(WireError::Version(2)));
        assert_eq!(apply_update(&snapshot(1, 0, vec![]), u.clone()), Err(WireError::Version(2)));
        u.version = 1;
        u.full = false;
        u.base_seq = 3;
        let refused = |held: &Snapshot| apply_update(held, u.clone());
        assert!(matches!(refused(&snapshot(1, 2, vec![])), Err(WireError::DeltaBase { base_seq: 3, held_seq: 2, .. })));
        assert!(matches!(refused(&snapshot(2, 3, vec![])), Err(WireError::DeltaBase { .. })), "other term");
        assert!(matches!(refused(&snapshot(0, 0, vec![])), Err(WireError::DeltaBase { .. })), "nothing held");
        assert!(refused(&snapshot(1, 3, vec![])).is_ok());
        let mut dup = snapshot_to_proto(&snapshot(1, 1, vec![state("a", None, 0), state("a", Some(1), 0)]));
        assert_eq!(snapshot_from_proto(dup.clone()), Err(WireError::Duplicate("a".into())));
        dup.endpoints[0].spec = None;
        assert_eq!(snapshot_from_proto(dup), Err(WireError::MissingSpec));
    }

    #[test]
    fn a_delta_carries_only_what_changed_and_shares_the_rest() {
        let base = snapshot(4, 10, vec![state("a", Some(1), 0), state("b", None, 0), state("c", Some(5), 2)]);
        let held = snapshot_from_proto(snapshot_to_proto(&base)).expect("full");
        let mut next = snapshot(4, 12, vec![base.endpoints[0].clone(), state("b", Some(2), 0), state("d", None, 0)]);
        next.routed_blocks = vec![RoutedBlocks { endpoint: EndpointId::new("a"), hashes: vec![9] }];
        let routed = [RoutedBlocks { endpoint: EndpointId::new("b"), hashes: vec![7, 8] }];
        let u = snapshot_delta_to_proto(&base, &next, &routed);
        assert!(!u.full);
        assert_eq!(u.base_seq, 10);
        let ids: Vec<&str> = u.endpoints.iter().map(|e| e.spec.as_ref().map_or("", |s| s.id.as_str())).collect();
        assert_eq!(ids, ["b", "d"], "unchanged `a` is not sent");
        assert_eq!(u.removed, ["c"]);
        let applied = apply_update(&held, u).expect("delta");
        assert_eq!(applied.endpoints, next.endpoints);
        assert_eq!((applied.epoch, applied.seq), (4, 12));
        assert_eq!(applied.routed_blocks, routed, "the delta's blocks, not the last snapshot's only");
        match (&applied.endpoints[0].metrics, &held.endpoints[0].metrics) {
            (MetricsState::Known { sample: x, .. }, MetricsState::Known { sample: y, .. }) => {
                assert!(Arc::ptr_eq(x, y), "an unchanged endpoint keeps its sample (and the picker its baseline)")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn picker_reports_keep_sends_against_their_scrape() {
        let r = report_from_proto(pb::PickerReport {
            version: PROTOCOL_VERSION,
            picker_id: "p".into(),
            loads: vec![
                pb::LoadDelta {
                    endpoint_id: "a".into(),
                    requests: 1,
                    tokens: 10,
                    sent_since_scrape: 3,
                    scraped_at_unix_micros: 1_500,
                },
                pb::LoadDelta {
                    endpoint_id: "b".into(),
                    requests: 0,
                    tokens: 0,
                    sent_since_scrape: 2,
                    ..Default::default()
                },
            ],
            routed: vec![],
        });
        let (a, b) = (EndpointId::new("a"), EndpointId::new("b"));
        assert_eq!(r.loads.inflight.get(&a), Some(&Load { requests: 1, tokens: 10 }));
        assert!(!r.loads.inflight.contains_key(&b), "nothing in flight to b");
        assert_eq!(r.loads.sent.get(&a), Some(&(UNIX_EPOCH + Duration::from_micros(1_500), 3)));
        assert_eq!(r.loads.sent.get(&b), Some(&(UNIX_EPOCH, 2)));
    }

    proptest::proptest! {
        /// Whatever changes between two snapshots of one term, base + delta = the full snapshot.
        #[test]
        fn base_plus_delta_is_the_full_snapshot(
            before in proptest::collection::btree_map("[a-f]{1,2}", (proptest::option::of(0u64..3), 0i64..2), 0..12),
            after in proptest::collection::btree_map("[a-f]{1,2}", (proptest::option::of(0u64..3), 0i64..2), 0..12),
            objectives_before in proptest::collection::btree_map("[xy]", -1i32..2, 0..3),
            objectives_after in proptest::collection::btree_map("[xy]", -1i32..2, 0..3),
        ) {
            let build = |m: &std::collections::BTreeMap<String, (Option<u64>, i64)>, seq, o: &std::collections::BTreeMap<String, i32>| Snapshot {
                objectives: Arc::new(o.clone()),
                ..snapshot(3, seq, m.iter().map(|(id, (q, r))| state(id, *q, *r)).collect())
            };
            let (base, next) = (build(&before, 1, &objectives_before), build(&after, 2, &objectives_after));
            let held = snapshot_from_proto(snapshot_to_proto(&base)).expect("full");
            let applied = apply_update(&held, snapshot_delta_to_proto(&base, &next, &[])).expect("delta");
            proptest::prop_assert_eq!(applied, snapshot_from_proto(snapshot_to_proto(&next)).expect("full"));
        }
    }
}
