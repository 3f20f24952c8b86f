//! The leader's cost with picker reports flowing: `AggregatorState::build` with E endpoints and P
//! pickers that each report load for every endpoint, folding one such report, and encoding one
//! picker's update (a full snapshot vs a delta where 10 % of the endpoints changed).
//! `cargo bench --bench aggregate` — one thread.
#![allow(clippy::disallowed_types, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use switchyard::aggregator::{AggregatorState, PickerLoads, PickerReport};
use switchyard::model::{EndpointId, EndpointMetrics, Load, MetricsSample};
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

fn main() {
    println!(
        "{:>9} {:>7} | {:>22} | {:>16} | {:>16} | {:>14}",
        "endpoints", "pickers", "build() p50 / p99 (us)", "one report (us)", "full encode (us)", "10% delta (us)"
    );
    // `cargo bench --bench aggregate -- 10000x200` runs only the sizes named.
    let only: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    for (e, p) in [(100, 4), (1000, 10), (1000, 50), (10000, 200)] {
        if !only.is_empty() && !only.contains(&format!("{e}x{p}")) {
            continue;
        }
        let now = SystemTime::now();
        let endpoints = switchyard::tools::loadgen::synthetic_snapshot(e).endpoints.into_iter().map(|s| s.endpoint);
        let ids: Vec<EndpointId> = endpoints.clone().map(|x| x.id).collect();
        let mut state = AggregatorState::new(1);
        state.on_endpoints(endpoints.collect());
        for id in &ids {
            state.on_scraped(MetricsScraped { endpoint: id.clone(), sample: sample(now, 1), latency: Duration::ZERO });
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
        }
        let mut base = state.build(now).expect("first");
        let (mut builds, mut reports) = (Vec::new(), Vec::new());
        let (mut full, mut delta) = (Vec::new(), Vec::new());
        for round in 0..400i64 {
            // Per snapshot: one picker reports, and the same tenth of the endpoints is scraped.
            let r = report(round as usize % p, round);
            let t = Instant::now();
            state.on_picker_report(r, now);
            reports.push(t.elapsed().as_secs_f64() * 1e6);
            for id in ids.iter().skip(round as usize % 10).step_by(10) {
                let s = sample(now + Duration::from_millis(round as u64 + 1), round as u64 % 5);
                state.on_scraped(MetricsScraped { endpoint: id.clone(), sample: s, latency: Duration::ZERO });
            }
            let t = Instant::now();
            let next = black_box(state.build(now).expect("dirty"));
            builds.push(t.elapsed().as_secs_f64() * 1e6);
            let t = Instant::now();
            black_box(switchyard::wire::snapshot_to_proto(&next));
            full.push(t.elapsed().as_secs_f64() * 1e6);
            let t = Instant::now();
            black_box(switchyard::wire::snapshot_delta_to_proto(&base, &next, &[]));
            delta.push(t.elapsed().as_secs_f64() * 1e6);
            base = next;
        }
        for v in [&mut builds, &mut reports, &mut full, &mut delta] {
            v.sort_by(f64::total_cmp);
        }
        println!(
            "{e:>9} {p:>7} | {:>10.1} / {:>9.1} | {:>16.1} | {:>16.1} | {:>14.1}",
            pct(&builds, 50.0),
            pct(&builds, 99.0),
            pct(&reports, 50.0),
            pct(&full, 50.0),
            pct(&delta, 50.0)
        );
    }
}
