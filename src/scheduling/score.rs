//! Filters, scorers and saturation over the candidates, held by field ([`Cands`]): each plugin
//! runs one tight loop over the fields it reads, and only the fields some plugin of the profile
//! reads are gathered at all.

use std::time::SystemTime;

use rand::Rng;
use rand::rngs::SmallRng;

use super::columns::{Columns, nanos};
use super::config::{Detector, FilterKind, Profile, ScorerKind};
use super::{LocalLoads, RequestFeatures};
use crate::model::{Load, Snapshot};

/// The candidate fields a decision reads, from its profile (and the request's priority: a
/// sheddable one is checked against the saturation detector).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Needs {
    queued: bool,
    running: bool,
    kv_usage: bool,
    inflight: bool,
    prefix: bool,
    latency: bool,
}

impl Needs {
    pub(super) fn of(profile: &Profile) -> Self {
        let mut needs = Needs::default();
        for f in &profile.filters {
            match f {
                FilterKind::Detector(d) => needs.detector(d),
                FilterKind::PrefixAffinity { .. } => needs.prefix = true,
                FilterKind::HeaderBasedTesting => {}
            }
        }
        for (s, _) in &profile.scorers {
            match s {
                ScorerKind::Queue => needs.queued = true,
                ScorerKind::KvCache => needs.kv_usage = true,
                ScorerKind::RunningRequests => needs.running = true,
                ScorerKind::PrefixCache => needs.prefix = true,
                ScorerKind::TokenLoad { .. } => needs.inflight = true,
                ScorerKind::LoraAffinity => {}
                ScorerKind::LearnedLatency => (needs.queued, needs.latency) = (true, true),
            }
        }
        needs
    }

    /// What `detector` reads (a filter, or the saturation check of a sheddable request).
    pub(super) fn detector(&mut self, detector: &Detector) {
        match detector {
            Detector::Utilization { .. } => (self.queued, self.kv_usage) = (true, true),
            Detector::Concurrency { .. } => self.inflight = true,
        }
    }
}

/// The candidates by field, in the order given. A field no plugin of the profile reads is left
/// empty (see [`Needs`]).
#[derive(Debug, Clone, Default)]
pub(super) struct Cands {
    /// Snapshot indices.
    pub(super) index: Vec<usize>,
    /// Scraped within the staleness threshold.
    pub(super) fresh: Vec<bool>,
    /// Waiting requests, plus what the pickers sent since the scrape (NaN: unknown).
    queued: Vec<f64>,
    running: Vec<f64>,
    kv_usage: Vec<f64>,
    /// In flight: this picker's change since its report plus the shared load, clamped at zero.
    inflight: Vec<Load>,
    /// Blocks of the request the endpoint is known to cache.
    prefix: Vec<u32>,
    /// This picker's learnt seconds to first token per queued request (NaN: none observed yet).
    latency: Vec<f64>,
    pub(super) score: Vec<f64>,
}

