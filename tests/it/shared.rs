//! Pickers share one view through the leader: routed prefix blocks and in-flight load.

use std::time::Duration;

use switchyard::roles::{AggregatorOptions, PickerOptions, start_aggregator, start_picker};

use crate::envoy::{HttpRequest, send};
use crate::support::{vllm_fleet, wait_for};

#[actix_rt::test]
async fn a_prefix_routed_by_one_picker_attracts_the_other_and_load_is_shared() {
    let dir = tempfile::tempdir().expect("dir");
    let (_fleet, file) = vllm_fleet(4, dir.path()).await;
    let agg = start_aggregator(AggregatorOptions { remote_scrapers: false, ..AggregatorOptions::local(file) })
        .await
        .expect("aggregator");
    let picker = |id: &str, seed: u64| PickerOptions::local(agg.control_addr, id, seed);
    let a = start_picker(picker("a", 1)).await.expect("a");
    let b = start_picker(picker("b", 2)).await.expect("b");
    for p in [&a, &b] {
        wait_for("picker ready", Duration::from_secs(10), || async move { p.readiness.is_ready().then_some(()) }).await;
    }
    let connect = |addr: std::net::SocketAddr| async move {
        envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient::connect(
            format!("http://{addr}"),
        )
        .await
        .expect("connect")
    };
    let (mut ca, mut cb) = (connect(a.servers.ext_proc_addr).await, connect(b.servers.ext_proc_addr).await);
    let prompt = "A long shared system prompt about routing inference requests. ".repeat(40);
    let req = HttpRequest::chat("meta-llama/Llama-3.1-8B-Instruct", &prompt);
    // a routes it; the exchange stays open, so the request is in flight at a.
    let held = send(&mut ca, &req).await;
    let dest = held.routed.set_headers["x-gateway-destination-endpoint"].clone();
    let index =
        a.picker.view.load().snapshot.endpoints.iter().position(|e| e.endpoint.address == dest).expect("endpoint");
    // b learns both through the leader's snapshots.
    let bp = b.picker.clone();
    wait_for("a's in-flight request in b's view", Duration::from_secs(5), || {
        let v = bp.view.load_full();
        async move { (v.snapshot.endpoints[index].shared_load.requests >= 1).then_some(()) }
    })
    .await;
    let bp = b.picker.clone();
    wait_for("a's routed blocks in b's prefix index", Duration::from_secs(5), || {
        let len = bp.prefix.lock().map(|p| p.len()).unwrap_or(0);
        async move { (len > 0).then_some(()) }
    })
    .await;
    for _ in 0..3 {
        let ex = send(&mut cb, &req).await;
        assert_eq!(ex.routed.set_headers["x-gateway-destination-endpoint"], dest, "b follows the prefix a routed");
    }
    drop(held);
}

