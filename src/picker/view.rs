//! The picker's view: the snapshot it holds plus its own per-endpoint counters, swapped whole
//! when a newer snapshot arrives. The request path only `load_full()`s it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::model::{EndpointId, Load, Snapshot, unix_micros};
use crate::scheduling::{Columns, LocalLoads};

/// This picker's counters for one endpoint; they survive snapshot changes.
#[derive(Debug, Default)]
pub struct EndpointCounters {
    /// Requests routed to the endpoint, ever.
    pub picks: AtomicU64,
    pub inflight_requests: AtomicI64,
    pub inflight_tokens: AtomicI64,
    /// What this picker last reported to the leader (already inside the snapshot's shared load).
    pub reported_requests: AtomicI64,
    pub reported_tokens: AtomicI64,
    /// Sends since the scrape taken at `reported_sent_scrape` (µs), as last reported.
    pub reported_sent: AtomicU64,
    pub reported_sent_scrape: AtomicI64,
    /// Seconds to first token per queued request observed here (f64 bits; 0: none yet), smoothed.
    seconds_per_queued: AtomicU64,
}

impl EndpointCounters {
    pub fn start(&self, tokens: i64) {
        self.picks.fetch_add(1, Ordering::Relaxed);
        self.inflight_requests.fetch_add(1, Ordering::Relaxed);
        self.inflight_tokens.fetch_add(tokens, Ordering::Relaxed);
    }

    pub fn finish(&self, tokens: i64) {
        self.inflight_requests.fetch_sub(1, Ordering::Relaxed);
        self.inflight_tokens.fetch_sub(tokens, Ordering::Relaxed);
    }

    /// Learns from a first token that came `ttft` after routing, with `queued` requests ahead
    /// of it then: an exponentially weighted mean of `ttft / (queued + 1)`. Two streams finishing
    /// at once may lose one sample; a mean over hundreds does not notice.
    pub fn observe_first_token(&self, ttft: std::time::Duration, queued: f64) {
        const WEIGHT: f64 = 0.1;
        let queued = if queued.is_finite() { queued.max(0.0) } else { 0.0 };
        let sample = ttft.as_secs_f64() / (queued + 1.0);
        let old = self.seconds_per_queued();
        let new = if old.is_nan() { sample } else { old + WEIGHT * (sample - old) };
        if new.is_finite() && new > 0.0 {
            self.seconds_per_queued.store(new.to_bits(), Ordering::Relaxed);
        }
    }

    /// What [`observe_first_token`](Self::observe_first_token) learnt; NaN before any sample.
    pub fn seconds_per_queued(&self) -> f64 {
        match self.seconds_per_queued.load(Ordering::Relaxed) {
            0 => f64::NAN,
            bits => f64::from_bits(bits),
        }
    }
}

#[derive(Debug)]
pub struct PickerView {
    pub snapshot: Arc<Snapshot>,
    /// The snapshot's scored fields by field (built once here, read by every decision).
    pub columns: Columns,
    /// Same order as `snapshot.endpoints`.
    pub counters: Vec<Arc<EndpointCounters>>,
    /// `picks` of each endpoint when its current metrics arrived.
    baseline: Vec<u64>,
    /// When those metrics were scraped, in µs since the epoch (0: never).
    scraped_micros: Vec<i64>,
    /// Endpoints whose counters the builder keeps when this view was built: those listed plus
    /// those that left with requests still in flight (`switchyard_picker_tracked_endpoints`).
    pub tracked: usize,
}

impl PickerView {
    pub fn empty() -> Self {
        PickerView {
            snapshot: Snapshot::empty(),
            columns: Columns::default(),
            counters: Vec::new(),
            baseline: Vec::new(),
            scraped_micros: Vec::new(),
            tracked: 0,
        }
    }

    /// Requests this picker sent to endpoint `i` since its metrics were scraped, and when that
    /// scrape was taken (µs).
    pub fn own_sent_since_scrape(&self, i: usize) -> (u64, i64) {
        (self.counters[i].picks.load(Ordering::Relaxed).saturating_sub(self.baseline[i]), self.scraped_micros[i])
    }

    pub fn is_ready(&self) -> bool {
        !self.snapshot.endpoints.is_empty()
    }
}

/// The scheduler's input, read in place for each candidate: sends since the endpoint's last
/// scrape (this picker's, plus what the other pickers reported) and in-flight load.
impl LocalLoads for PickerView {
    fn sent_since_scrape(&self, i: usize) -> u64 {
        let Some(c) = self.counters.get(i) else { return 0 };
        let (mine, scrape) = self.own_sent_since_scrape(i);
        // The shared count holds this picker's own report when it refers to the same scrape.
        let own = if c.reported_sent_scrape.load(Ordering::Relaxed) == scrape {
            c.reported_sent.load(Ordering::Relaxed)
        } else {
            0
        };
        // Saturating: the shared count comes from the wire (found by fuzzing).
        mine.saturating_add(self.columns.shared_sent[i].saturating_sub(own))
    }

