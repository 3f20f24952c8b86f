//! `switchyard bench …`: benchmarks that need processes and sockets. Pure-CPU benchmarks live in
//! `benches/` (`cargo bench`). Results are recorded in docs/benchmarks.md.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use anyhow::Context as _;
use clap::{Args, Subcommand};

use crate::metrics::EngineRegistry;
use crate::model::{Endpoint, EndpointId};
use crate::scraper::{AssignEndpoints, FetchSettings, ScrapeSettings, ScrapeSupervisor};
use crate::tools::board::{Board, GetBoard};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// How many endpoints one scraper process sustains at an interval, with the age of metrics.
    Scrape(ScrapeBenchArgs),
    /// Endpoints sustained at an interval with 1, 2 and 4 `switchyard scraper` processes feeding
    /// one aggregator.
    ScrapeScaling(crate::tools::cpbench::ScrapeScalingArgs),
    /// ext-proc request path: Switchyard's picker against a null ext-proc server.
    Extproc(crate::tools::loadgen::ExtProcBenchArgs),
    /// End to end through the gateway: with the picker versus straight to one endpoint.
    Gateway(crate::tools::loadgen::GatewayBenchArgs),
    /// Time from a scrape to its snapshot at 1, 10 and 50 pickers.
    Propagation(crate::tools::cpbench::PropagationArgs),
    /// SIGKILL the leader aggregator under load: time to the new leader's snapshot, failed picks.
    Failover(crate::tools::cpbench::FailoverArgs),
    /// Routing quality with 1 and 4 pickers sharing one view through the leader.
    SharedView(crate::tools::cpbench::SharedViewArgs),
    /// Routing quality: policies (and the peer router) on hard workloads at a fixed offered load.
    Routing(crate::tools::routing::RoutingArgs),
    /// The distributed roles for minutes under load and churn: memory, failed picks, gauges.
    Soak(crate::tools::soak::SoakArgs),
    /// A picker's RSS with E endpoints and a full prefix index, over time.
    PickerMemory(crate::tools::membench::PickerMemoryArgs),
}

#[derive(Args, Clone)]
pub struct ScrapeBenchArgs {
    /// Number of sim endpoints (vLLM V1 pages, started in a child `switchyard sim` process).
    #[arg(long, default_value_t = 1000)]
    pub endpoints: usize,
    #[arg(long, default_value_t = 50)]
    pub interval_ms: u64,
    /// Measurement time after a warm-up of 2 s.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// First port of the child sim fleet.
    #[arg(long, default_value_t = 20000)]
    pub base_port: u16,
}

pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Scrape(args) => scrape(args).await,
        BenchCommand::ScrapeScaling(args) => crate::tools::cpbench::scrape_scaling(args).await,
        BenchCommand::Extproc(args) => crate::tools::loadgen::run(args).await,
        BenchCommand::Gateway(args) => crate::tools::loadgen::run_gateway(args).await,
        BenchCommand::Propagation(args) => crate::tools::cpbench::propagation(args).await,
        BenchCommand::Failover(args) => crate::tools::cpbench::failover(args).await,
        BenchCommand::SharedView(args) => crate::tools::cpbench::shared_view(args).await,
        BenchCommand::Routing(args) => crate::tools::routing::run(args).await.map(|_| ()),
        BenchCommand::Soak(args) => crate::tools::soak::soak(args).await,
        BenchCommand::PickerMemory(args) => crate::tools::membench::picker_memory(args).await,
    }
}

/// Percentile of a sorted slice (nearest rank).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// CPU seconds (user + system) used by a process so far (`self` or a pid), from /proc.
pub(crate) fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

async fn scrape(args: ScrapeBenchArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find own executable")?;
    let mut child = tokio::process::Command::new(exe)
        .args([
            "sim",
            "--fleet",
            &format!("vllm-v1={}", args.endpoints),
            "--base-port",
            &args.base_port.to_string(),
            "--log",
            "warn",
        ])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the sim child process")?;
    let endpoints: Vec<Endpoint> = (0..args.endpoints)
        .map(|i| {
            let addr = format!("127.0.0.1:{}", args.base_port as usize + i);
            Endpoint {
                id: EndpointId::new(format!("bench/sim-{i}")),
                metrics_url: format!("http://{addr}/metrics"),
                address: addr,
                engine: "vllm".into(),
                labels: Default::default(),
            }
        })
        .collect();
    // Wait for the last port to accept.
    let last = endpoints.last().map(|e| e.address.clone()).unwrap_or_default();
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(&last).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (board, sink) = Board::start_sink();
    let settings =
        ScrapeSettings { interval: Duration::from_millis(args.interval_ms), fetch: FetchSettings::default() };
    let supervisor = ScrapeSupervisor::new(Arc::new(EngineRegistry::builtin()), &settings, sink)?.start();
    supervisor.do_send(AssignEndpoints(endpoints));
    tokio::time::sleep(Duration::from_secs(2)).await;

    let start_view = board.send(GetBoard).await?;
    let child_pid = child.id().map(|p| p.to_string()).unwrap_or_default();
    let cpu0 = cpu_seconds("self");
    let sim_cpu0 = cpu_seconds(&child_pid);
    let t0 = tokio::time::Instant::now();
    let mut ages = Vec::new();
    while t0.elapsed() < Duration::from_secs(args.seconds) {
        tokio::time::sleep(Duration::from_millis(25)).await;
        let view = board.send(GetBoard).await?;
        let now = SystemTime::now();
        for state in view.states.values() {
            match state.age(now) {
                Some(age) => ages.push(age.as_secs_f64() * 1000.0),
                None => ages.push(f64::INFINITY),
            }
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let end_view = board.send(GetBoard).await?;
    let cpu = cpu0.zip(cpu_seconds("self")).map(|(a, b)| (b - a) / elapsed);
    let sim_cpu = sim_cpu0.zip(cpu_seconds(&child_pid)).map(|(a, b)| (b - a) / elapsed);
    ages.sort_by(f64::total_cmp);
    let scrapes = (end_view.ok - start_view.ok) as f64 / elapsed;
    let failures = (end_view.failed - start_view.failed) as f64 / elapsed;
    println!("endpoints={} interval_ms={} seconds={:.1}", args.endpoints, args.interval_ms, elapsed);
    println!(
        "scrapes_per_s={scrapes:.0} (ideal {:.0}) failures_per_s={failures:.1} scraper_cpu_cores={} sim_cpu_cores={} scraper_cpu_us_per_scrape={}",
        args.endpoints as f64 * 1000.0 / args.interval_ms as f64,
        cpu.map_or("n/a".into(), |c| format!("{c:.2}")),
        sim_cpu.map_or("n/a".into(), |c| format!("{c:.2}")),
        cpu.map_or("n/a".into(), |c| format!("{:.0}", c * 1e6 / scrapes))
    );
    println!(
        "metrics_age_ms p50={:.1} p90={:.1} p99={:.1} max={:.1} (samples={})",
        percentile(&ages, 50.0),
        percentile(&ages, 90.0),
        percentile(&ages, 99.0),
        ages.last().copied().unwrap_or(f64::NAN),
        ages.len()
    );
    let _ = child.kill().await;
    Ok(())
}
