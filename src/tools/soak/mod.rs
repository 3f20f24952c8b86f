//! `switchyard bench soak`: the distributed roles as separate processes (etcd, two aggregator
//! replicas with remote scraping, two pickers, two scraper processes, a sim fleet) under steady
//! ext-proc load with churn: an endpoint added to or removed from the watched endpoints file every
//! second, the leader aggregator SIGKILLed every minute and a scraper every 30 s (each replaced at
//! once). It samples every process's resident memory and the roles' own gauges, counts failed
//! picks (keeping their reasons), and reports start against end.
//!
//! Not in CI (it runs for minutes). It does not judge the figures; see docs/benchmarks.md for a
//! recorded run.

mod churn;
mod report;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tokio::time::Instant;

use crate::tools::load::{BackgroundLoad, LoadShape};
use crate::tools::procs::{
    self, Child, Etcd, Role, Roles, endpoint_label_values, metrics_text, sample_max, sample_sum, series_count,
};
use churn::Churn;
use report::{ChurnCounts, Kill, ProcRecord, Sample, SoakReport};

fn duration(s: &str) -> Result<Duration, &'static str> {
    crate::scheduling::config::parse_duration(s).ok_or("invalid duration")
}

#[derive(Args, Clone, Debug)]
pub struct SoakArgs {
    /// Measured minutes, after the warm-up.
    #[arg(long, default_value_t = 10.0)]
    pub minutes: f64,
    /// Load and churn before the measured window (the prefix index fills, allocators settle).
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub warmup: Duration,
    /// An endpoint is added to or removed from the endpoints file this often.
    #[arg(long, default_value = "1s", value_parser = duration)]
    pub churn_every: Duration,
    /// The leader aggregator is SIGKILLed (and a new replica started) this often.
    #[arg(long, default_value = "60s", value_parser = duration)]
    pub leader_kill_every: Duration,
    /// A scraper process is SIGKILLed (and a new one started) this often.
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub scraper_kill_every: Duration,
    /// Memory and gauges are sampled this often.
    #[arg(long, default_value = "5s", value_parser = duration)]
    pub sample_every: Duration,
    /// Sim servers (vLLM V1) the churn lists and unlists.
    #[arg(long, default_value_t = 12)]
    pub sims: usize,
    /// Share of added endpoints with nothing listening (their scrapes fail).
    #[arg(long, default_value_t = 0.125)]
    pub dead_share: f64,
    /// ext-proc exchanges per second over both pickers.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 4)]
    pub streams_per_picker: usize,
    /// Lease TTL of the aggregators.
    #[arg(long, default_value = "2s", value_parser = duration)]
    pub ttl: Duration,
    /// Seeds the churn, the request bodies, the sims and the pickers' scheduling.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Also write the report (with every sample) as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Keep each process's log (`--log warn`) in this directory.
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
}

/// A running replica and its record.
struct Live {
    role: Role,
    record: usize,
}

/// Every process of the run and what was seen of it.
struct Run {
    roles: Roles,
    file: PathBuf,
    measure_at: Instant,
    records: Vec<ProcRecord>,
    aggregators: Vec<Live>,
    pickers: Vec<Live>,
    /// `[a, b]`: a lives for the whole run, b is the one killed and replaced.
    scrapers: Vec<Live>,
    /// Replicas started so far (numbers the names of replacements).
    started_aggregators: u64,
    started_scrapers: u64,
    http: reqwest::Client,
    last_sample: Option<Instant>,
    /// Every answered exchange's latency (ms) in the measured window.
    latencies: Vec<f64>,
}

type Failover = tokio::task::JoinHandle<Option<f64>>;

/// `t - from` in seconds, negative when `t` is earlier.
fn seconds_from(from: Instant, t: Instant) -> f64 {
    if t >= from { (t - from).as_secs_f64() } else { -(from - t).as_secs_f64() }
}

impl Run {
    /// Seconds from the start of the measured window (negative before it).
    fn at(&self, t: Instant) -> f64 {
        seconds_from(self.measure_at, t)
    }

    fn record(&mut self, name: &str, role: &'static str, pid: u32) -> usize {
        let at = self.at(Instant::now());
        self.records.push(ProcRecord::new(name, role, pid, at));
        self.records.len() - 1
    }

