//! The fuzzing engine shared by the seeded runs in the test suite (`tests/it/fuzz.rs`) and the
//! long run (`benches/fuzz.rs`): a seeded PRNG, a corpus loader, and a mutator that turns seed
//! inputs into new ones.
//!
//! It is coverage-free on purpose: cargo-fuzz (libFuzzer) needs a nightly compiler and this
//! project builds with one pinned stable toolchain. What replaces coverage feedback is
//! structure: every target brings real seed inputs (corpus files, fixture pages), a dictionary of
//! the tokens its grammar cares about, and a generator that builds well-formed inputs from
//! scratch; the mutator stacks byte-, token-, line- and number-level edits on top. Everything is
//! derived from one `u64` seed, so a failure reproduces from the seed and the iteration number.
//!
//! It does not time anything (the long run does) and does not grow the corpus at run time.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

/// A fuzz target: how to build inputs for it and how to judge one.
pub struct Target {
    /// Also the corpus directory: `tests/fuzz-corpus/<name>/`.
    pub name: &'static str,
    /// More seed inputs: every file with this extension in this directory (relative to the
    /// crate root), e.g. the metrics fixture pages.
    pub extra_seeds: &'static [(&'static str, &'static str)],
    /// Tokens the mutator inserts or overwrites with.
    pub dictionary: &'static [&'static [u8]],
    /// Builds a well-formed input from scratch.
    pub generate: fn(&mut Rng) -> Vec<u8>,
    /// Runs the code under test on one input: `Err` when an invariant does not hold. A panic is a
    /// failure too (caught by [`check`]).
    pub check: fn(&[u8]) -> Result<(), String>,
}

/// One input that made a target panic or break an invariant.
#[derive(Debug, Clone)]
pub struct Failure {
    pub target: &'static str,
    /// Which execution of the run found it (with the seed, enough to reproduce it).
    pub execution: u64,
    pub input: Vec<u8>,
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const SHOWN: usize = 600;
        let shown = &self.input[..self.input.len().min(SHOWN)];
        write!(
            f,
            "target {} failed at execution {}: {}\ninput ({} bytes{}): {}",
            self.target,
            self.execution,
            self.message,
            self.input.len(),
            if self.input.len() > SHOWN { ", truncated" } else { "" },
            shown.escape_ascii()
        )
    }
}

/// splitmix64: tiny, fast, and stable forever (a seed written in a report keeps meaning the same
/// inputs whatever `rand` version the lockfile holds).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`0` when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next_u64() % n as u64) as usize }
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u32) -> bool {
        self.below(100) < percent as usize
    }

    /// One of `items` (not empty).
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    /// Small sizes much more often than large ones (1 to `max`).
    pub fn small(&mut self, max: usize) -> usize {
        let bits = self.below(usize::BITS as usize - max.max(1).leading_zeros() as usize + 1);
        (1 + self.below(1 << bits)).min(max.max(1))
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// Runs `check` on `input`, turning a panic into a failure message.
pub fn check(target: &Target, input: &[u8]) -> Result<(), String> {
    match catch_unwind(AssertUnwindSafe(|| (target.check)(input))) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".into());
            Err(format!("panicked: {msg}"))
        }
    }
}

fn crate_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The checked-in corpus directory of a target.
pub fn corpus_dir(target: &Target) -> PathBuf {
    crate_root().join("tests/fuzz-corpus").join(target.name)
}

/// The target's seed inputs, in a stable order: its corpus files, then its extra seeds.
pub fn load_seeds(target: &Target) -> std::io::Result<Vec<Vec<u8>>> {
    let mut files = list(&corpus_dir(target), None)?;
    for (dir, ext) in target.extra_seeds {
        files.extend(list(&crate_root().join(dir), Some(ext))?);
    }
    files.iter().map(std::fs::read).collect()
}

fn list(dir: &Path, ext: Option<&str>) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_file() && ext.is_none_or(|e| path.extension().is_some_and(|x| x == e)) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Produces inputs for one target: first every seed as it is, then, forever, a mix of generated
/// inputs, random bytes and stacked mutations of seeds and generated inputs.
pub struct Fuzzer<'t> {
    pub target: &'t Target,
    seeds: Vec<Vec<u8>>,
    rng: Rng,
    /// Inputs judged so far.
    pub executions: u64,
    max_len: usize,
}

/// Mutated inputs never grow past this (or twice the largest seed).
const MIN_MAX_LEN: usize = 4096;

impl<'t> Fuzzer<'t> {
    pub fn new(target: &'t Target, seed: u64) -> std::io::Result<Self> {
        let seeds = load_seeds(target)?;
        let max_len = seeds.iter().map(|s| s.len() * 2).max().unwrap_or(0).max(MIN_MAX_LEN);
        Ok(Fuzzer { target, seeds, rng: Rng::new(seed), executions: 0, max_len })
    }

    pub fn seed_count(&self) -> usize {
        self.seeds.len()
    }

    /// Judges the next input.
    pub fn step(&mut self) -> Result<(), Failure> {
        let input = self.next_input();
        let execution = self.executions;
        self.executions += 1;
        check(self.target, &input).map_err(|message| Failure { target: self.target.name, execution, input, message })
    }

