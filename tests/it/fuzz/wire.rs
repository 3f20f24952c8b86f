//! Fuzz targets over control-plane messages: snapshot updates as a picker receives them, and the
//! reports pickers and scrapers send the leader. Inputs are protobuf bytes, decoded first; what
//! decodes goes through the conversions, then as far as it would go in a real process (the
//! picker's prefix index and a decision; the leader's state and its next snapshot).

use std::collections::HashSet;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message as _;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use switchyard::aggregator::AggregatorState;
use switchyard::config::EndpointPickerConfig;
use switchyard::model::{Endpoint, EndpointId, Snapshot};
use switchyard::picker::view::{PickerView, ViewBuilder};
use switchyard::picker::{Picker, PickerMetrics, PickerSettings};
use switchyard::scheduling::{RequestFeatures, Scheduler, SchedulerConfig, View};
use switchyard::wire;
use switchyard_proto::v1 as pb;

use super::harness::{Rng, Target};

const PROTO_TOKENS: &[&[u8]] = &[
    b"\x08\x01",
    b"\x08\x02",
    b"\x20\x01",
    b"\x20\x00",
    b"\xff\xff\xff\xff\xff\xff\xff\xff\x7f",
    b"\x80",
    b"\x0a\x00",
];

/// A full snapshot update: refused, or a snapshot with unique ids sorted by id that a picker can
/// learn from and decide on.
pub const SNAPSHOT: Target = Target {
    name: "wire-snapshot",
    extra_seeds: &[],
    dictionary: PROTO_TOKENS,
    generate: |rng| full_update(rng, 1).encode_to_vec(),
    check: check_snapshot,
};

/// `apply_update(held, update)` on a held snapshot and an arbitrary update (input: a 2-byte
/// little-endian length, the held snapshot's full update, then the update): refused, or a
/// snapshot with unique ids sorted by id; `held` never changes. The picker's own decoding (specs
/// looked up in a memo that holds the held snapshot's) gives the same result as prost's.
pub const APPLY: Target = Target {
    name: "wire-apply",
    extra_seeds: &[],
    dictionary: PROTO_TOKENS,
    generate: generate_apply,
    check: check_apply,
};

/// Reports as the leader receives them (each input decoded as a picker report and as a scraper
/// report): converted, folded into the leader's state by two pickers and taken back, turned into
/// a snapshot a picker decides on.
pub const REPORTS: Target = Target {
    name: "wire-reports",
    extra_seeds: &[],
    dictionary: PROTO_TOKENS,
    generate: generate_report,
    check: check_reports,
};

fn check_snapshot(input: &[u8]) -> Result<(), String> {
    let Ok(u) = pb::SnapshotUpdate::decode(input) else { return Ok(()) };
    let Ok(s) = wire::snapshot_from_proto(u) else { return Ok(()) };
    well_formed(&s)?;
    picker_decides(s)
}

/// Splits an `APPLY` input into the held snapshot's bytes and the update's.
fn split_apply(input: &[u8]) -> (&[u8], &[u8]) {
    let n = match input {
        [a, b, ..] => usize::from(u16::from_le_bytes([*a, *b])),
        _ => 0,
    };
    let rest = input.get(2..).unwrap_or_default();
    rest.split_at(n.min(rest.len()))
}

fn check_apply(input: &[u8]) -> Result<(), String> {
    let (held_bytes, update) = split_apply(input);
    let held = pb::SnapshotUpdate::decode(held_bytes)
        .ok()
        .and_then(|u| wire::snapshot_from_proto(u).ok())
        .unwrap_or_else(|| (*Snapshot::empty()).clone());
    // The picker's stream decodes with a memo of the specs seen before (here, the held ones).
    let mut memo = wire::SpecMemo::default();
    let _ = wire::decode_update(held_bytes, &mut memo);
    let memoized = wire::decode_update(update, &mut memo);
    let Ok(u) = pb::SnapshotUpdate::decode(update) else {
        return match memoized {
            Ok(_) => Err("the memo'd decoding accepted what prost refuses".into()),
            Err(_) => Ok(()),
        };
    };
    let memoized = memoized.map_err(|e| format!("the memo'd decoding refused what prost accepts: {e}"))?;
    // Debug text: NaN metrics compare equal to themselves.
    let before = format!("{held:?}");
    let (full, epoch, seq) = (u.full, u.epoch, u.seq);
    let result = wire::apply_update(&held, u);
    if format!("{held:?}") != before {
        return Err("apply_update changed the held snapshot".into());
    }
    let through_memo = wire::apply_decoded(&held, memoized);
    if format!("{through_memo:?}") != format!("{result:?}") {
        return Err(format!("the memo'd path gave {through_memo:?}, prost's {result:?}"));
    }
    let Ok(s) = result else { return Ok(()) };
    well_formed(&s)?;
    if !full && (s.epoch, s.seq) != (epoch, seq) {
        return Err(format!("a delta to ({epoch}, {seq}) gave ({}, {})", s.epoch, s.seq));
    }
    picker_decides(s)
}

