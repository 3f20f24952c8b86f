//! Decisions on a recorded sequence: a seeded mix of snapshots (fresh, stale, never scraped,
//! metrics missing from the page, LoRA state or none), local and shared load, prompts that share
//! prefixes, subset hints, priorities and every plugin type, scheduled with the prefix index
//! learning as the picker's does. The decisions are kept in
//! `tests/fixtures/scheduling-decisions.txt`, recorded from the scheduler before the per-snapshot
//! columns (issue #14): every optimisation must reproduce them exactly. Re-record only for an
//! intended change of behaviour: `SWITCHYARD_RECORD_DECISIONS=1 cargo test recorded_decisions`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::config::EndpointPickerConfig;
use crate::model::{Endpoint, EndpointId, EndpointMetrics, EndpointState, MetricsSample, MetricsState};

const HEAD: &str = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n";

/// Profiles covering every filter, scorer and picker (plugins are listed, and so in the profile).
fn profiles() -> Vec<EndpointPickerConfig> {
    let plugins =
        |list: &str| EndpointPickerConfig::from_yaml(&format!("{HEAD}plugins:\n{list}")).expect("valid profile");
    vec![
        EndpointPickerConfig::default_config(),
        plugins(
            "- type: queue-scorer\n- type: kv-cache-utilization-scorer\n- type: prefix-cache-scorer\n\
             - type: lora-affinity-scorer\n- type: max-score-picker\n",
        ),
        plugins(
            "- type: utilization-detector\n  parameters: {queueDepthThreshold: 4, kvCacheUtilThreshold: 0.7, \
             metricsStalenessThreshold: 250ms, headroom: 0.2}\n\
             - type: running-requests-size-scorer\n- type: token-load-scorer\n  parameters: {queueThresholdTokens: 900}\n\
             - type: max-score-picker\n  parameters: {maxNumOfEndpoints: 3}\n",
        ),
        plugins(
            "- type: concurrency-detector\n  parameters: {maxConcurrency: 4, headroom: 0.5}\n\
             - type: prefix-cache-affinity-filter\n  parameters: {affinityThreshold: 0.5, explorationProbability: 0.1}\n\
             - type: prefix-cache-scorer\n- type: queue-scorer\n- type: weighted-random-picker\n  parameters: {maxNumOfEndpoints: 2}\n",
        ),
        plugins(
            "- type: concurrency-detector\n  parameters: {concurrencyMode: tokens, maxTokenConcurrency: 3000}\n\
             - type: kv-cache-utilization-scorer\n- type: random-picker\n  parameters: {maxNumOfEndpoints: 2}\n",
        ),
        plugins("- type: header-based-testing-filter\n- type: queue-scorer\n- type: max-score-picker\n"),
        plugins(
            "- type: approx-prefix-cache-producer\n  parameters: {autoTune: false, blockSizeTokens: 4, \
             maxPrefixBlocksToMatch: 12, lruCapacityPerServer: 40}\n\
             - type: prefix-cache-scorer\n- type: lora-affinity-scorer\n- type: running-requests-size-scorer\n\
             - type: max-score-picker\n",
        ),
    ]
}

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000)
}

const ADAPTERS: [&str; 5] = ["sql", "chat", "code", "math", "law"];

fn endpoint(rng: &mut SmallRng, i: usize) -> EndpointState {
    let maybe = |rng: &mut SmallRng, p: f64| rng.random_bool(p);
    let lora = maybe(rng, 0.5);
    let pick_adapters = |rng: &mut SmallRng| -> Vec<String> {
        ADAPTERS.iter().filter(|_| rng.random_bool(0.3)).map(|a| a.to_string()).collect()
    };
    let metrics = EndpointMetrics {
        queued: maybe(rng, 0.9).then(|| rng.random_range(0..12)),
        running: maybe(rng, 0.9).then(|| rng.random_range(0..8)),
        // Coarse values so that ties happen.
        kv_usage: maybe(rng, 0.9).then(|| f64::from(rng.random_range(0..20u32)) * 0.05),
        running_lora: lora.then(|| pick_adapters(rng)),
        waiting_lora: lora.then(|| pick_adapters(rng)),
        max_lora: lora.then(|| rng.random_range(1..4)),
        cache_block_size: maybe(rng, 0.7).then_some(8),
        cache_num_blocks: maybe(rng, 0.7).then(|| rng.random_range(20..200)),
    };
    let ages = [0, 0, 0, 100, 150, 240, 300, 3_000];
    let age = Duration::from_millis(ages[rng.random_range(0..ages.len())]);
    EndpointState {
        endpoint: Arc::new(Endpoint {
            id: EndpointId::new(format!("pod-{i}")),
            address: format!("10.0.{}.{}:8000", i / 4, i % 4),
            metrics_url: String::new(),
            engine: "vllm".into(),
            labels: BTreeMap::new(),
        }),
        metrics: if maybe(rng, 0.1) {
            MetricsState::Unknown
        } else {
            MetricsState::Known {
                sample: Arc::new(MetricsSample { metrics, scraped_at: now() - age, errors: vec![] }),
                last_error: None,
            }
        },
        shared_load: Load { requests: rng.random_range(-1..4), tokens: rng.random_range(-100..2_000) },
        shared_sent_since_scrape: rng.random_range(0..3),
    }
}