    fn start_aggregator(&mut self) -> anyhow::Result<Live> {
        self.started_aggregators += 1;
        let name = format!("aggregator-{}", self.started_aggregators);
        let role =
            self.roles.aggregator(&name, &self.file, &["--remote-scrapers", "--endpoints-file-poll", "200ms"])?;
        let record = self.record(&name, "aggregator", role.child.pid());
        Ok(Live { role, record })
    }

    fn start_scraper(&mut self, name: &str) -> anyhow::Result<Live> {
        self.started_scrapers += 1;
        let role = self.roles.scraper(name, &["--refresh-metrics-interval", "50ms"])?;
        let record = self.record(name, "scraper", role.child.pid());
        Ok(Live { role, record })
    }

    fn start_picker(&mut self, name: &str, seed: u64) -> anyhow::Result<Live> {
        let role = self.roles.picker(name, &["--seed", &seed.to_string()])?;
        let record = self.record(name, "picker", role.child.pid());
        Ok(Live { role, record })
    }

    /// SIGKILLs `live` (dropping it kills and reaps it) and records when.
    fn kill(&mut self, live: Live) -> Kill {
        let at = self.at(Instant::now());
        self.records[live.record].ended_s = Some(at);
        let victim = self.records[live.record].name.clone();
        drop(live);
        Kill { at_s: at, victim, failover_ms: None }
    }

