//! `switchyard bench routing`: the routing-quality scoreboard.
//!
//! For each workload the bench first measures the fleet's round-robin saturation with a short
//! open-loop ramp, then runs every policy on a fresh identical fleet at a fixed fraction of it
//! (open loop: arrivals at their trace times, streaming chat through the data path), once per seed,
//! in an order that rotates between seeds. It prints a table per workload and can write every
//! figure as JSON (docs/benchmarks.md has the plots made from it).
//!
//! Not measured here: real GPUs (the sims model queueing, batching, KV cache, prefix cache and LoRA
//! slots; docs/sim.md).

pub mod drive;
pub mod policy;
pub mod report;
pub mod workload;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde::Serialize;

use crate::sim::{self, Flavor, ModelParams, SimHandle};
pub use policy::Policy;
use report::{Figures, RunData};
pub use workload::Kind;

pub const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

#[derive(Args, Clone, Debug)]
pub struct RoutingArgs {
    /// Workloads to run (default: all built-in ones).
    #[arg(long, value_delimiter = ',')]
    pub workloads: Vec<Kind>,
    /// A JSON-lines trace to replay as one more workload (docs/benchmarks.md has the format).
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Policies to compare.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "round-robin,random,least-queue,upstream-default,switchyard,switchyard4p"
    )]
    pub policies: Vec<Policy>,
    /// Also run the peer router (`smg`: installed into a local venv with pip when missing).
    #[arg(long)]
    pub peer: Option<String>,
    /// Offered load as a fraction of round-robin saturation (overload runs at 1.1 regardless).
    #[arg(long, default_value_t = 0.8)]
    pub load: f64,
    /// Skip the ramp: round-robin saturation in requests per second.
    #[arg(long)]
    pub saturation: Option<f64>,
    /// Seconds of arrivals per run, after the warm-up.
    #[arg(long, default_value_t = 30.0)]
    pub seconds: f64,
    /// Seconds of arrivals at the start of each run that are not counted (caches fill).
    #[arg(long, default_value_t = 5.0)]
    pub warmup: f64,
    /// Runs per policy (seeds `seed`, `seed + 1`, …), pooled.
    #[arg(long, default_value_t = 3)]
    pub seeds: u64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// TTFT objective for goodput, milliseconds.
    #[arg(long, default_value_t = 1000.0)]
    pub slo_ms: f64,
    /// EndpointPickerConfig of the `switchyard` policies (default:
    /// deploy/examples/switchyard-best.yaml, built in).
    #[arg(long)]
    pub switchyard_config: Option<PathBuf>,
    /// Write every figure here as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write every counted request of every run into this directory, one JSON-lines file per run
    /// (`<workload>-<policy>-<pickers>p-seed<N>.jsonl`; a second run of the same name gets `-2`):
    /// when it was sent, the server that answered, status, TTFT, end to end, objective.
    #[arg(long)]
    pub outcomes: Option<PathBuf>,
    /// The `switchyard` executable the pickers run (default: this one).
    #[arg(long, hide = true)]
    pub exe: Option<PathBuf>,
}

impl Default for RoutingArgs {
    fn default() -> Self {
        RoutingArgs {
            workloads: Vec::new(),
            trace: None,
            policies: vec![Policy::RoundRobin, Policy::Switchyard],
            peer: None,
            load: 0.8,
            saturation: None,
            seconds: 30.0,
            warmup: 5.0,
            seeds: 3,
            seed: 1,
            slo_ms: 1000.0,
            switchyard_config: None,
            json: None,
            outcomes: None,
            exe: None,
        }
    }
}

/// The open-loop settings the demo and `bench shared-view` share.
#[derive(Args, Clone, Debug)]
pub struct OpenLoop {
    /// Seconds of arrivals per run, after a 5 s warm-up that is not counted.
    #[arg(long, default_value_t = 20.0)]
    pub seconds: f64,
    /// Offered load as a fraction of round-robin saturation.
    #[arg(long, default_value_t = 0.8)]
    pub load: f64,
    /// Skip the ramp: round-robin saturation in requests per second.
    #[arg(long)]
    pub saturation: Option<f64>,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

impl OpenLoop {
    /// Warm-up of every run, seconds of arrivals.
    pub const WARMUP_S: f64 = 5.0;

    /// (round-robin saturation, offered rate) for `kind`: the ramp runs unless saturation is given.
    pub async fn rate(&self, kind: Kind) -> anyhow::Result<(f64, f64)> {
        let saturation = match self.saturation {
            Some(s) => s,
            None => {
                let ramp = workload::generate(kind, 4000, self.seed + 1000);
                measure_saturation(Some(kind), &ramp, self.seed).await?
            }
        };
        Ok((saturation, self.load * saturation))
    }