fn check_reports(input: &[u8]) -> Result<(), String> {
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    if let Ok(r) = pb::PickerReport::decode(input) {
        // A report no honest picker could send is refused at the door (issue #16).
        let Ok(report) = wire::report_from_proto(r.clone()) else { return Ok(()) };
        if let Some((id, _)) = report.loads.inflight.iter().find(|(_, l)| l.requests == 0 && l.tokens == 0) {
            return Err(format!("zero in-flight load kept for {id:?}"));
        }
        if let Some((id, _)) = report.loads.sent.iter().find(|(_, (_, n))| *n == 0) {
            return Err(format!("zero sends kept for {id:?}"));
        }
        let ids: Vec<&str> = r.loads.iter().map(|l| l.endpoint_id.as_str()).chain(["a"]).collect();
        let mut state = AggregatorState::new(1);
        state.on_endpoints(ids.iter().map(|id| endpoint(id)).collect());
        for picker in ["p1", "p2"] {
            let mut report =
                wire::report_from_proto(r.clone()).map_err(|e| format!("accepted once, refused now: {e}"))?;
            report.picker = picker.into();
            state.on_picker_report(report, now);
        }
        let s = state.build(now).ok_or("no snapshot after two reports")?;
        well_formed(&s)?;
        picker_decides(s)?;
        // Both pickers' loads fall to nothing: the shared load is back to zero everywhere.
        for picker in ["p1", "p2"] {
            let empty = pb::PickerReport { picker_id: picker.into(), ..Default::default() };
            state.on_picker_report(
                wire::report_from_proto(empty).map_err(|e| format!("empty report refused: {e}"))?,
                now,
            );
        }
        if let Some(s) = state.build(now)
            && let Some(e) =
                s.endpoints.iter().find(|e| e.shared_load != Default::default() || e.shared_sent_since_scrape != 0)
        {
            return Err(format!("load left after every picker took its report back: {e:?}"));
        }
    }
    if let Ok(r) = pb::MetricsReport::decode(input) {
        let has_result = r.result.is_some();
        let id = r.endpoint_id.clone();
        let event = wire::event_from_report(r);
        if event.is_some() != has_result {
            return Err(format!("report with a result: {has_result}, event: {event:?}"));
        }
        let mut state = AggregatorState::new(1);
        state.on_endpoints(vec![endpoint(&id), endpoint("a")]);
        match event {
            Some(Ok(m)) => state.on_scraped(m),
            Some(Err(f)) => state.on_failed(f),
            None => {}
        }
        let s = state.build(now).ok_or("no first snapshot")?;
        let again = wire::snapshot_from_proto(wire::snapshot_to_proto(&s)).map_err(|e| format!("round trip: {e}"))?;
        well_formed(&again)?;
        picker_decides(again)?;
    }
    Ok(())
}

fn endpoint(id: &str) -> Endpoint {
    Endpoint {
        id: EndpointId::new(id),
        address: "10.0.0.1:8000".into(),
        metrics_url: "http://10.0.0.1:8000/metrics".into(),
        engine: "vllm".into(),
        labels: Default::default(),
    }
}

