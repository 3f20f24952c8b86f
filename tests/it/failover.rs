//! The distributed roles as separate processes with a real etcd: leader killed or paused, etcd
//! unreachable, a scraper killed, a picker with no leader that refuses to make up endpoints.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use switchyard::sim;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::etcd::{Etcd, free_port};
use crate::support::{client, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

struct Proc(Child);

impl Proc {
    fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([sig, &self.0.id().to_string()]).status().expect("kill").success();
        assert!(ok, "kill {sig}");
    }
}

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

async fn picker_gauge(metrics_port: u16, name: &str) -> Option<f64> {
    let text = client().get(format!("http://127.0.0.1:{metrics_port}/metrics")).send().await.ok()?.text().await.ok()?;
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')).and_then(|v| v.trim().parse().ok())
}

async fn picker_epoch(metrics_port: u16) -> Option<u64> {
    picker_gauge(metrics_port, "switchyard_picker_snapshot_epoch").await.map(|e| e as u64)
}

struct Aggregator {
    proc: Proc,
    control: u16,
    health: u16,
}

fn aggregator(etcd: &Etcd, endpoints: &str, election: &str) -> Aggregator {
    aggregator_with(etcd, endpoints, election, &[])
}

fn aggregator_with(etcd: &Etcd, endpoints: &str, election: &str, extra: &[&str]) -> Aggregator {
    let (control, health) = (free_port(), free_port());
    let mut args = s(&[
        "aggregator",
        "--listen-host",
        "127.0.0.1",
        "--control-port",
        &control.to_string(),
        "--grpc-health-port",
        &health.to_string(),
        "--metrics-port",
        &free_port().to_string(),
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
    ]);
    args.extend(s(extra));
    Aggregator { proc: spawn(&args), control, health }
}

fn picker(etcd: &Etcd, election: &str) -> (Proc, u16, u16, u16) {
    picker_with(&s(&["--etcd-endpoints", &etcd.endpoint, "--election-name", election, "--lease-ttl", "2s"]))
}

/// A picker that finds the leader by trying `--aggregators` in turn.
fn picker_listing(aggregators: &[&Aggregator]) -> (Proc, u16, u16, u16) {
    let list: Vec<String> = aggregators.iter().map(|a| format!("127.0.0.1:{}", a.control)).collect();
    picker_with(&s(&["--aggregators", &list.join(",")]))
}

fn picker_with(leader: &[String]) -> (Proc, u16, u16, u16) {
    let (grpc, health, metrics) = (free_port(), free_port(), free_port());
    let mut args = s(&[
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
        "--log",
        "warn",
    ]);
    args.extend_from_slice(leader);
    (spawn(&args), grpc, health, metrics)
}

#[actix_rt::test]
async fn leader_killed_picker_keeps_answering_and_follows_the_new_leader() {
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let (_fleet, file) = fleet_file(dir.path()).await;
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
    // One full snapshot per leader, deltas in between.
    let updates = |kind: &'static str| {
        picker_gauge(
            metrics,
            match kind {
                "full" => "switchyard_picker_snapshot_updates_total{kind=\"full\"}",
                _ => "switchyard_picker_snapshot_updates_total{kind=\"delta\"}",
            },
        )
    };
    let full = updates("full").await.expect("full updates counted");
    assert!(full >= 2.0, "a full snapshot from each leader: {full}");
    let deltas = updates("delta").await.expect("deltas counted");
    assert!(deltas > full, "then deltas: {deltas} deltas, {full} full");
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

/// Samples a picker's epoch every 20 ms until dropped; the samples come back from `stop`.
struct EpochTrace {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Vec<u64>>,
}

impl EpochTrace {
    fn start(metrics_port: u16) -> Self {
        let (stop, mut rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            while !*rx.borrow() {
                if let Some(e) = picker_epoch(metrics_port).await {
                    seen.push(e);
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    _ = rx.changed() => {}
                }
            }
            seen
        });
        EpochTrace { stop, task }
    }

    async fn stop(self) -> Vec<u64> {
        let _ = self.stop.send(true);
        self.task.await.expect("trace")
    }
}

async fn fleet_file(dir: &std::path::Path) -> (Vec<sim::SimHandle>, String) {
    let (fleet, file) = crate::support::vllm_fleet(3, dir).await;
    (fleet, file.display().to_string())
}

