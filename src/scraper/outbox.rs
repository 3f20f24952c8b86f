//! A lane's outbox: the scrape outcomes its actors produced, published to the sink as one
//! [`ScrapeReports`] per turn of the lane's event loop.
//!
//! The first outcome of a turn schedules a flush task on the lane; outcomes that finish before
//! that task runs (the other responses that arrived in the same poll of the socket driver) join
//! the batch. So nothing waits on a timer, and the consumer is woken once per batch instead of
//! once per scrape: under load a batch holds many outcomes, with few endpoints it holds one.

use std::sync::{Arc, Mutex};

use super::{ScrapeReport, ScrapeReports, ScrapeSink};

pub struct Outbox {
    sink: ScrapeSink,
    /// Only the lane's thread touches it; the lock is never contended.
    pending: Mutex<Vec<ScrapeReport>>,
}

impl Outbox {
    pub fn new(sink: ScrapeSink) -> Arc<Self> {
        Arc::new(Outbox { sink, pending: Mutex::new(Vec::new()) })
    }

    /// Queues `report`; the batch leaves when the current turn of the lane's loop ends. Must be
    /// called on the lane's thread (inside its arbiter).
    pub fn publish(self: &Arc<Self>, report: ScrapeReport) {
        let first = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.push(report);
            pending.len() == 1
        };
        if first {
            let outbox = self.clone();
            actix::spawn(async move { outbox.flush() });
        }
    }

    fn flush(&self) {
        let batch = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if !batch.is_empty() {
            self.sink.reports.do_send(ScrapeReports(batch));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use actix::prelude::*;

    use super::*;
    use crate::model::{EndpointId, MetricsSample};
    use crate::protocol::{MetricsScraped, ScrapeError, ScrapeFailed};

    /// Keeps every batch it receives, as endpoint ids.
    #[derive(Default)]
    struct Batches(Vec<Vec<String>>);

    impl Actor for Batches {
        type Context = Context<Self>;
    }

    impl Handler<ScrapeReports> for Batches {
        type Result = ();

        fn handle(&mut self, msg: ScrapeReports, _: &mut Context<Self>) {
            let ids = msg.0.iter().map(|r| r.as_ref().map_or_else(|f| &f.endpoint, |m| &m.endpoint).to_string());
            self.0.push(ids.collect());
        }
    }

    #[derive(Message)]
    #[rtype(result = "Vec<Vec<String>>")]
    struct Take;

    impl Handler<Take> for Batches {
        type Result = MessageResult<Take>;

        fn handle(&mut self, _: Take, _: &mut Context<Self>) -> Self::Result {
            MessageResult(std::mem::take(&mut self.0))
        }
    }

    fn ok(id: &str) -> ScrapeReport {
        let sample = MetricsSample { metrics: Default::default(), scraped_at: UNIX_EPOCH, errors: vec![] };
        Ok(MetricsScraped { endpoint: EndpointId::new(id), sample: Arc::new(sample), latency: Duration::ZERO })
    }

    fn failed(id: &str) -> ScrapeReport {
        let error = ScrapeError::Refused;
        Err(ScrapeFailed { endpoint: EndpointId::new(id), error, at: UNIX_EPOCH, latency: Duration::ZERO })
    }

    #[actix_rt::test]
    async fn outcomes_of_one_turn_leave_as_one_batch_in_order() {
        let batches = Batches::default().start();
        let outbox = Outbox::new(ScrapeSink { reports: batches.clone().recipient() });
        outbox.publish(ok("a"));
        outbox.publish(failed("b"));
        outbox.publish(ok("c"));
        // The flush runs once this task yields; what is published after it is the next batch.
        tokio::time::sleep(Duration::from_millis(20)).await;
        outbox.publish(ok("d"));
        tokio::time::sleep(Duration::from_millis(20)).await;
        let got = batches.send(Take).await.expect("batches");
        assert_eq!(got, vec![vec!["a", "b", "c"], vec!["d"]]);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(batches.send(Take).await.expect("batches").is_empty(), "an empty outbox sends nothing");
    }
}
