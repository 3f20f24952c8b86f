//! Scraping: one actix actor per assigned endpoint, started and stopped by a supervisor.
//!
//! Inputs: the assigned endpoint set (`AssignEndpoints`, the full set each time) and the engine
//! registry. Outputs: `MetricsScraped` / `ScrapeFailed` outcomes, sent in batches
//! (`ScrapeReports`, one per lane per turn of its event loop) to a [`ScrapeSink`] (the aggregator
//! in standalone mode, the control-plane stream in the scraper role).
//!
//! Each actor scrapes `metrics_url` every interval (50 ms by default) over its own keep-alive
//! connection (plain HTTP, [`http1`]) or its lane's shared client (HTTPS), at most one scrape in
//! flight, bounded by a timeout and a page-size cap. A hostile
//! endpoint (slow, huge, garbage, 500s, refused) only costs its own actor a failed scrape, and
//! while it keeps failing it is retried with exponential backoff and jitter (capped at 20
//! intervals or 5 s, whichever is less; back to every interval after a success).
//! Scraping does not decide anything about freshness: samples carry their scrape time and the
//! consumer judges their age.
//!
//! The actors are spread over one actix arbiter (a thread with its own event loop) per worker
//! thread of the process ([`crate::worker_threads`]), each with its own HTTP client: a scrape is
//! ticked, fetched, parsed and published on one thread.
//! Handing each scrape to the shared tokio pool and its result back to the actor's thread cost
//! two thread wake-ups per scrape, a quarter of the scraper's CPU (docs/benchmarks.md).

mod actor;
mod fetch;
pub mod http1;
mod metrics;
mod outbox;
pub mod remote;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde::Serialize;

pub use actor::{ScraperActor, ScraperStats};
pub use fetch::{FetchSettings, Fetcher, ScrapeError, USER_AGENT};
pub use http1::Conn;
pub use metrics::ScrapeMetrics;

use crate::metrics::EngineRegistry;
use crate::model::{Endpoint, EndpointChange, EndpointId, diff_endpoints};
pub use crate::protocol::{AssignEndpoints, MetricsScraped, ScrapeFailed, ScrapeReport, ScrapeReports, ScrapeSink};

/// Asks an actor for its observable state.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "SupervisorState")]
pub struct GetState;

#[derive(Debug, Clone, Default, Serialize)]
pub struct SupervisorState {
    /// Endpoint id → engine used.
    pub scraping: BTreeMap<String, String>,
    pub started: u64,
    pub stopped: u64,
}

#[derive(Debug, Clone)]
pub struct ScrapeSettings {
    pub interval: Duration,
    pub fetch: FetchSettings,
}

impl Default for ScrapeSettings {
    fn default() -> Self {
        ScrapeSettings { interval: Duration::from_millis(50), fetch: FetchSettings::default() }
    }
}

/// An event loop (a thread), the keep-alive client its actors share and the outbox their
/// outcomes leave by.
struct Lane {
    arbiter: Arbiter,
    fetcher: Fetcher,
    outbox: Arc<outbox::Outbox>,
}

pub struct ScrapeSupervisor {
    registry: Arc<EngineRegistry>,
    /// One per worker thread of the process.
    lanes: Vec<Lane>,
    interval: Duration,
    metrics: ScrapeMetrics,
    actors: BTreeMap<EndpointId, (Endpoint, Addr<ScraperActor>)>,
    started: u64,
    stopped: u64,
}

impl ScrapeSupervisor {
    pub fn new(
        registry: Arc<EngineRegistry>,
        settings: &ScrapeSettings,
        sink: ScrapeSink,
    ) -> Result<Self, reqwest::Error> {
        Self::with_metrics(registry, settings, sink, ScrapeMetrics::detached())
    }

