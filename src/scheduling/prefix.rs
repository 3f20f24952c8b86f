//! The approximate prefix-cache index: which endpoints probably hold the KV blocks of a prompt's
//! prefix, learnt from where earlier requests were routed.
//!
//! Prompts are cut into blocks of `block_size_tokens × 4` bytes (4 characters per token), hashed in
//! a chain seeded by the target model and `cache_salt` (so models never collide), and truncated to
//! `max_blocks`. Each endpoint keeps a bounded LRU of the hashes routed to it; the reverse map
//! `hash → endpoints` answers lookups. Capacity per endpoint is its KV-cache block count when known
//! (`autoTune`), else `lruCapacityPerServer` (upstream ignores that parameter; here it works).

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
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
/// then LRU, then shard), so concurrent inserts and `retain` keep it.
#[derive(Debug)]
pub struct PrefixIndex {
    owners: Box<[RwLock<BlockMap<Vec<EndpointId>>>]>,
    servers: RwLock<HashMap<EndpointId, Arc<Mutex<ServerLru>>>>,
    entries: AtomicUsize,
}

impl Default for PrefixIndex {
    fn default() -> Self {
        PrefixIndex {
            owners: (0..SHARDS).map(|_| RwLock::default()).collect(),
            servers: RwLock::default(),
            entries: AtomicUsize::new(0),
        }
    }
}

impl PrefixIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Total (hash, endpoint) entries.
    pub fn len(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
        write(&self.servers).entry(id.clone()).or_default().clone()
    }

    /// Records that `hashes` were routed to `id`, evicting its least recent entries past `capacity`.
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
        s.capacity = capacity.max(1);
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
        while s.stamps.len() > s.capacity {
            let Some((_, victim)) = s.order.pop_first() else { break };
            s.stamps.remove(&victim);
            self.remove_owner(victim, id);
        }
        let after = s.stamps.len();
        if after >= before {
            self.entries.fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.entries.fetch_sub(before - after, Ordering::Relaxed);
        }
    }

    /// Forgets endpoints that are no longer in the pool.
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
mod tests {
    use super::*;

    fn id(s: &str) -> EndpointId {
        EndpointId::new(s)
    }

    #[test]
    fn hashing_is_chained_and_model_scoped() {
        let text = b"0123456789abcdef".repeat(8); // 128 bytes = 2 blocks of 16 tokens
        let a = hash_blocks("m", "", &text, 16, 256);
        assert_eq!(a.len(), 2);
        assert_ne!(a, hash_blocks("other", "", &text, 16, 256));
        assert_ne!(a, hash_blocks("m", "salt", &text, 16, 256));
        assert!(hash_blocks("m", "", &text[..63], 16, 256).is_empty(), "shorter than a block");
        assert_eq!(hash_blocks("m", "", &text[..100], 16, 256).len(), 2, "partial last block hashed");
        assert_eq!(hash_blocks("m", "", &text, 16, 1).len(), 1, "truncated to max blocks");
        // Same first block, different second: the chain shares only the first hash.
        let mut other = text.clone();
        other[100] = b'X';
        let b = hash_blocks("m", "", &other, 16, 256);
        assert_eq!(a[0], b[0]);
        assert_ne!(a[1], b[1]);
    }

    #[test]
    fn longest_prefix_per_endpoint() {
        let idx = PrefixIndex::new();
        idx.insert(&id("a"), &[1, 2, 3], 100);
        idx.insert(&id("b"), &[1, 2], 100);
        idx.insert(&id("c"), &[2, 3], 100);
        let mut m = idx.match_lengths(&[1, 2, 3, 4]);
        m.sort();
        assert_eq!(m, vec![(id("a"), 3), (id("b"), 2)]);
        assert!(idx.match_lengths(&[9, 1]).is_empty());
    }

    /// Regression for upstream's `lruCapacityPerServer` being ignored: the capacity bounds entries.
    #[test]
    fn test_lru_capacity_per_server_is_honoured() {
        let idx = PrefixIndex::new();
        idx.insert(&id("a"), &[1, 2, 3, 4, 5], 3);
        assert_eq!(idx.len(), 3);
        assert!(idx.match_lengths(&[1]).is_empty(), "oldest evicted");
        assert_eq!(idx.match_lengths(&[3, 4, 5]), vec![(id("a"), 3)]);
        idx.insert(&id("a"), &[3], 3); // touch 3: now 4 is the oldest
        idx.insert(&id("a"), &[6], 3);
        assert!(idx.match_lengths(&[4]).is_empty());
        assert_eq!(idx.match_lengths(&[3]), vec![(id("a"), 1)]);
    }

    #[test]
    fn retain_forgets_removed_endpoints() {
        let idx = PrefixIndex::new();
        idx.insert(&id("a"), &[1], 10);
        idx.insert(&id("b"), &[1], 10);
        idx.retain(|e| e.as_str() == "b");
        assert_eq!(idx.match_lengths(&[1]), vec![(id("b"), 1)]);
        assert_eq!(idx.len(), 1);
    }

    /// Writers on different endpoints and readers run at once; afterwards the per-endpoint bound
    /// holds, the entry count is exact and every endpoint still owns its newest blocks.
    #[test]
    fn concurrent_inserts_and_lookups_keep_the_bound_and_the_reverse_map() {
        let idx = PrefixIndex::new();
        let ids: Vec<EndpointId> = (0..4).map(|i| id(&format!("e{i}"))).collect();
        std::thread::scope(|scope| {
            for (t, e) in ids.iter().enumerate() {
                let idx = &idx;
                scope.spawn(move || {
                    // Chains of 8 blocks; every endpoint shares block 0 with the others.
                    for n in 0..500u64 {
                        let base = ((t as u64 + 1) << 32) | (n * 8);
                        let mut chain: Vec<u64> = (0..8).map(|k| base + k).collect();
                        chain[0] = 0;
                        idx.insert(e, &chain, 40);
                    }
                });
            }
            let idx = &idx;
            scope.spawn(move || {
                for _ in 0..2_000 {
                    for (e, n) in idx.match_lengths(&[0, 1]) {
                        assert!(n >= 1 && e.as_str().starts_with('e'));
                    }
                }
            });
        });
        assert_eq!(idx.len(), 4 * 40);
        for (t, e) in ids.iter().enumerate() {
            let base = ((t as u64 + 1) << 32) | (499 * 8);
            let newest: Vec<u64> = (1..8).map(|k| base + k).collect();
            assert_eq!(idx.match_lengths(&newest), vec![(e.clone(), 7)]);
        }
        let mut shared: Vec<String> = idx.match_lengths(&[0]).into_iter().map(|(e, _)| e.as_str().to_owned()).collect();
        shared.sort();
        assert_eq!(shared, ["e0", "e1", "e2", "e3"]);
        idx.retain(|_| false);
        assert!(idx.is_empty());
        assert!(idx.match_lengths(&[0]).is_empty());
    }
}
