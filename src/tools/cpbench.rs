//! Control-plane benchmarks: snapshot propagation to N pickers, leader failover, routing quality
//! with several pickers, scrape scaling over scraper processes.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::Args;
use tokio::sync::watch;

use crate::model::Snapshot;
use crate::picker::subscribe::{self, LeaderSource};
use crate::roles::{AggregatorOptions, start_aggregator};
use crate::sim::{self, Flavor};
use crate::tools::bench::percentile;

#[derive(Args, Clone)]
pub struct PropagationArgs {
    /// Picker counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,10,50")]
    pub pickers: Vec<usize>,
    /// Sim endpoints scraped by the aggregator.
    #[arg(long, default_value_t = 20)]
    pub endpoints: usize,
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
}

/// A picker with the default config whose snapshots a bench follows.
fn bench_picker() -> anyhow::Result<Arc<crate::picker::Picker>> {
    use crate::config::EndpointPickerConfig;
    use crate::scheduling::{Scheduler, SchedulerConfig};
    let scheduler =
        Scheduler::new(SchedulerConfig::build(&EndpointPickerConfig::default_config(), Duration::from_secs(2))?);
    Ok(Arc::new(crate::picker::Picker::new(
        scheduler,
        crate::picker::PickerSettings::default(),
        crate::picker::PickerMetrics::detached(),
    )))
}

