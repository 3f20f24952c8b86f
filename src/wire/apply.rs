//! The snapshot a decoded update makes: a full one replaces what a picker holds, a delta is
//! merged into it. Unchanged endpoints are cloned from the held snapshot (their spec and metrics
//! sample are shared, so a clone copies a few words); the endpoints the update carries are
//! converted. When each of them has the spec of a held endpoint (the same allocation, as the
//! stream's memo gives it: an update of metrics only), the merge is a walk over the held
//! endpoints comparing pointers. Otherwise snapshots are in id order, so a delta in id order is
//! merged in one pass over the held endpoints; anything else (a sender that does not keep the
//! order, or a held snapshot out of order) takes the general path by id. All give the same result. It does not decode bytes
//! (`decode.rs`) or fence stale updates (the caller does).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use switchyard_proto::v1 as pb;

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
    let DecodedUpdate { header: mut u, endpoints } = u;
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
    let objectives = Arc::new(std::mem::take(&mut u.objectives).into_iter().collect());
    Ok(snapshot(u, endpoints, objectives))
}

/// The snapshot of update `u`'s header with these endpoints and objectives.
fn snapshot(u: pb::SnapshotUpdate, endpoints: Vec<EndpointState>, objectives: Arc<BTreeMap<String, i32>>) -> Snapshot {
    Snapshot {
        epoch: u.epoch,
        seq: u.seq,
        endpoints,
        published_at: from_unix_micros(u.published_at_unix_micros),
        routed_blocks: blocks_from_proto(u.prefix_blocks),
        objectives,
        publish_span: trace_ref_from_proto(&u.publish_span),
    }
}

/// The snapshot after `u` ([`super::apply_update`]).
pub(super) fn apply_decoded(held: &Snapshot, u: DecodedUpdate) -> Result<Snapshot, WireError> {
    if u.header.full || u.header.version != PROTOCOL_VERSION {
        return snapshot_from_update(u);
    }
    let DecodedUpdate { header: mut u, endpoints } = u;
    if (held.epoch, held.seq) != (u.epoch, u.base_seq) || held.epoch == 0 {
        return Err(WireError::DeltaBase {
            epoch: u.epoch,
            base_seq: u.base_seq,
            held_epoch: held.epoch,
            held_seq: held.seq,
        });
    }
    let changed = endpoints.into_iter().map(endpoint_state).collect::<Result<Vec<_>, _>>()?;
    let removed: HashSet<EndpointId> = u.removed.iter().map(EndpointId::new).collect();
    let endpoints = match merge_shared(held, changed, &removed) {
        Ok(merged) => merged,
        Err(changed) => {
            let in_order = check_changed(&changed)?;
            match in_order.then(|| merge_in_order(held, &changed, &removed)).flatten() {
                Some(merged) => merged,
                None => merge_by_id(held, changed, &removed),
            }
        }
    };
    let objectives = if u.objectives_changed {
        Arc::new(std::mem::take(&mut u.objectives).into_iter().collect())
    } else {
        held.objectives.clone()
    };
    Ok(snapshot(u, endpoints, objectives))
}

/// Whether the ids of the endpoints a delta carries ascend strictly; an id seen twice fails it.
fn check_changed(changed: &[EndpointState]) -> Result<bool, WireError> {
    if changed.windows(2).all(|w| w[0].endpoint.id < w[1].endpoint.id) {
        return Ok(true);
    }
    let mut seen: HashSet<&EndpointId> = HashSet::with_capacity(changed.len());
    match changed.iter().find(|c| !seen.insert(&c.endpoint.id)) {
        Some(dup) => Err(WireError::Duplicate(dup.endpoint.id.to_string())),
        None => Ok(false),
    }
}

