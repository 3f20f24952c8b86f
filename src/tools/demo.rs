//! `switchyard demo`: the main job in one command, measured the way the scoreboard measures
//! (`switchyard bench routing`): a mixed sim fleet (vLLM, SGLang, Triton; one server 3× slower),
//! its round-robin saturation found with a short open-loop ramp, then the same seeded open-loop
//! workload (shared system prompts, streaming chat) at 80 % of it through Switchyard's pickers and
//! through round-robin, each on a fresh identical fleet. Prints where requests went and what the
//! clients saw. `--serve` keeps a fleet, the standalone picker and the gateway running instead.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Args;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::app::{self, StandaloneOptions};
use crate::gateway::{self, FailureMode, GatewayConfig};
use crate::picker::PickerSettings;
use crate::sim;
use crate::tools::bench::percentile;
use crate::tools::routing::report::{Figures, RunData};
use crate::tools::routing::{self, Kind, MODEL, OpenLoop, Policy, Rig, RunSpec};

#[derive(Args, Clone)]
pub struct DemoArgs {
    #[command(flatten)]
    pub run: OpenLoop,
    /// Keep a fleet, the picker and the gateway running and print a curl line (no workload).
    #[arg(long)]
    pub serve: bool,
    /// Gateway port with --serve (0 = any free port).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
}

const KIND: Kind = Kind::Heterogeneous;
const WARMUP_S: f64 = OpenLoop::WARMUP_S;

/// Per endpoint: requests, prefix-cache hit %, TTFT p50 and p90 (ms).
fn per_endpoint(run: &RunData) -> BTreeMap<String, (usize, f64, f64, f64)> {
    let mut out = BTreeMap::new();
    for (name, (hit, prompt)) in &run.per_server {
        let mut ttft: Vec<f64> = run
            .outcomes
            .iter()
            .filter(|o| o.ok() && o.server.as_ref() == Some(name))
            .filter_map(|o| o.ttft_ms)
            .collect();
        ttft.sort_by(f64::total_cmp);
        let hit_pct = if *prompt == 0 { 0.0 } else { 100.0 * *hit as f64 / *prompt as f64 };
        out.insert(name.clone(), (ttft.len(), hit_pct, percentile(&ttft, 50.0), percentile(&ttft, 90.0)));
    }
    out
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    crate::ensure_crypto_provider();
    if args.serve {
        return serve(&args).await;
    }
    println!("Switchyard demo: a simulated inference pool behind the gateway, routed by Switchyard's pickers.\n");
    let cfg = routing::fleet_config(Some(KIND), args.run.seed);
    let fleet = sim::start_fleet(&cfg).await?;
    println!("pool ({} simulated model servers, model {MODEL}):", fleet.len());
    for (i, h) in fleet.iter().enumerate() {
        let slow = cfg.slowdown.get(i).filter(|s| **s != 1.0).map(|s| format!("  ({s}× slower)")).unwrap_or_default();
        println!("  {:<26} {:<20} http://{}{slow}", h.name, h.flavor.name(), h.addr);
    }
    drop(fleet);
    let rig = Rig::new(std::env::current_exe()?);
    if args.run.saturation.is_none() {
        eprintln!("\nmeasuring round-robin saturation (open-loop ramp, 5 s steps)...");
    }
    let (saturation, rate) = args.run.rate(KIND).await?;
    let records = args.run.records(KIND, rate, args.run.seed);
    println!(
        "\nworkload: {} streaming chat requests over {:.0} s (the first 5 s not counted), open loop at {rate:.1} req/s ({:.0} % of round-robin \
         saturation {saturation:.1} req/s), 16 shared 1,500-token system prompts",
        records.len(),
        args.run.seconds + WARMUP_S,
        100.0 * args.run.load
    );
    let mut runs = Vec::new();
    for policy in [Policy::Switchyard, Policy::RoundRobin] {
        eprintln!("running {} ...", policy.name());
        let spec = RunSpec {
            kind: Some(KIND),
            policy,
            pickers: policy.pickers(),
            records: &records,
            rate,
            seed: args.run.seed,
            warmup_s: WARMUP_S,
        };
        runs.push(routing::run_once(&spec, &rig).await?);
    }
    let (sy, rr) = (&runs[0], &runs[1]);
    let (a, b) = (per_endpoint(sy), per_endpoint(rr));
    println!("\nwhere requests went and why (switchyard | round-robin):");
    println!(
        "{:<26} {:>13} {:>17} {:>23} {:>23}",
        "endpoint", "requests", "prefix hit %", "TTFT p50 ms", "TTFT p90 ms"
    );
    for (name, x) in &a {
        let y = b.get(name).copied().unwrap_or_default();
        println!(
            "{name:<26} {:>6} | {:<4} {:>7.1} | {:<7.1} {:>10.0} | {:<10.0} {:>10.0} | {:<10.0}",
            x.0, y.0, x.1, y.1, x.2, y.2, x.3, y.3
        );
    }
    let slo = 1000.0;
    let (fa, fb) =
        (Figures::from_runs("switchyard", &runs[..1], slo), Figures::from_runs("round-robin", &runs[1..], slo));
    for f in [&fa, &fb] {
        println!(
            "{:<12} all: TTFT p50/p90/p99 {:.0}/{:.0}/{:.0} ms, prefix hit {:.1} %, goodput (TTFT <= 1 s) {:.1} %, failed {}",
            f.policy,
            f.ttft_ms[0],
            f.ttft_ms[1],
            f.ttft_ms[2],
            100.0 * f.hit_rate,
            100.0 * f.goodput,
            f.requests - f.ok
        );
    }
    println!(
        "\nSwitchyard sends a request to the server that already holds its system prompt in the KV cache, weighed\n\
         against each server's queue and KV-cache load, so the slow server gets less as its queue grows.\n\
         Round-robin ignores both. `switchyard bench routing` runs this and harder workloads (docs/benchmarks.md)."
    );
    Ok(())
}

