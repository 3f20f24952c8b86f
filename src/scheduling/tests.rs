use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rand::SeedableRng;
use rand::rngs::SmallRng;

use super::*;
use crate::config::EndpointPickerConfig;
use crate::model::{Endpoint, EndpointId, EndpointMetrics, EndpointState, MetricsSample, MetricsState};

const STALE: Duration = Duration::from_secs(2);

pub(super) fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000)
}

pub(super) fn metrics(queued: u64, kv: f64) -> EndpointMetrics {
    EndpointMetrics {
        queued: Some(queued),
        running: Some(1),
        kv_usage: Some(kv),
        cache_block_size: Some(16),
        cache_num_blocks: Some(1000),
        ..EndpointMetrics::default()
    }
}

pub(super) fn state(name: &str, m: Option<EndpointMetrics>, age: Duration) -> EndpointState {
    EndpointState {
        endpoint: Arc::new(Endpoint {
            id: EndpointId::new(name),
            address: format!("10.0.0.{}:8000", name.len()),
            metrics_url: String::new(),
            engine: "vllm".into(),
            labels: BTreeMap::new(),
        }),
        metrics: match m {
            None => MetricsState::Unknown,
            Some(metrics) => MetricsState::Known {
                sample: Arc::new(MetricsSample { metrics, scraped_at: now() - age, errors: vec![] }),
                last_error: None,
            },
        },
        shared_load: Default::default(),
        shared_sent_since_scrape: 0,
    }
}

pub(super) fn snapshot(endpoints: Vec<EndpointState>) -> Snapshot {
    Snapshot {
        epoch: 1,
        seq: 1,
        endpoints,
        published_at: now(),
        routed_blocks: Vec::new(),
        objectives: Default::default(),
        publish_span: None,
    }
}

fn default_scheduler() -> Scheduler {
    Scheduler::new(SchedulerConfig::build(&EndpointPickerConfig::default_config(), STALE).expect("default config"))
}

/// Schedules `req("m")` among all of `snap` with `local` as this picker's counters.
pub(super) fn run_with(
    s: &Scheduler,
    snap: &Snapshot,
    local: &dyn LocalLoads,
    prefix: &PrefixIndex,
    seed: u64,
) -> Result<Decision, ScheduleError> {
    let all: Vec<usize> = (0..snap.endpoints.len()).collect();
    let columns = Columns::new(snap);
    let view = View { snapshot: snap, columns: &columns, local, prefix, now: now() };
    s.schedule(&view, &all, &req("m"), &mut SmallRng::seed_from_u64(seed))
}

fn run(
    s: &Scheduler,
    snap: &Snapshot,
    local: &[LocalLoad],
    req: &RequestFeatures<'_>,
    prefix: &PrefixIndex,
    seed: u64,
) -> Result<Decision, ScheduleError> {
    let local = local.to_vec();
    let all: Vec<usize> = (0..snap.endpoints.len()).collect();
    let columns = Columns::new(snap);
    let view = View { snapshot: snap, columns: &columns, local: &local, prefix, now: now() };
    s.schedule(&view, &all, req, &mut SmallRng::seed_from_u64(seed))
}

pub(super) fn req(model: &str) -> RequestFeatures<'_> {
    RequestFeatures { target_model: model, ..RequestFeatures::default() }
}

#[test]
fn default_config_is_upstreams() {
    let s = default_scheduler();
    let p = &s.config.profile;
    assert_eq!(p.scorers, vec![(ScorerKind::Queue, 2.0), (ScorerKind::KvCache, 2.0), (ScorerKind::PrefixCache, 3.0)]);
    assert_eq!(p.picker, PickerKind::MaxScore { n: 1 });
    assert!(p.filters.is_empty());
    assert_eq!(s.config.prefix, PrefixParams::default());
}

#[test]
fn least_loaded_fresh_endpoint_wins() {
    let snap = snapshot(vec![
        state("a", Some(metrics(8, 0.7)), Duration::ZERO),
        state("bb", Some(metrics(0, 0.1)), Duration::ZERO),
        state("ccc", Some(metrics(4, 0.5)), Duration::ZERO),
    ]);
    for seed in 0..20 {
        let d = run(&default_scheduler(), &snap, &[], &req("m"), &PrefixIndex::new(), seed).expect("decision");
        assert_eq!(d.endpoints, vec![1]);
        assert!(!d.load_agnostic);
    }
}

