//! Seeded short fuzz runs, one test per target: every corpus input, then a fixed number of
//! generated and mutated ones, all derived from a fixed seed (a failure names the execution that
//! found it and the input). The engine, the targets and their invariants live in `fuzz/`; the
//! long run is `cargo bench --bench fuzz` (docs/benchmarks.md, "Fuzzing").
//!
//! Stable-toolchain fuzzing, without coverage feedback: see `fuzz/harness.rs` for why and what
//! replaces it.

mod files;
mod harness;
mod http;
mod openai;
mod regressions;
mod targets;
mod text;
mod wire;

use harness::{Fuzzer, Target};

/// The seed of the short runs (any value works; a fixed one keeps the suite deterministic).
const SEED: u64 = 0x5157_1C4A_7D00_F022;

/// Runs `target` on its corpus and then `iterations` more inputs.
fn run(target: &Target, iterations: u64) {
    let mut fuzzer = Fuzzer::new(target, SEED).expect("corpus readable");
    assert!(fuzzer.seed_count() > 0, "{}: no corpus in {}", target.name, harness::corpus_dir(target).display());
    let total = fuzzer.seed_count() as u64 + iterations;
    while fuzzer.executions < total {
        if let Err(failure) = fuzzer.step() {
            panic!("{failure}\n(reproduce: seed {SEED:#x}; the long run prints and saves such inputs)");
        }
    }
}

#[test]
fn every_target_is_listed_and_has_a_corpus() {
    let names: Vec<&str> = targets::ALL.iter().map(|t| t.name).collect();
    let mut dirs: Vec<String> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz-corpus"))
        .expect("corpus root")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(dirs, sorted, "one corpus directory per target");
}

#[test]
fn fuzz_exposition() {
    run(&text::EXPOSITION, 1500);
}

#[test]
fn fuzz_normalize() {
    run(&text::NORMALIZE, 1000);
}

#[test]
fn fuzz_spec() {
    run(&text::SPEC, 20_000);
}

#[test]
fn fuzz_request() {
    run(&openai::REQUEST, 5000);
}

#[test]
fn fuzz_response() {
    run(&openai::RESPONSE, 5000);
}

#[test]
fn fuzz_http_response() {
    run(&http::RESPONSE, 3000);
}

#[test]
fn fuzz_config() {
    run(&files::CONFIG, 1500);
}

#[test]
fn fuzz_endpoints() {
    run(&files::ENDPOINTS, 2000);
}

#[test]
fn fuzz_wire_snapshot() {
    run(&wire::SNAPSHOT, 2000);
}

#[test]
fn fuzz_wire_apply() {
    run(&wire::APPLY, 2000);
}

#[test]
fn fuzz_wire_reports() {
    run(&wire::REPORTS, 2000);
}
