//! Filters, scorers and saturation, as free functions over candidates.

use std::time::SystemTime;

use rand::Rng;
use rand::rngs::SmallRng;

use super::config::{Detector, FilterKind, ScorerKind};
use super::{Candidate, LocalLoad, RequestFeatures};
use crate::model::{EndpointId, EndpointState, Load, Snapshot};

pub(super) fn candidate(
    index: usize,
    state: &EndpointState,
    local: LocalLoad,
    matches: &[(EndpointId, usize)],
    fresh_after: SystemTime,
) -> Candidate {
    let sample = state.metrics.sample();
    // Scraped at or after `now - staleness` (a clock step backwards counts as fresh).
    let fresh = sample.is_some_and(|s| s.scraped_at >= fresh_after);
    let m = sample.map(|s| &s.metrics);
    let prefix_match = matches.iter().find(|(id, _)| *id == state.endpoint.id).map_or(0, |(_, n)| *n);
    Candidate {
        index,
        fresh,
        // A value the page did not have is unknown (NaN), not zero: an endpoint must not look
        // idle to a scorer because its page lacked the metric.
        queued: m.and_then(|m| m.queued).map_or(f64::NAN, |q| q as f64 + local.sent_since_scrape as f64),
        running: m.and_then(|m| m.running).map_or(f64::NAN, |r| r as f64),
        kv_usage: m.and_then(|m| m.kv_usage).unwrap_or(f64::NAN),
        // Saturating: the shared load comes from the wire (found by fuzzing).
        inflight: Load {
            requests: local.inflight.requests.saturating_add(state.shared_load.requests).max(0),
            tokens: local.inflight.tokens.saturating_add(state.shared_load.tokens).max(0),
        },
        prefix_match,
        score: 0.0,
    }
}

/// Pool saturation over the candidates (≥ 1.0 means saturated).
pub(super) fn saturation(detector: &Detector, snapshot: &Snapshot, cands: &[Candidate], now: SystemTime) -> f64 {
    if cands.is_empty() {
        return 1.0;
    }
    let sum: f64 = cands.iter().map(|c| endpoint_saturation(detector, snapshot, c, now)).sum();
    match detector {
        Detector::Utilization { .. } => sum / cands.len() as f64,
        Detector::Concurrency { .. } => sum / cands.len() as f64,
    }
}

fn endpoint_saturation(detector: &Detector, snapshot: &Snapshot, c: &Candidate, now: SystemTime) -> f64 {
    match *detector {
        Detector::Utilization { queue_threshold, kv_threshold, staleness, .. } => {
            let fresh = snapshot.endpoints[c.index].metrics.age(now).is_some_and(|a| a <= staleness);
            if !fresh {
                return 1.0;
            }
            // f64::max ignores an unknown (NaN) side; both unknown count as saturated.
            let s = (c.queued / queue_threshold).max(c.kv_usage / kv_threshold);
            if s.is_nan() { 1.0 } else { s }
        }
        Detector::Concurrency { tokens, max_requests, max_tokens, .. } => {
            if tokens {
                c.inflight.tokens as f64 / max_tokens
            } else {
                c.inflight.requests as f64 / max_requests
            }
        }
    }
}

