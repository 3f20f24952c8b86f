//! The scoreboard's short version (`switchyard bench routing`, docs/benchmarks.md): on the
//! shared-prefix workload Switchyard's default profile must beat round-robin on TTFT p90 and on
//! prefix-cache hit rate, and four pickers sharing the aggregator's view must not fall more than
//! 10 % behind one.
//!
//! To stay cheap in a debug build beside the other tests, the sims run at a quarter speed (the
//! fleet saturates at a quarter of the rate, so the routing path does a quarter of the work per
//! second) and every arm of one seed runs at the same time, each on its own fleet, so that
//! whatever else the machine does hits all arms alike. Figures are pooled over the seeds; the
//! margins and seed count are explained next to the assertions.

use switchyard::tools::routing::report::{Figures, RunData};
use switchyard::tools::routing::{Kind, Policy, Rig, RunSpec, run_once, workload};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

#[actix_rt::test]
async fn switchyard_beats_round_robin_on_shared_prefixes_and_four_pickers_keep_up() {
    let rig = Rig { speed: 0.25, ..Rig::new(BIN.into()) };
    // Round-robin saturates this fleet at about 32 req/s at full speed (docs/benchmarks.md):
    // 80 % of a quarter of that.
    let rate = 0.8 * 32.0 * 0.25;
    let seeds = [11, 12];
    let arms = [(Policy::RoundRobin, 0), (Policy::UpstreamDefault, 1), (Policy::UpstreamDefault, 4)];
    let mut runs: Vec<Vec<RunData>> = arms.iter().map(|_| Vec::new()).collect();
    for seed in seeds {
        let records = workload::generate(Kind::SharedPrefix, (rate * 28.0) as usize, seed);
        let all = futures::future::join_all(arms.iter().map(|&(policy, pickers)| {
            let (rig, records) = (&rig, &records);
            async move {
                let spec =
                    RunSpec { kind: Some(Kind::SharedPrefix), policy, pickers, records, rate, seed, warmup_s: 8.0 };
                run_once(&spec, rig).await.expect("run")
            }
        }))
        .await;
        for (i, r) in all.into_iter().enumerate() {
            runs[i].push(r);
        }
    }
    let f: Vec<Figures> =
        runs.iter().zip(arms).map(|(r, (p, n))| Figures::from_runs(&format!("{}x{n}", p.name()), r, 4000.0)).collect();
    let (rr, one, four) = (&f[0], &f[1], &f[2]);
    for x in &f {
        eprintln!(
            "{}: {} requests, {} ok, TTFT p50/p90 {:.0}/{:.0} ms, hit {:.1} %",
            x.policy,
            x.requests,
            x.ok,
            x.ttft_ms[0],
            x.ttft_ms[1],
            100.0 * x.hit_rate
        );
        assert_eq!(x.ok, x.requests, "{}: every request is answered", x.policy);
    }
    assert!(
        one.ttft_ms[1] < rr.ttft_ms[1],
        "TTFT p90: switchyard {:.0} ms vs round-robin {:.0} ms",
        one.ttft_ms[1],
        rr.ttft_ms[1]
    );
    assert!(one.hit_rate > rr.hit_rate, "hit rate: switchyard {:.3} vs round-robin {:.3}", one.hit_rate, rr.hit_rate);
    assert!(four.hit_rate >= 0.9 * one.hit_rate, "hit rate: 4 pickers {:.3} vs 1 {:.3}", four.hit_rate, one.hit_rate);
    assert!(
        four.ttft_ms[1] <= 1.1 * one.ttft_ms[1],
        "TTFT p90: 4 pickers {:.0} ms vs 1 {:.0} ms",
        four.ttft_ms[1],
        one.ttft_ms[1]
    );
}
