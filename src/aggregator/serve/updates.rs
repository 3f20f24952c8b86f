//! What the `WatchSnapshots` streams of one replica share: updates encoded once, and the rule
//! that cuts off a subscriber that stops reading.
//!
//! Pickers that keep up hold the same base, so they need the same delta: the first stream that
//! asks builds and encodes it, the others take the bytes from a small cache keyed by
//! `(epoch, base seq, seq)` (a full snapshot, for pickers that just connected, is cached the same
//! way). The leader's work per publish is then one delta, not one per picker.
//!
//! Each subscriber has a queue of [`QUEUE`] updates. One whose queue stays full for
//! [`Subscribers::slow_after`] is cut off: its task ends and lets go of the snapshot it held, the
//! queued updates are dropped, and its stream ends with `RESOURCE_EXHAUSTED` as soon as it reads
//! again; the picker then reconnects and starts over from a full snapshot. Until then what a
//! silent subscriber costs is bounded: the queue, plus what HTTP/2 flow control lets into its
//! connection. No other subscriber waits for it: each has its own task and queue, and the
//! snapshots come from a `watch` channel that never blocks the publisher.
//! What a delta contains is decided in `wire`.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use prometheus_client::metrics::counter::Counter;
use prost::Message as _;
use switchyard_proto::v1 as pb;
use tokio::sync::{mpsc, oneshot, watch};
use tonic::Status;

use crate::aggregator::RoutedLog;
use crate::model::Snapshot;
use crate::wire;

/// Updates queued per subscriber.
pub const QUEUE: usize = 4;
/// How long a subscriber's queue may stay full before it is cut off: shorter than the 2.5 s of
/// prefix blocks the leader remembers, so a picker that is merely busy gets every block.
pub const SLOW_AFTER: Duration = Duration::from_secs(2);

/// A `SnapshotUpdate` encoded once (protobuf bytes, without gRPC framing), shared by every
/// stream that sends it.
#[derive(Debug, Clone)]
pub struct EncodedUpdate {
    bytes: Bytes,
    /// A delta without the prefix blocks of some snapshots it spans (no longer remembered).
    gap: bool,
}

impl EncodedUpdate {
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    pub fn decode(&self) -> Result<pb::SnapshotUpdate, Status> {
        pb::SnapshotUpdate::decode(self.bytes.clone()).map_err(|e| Status::internal(e.to_string()))
    }
}

/// `(epoch, base seq, seq)`; no base for a full snapshot.
type Key = (u64, Option<u64>, u64);

/// Shared by the `WatchSnapshots` streams of one replica.
#[derive(Debug)]
pub struct Subscribers {
    cache: Mutex<VecDeque<(Key, Arc<OnceLock<EncodedUpdate>>)>>,
    /// Every endpoint's spec, encoded once.
    specs: Mutex<wire::SpecCache>,
    /// How long a subscriber's queue may stay full before it is cut off.
    pub slow_after: Duration,
    /// Subscribers cut off because they did not read their stream.
    pub dropped: Counter,
    /// Updates built and encoded (each sent to every subscriber that needed it).
    pub encoded: Counter,
}

impl Default for Subscribers {
    fn default() -> Self {
        Self::new(SLOW_AFTER)
    }
}

impl Subscribers {
    /// Updates kept: the latest delta and full snapshot, and a few for subscribers a step behind.
    /// A full snapshot of 10,000 endpoints encodes to ~2 MB, so this bounds the cache to tens of MB.
    const CACHED: usize = 8;

    pub fn new(slow_after: Duration) -> Self {
        Subscribers {
            cache: Mutex::default(),
            specs: Mutex::default(),
            slow_after,
            dropped: Counter::default(),
            encoded: Counter::default(),
        }
    }

