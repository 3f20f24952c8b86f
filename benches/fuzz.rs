//! The long fuzz run: every target of `tests/it/fuzz/` (the same engine, targets and invariants
//! as the seeded short runs in the test suite) for a time budget each, in a release build.
//!
//! ```sh
//! cargo bench --bench fuzz -- [--seconds N] [--seed S] [--out DIR] [TARGET...]
//! ```
//!
//! `FUZZ_SECONDS` sets the budget too (default 10 s per target); the seed defaults to a fixed
//! value so two runs explore the same inputs. Prints, per target, the executions and the distinct
//! failures (panics or broken invariants); each failing input is written to `DIR/<target>/`
//! (default `target/fuzz-failures`) and the run exits with status 1. Release builds do not check
//! integer overflow: add `--config 'profile.bench.package.switchyard.overflow-checks=true'` (and
//! `...debug-assertions=true`) to catch what debug builds would (docs/benchmarks.md).
#![allow(clippy::disallowed_types, clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/it/fuzz/files.rs"]
mod files;
#[path = "../tests/it/fuzz/harness.rs"]
mod harness;
#[path = "../tests/it/fuzz/http.rs"]
mod http;
#[path = "../tests/it/fuzz/openai.rs"]
mod openai;
#[path = "../tests/it/fuzz/targets.rs"]
mod targets;
#[path = "../tests/it/fuzz/text.rs"]
mod text;
#[path = "../tests/it/fuzz/wire.rs"]
mod wire;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use harness::{Failure, Fuzzer};

struct Args {
    seconds: f64,
    seed: u64,
    out: PathBuf,
    only: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        seconds: std::env::var("FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(10.0),
        seed: 0x5157_1C4A_7D00_F022,
        out: PathBuf::from("target/fuzz-failures"),
        only: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            // cargo bench passes this to every bench binary.
            "--bench" => {}
            "--seconds" => args.seconds = value("--seconds")?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--seed" => args.seed = value("--seed")?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--out" => args.out = PathBuf::from(value("--out")?),
            name if !name.starts_with('-') => args.only.push(name.to_string()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let known: Vec<&str> = targets::ALL.iter().map(|t| t.name).collect();
    if let Some(bad) = args.only.iter().find(|n| !known.contains(&n.as_str())) {
        return Err(format!("unknown target {bad} (known: {})", known.join(", ")));
    }
    Ok(args)
}

/// Failures that differ only in numbers count as one.
fn kind(f: &Failure) -> String {
    let first = f.message.lines().next().unwrap_or_default();
    first.chars().filter(|c| !c.is_ascii_digit()).take(100).collect()
}

fn save(out: &std::path::Path, f: &Failure) -> std::io::Result<PathBuf> {
    let dir = out.join(f.target);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{:016x}.bin", xxhash_rust::xxh64::xxh64(&f.input, 0)));
    std::fs::write(&path, &f.input)?;
    Ok(path)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    // Panics are failures the run reports; the default hook would print each one.
    std::panic::set_hook(Box::new(|_| {}));
    println!("seed {:#x}, {} s per target, release build", args.seed, args.seconds);
    println!(
        "{:<14} {:>7} {:>12} {:>10} {:>6} {:>9}",
        "target", "seconds", "executions", "execs/s", "seeds", "failures"
    );
    let mut failed = false;
    for target in targets::ALL.iter().filter(|t| args.only.is_empty() || args.only.iter().any(|n| n == t.name)) {
        let mut fuzzer = Fuzzer::new(target, args.seed).expect("corpus readable");
        let budget = Duration::from_secs_f64(args.seconds);
        let start = Instant::now();
        let mut kinds: BTreeMap<String, (u64, Failure)> = BTreeMap::new();
        while start.elapsed() < budget {
            for _ in 0..16 {
                if let Err(f) = fuzzer.step() {
                    kinds.entry(kind(&f)).or_insert((0, f)).0 += 1;
                }
            }
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{:<14} {:>7.0} {:>12} {:>10.0} {:>6} {:>9}",
            target.name,
            secs,
            fuzzer.executions,
            fuzzer.executions as f64 / secs,
            fuzzer.seed_count(),
            kinds.len()
        );
        for (count, f) in kinds.values() {
            failed = true;
            let saved = save(&args.out, f).map_or_else(|e| format!("not saved: {e}"), |p| p.display().to_string());
            println!("  {count} inputs like this one ({saved}):\n  {f}");
        }
    }
    if failed {
        std::process::exit(1);
    }
}
