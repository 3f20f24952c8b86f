//! The memo'd decoding against prost's: same message, same failures, specs shared.

use std::time::{Duration, UNIX_EPOCH};

use prost::Message;

use super::*;
use crate::model::{EndpointId, EndpointMetrics, EndpointState, Load, MetricsSample, MetricsState, Snapshot};
use crate::wire::{SpecCache, encode_delta, encode_snapshot, snapshot_to_proto};

fn state(i: usize, moved: bool, queued: Option<u64>, labels: usize) -> EndpointState {
    let address = if moved { format!("10.0.1.{i}:80") } else { format!("10.0.0.{i}:80") };
    EndpointState {
        endpoint: Arc::new(Endpoint {
            id: EndpointId::new(format!("e{i}")),
            metrics_url: format!("http://{address}/metrics"),
            address,
            engine: "vllm".into(),
            labels: (0..labels).map(|l| (format!("k{l}"), format!("v{l}"))).collect(),
        }),
        metrics: match queued {
            None => MetricsState::Unknown,
            Some(q) => MetricsState::Known {
                sample: Arc::new(MetricsSample {
                    metrics: EndpointMetrics {
                        queued: Some(q),
                        running_lora: Some(vec!["a".into()]),
                        ..Default::default()
                    },
                    scraped_at: UNIX_EPOCH + Duration::from_micros(q * 1000 + 1),
                    errors: vec![],
                }),
                last_error: None,
            },
        },
        shared_load: Load { requests: 1, tokens: 2 },
        shared_sent_since_scrape: 3,
    }
}

fn snapshot(seq: u64, entries: &[(usize, bool, Option<u64>, usize)]) -> Snapshot {
    let mut endpoints: Vec<EndpointState> = entries.iter().map(|&(i, m, q, l)| state(i, m, q, l)).collect();
    endpoints.sort_by(|a, b| a.endpoint.id.cmp(&b.endpoint.id));
    endpoints.dedup_by(|a, b| a.endpoint.id == b.endpoint.id);
    Snapshot { epoch: 3, seq, endpoints, ..(*Snapshot::empty()).clone() }
}

/// What prost decodes from `bytes`, specs converted.
fn by_prost(bytes: &[u8]) -> Option<DecodedUpdate> {
    pb::SnapshotUpdate::decode(bytes).ok().map(DecodedUpdate::from)
}

type Entries = Vec<(usize, bool, Option<u64>, usize)>;

fn entries() -> impl proptest::strategy::Strategy<Value = Entries> {
    proptest::collection::vec((0usize..8, proptest::bool::ANY, proptest::option::of(0u64..4), 0usize..3), 0..8)
}

proptest::proptest! {
    /// A stream of updates (full, then deltas) decodes to what prost decodes, whatever the memo
    /// holds from the updates before.
    #[test]
    fn updates_decode_as_prost_decodes_them(steps in proptest::collection::vec(entries(), 1..5)) {
        let mut memo = SpecMemo::default();
        let mut cache = SpecCache::default();
        let mut base: Option<Snapshot> = None;
        for (seq, entries) in steps.iter().enumerate() {
            let next = snapshot(seq as u64 + 1, entries);
            let bytes = match &base {
                None => encode_snapshot(&next, &mut cache),
                Some(b) => encode_delta(b, &next, &[], None, &mut cache),
            };
            proptest::prop_assert_eq!(Some(decode_update(&bytes, &mut memo).expect("decodes")), by_prost(&bytes));
            // prost's own encoding (map entries in another order) too.
            let plain = snapshot_to_proto(&next).encode_to_vec();
            proptest::prop_assert_eq!(Some(decode_update(&plain, &mut memo).expect("decodes")), by_prost(&plain));
            base = Some(next);
        }
    }

    /// Damaged bytes fail where prost fails, and otherwise decode to what prost decodes.
    #[test]
    fn damaged_updates_fail_where_prost_fails(
        entries in entries(),
        cuts in proptest::collection::vec((0usize..400, 0u8..=255), 1..4),
        truncate in proptest::option::of(0usize..400),
    ) {
        let mut memo = SpecMemo::default();
        let good = encode_snapshot(&snapshot(1, &entries), &mut SpecCache::default());
        decode_update(&good, &mut memo).expect("warms the memo");
        let mut bytes = good.to_vec();
        for (at, b) in cuts {
            if !bytes.is_empty() {
                let n = bytes.len();
                bytes[at % n] = b;
            }
        }
        if let Some(t) = truncate {
            bytes.truncate(t);
        }
        let ours = decode_update(&bytes, &mut memo).ok();
        proptest::prop_assert_eq!(ours, by_prost(&bytes));
    }
}

#[test]
fn a_spec_seen_before_is_shared_not_decoded() {
    let mut memo = SpecMemo::default();
    let mut cache = SpecCache::default();
    let a = snapshot(1, &[(1, false, Some(1), 2), (2, false, None, 0)]);
    let b = snapshot(2, &[(1, false, Some(2), 2), (2, true, Some(1), 0)]);
    let first = decode_update(&encode_snapshot(&a, &mut cache), &mut memo).expect("full");
    let second = decode_update(&encode_delta(&a, &b, &[], None, &mut cache), &mut memo).expect("delta");
    let spec = |u: &DecodedUpdate, i: usize| u.endpoints[i].spec.clone().expect("spec");
    assert!(Arc::ptr_eq(&spec(&first, 0), &spec(&second, 0)), "same spec bytes: the same endpoint");
    assert!(!Arc::ptr_eq(&spec(&first, 1), &spec(&second, 1)), "moved: decoded again");
    assert_eq!(spec(&second, 1).address, "10.0.1.2:80");
    // Another place in the update than before: found by its bytes all the same.
    let c = snapshot(3, &[(1, false, Some(2), 2), (2, true, Some(2), 0)]);
    let third = decode_update(&encode_delta(&b, &c, &[], None, &mut cache), &mut memo).expect("delta");
    assert_eq!(third.endpoints.len(), 1);
    assert!(Arc::ptr_eq(&spec(&second, 1), &spec(&third, 0)), "second's second, third's first");
}

#[test]
fn the_memo_forgets_endpoints_nobody_holds() {
    let mut memo = SpecMemo::default();
    let mut cache = SpecCache::default();
    let mut held = Vec::new();
    for round in 0..400usize {
        // Ten endpoints, all new every round (pods replaced).
        let entries: Vec<_> = (0..10).map(|i| (round * 10 + i, false, Some(1), 1)).collect();
        let u = decode_update(&encode_snapshot(&snapshot(round as u64 + 1, &entries), &mut cache), &mut memo)
            .expect("full");
        held = u.endpoints;
        assert!(memo.len() <= 3 * (10 + 64), "bounded: {} after round {round}", memo.len());
    }
    assert_eq!(held.len(), 10);
    assert!(held.iter().all(|e| e.spec.is_some()));
}