impl Cands {
    /// Gathers `candidates` from the columns and this picker's counters. `matched` is (snapshot
    /// index, matched blocks); `fresh_after` the oldest scrape time (ns) that counts as fresh.
    pub(super) fn gather(
        candidates: &[usize],
        columns: &Columns,
        local: &dyn LocalLoads,
        matched: &[(usize, usize)],
        fresh_after: i64,
        needs: Needs,
    ) -> Self {
        let mut c = Cands {
            index: candidates.to_vec(),
            // Scraped at or after `now - staleness` (a clock step backwards counts as fresh).
            fresh: candidates.iter().map(|&i| columns.fresh(i, fresh_after)).collect(),
            score: vec![0.0; candidates.len()],
            ..Cands::default()
        };
        if needs.queued {
            // A value the page did not have is unknown (NaN), not zero: an endpoint must not look
            // idle to a scorer because its page lacked the metric. NaN stays NaN with the sends.
            let sent = local.sent_since_scrape_of(candidates);
            c.queued = candidates.iter().zip(sent).map(|(&i, sent)| columns.queued[i] + sent as f64).collect();
        }
        if needs.running {
            c.running = candidates.iter().map(|&i| columns.running[i]).collect();
        }
        if needs.kv_usage {
            c.kv_usage = candidates.iter().map(|&i| columns.kv_usage[i]).collect();
        }
        if needs.inflight {
            c.inflight = candidates
                .iter()
                .map(|&i| {
                    let (mine, shared) = (local.inflight(i), columns.shared[i]);
                    // Saturating: the shared load comes from the wire (found by fuzzing).
                    Load {
                        requests: mine.requests.saturating_add(shared.requests).max(0),
                        tokens: mine.tokens.saturating_add(shared.tokens).max(0),
                    }
                })
                .collect();
        }
        if needs.latency {
            c.latency = candidates.iter().map(|&i| local.seconds_per_queued(i)).collect();
        }
        if needs.prefix {
            c.prefix = if matched.is_empty() {
                vec![0; candidates.len()]
            } else {
                let mut by_index = vec![0u32; columns.len()];
                for &(i, n) in matched {
                    by_index[i] = u32::try_from(n).unwrap_or(u32::MAX);
                }
                candidates.iter().map(|&i| by_index[i]).collect()
            };
        }
        c
    }

