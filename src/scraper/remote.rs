//! The scraper role's side of `ControlPlane.Scrape`: one stream to the aggregator leader, the
//! endpoints it assigns in, scrape results out. When the leader goes, scraping stops until a
//! leader assigns again.

use std::sync::Arc;

use actix::prelude::*;
use prometheus_client::registry::Registry;
use switchyard_proto::v1 as pb;
use switchyard_proto::v1::control_plane_client::ControlPlaneClient;
use tokio::sync::{mpsc, watch};

use super::{AssignEndpoints, ScrapeSink, ScrapeSupervisor};
use crate::control_tls::ClientTls;
use crate::leader::LeaderSource;
use crate::wire;

/// The scraper role's own metrics (besides per-endpoint scrape latency and errors).
#[derive(Clone, Default)]
pub struct ScraperRoleMetrics {
    /// 1 while a leader's assignment stream is open.
    connected: prometheus_client::metrics::gauge::Gauge,
    assigned: prometheus_client::metrics::gauge::Gauge,
    dropped: prometheus_client::metrics::counter::Counter,
}

impl ScraperRoleMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = ScraperRoleMetrics::default();
        registry.register("switchyard_scraper_connected", "1 while streaming to the leader", m.connected.clone());
        registry.register(
            "switchyard_scraper_assigned_endpoints",
            "Endpoints assigned by the leader",
            m.assigned.clone(),
        );
        registry.register(
            "switchyard_scraper_reports_dropped",
            "Scrape results dropped because the leader stream lagged",
            m.dropped.clone(),
        );
        m
    }
}

/// Forwards scrape results into the leader stream; drops (and counts) when the stream lags.
struct StreamSink {
    scraper_id: String,
    tx: mpsc::Sender<switchyard_proto::v1::MetricsReport>,
    dropped: u64,
    metrics: ScraperRoleMetrics,
}

impl Actor for StreamSink {
    type Context = Context<Self>;
}

impl StreamSink {
    fn push(&mut self, report: switchyard_proto::v1::MetricsReport) {
        if self.tx.try_send(report).is_err() {
            self.dropped += 1;
            self.metrics.dropped.inc();
            if self.dropped.is_power_of_two() {
                tracing::warn!(dropped = self.dropped, "scrape reports dropped: the leader stream lags");
            }
        }
    }
}

impl Handler<super::ScrapeReports> for StreamSink {
    type Result = ();

    fn handle(&mut self, batch: super::ScrapeReports, _: &mut Context<Self>) {
        for report in &batch.0 {
            let r = wire::report_from_event(&self.scraper_id, report.as_ref());
            self.push(r);
        }
    }
}

/// Where this scraper's actors publish: into the leader stream, through a bounded queue.
pub fn sink(scraper_id: &str, metrics: &ScraperRoleMetrics) -> (ScrapeSink, mpsc::Receiver<pb::MetricsReport>) {
    let (tx, rx) = mpsc::channel::<pb::MetricsReport>(4096);
    let actor = StreamSink { scraper_id: scraper_id.to_string(), tx, dropped: 0, metrics: metrics.clone() }.start();
    (ScrapeSink { reports: actor.recipient() }, rx)
}

/// Streams to the current leader until `stop` (over TLS with `tls`): the hello, then every report
/// of `reports`; assignments go to `supervisor`.
pub async fn run(
    leader: LeaderSource,
    tls: Option<Arc<ClientTls>>,
    scraper_id: String,
    reports: mpsc::Receiver<pb::MetricsReport>,
    supervisor: Addr<ScrapeSupervisor>,
    metrics: ScraperRoleMetrics,
    stop: watch::Receiver<bool>,
) {
    let reports = Arc::new(tokio::sync::Mutex::new(reports));
    let session = |channel, target: String| {
        let (reports, supervisor, metrics, scraper_id) =
            (reports.clone(), supervisor.clone(), metrics.clone(), scraper_id.clone());
        async move {
            let mut client = ControlPlaneClient::new(channel);
            // Outbound: the hello, then whatever the scraper actors produce.
            let (tx, rx) = mpsc::channel::<pb::MetricsReport>(1024);
            let hello = pb::MetricsReport { version: wire::PROTOCOL_VERSION, scraper_id, ..Default::default() };
            let _ = tx.send(hello).await;
            let pump = tokio::spawn(async move {
                let mut reports = reports.lock().await;
                while let Some(r) = reports.recv().await {
                    if tx.send(r).await.is_err() {
                        return;
                    }
                }
            });
            let _pump = AbortOnDrop(pump);
            let mut inbound = client
                .scrape(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .map_err(|s| crate::leader::status_error(&s))?
                .into_inner();
            tracing::info!(leader = %target, "scraping for the aggregator leader");
            metrics.connected.set(1);
            loop {
                match inbound.message().await {
                    Ok(Some(a)) => {
                        metrics.assigned.set(a.endpoints.len() as i64);
                        let eps = a.endpoints.into_iter().map(wire::endpoint_from_proto).collect();
                        supervisor.do_send(AssignEndpoints(eps));
                    }
                    Ok(None) => return Err("assignment stream ended".to_string()),
                    Err(s) => return Err(crate::leader::status_error(&s)),
                }
            }
        }
    };
    let ended = || {
        // The leader is gone: stop scraping until a leader assigns again.
        supervisor.do_send(AssignEndpoints(Vec::new()));
        metrics.connected.set(0);
        metrics.assigned.set(0);
    };
    crate::leader::follow(leader, tls, stop, "scrape", session, ended).await;
}

/// Aborts the task when dropped (a session cut off mid-way stops its pump).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