/// Time from a scrape result to its appearance at every subscribed picker: for each snapshot a
/// subscriber receives, `arrival − newest scrape time in the snapshot`. One aggregator (leading
/// alone), N picker subscriptions over gRPC on loopback, all in this process.
pub async fn propagation(args: PropagationArgs) -> anyhow::Result<()> {
    let fleet =
        sim::start_fleet(&sim::FleetConfig { fleet: vec![(Flavor::VllmV1, args.endpoints)], ..Default::default() })
            .await?;
    let dir = std::env::temp_dir().join(format!("switchyard-prop-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let agg = start_aggregator(AggregatorOptions::local(sim::write_endpoints_file(&fleet, &dir)?)).await?;
    println!(
        "snapshot propagation: {} endpoints scraped every 50 ms, a full snapshot then deltas, {} s per point",
        args.endpoints, args.seconds
    );
    println!(
        "{:>8} {:>10} {:>9} {:>9} {:>9} {:>9} {:>12}",
        "pickers", "updates", "p50 ms", "p99 ms", "max ms", "cpu cores", "cpu us/update"
    );
    for &n in &args.pickers {
        let (stop, stop_rx) = watch::channel(false);
        let mut collectors = Vec::new();
        for i in 0..n {
            let picker = bench_picker()?;
            let mut rx = picker.snapshots();
            let source = LeaderSource::Addresses(vec![agg.control_addr.to_string()]);
            tokio::spawn(subscribe::follow_leader(source, format!("bench-{i}"), picker, stop_rx.clone()));
            let mut stop_rx = stop_rx.clone();
            collectors.push(tokio::spawn(async move {
                let mut delays = Vec::new();
                let warm_until = tokio::time::Instant::now() + Duration::from_secs(1);
                loop {
                    tokio::select! {
                        r = rx.changed() => if r.is_err() { break },
                        _ = stop_rx.changed() => break,
                    }
                    let arrived = SystemTime::now();
                    let snap: Arc<Snapshot> = rx.borrow_and_update().clone();
                    let newest = snap.endpoints.iter().filter_map(|e| e.metrics.sample().map(|s| s.scraped_at)).max();
                    if let Some(t) = newest
                        && tokio::time::Instant::now() > warm_until
                    {
                        delays.push(arrived.duration_since(t).unwrap_or_default().as_secs_f64() * 1000.0);
                    }
                }
                delays
            }));
        }
        // CPU of the whole process (leader, pickers, sims) over the measured seconds.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let cpu0 = crate::tools::bench::cpu_seconds("self");
        tokio::time::sleep(Duration::from_secs(args.seconds)).await;
        let cpu = cpu0.zip(crate::tools::bench::cpu_seconds("self")).map(|(a, b)| b - a);
        let _ = stop.send(true);
        let mut all = Vec::new();
        for c in collectors {
            all.extend(c.await.unwrap_or_default());
        }
        all.sort_by(f64::total_cmp);
        let cores = cpu.map_or(f64::NAN, |c| c / args.seconds as f64);
        println!(
            "{n:>8} {:>10} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>12.1}",
            all.len(),
            percentile(&all, 50.0),
            percentile(&all, 99.0),
            all.last().copied().unwrap_or(f64::NAN),
            cores,
            cpu.map_or(f64::NAN, |c| c * 1e6 / all.len().max(1) as f64)
        );
    }
    agg.shutdown(Duration::from_secs(1)).await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[derive(Args, Clone)]
pub struct FailoverArgs {
    /// Lease TTL of the aggregators.
    #[arg(long, default_value = "2s", value_parser = |s: &str| crate::scheduling::config::parse_duration(s).ok_or("invalid duration"))]
    pub ttl: Duration,
    /// Failovers to measure.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// SIGKILLs the leader aggregator while a picker serves ext-proc traffic; measures the time until
/// the picker holds a snapshot from the new leader, and counts failed picks. Needs `etcd` on PATH.
pub async fn failover(args: FailoverArgs) -> anyhow::Result<()> {
    use std::process::{Command, Stdio};
    let exe = std::env::current_exe()?;
    let dir = std::env::temp_dir().join(format!("switchyard-failover-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (cport, pport) = (free_port()?, free_port()?);
    let etcd_url = format!("http://127.0.0.1:{cport}");
    let _etcd = Child(
        Command::new("etcd")
            .args(["--name", "b", "--data-dir", &dir.join("etcd").display().to_string()])
            .args(["--listen-client-urls", &etcd_url, "--advertise-client-urls", &etcd_url])
            .args([
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{pport}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{pport}"),
            ])
            .args([
                "--initial-cluster",
                &format!("b=http://127.0.0.1:{pport}"),
                "--listen-metrics-urls",
                &format!("http://127.0.0.1:{}", free_port()?),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start etcd (apt-get install etcd-server): {e}"))?,
    );
    let fleet = sim::start_fleet(&sim::FleetConfig { fleet: vec![(Flavor::VllmV1, 4)], ..Default::default() }).await?;
    let file = sim::write_endpoints_file(&fleet, &dir)?;
    let ttl = format!("{}ms", args.ttl.as_millis());
    let spawn_aggregator = || -> anyhow::Result<(Child, u16)> {
        let port = free_port()?;
        Ok((
            Child(
                Command::new(&exe)
                    .args(["aggregator", "--listen-host", "127.0.0.1", "--control-port", &port.to_string()])
                    .args(["--grpc-health-port", &free_port()?.to_string()])
                    .args(["--metrics-port", &free_port()?.to_string()])
                    .args(["--endpoints-file", &file.display().to_string()])
                    .args(["--etcd-endpoints", &etcd_url, "--lease-ttl", &ttl, "--log", "error"])
                    .stdout(Stdio::null())
                    .spawn()?,
            ),
            port,
        ))
    };
    let (grpc, metrics) = (free_port()?, free_port()?);
    let _picker = Child(
        Command::new(&exe)
            .args([
                "picker",
                "--listen-host",
                "127.0.0.1",
                "--grpc-port",
                &grpc.to_string(),
                "--grpc-health-port",
                &free_port()?.to_string(),
            ])
            .args([
                "--metrics-port",
                &metrics.to_string(),
                "--secure-serving=false",
                "--etcd-endpoints",
                &etcd_url,
                "--lease-ttl",
                &ttl,
                "--log",
                "error",
            ])
            .stdout(Stdio::null())
            .spawn()?,
    );
    let http = reqwest::Client::new();
    let epoch = |http: reqwest::Client| async move {
        let text = http.get(format!("http://127.0.0.1:{metrics}/metrics")).send().await.ok()?.text().await.ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("switchyard_picker_snapshot_epoch "))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let mut replicas = vec![spawn_aggregator()?, spawn_aggregator()?];
    // Wait for the first leader's snapshot at the picker.
    let mut current = 0;
    for _ in 0..300 {
        if let Some(e) = epoch(http.clone()).await.filter(|e| *e > 0) {
            current = e;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::ensure!(current > 0, "the picker never received a snapshot");
    let load = crate::tools::loadgen::BackgroundLoad::start(([127, 0, 0, 1], grpc).into(), 4);
    let settings = crate::etcd::EtcdSettings::new(vec![etcd_url.clone()], "switchyard-aggregator", "", args.ttl);
    println!("failover: lease TTL {:?}, 2 aggregator processes, 1 picker under ext-proc load", args.ttl);
    let mut times = Vec::new();
    for round in 0..args.rounds {
        let leader = crate::etcd::current_leader(&settings).await?.unwrap_or_default();
        let Some(victim) = replicas.iter().position(|(_, port)| leader.ends_with(&format!(":{port}"))) else {
            anyhow::bail!("leader {leader:?} is not one of ours");
        };
        let (mut v, _) = replicas.remove(victim);
        let killed = tokio::time::Instant::now();
        let _ = v.0.kill(); // SIGKILL: no resignation
        drop(v);
        replicas.push(spawn_aggregator()?);
        let mut next = current;
        while next <= current && killed.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(10)).await;
            next = epoch(http.clone()).await.unwrap_or(current);
        }
        let took = killed.elapsed();
        println!("round {}: epoch {current} -> {next} in {:.0} ms", round + 1, took.as_secs_f64() * 1000.0);
        times.push(took.as_secs_f64() * 1000.0);
        current = next;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (ok, failed) = load.stop().await;
    times.sort_by(f64::total_cmp);
    println!(
        "failover time median {:.0} ms, max {:.0} ms (target <= 2 x TTL = {} ms); picks ok {} failed {}",
        percentile(&times, 50.0),
        times.last().copied().unwrap_or(f64::NAN),
        2 * args.ttl.as_millis(),
        ok,
        failed
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[derive(Args, Clone)]
pub struct SharedViewArgs {
    #[arg(long, default_value_t = 300)]
    pub requests: usize,
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Runs per picker count (seeds `seed`, `seed + 1`, …; the order of 1 and 4 alternates), pooled
    /// into one figure each: one run's TTFT p90 rests on ~15 requests.
    #[arg(long, default_value_t = 1)]
    pub repeat: u64,
    /// The two picker counts compared (`1,1` measures the noise of the comparison itself).
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    pub pickers: Vec<usize>,
}

/// The demo workload through the gateway with 1 picker and with 4 pickers (streams spread
/// round-robin over them), each on a fresh identical fleet with one aggregator leader: prefix-cache
/// hit rate and TTFT should not degrade with more pickers.
pub async fn shared_view(args: SharedViewArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.pickers.len() == 2, "--pickers takes two counts, e.g. 1,4");
    let demo = crate::tools::demo::DemoArgs {
        requests: args.requests,
        concurrency: args.concurrency,
        seed: args.seed,
        serve: false,
        port: 0,
    };
    println!(
        "shared view: demo workload ({} requests, {} clients) through the gateway, {} vs {} pickers, {} run(s) each",
        args.requests, args.concurrency, args.pickers[0], args.pickers[1], args.repeat
    );
    let mut runs: [Vec<crate::tools::demo::RunResult>; 2] = [Vec::new(), Vec::new()];
    for r in 0..args.repeat {
        let order = if r % 2 == 0 { [0, 1] } else { [1, 0] };
        for arm in order {
            let n = args.pickers[arm];
            let seed = args.seed + r;
            let run = shared_view_run(n, seed, &crate::tools::demo::DemoArgs { seed, ..demo.clone() }).await?;
            runs[arm].push(run);
        }
    }
    let [one, four] = runs.map(|r| {
        let pooled = crate::tools::demo::RunResult::pooled(r);
        let all = &crate::tools::demo::rows(&pooled, &[])["all"];
        (all.hit, all.p50, all.p90, all.requests)
    });
    let (a, b) = (args.pickers[0], args.pickers[1]);
    for (n, r) in [(a, one), (b, four)] {
        println!(
            "{n} picker(s), pooled: prefix hit {:.1} %, TTFT p50 {:.0} ms, p90 {:.0} ms ({} requests)",
            r.0, r.1, r.2, r.3
        );
    }
    println!(
        "{b} pickers vs {a}: prefix hit {:+.1} points ({:.1} % relative), TTFT p90 {:+.1} %",
        four.0 - one.0,
        100.0 * (four.0 - one.0) / one.0.max(1e-9),
        100.0 * (four.2 - one.2) / one.2.max(1e-9)
    );
    Ok(())
}

/// One run of the shared-view workload with `n` pickers on a fresh fleet.
async fn shared_view_run(
    n: usize,
    seed: u64,
    demo: &crate::tools::demo::DemoArgs,
) -> anyhow::Result<crate::tools::demo::RunResult> {
    use crate::gateway::{self, FailureMode, GatewayConfig};
    use crate::roles::{PickerOptions, start_picker};
    let fleet = sim::start_fleet(&crate::tools::demo::fleet_config(seed)).await?;
    let dir = std::env::temp_dir().join(format!("switchyard-shared-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let agg = start_aggregator(AggregatorOptions::local(sim::write_endpoints_file(&fleet, &dir)?)).await?;
    let mut pickers = Vec::new();
    for i in 0..n {
        let p = start_picker(PickerOptions::local(agg.control_addr, &format!("picker-{i}"), seed + i as u64)).await?;
        while !p.readiness.is_ready() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        pickers.push(p);
    }
    let (stop, stop_rx) = watch::channel(false);
    let cfg = GatewayConfig {
        ext_proc: pickers.iter().map(|p| format!("http://{}", p.servers.ext_proc_addr)).collect(),
        failure_mode: FailureMode::Close,
        pool: fleet.iter().map(|h| h.addr.to_string()).collect(),
        message_timeout: Duration::from_secs(10),
    };
    let (gw, _task) = gateway::start(cfg, "127.0.0.1:0".parse()?, stop_rx).await?;
    let cpu = || crate::tools::bench::cpu_seconds("self").unwrap_or(0.0);
    let cpu_before = cpu();
    let r = crate::tools::demo::run_workload(&format!("{n} picker(s)"), &format!("http://{gw}"), &fleet, demo).await;
    let cpu_used = cpu() - cpu_before;
    let names: Vec<String> = fleet.iter().map(|h| h.name.clone()).collect();
    let rows = crate::tools::demo::rows(&r, &names);
    let all = &rows["all"];
    let failed = r.outcomes.iter().filter(|o| !o.ok).count();
    let max_queue = names.iter().map(|n| rows[n].queue).fold(0.0, f64::max);
    println!(
        "{n} picker(s), seed {seed}: prefix hit {:.1} %, TTFT p50 {:.0} ms, p90 {:.0} ms, failed {failed}, \
         mean queue {:.2} (busiest server {max_queue:.2}), process CPU {cpu_used:.1} s",
        all.hit, all.p50, all.p90, all.queue
    );
    let _ = stop.send(true);
    for p in pickers {
        p.shutdown(Duration::from_secs(1)).await;
    }
    agg.shutdown(Duration::from_secs(1)).await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(r)
}

#[derive(Args, Clone)]
pub struct ScrapeScalingArgs {
    /// Scraper process counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    pub scrapers: Vec<usize>,
    /// Endpoint counts to try, ascending; a count is sustained when every endpoint is scraped at
    /// ≥ 95 % of the ideal rate and the p99 age of metrics in the leader's snapshots is ≤ 2
    /// intervals.
    #[arg(long, value_delimiter = ',', default_value = "200,400,600,800,1000")]
    pub endpoints: Vec<usize>,
    #[arg(long, default_value_t = 50)]
    pub interval_ms: u64,
    /// Measurement time per point, after a warm-up of 3 s.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// First port of the child sim fleet.
    #[arg(long, default_value_t = 21000)]
    pub base_port: u16,
}

/// One aggregator (this process, leading alone, `--remote-scrapers`) and K `switchyard scraper`
/// child processes over gRPC; a child `switchyard sim` serves vLLM pages. For each (K, N): the
/// scrape rate (summed from the scrapers' own `/metrics`), the age of metrics in the leader's
/// snapshots (sampled every 25 ms), and CPU per process group.
pub async fn scrape_scaling(args: ScrapeScalingArgs) -> anyhow::Result<()> {
    use std::process::{Command, Stdio};
    let exe = std::env::current_exe()?;
    let max = args.endpoints.iter().copied().max().unwrap_or(0);
    let sim = Child(
        Command::new(&exe)
            .args(["sim", "--fleet", &format!("vllm-v1={max}"), "--base-port", &args.base_port.to_string()])
            .args(["--log", "warn"])
            .stdout(Stdio::null())
            .spawn()?,
    );
    let last = format!("127.0.0.1:{}", args.base_port as usize + max.saturating_sub(1));
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(&last).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dir = std::env::temp_dir().join(format!("switchyard-scaling-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let interval = Duration::from_millis(args.interval_ms);
    let ideal_per_endpoint = 1000.0 / args.interval_ms as f64;
    println!(
        "scrape scaling: vLLM pages every {} ms, {} s per point, sustained = rate >= 95 % and age p99 <= {} ms",
        args.interval_ms,
        args.seconds,
        2 * args.interval_ms
    );
    println!(
        "{:>8} {:>9} {:>12} {:>9} {:>9} {:>9} {:>12} {:>9} {:>9} {:>9}",
        "scrapers",
        "endpoints",
        "scrapes/s",
        "of ideal",
        "age p50",
        "age p99",
        "scraper cpu",
        "agg cpu",
        "sim cpu",
        "sustained"
    );
    let mut summary = Vec::new();
    for &k in &args.scrapers {
        let mut best = 0;
        for &n in &args.endpoints {
            let file = crate::discovery::StaticEndpoints {
                endpoints: (0..n)
                    .map(|i| crate::discovery::StaticEndpoint {
                        name: format!("sim-{i}"),
                        address: "127.0.0.1".into(),
                        port: Some(args.base_port + i as u16),
                        ports: Vec::new(),
                        labels: Default::default(),
                        metrics_port: None,
                        metrics_path: None,
                    })
                    .collect(),
            };
            let path = dir.join("endpoints.yaml");
            std::fs::write(&path, serde_saphyr::to_string(&file)?)?;
            let agg = start_aggregator(AggregatorOptions {
                remote_scrapers: true,
                refresh_metrics_interval: interval,
                ..AggregatorOptions::local(path)
            })
            .await?;
            let mut scrapers = Vec::new();
            for i in 0..k {
                let port = free_port()?;
                let child = Command::new(&exe)
                    .args(["scraper", "--aggregators", &agg.control_addr.to_string(), "--scraper-id"])
                    .args([format!("bench-{i}"), "--listen-host".into(), "127.0.0.1".into()])
                    .args(["--metrics-port", &port.to_string(), "--refresh-metrics-interval"])
                    .args([format!("{}ms", args.interval_ms), "--log".into(), "error".into()])
                    .stdout(Stdio::null())
                    .spawn()?;
                scrapers.push((Child(child), port));
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
            let http = reqwest::Client::new();
            let scraped = |ports: Vec<u16>| {
                let http = http.clone();
                async move {
                    let mut total = 0.0;
                    for port in ports {
                        let url = format!("http://127.0.0.1:{port}/metrics");
                        let text = http.get(url).send().await.ok()?.text().await.ok()?;
                        total += text
                            .lines()
                            .filter(|l| l.starts_with("switchyard_scrape_duration_seconds_count{"))
                            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
                            .sum::<f64>();
                    }
                    Some(total)
                }
            };
            let ports: Vec<u16> = scrapers.iter().map(|(_, p)| *p).collect();
            let pids: Vec<String> = scrapers.iter().map(|(c, _)| c.0.id().to_string()).collect();
            let sim_pid = sim.0.id().to_string();
            let cpu = |pids: &[String]| pids.iter().filter_map(|p| crate::tools::bench::cpu_seconds(p)).sum::<f64>();
            let (count0, cpu0, agg0, sim0) = (
                scraped(ports.clone()).await,
                cpu(&pids),
                crate::tools::bench::cpu_seconds("self"),
                crate::tools::bench::cpu_seconds(&sim_pid),
            );
            let t0 = tokio::time::Instant::now();
            let mut ages = Vec::new();
            let snapshots = agg.snapshots.clone();
            while t0.elapsed() < Duration::from_secs(args.seconds) {
                tokio::time::sleep(Duration::from_millis(25)).await;
                let snap = snapshots.borrow().clone();
                let now = SystemTime::now();
                for e in &snap.endpoints {
                    ages.push(e.metrics.age(now).map_or(f64::INFINITY, |a| a.as_secs_f64() * 1000.0));
                }
            }
            let elapsed = t0.elapsed().as_secs_f64();
            let count1 = scraped(ports).await;
            let per_s = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| (b - a) / elapsed);
            let rate = count0.zip(count1).map(|(a, b)| (b - a) / elapsed).unwrap_or(0.0);
            let scraper_cpu = (cpu(&pids) - cpu0) / elapsed;
            let agg_cpu = per_s(agg0, crate::tools::bench::cpu_seconds("self"));
            let sim_cpu = per_s(sim0, crate::tools::bench::cpu_seconds(&sim_pid));
            drop(scrapers);
            agg.shutdown(Duration::from_secs(1)).await;
            ages.sort_by(f64::total_cmp);
            let share = rate / (n as f64 * ideal_per_endpoint);
            let p99 = percentile(&ages, 99.0);
            let sustained = share >= 0.95 && p99 <= 2.0 * args.interval_ms as f64;
            if sustained {
                best = best.max(n);
            }
            let fmt = |c: Option<f64>| c.map_or("n/a".to_string(), |c| format!("{c:.2}"));
            println!(
                "{k:>8} {n:>9} {rate:>12.0} {:>8.0}% {:>9.1} {p99:>9.1} {scraper_cpu:>12.2} {:>9} {:>9} {:>9}",
                share * 100.0,
                percentile(&ages, 50.0),
                fmt(agg_cpu),
                fmt(sim_cpu),
                if sustained { "yes" } else { "no" }
            );
            if !sustained {
                break;
            }
        }
        summary.push((k, best));
    }
    for (k, best) in summary {
        println!("scrapers={k} sustained_endpoints={best}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
