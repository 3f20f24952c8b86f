//! The control-plane gRPC service of an aggregator replica. The leader streams snapshots to
//! pickers (`WatchSnapshots`: the full snapshot at once, then a full snapshot per change,
//! coalesced by the watch channel); a follower answers `FAILED_PRECONDITION` with the leader's
//! address.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use switchyard_proto::v1 as pb;
use switchyard_proto::v1::control_plane_server::ControlPlane;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::election::{self, EtcdSettings};
use crate::model::Snapshot;
use crate::wire;

#[derive(Clone)]
pub struct ControlPlaneService {
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub leading: watch::Receiver<bool>,
    /// To tell followers' clients where the leader is.
    pub etcd: Option<EtcdSettings>,
}

impl ControlPlaneService {
    async fn not_leader(&self) -> Status {
        let leader = match &self.etcd {
            Some(s) => election::current_leader(s).await.ok().flatten(),
            None => None,
        };
        Status::failed_precondition(format!("not the leader; leader: {}", leader.as_deref().unwrap_or("unknown")))
    }
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

    async fn scrape(&self, _: Request<Streaming<pb::MetricsReport>>) -> Result<Response<Self::ScrapeStream>, Status> {
        Err(Status::unimplemented(
            "remote scrapers are not supported yet: aggregators scrape their endpoints themselves",
        ))
    }

    async fn watch_snapshots(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchSnapshotsStream>, Status> {
        let is_leader = *self.leading.borrow();
        if !is_leader {
            return Err(self.not_leader().await);
        }
        let picker = request.into_inner().picker_id;
        let (tx, rx) = mpsc::channel(4);
        let (mut snapshots, mut leading) = (self.snapshots.clone(), self.leading.clone());
        tokio::spawn(async move {
            tracing::debug!(%picker, "picker subscribed");
            loop {
                let snap = snapshots.borrow_and_update().clone();
                if snap.epoch > 0 && tx.send(Ok(wire::snapshot_to_proto(&snap))).await.is_err() {
                    return;
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

    async fn report(&self, _: Request<Streaming<pb::PickerReport>>) -> Result<Response<pb::ReportAck>, Status> {
        Err(Status::unimplemented("picker reports are not supported yet"))
    }
}