    /// The snapshot's shared load already holds what this picker reported; count only the change
    /// since (the scheduler adds the shared load and clamps at zero).
    fn inflight(&self, i: usize) -> Load {
        let Some(c) = self.counters.get(i) else { return Load::default() };
        Load {
            requests: c.inflight_requests.load(Ordering::Relaxed) - c.reported_requests.load(Ordering::Relaxed),
            tokens: c.inflight_tokens.load(Ordering::Relaxed) - c.reported_tokens.load(Ordering::Relaxed),
        }
    }

    fn seconds_per_queued(&self, i: usize) -> f64 {
        self.counters.get(i).map_or(f64::NAN, |c| c.seconds_per_queued())
    }
}

/// Builds views from snapshots; owns the counters registry (only this task touches it).
#[derive(Debug, Default)]
pub struct ViewBuilder {
    /// Counters, the scrape time their baseline belongs to, that baseline, and the last view
    /// that listed the endpoint.
    counters: HashMap<EndpointId, (Arc<EndpointCounters>, Option<SystemTime>, u64, u64)>,
    views: u64,
}

impl ViewBuilder {
    /// The next view, or `None` when `snapshot` is not newer than `current` (fencing).
    pub fn next(&mut self, current: &PickerView, snapshot: Arc<Snapshot>) -> Option<PickerView> {
        if current.is_ready() && !snapshot.is_newer_than(&current.snapshot) {
            return None;
        }
        let mut counters = Vec::with_capacity(snapshot.endpoints.len());
        let mut baseline = Vec::with_capacity(snapshot.endpoints.len());
        let mut scraped_micros = Vec::with_capacity(snapshot.endpoints.len());
        self.views += 1;
        let view = self.views;
        for e in &snapshot.endpoints {
            let scraped_at = e.metrics.sample().map(|s| s.scraped_at);
            let entry = self.counters.entry(e.endpoint.id.clone()).or_insert_with(|| (Arc::default(), None, 0, view));
            entry.3 = view;
            if entry.1 != scraped_at {
                entry.1 = scraped_at;
                entry.2 = entry.0.picks.load(Ordering::Relaxed);
            }
            counters.push(entry.0.clone());
            baseline.push(entry.2);
            scraped_micros.push(scraped_at.map_or(0, unix_micros));
        }
        // Forget endpoints that left the pool once nothing is in flight to them.
        self.counters.retain(|_, (c, _, _, listed)| *listed == view || c.inflight_requests.load(Ordering::Relaxed) > 0);
        let columns = Columns::new(&snapshot);
        Some(PickerView { snapshot, columns, counters, baseline, scraped_micros, tracked: self.counters.len() })
    }
}

