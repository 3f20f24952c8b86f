//! The scraper's Prometheus metrics: scrape latency and errors per endpoint, and extraction errors
//! per endpoint and mapped metric. Every series of an endpoint goes when it is no longer scraped
//! here (removed from the pool, or assigned to another scraper), so churn leaves nothing behind.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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
    /// The label sets of `errors` and `extraction` created for each endpoint, so that forgetting
    /// the endpoint removes them (a family cannot be searched by one label).
    created: Arc<Mutex<HashMap<String, Vec<Labels>>>>,
}

impl ScrapeMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = ScrapeMetrics {
            latency: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 14))),
            errors: Family::default(),
            skipped: Family::default(),
            extraction: Family::default(),
            created: Arc::default(),
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

    /// The endpoint's latency histogram, resolved once by its actor (a lookup per scrape built
    /// and hashed a label set under the family's lock, shared by every lane).
    pub(super) fn latency_of(&self, endpoint: &str) -> Histogram {
        self.latency.get_or_create(&vec![("endpoint".into(), endpoint.to_string())]).clone()
    }

    pub(super) fn failed(&self, endpoint: &str, kind: &str) {
        let labels = vec![("endpoint".into(), endpoint.to_string()), ("kind".into(), kind.to_string())];
        self.note_created(endpoint, &self.errors, &labels);
        self.errors.get_or_create(&labels).inc();
    }

    /// `metric` is the mapping's field name (`queued`, `kv_usage`, ...).
    pub(super) fn extraction_failed(&self, endpoint: &str, metric: &str) {
        let labels = vec![("endpoint".into(), endpoint.to_string()), ("metric".into(), metric.to_string())];
        self.note_created(endpoint, &self.extraction, &labels);
        self.extraction.get_or_create(&labels).inc();
    }

    /// Remembers `labels` under `endpoint` the first time `family` gets them (failures only, so
    /// the lock is not on the path of a good scrape).
    fn note_created(&self, endpoint: &str, family: &Family<Labels, Counter>, labels: &Labels) {
        if family.get(labels).is_none() {
            let mut created = self.created.lock().unwrap_or_else(|p| p.into_inner());
            let sets = created.entry(endpoint.to_string()).or_default();
            if !sets.contains(labels) {
                sets.push(labels.clone());
            }
        }
    }

    pub(super) fn skipped(&self, endpoint: &str) {
        self.skipped.get_or_create(&vec![("endpoint".into(), endpoint.to_string())]).inc();
    }

    /// Drops every series of an endpoint that is no longer scraped here.
    pub(super) fn forget(&self, endpoint: &str) {
        self.latency.remove(&vec![("endpoint".into(), endpoint.to_string())]);
        self.skipped.remove(&vec![("endpoint".into(), endpoint.to_string())]);
        let created = self.created.lock().unwrap_or_else(|p| p.into_inner()).remove(endpoint);
        for labels in created.unwrap_or_default() {
            // Each set belongs to one of the two families; removing from the other is a no-op.
            self.errors.remove(&labels);
            self.extraction.remove(&labels);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposition(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).expect("encode");
        text
    }

    /// Found by the soak benchmark: an endpoint whose scrapes had failed kept its error series
    /// after it left (pods replaced under new names piled them up for the life of the process).
    #[test]
    fn test_forgotten_endpoint_keeps_no_error_or_extraction_series() {
        let mut registry = Registry::default();
        let m = ScrapeMetrics::new(&mut registry);
        for endpoint in ["gone", "stays"] {
            m.latency_of(endpoint).observe(0.003);
            m.failed(endpoint, "refused");
            m.failed(endpoint, "refused");
            m.failed(endpoint, "timeout");
            m.extraction_failed(endpoint, "kv_usage");
            m.skipped(endpoint);
        }
        m.forget("gone");
        let text = exposition(&registry);
        assert!(!text.contains("endpoint=\"gone\""), "{text}");
        assert!(text.contains("switchyard_scrape_errors_total{endpoint=\"stays\",kind=\"refused\"} 2"), "{text}");
        assert!(text.contains("switchyard_scrape_extraction_errors_total{endpoint=\"stays\",metric=\"kv_usage\"} 1"));
        // Forgotten, then failing again (assigned back): counted from zero.
        m.failed("gone", "refused");
        m.forget("stays");
        let text = exposition(&registry);
        assert!(text.contains("switchyard_scrape_errors_total{endpoint=\"gone\",kind=\"refused\"} 1"), "{text}");
        assert!(!text.contains("endpoint=\"stays\""), "{text}");
        assert!(m.created.lock().expect("lock").keys().eq(["gone"]), "nothing kept for forgotten endpoints");
    }
}
