//! The approximate prefix-cache index: which endpoints probably hold the KV blocks of a prompt's
//! prefix, learnt from where earlier requests were routed.
//!
//! Prompts are cut into blocks of `block_size_tokens × 4` bytes (4 characters per token), hashed in
//! a chain seeded by the target model and `cache_salt` (so models never collide), and truncated to
//! `max_blocks`. Each endpoint keeps a bounded LRU of the hashes routed to it; the reverse map
//! `hash → endpoints` answers lookups. Capacity per endpoint is its KV-cache block count when known
//! (`autoTune`), else `lruCapacityPerServer` (upstream ignores that parameter; here it works).
//! A cap on the whole index (`maxIndexEntries`, a Switchyard extension) bounds a picker's memory
//! however many endpoints the pool has: each endpoint gets an equal share of it (see
//! [`PrefixIndex`]). The index is approximate: it does not know what a server actually evicted.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use xxhash_rust::xxh64::Xxh64;

use crate::model::EndpointId;

pub const CHARS_PER_TOKEN: usize = 4;

/// Hashes the prefix blocks of `input`. Input shorter than one block gives no hashes; a trailing
/// partial block is hashed too (as upstream).
pub fn hash_blocks(
    model: &str,
    cache_salt: &str,
    input: &[u8],
    block_size_tokens: usize,
    max_blocks: usize,
) -> Vec<u64> {
    // Saturating: `blockSizeTokens` is the operator's (a huge one means no block fits; found by
    // fuzzing, it wrapped to 0 and `chunks` panicked).
    let block_bytes = block_size_tokens.max(1).saturating_mul(CHARS_PER_TOKEN);
    if input.len() < block_bytes {
        return Vec::new();
    }
    let mut seed = Xxh64::new(0);
    seed.write(model.as_bytes());
    seed.write(cache_salt.as_bytes());
    let mut prev = seed.finish();
    input
        .chunks(block_bytes)
        .take(max_blocks)
        .map(|block| {
            let mut h = Xxh64::new(0);
            h.write(block);
            h.write(&prev.to_le_bytes());
            prev = h.finish();
            prev
        })
        .collect()
}

/// Block hashes are xxh64 outputs already: one multiply and shift spreads them over a table's
/// buckets and tag bits, where SipHash would cost more than the lookup itself.
#[derive(Debug, Default)]
struct BlockHasher(u64);

