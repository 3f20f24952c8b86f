//! The aggregator state: versioning, report sums and their bounds, routed-block budgets.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::model::{EndpointMetrics, MetricsSample};
use crate::protocol::ScrapeError;

fn ep(id: &str, addr: &str) -> Endpoint {
    Endpoint {
        id: EndpointId::new(id),
        address: addr.into(),
        metrics_url: format!("http://{addr}/metrics"),
        engine: "vllm".into(),
        labels: Default::default(),
    }
}

/// A scrape of `id` with `queued` waiting requests (also used by the update-sharing tests).
pub(in crate::aggregator) fn scraped(id: &str, queued: u64) -> MetricsScraped {
    MetricsScraped {
        endpoint: EndpointId::new(id),
        sample: Arc::new(MetricsSample {
            metrics: EndpointMetrics { queued: Some(queued), ..Default::default() },
            scraped_at: SystemTime::UNIX_EPOCH,
            errors: vec![],
        }),
        latency: Duration::ZERO,
    }
}

#[test]
fn snapshots_are_versioned_and_coalesced() {
    let mut s = AggregatorState::new(7);
    s.on_endpoints(vec![ep("a", "1.1.1.1:80"), ep("b", "1.1.1.2:80")]);
    let first = s.build(SystemTime::UNIX_EPOCH).expect("first");
    assert_eq!((first.epoch, first.seq, first.endpoints.len()), (7, 1, 2));
    assert!(first.endpoints.iter().all(|e| e.metrics == MetricsState::Unknown));
    assert!(s.build(SystemTime::UNIX_EPOCH).is_none(), "nothing changed");
    s.on_scraped(scraped("a", 3));
    s.on_scraped(scraped("a", 4));
    s.on_scraped(scraped("ghost", 1));
    let second = s.build(SystemTime::UNIX_EPOCH).expect("second");
    assert_eq!(second.seq, 2);
    assert!(second.is_newer_than(&first));
    assert_eq!(second.endpoints[0].metrics.sample().and_then(|x| x.metrics.queued), Some(4));
}

