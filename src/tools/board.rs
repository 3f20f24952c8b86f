//! A sink for scrape results that keeps the latest state per endpoint: used by the demo and the
//! scrape benchmark (the aggregator plays this part in the product).

use std::collections::BTreeMap;

use actix::prelude::*;

use crate::model::{EndpointId, MetricsState};
use crate::scraper::{MetricsScraped, ScrapeFailed, ScrapeSink};

#[derive(Debug, Default)]
pub struct Board {
    pub states: BTreeMap<EndpointId, MetricsState>,
    pub ok: u64,
    pub failed: u64,
}

#[derive(Debug, Clone, Default)]
pub struct BoardView {
    pub states: BTreeMap<EndpointId, MetricsState>,
    pub ok: u64,
    pub failed: u64,
}

#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "BoardView")]
pub struct GetBoard;

impl Actor for Board {
    type Context = Context<Self>;
}

impl Board {
    pub fn start_sink() -> (Addr<Board>, ScrapeSink) {
        let addr = Board::default().start();
        let sink = ScrapeSink { scraped: addr.clone().recipient(), failed: addr.clone().recipient() };
        (addr, sink)
    }
}

impl Handler<MetricsScraped> for Board {
    type Result = ();

    fn handle(&mut self, msg: MetricsScraped, _: &mut Context<Self>) {
        self.ok += 1;
        self.states.insert(msg.endpoint, MetricsState::Known { sample: msg.sample, last_error: None });
    }
}

impl Handler<ScrapeFailed> for Board {
    type Result = ();

    fn handle(&mut self, msg: ScrapeFailed, _: &mut Context<Self>) {
        self.failed += 1;
        let entry = self.states.entry(msg.endpoint).or_default();
        if let MetricsState::Known { last_error, .. } = entry {
            *last_error = Some(msg.error.to_string());
        }
    }
}

impl Handler<GetBoard> for Board {
    type Result = MessageResult<GetBoard>;

    fn handle(&mut self, _: GetBoard, _: &mut Context<Self>) -> Self::Result {
        MessageResult(BoardView { states: self.states.clone(), ok: self.ok, failed: self.failed })
    }
}
