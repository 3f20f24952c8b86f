//! Scheduling: which endpoint serves a request. Pure: it takes a snapshot, this picker's local
//! counters, the request's features and a seeded RNG, and returns a decision.
//!
//! Pipeline (one profile, as upstream's `single-profile-handler`): admission (sheddable requests
//! are rejected when the pool is saturated) → filters → weighted scorers → picker.
//!
//! Deliberate differences from upstream (its known traps):
//! - an endpoint that was never scraped, or whose metrics are older than the staleness threshold,
//!   gets the worst load scores instead of looking idle;
//! - when no endpoint has fresh metrics, load scorers are skipped (load-agnostic choice) rather
//!   than scoring garbage or failing;
//! - requests this picker sent since the endpoint's last scrape count as queued, and totals within
//!   `tie_epsilon` of the best are treated as ties broken at random, so pickers sharing one
//!   snapshot do not all pile onto the same "best" endpoint;
//! - except for a prompt no endpoint is known to cache (with a prefix scorer configured): its ties
//!   go to the endpoint that ranks first for the prompt's first block (rendezvous hashing). Every
//!   picker then sends the same new prompt to the same endpoint before any of them has heard of
//!   the others' routing, and different prompts still spread.

mod columns;
pub mod config;
pub mod prefix;
mod score;
pub use score::host;
#[cfg(test)]
mod latency_tests;
#[cfg(test)]
mod recorded;
#[cfg(test)]
mod tests;

use std::time::SystemTime;

use rand::Rng;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use thiserror::Error;

pub use columns::Columns;
pub use config::{Detector, FilterKind, PickerKind, PrefixParams, Profile, SchedulerConfig, ScorerKind};
pub use prefix::{PrefixIndex, hash_blocks};

use crate::model::{Load, Snapshot};

/// What the scheduler knows about the request.
#[derive(Debug, Clone, Default)]
pub struct RequestFeatures<'a> {
    /// Model after rewrites (what the endpoint will serve).
    pub target_model: &'a str,
    pub priority: i32,
    /// Bytes the prefix index hashes (messages, prompt, input…).
    pub prefix_input: &'a [u8],
    pub cache_salt: &'a str,
    /// Estimated prompt + output tokens (for token-based load).
    pub estimated_tokens: i64,
    /// `test-epp-endpoint-selection` header, for `header-based-testing-filter`.
    pub test_selection: Option<&'a str>,
}

/// This picker's own view of each snapshot endpoint (same order as `snapshot.endpoints`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LocalLoad {
    /// Requests this picker routed to the endpoint since its metrics were scraped.
    pub sent_since_scrape: u64,
    /// Requests and tokens in flight from this picker.
    pub inflight: Load,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Snapshot indices, primary first (more than one when the picker returns fallbacks).
    pub endpoints: Vec<usize>,
    /// Prefix hashes of the request, to record for the primary endpoint.
    pub prefix_hashes: Vec<u64>,
    /// Block size used for hashing (tokens).
    pub block_size_tokens: usize,
    /// True when no candidate had fresh metrics and load was ignored.
    pub load_agnostic: bool,
    /// The longest run of the request's blocks any endpoint is known to cache (for
    /// `inference_extension_prefix_indexer_hit_ratio`).
    pub prefix_matched_blocks: usize,
}

/// Why the primary won, for a traced request: each scorer's weighted score for the primary and
/// the runner-up (the best other candidate), over the candidates left after the filters.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// Candidates the scorers saw (after the filters).
    pub considered: usize,
    /// Snapshot index of the runner-up, when there was one.
    pub runner_up: Option<usize>,
    /// (scorer type, weighted score of the primary, of the runner-up).
    pub scores: Vec<(&'static str, f64, Option<f64>)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ScheduleError {
    #[error("failed to find endpoint candidates for serving the request")]
    NoCandidates,
    #[error("system saturated, sheddable request dropped")]
    Saturated,
    #[error("failed to find target endpoint: no endpoints available for the given request after filtering")]
    AllFiltered,
}

/// This picker's counters per snapshot endpoint, read by a decision for the candidates it scores
/// (the picker reads its atomics in place rather than copying every endpoint's first).
/// The two parts are read apart: a profile that reads only one does not pay for the other.
pub trait LocalLoads {
    /// [`LocalLoad::sent_since_scrape`] of snapshot endpoint `i`.
    fn sent_since_scrape(&self, i: usize) -> u64;
    /// [`LocalLoad::inflight`] of snapshot endpoint `i`.
    fn inflight(&self, i: usize) -> Load;