    fn next_input(&mut self) -> Vec<u8> {
        if let Some(seed) = self.seeds.get(self.executions as usize) {
            return seed.clone();
        }
        let rng = &mut self.rng;
        let roll = rng.below(100);
        if roll < 5 {
            let n = rng.small(self.max_len.min(512));
            return rng.bytes(n);
        }
        let mut input = if roll < 30 || self.seeds.is_empty() {
            (self.target.generate)(rng)
        } else {
            self.seeds[rng.below(self.seeds.len())].clone()
        };
        if roll < 20 {
            // Some generated inputs go in untouched: they reach deep, valid paths.
            return input;
        }
        for _ in 0..rng.small(8) {
            mutate(&mut input, rng, self.target.dictionary, &self.seeds);
        }
        input.truncate(self.max_len);
        input
    }
}

/// Numbers that break arithmetic and parsers.
const NUMBERS: &[&str] = &[
    "0",
    "-0",
    "1",
    "-1",
    "0.5",
    "1e308",
    "1e999",
    "-1e999",
    "5e-324",
    "NaN",
    "+Inf",
    "-Inf",
    "inf",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999999999",
    "1.7976931348623157e308",
    "0x10",
    "1_000",
];

const BYTES: &[u8] = b"\0\xff\x7f\x80\n\r\t \"'{}[]\\,:=#";

/// Applies one random edit.
fn mutate(input: &mut Vec<u8>, rng: &mut Rng, dictionary: &[&[u8]], seeds: &[Vec<u8>]) {
    let len = input.len();
    let pos = rng.below(len + 1);
    match rng.below(12) {
        0 if len > 0 => input[pos.min(len - 1)] ^= 1 << rng.below(8),
        1 if len > 0 => input[pos.min(len - 1)] = rng.pick(BYTES),
        2 => {
            let n = rng.small(16);
            let bytes = rng.bytes(n);
            input.splice(pos..pos, bytes);
        }
        3 if len > 0 => {
            let n = rng.small((len - pos.min(len - 1)).max(1));
            input.drain(pos.min(len - 1)..(pos.min(len - 1) + n).min(len));
        }
        4 if len > 0 => {
            // Copy a chunk somewhere else (repeats, nesting).
            let start = rng.below(len);
            let n = rng.small(len - start);
            let chunk = input[start..start + n].to_vec();
            let at = rng.below(len + 1);
            input.splice(at..at, chunk);
        }
        5 | 6 if !dictionary.is_empty() => {
            let token = rng.pick(dictionary);
            if rng.chance(50) || len == 0 {
                input.splice(pos..pos, token.iter().copied());
            } else {
                let end = (pos + token.len()).min(len);
                input.splice(pos..end, token.iter().copied());
            }
        }
        7 if !seeds.is_empty() => {
            // Splice: our head, another seed's tail.
            let other = &seeds[rng.below(seeds.len())];
            let from = rng.below(other.len() + 1);
            input.truncate(pos);
            input.extend_from_slice(&other[from..]);
        }
        8 => mutate_lines(input, rng),
        9 => replace_number(input, rng),
        10 if len > 0 => input.truncate(pos),
        _ => {
            let token = rng.pick(NUMBERS).as_bytes();
            input.splice(pos..pos, token.iter().copied());
        }
    }
}

/// Deletes, duplicates or swaps whole lines (pages, YAML and SSE streams are line-based).
fn mutate_lines(input: &mut Vec<u8>, rng: &mut Rng) {
    let mut lines: Vec<&[u8]> = input.split(|b| *b == b'\n').collect();
    if lines.len() < 2 {
        return;
    }
    let (a, b) = (rng.below(lines.len()), rng.below(lines.len()));
    match rng.below(3) {
        0 => {
            lines.remove(a);
        }
        1 => lines.insert(b, lines[a]),
        _ => lines.swap(a, b),
    }
    *input = lines.join(&b'\n');
}

/// Replaces a run of digits (with its sign, dot and exponent) with an extreme number.
fn replace_number(input: &mut Vec<u8>, rng: &mut Rng) {
    let digits: Vec<usize> = input.iter().enumerate().filter(|(_, b)| b.is_ascii_digit()).map(|(i, _)| i).collect();
    if digits.is_empty() {
        return;
    }
    let mut start = rng.pick(&digits);
    let numeric = |b: u8| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-');
    while start > 0 && numeric(input[start - 1]) {
        start -= 1;
    }
    let mut end = start;
    while end < input.len() && numeric(input[end]) {
        end += 1;
    }
    let token = rng.pick(NUMBERS).as_bytes();
    input.splice(start..end, token.iter().copied());
}

#[test]
fn the_mutator_is_deterministic_for_a_seed() {
    let target = Target {
        name: "none",
        extra_seeds: &[],
        dictionary: &[b"tok"],
        generate: |rng| rng.bytes(8),
        check: |_| Ok(()),
    };
    let run = |seed| {
        let seeds = vec![b"a 1\nb 2\n".to_vec()];
        let mut f = Fuzzer { target: &target, seeds, rng: Rng::new(seed), executions: 0, max_len: 64 };
        let mut inputs = Vec::new();
        for _ in 0..200 {
            inputs.push(f.next_input());
            f.executions += 1;
        }
        inputs
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
    assert!(run(7).iter().all(|i| i.len() <= 64));
    assert_eq!(run(7)[0], b"a 1\nb 2\n", "the seeds come first, as they are");
}
