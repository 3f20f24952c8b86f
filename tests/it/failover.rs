//! The distributed roles as separate processes with a real etcd: leader killed or paused, etcd
//! unreachable, a scraper killed, a picker with no leader that refuses to make up endpoints.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use switchyard::sim;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::etcd::{Etcd, free_port};
use crate::support::{Proc, aggregator_args, client, strings, wait_for};

/// The readiness a role's health port reports; `None` when it does not answer.
async fn readiness(health_port: u16) -> Option<i32> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{health_port}"))
        .expect("uri")
        .connect()
        .await
        .ok()?;
    let r = HealthClient::new(ch).check(tonic_health::pb::HealthCheckRequest { service: "readiness".into() }).await;
    Some(r.ok()?.into_inner().status)
}

async fn ready(health_port: u16) -> bool {
    readiness(health_port).await == Some(ServingStatus::Serving as i32)
}

/// Answers, and says it is not ready (a process that is gone is not "not ready").
async fn not_ready(health_port: u16) -> bool {
    readiness(health_port).await == Some(ServingStatus::NotServing as i32)
}

async fn picker_gauge(metrics_port: u16, name: &str) -> Option<f64> {
    let text = client().get(format!("http://127.0.0.1:{metrics_port}/metrics")).send().await.ok()?.text().await.ok()?;
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')).and_then(|v| v.trim().parse().ok())
}

async fn picker_epoch(metrics_port: u16) -> Option<u64> {
    picker_gauge(metrics_port, "switchyard_picker_snapshot_epoch").await.map(|e| e as u64)
}

/// Sum of the samples of `family` (all label sets) in the exposition at `url`.
async fn counter_sum(url: &str, family: &str, matching: &str) -> Option<f64> {
    let text = client().get(url).send().await.ok()?.text().await.ok()?;
    let values = text.lines().filter(|l| l.starts_with(family) && l.contains(matching));
    Some(values.filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok()).fold(0.0, |a, v| a + v))
}

/// Requests the picker has routed.
async fn picker_picks(metrics_port: u16) -> Option<f64> {
    counter_sum(&format!("http://127.0.0.1:{metrics_port}/metrics"), "switchyard_picker_picks_total{", "").await
}

/// Snapshot updates of `kind` (`full` or `delta`) the picker has applied.
async fn picker_updates(metrics_port: u16, kind: &str) -> Option<f64> {
    picker_gauge(metrics_port, &format!("switchyard_picker_snapshot_updates_total{{kind=\"{kind}\"}}")).await
}

/// Waits until the picker has routed `n` more requests than `from`.
async fn picks_reach(metrics_port: u16, from: f64, n: f64, what: &str) {
    wait_for(what, Duration::from_secs(10), || async move {
        picker_picks(metrics_port).await.filter(|p| *p >= from + n).map(|_| ())
    })
    .await;
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs_f64()
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
    let mut args = aggregator_args(control, health, endpoints);
    args.extend(strings(&["--etcd-endpoints", &etcd.endpoint, "--election-name", election, "--lease-ttl", "2s"]));
    args.extend(strings(extra));
    Aggregator { proc: Proc::spawn(&args, &[]), control, health }
}

fn picker(etcd: &Etcd, election: &str) -> (Proc, u16, u16, u16) {
    picker_with(&strings(&["--etcd-endpoints", &etcd.endpoint, "--election-name", election, "--lease-ttl", "2s"]))
}

/// A picker that finds the leader by trying `--aggregators` in turn.
fn picker_listing(aggregators: &[&Aggregator]) -> (Proc, u16, u16, u16) {
    let list: Vec<String> = aggregators.iter().map(|a| format!("127.0.0.1:{}", a.control)).collect();
    picker_with(&strings(&["--aggregators", &list.join(",")]))
}

