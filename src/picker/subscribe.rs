//! Following the aggregator leader's snapshot stream. The leader is found through etcd (the
//! election's leader value is its control-plane address) or by trying a list of aggregator
//! addresses; followers refuse with `FAILED_PRECONDITION`, so the next address is tried. A stream
//! starts with a full snapshot, then deltas on top of it. An update is applied only when its
//! `(epoch, seq)` is newer than the one held (fencing: an old leader that comes back cannot roll
//! pickers back). While no leader answers, the picker keeps serving from
//! what it holds.
//!
//! Updates are decoded by [`UpdateCodec`] rather than tonic's prost codec: the same message, but
//! each endpoint's spec is looked up in the stream's [`wire::SpecMemo`] by its bytes and shared
//! with the snapshot before, instead of decoded and allocated again (`wire/decode.rs`).

use std::sync::Arc;

use bytes::Buf as _;
use prost::Message as _;
use switchyard_proto::v1 as pb;
use tokio::sync::watch;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use super::Picker;
use crate::control_tls::ClientTls;
pub use crate::leader::LeaderSource;
use crate::model::Snapshot;
use crate::wire;

/// The snapshot `update` makes of `held`, or `None` when its `(epoch, seq)` is not newer
/// (fencing). A delta that does not sit on `held` is an error (the stream must start again with
/// a full snapshot).
pub fn apply_if_newer(held: &Snapshot, update: pb::SnapshotUpdate) -> Result<Option<Snapshot>, wire::WireError> {
    apply_decoded_if_newer(held, update.into())
}

/// [`apply_if_newer`] for an update as [`UpdateCodec`] decodes it.
fn apply_decoded_if_newer(held: &Snapshot, update: wire::DecodedUpdate) -> Result<Option<Snapshot>, wire::WireError> {
    let u = &update.header;
    if held.epoch != 0 && (u.epoch, u.seq) <= (held.epoch, held.seq) {
        tracing::debug!(epoch = u.epoch, seq = u.seq, "ignored a snapshot that is not newer");
        return Ok(None);
    }
    wire::apply_decoded(held, update).map(Some)
}

/// `WatchSnapshots` as the generated client calls it, with [`UpdateCodec`].
async fn watch_snapshots(
    channel: tonic::transport::Channel,
    request: pb::WatchRequest,
) -> Result<tonic::Streaming<wire::DecodedUpdate>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(256 * 1024 * 1024);
    grpc.ready().await.map_err(|e| Status::unknown(format!("Service was not ready: {e}")))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/switchyard.v1.ControlPlane/WatchSnapshots");
    let mut request = tonic::Request::new(request);
    request.extensions_mut().insert(tonic::GrpcMethod::new("switchyard.v1.ControlPlane", "WatchSnapshots"));
    Ok(grpc.server_streaming(request, path, UpdateCodec::default()).await?.into_inner())
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
            let held = picker.held();
            let request = pb::WatchRequest {
                version: wire::PROTOCOL_VERSION,
                picker_id,
                have_epoch: held.epoch,
                have_seq: held.seq,
            };
            let mut stream = watch_snapshots(channel, request).await.map_err(|s| crate::leader::status_error(&s))?;
            tracing::info!(leader = %target, "following the aggregator leader");
            loop {
                match stream.message().await {
                    Ok(Some(update)) => {
                        let full = update.header.full;
                        let span = tracing::info_span!(
                            "apply_update",
                            epoch = update.header.epoch,
                            seq = update.header.seq,
                            full,
                            changed = update.endpoints.len(),
                            removed = update.header.removed.len(),
                        );
                        let _entered = span.enter();
                        // A delta that does not sit on what this picker holds ends the stream;
                        // the next one starts with a full snapshot.
                        if let Some(s) = apply_decoded_if_newer(&picker.held(), update).map_err(|e| e.to_string())? {
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

/// Encodes the `WatchRequest` and decodes the stream's updates with one [`wire::SpecMemo`] for
/// the stream (tonic asks for a codec per call).
#[derive(Debug, Default)]
struct UpdateCodec {
    memo: Option<wire::SpecMemo>,
}

/// The decoding half, holding the stream's memo.
#[derive(Debug, Default)]
struct UpdateDecoder {
    memo: wire::SpecMemo,
}

impl Codec for UpdateCodec {
    type Encode = pb::WatchRequest;
    type Decode = wire::DecodedUpdate;
    type Encoder = RequestEncoder;
    type Decoder = UpdateDecoder;

    fn encoder(&mut self) -> RequestEncoder {
        RequestEncoder
    }

    fn decoder(&mut self) -> UpdateDecoder {
        UpdateDecoder { memo: self.memo.take().unwrap_or_default() }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct RequestEncoder;

impl Encoder for RequestEncoder {
    type Item = pb::WatchRequest;
    type Error = Status;

    fn encode(&mut self, item: pb::WatchRequest, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst).map_err(|e| Status::internal(e.to_string()))
    }
}

impl Decoder for UpdateDecoder {
    type Item = wire::DecodedUpdate;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<wire::DecodedUpdate>, Status> {
        // The message is contiguous in tonic's buffer; copied only if it were not.
        let len = src.remaining();
        let decoded = if src.chunk().len() >= len {
            wire::decode_update(&src.chunk()[..len], &mut self.memo)
        } else {
            wire::decode_update(&src.copy_to_bytes(len), &mut self.memo)
        };
        src.advance(src.remaining());
        decoded.map(Some).map_err(|e| Status::internal(e.to_string()))
    }
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