pub(super) fn filter(
    f: &FilterKind,
    snapshot: &Snapshot,
    cands: Vec<Candidate>,
    req: &RequestFeatures<'_>,
    total_blocks: usize,
    now: SystemTime,
    rng: &mut SmallRng,
) -> Vec<Candidate> {
    match f {
        FilterKind::Detector(Detector::Utilization { queue_threshold, kv_threshold, staleness, headroom }) => {
            let (q_limit, kv_limit) = (queue_threshold * (1.0 + headroom), kv_threshold * (1.0 + headroom));
            let kept: Vec<Candidate> = cands
                .iter()
                .filter(|c| {
                    let fresh = snapshot.endpoints[c.index].metrics.age(now).is_some_and(|a| a <= *staleness);
                    fresh && c.queued < q_limit && c.kv_usage < kv_limit
                })
                .cloned()
                .collect();
            // Fail open, as upstream: nothing passes → keep everything.
            if kept.is_empty() { cands } else { kept }
        }
        FilterKind::Detector(Detector::Concurrency { tokens, max_requests, max_tokens, headroom }) => cands
            .into_iter()
            .filter(|c| {
                if *tokens {
                    (c.inflight.tokens as f64) < (max_tokens * (1.0 + headroom)).floor()
                } else {
                    (c.inflight.requests as f64) < (max_requests * (1.0 + headroom)).floor()
                }
            })
            .collect(),
        FilterKind::HeaderBasedTesting => {
            let Some(list) = req.test_selection else { return Vec::new() };
            let wanted: Vec<&str> = list.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
            cands
                .into_iter()
                .filter(|c| {
                    let addr = snapshot.endpoints[c.index].endpoint.address.as_str();
                    let ip = host(addr);
                    wanted.iter().any(|w| *w == addr || w.trim_start_matches('[').trim_end_matches(']') == ip)
                })
                .collect()
        }
        FilterKind::PrefixAffinity { threshold, exploration } => {
            if total_blocks == 0 || rng.random_bool(exploration.clamp(0.0, 1.0)) {
                return cands;
            }
            let kept: Vec<Candidate> =
                cands.iter().filter(|c| c.prefix_match as f64 / total_blocks as f64 >= *threshold).cloned().collect();
            if kept.is_empty() { cands } else { kept }
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
    snapshot: &Snapshot,
    cands: &mut [Candidate],
    req: &RequestFeatures<'_>,
    total_blocks: usize,
) {
    let add = |c: &mut Candidate, v: f64| c.score += weight * v.clamp(0.0, 1.0);
    match s {
        ScorerKind::Queue => min_max(cands, |c| c.queued, add),
        ScorerKind::RunningRequests => min_max(cands, |c| c.running, add),
        ScorerKind::KvCache => cands.iter_mut().for_each(|c| {
            let v = if c.fresh && !c.kv_usage.is_nan() { 1.0 - c.kv_usage } else { 0.0 };
            add(c, v)
        }),
        ScorerKind::PrefixCache => {
            if total_blocks > 0 {
                cands.iter_mut().for_each(|c| {
                    let v = c.prefix_match as f64 / total_blocks as f64;
                    add(c, v)
                });
            }
        }
        ScorerKind::TokenLoad { threshold_tokens } => cands.iter_mut().for_each(|c| {
            let t = c.inflight.tokens as f64;
            let v = if t <= 0.0 { 1.0 } else { 1.0 - t.min(threshold_tokens) / threshold_tokens };
            add(c, v)
        }),
        ScorerKind::LoraAffinity => cands.iter_mut().for_each(|c| {
            let m = snapshot.endpoints[c.index].metrics.sample().map(|s| &s.metrics);
            let running = m.and_then(|m| m.running_lora.as_deref()).unwrap_or_default();
            let waiting = m.and_then(|m| m.waiting_lora.as_deref()).unwrap_or_default();
            let model = req.target_model;
            // An engine that reports no LoRA state at all (SGLang, Triton pages) is unknown, not
            // full: upstream scores it 0, which steers every request of a mixed pool, base-model
            // ones included, onto the engines that do report (found by `bench routing`'s
            // heterogeneous workload). It gets the score of a free slot.
            let Some(max) = m.and_then(|m| m.max_lora).map(|x| x as usize) else {
                add(c, 0.8);
                return;
            };
            let v = if running.iter().any(|a| a == model) {
                1.0
            } else if distinct(running, waiting) < max {
                0.8
            } else if waiting.iter().any(|a| a == model) {
                0.6
            } else {
                0.0
            };
            add(c, v)
        }),
    }
}

fn distinct(a: &[String], b: &[String]) -> usize {
    let mut all: Vec<&str> = a.iter().chain(b).map(String::as_str).collect();
    all.sort_unstable();
    all.dedup();
    all.len()
}

/// Upstream's min-max normalization (lower is better) over fresh candidates; stale or unknown
/// ones score 0, the worst.
fn min_max(cands: &mut [Candidate], value: impl Fn(&Candidate) -> f64, add: impl Fn(&mut Candidate, f64)) {
    let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
    for c in cands.iter().filter(|c| c.fresh && !value(c).is_nan()) {
        let v = value(c);
        min = min.min(v);
        max = max.max(v);
    }
    for c in cands.iter_mut() {
        // Stale, or the value was missing from the page: the worst score, as never scraped.
        let v = if !c.fresh || value(c).is_nan() {
            0.0
        } else if max <= min {
            1.0
        } else {
            (max - value(c)) / (max - min)
        };
        add(c, v);
    }
}
