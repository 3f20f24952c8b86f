//! A sink for scrape results that keeps the latest state per endpoint: used by the demo and the
//! scrape benchmark (the aggregator plays this part in the product).

use std::collections::BTreeMap;

use actix::prelude::*;

use crate::model::{EndpointId, MetricsState};
use crate::scraper::{ScrapeReports, ScrapeSink};

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
        let sink = ScrapeSink { reports: addr.clone().recipient() };
        (addr, sink)
    }
}

impl Handler<ScrapeReports> for Board {
    type Result = ();

    fn handle(&mut self, msg: ScrapeReports, _: &mut Context<Self>) {
        for report in msg.0 {
            match report {
                Ok(scraped) => {
                    self.ok += 1;
                    self.states
                        .insert(scraped.endpoint, MetricsState::Known { sample: scraped.sample, last_error: None });
                }
                Err(failed) => {
                    self.failed += 1;
                    let entry = self.states.entry(failed.endpoint).or_default();
                    if let MetricsState::Known { last_error, .. } = entry {
                        *last_error = Some(failed.error.to_string());
                    }
                }
            }
        }
    }
}

impl Handler<GetBoard> for Board {
    type Result = MessageResult<GetBoard>;

    fn handle(&mut self, _: GetBoard, _: &mut Context<Self>) -> Self::Result {
        MessageResult(BoardView { states: self.states.clone(), ok: self.ok, failed: self.failed })
    }
}