/// Upstream trap: a new endpoint without metrics looks idle (queue 0, KV 0) and attracts traffic.
#[test]
fn test_never_scraped_endpoint_is_not_idle() {
    let snap = snapshot(vec![state("new", None, Duration::ZERO), state("busy", Some(metrics(3, 0.5)), Duration::ZERO)]);
    for seed in 0..20 {
        let d = run(&default_scheduler(), &snap, &[], &req("m"), &PrefixIndex::new(), seed).expect("decision");
        assert_eq!(d.endpoints, vec![1], "seed {seed}");
    }
}

/// Upstream trap: metrics from a scrape long ago are used as if fresh.
#[test]
fn test_stale_metrics_score_worse_than_fresh() {
    let snap = snapshot(vec![
        state("stale-idle", Some(metrics(0, 0.0)), Duration::from_secs(30)),
        state("fresh", Some(metrics(2, 0.3)), Duration::from_millis(50)),
    ]);
    let d = run(&default_scheduler(), &snap, &[], &req("m"), &PrefixIndex::new(), 1).expect("decision");
    assert_eq!(d.endpoints, vec![1]);
}

#[test]
fn all_stale_falls_back_to_load_agnostic_choice() {
    let snap = snapshot(vec![
        state("a", Some(metrics(0, 0.0)), Duration::from_secs(30)),
        state("bb", Some(metrics(50, 0.99)), Duration::from_secs(30)),
        state("ccc", None, Duration::ZERO),
    ]);
    let mut counts = [0usize; 3];
    for seed in 0..300 {
        let d = run(&default_scheduler(), &snap, &[], &req("m"), &PrefixIndex::new(), seed).expect("still picks");
        assert!(d.load_agnostic);
        counts[d.endpoints[0]] += 1;
    }
    assert!(counts.iter().all(|&c| c > 60), "roughly uniform: {counts:?}");
}

#[test]
fn prefix_affinity_attracts_the_request() {
    let snap = snapshot(vec![
        state("a", Some(metrics(1, 0.2)), Duration::ZERO),
        state("bb", Some(metrics(1, 0.2)), Duration::ZERO),
    ]);
    let prompt = "You are a helpful assistant. ".repeat(40);
    let r = RequestFeatures { target_model: "m", prefix_input: prompt.as_bytes(), ..RequestFeatures::default() };
    let s = default_scheduler();
    let first = run(&s, &snap, &[], &r, &PrefixIndex::new(), 3).expect("decision");
    assert!(first.prefix_hashes.len() > 10);
    let index = PrefixIndex::new();
    index.insert(&EndpointId::new("bb"), &first.prefix_hashes, 1000);
    for seed in 0..20 {
        assert_eq!(run(&s, &snap, &[], &r, &index, seed).expect("decision").endpoints, vec![1]);
    }
    // A different model never shares blocks.
    let other = RequestFeatures { target_model: "other", ..r.clone() };
    let d = run(&s, &snap, &[], &other, &index, 1).expect("decision");
    assert!(index.match_lengths(&d.prefix_hashes).is_empty());
}

/// A prompt no endpoint is known to cache: every picker (any seed) sends it to the same endpoint
/// when the endpoints tie, and different prompts still spread over the pool.
#[test]
fn a_new_prompt_goes_to_the_same_endpoint_from_every_picker() {
    let snap = snapshot((0..8).map(|i| state(&"x".repeat(i + 1), Some(metrics(1, 0.5)), Duration::ZERO)).collect());
    let s = default_scheduler();
    let chosen = |prompt: &str, seed| {
        let r = RequestFeatures { target_model: "m", prefix_input: prompt.as_bytes(), ..RequestFeatures::default() };
        run(&s, &snap, &[], &r, &PrefixIndex::new(), seed).expect("decision").endpoints[0]
    };
    let mut spread = std::collections::BTreeSet::new();
    for p in 0..24 {
        let prompt = format!("System prompt number {p}. ").repeat(30);
        let first = chosen(&prompt, 0);
        for seed in 1..20 {
            assert_eq!(chosen(&prompt, seed), first, "prompt {p}, seed {seed}");
        }
        spread.insert(first);
    }
    assert!(spread.len() >= 5, "24 prompts over 8 endpoints: {spread:?}");
    // A short prompt (no full block) and a profile without a prefix scorer keep random ties.
    let short: std::collections::BTreeSet<_> = (0..50).map(|seed| chosen("hi", seed)).collect();
    assert!(short.len() > 3);
    let queue_only = scheduler_from(&format!("{HEAD}plugins:\n- type: queue-scorer\n- type: max-score-picker\n"));
    let prompt = "System prompt number 1. ".repeat(30);
    let r = RequestFeatures { target_model: "m", prefix_input: prompt.as_bytes(), ..RequestFeatures::default() };
    let picks: std::collections::BTreeSet<_> = (0..50)
        .map(|seed| run(&queue_only, &snap, &[], &r, &PrefixIndex::new(), seed).expect("d").endpoints[0])
        .collect();
    assert!(picks.len() > 3, "no prefix scorer: random ties");
}