/// `WatchSnapshots` sends one full snapshot, then deltas; applied in order they rebuild exactly
/// the leader's endpoints, and the prefix blocks pickers report arrive through the deltas.
#[actix_rt::test]
async fn the_snapshot_stream_is_one_full_snapshot_then_deltas_that_rebuild_the_leaders_view() {
    use switchyard_proto::v1 as pb;
    use switchyard_proto::v1::control_plane_client::ControlPlaneClient;

    let dir = tempfile::tempdir().expect("dir");
    let (_fleet, file) = vllm_fleet(3, dir.path()).await;
    let agg = start_aggregator(AggregatorOptions::local(file)).await.expect("aggregator");
    let mut client = ControlPlaneClient::connect(format!("http://{}", agg.control_addr)).await.expect("connect");
    let request = pb::WatchRequest { version: 1, picker_id: "t".into(), have_epoch: 0, have_seq: 0 };
    let mut stream = client.watch_snapshots(request).await.expect("watch").into_inner();

    let first = stream.message().await.expect("stream").expect("open");
    assert!(first.full, "the stream starts with a full snapshot");
    let mut held = switchyard::wire::apply_update(&switchyard::model::Snapshot::empty(), first).expect("applies");
    // Another picker reports blocks routed to an endpoint.
    let target = held.endpoints.first().map(|e| e.endpoint.id.to_string()).expect("endpoints");
    let mut reporter = client.clone();
    let report = pb::PickerReport {
        version: 1,
        picker_id: "other".into(),
        loads: vec![],
        routed: vec![pb::PrefixBlocks { endpoint_id: target.clone(), hashes: vec![41, 42] }],
    };
    let send_report = tokio::spawn(async move { reporter.report(tokio_stream::iter([report])).await });

    let (mut fulls, mut deltas, mut blocks) = (1, 0, Vec::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while deltas < 20 || blocks.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "{fulls} full, {deltas} deltas, blocks {blocks:?}");
        let update = stream.message().await.expect("stream").expect("open");
        if update.full {
            fulls += 1
        } else {
            deltas += 1
        }
        if !update.full {
            assert_eq!((update.epoch, update.base_seq), (held.epoch, held.seq), "a delta sits on the last update");
        }
        held = switchyard::wire::apply_update(&held, update).expect("applies");
        blocks
            .extend(held.routed_blocks.iter().filter(|b| b.endpoint.as_str() == target).flat_map(|b| b.hashes.clone()));
    }
    assert_eq!(fulls, 1, "only the first update is a full snapshot");
    assert_eq!(blocks, [41, 42], "reported blocks arrive once, through a delta");
    send_report.await.expect("report task").expect("report accepted");
    // Catch up with the leader's latest snapshot, then compare.
    loop {
        let latest = agg.snapshots.borrow().clone();
        if (held.epoch, held.seq) == (latest.epoch, latest.seq) {
            // Compared as the wire carries them (scrape times in microseconds).
            let wire = |s: &switchyard::model::Snapshot| switchyard::wire::snapshot_to_proto(s).endpoints;
            assert_eq!(wire(&held), wire(&latest), "base + deltas = the leader's snapshot");
            break;
        }
        assert!((held.epoch, held.seq) < (latest.epoch, latest.seq));
        let update = stream.message().await.expect("stream").expect("open");
        held = switchyard::wire::apply_update(&held, update).expect("applies");
    }
    agg.shutdown(Duration::from_secs(1)).await;
}

/// Every block any picker reports reaches every other picker's prefix index, however fast the
/// reports come: updates the stream or the picker's view skip still deliver their blocks.
#[actix_rt::test]
async fn every_reported_block_reaches_the_other_pickers_even_when_updates_are_coalesced() {
    use switchyard_proto::v1 as pb;
    use switchyard_proto::v1::control_plane_client::ControlPlaneClient;

    let dir = tempfile::tempdir().expect("dir");
    let (_fleet, file) = vllm_fleet(2, dir.path()).await;
    let agg = start_aggregator(AggregatorOptions::local(file)).await.expect("aggregator");
    let b = start_picker(PickerOptions::local(agg.control_addr, "b", 2)).await.expect("b");
    let ready = &b;
    wait_for("picker ready", Duration::from_secs(10), || async move { ready.readiness.is_ready().then_some(()) }).await;
    let ids: Vec<String> = b.picker.view.load().snapshot.endpoints.iter().map(|e| e.endpoint.id.to_string()).collect();

    // 400 reports, one block each, as fast as the stream takes them.
    const REPORTS: u64 = 400;
    let reports = (0..REPORTS).map(move |i| pb::PickerReport {
        version: 1,
        picker_id: "a".into(),
        loads: vec![],
        routed: vec![pb::PrefixBlocks { endpoint_id: ids[(i % 2) as usize].clone(), hashes: vec![1_000 + i] }],
    });
    let mut client = ControlPlaneClient::connect(format!("http://{}", agg.control_addr)).await.expect("connect");
    client.report(tokio_stream::iter(reports)).await.expect("reports accepted");
    let bp = b.picker.clone();
    wait_for("every block in b's prefix index", Duration::from_secs(10), || {
        let len = bp.prefix.lock().map(|p| p.len()).unwrap_or(0);
        async move { (len as u64 == REPORTS).then_some(()) }
    })
    .await;
    b.shutdown(Duration::from_secs(1)).await;
    agg.shutdown(Duration::from_secs(1)).await;
}
