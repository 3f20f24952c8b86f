//! The simulated engine: an iteration-level scheduler with a KV-cache budget, a prefix cache and
//! LoRA slots. Pure and deterministic: time is passed in, randomness comes from a seeded RNG.
//!
//! Each iteration ("step") the engine
//! 1. admits waiting requests in arrival order while the batch has room (`max_num_seqs`), the KV
//!    cache has blocks for the request's prompt plus its output budget, and its LoRA adapter is
//!    loaded or a slot is free (`max_lora`); a request that cannot get a slot is skipped, one that
//!    cannot get KV blocks blocks the queue (head of line, as vLLM);
//! 2. takes `decode_base + decode_per_seq × batch + uncached_prompt_tokens / prefill_rate
//!    (+ lora_load for each newly loaded adapter)` seconds;
//! 3. at its end every running request has one more token; the newly admitted ones get their first.
//!
//! The prefix cache is a per-server LRU of prompt block hashes (capacity = KV blocks): a prompt
//! whose leading blocks are cached only prefills the rest.

use std::collections::{HashMap, HashSet, VecDeque};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, PartialEq)]
pub struct ModelParams {
    pub kv_blocks: u32,
    pub block_size: u32,
    pub max_num_seqs: u32,
    pub max_lora: u32,
    pub prefill_tokens_per_s: f64,
    pub decode_base_s: f64,
    pub decode_per_seq_s: f64,
    pub lora_load_s: f64,
}

impl Default for ModelParams {
    /// Roughly an 8B model on one H100: ~7,000 blocks of 16 tokens, 12k prefill tokens/s,
    /// 12 ms per decode step plus 0.12 ms per sequence in the batch.
    fn default() -> Self {
        ModelParams {
            kv_blocks: 7000,
            block_size: 16,
            max_num_seqs: 256,
            max_lora: 4,
            prefill_tokens_per_s: 12_000.0,
            decode_base_s: 0.012,
            decode_per_seq_s: 0.000_12,
            lora_load_s: 0.02,
        }
    }
}