#[test]
fn failures_keep_the_last_sample_and_unknown_stays_unknown() {
    let mut s = AggregatorState::new(1);
    s.on_endpoints(vec![ep("a", "1.1.1.1:80"), ep("b", "1.1.1.2:80")]);
    s.on_scraped(scraped("a", 3));
    let fail = |id: &str| ScrapeFailed {
        endpoint: EndpointId::new(id),
        error: ScrapeError::Refused,
        at: SystemTime::UNIX_EPOCH,
        latency: Duration::ZERO,
    };
    s.on_failed(fail("a"));
    s.on_failed(fail("b"));
    let snap = s.build(SystemTime::UNIX_EPOCH).expect("snapshot");
    match &snap.endpoints[0].metrics {
        MetricsState::Known { sample, last_error } => {
            assert_eq!(sample.metrics.queued, Some(3));
            assert_eq!(last_error.as_deref(), Some("connection refused"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(snap.endpoints[1].metrics, MetricsState::Unknown);
}

#[test]
fn picker_reports_are_summed_and_blocks_forwarded_once() {
    let mut s = AggregatorState::new(1);
    s.on_endpoints(vec![ep("a", "1.1.1.1:80")]);
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
    let load = |r: i64| PickerLoads {
        inflight: [(EndpointId::new("a"), Load { requests: r, tokens: 10 * r })].into_iter().collect(),
        sent: HashMap::new(),
    };
    let blocks = vec![RoutedBlocks { endpoint: EndpointId::new("a"), hashes: vec![1, 2] }];
    s.on_picker_report(PickerReport { picker: "p1".into(), loads: load(2), routed: blocks.clone() }, t0);
    s.on_picker_report(PickerReport { picker: "p2".into(), loads: load(3), routed: vec![] }, t0);
    let snap = s.build(t0).expect("snapshot");
    assert_eq!(snap.endpoints[0].shared_load, Load { requests: 5, tokens: 50 });
    assert_eq!(snap.routed_blocks, blocks);
    s.on_scraped(scraped("a", 1));
    let next = s.build(t0).expect("snapshot");
    assert!(next.routed_blocks.is_empty(), "blocks go out once");
    // A picker that stops reporting is forgotten.
    s.on_scraped(scraped("a", 2));
    let later = s.build(t0 + Duration::from_secs(5)).expect("snapshot");
    assert_eq!(later.endpoints[0].shared_load, Load::default());
}

#[test]
fn sends_since_a_scrape_count_only_against_that_scrape() {
    let mut s = AggregatorState::new(1);
    s.on_endpoints(vec![ep("a", "1.1.1.1:80")]);
    let at = |ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
    let scrape = |ms: u64| MetricsScraped {
        endpoint: EndpointId::new("a"),
        sample: Arc::new(MetricsSample { metrics: EndpointMetrics::default(), scraped_at: at(ms), errors: vec![] }),
        latency: Duration::ZERO,
    };
    let report = |picker: &str, scrape_ms: u64, n: u64| PickerReport {
        picker: picker.into(),
        loads: PickerLoads {
            inflight: HashMap::new(),
            sent: [(EndpointId::new("a"), (at(scrape_ms), n))].into_iter().collect(),
        },
        routed: vec![],
    };
    s.on_scraped(scrape(100));
    s.on_picker_report(report("p1", 100, 2), at(120));
    s.on_picker_report(report("p2", 100, 3), at(120));
    s.on_picker_report(report("p3", 50, 7), at(120));
    let snap = s.build(at(120)).expect("snapshot");
    assert_eq!(snap.endpoints[0].shared_sent_since_scrape, 5, "p3's sends are in the 100 ms scrape already");
    // A new scrape absorbs them all, until the pickers report against it.
    s.on_scraped(scrape(150));
    assert_eq!(s.build(at(150)).expect("snapshot").endpoints[0].shared_sent_since_scrape, 0);
    s.on_picker_report(report("p1", 150, 1), at(160));
    assert_eq!(s.build(at(160)).expect("snapshot").endpoints[0].shared_sent_since_scrape, 1);
}

fn sorted(sent: &[(i64, i64)]) -> Vec<(i64, i64)> {
    let mut v = sent.to_vec();
    v.sort_unstable();
    v
}

/// The sums per slot computed afresh from the live reports (of endpoints in the set).
fn fresh_sums(s: &AggregatorState) -> (Vec<Load>, Vec<Vec<(i64, i64)>>) {
    let mut fresh: Vec<Slot> =
        s.slots.iter().map(|x| Slot::new(x.endpoint.clone(), MetricsState::Unknown, 0)).collect();
    for (_, l) in s.picker_loads.values() {
        replace_loads(&mut fresh, &s.index, None, l, 0);
    }
    (fresh.iter().map(|x| x.inflight).collect(), fresh.iter().map(|x| sorted(&x.sent)).collect())
}

proptest::proptest! {
    /// The running totals always equal a fresh sum over the live reports, whatever the order
    /// of reports, replacements and expiries.
    #[test]
    fn running_totals_equal_a_fresh_sum(
        steps in proptest::collection::vec(
            (
                0usize..4,
                proptest::collection::vec((0usize..3, -2i64..4, 0u64..3, 0u64..3), 0..4),
                0u64..1500,
                proptest::option::of((0usize..3, 0u64..3)),
            ),
            1..40,
        ),
    ) {
        let mut s = AggregatorState::new(1);
        let ids = ["a", "b", "c"];
        s.on_endpoints(ids.iter().map(|id| ep(id, "1.1.1.1:80")).collect());
        let at = |ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        let mut now = 1_000_000;
        for (picker, entries, advance, scrape) in steps {
            now += advance;
            if let Some((e, when)) = scrape {
                let sample = MetricsSample { metrics: EndpointMetrics::default(), scraped_at: at(when), errors: vec![] };
                let endpoint = EndpointId::new(ids[e]);
                s.on_scraped(MetricsScraped { endpoint, sample: Arc::new(sample), latency: Duration::ZERO });
            }
            let mut loads = PickerLoads::default();
            for (e, requests, sent, scrape) in entries {
                let id = EndpointId::new(ids[e]);
                loads.inflight.insert(id.clone(), Load { requests, tokens: 10 * requests });
                loads.sent.insert(id, (at(scrape), sent));
            }
            s.on_picker_report(PickerReport { picker: format!("p{picker}"), loads, routed: vec![] }, at(now));
            let Some(snap) = s.build(at(now)) else { continue };
            for st in &snap.endpoints {
                let (mut load, mut sent) = (Load::default(), 0);
                let scraped_at = st.metrics.sample().map(|x| x.scraped_at);
                for (_, l) in s.picker_loads.values() {
                    if let Some(x) = l.inflight.get(&st.endpoint.id) {
                        load.requests += x.requests;
                        load.tokens += x.tokens;
                    }
                    if let Some((when, n)) = l.sent.get(&st.endpoint.id)
                        && Some(*when) == scraped_at
                    {
                        sent += n;
                    }
                }
                proptest::prop_assert_eq!(st.shared_load, load);
                proptest::prop_assert_eq!(st.shared_sent_since_scrape, sent);
            }
            proptest::prop_assert_eq!(s.slots.iter().map(|x| x.inflight).collect::<Vec<_>>(), fresh_sums(&s).0);
            proptest::prop_assert_eq!(s.slots.iter().map(|x| sorted(&x.sent)).collect::<Vec<_>>(), fresh_sums(&s).1);
        }
    }
}

/// Regression (issue 16): two reporters each claiming `i64::MAX` in flight to one endpoint
/// made the sum wrap (subscribers saw -2 requests in flight).
#[test]
fn reported_loads_that_would_wrap_are_clamped_per_reporter() {
    let mut s = AggregatorState::new(1);
    s.on_endpoints(vec![ep("a", "1.1.1.1:80")]);
    s.on_scraped(scraped("a", 0));
    let a = EndpointId::new("a");
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
    let report = |picker: &str, id: &EndpointId, requests: i64, sent: u64| PickerReport {
        picker: picker.into(),
        loads: PickerLoads {
            inflight: [(id.clone(), Load { requests, tokens: requests })].into_iter().collect(),
            sent: [(id.clone(), (SystemTime::UNIX_EPOCH, sent))].into_iter().collect(),
        },
        routed: vec![],
    };
    for p in ["p1", "p2", "p3"] {
        s.on_picker_report(report(p, &a, i64::MAX, u64::MAX), t0);
    }
    s.on_picker_report(report("negative", &a, i64::MIN, 0), t0);
    s.on_picker_report(report("ghost", &EndpointId::new("not-in-the-set"), 5, 5), t0);
    let snap = s.build(t0).expect("snapshot");
    let want = Load { requests: 3 * MAX_REPORTED_REQUESTS, tokens: 3 * MAX_REPORTED_TOKENS };
    assert_eq!(snap.endpoints[0].shared_load, want, "each reporter counts up to the bound");
    assert_eq!(snap.endpoints[0].shared_sent_since_scrape, 3 * MAX_REPORTED_SENT);
    assert!(!s.picker_loads.contains_key("ghost"), "nothing is held for endpoints outside the set");
    // Replacing a report takes exactly its share away.
    s.on_picker_report(report("p1", &a, 1, 1), t0);
    let snap = s.build(t0).expect("snapshot");
    let want = Load { requests: 2 * MAX_REPORTED_REQUESTS + 1, tokens: 2 * MAX_REPORTED_TOKENS + 1 };
    assert_eq!(snap.endpoints[0].shared_load, want);
    assert_eq!(snap.endpoints[0].shared_sent_since_scrape, 2 * MAX_REPORTED_SENT + 1);
}

/// Regression (issue 16): one reporter flooding routed prefix hashes filled what the next
/// snapshot takes, and every other reporter's blocks were dropped (and pickers lagged).
#[test]
fn one_reporter_flooding_routed_hashes_cannot_crowd_out_the_others() {
    let mut s = AggregatorState::new(1);
    s.on_endpoints(vec![ep("a", "1.1.1.1:80")]);
    let a = EndpointId::new("a");
    let t0 = SystemTime::UNIX_EPOCH;
    let routed = |picker: &str, blocks: u64, per_block: usize| PickerReport {
        picker: picker.into(),
        loads: PickerLoads::default(),
        routed: (0..blocks).map(|i| RoutedBlocks { endpoint: a.clone(), hashes: vec![i; per_block] }).collect(),
    };
    let sent = 3 * MAX_PENDING_HASHES;
    s.on_picker_report(routed("flood", (sent / 100) as u64, 100), t0);
    s.on_picker_report(routed("flood", 1, 1), t0);
    s.on_picker_report(routed("honest", 2, 16), t0);
    let snap = s.build(t0).expect("snapshot");
    let hashes: usize = snap.routed_blocks.iter().map(|b| b.hashes.len()).sum();
    assert_eq!(hashes, MAX_HASHES_PER_REPORTER + 32, "the flooder's budget, and every honest block");
    assert_eq!(snap.routed_blocks.last(), routed("honest", 2, 16).routed.last());
    assert_eq!(s.over_budget_hashes as usize, sent + 1 - MAX_HASHES_PER_REPORTER, "what was dropped is counted");
    assert_eq!(s.dropped_hashes, 0);
    // The budget is per snapshot.
    s.on_picker_report(routed("flood", 1, 8), t0);
    assert_eq!(s.build(t0).expect("snapshot").routed_blocks, routed("flood", 1, 8).routed);
}

#[test]
fn changed_endpoint_forgets_old_metrics() {
    let mut s = AggregatorState::new(1);
    s.on_endpoints(vec![ep("a", "1.1.1.1:80")]);
    s.on_scraped(scraped("a", 3));
    s.on_endpoints(vec![ep("a", "9.9.9.9:80")]);
    let snap = s.build(SystemTime::UNIX_EPOCH).expect("snapshot");
    assert_eq!(snap.endpoints[0].metrics, MetricsState::Unknown);
}

/// One step of the recycling property below.
#[derive(Debug, Clone)]
enum Step {
    Scrape(usize, u64),
    Fail(usize),
    Report(usize, Vec<(usize, i64, u64, u64)>),
    /// The set without endpoint `.0`, or with it back (and `b` at a new address when `.1`).
    Members(Option<usize>, bool),
    Term,
    Advance(u64),
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        4 => (0usize..4, 0u64..4).prop_map(|(e, ms)| Step::Scrape(e, ms)),
        1 => (0usize..4).prop_map(Step::Fail),
        4 => (0usize..3, proptest::collection::vec((0usize..4, -1i64..4, 0u64..3, 0u64..4), 0..4))
            .prop_map(|(p, e)| Step::Report(p, e)),
        1 => (proptest::option::of(0usize..4), any::<bool>()).prop_map(|(e, m)| Step::Members(e, m)),
        1 => Just(Step::Term),
        1 => (0u64..2500).prop_map(Step::Advance),
    ]
}

proptest::proptest! {
    /// A build that updates a recycled snapshot in place equals a full build, whatever happened
    /// since (scrapes, failures, reports and their expiry, set changes, new terms) and whichever
    /// snapshots readers still hold; the positions it reports as changed cover every endpoint
    /// that differs from the previous snapshot; the sums equal a fresh sum of the live reports.
    #[test]
    fn recycled_builds_equal_full_builds(
        steps in proptest::collection::vec((step(), proptest::bool::ANY), 1..60),
    ) {
        let ids = ["a", "b", "c", "d"];
        let members = |without: Option<usize>, moved: bool| -> Vec<Endpoint> {
            let addr = |i: usize| if i == 1 && moved { "9.9.9.9:80" } else { "1.1.1.1:80" };
            (0..ids.len()).filter(|i| Some(*i) != without).map(|i| ep(ids[i], addr(i))).collect()
        };
        let (mut recycled, mut full) = (AggregatorState::new(1), AggregatorState::new(1));
        recycled.on_endpoints(members(None, false));
        full.on_endpoints(members(None, false));
        let at = |ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        let (mut now, mut epoch) = (10_000u64, 1u64);
        let mut held: Vec<Arc<Snapshot>> = Vec::new();
        let mut previous: Option<Arc<Snapshot>> = None;
        for (step, hold) in steps {
            for s in [&mut recycled, &mut full] {
                match &step {
                    Step::Scrape(e, ms) => {
                        let sample = MetricsSample {
                            metrics: EndpointMetrics { queued: Some(*ms), ..Default::default() },
                            scraped_at: at(*ms),
                            errors: vec![],
                        };
                        let endpoint = EndpointId::new(ids[*e]);
                        s.on_scraped(MetricsScraped { endpoint, sample: Arc::new(sample), latency: Duration::ZERO });
                    }
                    Step::Fail(e) => s.on_failed(ScrapeFailed {
                        endpoint: EndpointId::new(ids[*e]),
                        error: ScrapeError::Request(format!("down at {now}")),
                        at: at(now),
                        latency: Duration::ZERO,
                    }),
                    Step::Report(p, entries) => {
                        let mut loads = PickerLoads::default();
                        for (e, requests, sent, scrape) in entries {
                            let id = EndpointId::new(ids[*e]);
                            loads.inflight.insert(id.clone(), Load { requests: *requests, tokens: 3 * requests });
                            loads.sent.insert(id, (at(*scrape), *sent));
                        }
                        s.on_picker_report(PickerReport { picker: format!("p{p}"), loads, routed: vec![] }, at(now));
                    }
                    Step::Members(without, moved) => s.on_endpoints(members(*without, *moved)),
                    Step::Term => s.on_new_term(epoch + 1),
                    Step::Advance(ms) => s.on_scraped(scraped("a", now + ms)),
                }
            }
            match step {
                Step::Term => epoch += 1,
                Step::Advance(ms) => now += ms,
                _ => {}
            }
            let (a, b) = (recycled.build(at(now)), full.build(at(now)));
            proptest::prop_assert_eq!(&a, &b);
            let Some(a) = a else { continue };
            if let (Some(changes), Some(prev)) = (recycled.changes(), &previous) {
                proptest::prop_assert_eq!(prev.endpoints.len(), a.endpoints.len());
                for (i, (x, y)) in prev.endpoints.iter().zip(&a.endpoints).enumerate() {
                    proptest::prop_assert!(x == y || changes.contains(&(i as u32)), "position {} changed unreported", i);
                }
            }
            let (loads, _) = fresh_sums(&recycled);
            let shown: Vec<Load> = loads.iter().map(|l| Load { requests: l.requests.max(0), tokens: l.tokens.max(0) }).collect();
            proptest::prop_assert_eq!(a.endpoints.iter().map(|e| e.shared_load).collect::<Vec<_>>(), shown);
            // The published snapshot goes back; readers hold some of them for a while.
            let a = Arc::new(a);
            previous = Some(Arc::new((*a).clone()));
            recycled.recycle(a.clone());
            if hold {
                held.push(a);
            } else if !held.is_empty() {
                held.remove(0);
            }
        }
    }
}

#[test]
fn recycled_snapshot_is_updated_in_place_only_when_nobody_holds_it() {
    let mut s = AggregatorState::new(1);
    s.on_endpoints(vec![ep("a", "1.1.1.1:80"), ep("b", "1.1.1.2:80")]);
    let first = Arc::new(s.build(SystemTime::UNIX_EPOCH).expect("first"));
    // Where the endpoints live: a full build allocates them anew, a recycled one keeps them.
    let storage = first.endpoints.as_ptr();
    s.recycle(first.clone());
    s.on_scraped(scraped("a", 1));
    let held = s.build(SystemTime::UNIX_EPOCH).expect("second");
    assert_ne!(held.endpoints.as_ptr(), storage, "first is still held: a full build");
    assert!(Arc::ptr_eq(&held.endpoints[1].endpoint, &first.endpoints[1].endpoint), "which shares the specs");
    assert_eq!(s.changes().as_deref(), Some(&[0u32][..]), "only a changed");
    drop(first);
    let held = Arc::new(held);
    s.recycle(held.clone());
    s.on_scraped(scraped("b", 2));
    let third = s.build(SystemTime::UNIX_EPOCH).expect("third");
    assert_eq!(third.endpoints.as_ptr(), storage, "first reused in place");
    assert_eq!((third.seq, third.endpoints[0].metrics.sample().and_then(|m| m.metrics.queued)), (3, Some(1)));
    assert_eq!(third.endpoints[1].metrics.sample().and_then(|m| m.metrics.queued), Some(2));
    assert_eq!(s.changes().as_deref(), Some(&[1u32][..]));
    s.on_endpoints(vec![ep("a", "1.1.1.1:80")]);
    assert!(s.build(SystemTime::UNIX_EPOCH).is_some_and(|x| x.endpoints.len() == 1));
    assert_eq!(s.changes(), None, "the set changed");
}

/// A picker repeats most of its report every time: only the endpoints whose shown load changed
/// count as changed, so the delta to pickers stays as small as the change.
#[test]
fn a_repeated_report_changes_only_what_it_changed() {
    let mut s = AggregatorState::new(1);
    s.on_endpoints(vec![ep("a", "1.1.1.1:80"), ep("b", "1.1.1.2:80"), ep("c", "1.1.1.3:80")]);
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
    let report = |b: i64| PickerReport {
        picker: "p".into(),
        loads: PickerLoads {
            inflight: [("a", 1), ("b", b), ("c", 2)]
                .into_iter()
                .map(|(id, r)| (EndpointId::new(id), Load { requests: r, tokens: r }))
                .collect(),
            sent: HashMap::new(),
        },
        routed: vec![],
    };
    s.on_picker_report(report(1), t0);
    s.build(t0).expect("first");
    s.build(t0);
    s.on_picker_report(report(5), t0);
    let snap = s.build(t0).expect("second");
    assert_eq!(snap.endpoints[1].shared_load.requests, 5);
    assert_eq!(s.changes().as_deref(), Some(&[1u32][..]), "only b's load changed");
}
