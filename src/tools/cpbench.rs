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
use crate::tools::procs::{Child, Etcd, Roles, free_port, metrics_text, sample_sum};

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
            tokio::spawn(subscribe::follow_leader(source, None, format!("bench-{i}"), picker, stop_rx.clone()));
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

/// SIGKILLs the leader aggregator while a picker serves ext-proc traffic; measures the time until
/// the picker holds a snapshot from the new leader, and counts failed picks. Needs `etcd` on PATH.
pub async fn failover(args: FailoverArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("switchyard-failover-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let etcd = Etcd::start(&dir).await?;
    let fleet = sim::start_fleet(&sim::FleetConfig { fleet: vec![(Flavor::VllmV1, 4)], ..Default::default() }).await?;
    let file = sim::write_endpoints_file(&fleet, &dir)?;
    let roles = Roles {
        exe: std::env::current_exe()?,
        etcd_url: etcd.url.clone(),
        election: "switchyard-aggregator".into(),
        ttl: format!("{}ms", args.ttl.as_millis()),
        log: "error".into(),
        logs: None,
    };
    let picker = roles.picker("picker", &[])?;
    let (grpc, metrics) = (picker.port, picker.metrics);
    let http = reqwest::Client::new();
    let epoch = |http: reqwest::Client| async move {
        let text = metrics_text(&http, metrics).await?;
        sample_sum(&text, "switchyard_picker_snapshot_epoch").map(|e| e as u64)
    };
    let mut replicas = vec![roles.aggregator("aggregator", &file, &[])?, roles.aggregator("aggregator", &file, &[])?];
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
    let settings = crate::etcd::EtcdSettings::new(vec![etcd.url.clone()], "switchyard-aggregator", "", args.ttl);
    println!("failover: lease TTL {:?}, 2 aggregator processes, 1 picker under ext-proc load", args.ttl);
    let mut times = Vec::new();
    for round in 0..args.rounds {
        let leader = crate::etcd::current_leader(&settings).await?.unwrap_or_default();
        let Some(victim) = replicas.iter().position(|r| leader.ends_with(&format!(":{}", r.port))) else {
            anyhow::bail!("leader {leader:?} is not one of ours");
        };
        let killed = tokio::time::Instant::now();
        drop(replicas.remove(victim)); // SIGKILL: no resignation
        replicas.push(roles.aggregator("aggregator", &file, &[])?);
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
    #[command(flatten)]
    pub run: crate::tools::routing::OpenLoop,
    /// Runs per picker count (seeds `seed`, `seed + 1`, …; the order of the two counts alternates),
    /// pooled into one figure each.
    #[arg(long, default_value_t = 1)]
    pub repeat: u64,
    /// The two picker counts compared (`1,1` measures the noise of the comparison itself).
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    pub pickers: Vec<usize>,
}

/// The scoreboard's shared-prefix workload (`bench routing`), open loop, through the gateway with
/// N pickers and with M pickers following one aggregator, each run on a fresh identical fleet:
/// prefix-cache hit rate and TTFT should not degrade with more pickers.
pub async fn shared_view(args: SharedViewArgs) -> anyhow::Result<()> {
    use crate::tools::routing::{self, Kind, Policy, Rig, RunSpec, report::Figures};
    anyhow::ensure!(args.pickers.len() == 2, "--pickers takes two counts, e.g. 1,4");
    crate::ensure_crypto_provider();
    let kind = Some(Kind::SharedPrefix);
    let (_, rate) = args.run.rate(Kind::SharedPrefix).await?;
    println!(
        "shared view: shared-prefix workload at {rate:.1} req/s ({:.0} % of round-robin saturation), {} vs {} pickers, {} run(s) each",
        100.0 * args.run.load,
        args.pickers[0],
        args.pickers[1],
        args.repeat
    );
    let rig = Rig::new(std::env::current_exe()?);
    let mut runs: [Vec<crate::tools::routing::report::RunData>; 2] = [Vec::new(), Vec::new()];
    for r in 0..args.repeat {
        let seed = args.run.seed + r;
        let records = args.run.records(Kind::SharedPrefix, rate, seed);
        let order = if r % 2 == 0 { [0, 1] } else { [1, 0] };
        for arm in order {
            let spec = RunSpec {
                kind,
                policy: Policy::Switchyard,
                pickers: args.pickers[arm],
                records: &records,
                rate,
                seed,
                warmup_s: routing::OpenLoop::WARMUP_S,
            };
            let run = routing::run_once(&spec, &rig).await?;
            let f = Figures::from_runs("", std::slice::from_ref(&run), 1000.0);
            println!(
                "{} picker(s), seed {seed}: prefix hit {:.1} %, TTFT p50 {:.0} ms, p90 {:.0} ms, failed {}",
                args.pickers[arm],
                100.0 * f.hit_rate,
                f.ttft_ms[0],
                f.ttft_ms[1],
                f.requests - f.ok
            );
            runs[arm].push(run);
        }
    }
    let [one, many] = runs.map(|r| Figures::from_runs("", &r, 1000.0));
    let (a, b) = (args.pickers[0], args.pickers[1]);
    for (n, f) in [(a, &one), (b, &many)] {
        println!(
            "{n} picker(s), pooled: prefix hit {:.1} %, TTFT p50 {:.0} ms, p90 {:.0} ms ({} requests)",
            100.0 * f.hit_rate,
            f.ttft_ms[0],
            f.ttft_ms[1],
            f.requests
        );
    }
    println!(
        "{b} pickers vs {a}: prefix hit {:+.1} points ({:.1} % relative), TTFT p90 {:+.1} %",
        100.0 * (many.hit_rate - one.hit_rate),
        100.0 * (many.hit_rate - one.hit_rate) / one.hit_rate.max(1e-9),
        100.0 * (many.ttft_ms[1] - one.ttft_ms[1]) / one.ttft_ms[1].max(1e-9)
    );
    Ok(())
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