#[test]
fn sheddable_requests_are_shed_when_saturated() {
    let snap = snapshot(vec![
        state("a", Some(metrics(10, 0.95)), Duration::ZERO),
        state("bb", Some(metrics(7, 0.9)), Duration::ZERO),
    ]);
    let s = default_scheduler();
    let shed = RequestFeatures { priority: -1, ..req("m") };
    assert_eq!(run(&s, &snap, &[], &shed, &PrefixIndex::new(), 1), Err(ScheduleError::Saturated));
    assert!(run(&s, &snap, &[], &req("m"), &PrefixIndex::new(), 1).is_ok(), "priority 0 is never shed");
    let calm = snapshot(vec![state("a", Some(metrics(0, 0.1)), Duration::ZERO)]);
    assert!(run(&s, &calm, &[], &shed, &PrefixIndex::new(), 1).is_ok());
}

#[test]
fn decisions_are_deterministic_under_a_seed() {
    let snap = snapshot((0..10).map(|i| state(&"x".repeat(i + 1), Some(metrics(1, 0.5)), Duration::ZERO)).collect());
    let s = default_scheduler();
    let a: Vec<_> =
        (0..50).map(|seed| run(&s, &snap, &[], &req("m"), &PrefixIndex::new(), seed).expect("d").endpoints).collect();
    let b: Vec<_> =
        (0..50).map(|seed| run(&s, &snap, &[], &req("m"), &PrefixIndex::new(), seed).expect("d").endpoints).collect();
    assert_eq!(a, b);
    assert!(a.iter().collect::<std::collections::BTreeSet<_>>().len() > 3, "ties are broken at random");
}

/// Several pickers share one snapshot between two scrapes. Without counting their own sends they
/// all pick the same "best" endpoint; with it the load spreads.
#[test]
fn pickers_sharing_a_snapshot_do_not_pile_up() {
    let snap = snapshot(vec![
        state("a", Some(metrics(0, 0.30)), Duration::ZERO),
        state("bb", Some(metrics(1, 0.30)), Duration::ZERO),
        state("ccc", Some(metrics(1, 0.30)), Duration::ZERO),
        state("dddd", Some(metrics(2, 0.30)), Duration::ZERO),
    ]);
    let s = default_scheduler();
    let columns = Columns::new(&snap);
    let (pickers, per_picker) = (4, 10);
    let mut naive = [0usize; 4];
    let mut counted = [0usize; 4];
    for p in 0..pickers {
        let mut rng = SmallRng::seed_from_u64(p as u64);
        let mut local = vec![LocalLoad::default(); 4];
        for _ in 0..per_picker {
            let all = [0, 1, 2, 3];
            let empty = PrefixIndex::new();
            let view = View { snapshot: &snap, columns: &columns, local: &(), prefix: &empty, now: now() };
            let d = s.schedule(&view, &all, &req("m"), &mut rng).expect("naive");
            naive[d.endpoints[0]] += 1;
            let view = View { local: &local, ..view };
            let d = s.schedule(&view, &all, &req("m"), &mut rng).expect("counted");
            counted[d.endpoints[0]] += 1;
            local[d.endpoints[0]].sent_since_scrape += 1;
        }
    }
    assert_eq!(naive[0], pickers * per_picker, "without local counts everything piles on a: {naive:?}");
    let max = *counted.iter().max().expect("max");
    assert!(max <= 16, "with local counts the 40 requests spread: {counted:?}");
    assert!(counted.iter().all(|&c| c >= 2), "every endpoint takes a share: {counted:?}");
}

