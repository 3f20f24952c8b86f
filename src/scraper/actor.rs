//! The scraper actor: a thin shell that ticks, runs one fetch + normalize at a time on its own
//! event loop, and publishes what happened. Errors are logged on transitions only.
//!
//! A failing endpoint is retried with exponential backoff and jitter ([`retry_delay`]): the
//! interval doubled per consecutive failure, capped at [`backoff_cap`] (20 intervals, at most
//! 5 s), back to every interval after the first success. Backing off does not change what the
//! consumer sees: the last good sample keeps ageing, so the endpoint stays out of routing.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use prometheus_client::metrics::histogram::Histogram;
use rand::{Rng as _, SeedableRng as _};
use tokio::time::Instant;

use super::fetch::{Fetcher, ScrapeError, USER_AGENT};
use super::http1::Conn;
use super::outbox::Outbox;
use super::{MetricsScraped, ScrapeFailed};
use crate::metrics::{EngineMapping, Normalized};
use crate::model::{Endpoint, MetricsSample};

pub struct ScraperActor {
    endpoint: Endpoint,
    /// Parsed once; `None` when the endpoint's URL is invalid (every tick then fails clearly).
    url: Option<reqwest::Url>,
    mapping: Arc<EngineMapping>,
    fetcher: Fetcher,
    /// This endpoint's own connection (plain HTTP only); out with the scrape in flight.
    conn: Option<Box<Conn>>,
    interval: Duration,
    outbox: Arc<Outbox>,
    in_flight: bool,
    /// Kind of the current failure, for transition logging.
    failing: Option<&'static str>,
    /// Consecutive failed scrapes.
    failures: u32,
    /// Mapped metrics missing from the last page read, for transition logging.
    missing: Vec<String>,
    /// While backing off: no attempt before this.
    retry_at: Option<Instant>,
    /// Jitter for the backoff.
    rng: rand::rngs::SmallRng,
    pub(super) stats: ScraperStats,
    /// The metrics and this endpoint's latency histogram in them.
    metrics: Option<(super::ScrapeMetrics, Histogram)>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ScraperStats {
    pub ok: u64,
    pub failed: u64,
    /// Ticks skipped because the previous scrape was still running.
    pub skipped: u64,
    /// Ticks skipped while backing off a failing endpoint.
    pub backed_off: u64,
}

/// The longest pause between attempts at a failing endpoint: 20 intervals, at most 5 s (never
/// less than one interval).
pub fn backoff_cap(interval: Duration) -> Duration {
    interval.saturating_mul(20).min(Duration::from_secs(5)).max(interval)
}

/// The pause before the next attempt after `failures` consecutive failures: the interval doubled
/// per failure up to [`backoff_cap`], half of it fixed and half scaled by `jitter` (in `[0, 1)`),
/// so endpoints that failed together do not retry in step.
pub fn retry_delay(interval: Duration, failures: u32, jitter: f64) -> Duration {
    let base = interval.saturating_mul(1 << failures.min(20)).min(backoff_cap(interval));
    base / 2 + (base / 2).mul_f64(jitter.clamp(0.0, 1.0))
}

impl ScraperActor {
    /// Started by the supervisor, in one of its lanes (whose outbox it publishes to).
    pub(super) fn new(
        endpoint: Endpoint,
        mapping: Arc<EngineMapping>,
        fetcher: Fetcher,
        interval: Duration,
        outbox: Arc<Outbox>,
    ) -> Self {
        let url = reqwest::Url::parse(&endpoint.metrics_url).ok();
        ScraperActor {
            conn: url.as_ref().and_then(|u| Conn::for_url(u, USER_AGENT)).map(Box::new),
            url,
            endpoint,
            mapping,
            fetcher,
            interval,
            outbox,
            in_flight: false,
            failing: None,
            failures: 0,
            missing: Vec::new(),
            retry_at: None,
            rng: rand::rngs::SmallRng::from_os_rng(),
            stats: ScraperStats::default(),
            metrics: None,
        }
    }