fn etcd_settings(etcd: &Etcd, election: &str) -> switchyard::aggregator::election::EtcdSettings {
    switchyard::aggregator::election::EtcdSettings::new(
        vec![etcd.endpoint.clone()],
        election,
        "",
        Duration::from_secs(2),
    )
}

/// The old leader is paused (SIGSTOP: its connections stay open, it just stops answering), a
/// standby takes over, and the old leader is resumed. Pickers that find the leader through etcd
/// and pickers that try an address list with the old leader first both move to the new leader,
/// keep answering throughout, and never go back to the old epoch.
#[actix_rt::test]
async fn paused_leader_is_replaced_and_cannot_roll_pickers_back() {
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let (_fleet, file) = fleet_file(dir.path()).await;
    let (a, b) = (aggregator(&etcd, &file, "it-pause"), aggregator(&etcd, &file, "it-pause"));
    let (_p1, grpc1, health1, metrics1) = picker(&etcd, "it-pause");
    wait_for("picker ready", Duration::from_secs(20), || async move { ready(health1).await.then_some(()) }).await;
    let settings = etcd_settings(&etcd, "it-pause");
    let leader = switchyard::aggregator::election::current_leader(&settings).await.expect("etcd").expect("a leader");
    let (old, new) = if leader.ends_with(&format!(":{}", a.control)) { (a, b) } else { (b, a) };
    let (_p2, grpc2, health2, metrics2) = picker_listing(&[&old, &new]);
    wait_for("listing picker ready", Duration::from_secs(20), || async move { ready(health2).await.then_some(()) })
        .await;
    let first = wait_for("an epoch at both pickers", Duration::from_secs(5), || async move {
        let (e1, e2) = (picker_epoch(metrics1).await?, picker_epoch(metrics2).await?);
        (e1 == e2 && e1 > 0).then_some(e1)
    })
    .await;

    let loads =
        [grpc1, grpc2].map(|p| switchyard::tools::loadgen::BackgroundLoad::start(([127, 0, 0, 1], p).into(), 2));
    let traces = [metrics1, metrics2].map(EpochTrace::start);
    old.proc.signal("-STOP");
    wait_for("both pickers on the new leader", Duration::from_secs(20), || async move {
        let (e1, e2) = (picker_epoch(metrics1).await?, picker_epoch(metrics2).await?);
        (e1 > first && e2 > first).then_some(())
    })
    .await;
    old.proc.signal("-CONT");
    // The resumed replica finds its lease gone, stops publishing and campaigns as a standby.
    tokio::time::sleep(Duration::from_secs(3)).await;

    for (i, trace) in traces.into_iter().enumerate() {
        let seen = trace.stop().await;
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "picker {i} went back to an older epoch: {seen:?}");
        assert!(seen.last().is_some_and(|e| *e > first), "picker {i} ended on the new epoch: {seen:?}");
    }
    for (i, load) in loads.into_iter().enumerate() {
        let (ok, failed) = load.stop().await;
        assert!(ok > 50, "picker {i}: traffic flowed: {ok}");
        assert_eq!(failed, 0, "picker {i}: no failed picks");
    }
    let leader = switchyard::aggregator::election::current_leader(&settings).await.expect("etcd").expect("a leader");
    assert!(leader.ends_with(&format!(":{}", new.control)), "the standby still leads: {leader}");
    assert!(!ready(old.health).await, "the resumed old leader is a standby, not ready");
    assert!(ready(new.health).await);
}

