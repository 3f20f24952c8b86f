//! Round trips, deltas and refusals of the control-plane conversions.

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
                endpoint: Arc::new(ep("a")),
                metrics: MetricsState::Unknown,
                shared_load: Load { requests: 2, tokens: 30 },
                shared_sent_since_scrape: 4,
            },
            EndpointState {
                endpoint: Arc::new(ep("b")),
                metrics: MetricsState::Known { sample: Arc::new(known), last_error: None },
                shared_load: Load::default(),
                shared_sent_since_scrape: 0,
            },
        ],
        published_at: now,
        routed_blocks: vec![RoutedBlocks { endpoint: EndpointId::new("b"), hashes: vec![1, 2, 3] }],
        objectives: Arc::new([("critical".to_string(), 2), ("batch".to_string(), -1)].into_iter().collect()),
        publish_span: Some(TraceRef { trace_id: u128::MAX - 7, span_id: 42 }),
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
            endpoint: Arc::new(ep("c")),
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
        endpoint: Arc::new(Endpoint {
            id: EndpointId::new(id),
            address: format!("10.0.0.{}:8000", id.len()),
            metrics_url: String::new(),
            engine: "vllm".into(),
            labels: Default::default(),
        }),
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
        publish_span: None,
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
    })
    .expect("a plausible report");
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

proptest::proptest! {
    /// A delta over the positions that may have changed (any superset of those that did) is the
    /// delta comparing every endpoint; misaligned snapshots fall back to comparing every one.
    #[test]
    fn a_delta_over_the_changed_positions_equals_the_full_comparison(
        before in proptest::collection::vec((proptest::option::of(0u64..3), 0i64..2), 0..10),
        changes in proptest::collection::vec((0usize..10, proptest::option::of(0u64..3), 0i64..2), 0..6),
        extra in proptest::collection::vec(0u32..12, 0..4),
        drop_one in proptest::bool::ANY,
    ) {
        let ids: Vec<String> = (0..before.len()).map(|i| format!("e{i}")).collect();
        let base = snapshot(3, 1, before.iter().zip(&ids).map(|((q, r), id)| state(id, *q, *r)).collect());
        let mut next = Snapshot { seq: 2, ..base.clone() };
        let mut positions: Vec<u32> = extra;
        for (i, q, r) in changes {
            if i < next.endpoints.len() {
                next.endpoints[i] = state(&ids[i], q, r);
                positions.push(i as u32);
            }
        }
        if drop_one && !next.endpoints.is_empty() {
            next.endpoints.remove(0);
        }
        positions.sort_unstable();
        positions.dedup();
        let want = snapshot_delta_to_proto(&base, &next, &[]);
        proptest::prop_assert_eq!(snapshot_delta_to_proto_at(&base, &next, &[], &positions), want);
    }
}

/// Regression (issue 16): `LoadDelta { requests: i64::MAX, tokens: i64::MAX }` was folded in, and
/// two such reports made the leader's sum wrap. Negative and absurd counts are refused.
#[test]
fn loads_no_picker_could_report_are_refused() {
    let report = |requests: i64, tokens: i64, sent: u64| {
        report_from_proto(pb::PickerReport {
            version: PROTOCOL_VERSION,
            picker_id: "p".into(),
            loads: vec![pb::LoadDelta {
                endpoint_id: "a".into(),
                requests,
                tokens,
                sent_since_scrape: sent,
                scraped_at_unix_micros: 0,
            }],
            routed: vec![],
        })
    };
    use crate::protocol::{MAX_REPORTED_REQUESTS, MAX_REPORTED_SENT, MAX_REPORTED_TOKENS};
    assert!(report(MAX_REPORTED_REQUESTS, MAX_REPORTED_TOKENS, MAX_REPORTED_SENT).is_ok(), "the bounds are allowed");
    let refused = |r: Result<_, WireError>| match r {
        Err(WireError::ImplausibleLoad { field, .. }) => field,
        other => panic!("{other:?}"),
    };
    assert_eq!(refused(report(i64::MAX, i64::MAX, 0)), "requests");
    assert_eq!(refused(report(-1, 0, 0)), "requests");
    assert_eq!(refused(report(1, -1, 0)), "tokens");
    assert_eq!(refused(report(1, MAX_REPORTED_TOKENS + 1, 0)), "tokens");
    assert_eq!(refused(report(0, 0, u64::MAX)), "sent_since_scrape");
    let message = report(i64::MAX, 0, 0).expect_err("refused").to_string();
    assert!(message.contains("requests 9223372036854775807") && message.contains("0..=1048576"), "{message}");
}
