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
        let len = bp.prefix.len();
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
        let len = bp.prefix.len();
        async move { (len as u64 == REPORTS).then_some(()) }
    })
    .await;
    b.shutdown(Duration::from_secs(1)).await;
    agg.shutdown(Duration::from_secs(1)).await;
}

/// Regression (issue 16): two `Report` streams each claiming `i64::MAX` requests and tokens in
/// flight to one endpoint were folded in, and subscribers saw -2 requests in flight. Loads no
/// picker could send are refused with `INVALID_ARGUMENT` naming the bound; honest ones still sum.
#[actix_rt::test]
async fn reports_no_picker_could_send_are_refused_and_the_sums_never_wrap() {
    use switchyard_proto::v1 as pb;
    use switchyard_proto::v1::control_plane_client::ControlPlaneClient;

    let dir = tempfile::tempdir().expect("dir");
    let (_fleet, file) = vllm_fleet(1, dir.path()).await;
    let agg = start_aggregator(AggregatorOptions::local(file)).await.expect("aggregator");
    let snapshots = agg.snapshots.clone();
    let id = wait_for("the endpoint in a snapshot", Duration::from_secs(10), || {
        let s = snapshots.borrow().clone();
        async move { s.endpoints.first().map(|e| e.endpoint.id.to_string()) }
    })
    .await;
    let report = |picker: &str, requests: i64, tokens: i64| pb::PickerReport {
        version: 1,
        picker_id: picker.into(),
        loads: vec![pb::LoadDelta {
            endpoint_id: id.clone(),
            requests,
            tokens,
            sent_since_scrape: 0,
            scraped_at_unix_micros: 0,
        }],
        routed: vec![],
    };
    let client = ControlPlaneClient::connect(format!("http://{}", agg.control_addr)).await.expect("connect");
    for (picker, requests, tokens) in
        [("hostile-1", i64::MAX, i64::MAX), ("hostile-2", i64::MAX, i64::MAX), ("neg", -1, 0)]
    {
        let refused =
            client.clone().report(tokio_stream::iter([report(picker, requests, tokens)])).await.expect_err("refused");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{picker}: {refused:?}");
        assert!(refused.message().contains("requests") && refused.message().contains("1048576"), "{refused:?}");
    }
    client.clone().report(tokio_stream::iter([report("honest", 3, 30)])).await.expect("accepted");
    let snapshots = agg.snapshots.clone();
    wait_for("the honest load, and only it", Duration::from_secs(5), || {
        let s = snapshots.borrow().clone();
        async move {
            let load = s.endpoints[0].shared_load;
            assert!(load.requests >= 0 && load.tokens >= 0, "{load:?}");
            (load == switchyard::model::Load { requests: 3, tokens: 30 }).then_some(())
        }
    })
    .await;
    agg.shutdown(Duration::from_secs(1)).await;
}

/// Regression (issue 16): `WatchSnapshots` accepted `version: 99`; it now refuses versions it
/// does not speak and names the one it does, like `Scrape` and `Report`.
#[actix_rt::test]
async fn every_control_plane_rpc_refuses_protocol_versions_it_does_not_speak() {
    use switchyard_proto::v1 as pb;
    use switchyard_proto::v1::control_plane_client::ControlPlaneClient;

    let dir = tempfile::tempdir().expect("dir");
    let (_fleet, file) = vllm_fleet(1, dir.path()).await;
    let agg = start_aggregator(AggregatorOptions::local(file)).await.expect("aggregator");
    let mut client = ControlPlaneClient::connect(format!("http://{}", agg.control_addr)).await.expect("connect");
    let leading = agg.leading.clone();
    wait_for("leading", Duration::from_secs(10), || {
        let l = *leading.borrow();
        async move { l.then_some(()) }
    })
    .await;
    let watch = pb::WatchRequest { version: 99, picker_id: "t".into(), have_epoch: 0, have_seq: 0 };
    let refused = client.watch_snapshots(watch).await.expect_err("version 99 refused");
    let report = pb::PickerReport { version: 99, picker_id: "t".into(), loads: vec![], routed: vec![] };
    let refused_report = client.report(tokio_stream::iter([report])).await.expect_err("version 99 refused");
    for status in [refused, refused_report] {
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("version 99") && status.message().contains("speaks version 1"), "{status:?}");
    }
    agg.shutdown(Duration::from_secs(1)).await;
}

/// `switchyard_<role>_endpoint_metrics_age_seconds{endpoint}` on the picker's and the leader's
/// /metrics: one series per scraped endpoint, young while scrapes succeed, gone when it leaves.
#[actix_rt::test]
async fn every_endpoint_has_a_metrics_age_series_until_it_leaves() {
    let dir = tempfile::tempdir().expect("dir");
    let (fleet, file) = vllm_fleet(2, dir.path()).await;
    let agg = start_aggregator(AggregatorOptions::local(file)).await.expect("aggregator");
    let picker = start_picker(PickerOptions::local(agg.control_addr, "p", 1)).await.expect("picker");
    let mut ids: Vec<String> = fleet.iter().map(|h| h.endpoint().name).collect();
    ids.sort();
    let pages = [
        (format!("http://{}/metrics", picker.servers.metrics_addr), "switchyard_picker_endpoint_metrics_age_seconds"),
        (format!("http://{}/metrics", agg.metrics_addr), "switchyard_aggregator_endpoint_metrics_age_seconds"),
    ];
    let ages = |url: String, name: &'static str| async move {
        let text = crate::support::client().get(url).send().await.ok()?.text().await.ok()?;
        let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).ok()?;
        let ages: std::collections::BTreeMap<String, f64> = parsed
            .samples
            .into_iter()
            .filter(|s| s.metric == name)
            .filter_map(|s| match s.value {
                prometheus_parse::Value::Gauge(v) => Some((s.labels.get("endpoint")?.to_string(), v)),
                _ => None,
            })
            .collect();
        Some(ages)
    };
    for (url, name) in &pages {
        let ages = wait_for("an age per endpoint", Duration::from_secs(10), || async {
            ages(url.clone(), name).await.filter(|a| a.len() == ids.len())
        })
        .await;
        assert_eq!(ages.keys().cloned().collect::<Vec<_>>(), ids, "{name}");
        assert!(ages.values().all(|age| (0.0..2.0).contains(age)), "{name}: {ages:?}");
    }
    switchyard::sim::write_endpoints_file(&fleet[..1], dir.path()).expect("rewrite");
    for (url, name) in &pages {
        wait_for("the series of the endpoint that left to go", Duration::from_secs(10), || async {
            let kept = &fleet[0].name;
            ages(url.clone(), name).await.filter(|a| a.keys().eq([kept]))
        })
        .await;
    }
    picker.shutdown(Duration::from_secs(1)).await;
    agg.shutdown(Duration::from_secs(1)).await;
}
