//! The per-model series a request records into (`inference_objective_*{model_name,
//! target_model_name}`), resolved once per (model, target model) pair and kept: a request looks
//! its pair up by `&str` and records through handles, without building a label set or hashing
//! one per observation. Model names come from clients, so the pairs kept are bounded; past the
//! bound a request resolves its series from the families, as before (same series, slower).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use super::response::Usage;

pub(super) type Labels = Vec<(String, String)>;

/// Pairs kept resolved (a hostile client can name any number of models).
const MAX_PAIRS: usize = 1024;

/// The families a series is resolved from.
#[derive(Clone)]
pub(super) struct Families {
    pub(super) requests: Family<Labels, Counter>,
    pub(super) durations: Family<Labels, Histogram>,
    pub(super) request_sizes: Family<Labels, Histogram>,
    pub(super) response_sizes: Family<Labels, Histogram>,
    pub(super) running: Family<Labels, Gauge>,
    pub(super) ntpot: Family<Labels, Histogram>,
    pub(super) input_tokens: Family<Labels, Histogram>,
    pub(super) output_tokens: Family<Labels, Histogram>,
}

/// One (model, target model) pair's series.
pub struct ModelSeries {
    model: String,
    target: String,
    /// `inference_objective_request_total` by priority (few values), resolved when first seen.
    requests: RwLock<Vec<(i32, Counter)>>,
    requests_family: Family<Labels, Counter>,
    durations: Histogram,
    request_sizes: Histogram,
    response_sizes: Histogram,
    running: Gauge,
    ntpot: Histogram,
    input_tokens: Histogram,
    output_tokens: Histogram,
}

/// Counts a routed request in `inference_objective_running_requests` until dropped.
pub struct RunningRequest(Gauge);

impl Drop for RunningRequest {
    fn drop(&mut self) {
        self.0.dec();
    }
}

pub(super) fn model_labels(model: &str, target: &str) -> Labels {
    vec![("model_name".into(), model.to_string()), ("target_model_name".into(), target.to_string())]
}

impl ModelSeries {
    fn resolve(f: &Families, model: &str, target: &str) -> Self {
        let labels = model_labels(model, target);
        ModelSeries {
            model: model.to_string(),
            target: target.to_string(),
            requests: RwLock::default(),
            requests_family: f.requests.clone(),
            durations: f.durations.get_or_create(&labels).clone(),
            request_sizes: f.request_sizes.get_or_create(&labels).clone(),
            response_sizes: f.response_sizes.get_or_create(&labels).clone(),
            running: f.running.get_or_create(&vec![("model_name".into(), model.to_string())]).clone(),
            ntpot: f.ntpot.get_or_create(&labels).clone(),
            input_tokens: f.input_tokens.get_or_create(&labels).clone(),
            output_tokens: f.output_tokens.get_or_create(&labels).clone(),
        }
    }

    /// `inference_objective_request_total{model_name,target_model_name,priority}`.
    pub(super) fn record_request(&self, priority: i32) {
        let known = self
            .requests
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(p, _)| *p == priority)
            .map(|(_, c)| c.clone());
        let counter = known.unwrap_or_else(|| {
            let labels = vec![
                ("model_name".into(), self.model.clone()),
                ("target_model_name".into(), self.target.clone()),
                ("priority".into(), priority.to_string()),
            ];
            let c = self.requests_family.get_or_create(&labels).clone();
            let mut known = self.requests.write().unwrap_or_else(|p| p.into_inner());
            // Priorities come from configured objectives: few, but bounded all the same.
            if known.len() < 64 && !known.iter().any(|(p, _)| *p == priority) {
                known.push((priority, c.clone()));
            }
            c
        });
        counter.inc();
    }

    /// A request forwarded upstream with a body of `bytes`: running until the guard is dropped.
    pub(super) fn record_forwarded(&self, bytes: usize) -> RunningRequest {
        self.request_sizes.observe(bytes as f64);
        self.running.inc();
        RunningRequest(self.running.clone())
    }

    pub(super) fn record_usage(&self, u: Usage) {
        self.input_tokens.observe(u.prompt_tokens as f64);
        self.output_tokens.observe(u.completion_tokens as f64);
    }

    pub(super) fn record_response(&self, took: Duration, bytes: u64, usage: Option<Usage>) {
        self.durations.observe(took.as_secs_f64());
        self.response_sizes.observe(bytes as f64);
        if let Some(u) = usage.filter(|u| u.completion_tokens > 0) {
            self.ntpot.observe(took.as_secs_f64() / u.completion_tokens as f64);
        }
    }
}

