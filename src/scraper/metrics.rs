//! The scraper's Prometheus metrics: scrape latency and errors per endpoint, and extraction errors
//! per endpoint and mapped metric.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

#[derive(Clone)]
pub struct ScrapeMetrics {
    /// `switchyard_scrape_duration_seconds{endpoint}`.
    latency: Family<Labels, Histogram>,
    /// `switchyard_scrape_errors_total{endpoint,kind}`.
    errors: Family<Labels, Counter>,
    /// Ticks skipped because the previous scrape was still running.
    skipped: Family<Labels, Counter>,
    /// `switchyard_scrape_extraction_errors_total{endpoint,metric}`: scrapes whose page lacked a
    /// mapped metric (or had a bad value for it).
    extraction: Family<Labels, Counter>,
}

impl ScrapeMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = ScrapeMetrics {
            latency: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 14))),
            errors: Family::default(),
            skipped: Family::default(),
            extraction: Family::default(),
        };
        registry.register(
            "switchyard_scrape_duration_seconds",
            "Time to fetch and normalize a metrics page",
            m.latency.clone(),
        );
        registry.register("switchyard_scrape_errors", "Failed scrapes by endpoint and kind", m.errors.clone());
        registry.register(
            "switchyard_scrape_skipped",
            "Scrape ticks skipped while the previous scrape was running",
            m.skipped.clone(),
        );
        registry.register(
            "switchyard_scrape_extraction_errors",
            "Scrapes whose page lacked a mapped metric or had a bad value for it, by endpoint and metric",
            m.extraction.clone(),
        );
        m
    }

    pub fn detached() -> Self {
        Self::new(&mut Registry::default())
    }

    pub(super) fn scraped(&self, endpoint: &str, took: Duration) {
        self.latency.get_or_create(&vec![("endpoint".into(), endpoint.to_string())]).observe(took.as_secs_f64());
    }

    pub(super) fn failed(&self, endpoint: &str, kind: &str) {
        self.errors
            .get_or_create(&vec![("endpoint".into(), endpoint.to_string()), ("kind".into(), kind.to_string())])
            .inc();
    }

    /// `metric` is the mapping's field name (`queued`, `kv_usage`, ...).
    pub(super) fn extraction_failed(&self, endpoint: &str, metric: &str) {
        self.extraction
            .get_or_create(&vec![("endpoint".into(), endpoint.to_string()), ("metric".into(), metric.to_string())])
            .inc();
    }

    pub(super) fn skipped(&self, endpoint: &str) {
        self.skipped.get_or_create(&vec![("endpoint".into(), endpoint.to_string())]).inc();
    }

    /// Drops the series of an endpoint that is no longer scraped.
    pub(super) fn forget(&self, endpoint: &str) {
        self.latency.remove(&vec![("endpoint".into(), endpoint.to_string())]);
        self.skipped.remove(&vec![("endpoint".into(), endpoint.to_string())]);
    }
}
