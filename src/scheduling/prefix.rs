//! The approximate prefix-cache index: which endpoints probably hold the KV blocks of a prompt's
//! prefix, learnt from where earlier requests were routed.
//!
//! Prompts are cut into blocks of `block_size_tokens × 4` bytes (4 characters per token), hashed in
//! a chain seeded by the target model and `cache_salt` (so models never collide), and truncated to
//! `max_blocks`. Each endpoint keeps a bounded LRU of the hashes routed to it; the reverse map
//! `hash → endpoints` answers lookups. Capacity per endpoint is its KV-cache block count when known
//! (`autoTune`), else `lruCapacityPerServer` (upstream ignores that parameter; here it works).

use std::collections::{BTreeMap, HashMap};
use std::hash::Hasher as _;

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

#[derive(Debug, Default)]
struct ServerLru {
    capacity: usize,
    clock: u64,
    stamps: HashMap<u64, u64>,
    order: BTreeMap<u64, u64>,
}

/// The index. Not thread-safe by itself: the picker keeps it behind a short mutex.
#[derive(Debug, Default)]
pub struct PrefixIndex {
    servers: HashMap<EndpointId, ServerLru>,
    owners: HashMap<u64, Vec<EndpointId>>,
}

impl PrefixIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Total (hash, endpoint) entries.
    pub fn len(&self) -> usize {
        self.servers.values().map(|s| s.stamps.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }

    /// Per endpoint, the number of leading blocks of `hashes` it holds (only endpoints with ≥ 1).
    pub fn match_lengths(&self, hashes: &[u64]) -> Vec<(EndpointId, usize)> {
        let Some(first) = hashes.first().and_then(|h| self.owners.get(h)) else {
            return Vec::new();
        };
        let mut out: Vec<(EndpointId, usize)> = first.iter().map(|id| (id.clone(), 1)).collect();
        let mut alive: Vec<usize> = (0..out.len()).collect();
        for h in &hashes[1..] {
            let Some(owners) = self.owners.get(h) else { break };
            alive.retain(|&i| owners.contains(&out[i].0));
            if alive.is_empty() {
                break;
            }
            for &i in &alive {
                out[i].1 += 1;
            }
        }
        out
    }

    /// Records that `hashes` were routed to `id`, evicting its least recent entries past `capacity`.
    pub fn insert(&mut self, id: &EndpointId, hashes: &[u64], capacity: usize) {
        if hashes.is_empty() {
            return;
        }
        let server = self.servers.entry(id.clone()).or_default();
        server.capacity = capacity.max(1);
        for &h in hashes {
            server.clock += 1;
            match server.stamps.insert(h, server.clock) {
                Some(old) => {
                    server.order.remove(&old);
                }
                None => {
                    let owners = self.owners.entry(h).or_default();
                    if !owners.contains(id) {
                        owners.push(id.clone());
                    }
                }
            }
            server.order.insert(server.clock, h);
        }
        while server.stamps.len() > server.capacity {
            let Some((_, victim)) = server.order.pop_first() else { break };
            server.stamps.remove(&victim);
            remove_owner(&mut self.owners, victim, id);
        }
    }

    /// Forgets endpoints that are no longer in the pool.
    pub fn retain(&mut self, keep: impl Fn(&EndpointId) -> bool) {
        let gone: Vec<EndpointId> = self.servers.keys().filter(|id| !keep(id)).cloned().collect();
        for id in gone {
            if let Some(server) = self.servers.remove(&id) {
                for h in server.stamps.keys() {
                    remove_owner(&mut self.owners, *h, &id);
                }
            }
        }
    }
}

fn remove_owner(owners: &mut HashMap<u64, Vec<EndpointId>>, hash: u64, id: &EndpointId) {
    if let Some(list) = owners.get_mut(&hash) {
        list.retain(|o| o != id);
        if list.is_empty() {
            owners.remove(&hash);
        }
    }
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
        let mut idx = PrefixIndex::new();
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
        let mut idx = PrefixIndex::new();
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
        let mut idx = PrefixIndex::new();
        idx.insert(&id("a"), &[1], 10);
        idx.insert(&id("b"), &[1], 10);
        idx.retain(|e| e.as_str() == "b");
        assert_eq!(idx.match_lengths(&[1]), vec![(id("b"), 1)]);
        assert_eq!(idx.len(), 1);
    }
}