    fn local_load(&self, i: usize) -> LocalLoad {
        LocalLoad { sent_since_scrape: self.sent_since_scrape(i), inflight: self.inflight(i) }
    }

    /// [`sent_since_scrape`](Self::sent_since_scrape) of each of `candidates` (one call per
    /// decision rather than one per candidate).
    fn sent_since_scrape_of(&self, candidates: &[usize]) -> Vec<u64> {
        candidates.iter().map(|&i| self.sent_since_scrape(i)).collect()
    }

    /// Seconds to first token per queued request (the request itself counted) this picker has
    /// observed at endpoint `i`, smoothed; NaN until it has seen one.
    fn seconds_per_queued(&self, _i: usize) -> f64 {
        f64::NAN
    }
}

/// Counters in snapshot order; an index past the end has none.
impl LocalLoads for [LocalLoad] {
    fn sent_since_scrape(&self, i: usize) -> u64 {
        self.get(i).map_or(0, |l| l.sent_since_scrape)
    }

    fn inflight(&self, i: usize) -> Load {
        self.get(i).map_or_else(Load::default, |l| l.inflight)
    }
}

impl LocalLoads for Vec<LocalLoad> {
    fn sent_since_scrape(&self, i: usize) -> u64 {
        self.as_slice().sent_since_scrape(i)
    }

    fn inflight(&self, i: usize) -> Load {
        self.as_slice().inflight(i)
    }
}

impl<const N: usize> LocalLoads for [LocalLoad; N] {
    fn sent_since_scrape(&self, i: usize) -> u64 {
        self.as_slice().sent_since_scrape(i)
    }

    fn inflight(&self, i: usize) -> Load {
        self.as_slice().inflight(i)
    }
}

/// No local load (a picker that sent nothing).
impl LocalLoads for () {
    fn sent_since_scrape(&self, _: usize) -> u64 {
        0
    }

    fn inflight(&self, _: usize) -> Load {
        Load::default()
    }
}

/// What a decision reads besides the request: the snapshot and its columns, this picker's
/// counters, the prefix index and the time.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub snapshot: &'a Snapshot,
    /// [`Columns::new`] of `snapshot`.
    pub columns: &'a Columns,
    pub local: &'a dyn LocalLoads,
    pub prefix: &'a PrefixIndex,
    pub now: SystemTime,
}

pub struct Scheduler {
    pub config: SchedulerConfig,
    /// Told how long each plugin ran (index into [`Scheduler::plugins`]), when set.
    timer: Option<PluginTimer>,
    /// The candidate fields the profile's plugins read.
    needs: score::Needs,
}

/// Receives `(plugin index, time it took)` for every plugin that ran (the picker's
/// `inference_extension_plugin_duration_seconds`, with handles resolved once).
pub type PluginTimer = std::sync::Arc<dyn Fn(usize, std::time::Duration) + Send + Sync>;

impl Scheduler {
    pub fn new(config: SchedulerConfig) -> Self {
        let needs = score::Needs::of(&config.profile);
        Scheduler { config, timer: None, needs }
    }

    /// Times every plugin from now on.
    pub fn with_plugin_timer(mut self, timer: PluginTimer) -> Self {
        self.timer = Some(timer);
        self
    }

    /// The profile's plugins, in the order a decision runs them: `(extension point, type)`;
    /// the index is what the plugin timer receives.
    pub fn plugins(&self) -> Vec<(&'static str, &'static str)> {
        let p = &self.config.profile;
        let filters = p.filters.iter().map(|f| ("Filter", f.type_name()));
        let scorers = p.scorers.iter().map(|(s, _)| ("Scorer", s.type_name()));
        filters.chain(scorers).chain(std::iter::once(("Picker", p.picker.type_name()))).collect()
    }

    fn time(&self, plugin: usize, started: Option<tokio::time::Instant>) {
        if let (Some(timer), Some(t)) = (&self.timer, started) {
            timer(plugin, t.elapsed());
        }
    }