/// etcd stops answering for longer than the lease: the leader steps down (no aggregator is
/// ready), pickers keep answering from the last snapshot, which ages; when etcd is back exactly
/// one aggregator leads and pickers get its snapshots.
#[actix_rt::test]
async fn etcd_outage_leader_steps_down_pickers_keep_serving_then_one_leader() {
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let (_fleet, file) = fleet_file(dir.path()).await;
    let aggs = [aggregator(&etcd, &file, "it-outage"), aggregator(&etcd, &file, "it-outage")];
    let (_p, grpc, health, metrics) = picker(&etcd, "it-outage");
    wait_for("picker ready", Duration::from_secs(20), || async move { ready(health).await.then_some(()) }).await;
    let first = wait_for("an epoch", Duration::from_secs(5), || picker_epoch(metrics)).await;
    let load = switchyard::tools::loadgen::BackgroundLoad::start(([127, 0, 0, 1], grpc).into(), 2);

    etcd.pause();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let leaders = futures::future::join_all(aggs.iter().map(|a| ready(a.health))).await;
    assert_eq!(leaders, [false, false], "the leader stepped down within the lease");
    assert!(ready(health).await, "the picker still holds a snapshot");
    // No leader publishes: the snapshot held stops changing and ages.
    let gauge = "switchyard_picker_snapshot_published_timestamp_seconds";
    let published = picker_gauge(metrics, gauge).await.expect("gauge");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(picker_gauge(metrics, gauge).await, Some(published), "nothing new was published");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs_f64();
    assert!(now - published > 1.0, "the snapshot held is stale: {:.1} s old", now - published);
    assert_eq!(picker_epoch(metrics).await, Some(first));

    etcd.resume();
    wait_for("a new term at the picker", Duration::from_secs(20), || async move {
        picker_epoch(metrics).await.filter(|e| *e > first)
    })
    .await;
    let leaders = futures::future::join_all(aggs.iter().map(|a| ready(a.health))).await;
    assert_eq!(leaders.iter().filter(|r| **r).count(), 1, "exactly one leader: {leaders:?}");
    let (ok, failed) = load.stop().await;
    assert!(ok > 50, "traffic flowed: {ok}");
    assert_eq!(failed, 0, "no failed picks through the outage");
}

fn scraper(etcd: &Etcd, election: &str, id: &str) -> (Proc, u16) {
    let metrics = free_port();
    let p = spawn(&s(&[
        "scraper",
        "--scraper-id",
        id,
        "--listen-host",
        "127.0.0.1",
        "--metrics-port",
        &metrics.to_string(),
        "--etcd-endpoints",
        &etcd.endpoint,
        "--election-name",
        election,
        "--refresh-metrics-interval",
        "50ms",
        "--log",
        "warn",
    ]));
    (p, metrics)
}

/// Completed scrapes per endpoint, from a scraper's `/metrics`.
async fn scrape_counts(metrics_port: u16) -> Option<std::collections::BTreeMap<String, u64>> {
    let text = client().get(format!("http://127.0.0.1:{metrics_port}/metrics")).send().await.ok()?.text().await.ok()?;
    let counts = text
        .lines()
        .filter_map(|l| l.strip_prefix("switchyard_scrape_duration_seconds_count{endpoint=\""))
        .filter_map(|l| {
            let (endpoint, rest) = l.split_once("\"}")?;
            Some((endpoint.to_string(), rest.trim().parse().ok()?))
        })
        .collect();
    Some(counts)
}

/// The endpoints a scraper process is scraping now (its count grows over 400 ms).
async fn scraping_now(metrics_port: u16) -> Option<BTreeSet<String>> {
    let before = scrape_counts(metrics_port).await?;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let after = scrape_counts(metrics_port).await?;
    Some(after.into_iter().filter(|(e, n)| before.get(e).is_none_or(|b| n > b)).map(|(e, _)| e).collect())
}

/// Two scraper processes share the endpoints (disjoint, covering all); one is SIGKILLed and the
/// other scrapes its endpoints again.
#[actix_rt::test]
async fn killed_scraper_endpoints_are_reassigned_and_scraped_again() {
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let (fleet, file) = fleet_file(dir.path()).await;
    let all: BTreeSet<String> = fleet.iter().map(|h| h.name.clone()).collect();
    let _agg = aggregator_with(&etcd, &file, "it-scrapers", &["--remote-scrapers"]);
    let (mut x, x_metrics) = scraper(&etcd, "it-scrapers", "scraper-x");
    let (_y, y_metrics) = scraper(&etcd, "it-scrapers", "scraper-y");
    let all2 = all.clone();
    wait_for("both scrapers busy, disjoint, covering all", Duration::from_secs(20), || {
        let all = all2.clone();
        async move {
            let (sx, sy) = futures::join!(scraping_now(x_metrics), scraping_now(y_metrics));
            let (sx, sy) = (sx?, sy?);
            let union: BTreeSet<String> = sx.union(&sy).cloned().collect();
            (!sx.is_empty() && !sy.is_empty() && sx.is_disjoint(&sy) && union == all).then_some(())
        }
    })
    .await;
    let _ = x.0.kill();
    let _ = x.0.wait();
    wait_for("the survivor scrapes every endpoint", Duration::from_secs(15), || {
        let all = all.clone();
        async move { (scraping_now(y_metrics).await? == all).then_some(()) }
    })
    .await;
}
