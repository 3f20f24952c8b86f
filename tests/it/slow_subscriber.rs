//! A picker that never reads its snapshot stream (issue 13, hostile peers): the other pickers keep
//! getting every update at once, the silent one is cut off within the bound, and when it comes
//! back it starts again from a full snapshot.

use std::time::Duration;

use switchyard::roles::{AggregatorOptions, PickerOptions, start_aggregator, start_picker};
use switchyard_proto::v1 as pb;
use switchyard_proto::v1::control_plane_client::ControlPlaneClient;
use tokio::time::Instant;

use crate::support::{metrics_text, vllm_fleet, wait_for};

fn dropped(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix("switchyard_aggregator_slow_subscribers_dropped_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[actix_rt::test]
async fn a_subscriber_that_never_reads_is_cut_off_without_slowing_the_others() {
    let dir = tempfile::tempdir().expect("dir");
    let (_fleet, file) = vllm_fleet(8, dir.path()).await;
    let bound = Duration::from_millis(500);
    let agg = start_aggregator(AggregatorOptions { slow_subscriber_timeout: bound, ..AggregatorOptions::local(file) })
        .await
        .expect("aggregator");
    let normal = start_picker(PickerOptions::local(agg.control_addr, "normal", 1)).await.expect("picker");
    wait_for("picker ready", Duration::from_secs(10), || async { normal.readiness.is_ready().then_some(()) }).await;

    // The silent subscriber: a 1 KiB HTTP/2 stream window, so what it does not read stays on the
    // leader's side from the first snapshot on.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", agg.control_addr))
        .expect("endpoint")
        .initial_stream_window_size(1024)
        .connect()
        .await
        .expect("connect");
    let mut silent = ControlPlaneClient::new(channel);
    let request = || pb::WatchRequest { version: 1, picker_id: "silent".into(), have_epoch: 0, have_seq: 0 };
    let subscribed = Instant::now();
    let mut stream = silent.watch_snapshots(request()).await.expect("subscribed").into_inner();

    // While it is stuck, the normal picker holds each snapshot the leader publishes promptly.
    let (mut checks, cut_after) = (0, bound + Duration::from_secs(5));
    loop {
        let seq = agg.snapshots.borrow().seq;
        let p = normal.picker.clone();
        wait_for("the normal picker to hold the leader's latest snapshot", Duration::from_millis(500), || {
            let held = p.held().seq;
            async move { (held >= seq).then_some(()) }
        })
        .await;
        checks += 1;
        if dropped(&metrics_text(agg.metrics_addr).await) == 1 {
            break;
        }
        assert!(subscribed.elapsed() < cut_after, "the silent subscriber was not cut off within {cut_after:?}");
    }
    let took = subscribed.elapsed();
    assert!(took >= bound, "cut off after {took:?}, before its queue stayed full for {bound:?}");
    // A count, not a rate: each check waits for the picker and reads the leader's /metrics, which
    // on a loaded 2-core machine took over 100 ms in a debug build (4 checks in the 500 ms once).
    assert!(checks >= 3, "the normal picker was checked {checks} times while the other was stuck");
    let seq_at_cut = agg.snapshots.borrow().seq;

    // Reading again, it finds what HTTP/2 had let through, then the reason, not its stale queue.
    let mut read = 0;
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.message()).await.expect("not stuck") {
            Ok(Some(_)) => read += 1,
            Ok(None) => panic!("the stream ended without saying why"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(read <= 2, "{read} updates were still delivered after the cut");

    // Reconnecting starts over from a full snapshot, at least as new as the cut.
    let mut again = silent.watch_snapshots(request()).await.expect("resubscribed").into_inner();
    let first = again.message().await.expect("stream").expect("an update");
    assert!(first.full, "a reconnecting subscriber gets a full snapshot");
    assert!(first.seq >= seq_at_cut && first.endpoints.len() == 8);
    let next = again.message().await.expect("stream").expect("an update");
    assert!(!next.full && next.base_seq == first.seq, "then deltas on top of it");
    assert_eq!(dropped(&metrics_text(agg.metrics_addr).await), 1, "the normal picker was never cut off");
    agg.shutdown(Duration::from_secs(1)).await;
}
