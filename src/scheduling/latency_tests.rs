//! `learned-latency-scorer`: the expected wait is the queue times what this picker learnt of each
//! endpoint's speed.

use std::time::Duration;

use super::tests::{HEAD, metrics, now, run_with, scheduler_from, snapshot, state};
use super::*;

/// Learnt seconds per queued request by snapshot index (NaN: none yet); no other local load.
struct Learnt(Vec<f64>);

impl LocalLoads for Learnt {
    fn sent_since_scrape(&self, _i: usize) -> u64 {
        0
    }

    fn inflight(&self, _i: usize) -> Load {
        Load::default()
    }

    fn seconds_per_queued(&self, i: usize) -> f64 {
        self.0.get(i).copied().unwrap_or(f64::NAN)
    }
}

fn latency_only() -> Scheduler {
    scheduler_from(&format!("{HEAD}plugins:\n- type: learned-latency-scorer\n- type: max-score-picker\n"))
}

fn fleet(queues: &[u64]) -> Snapshot {
    let names = ["a", "bb", "ccc", "dddd"];
    snapshot(queues.iter().zip(names).map(|(&q, n)| state(n, Some(metrics(q, 0.1)), Duration::ZERO)).collect())
}

#[test]
fn a_slow_endpoint_loses_to_a_fast_one_with_a_longer_queue() {
    let s = latency_only();
    // `a` idle but 3× slower: waits 1 × 0.3 s; `bb` one request ahead at 0.1 s: 2 × 0.1 s.
    let snap = fleet(&[0, 1]);
    let d = run_with(&s, &snap, &Learnt(vec![0.3, 0.1]), &PrefixIndex::new(), 1).expect("decision");
    assert_eq!(d.endpoints[0], 1);
    // Five ahead at the fast one outweighs the slow one's speed: 6 × 0.1 > 1 × 0.3.
    let snap = fleet(&[0, 5]);
    let d = run_with(&s, &snap, &Learnt(vec![0.3, 0.1]), &PrefixIndex::new(), 1).expect("decision");
    assert_eq!(d.endpoints[0], 0);
}

#[test]
fn with_nothing_learnt_the_queue_decides() {
    let s = latency_only();
    let snap = fleet(&[3, 0, 2]);
    let d = run_with(&s, &snap, &Learnt(vec![]), &PrefixIndex::new(), 1).expect("decision");
    assert_eq!(d.endpoints[0], 1);
}

#[test]
fn an_endpoint_not_learnt_yet_counts_as_typical() {
    let s = latency_only();
    // `ccc` unknown takes the mean of 0.1 and 0.5 (0.3): idle, it beats `a` (2 × 0.1) only if it
    // counts as typical, not as free (0) or as the slowest.
    let snap = fleet(&[1, 0, 0]);
    let d = run_with(&s, &snap, &Learnt(vec![0.1, 0.5, f64::NAN]), &PrefixIndex::new(), 1).expect("decision");
    assert_eq!(d.endpoints[0], 0, "1 × 0.3 for the unknown is more than 2 × 0.1");
    let snap = fleet(&[2, 0, 0]);
    let d = run_with(&s, &snap, &Learnt(vec![0.1, 0.5, f64::NAN]), &PrefixIndex::new(), 1).expect("decision");
    assert_eq!(d.endpoints[0], 2, "1 × 0.3 for the unknown is less than 3 × 0.1");
}

/// Two endpoints with these queues and learnt speeds: the one picked, and the scorer's gap between
/// it and the runner-up.
fn pick_and_gap(queues: &[u64], learnt: Vec<f64>) -> (usize, f64) {
    let snap = fleet(queues);
    let (local, columns) = (Learnt(learnt), Columns::new(&snap));
    let view = View { snapshot: &snap, columns: &columns, local: &local, prefix: &PrefixIndex::new(), now: now() };
    let mut rng = rand::SeedableRng::seed_from_u64(1);
    let (d, explained) =
        latency_only().schedule_explained(&view, &[0, 1], &super::tests::req("m"), &mut rng, true).expect("decision");
    let (_, primary, runner_up) = explained.expect("explained").scores[0];
    (d.endpoints[0], primary - runner_up.expect("runner-up"))
}

#[test]
fn near_equal_speeds_score_near_equal() {
    // Two idle servers a few per cent apart leave the prefix scorer in charge, where min-max
    // normalization would give one of them the whole scorer weight.
    let (_, gap) = pick_and_gap(&[0, 0], vec![0.100, 0.104]);
    assert!(gap > 0.0 && gap < 0.05, "gap {gap}");
}

/// Regression (multi-turn on the scoreboard): scored as a ratio of waits, queues of 5 and 6 on
/// identical servers scored 1 and 6/7, too little against prefix affinity, and conversations piled
/// onto busy servers (TTFT p90 584 vs 372 ms for `queue-scorer`). One request of difference is
/// half of the scorer's range.
#[test]
fn long_queues_on_identical_servers_spread_like_the_queue_scorer() {
    let (picked, gap) = pick_and_gap(&[5, 6], vec![0.1, 0.1]);
    assert_eq!(picked, 0);
    assert!((gap - 0.5).abs() < 1e-9, "gap {gap}");
}

#[test]
fn stale_or_unknown_queues_score_worst() {
    let s = latency_only();
    let snap = snapshot(vec![
        state("a", Some(metrics(0, 0.1)), Duration::from_secs(60)),
        state("bb", None, Duration::ZERO),
        state("ccc", Some(metrics(4, 0.1)), Duration::ZERO),
    ]);
    let d = run_with(&s, &snap, &Learnt(vec![0.01, 0.01, 1.0]), &PrefixIndex::new(), 1).expect("decision");
    assert_eq!(d.endpoints[0], 2);
}

#[test]
fn the_scorer_takes_no_parameters() {
    let yaml = format!(
        "{HEAD}plugins:\n- type: learned-latency-scorer\n  parameters: {{alpha: 1}}\n- type: max-score-picker\n"
    );
    let cfg = crate::config::EndpointPickerConfig::from_yaml(&yaml).expect("valid yaml");
    let e = SchedulerConfig::build(&cfg, Duration::from_secs(2)).expect_err("parameters rejected");
    assert!(e.to_string().contains("plugins[0]"), "{e}");
}
