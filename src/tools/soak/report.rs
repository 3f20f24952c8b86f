//! The soak's figures: resident memory of every process (at the start of the measured window, at
//! its end, and the most seen), the roles' own gauges over time (first, last, min, max and the
//! least-squares slope per minute), the kills, and every failed pick with its reason; printed as a
//! terminal table and serialized as JSON.
//!
//! It judges nothing: the reader compares first with last and looks at the slopes.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::tools::load::LoadFailure;

/// One process of the run; times in seconds from the start of the measured window (negative:
/// during the warm-up).
#[derive(Debug, Clone, Serialize)]
pub struct ProcRecord {
    pub name: String,
    pub role: &'static str,
    pub pid: u32,
    pub started_s: f64,
    /// When the soak killed it.
    pub ended_s: Option<f64>,
    /// VmRSS at its first and last sample, and the most seen, in KiB.
    pub rss_first_kib: Option<u64>,
    pub rss_last_kib: Option<u64>,
    pub rss_max_kib: u64,
    pub samples: usize,
}

impl ProcRecord {
    pub fn new(name: &str, role: &'static str, pid: u32, started_s: f64) -> Self {
        ProcRecord {
            name: name.to_string(),
            role,
            pid,
            started_s,
            ended_s: None,
            rss_first_kib: None,
            rss_last_kib: None,
            rss_max_kib: 0,
            samples: 0,
        }
    }

    pub fn observe(&mut self, kib: u64) {
        self.rss_first_kib.get_or_insert(kib);
        self.rss_last_kib = Some(kib);
        self.rss_max_kib = self.rss_max_kib.max(kib);
        self.samples += 1;
    }

    /// Alive from the start of the measured window to its end.
    pub fn long_lived(&self) -> bool {
        self.started_s <= 0.0 && self.ended_s.is_none()
    }
}

/// The values read at one time.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub values: BTreeMap<String, f64>,
}

/// One series over the measured window.
#[derive(Debug, Clone, Serialize)]
pub struct Trend {
    pub name: String,
    pub first: f64,
    pub last: f64,
    pub min: f64,
    pub max: f64,
    /// Least-squares slope, per minute, over the whole window and over its second half (a leak
    /// keeps its slope; a high-water mark flattens).
    pub slope_per_min: f64,
    pub slope_second_half_per_min: f64,
}

/// Least-squares slope of `points` (x in minutes); 0 with fewer than two distinct x.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let (mx, my) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    if sxx > 0.0 { sxy / sxx } else { 0.0 }
}

/// The trend of `key` over the samples that have it; `None` without two of them.
pub fn trend(samples: &[Sample], key: &str) -> Option<Trend> {
    let points: Vec<(f64, f64)> = samples.iter().filter_map(|s| Some((s.t_s / 60.0, *s.values.get(key)?))).collect();
    if points.len() < 2 {
        return None;
    }
    let mid = (points[0].0 + points[points.len() - 1].0) / 2.0;
    let second: Vec<(f64, f64)> = points.iter().copied().filter(|p| p.0 >= mid).collect();
    Some(Trend {
        name: key.to_string(),
        first: points[0].1,
        last: points[points.len() - 1].1,
        min: points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min),
        max: points.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max),
        slope_per_min: slope(&points),
        slope_second_half_per_min: slope(&second),
    })
}

/// A process the soak SIGKILLed (and replaced).
#[derive(Debug, Clone, Serialize)]
pub struct Kill {
    pub at_s: f64,
    pub victim: String,
    /// Leader kills: time until both pickers held a snapshot of a newer epoch.
    pub failover_ms: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ChurnCounts {
    pub added: u64,
    pub removed: u64,
    pub added_dead: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    /// The settings, as one line.
    pub settings: String,
    pub measured_s: f64,
    pub picks_ok: u64,
    pub picks_failed: u64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub failures: Vec<LoadFailure>,
    pub churn: ChurnCounts,
    pub kills: Vec<Kill>,
    pub processes: Vec<ProcRecord>,
    pub trends: Vec<Trend>,
    pub samples: Vec<Sample>,
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0))
}

