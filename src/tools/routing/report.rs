//! Figures of one run and of several runs pooled, and the scoreboard table.

use std::collections::BTreeMap;

use serde::Serialize;

use super::drive::Outcome;
use crate::tools::bench::percentile;

/// What one policy did on one workload (one run, or several pooled).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Figures {
    pub policy: String,
    pub runs: usize,
    pub requests: usize,
    pub ok: usize,
    pub rejected_429: usize,
    pub unavailable_503: usize,
    pub other_failures: usize,
    pub ttft_ms: [f64; 3],
    pub e2e_ms: [f64; 3],
    /// TTFT percentiles 1..=99 of the pooled runs, for CDF plots.
    pub ttft_cdf_ms: Vec<f64>,
    /// TTFT p90 of each run (the spread over seeds).
    pub ttft_p90_runs: Vec<f64>,
    pub output_tokens_per_s: f64,
    /// Share of all requests answered with a first token within the SLO.
    pub goodput: f64,
    /// Prefix-cache hit rate from the sims' own counters (cached / prompt tokens).
    pub hit_rate: f64,
    /// The largest share of picks one endpoint took in a 100 ms window (windows with at least as
    /// many picks as endpoints).
    pub max_window_share: Option<f64>,
    /// CPU seconds of the routing processes per 1,000 requests.
    pub cpu_s_per_1k: f64,
    /// Per objective: (requests, rejected, TTFT p90 of the answered).
    pub by_objective: BTreeMap<String, (usize, usize, f64)>,
    /// Why requests failed (status and the start of the body), with counts.
    pub failures: BTreeMap<String, usize>,
}

/// Raw material of one run.
pub struct RunData {
    pub outcomes: Vec<Outcome>,
    /// (cached tokens, prompt tokens) counted by the sims during the run.
    pub cache: (u64, u64),
    /// The same per server, by name.
    pub per_server: Vec<(String, (u64, u64))>,
    pub cpu_seconds: f64,
    pub endpoints: usize,
}

fn p3(mut v: Vec<f64>) -> [f64; 3] {
    v.sort_by(f64::total_cmp);
    [percentile(&v, 50.0), percentile(&v, 90.0), percentile(&v, 99.0)]
}

/// The largest share one endpoint took of the picks sent in any 100 ms window that saw at least
/// `min` picks.
fn max_window_share(outcomes: &[Outcome], min: usize) -> Option<f64> {
    let mut windows: BTreeMap<u64, BTreeMap<&str, usize>> = BTreeMap::new();
    for o in outcomes {
        if let Some(s) = &o.server {
            *windows.entry((o.sent_at * 10.0) as u64).or_default().entry(s).or_default() += 1;
        }
    }
    windows
        .values()
        .filter_map(|w| {
            let total: usize = w.values().sum();
            (total >= min.max(1)).then(|| *w.values().max().unwrap_or(&0) as f64 / total as f64)
        })
        .reduce(f64::max)
}

impl Figures {
    pub fn from_runs(policy: &str, runs: &[RunData], slo_ms: f64) -> Figures {
        let all: Vec<&Outcome> = runs.iter().flat_map(|r| &r.outcomes).collect();
        let ok: Vec<&&Outcome> = all.iter().filter(|o| o.ok()).collect();
        let (cached, prompt) = runs.iter().fold((0, 0), |(c, p), r| (c + r.cache.0, p + r.cache.1));
        let span: f64 = runs
            .iter()
            .map(|r| {
                let end =
                    r.outcomes.iter().filter_map(|o| o.e2e_ms.map(|e| o.sent_at + e / 1000.0)).fold(0.0, f64::max);
                let start = r.outcomes.iter().map(|o| o.sent_at).fold(f64::INFINITY, f64::min);
                (end - start).max(1e-9)
            })
            .sum();
        let mut by_objective: BTreeMap<String, (usize, usize, f64)> = BTreeMap::new();
        for name in all.iter().filter_map(|o| o.objective.clone()).collect::<std::collections::BTreeSet<_>>() {
            let mine: Vec<&&Outcome> = all.iter().filter(|o| o.objective.as_deref() == Some(&name)).collect();
            let rejected = mine.iter().filter(|o| o.status == 429 || o.status == 503).count();
            let ttft = p3(mine.iter().filter(|o| o.ok()).filter_map(|o| o.ttft_ms).collect());
            by_objective.insert(name, (mine.len(), rejected, ttft[1]));
        }
        let n = all.len();
        Figures {
            policy: policy.to_string(),
            runs: runs.len(),
            requests: n,
            ok: ok.len(),
            rejected_429: all.iter().filter(|o| o.status == 429).count(),
            unavailable_503: all.iter().filter(|o| o.status == 503).count(),
            other_failures: all.iter().filter(|o| !o.ok() && o.status != 429 && o.status != 503).count(),
            ttft_ms: p3(ok.iter().filter_map(|o| o.ttft_ms).collect()),
            ttft_cdf_ms: {
                let mut v: Vec<f64> = ok.iter().filter_map(|o| o.ttft_ms).collect();
                v.sort_by(f64::total_cmp);
                (1..=99).map(|p| percentile(&v, f64::from(p))).collect()
            },
            e2e_ms: p3(ok.iter().filter_map(|o| o.e2e_ms).collect()),
            ttft_p90_runs: runs
                .iter()
                .map(|r| p3(r.outcomes.iter().filter(|o| o.ok()).filter_map(|o| o.ttft_ms).collect())[1])
                .collect(),
            output_tokens_per_s: ok.iter().map(|o| o.output_tokens).sum::<u64>() as f64 / span,
            goodput: ok.iter().filter(|o| o.ttft_ms.is_some_and(|t| t <= slo_ms)).count() as f64 / n.max(1) as f64,
            hit_rate: if prompt == 0 { 0.0 } else { cached as f64 / prompt as f64 },
            max_window_share: runs.iter().filter_map(|r| max_window_share(&r.outcomes, r.endpoints)).reduce(f64::max),
            cpu_s_per_1k: runs.iter().map(|r| r.cpu_seconds).sum::<f64>() * 1000.0 / n.max(1) as f64,
            by_objective,
            failures: all.iter().filter_map(|o| o.error.clone()).fold(BTreeMap::new(), |mut m, e| {
                *m.entry(e).or_default() += 1;
                m
            }),
        }
    }
}

