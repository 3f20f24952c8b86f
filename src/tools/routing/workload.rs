//! Workloads of `switchyard bench routing`: seeded generators and a JSON-lines trace format.
//!
//! Every workload is a trace: one [`TraceRecord`] per request, with its arrival time, its prompt
//! (literal, or a token count whose first `prefix_tokens` are shared by every record of the same
//! `group`), its output budget, model or adapter, and objective. Generators produce traces at a
//! mean rate of one request per second; the bench rescales time to the offered load it wants, so
//! the same trace runs at any load. Prompt text is synthetic and deterministic: the text of a
//! group is a stream of words seeded by the group's name, so a longer prefix of a group starts with
//! every shorter one (which is what makes multi-turn histories cacheable).
//!
//! Not modelled: tokenization (the sims count 4 characters per token, as does this text).

use std::io::BufRead as _;
use std::path::Path;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// One request of a trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceRecord {
    /// Arrival, seconds from the start of the trace.
    pub at: f64,
    /// Prompt text; when absent it is synthesized from `group`, `prefix_tokens`, `prompt_tokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Records of one group share their first `prefix_tokens` tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default)]
    pub prefix_tokens: u32,
    #[serde(default)]
    pub prompt_tokens: u32,
    pub output_tokens: u32,
    /// Base model or LoRA adapter name; the fleet's base model when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// InferenceObjective name (sent as `x-gateway-inference-objective`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objective: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("cannot read trace {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("trace {path} line {line}: {source}")]
    Parse { path: String, line: usize, source: serde_json::Error },
    #[error("trace {path} line {line}: {what}")]
    Invalid { path: String, line: usize, what: String },
    #[error("trace {path} has no records")]
    Empty { path: String },
}

/// Reads a JSON-lines trace (blank lines and lines starting with `#` are skipped) and sorts it by
/// arrival.
pub fn load_trace(path: &Path) -> Result<Vec<TraceRecord>, TraceError> {
    let p = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| TraceError::Read { path: p.clone(), source })?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| TraceError::Read { path: p.clone(), source })?;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let r: TraceRecord =
            serde_json::from_str(line).map_err(|source| TraceError::Parse { path: p.clone(), line: i + 1, source })?;
        let invalid = |what: &str| TraceError::Invalid { path: p.clone(), line: i + 1, what: what.into() };
        if !r.at.is_finite() || r.at < 0.0 {
            return Err(invalid("`at` must be a finite number of seconds >= 0"));
        }
        if r.prompt.is_none() && r.prompt_tokens == 0 {
            return Err(invalid("needs `prompt` or `prompt_tokens` > 0"));
        }
        if r.prefix_tokens > r.prompt_tokens && r.prompt.is_none() {
            return Err(invalid("`prefix_tokens` is larger than `prompt_tokens`"));
        }
        if r.output_tokens == 0 {
            return Err(invalid("`output_tokens` must be > 0"));
        }
        out.push(r);
    }
    if out.is_empty() {
        return Err(TraceError::Empty { path: p });
    }
    out.sort_by(|a, b| a.at.total_cmp(&b.at));
    Ok(out)
}

/// Writes a trace as JSON lines.
pub fn write_trace(path: &Path, records: &[TraceRecord]) -> std::io::Result<()> {
    let mut text = String::new();
    for r in records {
        text.push_str(&serde_json::to_string(r).map_err(std::io::Error::other)?);
        text.push('\n');
    }
    std::fs::write(path, text)
}

/// `tokens` tokens (4 characters each) of the word stream seeded by `seed`.
pub fn synthetic_text(seed: &str, tokens: u32) -> String {
    const WORDS: [&str; 16] = [
        "lake", "tide", "moss", "fern", "opal", "rust", "jade", "wolf", "hare", "kiln", "loom", "mint", "nook", "oars",
        "pine", "quay",
    ];
    let mut h = seed.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let mut out = String::with_capacity(tokens as usize * 4);
    // The seed's own name first, so different groups differ in their first block.
    out.push_str(&format!("[{seed}] "));
    while out.len() < tokens as usize * 4 {
        h ^= h << 13;
        h ^= h >> 7;
        h ^= h << 17;
        out.push_str(WORDS[(h % 16) as usize]);
        out.push(' ');
    }
    out.truncate(tokens as usize * 4);
    out
}

