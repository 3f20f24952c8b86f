use super::*;

fn req(id: u64, prompt_tokens: u32, blocks: Vec<u64>, max_tokens: u32, adapter: Option<&str>) -> SimRequest {
    SimRequest {
        id,
        prompt_tokens,
        prompt_blocks: blocks,
        max_tokens,
        adapter: adapter.map(String::from),
        arrived: 0.0,
    }
}

fn run_to_idle(core: &mut EngineCore) -> (f64, Vec<(f64, Event)>) {
    let mut now = 0.0;
    let mut all = Vec::new();
    while let Some((d, events)) = core.step(now) {
        now += d;
        all.extend(events.into_iter().map(|e| (now, e)));
    }
    (now, all)
}

fn first_token_time(events: &[(f64, Event)], id: u64) -> f64 {
    events
        .iter()
        .find(|(_, e)| matches!(e, Event::Token { id: i, index: 0, .. } if *i == id))
        .map(|(t, _)| *t)
        .expect("first token")
}

#[test]
fn ttft_is_one_iteration_with_prefill() {
    let p = ModelParams::default();
    let mut core = EngineCore::new(p.clone(), 1);
    core.submit(req(1, 1200, vec![], 4, None));
    let (_, events) = run_to_idle(&mut core);
    let expected = p.decode_base_s + p.decode_per_seq_s + 1200.0 / p.prefill_tokens_per_s;
    assert!((first_token_time(&events, 1) - expected).abs() < 1e-9);
    assert!(core.is_idle());
    assert_eq!(core.kv_usage(), 0.0, "blocks are freed at the end");
}

#[test]
fn prefix_cache_hits_shorten_prefill() {
    let mut core = EngineCore::new(ModelParams::default(), 1);
    let blocks: Vec<u64> = (0..100).collect();
    core.submit(req(1, 1600, blocks.clone(), 1, None));
    let (t1, _) = run_to_idle(&mut core);
    core.submit(req(2, 1600, blocks, 1, None));
    let mut now = t1;
    let (d, events) = core.step(now).expect("work");
    now += d;
    assert!(d < t1 / 2.0, "cached prefill {d} vs cold {t1}");
    assert!(matches!(events[0], Event::Token { cached_tokens: 1599, .. }));
    assert!(core.stats.prefix_hits > 0);
    let _ = now;
}

#[test]
fn kv_budget_makes_a_queue() {
    let p = ModelParams { kv_blocks: 100, block_size: 16, ..ModelParams::default() };
    let mut core = EngineCore::new(p, 1);
    // Each request needs (800 + 800) / 16 = 100 blocks: only one fits at a time.
    core.submit(req(1, 800, vec![], 800, None));
    core.submit(req(2, 800, vec![], 800, None));
    core.step(0.0);
    assert_eq!((core.running(), core.waiting()), (1, 1));
    assert!((core.kv_usage() - 1.0).abs() < 1e-9);
}

#[test]
fn lora_slots_are_limited() {
    let p = ModelParams { max_lora: 2, ..ModelParams::default() };
    let mut core = EngineCore::new(p, 1);
    core.submit(req(1, 10, vec![], 50, Some("a")));
    core.submit(req(2, 10, vec![], 50, Some("b")));
    core.submit(req(3, 10, vec![], 50, Some("c")));
    core.submit(req(4, 10, vec![], 50, Some("a")));
    core.step(0.0);
    assert_eq!(core.running_adapters(), vec!["a", "b"]);
    assert_eq!(core.waiting_adapters(), vec!["c"], "request 4 shares adapter a and runs");
}

#[test]
fn decode_slows_with_batch_size_and_runs_are_reproducible() {
    let run = |seed| {
        let mut core = EngineCore::new(ModelParams::default(), seed);
        for i in 0..50 {
            core.submit(req(i, 100, vec![], 64, None));
        }
        run_to_idle(&mut core).1.len()
    };
    assert_eq!(run(7), run(7));
    let mut core = EngineCore::new(ModelParams::default(), 1);
    core.submit(req(1, 16, vec![], 100, None));
    let (d1, _) = core.step(0.0).expect("work");
    for i in 2..100 {
        core.submit(req(i, 16, vec![], 100, None));
    }
    core.step(d1);
    let (d_big, _) = core.step(d1 * 3.0).expect("work");
    assert!(d_big > d1, "{d_big} > {d1}");
}