    pub fn with_metrics(
        registry: Arc<EngineRegistry>,
        settings: &ScrapeSettings,
        sink: ScrapeSink,
        metrics: ScrapeMetrics,
    ) -> Result<Self, reqwest::Error> {
        // As many lanes as the runtime has workers (its sizing, not the node's core count).
        let cores = crate::worker_threads().unwrap_or(1);
        let lanes = (0..cores)
            .map(|_| {
                let fetcher = Fetcher::new(settings.fetch.clone())?;
                Ok(Lane { arbiter: Arbiter::new(), fetcher, outbox: outbox::Outbox::new(sink.clone()) })
            })
            .collect::<Result<_, _>>()?;
        Ok(ScrapeSupervisor {
            registry,
            lanes,
            interval: settings.interval,
            metrics,
            actors: BTreeMap::new(),
            started: 0,
            stopped: 0,
        })
    }

    fn on_assign(&mut self, desired: Vec<Endpoint>) {
        let current: BTreeMap<EndpointId, Endpoint> =
            self.actors.iter().map(|(id, (e, _))| (id.clone(), e.clone())).collect();
        for change in diff_endpoints(&current, &desired) {
            match change {
                EndpointChange::Added(e) => self.start(e),
                EndpointChange::Updated { previous, updated } => {
                    self.stop(&previous.id);
                    self.start(updated);
                }
                EndpointChange::Removed(e) => self.stop(&e.id),
            }
        }
    }

    fn start(&mut self, endpoint: Endpoint) {
        let mapping = self.registry.get(&endpoint.engine).unwrap_or_else(|| self.registry.default_mapping()).clone();
        // Endpoints are dealt to the lanes in turn.
        let lane = &self.lanes[(self.started as usize) % self.lanes.len()];
        let actor =
            ScraperActor::new(endpoint.clone(), mapping, lane.fetcher.clone(), self.interval, lane.outbox.clone())
                .with_metrics(self.metrics.clone());
        tracing::debug!(endpoint = %endpoint.id, engine = %endpoint.engine, "scraper started");
        let addr = ScraperActor::start_in_arbiter(&lane.arbiter.handle(), move |_| actor);
        self.actors.insert(endpoint.id.clone(), (endpoint, addr));
        self.started += 1;
    }

    fn stop(&mut self, id: &EndpointId) {
        if let Some((_, addr)) = self.actors.remove(id) {
            // Dropping the last address stops the actor once its mailbox is empty; ask explicitly
            // so an in-flight scrape result is not published after removal.
            addr.do_send(StopScraping);
            self.metrics.forget(id.as_str());
            self.stopped += 1;
            tracing::debug!(endpoint = %id, "scraper stopped");
        }
    }
}

impl Actor for ScrapeSupervisor {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Context<Self>) {
        for id in self.actors.keys().cloned().collect::<Vec<_>>() {
            self.stop(&id);
        }
        // Each lane's thread ends once its actors' stop messages are handled.
        for lane in &self.lanes {
            lane.arbiter.stop();
        }
    }
}

impl Drop for ScrapeSupervisor {
    /// A supervisor dropped without its actor having run (or stopped) leaves no thread behind.
    fn drop(&mut self) {
        for lane in &self.lanes {
            lane.arbiter.stop();
        }
    }
}

impl Handler<AssignEndpoints> for ScrapeSupervisor {
    type Result = ();

    fn handle(&mut self, msg: AssignEndpoints, _: &mut Context<Self>) {
        self.on_assign(msg.0);
    }
}

impl Handler<GetState> for ScrapeSupervisor {
    type Result = MessageResult<GetState>;

    fn handle(&mut self, _: GetState, _: &mut Context<Self>) -> Self::Result {
        MessageResult(SupervisorState {
            scraping: self.actors.iter().map(|(id, (e, _))| (id.to_string(), e.engine.clone())).collect(),
            started: self.started,
            stopped: self.stopped,
        })
    }
}

#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
struct StopScraping;

impl Handler<StopScraping> for ScraperActor {
    type Result = ();

    fn handle(&mut self, _: StopScraping, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// Asks a scraper actor for its counters.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "ScraperStats")]
pub struct GetStats;

impl Handler<GetStats> for ScraperActor {
    type Result = MessageResult<GetStats>;

    fn handle(&mut self, _: GetStats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.stats.clone())
    }
}
