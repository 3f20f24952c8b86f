//! Scheduling decision time with the default config at 10 to 10,000 endpoints, for a 1 KB and a
//! 200 KB chat prompt (one thread), reading the picker's own view (snapshot columns and counters)
//! as its ext-proc streams do; the time to build that view from a snapshot; then picks per second
//! with 1, 2 and 8 threads sharing one picker's prefix index. `cargo bench --bench schedule`
//! (`-- --quick`: fewer iterations).
#![allow(clippy::disallowed_types, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rand::SeedableRng;
use rand::rngs::SmallRng;
use switchyard::config::EndpointPickerConfig;
use switchyard::model::Snapshot;
use switchyard::picker::request::{ApiKind, parse_body};
use switchyard::picker::view::{PickerView, ViewBuilder};
use switchyard::scheduling::{PrefixIndex, RequestFeatures, Scheduler, SchedulerConfig, View};

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

/// One pick as the picker's ext-proc stream makes it: parse, decide, record the prefix blocks.
fn pick(scheduler: &Scheduler, view: &View<'_>, all: &[usize], body: &[u8], rng: &mut SmallRng) {
    let parsed = parse_body(black_box(body), ApiKind::ChatCompletions).unwrap();
    let req = RequestFeatures { target_model: &parsed.model, prefix_input: &parsed.prefix_input, ..Default::default() };
    let d = scheduler.schedule(view, all, &req, rng).unwrap();
    let primary = d.endpoints[0];
    let id = &view.snapshot.endpoints[primary].endpoint.id;
    view.prefix.insert(id, &d.prefix_hashes, scheduler.prefix_capacity(view.snapshot, primary));
}

/// What a picker's stream reads: its view's snapshot, columns and counters.
fn view<'a>(picker: &'a PickerView, prefix: &'a PrefixIndex, now: SystemTime) -> View<'a> {
    View { snapshot: &picker.snapshot, columns: &picker.columns, local: picker, prefix, now }
}

fn picker_view(snap: Arc<Snapshot>) -> PickerView {
    ViewBuilder::default().next(&PickerView::empty(), snap).unwrap()
}

/// A prefix index warmed with 64 prompts routed across the pool.
fn warm_index(scheduler: &Scheduler, picker: &PickerView, size: usize, now: SystemTime) -> PrefixIndex {
    let prefix = PrefixIndex::new();
    let all: Vec<usize> = (0..picker.snapshot.endpoints.len()).collect();
    let mut rng = SmallRng::seed_from_u64(1);
    for v in 0..64 {
        let view = view(picker, &prefix, now);
        pick(scheduler, &view, &all, &chat_body(size, v), &mut rng);
    }
    prefix
}

fn single_thread(scheduler: &Scheduler, now: SystemTime, quick: bool) {
    println!(
        "{:>9} {:>7} | {:>26} | {:>26} | {:>14}",
        "endpoints", "prompt", "schedule() p50 / p99 (us)", "parse+schedule p50 / p99 (us)", "view build (ms)"
    );
    for n in [10, 100, 1000, 10_000] {
        let snap = Arc::new(snapshot(n));
        // The picker's work per snapshot: counters and columns (best of 5).
        let build = (0..5)
            .map(|_| {
                let t = Instant::now();
                black_box(picker_view(snap.clone()));
                t.elapsed().as_secs_f64() * 1e3
            })
            .fold(f64::INFINITY, f64::min);
        let picker = picker_view(snap.clone());
        let all: Vec<usize> = (0..n).collect();
        for size in [1024, 200 * 1024] {
            let prefix = warm_index(scheduler, &picker, size, now);
            let mut rng = SmallRng::seed_from_u64(1);
            let bodies: Vec<Vec<u8>> = (0..32).map(|v| chat_body(size, 1000 + v)).collect();
            let mut iters = if size > 10_000 { 3_000 } else { 20_000 };
            if n >= 10_000 {
                iters /= 5;
            }
            if quick {
                iters /= 10;
            }
            let (mut sched, mut full) = (Vec::with_capacity(iters), Vec::with_capacity(iters));
            for i in 0..iters {
                let body = &bodies[i % bodies.len()];
                let t0 = Instant::now();
                let parsed = parse_body(black_box(body), ApiKind::ChatCompletions).unwrap();
                let t1 = Instant::now();
                let view = view(&picker, &prefix, now);
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
            for v in [&mut sched, &mut full] {
                v.sort_by(f64::total_cmp);
            }
            println!(
                "{n:>9} {:>6}K | {:>12.1} / {:>11.1} | {:>12.1} / {:>11.1} | {:>14.2}",
                size / 1024,
                pct(&sched, 50.0),
                pct(&sched, 99.0),
                pct(&full, 50.0),
                pct(&full, 99.0),
                build
            );
        }
    }
}

/// Picks/s with `threads` threads sharing one index (each pick: parse, schedule, insert), with
/// the shared index as the picker uses it, and with one global lock held around each decision
/// and insert (the pick path before the sharded index).
fn contention(scheduler: &Scheduler, now: SystemTime, quick: bool) {
    println!();
    println!(
        "{:>9} {:>7} | {:>20} | {:>20}",
        "endpoints", "threads", "shared: picks/s, p99", "global lock: picks/s, p99"
    );
    let size = 1024;
    for n in [1000, 10_000] {
        let picker = picker_view(Arc::new(snapshot(n)));
        let all: Vec<usize> = (0..n).collect();
        let per_thread = if quick { 300 } else { 3_000 } / if n >= 10_000 { 5 } else { 1 };
        for threads in [1, 2, 8] {
            let mut row = Vec::new();
            for global in [false, true] {
                let prefix = warm_index(scheduler, &picker, size, now);
                let lock = Mutex::new(());
                let started = Instant::now();
                let mut lat: Vec<f64> = std::thread::scope(|scope| {
                    let handles: Vec<_> = (0..threads)
                        .map(|t| {
                            let (prefix, picker, all, lock) = (&prefix, &picker, &all, &lock);
                            scope.spawn(move || {
                                let mut rng = SmallRng::seed_from_u64(t as u64);
                                let bodies: Vec<Vec<u8>> = (0..32).map(|v| chat_body(size, t * 100 + v)).collect();
                                let view = view(picker, prefix, now);
                                let mut lat = Vec::with_capacity(per_thread);
                                for i in 0..per_thread {
                                    let t0 = Instant::now();
                                    let guard = global.then(|| lock.lock().unwrap());
                                    pick(scheduler, &view, all, &bodies[i % bodies.len()], &mut rng);
                                    drop(guard);
                                    lat.push(t0.elapsed().as_secs_f64() * 1e6);
                                }
                                lat
                            })
                        })
                        .collect();
                    handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
                });
                let rate = lat.len() as f64 / started.elapsed().as_secs_f64();
                lat.sort_by(f64::total_cmp);
                row.push(format!("{rate:>9.0} {:>8.1}us", pct(&lat, 99.0)));
            }
            println!("{n:>9} {threads:>7} | {:>20} | {:>20}", row[0], row[1]);
        }
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let now = SystemTime::now();
    let scheduler = Scheduler::new(
        SchedulerConfig::build(&EndpointPickerConfig::default_config(), Duration::from_secs(2)).unwrap(),
    );
    single_thread(&scheduler, now, quick);
    contention(&scheduler, now, quick);
}
