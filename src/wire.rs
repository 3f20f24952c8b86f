//! Conversions between the model and the control-plane protocol (`switchyard.v1`).
//! `encode` writes the leader's updates straight to bytes, each endpoint's spec encoded once.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use switchyard_proto::v1 as pb;

use crate::model::{
    Endpoint, EndpointId, EndpointMetrics, EndpointState, Load, MetricsSample, MetricsState, RoutedBlocks, Snapshot,
    TraceRef, from_unix_micros, unix_micros,
};

mod apply;
mod decode;
mod encode;

pub use decode::{DecodeUpdateError, DecodedUpdate, SpecMemo, WireEndpoint, decode_update};
pub use encode::{SpecCache, encode_delta, encode_snapshot};

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
    pb::EndpointState { spec: Some(endpoint_to_proto(&e.endpoint)), ..endpoint_state_without_spec(e) }
}

/// An endpoint's state on the wire, but for its spec.
fn endpoint_state_without_spec(e: &EndpointState) -> pb::EndpointState {
    let (metrics, scraped_at) = match &e.metrics {
        MetricsState::Unknown => (None, 0),
        MetricsState::Known { sample, .. } => {
            (Some(metrics_to_proto(&sample.metrics, &sample.errors)), unix_micros(sample.scraped_at))
        }
    };
    pb::EndpointState {
        spec: None,
        metrics,
        scraped_at_unix_micros: scraped_at,
        inflight_requests: e.shared_load.requests,
        inflight_tokens: e.shared_load.tokens,
        sent_since_scrape: e.shared_sent_since_scrape,
    }
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
    pb::SnapshotUpdate { endpoints: s.endpoints.iter().map(endpoint_state_to_proto).collect(), ..full_header(s) }
}

/// A full snapshot update without its endpoints.
fn full_header(s: &Snapshot) -> pb::SnapshotUpdate {
    pb::SnapshotUpdate {
        version: PROTOCOL_VERSION,
        epoch: s.epoch,
        seq: s.seq,
        full: true,
        base_seq: 0,
        endpoints: Vec::new(),
        removed: Vec::new(),
        prefix_blocks: blocks_to_proto(&s.routed_blocks),
        published_at_unix_micros: unix_micros(s.published_at),
        objectives: s.objectives.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        objectives_changed: true,
        publish_span: trace_ref_to_proto(s.publish_span),
    }
}

/// The delta that turns `base` into `next` (same epoch, `next` newer): the endpoints that joined
/// or changed, the ids that left, and `routed`, the prefix blocks routed between the two.
pub fn snapshot_delta_to_proto(base: &Snapshot, next: &Snapshot, routed: &[RoutedBlocks]) -> pb::SnapshotUpdate {
    let (endpoints, removed) = delta_changes(base, next, None);
    pb::SnapshotUpdate {
        endpoints: endpoints.into_iter().map(endpoint_state_to_proto).collect(),
        ..delta_header(base, next, routed, removed)
    }
}

/// [`snapshot_delta_to_proto`] when the caller knows which positions of `next` may differ from
/// `base` (ascending; a superset is fine): the two hold the same endpoints in the same order, so
/// only those positions are compared, O(changed) instead of O(endpoints). When the snapshots
/// turn out not to be aligned at those positions, every endpoint is compared instead.
pub fn snapshot_delta_to_proto_at(
    base: &Snapshot,
    next: &Snapshot,
    routed: &[RoutedBlocks],
    positions: &[u32],
) -> pb::SnapshotUpdate {
    let (endpoints, removed) = delta_changes(base, next, Some(positions));
    pb::SnapshotUpdate {
        endpoints: endpoints.into_iter().map(endpoint_state_to_proto).collect(),
        ..delta_header(base, next, routed, removed)
    }
}

/// The endpoints of `next` that joined or differ from `base`, and the ids that left; from
/// `positions` alone when given and the snapshots are aligned there.
fn delta_changes<'a>(
    base: &Snapshot,
    next: &'a Snapshot,
    positions: Option<&[u32]>,
) -> (Vec<&'a EndpointState>, Vec<String>) {
    match positions.and_then(|p| changed_at(base, next, p)) {
        Some(changed) => (changed, Vec::new()),
        None => changed_endpoints(base, next),
    }
}

/// The endpoints at `positions` that differ, or `None` when the snapshots are not aligned there.
fn changed_at<'a>(base: &Snapshot, next: &'a Snapshot, positions: &[u32]) -> Option<Vec<&'a EndpointState>> {
    if base.endpoints.len() != next.endpoints.len() {
        return None;
    }
    let mut changed = Vec::new();
    for &p in positions {
        let (a, b) = (base.endpoints.get(p as usize)?, next.endpoints.get(p as usize)?);
        if a.endpoint.id != b.endpoint.id {
            return None;
        }
        if !same_on_the_wire(a, b) {
            changed.push(b);
        }
    }
    Some(changed)
}