/// The terminal table of one workload.
pub fn table(workload: &str, rate: f64, rows: &[Figures]) -> String {
    let mut s = format!(
        "\n{workload} at {rate:.1} req/s\n{:<17} {:>5} {:>20} {:>22} {:>7} {:>6} {:>6} {:>9} {:>6} {:>8}\n",
        "policy",
        "reqs",
        "TTFT p50/p90/p99 ms",
        "e2e p50/p90/p99 ms",
        "tok/s",
        "good%",
        "hit%",
        "429/503/x",
        "share",
        "cpu/1k s"
    );
    for f in rows {
        let spread = match (
            f.ttft_p90_runs.iter().copied().reduce(f64::min),
            f.ttft_p90_runs.iter().copied().reduce(f64::max),
        ) {
            (Some(lo), Some(hi)) if f.runs > 1 => format!("  p90 over runs {lo:.0}–{hi:.0}"),
            _ => String::new(),
        };
        s.push_str(&format!(
            "{:<17} {:>5} {:>20} {:>22} {:>7.0} {:>6.1} {:>6.1} {:>9} {:>6} {:>8.3}{spread}\n",
            f.policy,
            f.requests,
            format!("{:.0}/{:.0}/{:.0}", f.ttft_ms[0], f.ttft_ms[1], f.ttft_ms[2]),
            format!("{:.0}/{:.0}/{:.0}", f.e2e_ms[0], f.e2e_ms[1], f.e2e_ms[2]),
            f.output_tokens_per_s,
            100.0 * f.goodput,
            100.0 * f.hit_rate,
            format!("{}/{}/{}", f.rejected_429, f.unavailable_503, f.other_failures),
            f.max_window_share.map(|x| format!("{:.0}%", 100.0 * x)).unwrap_or_else(|| "-".into()),
            f.cpu_s_per_1k,
        ));
        for (why, n) in f.failures.iter().filter(|(w, _)| !w.starts_with("429")) {
            s.push_str(&format!("{:<17}   {n} × {why}\n", ""));
        }
        for (name, (n, rejected, p90)) in &f.by_objective {
            s.push_str(&format!("{:<17}   {name}: {n} requests, {rejected} rejected, TTFT p90 {p90:.0} ms\n", ""));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(sent_at: f64, server: &str, status: u16, ttft: f64) -> Outcome {
        Outcome {
            sent_at,
            status,
            server: Some(server.into()),
            ttft_ms: (status == 200).then_some(ttft),
            e2e_ms: Some(ttft * 2.0),
            output_tokens: 10,
            objective: None,
            error: (status != 200).then(|| format!("{status} busy")),
        }
    }

    #[test]
    fn figures_count_what_the_client_saw() {
        let outcomes = vec![
            o(0.00, "a", 200, 100.0),
            o(0.01, "a", 200, 200.0),
            o(0.02, "b", 200, 300.0),
            o(0.03, "a", 429, 0.0),
            o(0.50, "b", 200, 2000.0),
        ];
        let f = Figures::from_runs(
            "p",
            &[RunData { outcomes, cache: (30, 100), per_server: vec![], cpu_seconds: 0.5, endpoints: 2 }],
            1000.0,
        );
        assert_eq!((f.requests, f.ok, f.rejected_429), (5, 4, 1));
        assert_eq!(f.ttft_ms[0], 200.0);
        assert_eq!(f.goodput, 3.0 / 5.0);
        assert_eq!(f.hit_rate, 0.3);
        assert_eq!(f.cpu_s_per_1k, 100.0);
        // Window 0 saw a, a, b, a: a took 3 of 4; window 5 saw one pick (< 2 endpoints): skipped.
        assert_eq!(f.max_window_share, Some(0.75));
        assert_eq!(f.failures.get("429 busy"), Some(&1));
    }
}
