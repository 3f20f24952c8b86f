//! In-process protocol between roles (standalone mode): the messages scrapers publish and the
//! assignments they receive. The distributed roles carry the same content over gRPC
//! (`switchyard-proto`).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::prelude::*;

use crate::model::{Endpoint, EndpointId, MetricsSample};
use crate::scraper::ScrapeError;

/// A scrape succeeded (some metrics may still be missing: see `sample.errors`).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct MetricsScraped {
    pub endpoint: EndpointId,
    pub sample: Arc<MetricsSample>,
    pub latency: Duration,
}

/// A scrape failed; the previous sample (if any) stays valid but ages.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct ScrapeFailed {
    pub endpoint: EndpointId,
    pub error: ScrapeError,
    pub at: SystemTime,
    pub latency: Duration,
}

/// Where scraper actors publish.
#[derive(Clone)]
pub struct ScrapeSink {
    pub scraped: Recipient<MetricsScraped>,
    pub failed: Recipient<ScrapeFailed>,
}

/// The full set of endpoints this process must scrape; anything else is stopped.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct AssignEndpoints(pub Vec<Endpoint>);