/// What pickers rely on: ids unique and sorted.
fn well_formed(s: &Snapshot) -> Result<(), String> {
    let mut seen = HashSet::new();
    if let Some(dup) = s.endpoints.iter().find(|e| !seen.insert(&e.endpoint.id)) {
        return Err(format!("endpoint {:?} twice", dup.endpoint.id.as_str()));
    }
    if !s.endpoints.windows(2).all(|w| w[0].endpoint.id < w[1].endpoint.id) {
        let ids: Vec<&str> = s.endpoints.iter().map(|e| e.endpoint.id.as_str()).collect();
        return Err(format!("endpoints not sorted by id: {ids:?}"));
    }
    Ok(())
}

/// The picker's side of a snapshot: it learns the routed blocks, builds its view, and decides
/// for a request with one of its own already in flight.
fn picker_decides(s: Snapshot) -> Result<(), String> {
    static CONFIG: LazyLock<Result<SchedulerConfig, String>> = LazyLock::new(|| {
        SchedulerConfig::build(&EndpointPickerConfig::default_config(), Duration::from_secs(2))
            .map_err(|e| e.to_string())
    });
    let config = CONFIG.clone()?;
    let settings = PickerSettings { seed: 1, ..PickerSettings::default() };
    let picker = Picker::new(Scheduler::new(config), settings, PickerMetrics::detached());
    let s = Arc::new(s);
    picker.accept(s.clone());
    let Some(view) = ViewBuilder::default().next(&PickerView::empty(), s.clone()) else {
        return Err("no view from the first snapshot".into());
    };
    if !view.is_ready() {
        return Ok(());
    }
    view.counters[0].start(100);
    let prompt = "The same long system prompt. ".repeat(10);
    let req = RequestFeatures {
        target_model: "m",
        priority: -1,
        prefix_input: prompt.as_bytes(),
        cache_salt: "",
        estimated_tokens: 100,
        test_selection: None,
    };
    let candidates: Vec<usize> = (0..s.endpoints.len()).collect();
    let now = s.published_at.checked_add(Duration::from_millis(100)).unwrap_or(SystemTime::UNIX_EPOCH);
    let mut rng = SmallRng::seed_from_u64(1);
    let prefix = &picker.prefix;
    let v = View { snapshot: &s, columns: &view.columns, local: &view, prefix, now };
    if let Ok(d) = picker.scheduler.schedule(&v, &candidates, &req, &mut rng) {
        let Some(&primary) = d.endpoints.first().filter(|_| d.endpoints.iter().all(|&i| i < s.endpoints.len())) else {
            return Err(format!("decision names no endpoint of the snapshot: {d:?}"));
        };
        let capacity = picker.scheduler.prefix_capacity(&s, primary);
        prefix.insert(&s.endpoints[primary].endpoint.id, &d.prefix_hashes, capacity);
    }
    Ok(())
}

const IDS: &[&str] = &["a", "b", "c", "ns/pod-rank-0", "", "é"];

fn f64_value(rng: &mut Rng) -> f64 {
    rng.pick(&[0.0, 1.0, 0.5, -1.0, 1e300, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 3.0])
}

fn i64_value(rng: &mut Rng) -> i64 {
    rng.pick(&[0, 1, -1, 7, i64::MAX, i64::MIN, 1 << 40])
}

fn u64_value(rng: &mut Rng) -> u64 {
    rng.pick(&[0, 1, 2, 16, u64::MAX, 1 << 63, u64::from(u32::MAX)])
}

fn metrics(rng: &mut Rng) -> pb::EndpointMetrics {
    let some = |rng: &mut Rng| rng.chance(70);
    pb::EndpointMetrics {
        queued: some(rng).then(|| f64_value(rng)),
        running: some(rng).then(|| f64_value(rng)),
        kv_usage: some(rng).then(|| f64_value(rng)),
        running_lora: if rng.chance(30) { vec!["a".into(), String::new()] } else { vec![] },
        waiting_lora: vec![],
        max_lora: some(rng).then(|| u64_value(rng) as u32),
        cache_block_size: some(rng).then(|| rng.pick(&[0, 1, 16, u32::MAX])),
        cache_num_blocks: some(rng).then(|| u64_value(rng)),
        lora_reported: rng.chance(50),
        errors: if rng.chance(20) { vec!["kv_usage: x".into()] } else { vec![] },
    }
}