    /// Kills the leader (found by its election value, its control address) and starts a
    /// replacement; the failover is timed in the background.
    async fn kill_leader(&mut self, settings: &crate::etcd::EtcdSettings) -> anyhow::Result<Option<(Kill, Failover)>> {
        let leader = crate::etcd::current_leader(settings).await?.unwrap_or_default();
        let Some(i) = self.aggregators.iter().position(|a| leader.ends_with(&format!(":{}", a.role.port))) else {
            println!("no leader to kill (election value {leader:?}); skipped");
            return Ok(None);
        };
        let ports: Vec<u16> = self.pickers.iter().map(|p| p.role.metrics).collect();
        let mut before = 0;
        for &p in &ports {
            before = before.max(picker_epoch(&self.http, p).await.unwrap_or(0));
        }
        let killed = Instant::now();
        let victim = self.aggregators.remove(i);
        let kill = self.kill(victim);
        let replacement = self.start_aggregator()?;
        self.aggregators.push(replacement);
        let http = self.http.clone();
        let timing = tokio::spawn(async move {
            while killed.elapsed() < Duration::from_secs(30) {
                let mut all = true;
                for &p in &ports {
                    all &= picker_epoch(&http, p).await.is_some_and(|e| e > before);
                }
                if all {
                    return Some(killed.elapsed().as_secs_f64() * 1000.0);
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            None
        });
        Ok(Some((kill, timing)))
    }

    /// Kills scraper b and starts a replacement under a new identity.
    fn kill_scraper(&mut self) -> anyhow::Result<Kill> {
        // Scraper a and the first b were the first two started.
        let next = self.start_scraper(&format!("scraper-b-{}", self.started_scrapers.saturating_sub(1)))?;
        let old = std::mem::replace(&mut self.scrapers[1], next);
        Ok(self.kill(old))
    }

    /// Memory of every process alive and the roles' gauges, now.
    async fn sample(&mut self, churn: &Churn, load: &BackgroundLoad) -> Sample {
        let now = Instant::now();
        let mut values = BTreeMap::new();
        for r in self.records.iter_mut().filter(|r| r.ended_s.is_none()) {
            if let Some(kib) = procs::rss_kib(r.pid) {
                r.observe(kib);
                values.insert(format!("rss_mib.{}", r.name), kib as f64 / 1024.0);
            }
        }
        let dead = churn.listed.iter().filter(|l| l.dead).count();
        values.insert("file.endpoints".to_string(), churn.listed.len() as f64);
        values.insert("file.dead_endpoints".to_string(), dead as f64);
        let mut window = load.take_latencies();
        let secs = self.last_sample.map_or(0.0, |t| (now - t).as_secs_f64());
        if secs > 0.0 {
            values.insert("load.answered_per_s".to_string(), window.len() as f64 / secs);
        }
        window.sort_by(f64::total_cmp);
        if !window.is_empty() {
            values.insert("load.p50_ms".to_string(), crate::tools::bench::percentile(&window, 50.0));
            values.insert("load.p99_ms".to_string(), crate::tools::bench::percentile(&window, 99.0));
        }
        values.insert("load.failed_total".to_string(), load.counts().1 as f64);
        self.latencies.extend(window);
        self.last_sample = Some(now);
        for (i, p) in self.pickers.iter().enumerate() {
            if let Some(text) = metrics_text(&self.http, p.role.metrics).await {
                read_gauges(&text, &format!("picker-{}", i + 1), PICKER_GAUGES, &mut values);
                if let Some(age) = sample_max(&text, "switchyard_picker_endpoint_metrics_age_seconds{") {
                    values.insert(format!("picker-{}.metrics_age_max_s", i + 1), age);
                }
            }
        }
        if let Some(text) = metrics_text(&self.http, self.scrapers[0].role.metrics).await {
            read_gauges(&text, "scraper-a", SCRAPER_GAUGES, &mut values);
        }
        for a in &self.aggregators {
            if let Some(text) = metrics_text(&self.http, a.role.metrics).await
                && sample_sum(&text, "switchyard_aggregator_leader") == Some(1.0)
            {
                read_gauges(&text, "leader", LEADER_GAUGES, &mut values);
            }
        }
        Sample { t_s: self.at(now), values }
    }
}

/// (key, series) read from each picker.
const PICKER_GAUGES: &[(&str, &str)] = &[
    ("snapshot_endpoints", "switchyard_picker_snapshot_endpoints"),
    ("tracked_endpoints", "switchyard_picker_tracked_endpoints"),
    ("prefix_index_entries", "inference_extension_prefix_indexer_size"),
    ("pending_header_bytes", "switchyard_picker_pending_header_bytes"),
    ("running_requests", "inference_objective_running_requests"),
    ("runtime_tasks", "switchyard_runtime_alive_tasks"),
];

const SCRAPER_GAUGES: &[(&str, &str)] = &[
    ("assigned_endpoints", "switchyard_scraper_assigned_endpoints"),
    ("runtime_tasks", "switchyard_runtime_alive_tasks"),
];

const LEADER_GAUGES: &[(&str, &str)] = &[
    ("endpoints", "switchyard_aggregator_held_entries{map=\"endpoints\""),
    ("metrics", "switchyard_aggregator_held_entries{map=\"metrics\""),
    ("picker_loads", "switchyard_aggregator_held_entries{map=\"picker_loads\""),
    ("inflight_totals", "switchyard_aggregator_held_entries{map=\"inflight_totals\""),
    ("sent_totals", "switchyard_aggregator_held_entries{map=\"sent_totals\""),
    ("routed_log_snapshots", "switchyard_aggregator_held_entries{map=\"routed_log_snapshots\""),
    ("routed_log_hashes", "switchyard_aggregator_held_entries{map=\"routed_log_hashes\""),
    ("remote_scrapers", "switchyard_aggregator_held_entries{map=\"remote_scrapers\""),
    ("subscribers", "switchyard_aggregator_subscribers"),
    ("runtime_tasks", "switchyard_runtime_alive_tasks"),
];

/// `prefix.key` for each gauge found in `text`, and `prefix.series` (samples on the page).
fn read_gauges(text: &str, prefix: &str, gauges: &[(&str, &str)], values: &mut BTreeMap<String, f64>) {
    for (key, series) in gauges {
        if let Some(v) = sample_sum(text, series) {
            values.insert(format!("{prefix}.{key}"), v);
        }
    }
    values.insert(format!("{prefix}.metrics_series"), series_count(text) as f64);
    values.insert(format!("{prefix}.endpoint_label_values"), endpoint_label_values(text) as f64);
}

async fn picker_epoch(http: &reqwest::Client, metrics_port: u16) -> Option<u64> {
    let text = metrics_text(http, metrics_port).await?;
    sample_sum(&text, "switchyard_picker_snapshot_epoch").map(|e| e as u64)
}

/// Waits (up to 60 s) until every picker holds a snapshot with endpoints.
async fn wait_ready(run: &Run) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    for p in &run.pickers {
        loop {
            let text = metrics_text(&run.http, p.role.metrics).await.unwrap_or_default();
            if sample_sum(&text, "switchyard_picker_snapshot_endpoints").is_some_and(|n| n > 0.0) {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "the pickers did not get a snapshot within 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Starts `switchyard sim` with `n` vLLM V1 servers on free ports; returns it and the ports.
async fn start_sims(exe: &Path, n: usize, seed: u64, dir: &Path) -> anyhow::Result<(Child, Vec<u16>)> {
    let out = dir.join("sims.yaml");
    let child = std::process::Command::new(exe)
        .args(["sim", "--fleet", &format!("vllm-v1={n}"), "--base-port", "0", "--seed", &seed.to_string()])
        .args(["--endpoints-out", &out.display().to_string(), "--log", "warn"])
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let child = Child(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(file) = crate::discovery::StaticEndpoints::load(&out)
            && file.endpoints.len() == n
        {
            return Ok((child, file.endpoints.iter().filter_map(|e| e.port).collect()));
        }
        anyhow::ensure!(Instant::now() < deadline, "the sim fleet did not start within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn soak(args: SoakArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("switchyard-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    if let Some(logs) = &args.log_dir {
        std::fs::create_dir_all(logs)?;
    }
    let result = run(&args, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    let report = result?;
    report.print();
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
        println!("\nJSON written to {}", path.display());
    }
    Ok(())
}

async fn run(args: &SoakArgs, dir: &Path) -> anyhow::Result<SoakReport> {
    let exe = std::env::current_exe()?;
    let etcd = Etcd::start(dir).await?;
    let (sim, ports) = start_sims(&exe, args.sims, args.seed, dir).await?;
    let file = dir.join("endpoints.yaml");
    let mut churn = Churn::new(ports, args.seed, args.dead_share);
    churn.write(&file)?;
    let roles = Roles {
        exe,
        etcd_url: etcd.url.clone(),
        election: "switchyard-soak".into(),
        ttl: format!("{}ms", args.ttl.as_millis()),
        log: "warn".into(),
        logs: args.log_dir.clone(),
    };
    let settings = crate::etcd::EtcdSettings::new(vec![etcd.url.clone()], "switchyard-soak", "", args.ttl);
    let mut run = Run {
        roles,
        file,
        // Moved to the end of the warm-up once everything is up.
        measure_at: Instant::now(),
        records: Vec::new(),
        aggregators: Vec::new(),
        pickers: Vec::new(),
        scrapers: Vec::new(),
        started_aggregators: 0,
        started_scrapers: 0,
        http: reqwest::Client::new(),
        last_sample: None,
        latencies: Vec::new(),
    };
    run.record("etcd (not ours)", "etcd", etcd.child.pid());
    run.record("sim", "sim", sim.pid());
    run.record("bench (load generator)", "bench", std::process::id());
    for name in ["scraper-a", "scraper-b-0"] {
        let s = run.start_scraper(name)?;
        run.scrapers.push(s);
    }
    for _ in 0..2 {
        let a = run.start_aggregator()?;
        run.aggregators.push(a);
    }
    for i in 1..=2 {
        let p = run.start_picker(&format!("picker-{i}"), args.seed + i)?;
        run.pickers.push(p);
    }
    wait_ready(&run).await?;

    let systems = Arc::new(churn::system_prompts(args.seed, 16));
    let (seed, streams) = (args.seed, args.streams_per_picker.max(1));
    let shape = LoadShape {
        streams,
        rate_per_stream: Some(args.rate / (2 * streams) as f64),
        body: Arc::new(move |s, n| churn::chat_body(seed, &systems, s, n)),
    };
    let targets: Vec<std::net::SocketAddr> = run.pickers.iter().map(|p| ([127, 0, 0, 1], p.role.port).into()).collect();
    let load = BackgroundLoad::start_shaped(&targets, shape);
    let start = Instant::now();
    // The processes so far started before the window: their times move with it.
    let shift = seconds_from(start + args.warmup, run.measure_at);
    run.measure_at = start + args.warmup;
    for r in &mut run.records {
        r.started_s += shift;
    }
    println!(
        "soak: {} min after a {:?} warm-up; churn every {:?}, leader killed every {:?}, a scraper every {:?}",
        args.minutes, args.warmup, args.churn_every, args.leader_kill_every, args.scraper_kill_every
    );

    let measure_at = run.measure_at;
    let end_at = measure_at + Duration::from_secs_f64(args.minutes * 60.0);
    let mut next_churn = start + args.churn_every;
    let mut next_sample = measure_at;
    let mut next_leader = measure_at + args.leader_kill_every / 2;
    let mut next_scraper = measure_at + args.scraper_kill_every / 2;
    let mut next_progress = measure_at + Duration::from_secs(60);
    let (mut samples, mut kills, mut failovers) = (Vec::new(), Vec::new(), Vec::new());
    let mut shown_failures = 0;
    loop {
        let next = next_churn.min(next_sample).min(next_leader).min(next_scraper).min(next_progress);
        if next >= end_at {
            break;
        }
        tokio::time::sleep_until(next).await;
        let now = Instant::now();
        if now >= next_churn {
            next_churn += args.churn_every;
            if churn.step(|| procs::free_port().ok()).is_some() {
                churn.write(&run.file)?;
            }
        }
        if now >= next_leader {
            next_leader += args.leader_kill_every;
            if let Some((kill, timing)) = run.kill_leader(&settings).await? {
                failovers.push((kills.len(), timing));
                kills.push(kill);
            }
        }
        if now >= next_scraper {
            next_scraper += args.scraper_kill_every;
            kills.push(run.kill_scraper()?);
        }
        if now >= next_sample {
            next_sample += args.sample_every;
            if samples.is_empty() {
                // The window starts here: latencies of the warm-up are not in it.
                let _ = load.take_latencies();
            }
            samples.push(run.sample(&churn, &load).await);
        }
        if now >= next_progress {
            next_progress += Duration::from_secs(60);
            let (ok, failed) = load.counts();
            println!(
                "{:>5.0} s: picks {ok} answered, {failed} failed; {} kills; {} endpoints listed",
                run.at(now),
                kills.len(),
                churn.listed.len()
            );
            let failures = load.failures();
            for f in failures.iter().skip(shown_failures) {
                println!("  failed pick at {:.1} s via {}: {}", f.at_s, f.target, f.reason);
            }
            shown_failures = failures.len();
        }
    }
    tokio::time::sleep_until(end_at).await;
    samples.push(run.sample(&churn, &load).await);
    let failures = load.failures();
    let (ok, failed) = load.stop().await;
    for (i, timing) in failovers {
        kills[i].failover_ms = timing.await.ok().flatten();
    }
    // Memory trends of the long-lived processes only (the others are summarized per role).
    let short: std::collections::BTreeSet<String> =
        run.records.iter().filter(|r| !r.long_lived()).map(|r| format!("rss_mib.{}", r.name)).collect();
    let keys: std::collections::BTreeSet<String> =
        samples.iter().flat_map(|s| s.values.keys().cloned()).filter(|k| !short.contains(k)).collect();
    let trends = keys.iter().filter_map(|k| report::trend(&samples, k)).collect();
    run.latencies.sort_by(f64::total_cmp);
    Ok(SoakReport {
        settings: format!(
            "{} min after a {:?} warm-up; an endpoint added or removed every {:?} over {} sims ({:.1} % of additions dead), \
             leader killed every {:?} (TTL {:?}), a scraper every {:?}; {:.0} ext-proc req/s over 2 pickers x {} streams; seed {}",
            args.minutes,
            args.warmup,
            args.churn_every,
            args.sims,
            args.dead_share * 100.0,
            args.leader_kill_every,
            args.ttl,
            args.scraper_kill_every,
            args.rate,
            streams,
            args.seed
        ),
        measured_s: args.minutes * 60.0,
        picks_ok: ok,
        picks_failed: failed,
        latency_p50_ms: crate::tools::bench::percentile(&run.latencies, 50.0),
        latency_p99_ms: crate::tools::bench::percentile(&run.latencies, 99.0),
        failures,
        churn: ChurnCounts { added: churn.added, removed: churn.removed, added_dead: churn.added_dead },
        kills,
        processes: run.records,
        trends,
        samples,
    })
}