/// Follows a snapshot channel into `target` until the sender is gone. `on_change` runs after each
/// swap (readiness, prefix-index pruning).
pub async fn follow(
    mut rx: watch::Receiver<Arc<Snapshot>>,
    target: Arc<ArcSwap<PickerView>>,
    mut on_change: impl FnMut(&PickerView) + Send,
) {
    let mut builder = ViewBuilder::default();
    loop {
        let snapshot = rx.borrow_and_update().clone();
        if let Some(view) = builder.next(&target.load(), snapshot) {
            on_change(&view);
            reclaim(target.swap(Arc::new(view)));
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Drops `old` on a thread of its own, so that freeing a replaced view (at 10,000 endpoints,
/// tens of thousands of reference counts and a dozen column buffers, and the snapshot when this
/// was its last holder) does not delay applying the next one. Inline when that thread cannot be
/// started.
fn reclaim<T: Send + 'static>(old: T) {
    static RECLAIMER: OnceLock<Option<mpsc::Sender<Box<dyn Send>>>> = OnceLock::new();
    let reclaimer = RECLAIMER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Box<dyn Send>>();
        let spawned = std::thread::Builder::new().name("switchyard-reclaim".into()).spawn(move || {
            for old in rx {
                drop(old);
            }
        });
        spawned.is_ok().then_some(tx)
    });
    if let Some(tx) = reclaimer {
        // A failed send hands `old` back inside the error, dropped here.
        let _ = tx.send(Box::new(old));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::{Endpoint, EndpointState, MetricsSample, MetricsState};

    fn snapshot(seq: u64, scraped_ms: u64, shared_sent: u64) -> Arc<Snapshot> {
        let sample = MetricsSample {
            metrics: Default::default(),
            scraped_at: SystemTime::UNIX_EPOCH + Duration::from_millis(scraped_ms),
            errors: vec![],
        };
        Arc::new(Snapshot {
            epoch: 1,
            seq,
            endpoints: vec![EndpointState {
                endpoint: Arc::new(Endpoint {
                    id: EndpointId::new("a"),
                    address: "10.0.0.1:8000".into(),
                    metrics_url: String::new(),
                    engine: "vllm".into(),
                    labels: Default::default(),
                }),
                metrics: MetricsState::Known { sample: Arc::new(sample), last_error: None },
                shared_load: Load::default(),
                shared_sent_since_scrape: shared_sent,
            }],
            published_at: SystemTime::UNIX_EPOCH,
            routed_blocks: Vec::new(),
            objectives: Default::default(),
            publish_span: None,
        })
    }

    #[test]
    fn replaced_views_are_dropped_off_the_applying_thread() {
        struct Probe(std::sync::mpsc::Sender<Option<String>>);
        impl Drop for Probe {
            fn drop(&mut self) {
                let _ = self.0.send(std::thread::current().name().map(str::to_string));
            }
        }
        let (tx, rx) = std::sync::mpsc::channel();
        reclaim(Probe(tx.clone()));
        reclaim(Probe(tx));
        for _ in 0..2 {
            let thread = rx.recv_timeout(Duration::from_secs(10)).expect("dropped");
            assert_eq!(thread.as_deref(), Some("switchyard-reclaim"));
        }
    }

    #[test]
    fn counters_of_an_endpoint_that_left_live_while_requests_are_in_flight() {
        let mut builder = ViewBuilder::default();
        let view = builder.next(&PickerView::empty(), snapshot(1, 100, 0)).expect("view");
        let counters = view.counters[0].clone();
        counters.start(10);
        let empty = Arc::new(Snapshot { seq: 2, endpoints: vec![], ..snapshot(2, 100, 0).as_ref().clone() });
        let view = builder.next(&view, empty).expect("view");
        assert_eq!(builder.counters.len(), 1, "a request is still in flight to it");
        assert_eq!(view.tracked, 1, "and the view says so (switchyard_picker_tracked_endpoints)");
        counters.finish(10);
        let empty = Arc::new(Snapshot { seq: 3, endpoints: vec![], ..snapshot(3, 100, 0).as_ref().clone() });
        let view = builder.next(&view, empty).expect("view");
        assert!(builder.counters.is_empty(), "forgotten once idle");
        assert_eq!(view.tracked, 0);
        let back = builder.next(&view, snapshot(4, 100, 0)).expect("view");
        assert!(!Arc::ptr_eq(&back.counters[0], &counters), "a returning endpoint starts afresh");
    }

    #[test]
    fn sends_since_the_scrape_add_the_other_pickers_without_counting_this_one_twice() {
        let mut builder = ViewBuilder::default();
        let view = builder.next(&PickerView::empty(), snapshot(1, 100, 0)).expect("view");
        view.counters[0].start(0);
        view.counters[0].start(0);
        assert_eq!(view.local_load(0).sent_since_scrape, 2);
        assert_eq!(view.own_sent_since_scrape(0), (2, 100_000));
        // The leader now says 5 were sent since that scrape, this picker's report not among them.
        let view = builder.next(&view, snapshot(2, 100, 5)).expect("view");
        assert_eq!(view.local_load(0).sent_since_scrape, 7);
        // This picker reported its 2 against that scrape: they are part of the 5.
        view.counters[0].reported_sent.store(2, Ordering::Relaxed);
        view.counters[0].reported_sent_scrape.store(100_000, Ordering::Relaxed);
        assert_eq!(view.local_load(0).sent_since_scrape, 5);
        // A new scrape: the count starts again.
        let view = builder.next(&view, snapshot(3, 150, 0)).expect("view");
        assert_eq!(view.local_load(0).sent_since_scrape, 0);
        assert_eq!(view.own_sent_since_scrape(0), (0, 150_000));
    }

    #[test]
    fn first_tokens_teach_a_smoothed_time_per_queued_request() {
        let c = EndpointCounters::default();
        assert!(c.seconds_per_queued().is_nan(), "nothing learnt yet");
        // 0.4 s with three ahead: 0.1 s per queued request, the request itself included.
        c.observe_first_token(Duration::from_millis(400), 3.0);
        assert!((c.seconds_per_queued() - 0.1).abs() < 1e-9);
        // A slower sample moves the mean a tenth of the way.
        c.observe_first_token(Duration::from_millis(1100), 0.0);
        assert!((c.seconds_per_queued() - 0.2).abs() < 1e-9, "{}", c.seconds_per_queued());
        // An unknown queue counts as empty; a negative one (sends raced a scrape) too.
        c.observe_first_token(Duration::from_millis(200), f64::NAN);
        c.observe_first_token(Duration::from_millis(200), -3.0);
        assert!((c.seconds_per_queued() - 0.2).abs() < 1e-9);
    }
}