/// The merge when every endpoint the delta carries has the spec of a held endpoint (the same
/// allocation: the stream's memo gave it), in the held order: an update of metrics only, the
/// common case. One walk over `held` comparing pointers, no id compared and the carried states
/// moved, not cloned. A snapshot's ids are unique, so each carried endpoint stands for a
/// different held one: the result is [`merge_by_id`]'s. `Err(changed)` (as given) otherwise.
fn merge_shared(
    held: &Snapshot,
    changed: Vec<EndpointState>,
    removed: &HashSet<EndpointId>,
) -> Result<Vec<EndpointState>, Vec<EndpointState>> {
    let mut next = 0;
    for e in &held.endpoints {
        if changed.get(next).is_some_and(|c| Arc::ptr_eq(&c.endpoint, &e.endpoint)) {
            next += 1;
        }
    }
    // Changed and listed as removed too (the merge by id puts it back in id order): rare, left to
    // the other merges.
    if next != changed.len() || (!removed.is_empty() && changed.iter().any(|c| removed.contains(&c.endpoint.id))) {
        return Err(changed);
    }
    let mut out = Vec::with_capacity(held.endpoints.len());
    let mut changed = changed.into_iter().peekable();
    for e in &held.endpoints {
        // Changed, left, or unchanged.
        match changed.next_if(|c| Arc::ptr_eq(&c.endpoint, &e.endpoint)) {
            Some(c) => out.push(c),
            None if !removed.is_empty() && removed.contains(&e.endpoint.id) => {}
            None => out.push(e.clone()),
        }
    }
    Ok(out)
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
            None if !removed.is_empty() && removed.contains(id) => {}
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
        /// The one-pass merge and the walk over shared specs give what the merge by id gives,
        /// when they apply (joined, changed, removed, changed and removed at once); a held
        /// snapshot out of order is left to the merge by id, a spec not shared (or a joined
        /// endpoint) to the merges by id.
        #[test]
        fn the_fast_merges_are_the_merge_by_id(
            held in proptest::collection::btree_set("[a-f]", 0..6),
            changed in proptest::collection::btree_set("[a-h]", 0..6),
            removed in proptest::collection::vec("[a-h]", 0..3),
            reversed in proptest::bool::ANY,
            unshared in proptest::option::of("[a-h]"),
        ) {
            let mut held: Vec<EndpointState> = held.iter().map(|id| state(id, 0)).collect();
            if reversed && held.len() > 1 {
                held.reverse();
            }
            let held = Snapshot { epoch: 1, seq: 1, endpoints: held, ..(*Snapshot::empty()).clone() };
            // As the memo gives them: a held endpoint's spec is the held allocation (but one).
            let changed: Vec<EndpointState> = changed
                .iter()
                .map(|id| match held.endpoints.iter().find(|e| e.endpoint.id.as_str() == id) {
                    Some(e) if unshared.as_deref() != Some(id.as_str()) => {
                        EndpointState { shared_load: Load { requests: 1, tokens: 0 }, ..e.clone() }
                    }
                    _ => state(id, 1),
                })
                .collect();
            let removed: HashSet<EndpointId> = removed.iter().map(EndpointId::new).collect();
            let by_id = merge_by_id(&held, changed.clone(), &removed);
            match merge_in_order(&held, &changed, &removed) {
                Some(merged) => proptest::prop_assert_eq!(merged, by_id.clone()),
                None => proptest::prop_assert!(reversed),
            }
            let all_shared = changed.iter().all(|c| held.endpoints.iter().any(|e| Arc::ptr_eq(&e.endpoint, &c.endpoint)));
            match merge_shared(&held, changed.clone(), &removed) {
                Ok(merged) => proptest::prop_assert_eq!(merged, by_id),
                Err(back) => {
                    proptest::prop_assert_eq!(back, changed.clone());
                    let removed_too = changed.iter().any(|c| removed.contains(&c.endpoint.id));
                    proptest::prop_assert!(!all_shared || (reversed && changed.len() > 1) || removed_too);
                }
            }
        }
    }
}
