//! Following the aggregator leader's snapshot stream. The leader is found through etcd (the
//! election's leader value is its control-plane address) or by trying a list of aggregator
//! addresses; followers refuse with `FAILED_PRECONDITION`, so the next address is tried. A stream
//! starts with a full snapshot, then deltas on top of it. An update is applied only when its
//! `(epoch, seq)` is newer than the one held (fencing: an old leader that comes back cannot roll
//! pickers back). While no leader answers, the picker keeps serving from
//! what it holds.

use std::sync::Arc;
use std::time::Duration;

use switchyard_proto::v1 as pb;
use switchyard_proto::v1::control_plane_client::ControlPlaneClient;
use tokio::sync::watch;

pub use crate::leader::LeaderSource;
use crate::leader::{self, LeaderFinder};
use crate::model::Snapshot;
use crate::wire;

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|v| *v).await;
}

/// Applies `update` on top of what `tx` holds when its `(epoch, seq)` is newer (fencing), after
/// `on_update` has seen the result; returns whether it was applied. A delta that does not sit on
/// the snapshot held is an error (the stream must start again with a full snapshot).
pub fn apply_if_newer(
    tx: &watch::Sender<Arc<Snapshot>>,
    update: pb::SnapshotUpdate,
    on_update: impl Fn(&Snapshot, bool),
) -> Result<bool, wire::WireError> {
    let held = tx.borrow().clone();
    if held.epoch != 0 && (update.epoch, update.seq) <= (held.epoch, held.seq) {
        tracing::debug!(epoch = update.epoch, seq = update.seq, "ignored a snapshot that is not newer");
        return Ok(false);
    }
    let full = update.full;
    let snapshot = wire::apply_update(&held, update)?;
    on_update(&snapshot, full);
    tx.send_replace(Arc::new(snapshot));
    Ok(true)
}

/// Runs until `stop`. `on_update` sees every snapshot applied (and whether it came whole or as a
/// delta), in order, before it is published on `tx` (whose readers may skip some): the prefix
/// blocks each carries are learned there.
pub async fn follow_leader(
    source: LeaderSource,
    picker_id: String,
    tx: watch::Sender<Arc<Snapshot>>,
    on_update: impl Fn(&Snapshot, bool) + Send + Sync,
    stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(50);
    let mut finder = LeaderFinder::new(source);
    loop {
        if *stop.borrow() {
            return;
        }
        for target in finder.candidates().await {
            let attempt = async {
                let channel = leader::connect(&target).await?;
                let mut client = ControlPlaneClient::new(channel).max_decoding_message_size(256 * 1024 * 1024);
                let (have_epoch, have_seq) = {
                    let held = tx.borrow();
                    (held.epoch, held.seq)
                };
                let request = pb::WatchRequest {
                    version: wire::PROTOCOL_VERSION,
                    picker_id: picker_id.clone(),
                    have_epoch,
                    have_seq,
                };
                let mut stream =
                    client.watch_snapshots(request).await.map_err(|s| s.message().to_string())?.into_inner();
                tracing::info!(leader = %target, "following the aggregator leader");
                loop {
                    match stream.message().await {
                        Ok(Some(update)) => {
                            // A delta that does not sit on what this picker holds ends the
                            // stream; the next one starts with a full snapshot.
                            apply_if_newer(&tx, update, &on_update).map_err(|e| e.to_string())?;
                        }
                        Ok(None) => return Err::<(), String>("stream ended".to_string()),
                        Err(status) => return Err(status.message().to_string()),
                    }
                }
            };
            tokio::select! {
                r = attempt => {
                    if let Err(e) = r {
                        tracing::debug!(aggregator = %target, error = %e, "snapshot stream unavailable");
                    }
                }
                _ = finder.superseded(&target) => {}
                _ = stopped(stop.clone()) => return,
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stopped(stop.clone()) => return,
        }
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    fn snap(epoch: u64, seq: u64) -> Snapshot {
        Snapshot { epoch, seq, endpoints: vec![], published_at: SystemTime::UNIX_EPOCH, routed_blocks: Vec::new() }
    }

    /// An old leader that resumes after a pause must not roll pickers back.
    #[test]
    fn test_stale_leader_snapshots_are_fenced() {
        let (tx, rx) = watch::channel(Snapshot::empty());
        let seen = std::sync::Mutex::new(Vec::new());
        let apply = |s: Snapshot| {
            apply_if_newer(&tx, wire::snapshot_to_proto(&s), |s, _| seen.lock().expect("lock").push(s.seq))
                .expect("full")
        };
        assert!(apply(snap(5, 1)));
        assert!(apply(snap(5, 2)));
        assert!(!apply(snap(5, 2)), "same (epoch, seq)");
        assert!(!apply(snap(4, 99)), "older epoch, however high its seq");
        assert!(apply(snap(9, 1)), "new term");
        assert_eq!((rx.borrow().epoch, rx.borrow().seq), (9, 1));
        assert_eq!(*seen.lock().expect("lock"), [1, 2, 1], "only applied updates are seen");
    }
}