fn state(rng: &mut Rng, id: &str) -> pb::EndpointState {
    pb::EndpointState {
        spec: rng.chance(97).then(|| pb::EndpointSpec {
            id: id.into(),
            address: format!("10.0.0.{}:8000", rng.below(3)),
            metrics_url: String::new(),
            engine: rng.pick(&["vllm", "sglang", ""]).into(),
            labels: Default::default(),
        }),
        metrics: rng.chance(70).then(|| metrics(rng)),
        scraped_at_unix_micros: i64_value(rng),
        inflight_requests: i64_value(rng),
        inflight_tokens: i64_value(rng),
        sent_since_scrape: u64_value(rng),
    }
}

fn states(rng: &mut Rng, max: usize) -> Vec<pb::EndpointState> {
    (0..rng.below(max))
        .map(|_| {
            let id = rng.pick(IDS);
            state(rng, id)
        })
        .collect()
}

fn blocks(rng: &mut Rng) -> Vec<pb::PrefixBlocks> {
    (0..rng.below(3))
        .map(|_| pb::PrefixBlocks {
            endpoint_id: rng.pick(IDS).into(),
            hashes: (0..rng.below(5)).map(|_| rng.next_u64() % 8).collect(),
        })
        .collect()
}

fn full_update(rng: &mut Rng, epoch: u64) -> pb::SnapshotUpdate {
    pb::SnapshotUpdate {
        version: if rng.chance(97) { 1 } else { 2 },
        epoch,
        seq: 1 + rng.below(5) as u64,
        full: true,
        base_seq: 0,
        // Ids from the alphabet, in any order, sometimes repeated.
        endpoints: states(rng, 5),
        removed: vec![],
        prefix_blocks: blocks(rng),
        published_at_unix_micros: i64_value(rng),
        objectives: [("critical".to_string(), 2)].into_iter().collect(),
        objectives_changed: true,
        publish_span: if rng.chance(50) { vec![7; 24] } else { Vec::new() },
    }
}

fn generate_apply(rng: &mut Rng) -> Vec<u8> {
    let epoch = 1 + rng.below(2) as u64;
    let held = full_update(rng, epoch);
    let update = if rng.chance(25) {
        full_update(rng, held.epoch)
    } else {
        let on_held = rng.chance(80);
        pb::SnapshotUpdate {
            version: if rng.chance(97) { 1 } else { 2 },
            epoch: if on_held { held.epoch } else { rng.below(3) as u64 },
            seq: held.seq + rng.below(3) as u64,
            full: false,
            base_seq: if on_held { held.seq } else { rng.below(6) as u64 },
            endpoints: states(rng, 4),
            removed: (0..rng.below(3)).map(|_| rng.pick(IDS).into()).collect(),
            prefix_blocks: blocks(rng),
            published_at_unix_micros: i64_value(rng),
            objectives: Default::default(),
            objectives_changed: rng.chance(20),
            publish_span: if rng.chance(50) { vec![7; 24] } else { Vec::new() },
        }
    };
    let held = held.encode_to_vec();
    let mut out = (held.len() as u16).to_le_bytes().to_vec();
    out.extend_from_slice(&held);
    out.extend_from_slice(&update.encode_to_vec());
    out
}

fn generate_report(rng: &mut Rng) -> Vec<u8> {
    if rng.chance(50) {
        let result = match rng.below(3) {
            0 => None,
            1 => Some(pb::metrics_report::Result::Error("connection refused".into())),
            _ => Some(pb::metrics_report::Result::Metrics(metrics(rng))),
        };
        let r = pb::MetricsReport {
            version: 1,
            scraper_id: "s".into(),
            endpoint_id: rng.pick(IDS).into(),
            scraped_at_unix_micros: i64_value(rng),
            result,
        };
        return r.encode_to_vec();
    }
    pb::PickerReport {
        version: 1,
        picker_id: "p".into(),
        loads: (0..rng.below(4))
            .map(|_| pb::LoadDelta {
                endpoint_id: rng.pick(IDS).into(),
                requests: i64_value(rng),
                tokens: i64_value(rng),
                sent_since_scrape: u64_value(rng),
                scraped_at_unix_micros: i64_value(rng),
            })
            .collect(),
        routed: blocks(rng),
    }
    .encode_to_vec()
}