impl TraceRecord {
    /// The prompt this record sends (`index` keeps unshared suffixes unique).
    pub fn prompt_text(&self, index: usize) -> String {
        if let Some(p) = &self.prompt {
            return p.clone();
        }
        let shared = self.group.as_deref().map(|g| synthetic_text(g, self.prefix_tokens)).unwrap_or_default();
        let rest = self.prompt_tokens.saturating_sub(if self.group.is_some() { self.prefix_tokens } else { 0 });
        format!("{shared}{}", synthetic_text(&format!("request-{index}"), rest))
    }

    /// The chat completion body: one user message, streaming with usage.
    pub fn body(&self, index: usize, base_model: &str) -> serde_json::Value {
        serde_json::json!({
            "model": self.model.as_deref().unwrap_or(base_model),
            "messages": [{"role": "user", "content": self.prompt_text(index)}],
            "max_tokens": self.output_tokens,
            "stream": true,
            "stream_options": {"include_usage": true},
        })
    }
}

/// The built-in workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// 16 groups of 1,500-token system prompts, uniform popularity: affinity is everything.
    SharedPrefix,
    /// Conversations of 3–8 turns whose history grows every turn.
    MultiTurn,
    /// 160 distinct 2,000-token prefixes with Zipf popularity: more than the fleet's KV cache holds.
    CachePressure,
    /// 15 LoRA adapters with skewed popularity on servers that hold 3 at a time.
    MultiLora,
    /// Shared prefixes on a mixed fleet whose first server is 3× slower.
    Heterogeneous,
    /// Shared prefixes with the arrival rate ×4 for 2 s every 20 s.
    Bursts,
    /// Shared prefixes at 110 % of saturation, half sheddable, half critical.
    Overload,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::SharedPrefix,
        Kind::MultiTurn,
        Kind::CachePressure,
        Kind::MultiLora,
        Kind::Heterogeneous,
        Kind::Bursts,
        Kind::Overload,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::SharedPrefix => "shared-prefix",
            Kind::MultiTurn => "multi-turn",
            Kind::CachePressure => "cache-pressure",
            Kind::MultiLora => "multi-lora",
            Kind::Heterogeneous => "heterogeneous",
            Kind::Bursts => "bursts",
            Kind::Overload => "overload",
        }
    }
}

/// LoRA adapters of the multi-LoRA workload (every sim serves all of them).
pub fn adapters() -> Vec<String> {
    (0..15).map(|i| format!("lora-{i:02}")).collect()
}

/// Objectives of the overload workload and their priorities.
pub const OBJECTIVES: [(&str, i32); 2] = [("critical", 1), ("sheddable", -1)];

/// Poisson arrivals at one request per second.
fn poisson(rng: &mut SmallRng, n: usize) -> Vec<f64> {
    let mut t = 0.0;
    (0..n)
        .map(|_| {
            t += -(1.0 - rng.random::<f64>()).ln();
            t
        })
        .collect()
}

/// Index drawn from a Zipf(s) distribution over `n` items (0 most popular).
fn zipf(rng: &mut SmallRng, cdf: &[f64]) -> usize {
    let u = rng.random::<f64>() * cdf.last().copied().unwrap_or(1.0);
    cdf.partition_point(|&c| c < u).min(cdf.len().saturating_sub(1))
}

fn zipf_cdf(n: usize, s: f64) -> Vec<f64> {
    let mut acc = 0.0;
    (1..=n)
        .map(|k| {
            acc += 1.0 / (k as f64).powf(s);
            acc
        })
        .collect()
}

