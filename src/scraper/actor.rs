//! The scraper actor: a thin shell that ticks, runs one fetch + normalize at a time on the tokio
//! pool, and publishes what happened. Errors are logged on transitions only.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use tokio::time::Instant;

use super::fetch::{Fetcher, ScrapeError};
use super::{MetricsScraped, ScrapeFailed, ScrapeSink};
use crate::metrics::{EngineMapping, Normalized};
use crate::model::{Endpoint, MetricsSample};

pub struct ScraperActor {
    endpoint: Endpoint,
    /// Parsed once; `None` when the endpoint's URL is invalid (every tick then fails clearly).
    url: Option<reqwest::Url>,
    mapping: Arc<EngineMapping>,
    fetcher: Fetcher,
    interval: Duration,
    sink: ScrapeSink,
    in_flight: bool,
    /// Kind of the current failure, for transition logging.
    failing: Option<&'static str>,
    pub(super) stats: ScraperStats,
    metrics: Option<super::ScrapeMetrics>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ScraperStats {
    pub ok: u64,
    pub failed: u64,
    /// Ticks skipped because the previous scrape was still running.
    pub skipped: u64,
}

impl ScraperActor {
    pub fn new(
        endpoint: Endpoint,
        mapping: Arc<EngineMapping>,
        fetcher: Fetcher,
        interval: Duration,
        sink: ScrapeSink,
    ) -> Self {
        ScraperActor {
            url: reqwest::Url::parse(&endpoint.metrics_url).ok(),
            endpoint,
            mapping,
            fetcher,
            interval,
            sink,
            in_flight: false,
            failing: None,
            stats: ScraperStats::default(),
            metrics: None,
        }
    }

    pub fn with_metrics(mut self, metrics: super::ScrapeMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.in_flight {
            self.stats.skipped += 1;
            if let Some(m) = &self.metrics {
                m.skipped(self.endpoint.id.as_str());
            }
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
        let span = tracing::info_span!(
            "scrape",
            otel.kind = "client",
            endpoint = %self.endpoint.id,
            engine = %self.endpoint.engine,
            status = tracing::field::Empty,
            bytes = tracing::field::Empty,
        );
        let task = tokio::spawn(tracing::Instrument::instrument(
            async move { fetcher.scrape(&url, &mapping).await },
            span.clone(),
        ));
        ctx.spawn(actix::fut::wrap_future::<_, Self>(task).map(move |joined, act, _| {
            act.in_flight = false;
            let result = joined.unwrap_or_else(|e| Err(ScrapeError::Request(format!("scrape task failed: {e}"))));
            span.record("status", result.as_ref().map_or_else(|e| e.kind(), |_| "ok"));
            act.on_scraped(result, started.elapsed());
        }));
    }

    fn on_scraped(&mut self, result: Result<Normalized, ScrapeError>, latency: Duration) {
        let endpoint = self.endpoint.id.clone();
        match result {
            Ok(normalized) => {
                self.stats.ok += 1;
                if let Some(m) = &self.metrics {
                    m.scraped(endpoint.as_str(), latency);
                }
                if let Some(kind) = self.failing.take() {
                    tracing::info!(%endpoint, previous_error = kind, "scrape recovered");
                }
                let sample = MetricsSample {
                    metrics: normalized.metrics,
                    scraped_at: SystemTime::now(),
                    errors: normalized.errors,
                };
                self.sink.scraped.do_send(MetricsScraped { endpoint, sample: Arc::new(sample), latency });
            }
            Err(error) => {
                self.stats.failed += 1;
                if let Some(m) = &self.metrics {
                    m.failed(endpoint.as_str(), error.kind());
                }
                if self.failing != Some(error.kind()) {
                    tracing::warn!(%endpoint, url = %self.endpoint.metrics_url, %error, "scrape failing");
                    self.failing = Some(error.kind());
                }
                self.sink.failed.do_send(ScrapeFailed { endpoint, error, at: SystemTime::now(), latency });
            }
        }
    }
}

impl Actor for ScraperActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.tick(ctx);
        ctx.run_interval(self.interval, |act, ctx| act.tick(ctx));
    }
}