    pub(super) fn with_metrics(mut self, metrics: super::ScrapeMetrics) -> Self {
        let latency = metrics.latency_of(self.endpoint.id.as_str());
        self.metrics = Some((metrics, latency));
        self
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.in_flight {
            self.stats.skipped += 1;
            if let Some((m, _)) = &self.metrics {
                m.skipped(self.endpoint.id.as_str());
            }
            return;
        }
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            self.stats.backed_off += 1;
            return;
        }
        let Some(url) = self.url.clone() else {
            let error = ScrapeError::Request(format!("invalid metrics URL {:?}", self.endpoint.metrics_url));
            self.on_scraped(Err(error), Duration::ZERO);
            return;
        };
        self.in_flight = true;
        let (fetcher, mapping) = (self.fetcher.clone(), self.mapping.clone());
        let started = Instant::now();
        // Only an exporter or a debug log would show it; creating it formats its fields.
        let span = if crate::telemetry::traces_on() || tracing::enabled!(tracing::Level::DEBUG) {
            tracing::info_span!(
                "scrape",
                otel.kind = "client",
                endpoint = %self.endpoint.id,
                engine = %self.endpoint.engine,
                status = tracing::field::Empty,
                bytes = tracing::field::Empty,
            )
        } else {
            tracing::Span::none()
        };
        // On this actor's own thread (its lane): no hand-off to another thread and back.
        let mut conn = self.conn.take();
        let task = async move {
            let result = fetcher.scrape_on(conn.as_deref_mut(), &url, &mapping).await;
            (result, conn)
        };
        let task = tracing::Instrument::instrument(task, span.clone());
        ctx.spawn(actix::fut::wrap_future::<_, Self>(task).map(move |(result, conn), act, _| {
            act.in_flight = false;
            act.conn = conn;
            span.record("status", result.as_ref().map_or_else(|e| e.kind(), |_| "ok"));
            act.on_scraped(result, started.elapsed());
        }));
    }

    fn on_scraped(&mut self, result: Result<Normalized, ScrapeError>, latency: Duration) {
        let endpoint = self.endpoint.id.clone();
        match result {
            Ok(normalized) => {
                self.stats.ok += 1;
                (self.failures, self.retry_at) = (0, None);
                if let Some((_, histogram)) = &self.metrics {
                    histogram.observe(latency.as_secs_f64());
                }
                if let Some(kind) = self.failing.take() {
                    tracing::info!(%endpoint, previous_error = kind, "scrape recovered");
                }
                self.on_extracted(&normalized.errors);
                let sample = MetricsSample {
                    metrics: normalized.metrics,
                    scraped_at: SystemTime::now(),
                    errors: normalized.errors,
                };
                self.outbox.publish(Ok(MetricsScraped { endpoint, sample: Arc::new(sample), latency }));
            }
            Err(error) => {
                self.stats.failed += 1;
                self.failures = self.failures.saturating_add(1);
                let delay = retry_delay(self.interval, self.failures, self.rng.random());
                self.retry_at = Some(Instant::now() + delay);
                if let Some((m, _)) = &self.metrics {
                    m.failed(endpoint.as_str(), error.kind());
                }
                if self.failing != Some(error.kind()) {
                    tracing::warn!(%endpoint, url = %self.endpoint.metrics_url, %error, "scrape failing");
                    self.failing = Some(error.kind());
                }
                self.outbox.publish(Err(ScrapeFailed { endpoint, error, at: SystemTime::now(), latency }));
            }
        }
    }

    /// Counts each mapped metric the page lacked and logs only changes: the first page missing a
    /// metric warns once, the first page that has it again logs once.
    fn on_extracted(&mut self, errors: &[String]) {
        let endpoint = &self.endpoint.id;
        let now: Vec<(&str, &str)> = errors.iter().map(|e| split_error(e)).collect();
        for (metric, error) in &now {
            if let Some((m, _)) = &self.metrics {
                m.extraction_failed(endpoint.as_str(), metric);
            }
            if !self.missing.iter().any(|m| m == metric) {
                tracing::warn!(%endpoint, metric, error, "mapped metric missing from the page");
            }
        }
        for metric in &self.missing {
            if !now.iter().any(|(m, _)| m == metric) {
                tracing::info!(%endpoint, metric = metric.as_str(), "mapped metric back on the page");
            }
        }
        self.missing = now.iter().map(|(m, _)| (*m).to_string()).collect();
    }
}

/// `("kv_usage", "metric family ... not found")` from a normalizer message `kv_usage: ...`.
fn split_error(e: &str) -> (&str, &str) {
    e.split_once(": ").unwrap_or((e, ""))
}

impl Actor for ScraperActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.tick(ctx);
        ctx.run_interval(self.interval, |act, ctx| act.tick(ctx));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_double_with_jitter_up_to_the_cap() {
        let ms = Duration::from_millis;
        let interval = ms(50);
        assert_eq!(backoff_cap(interval), Duration::from_secs(1));
        assert_eq!(backoff_cap(Duration::from_secs(1)), Duration::from_secs(5));
        assert_eq!(backoff_cap(Duration::from_secs(10)), Duration::from_secs(10), "never below the interval");
        let bounds = |failures| (retry_delay(interval, failures, 0.0), retry_delay(interval, failures, 0.999_999));
        assert_eq!(bounds(1).0, ms(50));
        assert!(bounds(1).1 < ms(100));
        assert_eq!(bounds(2).0, ms(100));
        assert_eq!(bounds(4).0, ms(400));
        for failures in [5, 6, 30, u32::MAX] {
            let (low, high) = bounds(failures);
            assert_eq!(low, ms(500), "{failures}");
            assert!(high < ms(1000), "{failures}: {high:?}");
        }
        assert_eq!(retry_delay(interval, 3, 0.5), ms(300), "jitter spreads the second half");
    }
}