fn local(rng: &mut SmallRng) -> LocalLoad {
    LocalLoad {
        sent_since_scrape: rng.random_range(0..4),
        inflight: Load { requests: rng.random_range(-1..4), tokens: rng.random_range(-200..1_500) },
    }
}

fn prompt(rng: &mut SmallRng) -> String {
    let group = rng.random_range(0..6);
    let shared = format!("system prompt {group} ").repeat(rng.random_range(1..40));
    format!("{shared} question {}", rng.random_range(0..5))
}

/// One line per decision: the profile, snapshot and request numbers, then the outcome.
fn decisions() -> String {
    let mut out = String::new();
    for (p, cfg) in profiles().iter().enumerate() {
        let scheduler = Scheduler::new(SchedulerConfig::build(cfg, Duration::from_secs(2)).expect("builds"));
        let mut rng = SmallRng::seed_from_u64(p as u64);
        let prefix = PrefixIndex::new();
        for s in 0..40 {
            let n = rng.random_range(1..=24);
            let snapshot = Snapshot {
                epoch: 1,
                seq: s,
                endpoints: (0..n).map(|i| endpoint(&mut rng, i)).collect(),
                published_at: now(),
                routed_blocks: Vec::new(),
                objectives: Default::default(),
                publish_span: None,
            };
            let columns = Columns::new(&snapshot);
            let loads: Vec<LocalLoad> =
                if rng.random_bool(0.2) { Vec::new() } else { (0..n).map(|_| local(&mut rng)).collect() };
            for r in 0..10 {
                let text = prompt(&mut rng);
                let model = ADAPTERS[rng.random_range(0..ADAPTERS.len())];
                let selection = (0..n).filter(|_| rng.random_bool(0.3)).map(|i| format!("10.0.{}.{}", i / 4, i % 4));
                let selection: Vec<String> = selection.collect();
                let selection = selection.join(",");
                let req = RequestFeatures {
                    target_model: model,
                    priority: [0, 0, -1, 1][rng.random_range(0..4)],
                    prefix_input: text.as_bytes(),
                    cache_salt: if rng.random_bool(0.1) { "salt" } else { "" },
                    estimated_tokens: rng.random_range(1..400),
                    test_selection: rng.random_bool(0.8).then_some(selection.as_str()),
                };
                let candidates: Vec<usize> = if rng.random_bool(0.7) {
                    (0..n).collect()
                } else {
                    (0..n).filter(|_| rng.random_bool(0.6)).collect()
                };
                let explain = rng.random_bool(0.2);
                let view = View { snapshot: &snapshot, columns: &columns, local: &loads, prefix: &prefix, now: now() };
                let mut seeded = SmallRng::seed_from_u64(rng.random());
                let _ = write!(out, "{p} {s} {r} ");
                match scheduler.schedule_explained(&view, &candidates, &req, &mut seeded, explain) {
                    Err(e) => {
                        let _ = writeln!(out, "error {e:?}");
                    }
                    Ok((d, e)) => {
                        let primary = d.endpoints[0];
                        let id = &snapshot.endpoints[primary].endpoint.id;
                        prefix.insert(id, &d.prefix_hashes, scheduler.prefix_capacity(&snapshot, primary));
                        let _ = write!(
                            out,
                            "picked {:?} blocks {} of {} size {} agnostic {}",
                            d.endpoints,
                            d.prefix_matched_blocks,
                            d.prefix_hashes.len(),
                            d.block_size_tokens,
                            d.load_agnostic
                        );
                        if let Some(e) = e {
                            let _ = write!(out, " considered {} runner-up {:?}", e.considered, e.runner_up);
                            for (name, primary, runner_up) in e.scores {
                                let _ = write!(out, " {name} {primary:.9} {:.9}", runner_up.unwrap_or(-1.0));
                            }
                        }
                        let _ = writeln!(out);
                    }
                }
            }
        }
    }
    out
}

#[test]
fn recorded_decisions_are_reproduced() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/scheduling-decisions.txt");
    let now = decisions();
    if std::env::var_os("SWITCHYARD_RECORD_DECISIONS").is_some() {
        std::fs::write(path, &now).expect("record");
        return;
    }
    let recorded = std::fs::read_to_string(path).expect("recorded decisions");
    assert!(recorded.lines().count() >= 2_000, "the recording covers the sequence");
    for (i, (want, got)) in recorded.lines().zip(now.lines()).enumerate() {
        assert_eq!(got, want, "decision {i} differs from the recording");
    }
    assert_eq!(now.lines().count(), recorded.lines().count());
}
