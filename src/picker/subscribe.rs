//! Following the aggregator leader's snapshot stream. The leader is found through etcd (the
//! election's leader value is its control-plane address) or by trying a list of aggregator
//! addresses; followers refuse with `FAILED_PRECONDITION`, so the next address is tried. A stream
//! starts with a full snapshot, then deltas on top of it. An update is applied only when its
//! `(epoch, seq)` is newer than the one held (fencing: an old leader that comes back cannot roll
//! pickers back). While no leader answers, the picker keeps serving from
//! what it holds.

use std::sync::Arc;

use switchyard_proto::v1 as pb;
use switchyard_proto::v1::control_plane_client::ControlPlaneClient;
use tokio::sync::watch;

use super::Picker;
use crate::control_tls::ClientTls;
pub use crate::leader::LeaderSource;
use crate::model::Snapshot;
use crate::wire;

/// The snapshot `update` makes of `held`, or `None` when its `(epoch, seq)` is not newer
/// (fencing). A delta that does not sit on `held` is an error (the stream must start again with
/// a full snapshot).
pub fn apply_if_newer(held: &Snapshot, update: pb::SnapshotUpdate) -> Result<Option<Snapshot>, wire::WireError> {
    if held.epoch != 0 && (update.epoch, update.seq) <= (held.epoch, held.seq) {
        tracing::debug!(epoch = update.epoch, seq = update.seq, "ignored a snapshot that is not newer");
        return Ok(None);
    }
    wire::apply_update(held, update).map(Some)
}

/// Follows the leader's snapshot stream into `picker` until `stop` (over TLS with `tls`).
pub async fn follow_leader(
    source: LeaderSource,
    tls: Option<Arc<ClientTls>>,
    picker_id: String,
    picker: Arc<Picker>,
    stop: watch::Receiver<bool>,
) {
    let session = |channel, target: String| {
        let (picker, picker_id) = (picker.clone(), picker_id.clone());
        async move {
            let mut client = ControlPlaneClient::new(channel).max_decoding_message_size(256 * 1024 * 1024);
            let held = picker.held();
            let request = pb::WatchRequest {
                version: wire::PROTOCOL_VERSION,
                picker_id,
                have_epoch: held.epoch,
                have_seq: held.seq,
            };
            let mut stream =
                client.watch_snapshots(request).await.map_err(|s| crate::leader::status_error(&s))?.into_inner();
            tracing::info!(leader = %target, "following the aggregator leader");
            loop {
                match stream.message().await {
                    Ok(Some(update)) => {
                        let full = update.full;
                        let span = tracing::info_span!(
                            "apply_update",
                            epoch = update.epoch,
                            seq = update.seq,
                            full,
                            changed = update.endpoints.len(),
                            removed = update.removed.len(),
                        );
                        let _entered = span.enter();
                        // A delta that does not sit on what this picker holds ends the stream;
                        // the next one starts with a full snapshot.
                        if let Some(s) = apply_if_newer(&picker.held(), update).map_err(|e| e.to_string())? {
                            if let Some(publish) = &s.publish_span {
                                crate::telemetry::propagation::link(&span, publish);
                            }
                            picker.metrics.record_update(full);
                            picker.accept(Arc::new(s));
                        }
                    }
                    Ok(None) => return Err("stream ended".to_string()),
                    Err(status) => return Err(crate::leader::status_error(&status)),
                }
            }
        }
    };
    crate::leader::follow(source, tls, stop, "snapshots", session, || {}).await;
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    fn snap(epoch: u64, seq: u64) -> Snapshot {
        Snapshot {
            epoch,
            seq,
            endpoints: vec![],
            published_at: SystemTime::UNIX_EPOCH,
            routed_blocks: Vec::new(),
            objectives: Default::default(),
            publish_span: None,
        }
    }

    /// An old leader that resumes after a pause must not roll pickers back.
    #[test]
    fn test_stale_leader_snapshots_are_fenced() {
        let held = std::cell::RefCell::new(Snapshot::empty().as_ref().clone());
        let seen = std::cell::RefCell::new(Vec::new());
        let apply = |s: Snapshot| {
            let next = apply_if_newer(&held.borrow(), wire::snapshot_to_proto(&s)).expect("full");
            next.map(|n| {
                seen.borrow_mut().push(n.seq);
                *held.borrow_mut() = n;
            })
            .is_some()
        };
        assert!(apply(snap(5, 1)));
        assert!(apply(snap(5, 2)));
        assert!(!apply(snap(5, 2)), "same (epoch, seq)");
        assert!(!apply(snap(4, 99)), "older epoch, however high its seq");
        assert!(apply(snap(9, 1)), "new term");
        assert_eq!((held.borrow().epoch, held.borrow().seq), (9, 1));
        assert_eq!(*seen.borrow(), [1, 2, 1], "only applied updates are seen");
    }
}