    /// The run's records at `rate`, warm-up included.
    pub fn records(&self, kind: Kind, rate: f64, seed: u64) -> Vec<workload::TraceRecord> {
        workload::generate(kind, ((rate * (self.seconds + Self::WARMUP_S)).ceil() as usize).max(10), seed)
    }
}

/// What every run needs besides its workload and policy.
#[derive(Debug, Clone)]
pub struct Rig {
    /// The `switchyard` executable the pickers run.
    pub exe: PathBuf,
    /// EndpointPickerConfig of the `switchyard` policies.
    pub switchyard_config: String,
    /// Simulated seconds per wall-clock second of the sims (below 1 the fleet is slower and
    /// saturates at a lower rate: the test suite's short version runs this way).
    pub speed: f64,
    /// Where each run's requests are written (`--outcomes`).
    pub outcomes: Option<PathBuf>,
}

impl Rig {
    pub fn new(exe: PathBuf) -> Rig {
        Rig { exe, switchyard_config: policy::BEST.to_string(), speed: 1.0, outcomes: None }
    }
}

/// One workload's results.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadResult {
    pub workload: String,
    /// Round-robin saturation (requests/s) and the rate offered.
    pub saturation: f64,
    pub rate: f64,
    pub figures: Vec<Figures>,
    /// Overload only: critical requests' TTFT p90 at 20 % of saturation, with the best profile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unloaded_critical_ttft_p90: Option<f64>,
}

/// The fleet a workload runs on: four servers whose KV caches are small enough that placement
/// matters.
pub fn fleet_config(kind: Option<Kind>, seed: u64) -> sim::FleetConfig {
    let params = ModelParams { kv_blocks: 1500, max_lora: 3, lora_load_s: 0.05, ..ModelParams::default() };
    let mut cfg = sim::FleetConfig {
        fleet: vec![(Flavor::VllmV1, 4)],
        seed,
        model: MODEL.into(),
        params,
        ..sim::FleetConfig::default()
    };
    match kind {
        Some(Kind::MultiLora) => cfg.adapters = workload::adapters(),
        Some(Kind::Heterogeneous) => {
            cfg.fleet = vec![(Flavor::VllmV1, 2), (Flavor::Sglang, 1), (Flavor::TritonTensorrtLlm, 1)];
            cfg.slowdown = vec![3.0];
        }
        _ => {}
    }
    cfg
}

fn records(kind: Option<Kind>, trace: &[workload::TraceRecord], n: usize, seed: u64) -> Vec<workload::TraceRecord> {
    match kind {
        Some(k) => workload::generate(k, n, seed),
        None => trace.to_vec(),
    }
}

/// [`run_once`], once more on a fresh fleet if it fails to start (on a machine shared with other
/// work a routing path has missed its 30 s to become ready): one such failure should not throw
/// away the runs of a long scoreboard.
async fn run_retrying(spec: &RunSpec<'_>, rig: &Rig) -> anyhow::Result<RunData> {
    match run_once(spec, rig).await {
        Ok(r) => Ok(r),
        Err(e) => {
            eprintln!("  {} seed {}: {e:#}; running it again", spec.policy.name(), spec.seed);
            run_once(spec, rig).await
        }
    }
}

/// One run: a workload's records at a rate through a policy with a number of pickers.
pub struct RunSpec<'a> {
    pub kind: Option<Kind>,
    pub policy: Policy,
    /// Picker processes (the policy's own count unless a bench compares counts).
    pub pickers: usize,
    pub records: &'a [workload::TraceRecord],
    pub rate: f64,
    pub seed: u64,
    /// Seconds at the start whose requests are sent but not counted.
    pub warmup_s: f64,
}