pub(super) fn scheduler_from(yaml: &str) -> Scheduler {
    let cfg = EndpointPickerConfig::from_yaml(yaml).expect("valid yaml");
    Scheduler::new(SchedulerConfig::build(&cfg, STALE).expect("valid scheduler"))
}

pub(super) const HEAD: &str = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n";

#[test]
fn lora_affinity_prefers_loaded_adapters() {
    let s = scheduler_from(&format!("{HEAD}plugins:\n- type: lora-affinity-scorer\n- type: max-score-picker\n"));
    let with = |running: &[&str], waiting: &[&str], max: u32| EndpointMetrics {
        running_lora: Some(running.iter().map(|s| s.to_string()).collect()),
        waiting_lora: Some(waiting.iter().map(|s| s.to_string()).collect()),
        max_lora: Some(max),
        ..metrics(0, 0.1)
    };
    let snap = snapshot(vec![
        state("full", Some(with(&["x", "y"], &[], 2)), Duration::ZERO),
        state("free", Some(with(&["x"], &[], 2)), Duration::ZERO),
        state("has-it", Some(with(&["sql"], &[], 2)), Duration::ZERO),
    ]);
    assert_eq!(run(&s, &snap, &[], &req("sql"), &PrefixIndex::new(), 1).expect("d").endpoints, vec![2]);
    let snap2 = snapshot(snap.endpoints[..2].to_vec());
    assert_eq!(
        run(&s, &snap2, &[], &req("sql"), &PrefixIndex::new(), 1).expect("d").endpoints,
        vec![1],
        "free slot beats full"
    );
}

/// Upstream trap: an engine whose page has no LoRA state (SGLang, Triton) scores 0 as if its
/// slots were full, so a mixed pool sends every request to the engines that report LoRA.
#[test]
fn test_an_engine_without_lora_metrics_is_not_a_full_one() {
    let s = scheduler_from(&format!("{HEAD}plugins:\n- type: lora-affinity-scorer\n- type: max-score-picker\n"));
    let vllm = EndpointMetrics {
        running_lora: Some(vec![]),
        waiting_lora: Some(vec![]),
        max_lora: Some(3),
        ..metrics(0, 0.1)
    };
    let snap = snapshot(vec![
        state("vllm", Some(vllm), Duration::ZERO),
        state("sglang", Some(metrics(0, 0.1)), Duration::ZERO),
    ]);
    let mut counts = [0; 2];
    for seed in 0..200 {
        counts[run(&s, &snap, &[], &req("base-model"), &PrefixIndex::new(), seed).expect("d").endpoints[0]] += 1;
    }
    assert!(counts.iter().all(|&c| c > 60), "both engines take base-model requests: {counts:?}");
}

#[test]
fn picker_returns_fallbacks_and_filters_apply() {
    let s = scheduler_from(&format!(
        "{HEAD}plugins:\n- type: queue-scorer\n- type: max-score-picker\n  parameters: {{maxNumOfEndpoints: 2}}\n- type: header-based-testing-filter\nschedulingProfiles:\n- name: p\n  plugins: [{{pluginRef: header-based-testing-filter}}, {{pluginRef: queue-scorer}}, {{pluginRef: max-score-picker}}]\n"
    ));
    let snap = snapshot(vec![
        state("a", Some(metrics(5, 0.1)), Duration::ZERO),
        state("bb", Some(metrics(0, 0.1)), Duration::ZERO),
        state("ccc", Some(metrics(1, 0.1)), Duration::ZERO),
    ]);
    let r = RequestFeatures { test_selection: Some("10.0.0.1:8000, 10.0.0.3"), ..req("m") };
    let d = run(&s, &snap, &[], &r, &PrefixIndex::new(), 1).expect("d");
    assert_eq!(d.endpoints, vec![2, 0], "only a and ccc pass; ccc has the shorter queue");
    assert_eq!(run(&s, &snap, &[], &req("m"), &PrefixIndex::new(), 1), Err(ScheduleError::AllFiltered));
}

