//! Picks per endpoint and herd share, read from the view's per-endpoint counters each time
//! `/metrics` is read: `switchyard_picker_picks_total{endpoint}` and `switchyard_picker_herd_share`.
//!
//! The request path already increments [`EndpointCounters::picks`] for every routed request (the
//! scheduler needs it for sends-since-scrape), so counting picks costs it nothing more: no label
//! vector, no family lookup. An endpoint's series goes when the endpoint leaves the pool and
//! restarts from 0 if it comes back (a counter reset, which `rate()` handles).
//!
//! Herd share is the largest fraction of the picks one endpoint took between two readings at
//! least [`HERD_WINDOW`] apart: a read of `/metrics` sooner than that after the last reading
//! repeats the last value. 0 when nothing was picked in the window. It does not judge whether a
//! share is too large: with one fresh endpoint 1.0 is expected.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use tokio::time::Instant;

use super::view::EndpointCounters;
use crate::model::EndpointId;

/// The shortest window herd share is computed over.
pub const HERD_WINDOW: Duration = Duration::from_secs(1);

/// The endpoints of the view held and their counters, replaced when a new view is installed.
pub(super) type Held = Vec<(EndpointId, Arc<EndpointCounters>)>;

#[derive(Debug)]
pub(super) struct PickCounters {
    pub(super) held: Arc<arc_swap::ArcSwap<Held>>,
    herd: Mutex<HerdWindow>,
}

impl PickCounters {
    pub(super) fn new(held: Arc<arc_swap::ArcSwap<Held>>) -> Self {
        PickCounters { held, herd: Mutex::new(HerdWindow::default()) }
    }
}

/// The reading herd share is measured against, and the last share computed.
#[derive(Debug, Default)]
pub(super) struct HerdWindow {
    at: Option<Instant>,
    picks: HashMap<EndpointId, u64>,
    share: f64,
}

impl HerdWindow {
    /// The share at `now` given the current pick counts; a new reading is taken only once the
    /// previous one is [`HERD_WINDOW`] old.
    pub(super) fn share<'a>(&mut self, now: Instant, current: impl Iterator<Item = (&'a EndpointId, u64)>) -> f64 {
        if self.at.is_some_and(|at| now.duration_since(at) < HERD_WINDOW) {
            return self.share;
        }
        let first = self.at.is_none();
        let (mut total, mut largest) = (0u64, 0u64);
        let mut picks = HashMap::with_capacity(self.picks.len());
        for (id, n) in current {
            // An endpoint not in the previous reading joined during the window (from 0).
            let delta = n.saturating_sub(self.picks.get(id).copied().unwrap_or(0));
            total += delta;
            largest = largest.max(delta);
            picks.insert(id.clone(), n);
        }
        self.share = if first || total == 0 { 0.0 } else { largest as f64 / total as f64 };
        (self.at, self.picks) = (Some(now), picks);
        self.share
    }
}

impl Collector for PickCounters {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let held = self.held.load();
        let mut family = encoder.encode_descriptor(
            "switchyard_picker_picks",
            "Requests routed per endpoint",
            None,
            MetricType::Counter,
        )?;
        for (id, c) in held.iter() {
            let picks = c.picks.load(Ordering::Relaxed);
            ConstCounter::new(picks).encode(family.encode_family(&[("endpoint", id.as_str())])?)?;
        }
        let share = {
            let mut herd = self.herd.lock().unwrap_or_else(|p| p.into_inner());
            herd.share(Instant::now(), held.iter().map(|(id, c)| (id, c.picks.load(Ordering::Relaxed))))
        };
        let help =
            "Largest share of picks one endpoint took over the last window (at least 1 s, between reads of /metrics)";
        let gauge = encoder.encode_descriptor("switchyard_picker_herd_share", help, None, MetricType::Gauge)?;
        ConstGauge::new(share).encode(gauge)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn herd_share_is_the_largest_delta_over_at_least_one_second() {
        let (a, b, c) = (EndpointId::new("a"), EndpointId::new("b"), EndpointId::new("c"));
        let t0 = Instant::now();
        let mut w = HerdWindow::default();
        assert_eq!(w.share(t0, [(&a, 100), (&b, 100)].into_iter()), 0.0, "no window yet");
        // Within the window: the last value repeats and the reading is kept.
        assert_eq!(w.share(t0 + Duration::from_millis(500), [(&a, 190), (&b, 100)].into_iter()), 0.0);
        // a took 90 of 100 since t0.
        let s = w.share(t0 + Duration::from_secs(1), [(&a, 190), (&b, 110)].into_iter());
        assert!((s - 0.9).abs() < 1e-9, "{s}");
        // c joined (from 0), b left: c's 30 of 40.
        let s = w.share(t0 + Duration::from_secs(3), [(&a, 200), (&c, 30)].into_iter());
        assert!((s - 0.75).abs() < 1e-9, "{s}");
        assert_eq!(w.share(t0 + Duration::from_secs(5), [(&a, 200), (&c, 30)].into_iter()), 0.0, "nothing picked");
    }
}