impl Hasher for BlockHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys use this hasher; bytes are folded in for completeness.
        for &b in bytes {
            self.write_u64(self.0 ^ u64::from(b));
        }
    }

    fn write_u64(&mut self, h: u64) {
        let x = (h ^ (h >> 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = x ^ (x >> 29);
    }
}

type BlockMap<V> = HashMap<u64, V, BuildHasherDefault<BlockHasher>>;

/// Shards of the reverse map. A lookup or insert holds one shard for one hash at a time, so
/// readers and writers meet only when they touch the same shard at the same moment.
const SHARDS: usize = 64;

/// Default cap on the whole index (`maxIndexEntries`), in (hash, endpoint) entries. An entry costs
/// ~208 B when the index is first filled and at most ~290 B once its hash tables have doubled under
/// churn (docs/benchmarks.md, "Picker memory"): 5,000,000 × 290 B = 1.45 GB at worst.
pub const DEFAULT_MAX_INDEX_ENTRIES: usize = 5_000_000;

#[derive(Debug, Default)]
struct ServerLru {
    capacity: usize,
    clock: u64,
    stamps: BlockMap<u64>,
    order: BTreeMap<u64, u64>,
    /// Set by `retain` when the endpoint left the pool: an `insert` that raced it must not add
    /// owners nobody would evict.
    removed: bool,
}

/// The index. Shared by every stream of a picker without an outer lock: all methods take
/// `&self`. Lookups take a shard's read lock per block hash and never wait for a whole insert or
/// a whole snapshot's learning; an insert holds its endpoint's LRU and one shard at a time.
///
/// Invariant: `(hash, id)` is in the reverse map iff `hash` is in the LRU of `id`. Every change to
/// an endpoint's reverse entries happens under that endpoint's LRU mutex (lock order: server map,
/// then LRU, then shard), so concurrent inserts, sweeps and `retain` keep it.
///
/// The cap on the whole index: each endpoint's LRU holds at most min(its own capacity, `share`),
/// where `share` = cap / endpoints in the index (at least 1), so the endpoints share the cap
/// equally and the total stays within `limit` = max(cap, endpoints). An insert trims its own LRU
/// to the share it reads (one atomic load). When the share shrinks (an endpoint joined), LRUs
/// filled under the old share are trimmed on their next insert, or by a sweep over every LRU as
/// soon as an insert finds the total above `limit`. Below the cap (every endpoint's capacity ≤ its
/// share) nothing changes: the same entries are kept and evicted as without it.
#[derive(Debug)]
pub struct PrefixIndex {
    owners: Box<[RwLock<BlockMap<Vec<EndpointId>>>]>,
    servers: RwLock<HashMap<EndpointId, Arc<Mutex<ServerLru>>>>,
    entries: AtomicUsize,
    max_entries: usize,
    /// Per-endpoint entries allowed by the cap; stored under the server map's write lock.
    share: AtomicUsize,
    /// The most entries the index may hold; stored with `share`.
    limit: AtomicUsize,
    /// Held by the one sweep running (others skip it: that sweep checks the total again when done).
    sweeping: AtomicBool,
    sweeps: AtomicU64,
}

impl Default for PrefixIndex {
    fn default() -> Self {
        Self::with_max_entries(DEFAULT_MAX_INDEX_ENTRIES)
    }
}

impl PrefixIndex {
    /// An index capped at [`DEFAULT_MAX_INDEX_ENTRIES`].
    pub fn new() -> Self {
        Self::default()
    }

    /// An index holding at most `max_entries` entries in all (at least one per endpoint).
    pub fn with_max_entries(max_entries: usize) -> Self {
        let max_entries = max_entries.max(1);
        PrefixIndex {
            owners: (0..SHARDS).map(|_| RwLock::default()).collect(),
            servers: RwLock::default(),
            entries: AtomicUsize::new(0),
            max_entries,
            share: AtomicUsize::new(max_entries),
            limit: AtomicUsize::new(max_entries),
            sweeping: AtomicBool::new(false),
            sweeps: AtomicU64::new(0),
        }
    }

    /// Total (hash, endpoint) entries.
    pub fn len(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cap on the whole index (`maxIndexEntries`).
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    /// Entries each endpoint may hold under the cap now (its own capacity may be lower).
    pub fn share(&self) -> usize {
        self.share.load(Ordering::Relaxed)
    }

    /// Sweeps run so far: each trimmed every LRU to the share after the share shrank.
    pub fn sweeps(&self) -> u64 {
        self.sweeps.load(Ordering::Relaxed)
    }

    fn shard(&self, hash: u64) -> &RwLock<BlockMap<Vec<EndpointId>>> {
        // Top bits: the shard's own table hashes the whole value (see `BlockHasher`).
        &self.owners[(hash >> 58) as usize % SHARDS]
    }

    /// Per endpoint, the number of leading blocks of `hashes` it holds (only endpoints with ≥ 1).
    pub fn match_lengths(&self, hashes: &[u64]) -> Vec<(EndpointId, usize)> {
        let Some(&first) = hashes.first() else { return Vec::new() };
        let mut out: Vec<(EndpointId, usize)> = match read(self.shard(first)).get(&first) {
            Some(owners) => owners.iter().map(|id| (id.clone(), 1)).collect(),
            None => return Vec::new(),
        };
        let mut alive: Vec<usize> = (0..out.len()).collect();
        for h in &hashes[1..] {
            let shard = read(self.shard(*h));
            let Some(owners) = shard.get(h) else { break };
            alive.retain(|&i| owners.contains(&out[i].0));
            drop(shard);
            if alive.is_empty() {
                break;
            }
            for &i in &alive {
                out[i].1 += 1;
            }
        }
        out
    }

    fn server(&self, id: &EndpointId) -> Arc<Mutex<ServerLru>> {
        if let Some(server) = read(&self.servers).get(id) {
            return server.clone();
        }
        let mut servers = write(&self.servers);
        let server = servers.entry(id.clone()).or_default().clone();
        self.set_share(servers.len());
        server
    }

    /// Called with the server map's write lock held, so shares are stored in the order the
    /// endpoint count changed.
    fn set_share(&self, endpoints: usize) {
        let share = (self.max_entries / endpoints.max(1)).max(1);
        self.share.store(share, Ordering::Relaxed);
        self.limit.store(self.max_entries.max(endpoints), Ordering::Relaxed);
    }

    /// Records that `hashes` were routed to `id`, evicting its least recent entries past `capacity`
    /// or past its share of the cap, whichever is smaller.
    pub fn insert(&self, id: &EndpointId, hashes: &[u64], capacity: usize) {
        if hashes.is_empty() {
            return;
        }
        let server = self.server(id);
        let mut guard = lock(&server);
        let s = &mut *guard;
        if s.removed {
            return;
        }
        let before = s.stamps.len();
        // Read under the LRU's lock: a sweep that trimmed this LRU did so to this share or a newer one.
        s.capacity = capacity.min(self.share.load(Ordering::Relaxed)).max(1);
        for &h in hashes {
            s.clock += 1;
            match s.stamps.insert(h, s.clock) {
                Some(old) => {
                    s.order.remove(&old);
                }
                None => {
                    let mut shard = write(self.shard(h));
                    let owners = shard.entry(h).or_default();
                    if !owners.contains(id) {
                        owners.push(id.clone());
                    }
                }
            }
            s.order.insert(s.clock, h);
        }
        self.evict_past_capacity(s, id);
        let after = s.stamps.len();
        if after < before {
            self.entries.fetch_sub(before - after, Ordering::Relaxed);
            return;
        }
        if after == before {
            return;
        }
        // SeqCst with the sweep's flag: either a running sweep sees this total when it finishes,
        // or this insert finds the flag free and sweeps itself (no total above the limit is missed).
        let total = self.entries.fetch_add(after - before, Ordering::SeqCst) + (after - before);
        drop(guard);
        if total > self.limit.load(Ordering::Relaxed) {
            self.sweep();
        }
    }

    /// Evicts `s`'s least recent entries past its capacity; returns how many.
    fn evict_past_capacity(&self, s: &mut ServerLru, id: &EndpointId) -> usize {
        let mut evicted = 0;
        while s.stamps.len() > s.capacity {
            let Some((_, victim)) = s.order.pop_first() else { break };
            s.stamps.remove(&victim);
            self.remove_owner(victim, id);
            evicted += 1;
        }
        evicted
    }

    /// Trims every LRU to the current share, until the total is within the limit. One sweep runs
    /// at a time; an insert that finds one running leaves the total to it. O(endpoints) lock
    /// acquisitions plus the evictions: it runs only after the share shrank (an endpoint joined
    /// while the index was full), not per insert.
    fn sweep(&self) {
        while self.entries.load(Ordering::SeqCst) > self.limit.load(Ordering::Relaxed) {
            if self.sweeping.compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst).is_err() {
                return;
            }
            let _release = ReleaseOnDrop(&self.sweeping);
            self.sweeps.fetch_add(1, Ordering::Relaxed);
            let servers: Vec<(EndpointId, Arc<Mutex<ServerLru>>)> =
                read(&self.servers).iter().map(|(id, s)| (id.clone(), s.clone())).collect();
            for (id, server) in &servers {
                let mut s = lock(server);
                let share = self.share.load(Ordering::Relaxed);
                if s.removed || s.stamps.len() <= share {
                    continue;
                }
                s.capacity = s.capacity.min(share).max(1);
                let evicted = self.evict_past_capacity(&mut s, id);
                self.entries.fetch_sub(evicted, Ordering::Relaxed);
            }
        }
    }

    /// Forgets endpoints that are no longer in the pool (the others' share of the cap grows).
    pub fn retain(&self, keep: impl Fn(&EndpointId) -> bool) {
        let gone: Vec<EndpointId> = read(&self.servers).keys().filter(|id| !keep(id)).cloned().collect();
        if gone.is_empty() {
            return;
        }
        let removed: Vec<(EndpointId, Arc<Mutex<ServerLru>>)> = {
            let mut servers = write(&self.servers);
            gone.into_iter().filter_map(|id| servers.remove(&id).map(|s| (id, s))).collect()
        };
        for (id, server) in removed {
            let mut s = lock(&server);
            s.removed = true;
            for h in s.stamps.keys() {
                self.remove_owner(*h, &id);
            }
            self.entries.fetch_sub(s.stamps.len(), Ordering::Relaxed);
            s.stamps = BlockMap::default();
            s.order.clear();
        }
        // The share grows only now, with the removed entries no longer counted: with fewer
        // endpoints the limit can fall (when the cap is below the endpoint count), and a total
        // still counting them would send inserts sweeping for entries that are already going.
        let servers = write(&self.servers);
        self.set_share(servers.len());
    }

    fn remove_owner(&self, hash: u64, id: &EndpointId) {
        let mut shard = write(self.shard(hash));
        if let Some(list) = shard.get_mut(&hash) {
            list.retain(|o| o != id);
            if list.is_empty() {
                shard.remove(&hash);
            }
        }
    }
}

/// Clears the sweep flag even if a sweep panics, so later sweeps still run.
struct ReleaseOnDrop<'a>(&'a AtomicBool);

impl Drop for ReleaseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

// A panic while holding one of these locks leaves the index consistent enough for an
// approximate cache: keep serving rather than poisoning every later pick.
fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests;