#[test]
fn scheduler_config_errors_name_their_key() {
    let cases = [
        (
            format!("{HEAD}plugins:\n- type: max-score-picker\n  parameters: {{maxNumOfEndpoint: 2}}\n"),
            "plugins[0].parameters.maxNumOfEndpoint",
        ),
        (format!("{HEAD}plugins:\n- type: queue-scorer\n  parameters: {{x: 1}}\n"), "plugins[0].parameters.x"),
        (format!("{HEAD}plugins:\n- type: latency-scorer\n"), "plugins[0].type"),
        (
            format!("{HEAD}plugins:\n- type: utilization-detector\n  parameters: {{kvCacheUtilThreshold: 2}}\n"),
            "plugins[0].parameters.kvCacheUtilThreshold",
        ),
        (
            format!("{HEAD}plugins:\n- type: approx-prefix-cache-producer\n  parameters: {{blockSize: 64}}\n"),
            "plugins[0].parameters.blockSize",
        ),
        (
            format!("{HEAD}plugins:\n- type: prefix-cache-scorer\n  parameters: {{maxIndexEntries: 0}}\n"),
            "plugins[0].parameters.maxIndexEntries",
        ),
        (
            format!(
                "{HEAD}plugins:\n- type: queue-scorer\n- type: approx-prefix-cache-producer\n  parameters: {{maxIndexEntries: -5}}\n"
            ),
            "plugins[1].parameters.maxIndexEntries",
        ),
        (
            format!("{HEAD}plugins:\n- type: prefix-cache-scorer\n  parameters: {{maxIndexEntry: 10}}\n"),
            "plugins[0].parameters.maxIndexEntry",
        ),
        (
            format!(
                "{HEAD}plugins:\n- type: queue-scorer\nschedulingProfiles:\n- {{name: a, plugins: []}}\n- {{name: b, plugins: []}}\n"
            ),
            "schedulingProfiles",
        ),
    ];
    for (yaml, want) in cases {
        let cfg = EndpointPickerConfig::from_yaml(&yaml).expect("document is valid");
        match SchedulerConfig::build(&cfg, STALE) {
            Err(crate::config::ConfigError::Invalid { path, .. }) => assert_eq!(path, want, "{yaml}"),
            other => panic!("expected an error for {yaml}: {other:?}"),
        }
    }
}

/// Upstream ignores the parameters of prefix-cache-scorer although its docs show them.
#[test]
fn test_prefix_cache_scorer_parameters_are_honoured() {
    let s = scheduler_from(&format!(
        "{HEAD}plugins:\n- type: prefix-cache-scorer\n  parameters: {{blockSizeTokens: 32, lruCapacityPerServer: 100, autoTune: false}}\n"
    ));
    assert_eq!(s.config.prefix.block_size_tokens, 32);
    assert_eq!(s.config.prefix.lru_capacity_per_server, 100);
    let snap = snapshot(vec![state("a", Some(metrics(0, 0.0)), Duration::ZERO)]);
    assert_eq!(s.prefix_capacity(&snap, 0), 100, "not the endpoint's 1000 blocks: autoTune is off");
}

/// `maxIndexEntries` (Switchyard's) caps the whole prefix index; the default is documented.
#[test]
fn max_index_entries_is_parsed_defaulted_and_documented() {
    let default = crate::scheduling::prefix::DEFAULT_MAX_INDEX_ENTRIES;
    assert_eq!(default_scheduler().config.prefix.max_index_entries, default);
    let s = scheduler_from(&format!(
        "{HEAD}plugins:\n- type: prefix-cache-scorer\n  parameters: {{maxIndexEntries: 250000, lruCapacityPerServer: 100}}\n"
    ));
    assert_eq!(s.config.prefix.max_index_entries, 250_000);
    assert_eq!(s.config.prefix.lru_capacity_per_server, 100, "upstream's parameters keep their meaning");
    let docs = include_str!("../../docs/config.md");
    assert!(docs.contains("`maxIndexEntries`"), "docs/config.md documents maxIndexEntries");
    let grouped = default
        .to_string()
        .as_bytes()
        .rchunks(3)
        .rev()
        .map(|c| String::from_utf8_lossy(c))
        .collect::<Vec<_>>()
        .join(",");
    assert!(docs.contains(&grouped), "docs/config.md states the default {grouped}");
}