/// Model → target model → series.
type Pairs = HashMap<String, HashMap<String, Arc<ModelSeries>>>;

/// Resolved pairs, and how many.
#[derive(Clone, Default)]
pub(super) struct SeriesCache {
    pairs: Arc<RwLock<(usize, Pairs)>>,
}

impl SeriesCache {
    pub(super) fn get(&self, families: &Families, model: &str, target: &str) -> Arc<ModelSeries> {
        {
            let pairs = self.pairs.read().unwrap_or_else(|p| p.into_inner());
            if let Some(s) = pairs.1.get(model).and_then(|t| t.get(target)) {
                return s.clone();
            }
        }
        let series = Arc::new(ModelSeries::resolve(families, model, target));
        let mut pairs = self.pairs.write().unwrap_or_else(|p| p.into_inner());
        let (count, map) = &mut *pairs;
        if *count < MAX_PAIRS {
            let targets = map.entry(model.to_string()).or_default();
            if !targets.contains_key(target) {
                targets.insert(target.to_string(), series.clone());
                *count += 1;
            }
        }
        series
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.pairs.read().unwrap_or_else(|p| p.into_inner()).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn families() -> Families {
        Families {
            requests: Family::default(),
            durations: Family::new_with_constructor(|| Histogram::new([1.0])),
            request_sizes: Family::new_with_constructor(|| Histogram::new([1.0])),
            response_sizes: Family::new_with_constructor(|| Histogram::new([1.0])),
            running: Family::default(),
            ntpot: Family::new_with_constructor(|| Histogram::new([1.0])),
            input_tokens: Family::new_with_constructor(|| Histogram::new([1.0])),
            output_tokens: Family::new_with_constructor(|| Histogram::new([1.0])),
        }
    }

    #[test]
    fn a_pair_records_into_the_family_series_and_is_resolved_once() {
        let (f, cache) = (families(), SeriesCache::default());
        let a = cache.get(&f, "m", "t");
        assert!(Arc::ptr_eq(&a, &cache.get(&f, "m", "t")), "resolved once");
        a.record_request(2);
        cache.get(&f, "m", "t").record_request(2);
        let labels = |p: &str| {
            vec![
                ("model_name".to_string(), "m".to_string()),
                ("target_model_name".to_string(), "t".to_string()),
                ("priority".to_string(), p.to_string()),
            ]
        };
        assert_eq!(f.requests.get_or_create(&labels("2")).get(), 2, "the family's own series");
        let running = a.record_forwarded(10);
        assert_eq!(f.running.get_or_create(&vec![("model_name".into(), "m".into())]).get(), 1);
        drop(running);
        assert_eq!(f.running.get_or_create(&vec![("model_name".into(), "m".into())]).get(), 0);
    }

    #[test]
    fn pairs_kept_are_bounded_and_the_rest_still_record() {
        let (f, cache) = (families(), SeriesCache::default());
        for i in 0..MAX_PAIRS + 10 {
            cache.get(&f, &format!("m{i}"), "t").record_request(0);
        }
        assert_eq!(cache.len(), MAX_PAIRS);
        let last = vec![
            ("model_name".to_string(), format!("m{}", MAX_PAIRS + 9)),
            ("target_model_name".to_string(), "t".to_string()),
            ("priority".to_string(), "0".to_string()),
        ];
        assert_eq!(f.requests.get_or_create(&last).get(), 1, "a pair past the bound is still counted");
    }
}
