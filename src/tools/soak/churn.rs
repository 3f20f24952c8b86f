//! The soak's churn and workload, as plain seeded data: which endpoints the watched endpoints file
//! lists (one added or removed per step) and the chat body of each request.
//!
//! Every endpoint added gets a name never used before, as a replaced Kubernetes pod does, so any
//! map or metric family keyed by endpoint that is not pruned grows with the run. Some additions
//! have nothing listening (a pod listed before its server is up): their scrapes fail.

use std::path::Path;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::discovery::{StaticEndpoint, StaticEndpoints};

/// One endpoint of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    pub port: u16,
    /// Nothing listens on `port`.
    pub dead: bool,
}

/// What a step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Added(Listed),
    Removed(Listed),
}

/// The endpoints the file lists and how the next step changes them.
#[derive(Debug)]
pub struct Churn {
    rng: SmallRng,
    /// Ports of the sim servers.
    sims: Vec<u16>,
    pub listed: Vec<Listed>,
    dead_share: f64,
    generation: u64,
    pub added: u64,
    pub removed: u64,
    pub added_dead: u64,
}

impl Churn {
    /// Starts with two thirds of the sims listed (at least one).
    pub fn new(sims: Vec<u16>, seed: u64, dead_share: f64) -> Self {
        let mut churn = Churn {
            rng: SmallRng::seed_from_u64(seed),
            sims,
            listed: Vec::new(),
            dead_share: dead_share.clamp(0.0, 1.0),
            generation: 0,
            added: 0,
            removed: 0,
            added_dead: 0,
        };
        let initial = (churn.sims.len() * 2 / 3).max(1);
        for port in churn.sims.clone().into_iter().take(initial) {
            let entry = churn.live(port);
            churn.listed.push(entry);
        }
        churn
    }

    fn live(&mut self, port: u16) -> Listed {
        self.generation += 1;
        Listed { name: format!("sim-{port}-g{}", self.generation), port, dead: false }
    }

    fn live_count(&self) -> usize {
        self.listed.iter().filter(|l| !l.dead).count()
    }

    /// Adds or removes one endpoint. `dead_port` gives a port nothing listens on, for a dead
    /// addition. The pool keeps at least a third of the sims live, and never lists more than
    /// every sim plus as many dead ones. `None` when nothing can change (a single sim, no port).
    pub fn step(&mut self, dead_port: impl FnOnce() -> Option<u16>) -> Option<Change> {
        let floor = (self.sims.len() / 3).max(1);
        let free: Vec<u16> =
            self.sims.iter().copied().filter(|p| !self.listed.iter().any(|l| !l.dead && l.port == *p)).collect();
        let can_remove = self.live_count() > floor || self.listed.iter().any(|l| l.dead);
        let full = self.listed.len() >= 2 * self.sims.len();
        let add = !can_remove || (!full && self.rng.random_bool(0.5));
        let dead = add && (free.is_empty() || self.rng.random_bool(self.dead_share));
        let dead_port = if dead { dead_port() } else { None };
        if add && (!free.is_empty() || dead_port.is_some()) {
            let entry = match dead_port {
                Some(port) => {
                    self.generation += 1;
                    self.added_dead += 1;
                    Listed { name: format!("dead-g{}", self.generation), port, dead: true }
                }
                None => {
                    let port = free[self.rng.random_range(0..free.len())];
                    self.live(port)
                }
            };
            self.added += 1;
            self.listed.push(entry.clone());
            return Some(Change::Added(entry));
        }
        // Remove one that may go: any dead one, or a live one above the floor.
        let removable: Vec<usize> =
            (0..self.listed.len()).filter(|&i| self.listed[i].dead || self.live_count() > floor).collect();
        if removable.is_empty() {
            return None;
        }
        let i = removable[self.rng.random_range(0..removable.len())];
        self.removed += 1;
        Some(Change::Removed(self.listed.remove(i)))
    }