/// Runs `spec` on a fresh fleet.
pub async fn run_once(spec: &RunSpec<'_>, rig: &Rig) -> anyhow::Result<RunData> {
    let fleet = sim::start_fleet(&sim::FleetConfig { speed: rig.speed, ..fleet_config(spec.kind, spec.seed) }).await?;
    // Runs may be concurrent (the test suite's short version): one directory each.
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("switchyard-routing-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = sim::write_endpoints_file(&fleet, &dir)?;
    let path = policy::DataPath::start(spec.policy, spec.pickers, &fleet, &file, rig, spec.seed).await?;
    let counters =
        |fleet: &[SimHandle]| -> Vec<(u64, u64)> { fleet.iter().map(|h| h.server.prefix_counters()).collect() };
    let schedule = Arc::new(drive::schedule(spec.records, spec.rate, MODEL, 0));
    let load = tokio::spawn(drive::run_open_loop(
        format!("{}/v1/chat/completions", path.url),
        schedule,
        Duration::from_secs(30),
    ));
    // Figures count what arrives after the warm-up (cold caches are not the steady state).
    tokio::time::sleep(Duration::from_secs_f64(spec.warmup_s)).await;
    let (cache0, cpu0) = (counters(&fleet), path.cpu_seconds());
    let mut outcomes = load.await.unwrap_or_default();
    outcomes.retain(|o| o.sent_at >= spec.warmup_s);
    let (cache1, cpu1) = (counters(&fleet), path.cpu_seconds());
    path.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(dir) = &rig.outcomes {
        write_outcomes(dir, spec, &outcomes)?;
    }
    let per_server: Vec<(String, (u64, u64))> = fleet
        .iter()
        .zip(cache0.iter().zip(&cache1))
        .map(|(h, (a, b))| (h.name.clone(), (b.0 - a.0, b.1 - a.1)))
        .collect();
    Ok(RunData {
        outcomes,
        cache: per_server.iter().fold((0, 0), |(c, p), (_, (h, q))| (c + h, p + q)),
        per_server,
        cpu_seconds: cpu1 - cpu0,
        endpoints: fleet.len(),
    })
}

/// One run's counted requests as JSON lines (`--outcomes`).
fn write_outcomes(dir: &std::path::Path, spec: &RunSpec<'_>, outcomes: &[drive::Outcome]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let workload = spec.kind.map_or("trace", Kind::name);
    let stem = format!("{workload}-{}-{}p-seed{}", spec.policy.name(), spec.pickers, spec.seed);
    std::fs::create_dir_all(dir)?;
    // A policy listed twice (an A/A comparison) keeps both runs.
    let mut path = dir.join(format!("{stem}.jsonl"));
    for n in 2.. {
        if !path.exists() {
            break;
        }
        path = dir.join(format!("{stem}-{n}.jsonl"));
    }
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&path).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?,
    );
    for o in outcomes {
        serde_json::to_writer(&mut out, o)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// Round-robin saturation: offered load rises ×1.25 in 5 s steps on one fleet until a server's
/// waiting queue grows (the longest above 2 at the end of a step and longer than at the end of
/// the step before: with a slow server in the fleet, round-robin saturates when that one does) or
/// requests stop finishing; saturation is the last rate that kept up.
pub async fn measure_saturation(
    kind: Option<Kind>,
    records: &[workload::TraceRecord],
    seed: u64,
) -> anyhow::Result<f64> {
    let cfg = fleet_config(kind, seed);
    let fleet = sim::start_fleet(&cfg).await?;
    let pool: Vec<String> = fleet.iter().map(|h| h.addr.to_string()).collect();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let gw = crate::gateway::GatewayConfig {
        ext_proc: vec![],
        failure_mode: crate::gateway::FailureMode::Close,
        pool,
        message_timeout: Duration::from_secs(10),
    };
    let (addr, _task) = crate::gateway::start(gw, "127.0.0.1:0".parse()?, stop_rx).await?;
    let url = format!("http://{addr}/v1/chat/completions");
    // A first guess from the model: prefill of the uncached prompt plus decoding, per server.
    let p = &cfg.params;
    let mean_prompt =
        records.iter().map(|r| f64::from(r.prompt_tokens.max(1))).sum::<f64>() / records.len().max(1) as f64;
    let per_request = mean_prompt / p.prefill_tokens_per_s + 0.1;
    let mut rate = 0.5 * fleet.len() as f64 / per_request;
    let (mut last_ok, mut last_waiting) = (0.0, 0.0);
    let mut offset = 0;
    for _ in 0..12 {
        let n = ((rate * 5.0).ceil() as usize).max(5);
        let slice: Vec<workload::TraceRecord> = records.iter().cycle().skip(offset).take(n).cloned().collect();
        let sched = drive::schedule(&slice, rate, MODEL, offset);
        offset += n;
        let run = tokio::spawn(drive::run_open_loop(url.clone(), Arc::new(sched), Duration::from_secs(20)));
        tokio::time::sleep(Duration::from_secs(5)).await;
        let waiting = fleet.iter().map(|h| h.server.queue_depth()).max().unwrap_or(0) as f64;
        let outcomes = run.await.unwrap_or_default();
        let finished = outcomes.iter().filter(|o| o.ok()).count() as f64 / n as f64;
        if (waiting > 2.0 && waiting > last_waiting) || finished < 0.95 {
            break;
        }
        (last_ok, last_waiting) = (rate, waiting);
        rate *= 1.25;
    }
    let _ = stop.send(true);
    anyhow::ensure!(last_ok > 0.0, "the fleet saturated at the first ramp step ({rate:.1} req/s)");
    Ok(last_ok)
}

pub async fn run(args: RoutingArgs) -> anyhow::Result<Vec<WorkloadResult>> {
    crate::ensure_crypto_provider();
    let mut rig = Rig::new(match &args.exe {
        Some(e) => e.clone(),
        None => std::env::current_exe()?,
    });
    rig.outcomes = args.outcomes.clone();
    if let Some(path) = &args.switchyard_config {
        rig.switchyard_config =
            std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        crate::config::load(None, Some(&rig.switchyard_config))
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    let mut policies = args.policies.clone();
    match args.peer.as_deref() {
        Some("smg") => {
            if let Err(e) = policy::ensure_smg() {
                eprintln!("peer smg unavailable, skipped: {e:#}");
            } else {
                policies.push(Policy::SmgCacheAware);
            }
        }
        Some(other) => anyhow::bail!("unknown peer {other:?} (known: smg)"),
        None => {}
    }
    let trace = match &args.trace {
        Some(p) => {
            let mut t = workload::load_trace(p)?;
            workload::normalize_rate(&mut t);
            t
        }
        None => Vec::new(),
    };
    let mut kinds: Vec<Option<Kind>> =
        if args.workloads.is_empty() && args.trace.is_none() { Kind::ALL.to_vec() } else { args.workloads.clone() }
            .into_iter()
            .map(Some)
            .collect();
    if args.trace.is_some() {
        kinds.push(None);
    }
    let mut results = Vec::new();
    for kind in kinds {
        let name = kind.map(Kind::name).unwrap_or("trace");
        let ramp_records = records(kind, &trace, 4000, args.seed + 1000);
        let saturation = match args.saturation {
            Some(s) => s,
            None => measure_saturation(kind, &ramp_records, args.seed).await?,
        };
        let load = if kind == Some(Kind::Overload) { 1.1 } else { args.load };
        let rate = saturation * load;
        eprintln!("{name}: round-robin saturation {saturation:.1} req/s, offering {rate:.1} req/s");
        let n = ((rate * (args.seconds + args.warmup)).ceil() as usize).max(10);
        let mut runs: Vec<Vec<RunData>> = policies.iter().map(|_| Vec::new()).collect();
        for s in 0..args.seeds {
            let seed = args.seed + s;
            let recs = records(kind, &trace, n, seed);
            // Rotate the order so no policy always runs first (or last) on a warm machine.
            for k in 0..policies.len() {
                let i = (k + s as usize) % policies.len();
                eprintln!("  {name} seed {seed}: {}", policies[i].name());
                let p = policies[i];
                let spec = RunSpec {
                    kind,
                    policy: p,
                    pickers: p.pickers(),
                    records: &recs,
                    rate,
                    seed,
                    warmup_s: args.warmup,
                };
                runs[i].push(run_retrying(&spec, &rig).await?);
            }
        }
        let figures: Vec<Figures> =
            policies.iter().zip(&runs).map(|(p, r)| Figures::from_runs(p.name(), r, args.slo_ms)).collect();
        let unloaded_critical_ttft_p90 = if kind == Some(Kind::Overload) {
            let n = ((0.2 * saturation * (args.seconds + args.warmup)) as usize).max(20);
            let recs = records(kind, &trace, n, args.seed);
            let p = Policy::Switchyard;
            let spec = RunSpec {
                kind,
                policy: p,
                pickers: p.pickers(),
                records: &recs,
                rate: 0.2 * saturation,
                seed: args.seed,
                warmup_s: args.warmup,
            };
            let r = run_retrying(&spec, &rig).await?;
            Figures::from_runs("unloaded", &[r], args.slo_ms).by_objective.get("critical").map(|c| c.2)
        } else {
            None
        };
        print!("{}", report::table(name, rate, &figures));
        if let Some(u) = unloaded_critical_ttft_p90 {
            println!("critical TTFT p90 unloaded (20 % of saturation, switchyard): {u:.0} ms");
        }
        results.push(WorkloadResult { workload: name.into(), saturation, rate, figures, unloaded_critical_ttft_p90 });
        if let Some(path) = &args.json {
            std::fs::write(path, serde_json::to_string_pretty(&results)?)?;
        }
    }
    Ok(results)
}
