//! The distributed roles as separate processes with a real etcd: leader failover without failed
//! picks, and a picker with no leader that refuses to make up endpoints.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use switchyard::sim::{self, Flavor};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::etcd::{Etcd, free_port};
use crate::support::{client, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[String]) -> Proc {
    Proc(Command::new(BIN).args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn switchyard"))
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

async fn ready(health_port: u16) -> bool {
    let Ok(ch) = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{health_port}"))
        .expect("uri")
        .connect()
        .await
    else {
        return false;
    };
    let r = HealthClient::new(ch).check(tonic_health::pb::HealthCheckRequest { service: "readiness".into() }).await;
    r.is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32)
}

async fn picker_epoch(metrics_port: u16) -> Option<u64> {
    let text = client().get(format!("http://127.0.0.1:{metrics_port}/metrics")).send().await.ok()?.text().await.ok()?;
    text.lines().find_map(|l| l.strip_prefix("switchyard_picker_snapshot_epoch ")).and_then(|v| v.trim().parse().ok())
}

struct Aggregator {
    proc: Proc,
    control: u16,
}

fn aggregator(etcd: &Etcd, endpoints: &str, election: &str) -> Aggregator {
    let (control, health) = (free_port(), free_port());
    let proc = spawn(&s(&[
        "aggregator",
        "--listen-host",
        "127.0.0.1",
        "--control-port",
        &control.to_string(),
        "--grpc-health-port",
        &health.to_string(),
        "--endpoints-file",
        endpoints,
        "--etcd-endpoints",
        &etcd.endpoint,
        "--election-name",
        election,
        "--lease-ttl",
        "2s",
        "--log",
        "warn",
    ]));
    Aggregator { proc, control }
}

fn picker(etcd: &Etcd, election: &str) -> (Proc, u16, u16, u16) {
    let (grpc, health, metrics) = (free_port(), free_port(), free_port());
    let p = spawn(&s(&[
        "picker",
        "--listen-host",
        "127.0.0.1",
        "--grpc-port",
        &grpc.to_string(),
        "--grpc-health-port",
        &health.to_string(),
        "--metrics-port",
        &metrics.to_string(),
        "--secure-serving=false",
        "--etcd-endpoints",
        &etcd.endpoint,
        "--election-name",
        election,
        "--lease-ttl",
        "2s",
        "--log",
        "warn",
    ]));
    (p, grpc, health, metrics)
}

#[actix_rt::test]
async fn leader_killed_picker_keeps_answering_and_follows_the_new_leader() {
    let etcd = Etcd::start().await;
    let fleet = sim::start_fleet(&sim::FleetConfig { fleet: vec![(Flavor::VllmV1, 3)], ..Default::default() })
        .await
        .expect("fleet");
    let dir = tempfile::tempdir().expect("dir");
    let file = sim::write_endpoints_file(&fleet, dir.path()).expect("endpoints file").display().to_string();
    let a = aggregator(&etcd, &file, "it-failover");
    let b = aggregator(&etcd, &file, "it-failover");
    let (_p, grpc, health, metrics) = picker(&etcd, "it-failover");
    wait_for("picker ready", Duration::from_secs(20), || async move { ready(health).await.then_some(()) }).await;
    let first_epoch = wait_for("an epoch at the picker", Duration::from_secs(5), || picker_epoch(metrics)).await;
    let settings = switchyard::aggregator::election::EtcdSettings::new(
        vec![etcd.endpoint.clone()],
        "it-failover",
        "",
        Duration::from_secs(2),
    );
    let leader = switchyard::aggregator::election::current_leader(&settings).await.expect("etcd").expect("a leader");
    let (mut victim, survivor) = if leader.ends_with(&format!(":{}", a.control)) { (a, b) } else { (b, a) };

    // Continuous ext-proc traffic through the failover.
    let load = switchyard::tools::loadgen::BackgroundLoad::start(([127, 0, 0, 1], grpc).into(), 4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = victim.proc.0.kill(); // SIGKILL: no resignation, the lease has to expire.
    let killed_at = tokio::time::Instant::now();
    let new_epoch = wait_for("a snapshot from the new leader", Duration::from_secs(15), || async move {
        picker_epoch(metrics).await.filter(|e| *e > first_epoch)
    })
    .await;
    let failover = killed_at.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, failed) = load.stop().await;
    assert!(new_epoch > first_epoch);
    assert!(ok > 50, "traffic flowed: {ok}");
    assert_eq!(failed, 0, "no failed picks during failover");
    assert!(failover < Duration::from_secs(8), "failover took {failover:?}");
    let leader = switchyard::aggregator::election::current_leader(&settings).await.expect("etcd").expect("a leader");
    assert!(leader.ends_with(&format!(":{}", survivor.control)));
}

#[actix_rt::test]
async fn picker_without_a_leader_is_not_ready_and_makes_nothing_up() {
    let etcd = Etcd::start().await;
    let (_p, grpc, health, _metrics) = picker(&etcd, "it-nobody");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!ready(health).await, "no snapshot, not ready");
    let ch = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{grpc}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut c =
        envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient::new(ch);
    let err = switchyard::tools::loadgen::one_exchange(&mut c, &switchyard::tools::loadgen::chat_body(1), b"{}")
        .await
        .expect_err("no endpoint");
    assert!(err.contains("immediate response"), "answered with an error, not a destination: {err}");
}
