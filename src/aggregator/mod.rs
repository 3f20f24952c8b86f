//! The aggregator: merges the endpoint set (discovery) and scrape results into versioned,
//! immutable snapshots and publishes them, coalesced to at most one per interval.
//!
//! Inputs: `EndpointsChanged` (discovery), `MetricsScraped` / `ScrapeFailed` (scrapers).
//! Output: `Arc<Snapshot>` on a `watch` channel, stamped `(epoch, seq)`. In standalone mode the
//! epoch is fixed (local leadership); the distributed leader takes it from its etcd term.
//! It does not scrape or schedule.

pub mod assign;
pub mod election;
pub mod metrics;
pub mod serve;
mod state;

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::watch;

pub use state::{AggregatorState, PickerReport};

use crate::model::{Endpoint, Snapshot};
use crate::protocol::{MetricsScraped, ScrapeFailed};

/// The endpoint set changed (full set).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct EndpointsChanged(pub Vec<Endpoint>);

/// This replica became the leader (or is alone, in standalone mode).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct LeadershipAcquired {
    pub epoch: u64,
}

/// This replica must stop publishing now.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct LeadershipLost;

pub struct Aggregator {
    state: AggregatorState,
    tx: watch::Sender<Arc<Snapshot>>,
    leading: watch::Sender<bool>,
    publish_interval: Duration,
}

/// What an aggregator publishes: snapshots, and whether it currently leads.
pub struct AggregatorOutputs {
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub leading: watch::Receiver<bool>,
}

impl Aggregator {
    /// Standalone: leader at once with `epoch`.
    pub fn new(epoch: u64, publish_interval: Duration) -> (Self, watch::Receiver<Arc<Snapshot>>) {
        let (agg, out) = Self::follower(publish_interval);
        let mut agg = agg;
        agg.state.on_new_term(epoch);
        agg.leading.send_replace(true);
        (agg, out.snapshots)
    }

    /// Not leading until told `LeadershipAcquired`.
    pub fn follower(publish_interval: Duration) -> (Self, AggregatorOutputs) {
        let (tx, snapshots) = watch::channel(Snapshot::empty());
        let (leading, leading_rx) = watch::channel(false);
        let agg = Aggregator { state: AggregatorState::new(0), tx, leading, publish_interval };
        (agg, AggregatorOutputs { snapshots, leading: leading_rx })
    }

    fn publish(&mut self) {
        // Only the current leader publishes.
        if !*self.leading.borrow() {
            return;
        }
        if let Some(snapshot) = self.state.build(std::time::SystemTime::now()) {
            self.tx.send_replace(Arc::new(snapshot));
        }
    }
}

impl Handler<LeadershipAcquired> for Aggregator {
    type Result = ();

    fn handle(&mut self, msg: LeadershipAcquired, _: &mut Context<Self>) {
        self.state.on_new_term(msg.epoch);
        self.leading.send_replace(true);
        self.publish();
    }
}

/// A picker reported its in-flight load and routed prefix blocks.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct PickerReported(pub PickerReport);

impl Handler<PickerReported> for Aggregator {
    type Result = ();

    fn handle(&mut self, msg: PickerReported, _: &mut Context<Self>) {
        self.state.on_picker_report(msg.0, std::time::SystemTime::now());
    }
}

impl Handler<LeadershipLost> for Aggregator {
    type Result = ();

    fn handle(&mut self, _: LeadershipLost, _: &mut Context<Self>) {
        self.leading.send_replace(false);
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
