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

/// Entries each endpoint's LRU holds.
fn lru_sizes(idx: &PrefixIndex) -> HashMap<EndpointId, usize> {
    read(&idx.servers).iter().map(|(id, s)| (id.clone(), lock(s).stamps.len())).collect()
}

/// The reverse map holds exactly the LRUs' entries, each once, and the count matches them.
fn assert_consistent(idx: &PrefixIndex) {
    let mut lrus: HashMap<EndpointId, std::collections::HashSet<u64>> = HashMap::new();
    for (id, server) in read(&idx.servers).iter() {
        let s = lock(server);
        assert_eq!(s.stamps.len(), s.order.len(), "{id:?}: stamps and order disagree");
        assert!(s.order.iter().all(|(stamp, h)| s.stamps.get(h) == Some(stamp)), "{id:?}: order is stale");
        lrus.insert(id.clone(), s.stamps.keys().copied().collect());
    }
    let mut reverse = 0;
    for shard in idx.owners.iter() {
        for (h, owners) in read(shard).iter() {
            assert!(!owners.is_empty(), "empty owner list kept for {h}");
            for (k, o) in owners.iter().enumerate() {
                assert!(!owners[..k].contains(o), "{o:?} listed twice for {h}");
                assert!(lrus.get(o).is_some_and(|l| l.contains(h)), "{o:?} owns {h} in the reverse map only");
            }
            reverse += owners.len();
        }
    }
    let total: usize = lrus.values().map(|l| l.len()).sum();
    assert_eq!(reverse, total, "an LRU entry is missing from the reverse map");
    assert_eq!(idx.len(), total, "entry count");
}

/// Chain `n` of thread `t`: 8 distinct blocks.
fn chain(t: u64, n: u64) -> Vec<u64> {
    (0..8).map(|k| ((t + 1) << 40) | (n << 4) | k).collect()
}

/// Many endpoints, each allowed more than its share, written by several threads at once (the
/// endpoints join the index while it is filling): afterwards the total is within the cap and
/// every LRU within its share; then, with the endpoint set stable, the cap holds at every moment
/// of a second round of concurrent inserts.
#[test]
fn the_cap_holds_under_concurrent_inserts_across_many_endpoints() {
    const CAP: usize = 2_000;
    let idx = PrefixIndex::with_max_entries(CAP);
    let ids: Vec<EndpointId> = (0..100).map(|i| id(&format!("e{i}"))).collect();
    let round = |idx: &PrefixIndex, offset: u64, watch: bool| {
        let done = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..4u64)
                .map(|t| {
                    let (idx, ids) = (idx, &ids);
                    scope.spawn(move || {
                        for n in 0..1_500u64 {
                            // Each thread walks the endpoints in its own order.
                            let e = &ids[((n * (2 * t + 1) + t * 17) % ids.len() as u64) as usize];
                            idx.insert(e, &chain(t, offset + n), 60);
                        }
                    })
                })
                .collect();
            let (idx, done) = (idx, &done);
            scope.spawn(move || {
                let mut max = 0;
                while !done.load(Ordering::Relaxed) {
                    max = max.max(idx.len());
                    let _ = idx.match_lengths(&chain(0, offset));
                }
                if watch {
                    assert!(max <= CAP, "the total reached {max} with the endpoint set stable");
                }
            });
            for w in workers {
                w.join().expect("worker");
            }
            done.store(true, Ordering::Relaxed);
        });
    };
    round(&idx, 0, false);
    assert_eq!(idx.share(), CAP / 100);
    assert!(idx.len() <= CAP, "{} entries", idx.len());
    assert!(lru_sizes(&idx).values().all(|&n| n <= CAP / 100), "{:?}", lru_sizes(&idx));
    assert_consistent(&idx);
    round(&idx, 10_000, true);
    assert_eq!(idx.len(), CAP, "every endpoint got more than its share, so the index is full");
    assert_consistent(&idx);
    idx.retain(|_| false);
    assert!(idx.is_empty());
    assert_consistent(&idx);
}

/// An endpoint joining a full index lowers everyone's share: the others are trimmed (their oldest
/// entries go) as soon as the total passes the cap; one leaving raises it again.
#[test]
fn endpoints_share_the_cap_and_the_share_follows_the_endpoint_set() {
    let idx = PrefixIndex::with_max_entries(100);
    idx.insert(&id("a"), &(0..300).collect::<Vec<u64>>(), 1_000);
    assert_eq!((idx.len(), idx.share()), (100, 100), "alone, a has the whole cap");
    assert_eq!(idx.match_lengths(&(200..300).collect::<Vec<u64>>()), vec![(id("a"), 100)]);
    idx.insert(&id("b"), &(1_000..1_040).collect::<Vec<u64>>(), 1_000);
    assert_eq!(idx.share(), 50);
    assert_eq!(idx.len(), 90, "b took 40, a was trimmed to its share");
    assert_eq!(idx.sweeps(), 1);
    assert!(idx.match_lengths(&[249]).is_empty(), "a's oldest entries went");
    assert_eq!(idx.match_lengths(&(250..300).collect::<Vec<u64>>()), vec![(id("a"), 50)]);
    idx.insert(&id("b"), &(1_040..1_100).collect::<Vec<u64>>(), 1_000);
    assert_eq!(idx.len(), 100, "b stops at its share");
    idx.retain(|e| e.as_str() == "b");
    assert_eq!((idx.len(), idx.share()), (50, 100));
    idx.insert(&id("b"), &(2_000..2_050).collect::<Vec<u64>>(), 1_000);
    assert_eq!(idx.len(), 100, "alone again, b grows to the whole cap");
    assert_consistent(&idx);
}

/// Below the cap the index is exactly what it was without one: each endpoint keeps its own
/// capacity's newest entries, and no sweep runs.
#[test]
fn per_endpoint_bounds_hold_below_the_cap() {
    let capped = PrefixIndex::with_max_entries(1_000);
    let uncapped = PrefixIndex::with_max_entries(usize::MAX);
    for idx in [&capped, &uncapped] {
        for n in 0..200u64 {
            let e = id(&format!("e{}", n % 10));
            idx.insert(&e, &chain(n % 3, n), 100); // 10 × 100 = the cap exactly
        }
    }
    assert_eq!(capped.share(), 100);
    assert_eq!(lru_sizes(&capped), lru_sizes(&uncapped));
    assert!(lru_sizes(&capped).values().all(|&n| n == 100));
    for n in 0..200u64 {
        assert_eq!(capped.match_lengths(&chain(n % 3, n)), uncapped.match_lengths(&chain(n % 3, n)));
    }
    assert_eq!(capped.sweeps(), 0);
    assert_consistent(&capped);
}

/// A cap below the endpoint count still leaves every endpoint one entry (its newest block).
#[test]
fn a_cap_below_the_endpoint_count_keeps_one_entry_each() {
    let idx = PrefixIndex::with_max_entries(3);
    for e in ["a", "b", "c", "d", "e"] {
        idx.insert(&id(e), &[1, 2, 3], 10);
    }
    assert_eq!((idx.share(), idx.len()), (1, 5));
    assert_eq!(idx.match_lengths(&[3]).len(), 5);
    assert_consistent(&idx);
}