fn shared_prefix_record(rng: &mut SmallRng, at: f64, groups: usize) -> TraceRecord {
    let g = rng.random_range(0..groups);
    let prefix = 1500;
    TraceRecord {
        at,
        prompt: None,
        group: Some(format!("system-{g:02}")),
        prefix_tokens: prefix,
        prompt_tokens: prefix + rng.random_range(50..300),
        output_tokens: rng.random_range(32..128),
        model: None,
        objective: None,
    }
}

/// `n` requests of workload `kind` at one request per second on average (arrivals rounded to
/// microseconds, so a written trace reads back identical).
pub fn generate(kind: Kind, n: usize, seed: u64) -> Vec<TraceRecord> {
    let mut records = generate_exact(kind, n, seed);
    for r in &mut records {
        r.at = (r.at * 1e6).round() / 1e6;
    }
    records
}

fn generate_exact(kind: Kind, n: usize, seed: u64) -> Vec<TraceRecord> {
    let mut rng = SmallRng::seed_from_u64(seed ^ (kind as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    match kind {
        Kind::SharedPrefix | Kind::Heterogeneous => {
            poisson(&mut rng, n).into_iter().map(|at| shared_prefix_record(&mut rng, at, 16)).collect()
        }
        Kind::Overload => poisson(&mut rng, n)
            .into_iter()
            .map(|at| {
                let mut r = shared_prefix_record(&mut rng, at, 16);
                r.objective = Some(OBJECTIVES[usize::from(rng.random_bool(0.5))].0.to_string());
                r
            })
            .collect(),
        Kind::Bursts => {
            // Base rate b for 18 s, 4b for 2 s of every 20 s: mean rate 1.3 b = 1.
            let base = 1.0 / 1.3;
            let mut t = 0.0;
            let mut out = Vec::with_capacity(n);
            while out.len() < n {
                let rate = if t % 20.0 >= 18.0 { 4.0 * base } else { base };
                t += -(1.0 - rng.random::<f64>()).ln() / rate;
                out.push(shared_prefix_record(&mut rng, t, 16));
            }
            out
        }
        Kind::CachePressure => {
            let cdf = zipf_cdf(160, 1.1);
            poisson(&mut rng, n)
                .into_iter()
                .map(|at| {
                    let g = zipf(&mut rng, &cdf);
                    TraceRecord {
                        at,
                        prompt: None,
                        group: Some(format!("doc-{g:03}")),
                        prefix_tokens: 2000,
                        prompt_tokens: 2000 + rng.random_range(20..120),
                        output_tokens: rng.random_range(16..96),
                        model: None,
                        objective: None,
                    }
                })
                .collect()
        }
        Kind::MultiLora => {
            let cdf = zipf_cdf(15, 1.0);
            let names = adapters();
            poisson(&mut rng, n)
                .into_iter()
                .map(|at| {
                    let mut r = shared_prefix_record(&mut rng, at, 8);
                    r.prefix_tokens = 600;
                    r.prompt_tokens = 600 + rng.random_range(50..300);
                    r.model = rng.random_bool(0.8).then(|| names[zipf(&mut rng, &cdf)].clone());
                    r
                })
                .collect()
        }
        Kind::MultiTurn => multi_turn(&mut rng, n),
    }
}

/// Conversations starting as a Poisson process; each turn's prompt is the whole history (the
/// previous prompt, the answer, a new question), sent a think time after the previous turn.
fn multi_turn(rng: &mut SmallRng, n: usize) -> Vec<TraceRecord> {
    let mut out = Vec::with_capacity(n);
    let mut start = 0.0;
    let mut session = 0;
    while out.len() < n {
        start += -(1.0 - rng.random::<f64>()).ln() * 4.0;
        let turns = rng.random_range(3..=8);
        let mut at = start;
        let mut history = rng.random_range(300..1000);
        for _ in 0..turns {
            let output = rng.random_range(64..200);
            out.push(TraceRecord {
                at,
                prompt: None,
                group: Some(format!("chat-{session:04}")),
                prefix_tokens: history,
                prompt_tokens: history,
                output_tokens: output,
                model: None,
                objective: None,
            });
            history += output + rng.random_range(30..150);
            // Think time in the trace's unit-rate time, scaled with the rest of the trace (at
            // ~25 requests/s a few hundred ms: a turn may arrive before the previous answer ends).
            at += 2.0 + -(1.0 - rng.random::<f64>()).ln() * 6.0;
        }
        session += 1;
    }
    out.sort_by(|a, b| a.at.total_cmp(&b.at));
    out.truncate(n);
    normalize_rate(&mut out);
    out
}

/// Rescales arrival times so the trace's mean rate is one request per second (first arrival at
/// its original offset scaled likewise).
pub fn normalize_rate(records: &mut [TraceRecord]) {
    let (Some(first), Some(last)) = (records.first().map(|r| r.at), records.last().map(|r| r.at)) else { return };
    let span = last - first;
    if span <= 0.0 || records.len() < 2 {
        return;
    }
    let k = (records.len() - 1) as f64 / span;
    for r in records.iter_mut() {
        r.at = (r.at - first) * k;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longer_text_of_a_group_starts_with_every_shorter_one() {
        let short = synthetic_text("chat-0001", 300);
        let long = synthetic_text("chat-0001", 900);
        assert_eq!(short.len(), 1200);
        assert!(long.starts_with(&short));
        assert_ne!(&synthetic_text("chat-0002", 300)[..64], &short[..64], "groups differ in their first block");
    }

    #[test]
    fn records_of_a_group_share_exactly_their_prefix() {
        let r = |i| {
            TraceRecord {
                at: 0.0,
                prompt: None,
                group: Some("g".into()),
                prefix_tokens: 100,
                prompt_tokens: 150,
                output_tokens: 1,
                model: None,
                objective: None,
            }
            .prompt_text(i)
        };
        let (a, b) = (r(1), r(2));
        assert_eq!(a.len(), 600);
        assert_eq!(a[..400], b[..400]);
        assert_ne!(a[400..], b[400..]);
    }

    #[test]
    fn generated_workloads_are_deterministic_and_about_one_per_second() {
        for kind in Kind::ALL {
            let a = generate(kind, 400, 3);
            assert_eq!(a, generate(kind, 400, 3), "{kind:?}");
            assert_ne!(a, generate(kind, 400, 4), "{kind:?}");
            let rate = (a.len() - 1) as f64 / (a[a.len() - 1].at - a[0].at);
            assert!((0.7..1.4).contains(&rate), "{kind:?}: {rate}");
            assert!(a.windows(2).all(|w| w[0].at <= w[1].at), "{kind:?} sorted");
        }
    }

    #[test]
    fn multi_turn_histories_grow_within_a_conversation() {
        let t = generate(Kind::MultiTurn, 300, 1);
        let mut by_session: std::collections::BTreeMap<&str, Vec<u32>> = Default::default();
        for r in &t {
            by_session.entry(r.group.as_deref().unwrap_or("")).or_default().push(r.prompt_tokens);
        }
        assert!(by_session.len() > 20);
        assert!(by_session.values().all(|v| v.windows(2).all(|w| w[0] < w[1])));
    }

    #[test]
    fn trace_files_round_trip_and_bad_lines_name_their_line() {
        let dir = std::env::temp_dir().join(format!("switchyard-trace-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.jsonl");
        let t = generate(Kind::Overload, 50, 9);
        write_trace(&path, &t).unwrap();
        assert_eq!(load_trace(&path).unwrap(), t);
        std::fs::write(&path, "{\"at\": 1, \"prompt\": \"hi\", \"output_tokens\": 4}\n{\"at\": 2, \"promt\": \"x\"}\n")
            .unwrap();
        let e = load_trace(&path).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("promt"), "{e}");
        std::fs::write(&path, "{\"at\": 1, \"output_tokens\": 4}\n").unwrap();
        assert!(load_trace(&path).unwrap_err().to_string().contains("prompt_tokens"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
