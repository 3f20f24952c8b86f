//! The leader's cost with picker reports flowing, per publish tick: `AggregatorState::build` with
//! E endpoints (a full build, and the in-place update of a recycled snapshot the aggregator does)
//! and P pickers that each report load for every endpoint; folding one such report; the update
//! for P subscribed pickers (one shared delta, built and encoded once, then framed for each
//! stream around the same bytes); and, for comparison, what one delta per subscriber costs
//! (how the leader worked before), a full snapshot's encoding, and a picker applying the delta.
//! Per round a tenth of the endpoints is scraped and one picker's report changes on that tenth.
//! `cargo bench --bench aggregate` — one thread; `-- 10000x200` runs only the sizes named.
#![allow(clippy::disallowed_types, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use prost::Message as _;
use switchyard::aggregator::serve::Subscribers;
use switchyard::aggregator::{AggregatorState, PickerLoads, PickerReport, RoutedLog};
use switchyard::model::{Endpoint, EndpointId, EndpointMetrics, Load, MetricsSample, Snapshot};
use switchyard::protocol::MetricsScraped;

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((p / 100.0 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn sample(at: SystemTime, queued: u64) -> Arc<MetricsSample> {
    Arc::new(MetricsSample {
        metrics: EndpointMetrics { queued: Some(queued), running: Some(2), kv_usage: Some(0.3), ..Default::default() },
        scraped_at: at,
        errors: vec![],
    })
}

/// Endpoints as Kubernetes discovery makes them: a metrics URL and the pod's labels.
fn endpoints(n: usize) -> Vec<Endpoint> {
    let labels = |i: usize| {
        [
            ("app".to_string(), "vllm-llama3-8b-instruct".to_string()),
            ("pod-template-hash".to_string(), format!("{:010x}", i * 7919)),
            ("inference.networking.k8s.io/engine-type".to_string(), "vllm".to_string()),
            ("app.kubernetes.io/part-of".to_string(), "inference-pool".to_string()),
        ]
        .into_iter()
        .collect()
    };
    switchyard::tools::loadgen::synthetic_snapshot(n)
        .endpoints
        .into_iter()
        .enumerate()
        .map(|(i, s)| Endpoint {
            metrics_url: format!("http://{}/metrics", s.endpoint.address),
            labels: labels(i),
            ..(*s.endpoint).clone()
        })
        .collect()
}

#[derive(Default)]
struct Times {
    build_full: Vec<f64>,
    build: Vec<f64>,
    report: Vec<f64>,
    deltas: Vec<f64>,
    first: Vec<f64>,
    tick: Vec<f64>,
    shared: Vec<f64>,
    full_encode: Vec<f64>,
    full_shared: Vec<f64>,
    per_subscriber: Vec<f64>,
    apply: Vec<f64>,
}

fn us(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e6
}

fn main() {
    let only: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    println!(
        "{:>9} {:>7} | {:>10} | {:>17} | {:>8} | {:>11} | {:>8} | {:>17} | {:>8} | {:>11} | {:>11} | {:>8} | {:>8} | {:>8}",
        "endpoints",
        "pickers",
        "full build",
        "build p50 / p99",
        "report",
        "P updates",
        "of which 1st",
        "tick p50 / p99",
        "1 delta",
        "before: 1",
        "before tick",
        "full enc",
        "shared",
        "apply"
    );
    for (e, p) in [(100, 4), (1000, 10), (1000, 50), (10000, 200)] {
        if !only.is_empty() && !only.contains(&format!("{e}x{p}")) {
            continue;
        }
        let now = SystemTime::now();
        let endpoints = endpoints(e);
        let ids: Vec<EndpointId> = endpoints.iter().map(|x| x.id.clone()).collect();
        // `state` works as the aggregator does (snapshots handed back); `full` builds afresh.
        let (mut state, mut full) = (AggregatorState::new(1), AggregatorState::new(1));
        for s in [&mut state, &mut full] {
            s.on_endpoints(endpoints.clone());
            for id in &ids {
                s.on_scraped(MetricsScraped { endpoint: id.clone(), sample: sample(now, 1), latency: Duration::ZERO });
            }
        }
        // A picker's load on every endpoint; in round r it changed on every tenth endpoint only.
        let report = |picker: usize, round: i64| {
            let load = |j: usize| if j % 10 == round as usize % 10 { round % 7 } else { 1 };
            let inflight =
                ids.iter().enumerate().map(|(j, id)| (id.clone(), Load { requests: load(j), tokens: 100 * load(j) }));
            let sent = ids.iter().enumerate().map(|(j, id)| (id.clone(), (now, load(j) as u64)));
            PickerReport {
                picker: format!("picker-{picker}"),
                loads: PickerLoads { inflight: inflight.collect(), sent: sent.collect::<HashMap<_, _>>() },
                routed: Vec::new(),
            }
        };
        for picker in 0..p {
            state.on_picker_report(report(picker, 0), now);
            full.on_picker_report(report(picker, 0), now);
        }
        let (routed, subscribers) = (RoutedLog::default(), Subscribers::default());
        let mut base = Arc::new(state.build(now).expect("first"));
        full.build(now).expect("first");
        routed.push(&base, state.changes());
        state.recycle(base.clone());
        let mut t = Times::default();
        // A round: one picker reports, the same tenth of the endpoints is scraped, a tick.
        let events = |round: i64, s: &mut AggregatorState, times: Option<&mut Vec<f64>>| {
            let start = Instant::now();
            s.on_picker_report(report(round as usize % p, round), now);
            if let Some(times) = times {
                times.push(us(start));
            }
            for id in ids.iter().skip(round as usize % 10).step_by(10) {
                let sample = sample(now + Duration::from_millis(round as u64 + 1), round as u64 % 5);
                s.on_scraped(MetricsScraped { endpoint: id.clone(), sample, latency: Duration::ZERO });
            }
        };
        // The leader as it runs: nothing else in between (the comparisons below churn the
        // allocator with whole snapshots, which the running leader does not).
        for round in 0..400i64 {
            events(round, &mut state, Some(&mut t.report));
            events(round, &mut full, None);
            let start = Instant::now();
            let next = state.build(now).expect("dirty");
            t.build.push(us(start));
            let deltas = Instant::now();
            routed.push(&next, state.changes());
            let next = Arc::new(next);
            state.recycle(next.clone());
            for i in 0..p {
                let first = Instant::now();
                let u = subscribers.update(Some(&base), &next, &routed);
                if i == 0 {
                    t.first.push(us(first));
                }
                // What each stream adds: its 5-byte message prefix around the shared bytes.
                black_box((Bytes::from(vec![0u8; 5]), u.bytes().clone()));
            }
            t.deltas.push(us(deltas));
            t.tick.push(us(start));
            base = next;
        }
        let fresh = full.build(now).expect("dirty");
        assert!(fresh.endpoints == base.endpoints, "a recycled build equals a full build");
        let mut base = Arc::new(fresh);
        // (The full builds count their own seqs: their own log.)
        let routed = RoutedLog::default();
        // Comparisons, on the same kind of rounds: a full build, one delta built alone (as the
        // first stream to ask does), the delta every stream built and encoded before, a full snapshot
        // encoded, a picker decoding and applying the delta.
        // The picker's decoder, as its stream keeps it (specs seen before are shared).
        let mut memo = switchyard::wire::SpecMemo::default();
        let first = switchyard::wire::snapshot_to_proto(&base).encode_to_vec();
        let mut held: Snapshot = switchyard::wire::apply_decoded(
            &Snapshot::empty(),
            switchyard::wire::decode_update(&first, &mut memo).unwrap(),
        )
        .unwrap();
        let single = Subscribers::default();
        for round in 400..600i64 {
            events(round, &mut full, None);
            let start = Instant::now();
            let next = full.build(now).expect("dirty");
            t.build_full.push(us(start));
            routed.push(&next, full.changes());
            let start = Instant::now();
            let one = single.update(Some(&base), &next, &routed);
            t.shared.push(us(start));
            let start = Instant::now();
            black_box(switchyard::wire::snapshot_delta_to_proto(&base, &next, &[]).encode_to_vec());
            t.per_subscriber.push(us(start));
            let start = Instant::now();
            black_box(switchyard::wire::snapshot_to_proto(&next).encode_to_vec());
            t.full_encode.push(us(start));
            let start = Instant::now();
            black_box(single.update(None, &next, &routed));
            t.full_shared.push(us(start));
            let start = Instant::now();
            held = switchyard::wire::apply_decoded(
                &held,
                switchyard::wire::decode_update(one.bytes(), &mut memo).unwrap(),
            )
            .unwrap();
            t.apply.push(us(start));
            base = Arc::new(next);
        }
        // (Compared as the wire carries it: scrape times in µs.)
        let leader = switchyard::wire::snapshot_from_proto(switchyard::wire::snapshot_to_proto(&base)).unwrap();
        assert!(held.endpoints == leader.endpoints, "the picker rebuilt the leader's view");
        for v in [
            &mut t.build_full,
            &mut t.build,
            &mut t.report,
            &mut t.deltas,
            &mut t.first,
            &mut t.tick,
            &mut t.shared,
            &mut t.full_encode,
            &mut t.full_shared,
            &mut t.per_subscriber,
            &mut t.apply,
        ] {
            v.sort_by(f64::total_cmp);
        }
        let before_tick = pct(&t.build_full, 50.0) + p as f64 * pct(&t.per_subscriber, 50.0);
        println!(
            "{e:>9} {p:>7} | {:>10.1} | {:>7.1} / {:>7.1} | {:>8.1} | {:>11.1} | {:>8.1} | {:>7.1} / {:>7.1} | {:>8.1} | {:>11.1} | {:>11.1} | {:>8.1} | {:>8.1} | {:>8.1}",
            pct(&t.build_full, 50.0),
            pct(&t.build, 50.0),
            pct(&t.build, 99.0),
            pct(&t.report, 50.0),
            pct(&t.deltas, 50.0),
            pct(&t.first, 50.0),
            pct(&t.tick, 50.0),
            pct(&t.tick, 99.0),
            pct(&t.shared, 50.0),
            pct(&t.per_subscriber, 50.0),
            before_tick,
            pct(&t.full_encode, 50.0),
            pct(&t.full_shared, 50.0),
            pct(&t.apply, 50.0),
        );
    }
    println!(
        "(µs. tick = build + P updates: one shared delta built and encoded, framed for each of P streams; \
         before: 1 = one stream's own delta, before tick = full build + P of those; \
         full enc = a full snapshot through prost, shared = the same encoded with cached specs)"
    );
}
