//! Upstream's pool gauges, computed from the snapshot the picker holds each time `/metrics` is
//! read: `inference_pool_average_kv_cache_utilization`, `_average_queue_size`,
//! `_average_running_requests`, `_ready_pods` (label `name`) and
//! `inference_pool_per_pod_queue_size{name,model_server_pod}`; plus
//! `inference_extension_info{commit,build_ref}`.
//!
//! Upstream recomputes the averages every `--refresh-prometheus-metrics-interval`; reading the
//! held snapshot at scrape time gives the same numbers without a timer. Averages and `ready_pods`
//! count only endpoints whose last good scrape is fresher than the staleness threshold (upstream
//! uses 2 s for `ready_pods`), and an endpoint whose page lacks a value is left out of that
//! value's average (a missing value is not 0). `per_pod_queue_size` lists every endpoint with a
//! known queue. `name` is the pool name when the role knows it (`--pool-name`), else
//! `switchyard`. It records nothing on the request path.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::model::Snapshot;

/// Pool name used when the role was not given one.
pub const DEFAULT_POOL_NAME: &str = "switchyard";

pub(super) struct PoolGauges {
    pub(super) held: Arc<arc_swap::ArcSwap<Snapshot>>,
    pub(super) pool: Arc<arc_swap::ArcSwap<String>>,
    pub(super) fresh_within: Duration,
}

impl std::fmt::Debug for PoolGauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolGauges").field("pool", &self.pool.load()).finish_non_exhaustive()
    }
}

/// Averages over fresh endpoints (`None`: no fresh endpoint has that value).
#[derive(Debug, Default, PartialEq)]
pub(super) struct PoolSummary {
    pub kv: Option<f64>,
    pub queue: Option<f64>,
    pub running: Option<f64>,
    pub ready: usize,
}

pub(super) fn summarize(snapshot: &Snapshot, now: SystemTime, fresh_within: Duration) -> PoolSummary {
    let (mut kv, mut queue, mut running) = ((0.0, 0u32), (0.0, 0u32), (0.0, 0u32));
    let mut ready = 0;
    for e in &snapshot.endpoints {
        let Some(s) = e.metrics.sample() else { continue };
        if now.duration_since(s.scraped_at).unwrap_or_default() > fresh_within {
            continue;
        }
        ready += 1;
        let m = &s.metrics;
        let add = |acc: &mut (f64, u32), v: Option<f64>| {
            if let Some(v) = v {
                acc.0 += v;
                acc.1 += 1;
            }
        };
        add(&mut kv, m.kv_usage);
        add(&mut queue, m.queued.map(|q| q as f64));
        add(&mut running, m.running.map(|r| r as f64));
    }
    let avg = |(sum, n): (f64, u32)| (n > 0).then(|| sum / f64::from(n));
    PoolSummary { kv: avg(kv), queue: avg(queue), running: avg(running), ready }
}

impl Collector for PoolGauges {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let snapshot = self.held.load_full();
        let pool = self.pool.load_full();
        let name = [("name", pool.as_str())];
        let summary = summarize(&snapshot, SystemTime::now(), self.fresh_within);
        let gauges = [
            (
                "inference_pool_average_kv_cache_utilization",
                "Average KV-cache utilization of the pool's fresh endpoints",
                summary.kv,
            ),
            (
                "inference_pool_average_queue_size",
                "Average queued requests of the pool's fresh endpoints",
                summary.queue,
            ),
            (
                "inference_pool_average_running_requests",
                "Average running requests of the pool's fresh endpoints",
                summary.running,
            ),
            ("inference_pool_ready_pods", "Endpoints with fresh metrics", Some(summary.ready as f64)),
        ];
        for (metric, help, value) in gauges {
            let mut family = encoder.encode_descriptor(metric, help, None, MetricType::Gauge)?;
            if let Some(v) = value {
                ConstGauge::new(v).encode(family.encode_family(&name)?)?;
            }
        }
        let help = "Queued requests per endpoint of the pool";
        let mut family =
            encoder.encode_descriptor("inference_pool_per_pod_queue_size", help, None, MetricType::Gauge)?;
        for e in &snapshot.endpoints {
            let Some(q) = e.metrics.sample().and_then(|s| s.metrics.queued) else { continue };
            let labels = [("name", pool.as_str()), ("model_server_pod", e.endpoint.id.as_str())];
            ConstGauge::new(q as i64).encode(family.encode_family(&labels)?)?;
        }
        let help = "Build information (value 1)";
        let mut family = encoder.encode_descriptor("inference_extension_info", help, None, MetricType::Gauge)?;
        let labels = [
            ("commit", option_env!("SWITCHYARD_COMMIT").unwrap_or("unknown")),
            ("build_ref", env!("CARGO_PKG_VERSION")),
        ];
        ConstGauge::new(1i64).encode(family.encode_family(&labels)?)?;
        Ok(())
    }
}