    pub(super) fn len(&self) -> usize {
        self.index.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Keeps the candidates whose `keep` is true, in order.
    fn retain(&mut self, keep: &[bool]) {
        fn column<T: Copy>(v: &mut Vec<T>, keep: &[bool]) {
            if !v.is_empty() {
                let mut k = keep.iter();
                v.retain(|_| k.next().copied().unwrap_or(false));
            }
        }
        column(&mut self.index, keep);
        column(&mut self.fresh, keep);
        column(&mut self.queued, keep);
        column(&mut self.running, keep);
        column(&mut self.kv_usage, keep);
        column(&mut self.inflight, keep);
        column(&mut self.prefix, keep);
        column(&mut self.latency, keep);
        column(&mut self.score, keep);
    }

    /// Keeps the candidates `keep` accepts; when it accepts none, all of them (fail open).
    fn retain_or_all(&mut self, keep: Vec<bool>) {
        if keep.iter().any(|k| *k) {
            self.retain(&keep);
        }
    }

    /// Score of the candidate at snapshot index `index`.
    pub(super) fn score_of(&self, index: usize) -> Option<f64> {
        self.index.iter().position(|&i| i == index).map(|at| self.score[at])
    }
}

/// The oldest scrape time (ns) within `staleness` of `now` (a scrape from the future is fresh),
/// for [`Columns::fresh`].
fn fresh_since(now: SystemTime, staleness: std::time::Duration) -> i64 {
    nanos(now).saturating_sub(i64::try_from(staleness.as_nanos()).unwrap_or(i64::MAX))
}

/// Pool saturation over the candidates (≥ 1.0 means saturated).
pub(super) fn saturation(detector: &Detector, columns: &Columns, cands: &Cands, now: SystemTime) -> f64 {
    if cands.is_empty() {
        return 1.0;
    }
    let since = match *detector {
        Detector::Utilization { staleness, .. } => fresh_since(now, staleness),
        Detector::Concurrency { .. } => 0,
    };
    let sum: f64 = (0..cands.len()).map(|c| endpoint_saturation(detector, columns, cands, c, since)).sum();
    sum / cands.len() as f64
}

/// `since`: the oldest fresh scrape time for a utilization detector.
fn endpoint_saturation(detector: &Detector, columns: &Columns, cands: &Cands, c: usize, since: i64) -> f64 {
    match *detector {
        Detector::Utilization { queue_threshold, kv_threshold, .. } => {
            if !columns.fresh(cands.index[c], since) {
                return 1.0;
            }
            // f64::max ignores an unknown (NaN) side; both unknown count as saturated.
            let s = (cands.queued[c] / queue_threshold).max(cands.kv_usage[c] / kv_threshold);
            if s.is_nan() { 1.0 } else { s }
        }
        Detector::Concurrency { tokens, max_requests, max_tokens, .. } => {
            if tokens {
                cands.inflight[c].tokens as f64 / max_tokens
            } else {
                cands.inflight[c].requests as f64 / max_requests
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn filter(
    f: &FilterKind,
    snapshot: &Snapshot,
    columns: &Columns,
    cands: &mut Cands,
    req: &RequestFeatures<'_>,
    total_blocks: usize,
    now: SystemTime,
    rng: &mut SmallRng,
) {
    match f {
        FilterKind::Detector(Detector::Utilization { queue_threshold, kv_threshold, staleness, headroom }) => {
            let (q_limit, kv_limit) = (queue_threshold * (1.0 + headroom), kv_threshold * (1.0 + headroom));
            let (c, since) = (&*cands, fresh_since(now, *staleness));
            let keep = (0..c.len())
                .map(|i| columns.fresh(c.index[i], since) && c.queued[i] < q_limit && c.kv_usage[i] < kv_limit)
                .collect();
            // Fail open, as upstream: nothing passes → keep everything.
            cands.retain_or_all(keep);
        }
        FilterKind::Detector(Detector::Concurrency { tokens, max_requests, max_tokens, headroom }) => {
            let keep: Vec<bool> = cands
                .inflight
                .iter()
                .map(|l| {
                    if *tokens {
                        (l.tokens as f64) < (max_tokens * (1.0 + headroom)).floor()
                    } else {
                        (l.requests as f64) < (max_requests * (1.0 + headroom)).floor()
                    }
                })
                .collect();
            cands.retain(&keep);
        }
        FilterKind::HeaderBasedTesting => {
            let wanted: Vec<&str> = match req.test_selection {
                Some(list) => list.split(',').map(str::trim).filter(|s| !s.is_empty()).collect(),
                None => Vec::new(),
            };
            let keep: Vec<bool> = cands
                .index
                .iter()
                .map(|&i| {
                    let addr = snapshot.endpoints[i].endpoint.address.as_str();
                    let ip = host(addr);
                    wanted.iter().any(|w| *w == addr || w.trim_start_matches('[').trim_end_matches(']') == ip)
                })
                .collect();
            cands.retain(&keep);
        }
        FilterKind::PrefixAffinity { threshold, exploration } => {
            if total_blocks == 0 || rng.random_bool(exploration.clamp(0.0, 1.0)) {
                return;
            }
            let keep = cands.prefix.iter().map(|n| f64::from(*n) / total_blocks as f64 >= *threshold).collect();
            cands.retain_or_all(keep);
        }
    }
}

/// `ip` of `ip:port` or `[v6]:port`.
pub fn host(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.rsplit_once(':') {
        Some((host, _)) if !host.contains(':') => host,
        _ => addr,
    }
}

/// Adds `weight × score` (score clamped to 0..=1) to every candidate, in one pass.
pub(super) fn add_scores(
    s: ScorerKind,
    weight: f64,
    columns: &Columns,
    cands: &mut Cands,
    req: &RequestFeatures<'_>,
    total_blocks: usize,
) {
    let add = |score: &mut f64, v: f64| *score += weight * v.clamp(0.0, 1.0);
    let Cands { index, fresh, queued, running, kv_usage, inflight, prefix, latency, score } = cands;
    match s {
        ScorerKind::Queue => min_max(fresh, queued, score, add),
        ScorerKind::RunningRequests => min_max(fresh, running, score, add),
        ScorerKind::KvCache => {
            for ((score, fresh), kv) in score.iter_mut().zip(fresh.iter()).zip(kv_usage.iter()) {
                let v = if *fresh && !kv.is_nan() { 1.0 - kv } else { 0.0 };
                add(score, v)
            }
        }
        ScorerKind::PrefixCache => {
            if total_blocks > 0 {
                for (score, n) in score.iter_mut().zip(prefix.iter()) {
                    add(score, f64::from(*n) / total_blocks as f64)
                }
            }
        }
        ScorerKind::TokenLoad { threshold_tokens } => {
            for (score, l) in score.iter_mut().zip(inflight.iter()) {
                let t = l.tokens as f64;
                let v = if t <= 0.0 { 1.0 } else { 1.0 - t.min(threshold_tokens) / threshold_tokens };
                add(score, v)
            }
        }
        ScorerKind::LearnedLatency => expected_wait(fresh, queued, latency, score, add),
        ScorerKind::LoraAffinity => {
            let lora = &columns.lora;
            let adapter = lora.adapter(req.target_model);
            for (score, &i) in score.iter_mut().zip(index.iter()) {
                let slot = &lora.slots[i];
                // An engine that reports no LoRA state at all (SGLang, Triton pages) is unknown,
                // not full: upstream scores it 0, which steers every request of a mixed pool,
                // base-model ones included, onto the engines that do report (found by `bench
                // routing`'s heterogeneous workload). It gets the score of a free slot.
                let Some(max) = slot.max else {
                    add(score, 0.8);
                    continue;
                };
                let v = if adapter.is_some_and(|a| lora.running(slot, a)) {
                    1.0
                } else if slot.distinct < max as usize {
                    0.8
                } else if adapter.is_some_and(|a| lora.waiting(slot, a)) {
                    0.6
                } else {
                    0.0
                };
                add(score, v)
            }
        }
    }
}

/// `learned-latency-scorer`: the expected time to first token, (queue + 1) × the endpoint's learnt
/// seconds per queued request, scored `1 − (wait − shortest) / (longest − shortest + typical)`
/// where `typical` is one request's time at a typical endpoint. Min–max softened by one request:
/// queues far apart spread as `queue-scorer`'s min–max does (a ratio of waits would score a queue
/// of 6 at 6/7 of one of 5, and let prefix affinity pile conversations onto busy servers), while
/// a few milliseconds of learnt difference between idle, identical servers stays a few per cent of
/// the range instead of all of it. Endpoints not learnt yet take the mean of those that are
/// (none learnt: the queue alone decides); stale or unknown queues score 0.
fn expected_wait(fresh: &[bool], queued: &[f64], per_queued: &[f64], score: &mut [f64], add: impl Fn(&mut f64, f64)) {
    let (sum, n) = per_queued.iter().filter(|s| s.is_finite() && **s > 0.0).fold((0.0, 0), |(s, n), v| (s + v, n + 1));
    let typical = if n == 0 { 1.0 } else { sum / f64::from(n) };
    let wait = |q: f64, s: f64| (q.max(0.0) + 1.0) * if s.is_finite() && s > 0.0 { s } else { typical };
    let (mut best, mut worst) = (f64::INFINITY, f64::NEG_INFINITY);
    for ((q, s), f) in queued.iter().zip(per_queued).zip(fresh) {
        if *f && !q.is_nan() {
            let w = wait(*q, *s);
            best = best.min(w);
            worst = worst.max(w);
        }
    }
    let range = worst - best + typical;
    for (((score, q), s), f) in score.iter_mut().zip(queued).zip(per_queued).zip(fresh) {
        let v = if !*f || q.is_nan() { 0.0 } else { 1.0 - (wait(*q, *s) - best) / range };
        add(score, v);
    }
}

/// Upstream's min-max normalization (lower is better) over fresh candidates; stale or unknown
/// ones score 0, the worst.
fn min_max(fresh: &[bool], value: &[f64], score: &mut [f64], add: impl Fn(&mut f64, f64)) {
    let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
    for (&v, f) in value.iter().zip(fresh) {
        // Plain comparisons (no NaN handling in the loop's dependency chain): NaN is skipped.
        if *f && !v.is_nan() {
            min = if v < min { v } else { min };
            max = if v > max { v } else { max };
        }
    }
    for ((score, v), f) in score.iter_mut().zip(value).zip(fresh) {
        // Stale, or the value was missing from the page: the worst score, as never scraped.
        let v = if !*f || v.is_nan() {
            0.0
        } else if max <= min {
            1.0
        } else {
            (max - v) / (max - min)
        };
        add(score, v);
    }
}