/// `--serve`: a fleet, the standalone control plane with the best profile, and the gateway.
async fn serve(args: &DemoArgs) -> anyhow::Result<()> {
    let fleet = sim::start_fleet(&routing::fleet_config(Some(KIND), args.run.seed)).await?;
    let dir = std::env::temp_dir().join(format!("switchyard-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let endpoints_file = sim::write_endpoints_file(&fleet, &dir)?;
    let epp = app::start_standalone(StandaloneOptions {
        config_text: Some(routing::policy::BEST.to_string()),
        picker: PickerSettings { seed: args.run.seed, ..PickerSettings::default() },
        ..StandaloneOptions::loopback(crate::discovery::PoolSource::file(endpoints_file))
    })
    .await?;
    let ready_by = Instant::now() + Duration::from_secs(10);
    while !epp.readiness.is_ready() && Instant::now() < ready_by {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (stop, stop_rx) = watch::channel(false);
    let gw_cfg = GatewayConfig {
        ext_proc: vec![format!("http://{}", epp.ext_proc_addr)],
        failure_mode: FailureMode::Open,
        pool: fleet.iter().map(|h| h.addr.to_string()).collect(),
        message_timeout: Duration::from_secs(10),
    };
    let (gw_addr, _gw) = gateway::start(gw_cfg, ([127, 0, 0, 1], args.port).into(), stop_rx).await?;
    println!("picker (ext-proc) on {}, gateway on http://{gw_addr}", epp.ext_proc_addr);
    println!(
        "serving; try:\n  curl -s http://{gw_addr}/v1/chat/completions -H 'content-type: application/json' \\\n    -d '{{\"model\":\"{MODEL}\",\"messages\":[{{\"role\":\"user\",\"content\":\"hello\"}}],\"max_tokens\":16}}'\n(ctrl-c to stop)"
    );
    let _ = tokio::signal::ctrl_c().await;
    let _ = stop.send(true);
    epp.shutdown(Duration::from_secs(2)).await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
