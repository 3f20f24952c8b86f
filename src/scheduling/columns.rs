//! The snapshot's scored fields laid out by field, built once when a snapshot is applied, so a
//! decision does arithmetic over contiguous arrays instead of following every endpoint's metrics
//! sample. What a column holds is exactly what the scorers read from the snapshot (a value the
//! page lacked is NaN, a never-scraped endpoint has no scrape time), so decisions do not change
//! (`recorded.rs` holds them to a recording).

use std::collections::HashMap;
use std::time::SystemTime;

use crate::model::{EndpointId, Load, Snapshot};

/// `t` in ns since the epoch (negative before it), saturating.
pub(crate) fn nanos(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

/// Never scraped: older than any time.
pub(super) const NEVER: i64 = i64::MIN;

#[derive(Debug, Default)]
pub struct Columns {
    /// When the metrics were scraped (ns, [`NEVER`] when never).
    pub(super) scraped: Vec<i64>,
    /// Waiting requests (NaN when the page lacked them or never scraped).
    pub(super) queued: Vec<f64>,
    pub(super) running: Vec<f64>,
    pub(super) kv_usage: Vec<f64>,
    /// In-flight load the other pickers reported.
    pub(super) shared: Vec<Load>,
    /// Requests the pickers reported sending since the scrape (the picker's local counts add it).
    pub shared_sent: Vec<u64>,
    /// Endpoint → snapshot index (prefix matches name endpoints).
    index: HashMap<EndpointId, usize>,
    pub(super) lora: Lora,
}

/// LoRA state with adapter names numbered per snapshot: a decision looks its model up once and
/// compares numbers.
#[derive(Debug, Default)]
pub(super) struct Lora {
    names: HashMap<String, u32>,
    pub(super) slots: Vec<LoraSlot>,
    adapters: Vec<u32>,
}

#[derive(Debug, Clone, Copy, Default)]
pub(super) struct LoraSlot {
    /// `max_lora`; `None` when the engine reports no LoRA state.
    pub(super) max: Option<u32>,
    /// Distinct adapters running or waiting.
    pub(super) distinct: usize,
    running: (u32, u32),
    waiting: (u32, u32),
}

impl Lora {
    /// The number of `model` in this snapshot, if any endpoint lists it.
    pub(super) fn adapter(&self, model: &str) -> Option<u32> {
        self.names.get(model).copied()
    }

    pub(super) fn running(&self, slot: &LoraSlot, adapter: u32) -> bool {
        self.list(slot.running).contains(&adapter)
    }

    pub(super) fn waiting(&self, slot: &LoraSlot, adapter: u32) -> bool {
        self.list(slot.waiting).contains(&adapter)
    }

    fn list(&self, (start, len): (u32, u32)) -> &[u32] {
        &self.adapters[start as usize..(start + len) as usize]
    }

    fn push(&mut self, names: &[String]) -> (u32, u32) {
        let start = self.adapters.len() as u32;
        for name in names {
            let next = self.names.len() as u32;
            let id = *self.names.entry(name.clone()).or_insert(next);
            self.adapters.push(id);
        }
        (start, self.adapters.len() as u32 - start)
    }
}

impl Columns {
    pub fn new(snapshot: &Snapshot) -> Self {
        let n = snapshot.endpoints.len();
        let mut c = Columns {
            scraped: Vec::with_capacity(n),
            queued: Vec::with_capacity(n),
            running: Vec::with_capacity(n),
            kv_usage: Vec::with_capacity(n),
            shared: Vec::with_capacity(n),
            shared_sent: Vec::with_capacity(n),
            index: HashMap::with_capacity(n),
            lora: Lora { slots: Vec::with_capacity(n), ..Lora::default() },
        };
        for (i, e) in snapshot.endpoints.iter().enumerate() {
            let sample = e.metrics.sample();
            let m = sample.map(|s| &s.metrics);
            c.scraped.push(sample.map_or(NEVER, |s| nanos(s.scraped_at)));
            c.queued.push(m.and_then(|m| m.queued).map_or(f64::NAN, |q| q as f64));
            c.running.push(m.and_then(|m| m.running).map_or(f64::NAN, |r| r as f64));
            c.kv_usage.push(m.and_then(|m| m.kv_usage).unwrap_or(f64::NAN));
            c.shared.push(e.shared_load);
            c.shared_sent.push(e.shared_sent_since_scrape);
            c.index.entry(e.endpoint.id.clone()).or_insert(i);
            let empty: &[String] = &[];
            let running = m.and_then(|m| m.running_lora.as_deref()).unwrap_or(empty);
            let waiting = m.and_then(|m| m.waiting_lora.as_deref()).unwrap_or(empty);
            let slot = LoraSlot {
                max: m.and_then(|m| m.max_lora),
                distinct: distinct(running, waiting),
                running: c.lora.push(running),
                waiting: c.lora.push(waiting),
            };
            c.lora.slots.push(slot);
        }
        c
    }

    pub fn len(&self) -> usize {
        self.scraped.len()
    }

    pub fn is_empty(&self) -> bool {
        self.scraped.is_empty()
    }

    /// Waiting requests of endpoint `i` as scraped (NaN: unknown or no such endpoint).
    pub fn queued(&self, i: usize) -> f64 {
        self.queued.get(i).copied().unwrap_or(f64::NAN)
    }

    /// The snapshot index of `id`.
    pub fn index_of(&self, id: &EndpointId) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// Scraped at or after `since` (ns).
    pub(super) fn fresh(&self, i: usize, since: i64) -> bool {
        self.scraped[i] >= since
    }
}

fn distinct(a: &[String], b: &[String]) -> usize {
    let mut all: Vec<&str> = a.iter().chain(b).map(String::as_str).collect();
    all.sort_unstable();
    all.dedup();
    all.len()
}