impl ModelParams {
    /// The same server `factor` times slower (prefill rate divided, decode and LoRA load times
    /// multiplied).
    pub fn slowed(&self, factor: f64) -> ModelParams {
        let f = if factor.is_finite() && factor > 0.0 { factor } else { 1.0 };
        ModelParams {
            prefill_tokens_per_s: self.prefill_tokens_per_s / f,
            decode_base_s: self.decode_base_s * f,
            decode_per_seq_s: self.decode_per_seq_s * f,
            lora_load_s: self.lora_load_s * f,
            ..self.clone()
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SimRequest {
    pub id: u64,
    pub prompt_tokens: u32,
    /// Chained hashes of the prompt's full blocks, in order.
    pub prompt_blocks: Vec<u64>,
    pub max_tokens: u32,
    pub adapter: Option<String>,
    pub arrived: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Token { id: u64, index: u32, cached_tokens: u32 },
    Finished { id: u64, reason: FinishReason, prompt_tokens: u32, completion_tokens: u32, cached_tokens: u32 },
}

#[derive(Debug, Clone)]
struct Running {
    req: SimRequest,
    target: u32,
    generated: u32,
    blocks: u32,
    cached_tokens: u32,
}

/// A cumulative histogram with fixed bounds, as Prometheus clients keep them.
#[derive(Debug, Clone, PartialEq)]
pub struct Hist {
    pub bounds: &'static [f64],
    /// `counts[i]` = observations `<= bounds[i]` (cumulative).
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Hist {
    pub fn new(bounds: &'static [f64]) -> Self {
        Hist { bounds, counts: vec![0; bounds.len()], sum: 0.0, count: 0 }
    }

    pub fn observe(&mut self, x: f64) {
        self.sum += x;
        self.count += 1;
        for (b, c) in self.bounds.iter().zip(&mut self.counts) {
            if x <= *b {
                *c += 1;
            }
        }
    }
}

pub const LATENCY_BUCKETS: [f64; 18] =
    [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0];
pub const E2E_BUCKETS: [f64; 17] =
    [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0];
pub const TOKEN_BUCKETS: [f64; 14] =
    [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 20000.0];

/// Counters and latency histograms for the metrics page.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub prompt_tokens: u64,
    pub generation_tokens: u64,
    pub finished_stop: u64,
    pub finished_length: u64,
    pub prefix_queries: u64,
    pub prefix_hits: u64,
    pub iterations: u64,
    pub ttft: Hist,
    pub e2e: Hist,
    pub queue_time: Hist,
    pub prompt_lens: Hist,
    pub output_lens: Hist,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            prompt_tokens: 0,
            generation_tokens: 0,
            finished_stop: 0,
            finished_length: 0,
            prefix_queries: 0,
            prefix_hits: 0,
            iterations: 0,
            ttft: Hist::new(&LATENCY_BUCKETS),
            e2e: Hist::new(&E2E_BUCKETS),
            queue_time: Hist::new(&E2E_BUCKETS),
            prompt_lens: Hist::new(&TOKEN_BUCKETS),
            output_lens: Hist::new(&TOKEN_BUCKETS),
        }
    }
}

#[derive(Debug)]
pub struct EngineCore {
    pub params: ModelParams,
    waiting: VecDeque<SimRequest>,
    running: Vec<Running>,
    used_blocks: u32,
    prefix: Lru,
    pub stats: Stats,
    rng: SmallRng,
}

impl EngineCore {
    pub fn new(params: ModelParams, seed: u64) -> Self {
        let capacity = params.kv_blocks as usize;
        EngineCore {
            params,
            waiting: VecDeque::new(),
            running: Vec::new(),
            used_blocks: 0,
            prefix: Lru::new(capacity),
            stats: Stats::default(),
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    pub fn submit(&mut self, req: SimRequest) {
        self.waiting.push_back(req);
    }

    /// Removes a request (client gone); frees its blocks.
    pub fn cancel(&mut self, id: u64) {
        self.waiting.retain(|r| r.id != id);
        if let Some(pos) = self.running.iter().position(|r| r.req.id == id) {
            let r = self.running.swap_remove(pos);
            self.used_blocks -= r.blocks;
        }
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn running(&self) -> usize {
        self.running.len()
    }

    pub fn kv_usage(&self) -> f64 {
        f64::from(self.used_blocks) / f64::from(self.params.kv_blocks.max(1))
    }

    pub fn running_adapters(&self) -> Vec<String> {
        let mut v: Vec<String> = self.running.iter().filter_map(|r| r.req.adapter.clone()).collect();
        v.sort();
        v.dedup();
        v
    }

    pub fn waiting_adapters(&self) -> Vec<String> {
        let mut v: Vec<String> = self.waiting.iter().filter_map(|r| r.adapter.clone()).collect();
        v.sort();
        v.dedup();
        v
    }

    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// Runs one iteration starting at `now` (seconds). Returns its duration and the events that
    /// happen at its end, or `None` when there is nothing to do.
    pub fn step(&mut self, now: f64) -> Option<(f64, Vec<Event>)> {
        if self.is_idle() {
            return None;
        }
        let (prefill_tokens, loads) = self.admit(now);
        let p = &self.params;
        let duration = p.decode_base_s
            + p.decode_per_seq_s * self.running.len() as f64
            + f64::from(prefill_tokens) / p.prefill_tokens_per_s
            + p.lora_load_s * f64::from(loads);
        let end = now + duration;
        self.stats.iterations += 1;
        let mut events = Vec::with_capacity(self.running.len());
        let mut i = 0;
        while i < self.running.len() {
            let r = &mut self.running[i];
            r.generated += 1;
            self.stats.generation_tokens += 1;
            events.push(Event::Token { id: r.req.id, index: r.generated - 1, cached_tokens: r.cached_tokens });
            if r.generated == 1 {
                self.stats.ttft.observe(end - r.req.arrived);
            }
            if r.generated >= r.target {
                let r = self.running.swap_remove(i);
                self.finish(r, end, &mut events);
            } else {
                i += 1;
            }
        }
        Some((duration, events))
    }

    fn admit(&mut self, now: f64) -> (u32, u32) {
        let mut prefill = 0u32;
        let mut loads = 0u32;
        let mut active: HashSet<String> = self.running.iter().filter_map(|r| r.req.adapter.clone()).collect();
        let mut idx = 0;
        while idx < self.waiting.len() && self.running.len() < self.params.max_num_seqs as usize {
            let req = &self.waiting[idx];
            let needs_slot = req.adapter.as_ref().is_some_and(|a| !active.contains(a));
            if needs_slot && active.len() >= self.params.max_lora as usize {
                idx += 1;
                continue;
            }
            let blocks = (req.prompt_tokens + req.max_tokens).div_ceil(self.params.block_size.max(1));
            if self.used_blocks + blocks > self.params.kv_blocks {
                break;
            }
            let Some(req) = self.waiting.remove(idx) else { break };
            if let Some(a) = &req.adapter
                && active.insert(a.clone())
            {
                loads += 1;
            }
            let cached_blocks = self.prefix.longest_prefix(&req.prompt_blocks);
            let cached_tokens = (cached_blocks * self.params.block_size).min(req.prompt_tokens.saturating_sub(1));
            self.stats.prefix_queries += u64::from(req.prompt_tokens);
            self.stats.prefix_hits += u64::from(cached_tokens);
            for &h in &req.prompt_blocks {
                self.prefix.insert(h);
            }
            prefill += req.prompt_tokens - cached_tokens;
            self.stats.queue_time.observe(now - req.arrived);
            self.used_blocks += blocks;
            // Most requests stop on their own before max_tokens.
            let target = if self.rng.random_bool(0.7) {
                self.rng.random_range(req.max_tokens.div_ceil(2)..=req.max_tokens).max(1)
            } else {
                req.max_tokens.max(1)
            };
            self.running.push(Running { req, target, generated: 0, blocks, cached_tokens });
        }
        (prefill, loads)
    }

    fn finish(&mut self, r: Running, end: f64, events: &mut Vec<Event>) {
        self.used_blocks -= r.blocks;
        let reason = if r.generated >= r.req.max_tokens { FinishReason::Length } else { FinishReason::Stop };
        match reason {
            FinishReason::Stop => self.stats.finished_stop += 1,
            FinishReason::Length => self.stats.finished_length += 1,
        }
        self.stats.prompt_tokens += u64::from(r.req.prompt_tokens);
        self.stats.e2e.observe(end - r.req.arrived);
        self.stats.prompt_lens.observe(f64::from(r.req.prompt_tokens));
        self.stats.output_lens.observe(f64::from(r.generated));
        events.push(Event::Finished {
            id: r.req.id,
            reason,
            prompt_tokens: r.req.prompt_tokens,
            completion_tokens: r.generated,
            cached_tokens: r.cached_tokens,
        });
    }
}

/// A bounded LRU set of block hashes (recency by a logical clock).
#[derive(Debug)]
struct Lru {
    capacity: usize,
    clock: u64,
    entries: HashMap<u64, u64>,
    order: std::collections::BTreeMap<u64, u64>,
}

impl Lru {
    fn new(capacity: usize) -> Self {
        Lru { capacity: capacity.max(1), clock: 0, entries: HashMap::new(), order: Default::default() }
    }

    fn insert(&mut self, h: u64) {
        self.clock += 1;
        if let Some(old) = self.entries.insert(h, self.clock) {
            self.order.remove(&old);
        }
        self.order.insert(self.clock, h);
        while self.entries.len() > self.capacity {
            if let Some((_, victim)) = self.order.pop_first() {
                self.entries.remove(&victim);
            }
        }
    }

    fn longest_prefix(&self, blocks: &[u64]) -> u32 {
        blocks.iter().take_while(|h| self.entries.contains_key(h)).count() as u32
    }
}

#[cfg(test)]
#[path = "model_tests.rs"]
mod tests;