fn picker_with(leader: &[String]) -> (Proc, u16, u16, u16) {
    let (grpc, health, metrics) = (free_port(), free_port(), free_port());
    let mut args = strings(&[
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
    (Proc::spawn(&args, &[]), grpc, health, metrics)
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
    let settings =
        switchyard::etcd::EtcdSettings::new(vec![etcd.endpoint.clone()], "it-failover", "", Duration::from_secs(2));
    let leader = switchyard::etcd::current_leader(&settings).await.expect("etcd").expect("a leader");
    let (mut victim, survivor) = if leader.ends_with(&format!(":{}", a.control)) { (a, b) } else { (b, a) };

    // Continuous ext-proc traffic through the failover.
    let load = switchyard::tools::loadgen::BackgroundLoad::start(([127, 0, 0, 1], grpc).into(), 4);
    let before = picker_picks(metrics).await.expect("picks");
    picks_reach(metrics, before, 10.0, "traffic before the failover").await;
    let _ = victim.proc.0.kill(); // SIGKILL: no resignation, the lease has to expire.
    let killed_at = tokio::time::Instant::now();
    let new_epoch = wait_for("a snapshot from the new leader", Duration::from_secs(15), || async move {
        picker_epoch(metrics).await.filter(|e| *e > first_epoch)
    })
    .await;
    let failover = killed_at.elapsed();
    let at_failover = picker_picks(metrics).await.expect("picks");
    picks_reach(metrics, at_failover, 10.0, "traffic on the new leader's snapshot").await;
    // Enough traffic in all to judge "no failed picks" by (usually there already).
    picks_reach(metrics, before, 60.0, "traffic through the failover").await;
    let (ok, failed) = load.stop().await;
    assert!(new_epoch > first_epoch);
    assert!(ok > 50, "traffic flowed: {ok}");
    assert_eq!(failed, 0, "no failed picks during failover");
    assert!(failover < Duration::from_secs(8), "failover took {failover:?}");
    let leader = switchyard::etcd::current_leader(&settings).await.expect("etcd").expect("a leader");
    assert!(leader.ends_with(&format!(":{}", survivor.control)));
    // One full snapshot per leader, deltas in between.
    let full = picker_updates(metrics, "full").await.expect("full updates counted");
    assert!(full >= 2.0, "a full snapshot from each leader: {full}");
    let deltas = picker_updates(metrics, "delta").await.expect("deltas counted");
    assert!(deltas > full, "then deltas: {deltas} deltas, {full} full");
}

#[actix_rt::test]
async fn picker_without_a_leader_is_not_ready_and_makes_nothing_up() {
    let etcd = Etcd::start().await;
    let (_p, grpc, health, _metrics) = picker(&etcd, "it-nobody");
    // The picker has asked etcd for a leader (and been told there is none) several times.
    let lookups = format!("{}/metrics", etcd.endpoint);
    wait_for("the picker's leader lookups at etcd", Duration::from_secs(10), || {
        let lookups = lookups.clone();
        async move {
            let n = counter_sum(&lookups, "grpc_server_handled_total{", "grpc_method=\"Leader\"").await?;
            (n >= 4.0).then_some(())
        }
    })
    .await;
    assert!(not_ready(health).await, "no snapshot, not ready");
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

fn etcd_settings(etcd: &Etcd, election: &str) -> switchyard::etcd::EtcdSettings {
    switchyard::etcd::EtcdSettings::new(vec![etcd.endpoint.clone()], election, "", Duration::from_secs(2))
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
    let leader = switchyard::etcd::current_leader(&settings).await.expect("etcd").expect("a leader");
    let (old, new) = if leader.ends_with(&format!(":{}", a.control)) { (a, b) } else { (b, a) };
    let (_p2, grpc2, health2, metrics2) = picker_listing(&[&old, &new]);
    wait_for("listing picker ready", Duration::from_secs(20), || async move { ready(health2).await.then_some(()) })
        .await;
    let first = wait_for("an epoch at both pickers", Duration::from_secs(5), || async move {
        let (e1, e2) = (picker_epoch(metrics1).await?, picker_epoch(metrics2).await?);
        (e1 == e2 && e1 > 0).then_some(e1)
    })
    .await;

    let picks_before = [picker_picks(metrics1).await.expect("picks"), picker_picks(metrics2).await.expect("picks")];
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
    // The resumed replica finds its lease gone, stops publishing and campaigns as a standby...
    let old_health = old.health;
    wait_for("the resumed old leader to step down", Duration::from_secs(10), || async move {
        not_ready(old_health).await.then_some(())
    })
    .await;
    // ...while both pickers keep applying the new leader's updates (traced throughout).
    let deltas = [metrics1, metrics2].map(|m| async move { (m, picker_updates(m, "delta").await.unwrap_or(0.0)) });
    for (m, from) in futures::future::join_all(deltas).await {
        wait_for("10 more deltas at the picker", Duration::from_secs(10), || async move {
            picker_updates(m, "delta").await.filter(|d| *d >= from + 10.0).map(|_| ())
        })
        .await;
    }
    // Enough traffic through each picker to judge "no failed picks" by.
    for (m, from) in [metrics1, metrics2].into_iter().zip(picks_before) {
        picks_reach(m, from, 60.0, "traffic through both pickers").await;
    }

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
    let leader = switchyard::etcd::current_leader(&settings).await.expect("etcd").expect("a leader");
    assert!(leader.ends_with(&format!(":{}", new.control)), "the standby still leads: {leader}");
    assert!(not_ready(old.health).await, "the resumed old leader is a standby, not ready");
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
    // The leader steps down within the lease (2 s; 3 s allowed).
    let healths = aggs.each_ref().map(|a| a.health);
    wait_for("the leader to step down", Duration::from_secs(3), || async move {
        let standing = futures::future::join_all(healths.map(not_ready)).await;
        standing.iter().all(|r| *r).then_some(())
    })
    .await;
    assert!(ready(health).await, "the picker still holds a snapshot");
    // No leader publishes: the snapshot held stops changing and ages past 1 s.
    let gauge = "switchyard_picker_snapshot_published_timestamp_seconds";
    let published = wait_for("the snapshot held to be over 1 s old", Duration::from_secs(5), || async move {
        picker_gauge(metrics, gauge).await.filter(|p| unix_now() - p > 1.0)
    })
    .await;
    assert_eq!(picker_gauge(metrics, gauge).await, Some(published), "nothing new was published");
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
    let p = Proc::spawn(
        &strings(&[
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
        ]),
        &[],
    );
    (p, metrics)
}

/// Completed scrapes per endpoint, from a scraper's `/metrics`.
async fn scrape_counts(metrics_port: u16) -> Option<BTreeMap<String, u64>> {
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

/// The endpoints a scraper process is scraping now: those whose count grows while its busiest
/// endpoint completes 8 more scrapes (a window in the scraper's own rounds, so a slow machine
/// stretches it), or within 1 s when it scrapes nothing.
async fn scraping_now(metrics_port: u16) -> Option<BTreeSet<String>> {
    const ROUNDS: u64 = 8;
    let before = scrape_counts(metrics_port).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let after = scrape_counts(metrics_port).await?;
        let grown: BTreeMap<String, u64> = after
            .into_iter()
            .map(|(e, n)| (e.clone(), n.saturating_sub(before.get(&e).copied().unwrap_or(0))))
            .collect();
        if grown.values().any(|g| *g >= ROUNDS) || tokio::time::Instant::now() > deadline {
            return Some(grown.into_iter().filter(|(_, g)| *g > 0).map(|(e, _)| e).collect());
        }
    }
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
