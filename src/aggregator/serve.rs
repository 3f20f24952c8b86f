//! The control-plane gRPC service of an aggregator replica. The leader streams snapshots to
//! pickers (`WatchSnapshots`: the full snapshot at once, then deltas on top of the last one sent:
//! the endpoints that changed, the ids that left, and the prefix blocks routed since, including
//! those of snapshots the stream skipped); a follower answers `FAILED_PRECONDITION` with the
//! leader's address. Every RPC refuses a protocol version it does not speak
//! (`INVALID_ARGUMENT` naming the one it does), and `Report` refuses loads no honest picker sends
//! (`wire::report_from_proto`); what the rest may contribute is bounded in the aggregator state.
//! Snapshot updates are built and encoded once for all the pickers that need the same one, and a
//! picker that stops reading is cut off (`updates`); `route` serves them without re-encoding.

mod route;
mod updates;

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt as _};
use prometheus_client::metrics::gauge::Gauge;
use switchyard_proto::v1 as pb;
use switchyard_proto::v1::control_plane_server::ControlPlane;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

pub use route::ControlPlaneRoutes;
pub use updates::{EncodedUpdate, QUEUE, SLOW_AFTER, Subscribers, Subscription};

use super::assign::RemoteScraping;
use crate::etcd::{self, EtcdSettings};
use crate::model::Snapshot;
use crate::protocol::ScrapeReports;
use crate::wire;

#[derive(Clone)]
pub struct ControlPlaneService {
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    /// The prefix blocks of recent snapshots, for deltas that span several.
    pub routed: Arc<super::RoutedLog>,
    pub leading: watch::Receiver<bool>,
    /// To tell followers' clients where the leader is.
    pub etcd: Option<EtcdSettings>,
    /// Set when endpoints are scraped by remote scraper processes.
    pub remote: Option<Arc<RemoteScraping>>,
    /// Where picker reports go (the aggregator actor).
    pub reports: Option<actix::Recipient<super::PickerReported>>,
    /// Shared by the snapshot streams: encoded updates, the slow-subscriber rule, its counters.
    pub subscribers: Arc<Subscribers>,
    /// `WatchSnapshots` streams open (`switchyard_aggregator_subscribers`).
    pub open_streams: Gauge,
}

/// Counts one open stream in a gauge for as long as it lives, whichever way it ends.
struct Open(Gauge);

impl Open {
    fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Open(gauge.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl ControlPlaneService {
    async fn not_leader(&self) -> Status {
        let leader = match &self.etcd {
            Some(s) => etcd::current_leader(s).await.ok().flatten(),
            None => None,
        };
        Status::failed_precondition(format!("not the leader; leader: {}", leader.as_deref().unwrap_or("unknown")))
    }

    /// A picker's snapshot stream: the full snapshot at once, then deltas, encoded once for every
    /// picker that needs the same update.
    pub async fn subscribe(&self, request: pb::WatchRequest) -> Result<Subscription, Status> {
        let is_leader = *self.leading.borrow();
        if !is_leader {
            return Err(self.not_leader().await);
        }
        check_version(request.version)?;
        let mut subscription = updates::Feed {
            picker: request.picker_id,
            snapshots: self.snapshots.clone(),
            leading: self.leading.clone(),
            routed: self.routed.clone(),
            subscribers: self.subscribers.clone(),
        }
        .start();
        subscription.open = Some(Open::new(&self.open_streams));
        Ok(subscription)
    }
}

/// `INVALID_ARGUMENT` for a protocol version this build does not speak, naming the one it does.
fn check_version(version: u32) -> Result<(), Status> {
    if version == wire::PROTOCOL_VERSION {
        return Ok(());
    }
    Err(Status::invalid_argument(format!(
        "unsupported protocol version {version}; this aggregator speaks version {}",
        wire::PROTOCOL_VERSION
    )))
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The most scrape reports of one remote scraper handed to the aggregator in one message.
const REPORT_BATCH: usize = 256;

#[tonic::async_trait]
impl ControlPlane for ControlPlaneService {
    type ScrapeStream = BoxStream<pb::ScrapeAssignment>;
    type WatchSnapshotsStream = BoxStream<pb::SnapshotUpdate>;

    async fn scrape(
        &self,
        request: Request<Streaming<pb::MetricsReport>>,
    ) -> Result<Response<Self::ScrapeStream>, Status> {
        let is_leader = *self.leading.borrow();
        if !is_leader {
            return Err(self.not_leader().await);
        }
        let Some(remote) = self.remote.clone() else {
            return Err(Status::unimplemented("this aggregator scrapes its endpoints itself"));
        };
        let mut inbound = request.into_inner();
        let hello = inbound.message().await?.ok_or_else(|| Status::invalid_argument("empty scrape stream"))?;
        check_version(hello.version)?;
        let id = hello.scraper_id.clone();
        if id.is_empty() {
            return Err(Status::invalid_argument("the first report must carry scraper_id"));
        }
        let (tx, rx) = mpsc::channel(8);
        remote.join(&id, tx.clone());
        tokio::spawn(async move {
            // Reports already received leave together: one message to the aggregator per batch,
            // as a local scraper lane's do (nothing waits to fill a batch).
            let mut batches = inbound.ready_chunks(REPORT_BATCH);
            while let Some(received) = batches.next().await {
                let mut reports = Vec::with_capacity(received.len());
                let mut ended = false;
                for report in received {
                    match report {
                        Ok(report) => reports.extend(wire::event_from_report(report)),
                        Err(_) => {
                            ended = true;
                            break;
                        }
                    }
                }
                if !reports.is_empty() {
                    remote.sink.reports.do_send(ScrapeReports(reports));
                }
                if ended {
                    break;
                }
            }
            remote.leave(&id, &tx);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    /// Served by [`ControlPlaneRoutes`] without decoding; this is the same stream for a server
    /// built from the generated code alone.
    async fn watch_snapshots(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchSnapshotsStream>, Status> {
        let updates = self.subscribe(request.into_inner()).await?;
        Ok(Response::new(Box::pin(updates.map(|u| u.and_then(|u| u.decode())))))
    }

    async fn report(&self, request: Request<Streaming<pb::PickerReport>>) -> Result<Response<pb::ReportAck>, Status> {
        let is_leader = *self.leading.borrow();
        if !is_leader {
            return Err(self.not_leader().await);
        }
        let Some(reports) = self.reports.clone() else {
            return Err(Status::unimplemented("reports are not accepted here"));
        };
        let mut inbound = request.into_inner();
        while let Some(r) = inbound.message().await? {
            check_version(r.version)?;
            let picker = r.picker_id.clone();
            let report = wire::report_from_proto(r).map_err(|e| {
                tracing::warn!(%picker, error = %e, "picker report refused");
                Status::invalid_argument(e.to_string())
            })?;
            reports.do_send(super::PickerReported(report));
            if !*self.leading.borrow() {
                return Err(Status::unavailable("leadership lost"));
            }
        }
        Ok(Response::new(pb::ReportAck { version: wire::PROTOCOL_VERSION }))
    }
}
