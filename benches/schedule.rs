//! Scheduling decision time with the default config at 10, 100 and 1,000 endpoints, for a 1 KB and
//! a 200 KB chat prompt. `cargo bench --bench schedule` — one thread.
#![allow(clippy::disallowed_types, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use rand::SeedableRng;
use rand::rngs::SmallRng;
use switchyard::config::EndpointPickerConfig;
use switchyard::model::Snapshot;
use switchyard::picker::request::{ApiKind, parse_body};
use switchyard::scheduling::{LocalLoad, PrefixIndex, RequestFeatures, Scheduler, SchedulerConfig, View};

fn snapshot(n: usize) -> Snapshot {
    switchyard::tools::loadgen::synthetic_snapshot(n)
}

fn chat_body(bytes: usize, variant: usize) -> Vec<u8> {
    let system = "You are a helpful assistant. Answer precisely. ".repeat(bytes / 48 + 1);
    let system = &system[..bytes.saturating_sub(120).min(system.len())];
    serde_json::json!({"model": "meta-llama/Llama-3.1-8B-Instruct", "messages": [
        {"role": "system", "content": system}, {"role": "user", "content": format!("question {variant}")}]})
    .to_string()
    .into_bytes()
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((p / 100.0 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn main() {
    let now = SystemTime::now();
    let scheduler = Scheduler::new(
        SchedulerConfig::build(&EndpointPickerConfig::default_config(), Duration::from_secs(2)).unwrap(),
    );
    println!(
        "{:>9} {:>7} | {:>26} | {:>26}",
        "endpoints", "prompt", "schedule() p50 / p99 (us)", "parse+schedule p50 / p99 (us)"
    );
    for n in [10, 100, 1000] {
        let snap = snapshot(n);
        let local = vec![LocalLoad::default(); n];
        let all: Vec<usize> = (0..n).collect();
        for size in [1024, 200 * 1024] {
            // A warm prefix index: 64 earlier prompts routed across the pool.
            let mut prefix = PrefixIndex::new();
            let mut rng = SmallRng::seed_from_u64(1);
            for v in 0..64 {
                let body = chat_body(size, v);
                let parsed = parse_body(&body, ApiKind::ChatCompletions).unwrap();
                let view = View { snapshot: &snap, local: &local, prefix: &prefix, now };
                let req = RequestFeatures {
                    target_model: &parsed.model,
                    prefix_input: &parsed.prefix_input,
                    ..Default::default()
                };
                let d = scheduler.schedule(&view, &all, &req, &mut rng).unwrap();
                let id = snap.endpoints[d.endpoints[0]].endpoint.id.clone();
                prefix.insert(&id, &d.prefix_hashes, 7000);
            }
            let bodies: Vec<Vec<u8>> = (0..32).map(|v| chat_body(size, 1000 + v)).collect();
            let iters = if size > 10_000 { 3_000 } else { 20_000 };
            let (mut sched, mut full) = (Vec::with_capacity(iters), Vec::with_capacity(iters));
            for i in 0..iters {
                let body = &bodies[i % bodies.len()];
                let t0 = Instant::now();
                let parsed = parse_body(black_box(body), ApiKind::ChatCompletions).unwrap();
                let t1 = Instant::now();
                let view = View { snapshot: &snap, local: &local, prefix: &prefix, now };
                let req = RequestFeatures {
                    target_model: &parsed.model,
                    prefix_input: &parsed.prefix_input,
                    ..Default::default()
                };
                let d = scheduler.schedule(&view, &all, &req, &mut rng).unwrap();
                let t2 = Instant::now();
                black_box(d);
                sched.push((t2 - t1).as_secs_f64() * 1e6);
                full.push((t2 - t0).as_secs_f64() * 1e6);
            }
            sched.sort_by(f64::total_cmp);
            full.sort_by(f64::total_cmp);
            println!(
                "{n:>9} {:>6}K | {:>12.1} / {:>11.1} | {:>12.1} / {:>11.1}",
                size / 1024,
                pct(&sched, 50.0),
                pct(&sched, 99.0),
                pct(&full, 50.0),
                pct(&full, 99.0)
            );
        }
    }
}