    /// The profile's scorers that count for a decision, with their position: load scorers are
    /// left out when no candidate has fresh metrics.
    fn active_scorers(&self, load_agnostic: bool) -> impl Iterator<Item = (usize, ScorerKind, f64)> + '_ {
        let scorers = self.config.profile.scorers.iter().enumerate();
        scorers.filter(move |(_, (s, _))| !(load_agnostic && s.is_load())).map(|(i, (s, w))| (i, *s, *w))
    }

    fn clock(&self) -> Option<tokio::time::Instant> {
        self.timer.as_ref().map(|_| tokio::time::Instant::now())
    }

    /// Schedules among `candidates` (snapshot indices already restricted by subset hints).
    pub fn schedule(
        &self,
        view: &View<'_>,
        candidates: &[usize],
        req: &RequestFeatures<'_>,
        rng: &mut SmallRng,
    ) -> Result<Decision, ScheduleError> {
        self.schedule_explained(view, candidates, req, rng, false).map(|(d, _)| d)
    }

    /// [`schedule`](Self::schedule), and with `explain` the per-scorer scores of the primary and
    /// the runner-up (costs one more pass per scorer: only for traced requests).
    pub fn schedule_explained(
        &self,
        view: &View<'_>,
        candidates: &[usize],
        req: &RequestFeatures<'_>,
        rng: &mut SmallRng,
        explain: bool,
    ) -> Result<(Decision, Option<Explanation>), ScheduleError> {
        let View { snapshot, columns, local, prefix, now } = *view;
        if candidates.is_empty() {
            return Err(ScheduleError::NoCandidates);
        }
        let block_size_tokens = self.block_size(snapshot, candidates);
        let prefix_hashes = hash_blocks(
            req.target_model,
            req.cache_salt,
            req.prefix_input,
            block_size_tokens,
            self.config.prefix.max_blocks,
        );
        let matches = prefix.match_lengths(&prefix_hashes);
        // (snapshot index, matched blocks): the endpoints are distinct, so are their indices.
        let matched: Vec<(usize, usize)> =
            matches.iter().filter_map(|(id, n)| columns.index_of(id).map(|i| (i, *n))).collect();
        let fresh_after = columns::nanos(now.checked_sub(self.config.staleness).unwrap_or(SystemTime::UNIX_EPOCH));
        let mut needs = self.needs;
        if req.priority < 0 {
            needs.detector(&self.config.detector);
        }
        let mut cands = score::Cands::gather(candidates, columns, local, &matched, fresh_after, needs);

        if req.priority < 0 && score::saturation(&self.config.detector, columns, &cands, now) >= 1.0 {
            return Err(ScheduleError::Saturated);
        }
        let n_filters = self.config.profile.filters.len();
        for (i, f) in self.config.profile.filters.iter().enumerate() {
            let t = self.clock();
            score::filter(f, snapshot, columns, &mut cands, req, prefix_hashes.len(), now, rng);
            self.time(i, t);
            if cands.is_empty() {
                return Err(ScheduleError::AllFiltered);
            }
        }
        let load_agnostic = !cands.fresh.iter().any(|f| *f);
        let unscored = explain.then(|| cands.clone());
        let mut total_weight = 0.0;
        for (i, scorer, weight) in self.active_scorers(load_agnostic) {
            total_weight += weight;
            let t = self.clock();
            score::add_scores(scorer, weight, columns, &mut cands, req, prefix_hashes.len());
            self.time(n_filters + i, t);
        }
        // A prompt nobody is known to cache: ties follow its first block (see the module doc).
        let affinity = (matches.is_empty()
            && self.config.profile.scorers.iter().any(|(s, _)| *s == ScorerKind::PrefixCache))
        .then(|| prefix_hashes.first().copied())
        .flatten()
        .map(|h| (h, snapshot));
        let totals: Option<Vec<(usize, f64)>> =
            explain.then(|| cands.index.iter().copied().zip(cands.score.iter().copied()).collect());
        let t = self.clock();
        let endpoints = self.pick(&cands, total_weight, affinity, rng);
        self.time(n_filters + self.config.profile.scorers.len(), t);
        let explanation = match (unscored, totals, endpoints.first()) {
            (Some(unscored), Some(totals), Some(&primary)) => {
                Some(self.explain(unscored, &totals, primary, load_agnostic, columns, req, prefix_hashes.len()))
            }
            _ => None,
        };
        let prefix_matched_blocks = matches.iter().map(|(_, n)| *n).max().unwrap_or(0);
        Ok((
            Decision { endpoints, prefix_hashes, block_size_tokens, load_agnostic, prefix_matched_blocks },
            explanation,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn explain(
        &self,
        unscored: score::Cands,
        totals: &[(usize, f64)],
        primary: usize,
        load_agnostic: bool,
        columns: &Columns,
        req: &RequestFeatures<'_>,
        total_blocks: usize,
    ) -> Explanation {
        let runner_up =
            totals.iter().filter(|(i, _)| *i != primary).max_by(|a, b| a.1.total_cmp(&b.1)).map(|(i, _)| *i);
        let mut scores = Vec::new();
        for (_, scorer, weight) in self.active_scorers(load_agnostic) {
            let mut one = unscored.clone();
            score::add_scores(scorer, weight, columns, &mut one, req, total_blocks);
            let of = |idx: usize| one.score_of(idx);
            scores.push((scorer.type_name(), of(primary).unwrap_or(0.0), runner_up.and_then(of)));
        }
        Explanation { considered: unscored.len(), runner_up, scores }
    }

    /// Upstream's auto-tune: the first candidate's cache block size when known.
    fn block_size(&self, snapshot: &Snapshot, candidates: &[usize]) -> usize {
        let p = &self.config.prefix;
        if p.auto_tune
            && let Some(bs) = candidates
                .iter()
                .find_map(|&i| snapshot.endpoints[i].metrics.sample().and_then(|s| s.metrics.cache_block_size))
                .filter(|bs| *bs > 0)
        {
            return bs as usize;
        }
        p.block_size_tokens
    }

    /// Index capacity for an endpoint: its KV block count when auto-tuned and known.
    pub fn prefix_capacity(&self, snapshot: &Snapshot, index: usize) -> usize {
        let p = &self.config.prefix;
        let blocks = snapshot.endpoints[index].metrics.sample().and_then(|s| s.metrics.cache_num_blocks);
        match blocks {
            Some(b) if p.auto_tune && b > 0 => b as usize,
            _ => p.lru_capacity_per_server,
        }
    }

    fn pick(
        &self,
        cands: &score::Cands,
        total_weight: f64,
        affinity: Option<(u64, &Snapshot)>,
        rng: &mut SmallRng,
    ) -> Vec<usize> {
        let (index, score) = (&cands.index, &cands.score);
        // Positions into the candidates, reordered as the picker ranks them.
        let mut order: Vec<usize> = (0..index.len()).collect();
        match self.config.profile.picker {
            PickerKind::Random { n } => {
                order.shuffle(rng);
                order.iter().take(n).map(|&c| index[c]).collect()
            }
            PickerKind::MaxScore { n } => {
                // Totals within epsilon of the best are ties; one of them, chosen uniformly, is
                // the primary. O(n): no sort unless fallbacks are wanted.
                let eps = self.config.tie_epsilon * total_weight.max(1.0);
                let best = score.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let tied = score.iter().enumerate().filter(|(_, s)| **s >= best - eps).map(|(c, _)| c);
                let pos = match affinity {
                    Some((block, snapshot)) => tied
                        .max_by_key(|&c| {
                            xxhash_rust::xxh64::xxh64(
                                snapshot.endpoints[index[c]].endpoint.id.as_str().as_bytes(),
                                block,
                            )
                        })
                        .unwrap_or(0),
                    None => {
                        // NaN scores (metrics from the wire) tie with nothing: then the first
                        // candidate, rather than a panic on an empty range (found by fuzzing).
                        let k = rng.random_range(0..tied.clone().count().max(1));
                        tied.clone().nth(k).unwrap_or(0)
                    }
                };
                if n == 1 {
                    return vec![index[pos]];
                }
                order.swap(0, pos);
                let rest = &mut order[1..];
                rest.shuffle(rng);
                rest.sort_by(|a, b| score[*b].total_cmp(&score[*a]));
                order.iter().take(n).map(|&c| index[c]).collect()
            }
            PickerKind::WeightedRandom { n } => {
                if score.iter().all(|s| *s <= 0.0) {
                    order.shuffle(rng);
                    return order.iter().take(n).map(|&c| index[c]).collect();
                }
                let mut keyed: Vec<(f64, usize)> = index
                    .iter()
                    .zip(score)
                    .map(|(&i, &s)| {
                        let key = if s <= 0.0 {
                            0.0
                        } else {
                            let u: f64 = rng.random::<f64>().max(1e-10);
                            u.powf(1.0 / s)
                        };
                        (key, i)
                    })
                    .collect();
                keyed.sort_by(|a, b| b.0.total_cmp(&a.0));
                keyed.into_iter().take(n).map(|(_, i)| i).collect()
            }
        }
    }
}

impl ScorerKind {
    /// Scorers that read load metrics (skipped when nothing is fresh).
    pub fn is_load(self) -> bool {
        matches!(
            self,
            ScorerKind::Queue | ScorerKind::KvCache | ScorerKind::RunningRequests | ScorerKind::LearnedLatency
        )
    }
}
