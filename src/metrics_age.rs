//! The per-endpoint metrics-age gauge (`switchyard_<role>_endpoint_metrics_age_seconds{endpoint}`):
//! how old each endpoint's last good scrape is in the snapshot a role holds.
//!
//! A Prometheus collector computes it when `/metrics` is read, so the age keeps growing while
//! nothing new arrives (a picker cut off from its leader, an endpoint whose scrapes fail), and an
//! endpoint that left the snapshot has no series; neither has one never scraped. It does not judge
//! freshness: the scheduler does, against `--metrics-staleness-threshold`.

use std::sync::Arc;
use std::time::SystemTime;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::model::{EndpointId, Snapshot};

type Source = Box<dyn Fn() -> Option<Arc<Snapshot>> + Send + Sync>;

/// Reads the snapshot its source returns at each scrape of `/metrics`.
pub struct MetricsAge {
    name: &'static str,
    source: Source,
}

impl MetricsAge {
    /// Registers the gauge `name` on `registry`; `source` gives the snapshot held at each scrape
    /// (`None`: no series, e.g. on an aggregator that does not lead).
    pub fn register(
        registry: &mut Registry,
        name: &'static str,
        source: impl Fn() -> Option<Arc<Snapshot>> + Send + Sync + 'static,
    ) {
        registry.register_collector(Box::new(MetricsAge { name, source: Box::new(source) }));
    }
}

/// Each endpoint of `snapshot` with a good scrape, and that scrape's age at `now` in seconds (0
/// when the scraping host's clock is ahead of this one).
pub fn ages(snapshot: &Snapshot, now: SystemTime) -> impl Iterator<Item = (&EndpointId, f64)> {
    snapshot.endpoints.iter().filter_map(move |e| {
        let sample = e.metrics.sample()?;
        Some((&e.endpoint.id, now.duration_since(sample.scraped_at).unwrap_or_default().as_secs_f64()))
    })
}

impl std::fmt::Debug for MetricsAge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsAge").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Collector for MetricsAge {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(snapshot) = (self.source)() else { return Ok(()) };
        let help = "Age of each endpoint's last good metrics scrape in the snapshot held";
        let mut family = encoder.encode_descriptor(self.name, help, None, MetricType::Gauge)?;
        for (id, age) in ages(&snapshot, SystemTime::now()) {
            let labels = [("endpoint", id.as_str())];
            ConstGauge::new(age).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::model::{Endpoint, EndpointState, Load, MetricsSample, MetricsState};

    fn state(id: &str, scraped_at: Option<SystemTime>) -> EndpointState {
        EndpointState {
            endpoint: Arc::new(Endpoint {
                id: EndpointId::new(id),
                address: "10.0.0.1:8000".into(),
                metrics_url: String::new(),
                engine: "vllm".into(),
                labels: Default::default(),
            }),
            metrics: match scraped_at {
                None => MetricsState::Unknown,
                Some(at) => MetricsState::Known {
                    sample: Arc::new(MetricsSample { metrics: Default::default(), scraped_at: at, errors: vec![] }),
                    last_error: Some("the scrapes since failed".into()),
                },
            },
            shared_load: Load::default(),
            shared_sent_since_scrape: 0,
        }
    }

    fn encode(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).expect("encode");
        text
    }

    fn age(text: &str, endpoint: &str) -> Option<f64> {
        let prefix = format!("switchyard_test_endpoint_metrics_age_seconds{{endpoint=\"{endpoint}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(prefix.as_str())?.parse().ok())
    }

    #[test]
    fn ages_grow_at_each_scrape_and_endpoints_that_left_have_no_series() {
        let now = SystemTime::now();
        let first = Snapshot {
            endpoints: vec![
                state("a", Some(now - Duration::from_secs(3))),
                state("b", Some(now + Duration::from_secs(1))),
                state("never", None),
            ],
            ..(*Snapshot::empty()).clone()
        };
        let held = Arc::new(Mutex::new(Some(Arc::new(first))));
        let mut registry = Registry::default();
        let source = held.clone();
        MetricsAge::register(&mut registry, "switchyard_test_endpoint_metrics_age_seconds", move || {
            source.lock().expect("lock").clone()
        });
        let text = encode(&registry);
        let a = age(&text, "a").expect("a has a series");
        assert!((3.0..60.0).contains(&a), "{text}");
        assert_eq!(age(&text, "b"), Some(0.0), "a clock ahead reads as fresh, not negative");
        assert!(!text.contains("never"), "never scraped: no series\n{text}");
        // Nothing new arrives: the same sample reads older at the next scrape.
        let later = (1..200)
            .map(|_| age(&encode(&registry), "a").unwrap_or(0.0))
            .find(|x| *x > a)
            .expect("the age grows while nothing new arrives");
        assert!(later > a);
        // `a` leaves: its series goes with it.
        let second = Snapshot { endpoints: vec![state("b", Some(now))], ..(*Snapshot::empty()).clone() };
        *held.lock().expect("lock") = Some(Arc::new(second));
        let text = encode(&registry);
        assert!(age(&text, "a").is_none() && age(&text, "b").is_some(), "{text}");
        *held.lock().expect("lock") = None;
        assert!(!encode(&registry).contains("endpoint="), "no snapshot held: no series");
    }
}
