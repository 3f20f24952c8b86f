//! The control-plane gRPC service of an aggregator replica. The leader streams snapshots to
//! pickers (`WatchSnapshots`: the full snapshot at once, then deltas on top of the last one sent:
//! the endpoints that changed, the ids that left, and the prefix blocks routed since, including
//! those of snapshots the stream skipped); a follower answers `FAILED_PRECONDITION` with the
//! leader's address. Every RPC refuses a protocol version it does not speak
//! (`INVALID_ARGUMENT` naming the one it does), and `Report` refuses loads no honest picker sends
//! (`wire::report_from_proto`); what the rest may contribute is bounded in the aggregator state.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use prometheus_client::metrics::gauge::Gauge;
use switchyard_proto::v1 as pb;
use switchyard_proto::v1::control_plane_server::ControlPlane;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::assign::RemoteScraping;
use crate::etcd::{self, EtcdSettings};
use crate::model::Snapshot;
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
    /// `WatchSnapshots` streams open (`switchyard_aggregator_subscribers`).
    pub subscribers: Gauge,
}

/// Counts one open stream in a gauge for as long as it lives, whichever way its task ends.
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

/// Resolves when leadership is lost (the `watch::Ref` is dropped inside, keeping callers `Send`).
async fn lost(leading: &mut watch::Receiver<bool>) {
    let _ = leading.wait_for(|l| !*l).await;
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl ControlPlane for ControlPlaneService {
    type ScrapeStream = BoxStream<pb::ScrapeAssignment>;
    type WatchSnapshotsStream = ReceiverStream<Result<pb::SnapshotUpdate, Status>>;

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
            while let Ok(Some(report)) = inbound.message().await {
                match wire::event_from_report(report) {
                    Some(Ok(m)) => remote.sink.scraped.do_send(m),
                    Some(Err(f)) => remote.sink.failed.do_send(f),
                    None => {}
                }
            }
            remote.leave(&id, &tx);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn watch_snapshots(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchSnapshotsStream>, Status> {
        let is_leader = *self.leading.borrow();
        if !is_leader {
            return Err(self.not_leader().await);
        }
        let request = request.into_inner();
        check_version(request.version)?;
        let picker = request.picker_id;
        let (tx, rx) = mpsc::channel(4);
        let (mut snapshots, mut leading, routed) = (self.snapshots.clone(), self.leading.clone(), self.routed.clone());
        let open = Open::new(&self.subscribers);
        tokio::spawn(async move {
            let _open = open;
            tracing::debug!(%picker, "picker subscribed");
            // The last snapshot sent: deltas are built on top of it.
            let mut sent: Option<Arc<Snapshot>> = None;
            loop {
                let snap = snapshots.borrow_and_update().clone();
                let update = match &sent {
                    _ if snap.epoch == 0 => None,
                    Some(base) if base.epoch == snap.epoch && base.seq >= snap.seq => None,
                    Some(base) if base.epoch == snap.epoch => {
                        let blocks = routed.between(snap.epoch, base.seq, snap.seq).unwrap_or_else(|| {
                            tracing::debug!(%picker, "prefix blocks of skipped snapshots are no longer remembered");
                            routed.gaps.inc();
                            snap.routed_blocks.clone()
                        });
                        Some(wire::snapshot_delta_to_proto(base, &snap, &blocks))
                    }
                    _ => Some(wire::snapshot_to_proto(&snap)),
                };
                if let Some(update) = update {
                    if tx.send(Ok(update)).await.is_err() {
                        return;
                    }
                    sent = Some(snap);
                }
                tokio::select! {
                    changed = snapshots.changed() => if changed.is_err() { return },
                    _ = lost(&mut leading) => {
                        let _ = tx.send(Err(Status::unavailable("leadership lost"))).await;
                        return;
                    }
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
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