    /// The update a stream that last sent `base` must send to bring its picker to `next`: a
    /// delta when `base` is of the same term, else the full snapshot. Built and encoded by the
    /// first stream that asks; the others wait for it rather than build it again.
    pub fn update(&self, base: Option<&Snapshot>, next: &Snapshot, routed: &RoutedLog) -> EncodedUpdate {
        let base = base.filter(|b| b.epoch == next.epoch && b.seq < next.seq);
        let key = (next.epoch, base.map(|b| b.seq), next.seq);
        let cell = {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            match cache.iter().find(|(k, _)| *k == key) {
                Some((_, cell)) => cell.clone(),
                None => {
                    let cell = Arc::new(OnceLock::new());
                    cache.push_back((key, cell.clone()));
                    if cache.len() > Self::CACHED {
                        cache.pop_front();
                    }
                    cell
                }
            }
        };
        cell.get_or_init(|| {
            self.encoded.inc();
            let mut specs = self.specs.lock().unwrap_or_else(|p| p.into_inner());
            match base {
                None => EncodedUpdate { bytes: wire::encode_snapshot(next, &mut specs), gap: false },
                Some(base) => encode_delta(base, next, routed, &mut specs),
            }
        })
        .clone()
    }
}

/// The delta from `base` to `next`: from the positions the snapshots between them changed when
/// the leader still remembers them, else by comparing every endpoint; `gap` when it lacks the
/// prefix blocks of some snapshot in between.
fn encode_delta(base: &Snapshot, next: &Snapshot, routed: &RoutedLog, specs: &mut wire::SpecCache) -> EncodedUpdate {
    let (blocks, gap) = match routed.between(next.epoch, base.seq, next.seq) {
        Some(blocks) => (blocks, false),
        None => (next.routed_blocks.clone(), true),
    };
    let positions = routed.changed_between(next.epoch, base.seq, next.seq);
    EncodedUpdate { bytes: wire::encode_delta(base, next, &blocks, positions.as_deref(), specs), gap }
}

/// What a subscriber's client reads: its queued updates, then, if it was cut off, the status
/// saying why (ahead of anything still queued, which is dropped).
pub struct Subscription {
    rx: mpsc::Receiver<Result<EncodedUpdate, Status>>,
    cut: Option<oneshot::Receiver<Status>>,
    done: bool,
    /// Counts the stream as open while it lives.
    pub(super) open: Option<super::Open>,
}

impl Stream for Subscription {
    type Item = Result<EncodedUpdate, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(cut) = self.cut.as_mut() {
            match Pin::new(cut).poll(cx) {
                Poll::Ready(Ok(status)) => {
                    self.done = true;
                    self.rx.close();
                    return Poll::Ready(Some(Err(status)));
                }
                // The feeding task ended without cutting: what is queued is still to be read.
                Poll::Ready(Err(_)) => self.cut = None,
                Poll::Pending => {}
            }
        }
        self.rx.poll_recv(cx)
    }
}

/// A subscriber's feeding side.
pub struct Feed {
    pub picker: String,
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub leading: watch::Receiver<bool>,
    pub routed: Arc<RoutedLog>,
    pub subscribers: Arc<Subscribers>,
}

impl Feed {
    /// Starts feeding a new subscriber: the current snapshot in full, then deltas as snapshots
    /// are published, until the client goes, leadership is lost, or the client stops reading.
    pub fn start(self) -> Subscription {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (cut_tx, cut) = oneshot::channel();
        tokio::spawn(self.run(tx, cut_tx));
        Subscription { rx, cut: Some(cut), done: false, open: None }
    }

    async fn run(mut self, tx: mpsc::Sender<Result<EncodedUpdate, Status>>, cut: oneshot::Sender<Status>) {
        let picker = std::mem::take(&mut self.picker);
        tracing::debug!(%picker, "picker subscribed");
        // The last snapshot sent: deltas are built on top of it.
        let mut sent: Option<Arc<Snapshot>> = None;
        loop {
            let snap = self.snapshots.borrow_and_update().clone();
            let stale = sent.as_ref().is_some_and(|b| b.epoch == snap.epoch && b.seq >= snap.seq);
            if snap.epoch != 0 && !stale {
                let update = self.subscribers.update(sent.as_deref(), &snap, &self.routed);
                if update.gap {
                    tracing::debug!(%picker, "prefix blocks of skipped snapshots are no longer remembered");
                    self.routed.gaps.inc();
                }
                let slow_after = self.subscribers.slow_after;
                tokio::select! {
                    r = tokio::time::timeout(slow_after, tx.send(Ok(update))) => match r {
                        Ok(Ok(())) => sent = Some(snap),
                        Ok(Err(_)) => return,
                        Err(_) => {
                            self.subscribers.dropped.inc();
                            tracing::warn!(%picker, queue = QUEUE, ?slow_after, "subscriber not reading its snapshot stream; dropped");
                            let _ = cut.send(Status::resource_exhausted(format!(
                                "snapshot stream not read for {slow_after:?}: dropped; reconnect for a full snapshot"
                            )));
                            return;
                        }
                    },
                    _ = lost(&mut self.leading) => return leadership_lost(&tx, cut),
                }
            }
            tokio::select! {
                changed = self.snapshots.changed() => if changed.is_err() { return },
                _ = lost(&mut self.leading) => return leadership_lost(&tx, cut),
                _ = tx.closed() => return,
            }
        }
    }
}

