//! One test per fault the fuzz targets found, named after it, built from the smallest input that
//! shows it (the seeded runs replay the same shapes, but these say what broke).

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use switchyard::aggregator::AggregatorState;
use switchyard::model::{Endpoint, EndpointId, EndpointState, Load, MetricsState, Snapshot};
use switchyard::picker::view::{PickerView, ViewBuilder};
use switchyard::wire;
use switchyard_proto::v1 as pb;

fn endpoint(id: &str) -> Endpoint {
    Endpoint {
        id: EndpointId::new(id),
        address: "10.0.0.1:8000".into(),
        metrics_url: String::new(),
        engine: "vllm".into(),
        labels: Default::default(),
    }
}

fn snapshot(endpoints: Vec<EndpointState>) -> Snapshot {
    Snapshot {
        epoch: 1,
        seq: 1,
        endpoints,
        published_at: UNIX_EPOCH,
        routed_blocks: vec![],
        objectives: Arc::default(),
        publish_span: None,
    }
}

fn state(id: &str, shared_load: Load, shared_sent_since_scrape: u64) -> EndpointState {
    EndpointState {
        endpoint: Arc::new(endpoint(id)),
        metrics: MetricsState::Unknown,
        shared_load,
        shared_sent_since_scrape,
    }
}

/// A leader (or anything on its stream) sending `sent_since_scrape` near `u64::MAX` made the
/// picker's own count overflow as soon as it had sent a request.
#[test]
fn test_fuzz_picker_sent_since_scrape_overflow() {
    let s = Arc::new(snapshot(vec![state("a", Load::default(), u64::MAX)]));
    let view = ViewBuilder::default().next(&PickerView::empty(), s).expect("view");
    view.counters[0].start(1);
    assert_eq!(switchyard::scheduling::LocalLoads::local_load(&view, 0).sent_since_scrape, u64::MAX);
}

/// A shared in-flight load near `i64::MAX` plus this picker's own request overflowed in the
/// scorer.
#[test]
fn test_fuzz_scorer_inflight_overflow() {
    use rand::SeedableRng;
    use switchyard::config::EndpointPickerConfig;
    use switchyard::scheduling::{Columns, LocalLoad, PrefixIndex, RequestFeatures, Scheduler, SchedulerConfig, View};
    let huge = Load { requests: i64::MAX, tokens: i64::MAX };
    let s = snapshot(vec![state("a", huge, 0), state("b", Load::default(), 0)]);
    let cfg = SchedulerConfig::build(&EndpointPickerConfig::default_config(), Duration::from_secs(2)).expect("config");
    let local = [LocalLoad { sent_since_scrape: 0, inflight: Load { requests: 1, tokens: 1 } }; 2];
    let prefix = PrefixIndex::new();
    let columns = Columns::new(&s);
    let view = View { snapshot: &s, columns: &columns, local: &local, prefix: &prefix, now: UNIX_EPOCH };
    let req = RequestFeatures { target_model: "m", ..Default::default() };
    let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
    let d = Scheduler::new(cfg).schedule(&view, &[0, 1], &req, &mut rng).expect("a decision");
    assert!(d.endpoints[0] < 2);
}

/// A full snapshot whose endpoints were not in id order was accepted as it was, and a later
/// delta merged into the wrong order.
#[test]
fn test_fuzz_unsorted_full_snapshot_is_put_in_order() {
    let mut u =
        wire::snapshot_to_proto(&snapshot(vec![state("a", Load::default(), 0), state("b", Load::default(), 0)]));
    u.endpoints.reverse();
    let s = wire::snapshot_from_proto(u.clone()).expect("accepted");
    let ids: Vec<&str> = s.endpoints.iter().map(|e| e.endpoint.id.as_str()).collect();
    assert_eq!(ids, ["a", "b"]);
    u.endpoints.push(u.endpoints[0].clone());
    assert_eq!(wire::snapshot_from_proto(u), Err(wire::WireError::Duplicate("b".into())));
}