#[test]
fn durations_parse_like_go() {
    assert_eq!(config::parse_duration("200ms"), Some(Duration::from_millis(200)));
    assert_eq!(config::parse_duration("1m30s"), Some(Duration::from_secs(90)));
    assert_eq!(config::parse_duration("1.5s"), Some(Duration::from_millis(1500)));
    assert_eq!(config::parse_duration("5"), None);
    assert_eq!(config::parse_duration("x"), None);
}

#[test]
fn an_explanation_names_each_scorer_and_adds_up_to_the_decision() {
    let s = default_scheduler();
    let snap = snapshot(vec![
        state("busy", Some(metrics(9, 0.9)), Duration::ZERO),
        state("idle", Some(metrics(0, 0.1)), Duration::ZERO),
        state("mid", Some(metrics(4, 0.5)), Duration::ZERO),
    ]);
    let all: Vec<usize> = (0..3).collect();
    let prefix = PrefixIndex::new();
    let columns = Columns::new(&snap);
    let view = View { snapshot: &snap, columns: &columns, local: &(), prefix: &prefix, now: now() };
    let (decision, explanation) =
        s.schedule_explained(&view, &all, &req("m"), &mut SmallRng::seed_from_u64(1), true).expect("scheduled");
    let e = explanation.expect("explained");
    assert_eq!(decision.endpoints, [1], "idle wins");
    assert_eq!(e.considered, 3);
    assert_eq!(e.runner_up, Some(2), "mid is second");
    let names: Vec<&str> = e.scores.iter().map(|(n, _, _)| *n).collect();
    assert_eq!(names, ["queue-scorer", "kv-cache-utilization-scorer", "prefix-cache-scorer"]);
    let (primary, runner_up): (f64, f64) =
        e.scores.iter().fold((0.0, 0.0), |(p, r), (_, a, b)| (p + a, r + b.expect("runner-up scored")));
    assert!(primary > runner_up, "{primary} vs {runner_up}");
    // queue 2 × 1 (least queued) + kv 2 × (1 − 0.1) + prefix 3 × 0 for the idle one.
    assert!((primary - 3.8).abs() < 1e-9, "{primary}");
    // Without `explain`, the same decision and no explanation.
    let (plain, none) =
        s.schedule_explained(&view, &all, &req("m"), &mut SmallRng::seed_from_u64(1), false).expect("scheduled");
    assert_eq!((plain.endpoints, none), (decision.endpoints, None));
}

/// Regression: a fresh endpoint whose page lacked the queue and KV metrics (an engine version
/// the mapping does not match) read as queue 0 and KV 0, the best scores, and attracted traffic.
#[test]
fn test_a_metric_missing_from_the_page_is_unknown_not_idle() {
    let missing = EndpointMetrics { queued: None, kv_usage: None, ..metrics(0, 0.0) };
    let snap = snapshot(vec![
        state("lacks-metrics", Some(missing), Duration::ZERO),
        state("busy", Some(metrics(3, 0.5)), Duration::ZERO),
    ]);
    for seed in 0..20 {
        let d = run(&default_scheduler(), &snap, &[], &req("m"), &PrefixIndex::new(), seed).expect("decision");
        assert_eq!(d.endpoints, vec![1], "seed {seed}: the endpoint with known load wins");
    }
}

#[test]
fn every_plugin_that_runs_is_timed_once_per_decision() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let s =
        default_scheduler().with_plugin_timer(std::sync::Arc::new(move |i, _| record.lock().expect("lock").push(i)));
    assert_eq!(
        s.plugins(),
        [
            ("Scorer", "queue-scorer"),
            ("Scorer", "kv-cache-utilization-scorer"),
            ("Scorer", "prefix-cache-scorer"),
            ("Picker", "max-score-picker")
        ]
    );
    let snap = snapshot(vec![state("a", Some(metrics(1, 0.2)), Duration::ZERO)]);
    run(&s, &snap, &[], &req("m"), &PrefixIndex::new(), 1).expect("decision");
    assert_eq!(*seen.lock().expect("lock"), [0, 1, 2, 3]);
}