/// Ends a stream after what is queued, or at once when the queue is full.
fn leadership_lost(tx: &mpsc::Sender<Result<EncodedUpdate, Status>>, cut: oneshot::Sender<Status>) {
    if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(Err(Status::unavailable("leadership lost"))) {
        let _ = cut.send(Status::unavailable("leadership lost"));
    }
}

/// Resolves when leadership is lost (the `watch::Ref` is dropped inside, keeping callers `Send`).
pub async fn lost(leading: &mut watch::Receiver<bool>) {
    let _ = leading.wait_for(|l| !*l).await;
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::aggregator::AggregatorState;
    use crate::aggregator::state::tests::scraped;
    use crate::model::{Endpoint, EndpointId};

    /// What the aggregator actor does per publish, without the actor.
    fn publish(state: &mut AggregatorState, log: &RoutedLog) -> Arc<Snapshot> {
        let s = state.build(SystemTime::UNIX_EPOCH).expect("dirty");
        log.push(&s, state.changes());
        let s = Arc::new(s);
        state.recycle(s.clone());
        s
    }

    #[test]
    fn one_update_is_built_for_every_subscriber_on_the_same_base() {
        let (log, subscribers) = (RoutedLog::default(), Subscribers::default());
        let mut state = AggregatorState::new(3);
        let ids: Vec<String> = (0..20).map(|i| format!("e{i:02}")).collect();
        state.on_endpoints(
            ids.iter()
                .map(|id| Endpoint {
                    id: EndpointId::new(id),
                    address: format!("{id}:80"),
                    metrics_url: String::new(),
                    engine: "vllm".into(),
                    labels: Default::default(),
                })
                .collect(),
        );
        let base = publish(&mut state, &log);
        state.on_scraped(scraped("e07", 4));
        let next = publish(&mut state, &log);
        let updates: Vec<EncodedUpdate> = (0..200).map(|_| subscribers.update(Some(&base), &next, &log)).collect();
        assert_eq!(subscribers.encoded.get(), 1, "built once, shared by 200 subscribers");
        assert!(updates.iter().all(|u| u.bytes().as_ptr() == updates[0].bytes().as_ptr()), "the same bytes");
        let delta = updates[0].decode().expect("decodes");
        assert_eq!(delta, wire::snapshot_delta_to_proto(&base, &next, &[]), "the delta comparing every endpoint");
        assert_eq!(delta.endpoints.len(), 1);
        let full = subscribers.update(None, &next, &log).decode().expect("decodes");
        assert!(full.full && full.endpoints.len() == 20);
        subscribers.update(None, &next, &log);
        assert_eq!(subscribers.encoded.get(), 2, "the full snapshot is shared too");
        // A base from another term gets the full snapshot.
        let other_term = Snapshot { epoch: 2, ..(*base).clone() };
        assert!(subscribers.update(Some(&other_term), &next, &log).decode().expect("decodes").full);
        assert_eq!(subscribers.encoded.get(), 2);
    }

    #[tokio::test]
    async fn a_cut_subscriber_reads_the_status_first_and_nothing_after() {
        use futures::StreamExt as _;
        let (tx, rx) = mpsc::channel(QUEUE);
        let (cut_tx, cut) = oneshot::channel();
        let update = EncodedUpdate { bytes: Bytes::from_static(b""), gap: false };
        for _ in 0..QUEUE {
            tx.try_send(Ok(update.clone())).expect("room");
        }
        let mut s = Subscription { rx, cut: Some(cut), done: false, open: None };
        cut_tx.send(Status::resource_exhausted("slow")).expect("send");
        let first = s.next().await.expect("an item");
        assert_eq!(first.expect_err("the status").code(), tonic::Code::ResourceExhausted);
        assert!(s.next().await.is_none(), "what was queued is dropped");
    }
}
