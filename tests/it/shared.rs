//! Pickers share one view through the leader: routed prefix blocks and in-flight load.

use std::time::Duration;

use switchyard::roles::{AggregatorOptions, PickerOptions, start_aggregator, start_picker};
use switchyard::sim::{self, Flavor};

use crate::envoy::{HttpRequest, send};
use crate::support::wait_for;

#[actix_rt::test]
async fn a_prefix_routed_by_one_picker_attracts_the_other_and_load_is_shared() {
    let fleet = sim::start_fleet(&sim::FleetConfig { fleet: vec![(Flavor::VllmV1, 4)], ..Default::default() })
        .await
        .expect("fleet");
    let dir = tempfile::tempdir().expect("dir");
    let file = sim::write_endpoints_file(&fleet, dir.path()).expect("endpoints file");
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
