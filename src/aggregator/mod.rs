//! The aggregator: merges the endpoint set (discovery) and scrape results into versioned,
//! immutable snapshots and publishes them, coalesced to at most one per interval.
//!
//! Inputs: `EndpointsChanged` (discovery), `MetricsScraped` / `ScrapeFailed` (scrapers).
//! Output: `Arc<Snapshot>` on a `watch` channel, stamped `(epoch, seq)`. In standalone mode the
//! epoch is fixed (local leadership); the distributed leader takes it from its etcd term.
//! It does not scrape or schedule.

pub mod election;
mod state;

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::watch;

pub use state::AggregatorState;

use crate::model::{Endpoint, Snapshot};
use crate::protocol::{MetricsScraped, ScrapeFailed};

/// The endpoint set changed (full set).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct EndpointsChanged(pub Vec<Endpoint>);

pub struct Aggregator {
    state: AggregatorState,
    tx: watch::Sender<Arc<Snapshot>>,
    publish_interval: Duration,
}

impl Aggregator {
    pub fn new(epoch: u64, publish_interval: Duration) -> (Self, watch::Receiver<Arc<Snapshot>>) {
        let (tx, rx) = watch::channel(Snapshot::empty());
        (Aggregator { state: AggregatorState::new(epoch), tx, publish_interval }, rx)
    }

    fn publish(&mut self) {
        if let Some(snapshot) = self.state.build(std::time::SystemTime::now()) {
            self.tx.send_replace(Arc::new(snapshot));
        }
    }
}

impl Actor for Aggregator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.publish_interval, |act, _| act.publish());
    }
}

impl Handler<EndpointsChanged> for Aggregator {
    type Result = ();

    fn handle(&mut self, msg: EndpointsChanged, _: &mut Context<Self>) {
        self.state.on_endpoints(msg.0);
        // Membership changes are published at once (readiness waits for them).
        self.publish();
    }
}

impl Handler<MetricsScraped> for Aggregator {
    type Result = ();

    fn handle(&mut self, msg: MetricsScraped, _: &mut Context<Self>) {
        self.state.on_scraped(msg);
    }
}

impl Handler<ScrapeFailed> for Aggregator {
    type Result = ();

    fn handle(&mut self, msg: ScrapeFailed, _: &mut Context<Self>) {
        self.state.on_failed(msg);
    }
}
