//! In-process protocol between roles: the messages scrapers publish, the assignments they
//! receive and what pickers report to the leader. The distributed roles carry the same content over gRPC
//! (`switchyard-proto`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use thiserror::Error;

use crate::model::{Endpoint, EndpointId, Load, MetricsSample, RoutedBlocks};

/// A scrape succeeded (some metrics may still be missing: see `sample.errors`).
#[derive(Debug, Clone)]
pub struct MetricsScraped {
    pub endpoint: EndpointId,
    pub sample: Arc<MetricsSample>,
    pub latency: Duration,
}

/// A scrape failed; the previous sample (if any) stays valid but ages.
#[derive(Debug, Clone)]
pub struct ScrapeFailed {
    pub endpoint: EndpointId,
    pub error: ScrapeError,
    pub at: SystemTime,
    pub latency: Duration,
}

/// One scrape's outcome.
pub type ScrapeReport = Result<MetricsScraped, ScrapeFailed>;

/// Scrape outcomes, in the order they happened. A scraper lane publishes everything its scrapes
/// finished during one turn of its event loop as one message: one wake-up of the consumer per
/// batch, not one per scrape.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ScrapeReports(pub Vec<ScrapeReport>);

/// Where scraper actors publish.
#[derive(Clone)]
pub struct ScrapeSink {
    pub reports: Recipient<ScrapeReports>,
}

/// The full set of endpoints this process must scrape; anything else is stopped.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct AssignEndpoints(pub Vec<Endpoint>);

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ScrapeError {
    #[error("request failed: {0}")]
    Request(String),
    #[error("connection refused")]
    Refused,
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("http status {0}")]
    Status(u16),
    #[error("page larger than {0} bytes")]
    TooLarge(usize),
    #[error("page is not valid UTF-8")]
    NotUtf8,
    #[error("no mapped metric could be read: {0}")]
    NothingMapped(String),
}

impl ScrapeError {
    /// A short stable label for metrics (`switchyard_scrape_errors_total{kind=...}`).
    pub fn kind(&self) -> &'static str {
        match self {
            ScrapeError::Request(_) => "request",
            ScrapeError::Refused => "refused",
            ScrapeError::Timeout(_) => "timeout",
            ScrapeError::Status(_) => "status",
            ScrapeError::TooLarge(_) => "too_large",
            ScrapeError::NotUtf8 => "not_utf8",
            ScrapeError::NothingMapped(_) => "nothing_mapped",
        }
    }
}

/// What one picker reported.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PickerReport {
    pub picker: String,
    pub loads: PickerLoads,
    pub routed: Vec<RoutedBlocks>,
}

/// A picker's load per endpoint (absolute values, not deltas).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PickerLoads {
    /// Requests and tokens in flight.
    pub inflight: HashMap<EndpointId, Load>,
    /// Requests sent since the scrape taken at the given time (what the picker's metrics show).
    pub sent: HashMap<EndpointId, (SystemTime, u64)>,
}

impl PickerLoads {
    pub fn is_empty(&self) -> bool {
        self.inflight.is_empty() && self.sent.is_empty()
    }
}

/// Bounds on what one picker reports for one endpoint, past anything an honest picker sends: the
/// aggregator refuses a report beyond them (or with a negative count) and clamps to them, so one
/// reporter's share of a sum is bounded and the sums cannot wrap. 2^20 requests in flight from one
/// picker to one model server is far past any engine's batch and queue; 2^40 tokens is 2^20 such
/// requests of 2^20 tokens each; 2^32 sends since one scrape is 50 days at 1,000 requests/s.
pub const MAX_REPORTED_REQUESTS: i64 = 1 << 20;
/// See [`MAX_REPORTED_REQUESTS`].
pub const MAX_REPORTED_TOKENS: i64 = 1 << 40;
/// See [`MAX_REPORTED_REQUESTS`].
pub const MAX_REPORTED_SENT: u64 = 1 << 32;
