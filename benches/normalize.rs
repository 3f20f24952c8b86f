//! Normalization throughput on a realistic vLLM V1 page, side by side with prometheus-parse.
//!
//! `cargo bench --bench normalize` — single-threaded, so the figures are per core.
#![allow(clippy::disallowed_types, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use switchyard::metrics::{EngineRegistry, exposition, normalize};

const PAGE: &str = include_str!("../tests/fixtures/vllm_v1.txt");

fn measure(name: &str, bytes: usize, mut f: impl FnMut()) -> f64 {
    // Warm up, then run for a fixed time.
    for _ in 0..50 {
        f();
    }
    let budget = Duration::from_secs(2);
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        for _ in 0..20 {
            f();
        }
        n += 20;
    }
    let secs = start.elapsed().as_secs_f64();
    let per_s = n as f64 / secs;
    println!("{name:<58} {per_s:>10.0} pages/s {:>9.1} MB/s {:>8.2} us/page", per_s * bytes as f64 / 1e6, 1e6 / per_s);
    per_s
}

fn prometheus_parse(page: &str) -> usize {
    let scrape = prometheus_parse::Scrape::parse(page.lines().map(|l| Ok(l.to_owned()))).expect("parse");
    scrape.samples.len()
}

fn main() {
    let registry = EngineRegistry::builtin();
    let mapping = registry.get("vllm").expect("vllm").clone();
    // prometheus-parse drops every name with ':' (all of vLLM's); a copy with ':' replaced makes it
    // parse the whole page, which is the fair baseline.
    let mangled = PAGE.replace("vllm:", "vllm_");
    let oracle_samples = prometheus_parse(&mangled);
    let (ours_all, _) = exposition::parse_all(PAGE);
    println!(
        "page: tests/fixtures/vllm_v1.txt, {} bytes, {} lines, {} samples (prometheus-parse on the colon-free copy: {}; on the original: {})",
        PAGE.len(),
        PAGE.lines().count(),
        ours_all.len(),
        oracle_samples,
        prometheus_parse(PAGE)
    );
    let ours = measure("switchyard normalize (vllm mapping, selective scan)", PAGE.len(), || {
        black_box(normalize(black_box(PAGE), &mapping));
    });
    measure("switchyard exposition::parse_all (every sample)", PAGE.len(), || {
        black_box(exposition::parse_all(black_box(PAGE)));
    });
    let baseline = measure("prometheus-parse 0.2.5, whole page (colon-free copy)", mangled.len(), || {
        black_box(prometheus_parse(black_box(&mangled)));
    });
    measure("prometheus-parse 0.2.5, original page (drops vllm:*)", PAGE.len(), || {
        black_box(prometheus_parse(black_box(PAGE)));
    });
    println!("speedup of normalize over prometheus-parse (whole page): {:.1}x", ours / baseline);
}