    /// Writes the file the aggregators watch: to a temporary name, then renamed over it, so a
    /// poll never reads half of it.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let file = StaticEndpoints {
            endpoints: self
                .listed
                .iter()
                .map(|l| StaticEndpoint {
                    name: l.name.clone(),
                    address: "127.0.0.1".into(),
                    port: Some(l.port),
                    ports: Vec::new(),
                    labels: [(crate::metrics::DEFAULT_ENGINE_LABEL_KEY.to_string(), "vllm".to_string())]
                        .into_iter()
                        .collect(),
                    metrics_port: None,
                    metrics_path: None,
                })
                .collect(),
        };
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_saphyr::to_string(&file)?)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }
}

/// System prompts shared by many requests (so prefixes repeat and the prefix index learns them)
/// and a user turn unique to each request (so new blocks keep arriving and the index must stay
/// within its bounds): request `n` of stream `stream` under `seed`.
pub fn chat_body(seed: u64, systems: &[String], stream: usize, n: u64) -> Vec<u8> {
    const WORDS: [&str; 16] = [
        "latency", "cache", "token", "prefix", "model", "server", "queue", "batch", "stream", "route", "pod",
        "gateway", "block", "memory", "lease", "leader",
    ];
    let mut rng = SmallRng::seed_from_u64(seed ^ ((stream as u64) << 40) ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let system = systems.get(rng.random_range(0..systems.len().max(1))).map_or("", String::as_str);
    let user: Vec<&str> = (0..48).map(|_| WORDS[rng.random_range(0..WORDS.len())]).collect();
    serde_json::json!({
        "model": "meta-llama/Llama-3.1-8B-Instruct",
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": user.join(" ")}],
        "max_tokens": 16,
    })
    .to_string()
    .into_bytes()
}

/// `count` system prompts of about 768 bytes each.
pub fn system_prompts(seed: u64, count: usize) -> Vec<String> {
    (0..count)
        .map(|k| {
            let mut rng = SmallRng::seed_from_u64(seed.wrapping_add(k as u64));
            let rule = format!("Rule {k}: answer in at most {} sentences. ", rng.random_range(2..9));
            format!("You are assistant {k} of the soak. {}", rule.repeat(768 / rule.len() + 1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn churn_keeps_a_live_floor_and_never_reuses_a_name() {
        let sims: Vec<u16> = (9000..9012).collect();
        let mut churn = Churn::new(sims, 7, 0.25);
        let mut names: std::collections::BTreeSet<String> = churn.listed.iter().map(|l| l.name.clone()).collect();
        let mut next_dead = 20000;
        for _ in 0..2000 {
            if let Some(Change::Added(l)) = churn.step(|| {
                next_dead += 1;
                Some(next_dead)
            }) {
                assert!(names.insert(l.name.clone()), "name {} reused", l.name);
            }
            assert!(churn.live_count() >= 4, "live floor kept");
            assert!(churn.listed.len() <= 24);
            let live: Vec<u16> = churn.listed.iter().filter(|l| !l.dead).map(|l| l.port).collect();
            let unique: std::collections::BTreeSet<&u16> = live.iter().collect();
            assert_eq!(unique.len(), live.len(), "one live entry per sim");
        }
        assert_eq!(churn.added + churn.removed, 2000);
        assert!(churn.added_dead > 0 && churn.removed > 500, "{churn:?}");
    }

    #[test]
    fn bodies_repeat_system_prompts_and_differ_per_request() {
        let systems = system_prompts(3, 4);
        let (a, b) = (chat_body(3, &systems, 0, 1), chat_body(3, &systems, 0, 2));
        assert_ne!(a, b);
        assert_eq!(a, chat_body(3, &systems, 0, 1), "seeded");
        let v: serde_json::Value = serde_json::from_slice(&a).expect("json");
        assert!(systems.iter().any(|s| v["messages"][0]["content"] == *s.as_str()));
    }
}