/// Two pickers reporting loads near `i64::MAX` made the leader's sums overflow; taking the
/// reports back must leave nothing behind. (The wire refuses such reports now; the state must
/// hold up even when handed one directly.)
#[test]
fn test_fuzz_leader_picker_report_overflow() {
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mut state = AggregatorState::new(1);
    state.on_endpoints(vec![endpoint("a")]);
    let report = |picker: &str, requests: i64, sent: u64| {
        let mut loads = switchyard::aggregator::PickerLoads::default();
        loads.inflight.insert(EndpointId::new("a"), Load { requests, tokens: requests });
        loads.sent.insert(EndpointId::new("a"), (UNIX_EPOCH, sent));
        switchyard::aggregator::PickerReport { picker: picker.into(), loads, routed: vec![] }
    };
    assert!(
        wire::report_from_proto(pb::PickerReport {
            version: wire::PROTOCOL_VERSION,
            picker_id: "p".into(),
            loads: vec![pb::LoadDelta { endpoint_id: "a".into(), requests: i64::MAX, ..Default::default() }],
            routed: vec![],
        })
        .is_err(),
        "the wire refuses it"
    );
    state.on_picker_report(report("p1", i64::MAX, u64::MAX), now);
    state.on_picker_report(report("p2", i64::MAX, u64::MAX), now);
    state.on_picker_report(report("p1", i64::MIN, 1), now);
    assert!(state.build(now).is_some());
    for p in ["p1", "p2"] {
        state.on_picker_report(switchyard::aggregator::PickerReport { picker: p.into(), ..Default::default() }, now);
    }
    let s = state.build(now).expect("snapshot");
    assert_eq!((s.endpoints[0].shared_load, s.endpoints[0].shared_sent_since_scrape), (Load::default(), 0));
}

/// `blockSizeTokens: 4611686018427387904` (2^62) made the block size in bytes wrap to 0, and
/// hashing a prompt panicked (`chunks(0)`) on every request; 2^63-1 overflowed in debug builds.
#[test]
fn test_fuzz_huge_block_size_tokens() {
    use switchyard::scheduling::hash_blocks;
    let prompt = [b'x'; 64];
    for size in [1usize << 62, i64::MAX as usize, usize::MAX] {
        assert!(hash_blocks("m", "", &prompt, size, 256).is_empty(), "no block of {size} tokens fits");
    }
    assert_eq!(hash_blocks("m", "", &prompt, 4, 256).len(), 4);
}

/// `metricsStalenessThreshold: 99999999999999999999h` (or such a command-line duration)
/// panicked converting to a `Duration`; it is now an invalid duration.
#[test]
fn test_fuzz_huge_duration_is_invalid() {
    use switchyard::config::EndpointPickerConfig;
    use switchyard::scheduling::SchedulerConfig;
    use switchyard::scheduling::config::parse_duration;
    assert_eq!(parse_duration("99999999999999999999h"), None);
    assert_eq!(parse_duration("2562047h"), Some(Duration::from_secs(2_562_047 * 3600)));
    let yaml = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n- type: utilization-detector\n  parameters: {metricsStalenessThreshold: 99999999999999999999h}\n";
    let cfg = EndpointPickerConfig::from_yaml(yaml).expect("the document is valid");
    let err = SchedulerConfig::build(&cfg, Duration::from_secs(1)).expect_err("the duration is not");
    assert!(err.to_string().contains("metricsStalenessThreshold"), "{err}");
}

/// KV-cache usage NaN on every endpoint (a garbage snapshot) made every score NaN; no candidate
/// tied with the best and the max-score picker panicked on an empty range.
#[test]
fn test_fuzz_nan_scores_still_pick() {
    use rand::SeedableRng;
    use switchyard::config::EndpointPickerConfig;
    use switchyard::model::{EndpointMetrics, MetricsSample};
    use switchyard::scheduling::{PrefixIndex, RequestFeatures, Scheduler, SchedulerConfig, View};
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let nan = |id: &str| EndpointState {
        metrics: MetricsState::Known {
            sample: Arc::new(MetricsSample {
                metrics: EndpointMetrics { kv_usage: Some(f64::NAN), ..Default::default() },
                scraped_at: now,
                errors: vec![],
            }),
            last_error: None,
        },
        ..state(id, Load::default(), 0)
    };
    let s = snapshot(vec![nan("a"), nan("b")]);
    let cfg = SchedulerConfig::build(&EndpointPickerConfig::default_config(), Duration::from_secs(2)).expect("config");
    let prefix = PrefixIndex::new();
    let columns = switchyard::scheduling::Columns::new(&s);
    let view = View { snapshot: &s, columns: &columns, local: &(), prefix: &prefix, now };
    let req = RequestFeatures { target_model: "m", ..Default::default() };
    let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
    let d = Scheduler::new(cfg).schedule(&view, &[0, 1], &req, &mut rng).expect("a decision");
    // NaN usage counts as unknown (the worst KV score for both): a tie, broken as any other.
    assert!(d.endpoints == [0] || d.endpoints == [1], "{:?}", d.endpoints);
}