impl SoakReport {
    pub fn print(&self) {
        println!("\nsoak: {}", self.settings);
        let leader_kills: Vec<f64> = self.kills.iter().filter_map(|k| k.failover_ms).collect();
        let mut sorted = leader_kills.clone();
        sorted.sort_by(f64::total_cmp);
        println!(
            "measured {:.0} s: {} endpoint changes ({} added, {} of them dead; {} removed), {} kills ({} of the leader, failover p50 {:.0} ms, max {:.0} ms)",
            self.measured_s,
            self.churn.added + self.churn.removed,
            self.churn.added,
            self.churn.added_dead,
            self.churn.removed,
            self.kills.len(),
            leader_kills.len(),
            crate::tools::bench::percentile(&sorted, 50.0),
            sorted.last().copied().unwrap_or(f64::NAN),
        );
        println!(
            "picks: {} answered, {} failed (latency p50 {:.2} ms, p99 {:.2} ms)",
            self.picks_ok, self.picks_failed, self.latency_p50_ms, self.latency_p99_ms
        );
        for f in &self.failures {
            println!("  failed pick at {:.1} s via {}: {}", f.at_s, f.target, f.reason);
        }
        if self.picks_failed > self.failures.len() as u64 {
            println!("  ({} more failures not kept)", self.picks_failed - self.failures.len() as u64);
        }
        println!("\nresident memory (VmRSS, MiB) of the processes alive for the whole measured window");
        println!("{:<28} {:>8} {:>9} {:>9} {:>9} {:>8}", "process", "pid", "start", "end", "max", "change");
        for p in self.processes.iter().filter(|p| p.long_lived()) {
            let change = match (p.rss_first_kib, p.rss_last_kib) {
                (Some(a), Some(b)) if a > 0 => format!("{:+.1}%", 100.0 * (b as f64 - a as f64) / a as f64),
                _ => "-".into(),
            };
            println!(
                "{:<28} {:>8} {:>9} {:>9} {:>9} {:>8}",
                p.name,
                p.pid,
                mib(p.rss_first_kib),
                mib(p.rss_last_kib),
                mib(Some(p.rss_max_kib)),
                change
            );
        }
        let mut restarted: BTreeMap<&str, Vec<&ProcRecord>> = BTreeMap::new();
        for p in self.processes.iter().filter(|p| !p.long_lived() && p.samples > 0) {
            restarted.entry(p.role).or_default().push(p);
        }
        if !restarted.is_empty() {
            println!("killed and restarted (not in the table above): VmRSS at each one's last sample");
        }
        for (role, procs) in restarted {
            let last: Vec<u64> = procs.iter().filter_map(|p| p.rss_last_kib).collect();
            println!(
                "  {role}: {} processes; first {} MiB, last {} MiB, max {} MiB",
                procs.len(),
                mib(last.first().copied()),
                mib(last.last().copied()),
                mib(procs.iter().map(|p| p.rss_max_kib).max()),
            );
        }
        println!(
            "\nover the measured window (rss_mib.*: the processes above; leader.*: whichever aggregator led at each sample)"
        );
        println!(
            "{:<44} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "series", "first", "last", "min", "max", "slope/min", "2nd half"
        );
        for t in &self.trends {
            println!(
                "{:<44} {:>10} {:>10} {:>10} {:>10} {:>10.2} {:>10.2}",
                t.name,
                num(t.first),
                num(t.last),
                num(t.min),
                num(t.max),
                t.slope_per_min,
                t.slope_second_half_per_min
            );
        }
    }
}

/// Integers without decimals, others with two.
fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 { format!("{v:.0}") } else { format!("{v:.2}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trend_is_the_least_squares_slope_per_minute() {
        let samples: Vec<Sample> = (0..5)
            .map(|i| Sample {
                t_s: 30.0 * f64::from(i),
                values: [("x".to_string(), 10.0 + 4.0 * f64::from(i))].into_iter().collect(),
            })
            .collect();
        let t = trend(&samples, "x").expect("trend");
        assert_eq!((t.first, t.last, t.min, t.max), (10.0, 26.0, 10.0, 26.0));
        assert!((t.slope_per_min - 8.0).abs() < 1e-9, "{t:?}");
        assert!((t.slope_second_half_per_min - 8.0).abs() < 1e-9, "{t:?}");
        // Up, then flat: the second half says so.
        let mut flat = samples.clone();
        for s in flat.iter_mut().skip(2) {
            s.values.insert("x".into(), 18.0);
        }
        let t = trend(&flat, "x").expect("trend");
        assert!(t.slope_per_min > 0.0 && t.slope_second_half_per_min == 0.0, "{t:?}");
        assert!(trend(&samples, "y").is_none());
    }

    #[test]
    fn long_lived_means_alive_for_the_whole_window() {
        let mut p = ProcRecord::new("a", "aggregator", 1, -5.0);
        assert!(p.long_lived());
        p.ended_s = Some(30.0);
        assert!(!p.long_lived());
        assert!(!ProcRecord::new("b", "aggregator", 2, 31.0).long_lived());
    }
}