/// The endpoints of `next` that joined or differ from `base`, and the ids that left.
fn changed_endpoints<'a>(base: &Snapshot, next: &'a Snapshot) -> (Vec<&'a EndpointState>, Vec<String>) {
    // Usually the endpoint set did not change: compare position by position (ids share their
    // allocation along the pipeline, so equal ids compare by pointer).
    let aligned = base.endpoints.len() == next.endpoints.len()
        && base.endpoints.iter().zip(&next.endpoints).all(|(a, b)| a.endpoint.id == b.endpoint.id);
    if aligned {
        let changed = base.endpoints.iter().zip(&next.endpoints).filter(|(a, b)| !same_on_the_wire(a, b));
        (changed.map(|(_, b)| b).collect(), Vec::new())
    } else {
        let held: HashMap<&EndpointId, &EndpointState> = base.endpoints.iter().map(|e| (&e.endpoint.id, e)).collect();
        let endpoints = next
            .endpoints
            .iter()
            .filter(|e| !held.get(&e.endpoint.id).is_some_and(|h| same_on_the_wire(h, e)))
            .collect();
        let kept: HashSet<&EndpointId> = next.endpoints.iter().map(|e| &e.endpoint.id).collect();
        let removed = base
            .endpoints
            .iter()
            .filter(|e| !kept.contains(&e.endpoint.id))
            .map(|e| e.endpoint.id.to_string())
            .collect();
        (endpoints, removed)
    }
}

/// A delta update without its endpoints.
fn delta_header(base: &Snapshot, next: &Snapshot, routed: &[RoutedBlocks], removed: Vec<String>) -> pb::SnapshotUpdate {
    debug_assert!(base.epoch == next.epoch && next.seq > base.seq);
    let objectives_changed = !Arc::ptr_eq(&base.objectives, &next.objectives) && base.objectives != next.objectives;
    pb::SnapshotUpdate {
        version: PROTOCOL_VERSION,
        epoch: next.epoch,
        seq: next.seq,
        full: false,
        base_seq: base.seq,
        endpoints: Vec::new(),
        removed,
        prefix_blocks: blocks_to_proto(routed),
        published_at_unix_micros: unix_micros(next.published_at),
        objectives: if objectives_changed {
            next.objectives.iter().map(|(k, v)| (k.clone(), *v)).collect()
        } else {
            Default::default()
        },
        objectives_changed,
        publish_span: trace_ref_to_proto(next.publish_span),
    }
}

fn trace_ref_to_proto(r: Option<TraceRef>) -> Vec<u8> {
    r.map(|r| [r.trace_id.to_be_bytes().as_slice(), r.span_id.to_be_bytes().as_slice()].concat()).unwrap_or_default()
}

/// A malformed reference is ignored (it only feeds trace links).
fn trace_ref_from_proto(b: &[u8]) -> Option<TraceRef> {
    let (t, s) = <&[u8; 24]>::try_from(b).ok()?.split_at(16);
    Some(TraceRef {
        trace_id: u128::from_be_bytes(t.try_into().ok()?),
        span_id: u64::from_be_bytes(s.try_into().ok()?),
    })
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
    #[error("{field} {value} for endpoint {endpoint} is outside 0..={bound}: no picker reports that")]
    ImplausibleLoad { endpoint: String, field: &'static str, value: i128, bound: i128 },
}

/// The snapshot a full update describes.
pub fn snapshot_from_proto(u: pb::SnapshotUpdate) -> Result<Snapshot, WireError> {
    apply::snapshot_from_update(u.into())
}

fn blocks_from_proto(blocks: Vec<pb::PrefixBlocks>) -> Vec<RoutedBlocks> {
    blocks.into_iter().map(|b| RoutedBlocks { endpoint: EndpointId::new(&b.endpoint_id), hashes: b.hashes }).collect()
}

/// The snapshot after `u`: a full update replaces `held`; a delta must sit on exactly `held`
/// (same epoch, `base_seq` = its seq), and keeps the unchanged endpoints' samples shared with it.
/// The caller fences first: `u` must be newer than `held`.
pub fn apply_update(held: &Snapshot, u: pb::SnapshotUpdate) -> Result<Snapshot, WireError> {
    apply::apply_decoded(held, u.into())
}

/// [`apply_update`] for an update decoded by [`decode_update`].
pub fn apply_decoded(held: &Snapshot, u: DecodedUpdate) -> Result<Snapshot, WireError> {
    apply::apply_decoded(held, u)
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

/// A picker's report as the aggregator folds it in, or why no honest picker could have sent it:
/// a negative count, or one past the bounds in [`crate::protocol`] (`MAX_REPORTED_*`).
pub fn report_from_proto(r: pb::PickerReport) -> Result<crate::protocol::PickerReport, WireError> {
    use crate::protocol::{MAX_REPORTED_REQUESTS, MAX_REPORTED_SENT, MAX_REPORTED_TOKENS};
    let mut loads = crate::protocol::PickerLoads::default();
    for l in r.loads {
        let checks = [
            ("requests", i128::from(l.requests), i128::from(MAX_REPORTED_REQUESTS)),
            ("tokens", i128::from(l.tokens), i128::from(MAX_REPORTED_TOKENS)),
            ("sent_since_scrape", i128::from(l.sent_since_scrape), i128::from(MAX_REPORTED_SENT)),
        ];
        if let Some((field, value, bound)) = checks.into_iter().find(|(_, v, max)| !(0..=*max).contains(v)) {
            return Err(WireError::ImplausibleLoad { endpoint: l.endpoint_id, field, value, bound });
        }
        let id = EndpointId::new(&l.endpoint_id);
        if l.requests != 0 || l.tokens != 0 {
            loads.inflight.insert(id.clone(), Load { requests: l.requests, tokens: l.tokens });
        }
        if l.sent_since_scrape > 0 {
            loads.sent.insert(id, (from_unix_micros(l.scraped_at_unix_micros), l.sent_since_scrape));
        }
    }
    Ok(crate::protocol::PickerReport { picker: r.picker_id, loads, routed: blocks_from_proto(r.routed) })
}

#[cfg(test)]
mod tests;
