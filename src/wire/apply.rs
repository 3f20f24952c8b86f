//! The snapshot a decoded update makes: a full one replaces what a picker holds, a delta is
//! merged into it. Unchanged endpoints are cloned from the held snapshot (their spec and metrics
//! sample are shared, so a clone copies a few words); the endpoints the update carries are
//! converted. Snapshots are in id order, so a delta in id order is merged in one pass over the
//! held endpoints; anything else (a sender that does not keep the order, or a held snapshot out
//! of order) takes the general path by id, with the same result. It does not decode bytes
//! (`decode.rs`) or fence stale updates (the caller does).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::decode::{DecodedUpdate, WireEndpoint};
use super::{PROTOCOL_VERSION, WireError, blocks_from_proto, metrics_from_proto, trace_ref_from_proto};
use crate::model::{EndpointId, EndpointState, Load, MetricsSample, MetricsState, Snapshot, from_unix_micros};

fn endpoint_state(e: WireEndpoint) -> Result<EndpointState, WireError> {
    let endpoint = e.spec.ok_or(WireError::MissingSpec)?;
    let e = e.state;
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

/// The snapshot a full update describes.
pub(super) fn snapshot_from_update(u: DecodedUpdate) -> Result<Snapshot, WireError> {
    let DecodedUpdate { header: u, endpoints } = u;
    if u.version != PROTOCOL_VERSION {
        return Err(WireError::Version(u.version));
    }
    if !u.full {
        return Err(WireError::DeltaBase { epoch: u.epoch, base_seq: u.base_seq, held_epoch: 0, held_seq: 0 });
    }
    let mut endpoints = endpoints.into_iter().map(endpoint_state).collect::<Result<Vec<_>, _>>()?;
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
        publish_span: trace_ref_from_proto(&u.publish_span),
    })
}

/// The snapshot after `u` ([`super::apply_update`]).
pub(super) fn apply_decoded(held: &Snapshot, u: DecodedUpdate) -> Result<Snapshot, WireError> {
    if u.header.full || u.header.version != PROTOCOL_VERSION {
        return snapshot_from_update(u);
    }
    let DecodedUpdate { header: u, endpoints } = u;
    if (held.epoch, held.seq) != (u.epoch, u.base_seq) || held.epoch == 0 {
        return Err(WireError::DeltaBase {
            epoch: u.epoch,
            base_seq: u.base_seq,
            held_epoch: held.epoch,
            held_seq: held.seq,
        });
    }
    let (changed, in_order) = changed_endpoints(endpoints)?;
    let removed: HashSet<EndpointId> = u.removed.iter().map(EndpointId::new).collect();
    let endpoints = match in_order.then(|| merge_in_order(held, &changed, &removed)).flatten() {
        Some(merged) => merged,
        None => merge_by_id(held, changed, &removed),
    };
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
        publish_span: trace_ref_from_proto(&u.publish_span),
    })
}

/// The endpoints a delta carries, converted in order, and whether their ids ascend strictly.
/// The first endpoint without a spec or whose id came before fails it.
fn changed_endpoints(endpoints: Vec<WireEndpoint>) -> Result<(Vec<EndpointState>, bool), WireError> {
    let mut changed: Vec<EndpointState> = Vec::with_capacity(endpoints.len());
    // Ids seen so far, kept only once the order breaks (before that a repeat is impossible).
    let mut seen: Option<HashSet<EndpointId>> = None;
    for e in endpoints {
        let e = endpoint_state(e)?;
        let id = &e.endpoint.id;
        match (&mut seen, changed.last()) {
            (None, Some(last)) if last.endpoint.id >= *id => {
                let set: HashSet<EndpointId> = changed.iter().map(|c| c.endpoint.id.clone()).collect();
                if set.contains(id) {
                    return Err(WireError::Duplicate(id.to_string()));
                }
                seen = Some(set);
            }
            (Some(set), _) if set.contains(id) => return Err(WireError::Duplicate(id.to_string())),
            _ => {}
        }
        if let Some(set) = &mut seen {
            set.insert(id.clone());
        }
        changed.push(e);
    }
    let in_order = seen.is_none();
    Ok((changed, in_order))
}

/// One pass over `held` and `changed` (ids strictly ascending), or `None` when `held` is not in
/// strict id order.
fn merge_in_order(
    held: &Snapshot,
    changed: &[EndpointState],
    removed: &HashSet<EndpointId>,
) -> Option<Vec<EndpointState>> {
    let mut out = Vec::with_capacity(held.endpoints.len() + changed.len());
    let mut next = changed.iter().peekable();
    let mut previous: Option<&EndpointId> = None;
    for e in &held.endpoints {
        let id = &e.endpoint.id;
        if previous.is_some_and(|p| p >= id) {
            return None;
        }
        previous = Some(id);
        // Joined before this one.
        while let Some(c) = next.next_if(|c| c.endpoint.id < *id) {
            out.push(c.clone());
        }
        // Changed (listed as removed too, the new state wins, as by id), left, or unchanged.
        match next.next_if(|c| c.endpoint.id == *id) {
            Some(c) => out.push(c.clone()),
            None if removed.contains(id) => {}
            None => out.push(e.clone()),
        }
    }
    out.extend(next.cloned());
    Some(out)
}

/// The general merge: by id, whatever the order of `held` and `changed` (no id twice in
/// `changed`).
fn merge_by_id(held: &Snapshot, changed: Vec<EndpointState>, removed: &HashSet<EndpointId>) -> Vec<EndpointState> {
    let mut changed: HashMap<EndpointId, EndpointState> =
        changed.into_iter().map(|e| (e.endpoint.id.clone(), e)).collect();
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
    endpoints
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Endpoint;

    fn state(id: &str, requests: i64) -> EndpointState {
        EndpointState {
            endpoint: Arc::new(Endpoint {
                id: EndpointId::new(id),
                address: "10.0.0.1:80".into(),
                metrics_url: String::new(),
                engine: "vllm".into(),
                labels: Default::default(),
            }),
            metrics: MetricsState::Unknown,
            shared_load: Load { requests, tokens: 0 },
            shared_sent_since_scrape: 0,
        }
    }

    proptest::proptest! {
        /// The one-pass merge gives what the merge by id gives, when it applies (joined, changed,
        /// removed, changed and removed at once); a held snapshot out of order is left to the
        /// other.
        #[test]
        fn the_merge_in_order_is_the_merge_by_id(
            held in proptest::collection::btree_set("[a-f]", 0..6),
            changed in proptest::collection::btree_set("[a-h]", 0..6),
            removed in proptest::collection::vec("[a-h]", 0..3),
            reversed in proptest::bool::ANY,
        ) {
            let mut held: Vec<EndpointState> = held.iter().map(|id| state(id, 0)).collect();
            if reversed && held.len() > 1 {
                held.reverse();
            }
            let held = Snapshot { epoch: 1, seq: 1, endpoints: held, ..(*Snapshot::empty()).clone() };
            let changed: Vec<EndpointState> = changed.iter().map(|id| state(id, 1)).collect();
            let removed: HashSet<EndpointId> = removed.iter().map(EndpointId::new).collect();
            let by_id = merge_by_id(&held, changed.clone(), &removed);
            match merge_in_order(&held, &changed, &removed) {
                Some(merged) => proptest::prop_assert_eq!(merged, by_id),
                None => proptest::prop_assert!(reversed),
            }
        }
    }
}
