//! `switchyard demo`: the main job in one command. Starts a mixed sim fleet, the standalone
//! control plane and picker, and the gateway; sends a short realistic workload (shared system
//! prompts, LoRA adapters, streaming and not); prints where requests went and why, next to the
//! same workload on a fresh identical fleet under round-robin.

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use clap::Args;
use futures::StreamExt;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::app::{self, StandaloneOptions, Tls};
use crate::gateway::{self, FailureMode, GatewayConfig};
use crate::picker::PickerSettings;
use crate::sim::{self, Flavor, SimHandle};
use crate::tools::bench::percentile;

#[derive(Args, Clone)]
pub struct DemoArgs {
    /// Requests in the workload.
    #[arg(long, default_value_t = 300)]
    pub requests: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Keep the fleet, picker and gateway running after the workload and print a curl line.
    #[arg(long)]
    pub serve: bool,
    /// Gateway port with --serve (0 = any free port).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
}

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";
const ADAPTERS: [&str; 3] = ["sql-lora", "tweet-lora", "code-lora"];

pub(crate) fn fleet_config(seed: u64) -> sim::FleetConfig {
    sim::FleetConfig {
        fleet: vec![(Flavor::VllmV1, 2), (Flavor::VllmV0, 1), (Flavor::Sglang, 1), (Flavor::TritonTensorrtLlm, 1)],
        seed,
        speed: 1.0,
        adapters: ADAPTERS.iter().map(|s| s.to_string()).collect(),
        // A smaller KV cache than an H100 so the workload builds real queues.
        params: sim::ModelParams { kv_blocks: 1500, max_lora: 2, ..sim::ModelParams::default() },
        ..sim::FleetConfig::default()
    }
}

/// One request's outcome as the client saw it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Outcome {
    server: String,
    pub(crate) ok: bool,
    ttft_ms: Option<f64>,
    prompt_tokens: u64,
    cached_tokens: u64,
}

/// The workload: requests drawn from 24 shared system prompts (3–8 KB: together more than one
/// server's KV cache holds) and per-user questions; 30 % use a LoRA adapter; half stream.
fn workload(n: usize, seed: u64) -> Vec<serde_json::Value> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let systems: Vec<String> = (0..24)
        .map(|g| format!("System prompt {g:02}: you are an expert assistant for team {g:02}. ").repeat(50 + 3 * g))
        .collect();
    (0..n)
        .map(|i| {
            let g = rng.random_range(0..systems.len());
            let model = if rng.random_bool(0.3) { ADAPTERS[rng.random_range(0..ADAPTERS.len())] } else { MODEL };
            let stream = i % 2 == 0;
            let mut body = serde_json::json!({
                "model": model,
                "messages": [{"role": "system", "content": systems[g]}, {"role": "user", "content": format!("Question {i}: {}", "details ".repeat(rng.random_range(5..60)))}],
                "max_tokens": rng.random_range(16..96),
                "stream": stream,
            });
            if stream {
                body["stream_options"] = serde_json::json!({"include_usage": true});
            }
            body
        })
        .collect()
}

async fn send_one(client: &reqwest::Client, url: &str, body: &serde_json::Value) -> Outcome {
    let started = Instant::now();
    let Ok(resp) = client.post(url).json(body).send().await else { return Outcome::default() };
    let server = resp.headers().get("x-sim-server").and_then(|v| v.to_str().ok()).unwrap_or("?").to_string();
    let ok = resp.status().is_success();
    let mut out = Outcome { server, ok, ..Outcome::default() };
    let streaming = body["stream"].as_bool().unwrap_or(false);
    let mut stream = resp.bytes_stream();
    let mut all = Vec::new();
    while let Some(Ok(chunk)) = stream.next().await {
        if streaming && out.ttft_ms.is_none() && chunk.windows(5).any(|w| w == b"data:") {
            out.ttft_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
        }
        all.extend_from_slice(&chunk);
    }
    let usage = if streaming {
        crate::picker::response::usage_from_sse(&all)
    } else {
        crate::picker::response::usage_from_json(&all)
    };
    if let Some(u) = usage {
        out.prompt_tokens = u.prompt_tokens;
        out.cached_tokens = u.cached_tokens.unwrap_or(0);
    }
    out
}

pub(crate) struct RunResult {
    pub(crate) outcomes: Vec<Outcome>,
    mean_queue: BTreeMap<String, f64>,
    seconds: f64,
}

pub(crate) async fn run_workload(label: &str, gateway_url: &str, fleet: &[SimHandle], args: &DemoArgs) -> RunResult {
    crate::ensure_crypto_provider();
    let client = reqwest::Client::new();
    let jobs = Arc::new(workload(args.requests, args.seed));
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let url = format!("{gateway_url}/v1/chat/completions");
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (client, jobs, next, done, url) = (client.clone(), jobs.clone(), next.clone(), done.clone(), url.clone());
        workers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= jobs.len() {
                    return out;
                }
                out.push(send_one(&client, &url, &jobs[i]).await);
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Progress bar, and the queue of every server sampled every 20 ms.
    let mut samples: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    let tty = std::io::stderr().is_terminal();
    let mut last_filled = usize::MAX;
    while workers.iter().any(|w| !w.is_finished()) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        for h in fleet {
            let e = samples.entry(h.name.clone()).or_default();
            e.0 += h.server.queue_depth() as f64;
            e.1 += 1;
        }
        let d = done.load(Ordering::Relaxed);
        let filled = d * 30 / args.requests.max(1);
        if tty || filled != last_filled {
            last_filled = filled;
            let bar =
                format!("  {label:<12} [{}{}] {d}/{}", "#".repeat(filled), ".".repeat(30 - filled), args.requests);
            if tty {
                eprint!("\r{bar}")
            } else if filled.is_multiple_of(10) {
                eprintln!("{bar}")
            }
            let _ = std::io::stderr().flush();
        }
    }
    if tty {
        eprintln!();
    }
    let mut outcomes = Vec::new();
    for w in workers {
        outcomes.extend(w.await.unwrap_or_default());
    }
    let mean_queue = samples.into_iter().map(|(k, (sum, n))| (k, sum / n.max(1) as f64)).collect();
    RunResult { outcomes, mean_queue, seconds: started.elapsed().as_secs_f64() }
}

impl RunResult {
    /// Several runs as one (their requests pooled; queue means averaged).
    pub(crate) fn pooled(runs: Vec<RunResult>) -> RunResult {
        let n = runs.len().max(1) as f64;
        let mut out = RunResult { outcomes: Vec::new(), mean_queue: BTreeMap::new(), seconds: 0.0 };
        for r in runs {
            out.outcomes.extend(r.outcomes);
            out.seconds += r.seconds;
            for (k, q) in r.mean_queue {
                *out.mean_queue.entry(k).or_default() += q / n;
            }
        }
        out
    }
}

pub(crate) struct Row {
    pub(crate) requests: usize,
    pub(crate) hit: f64,
    pub(crate) queue: f64,
    pub(crate) p50: f64,
    pub(crate) p90: f64,
}

pub(crate) fn rows(r: &RunResult, names: &[String]) -> BTreeMap<String, Row> {
    let mut out = BTreeMap::new();
    for name in names.iter().chain(std::iter::once(&"all".to_string())) {
        let mine: Vec<&Outcome> = r.outcomes.iter().filter(|o| o.ok && (name == "all" || &o.server == name)).collect();
        let prompt: u64 = mine.iter().map(|o| o.prompt_tokens).sum();
        let cached: u64 = mine.iter().map(|o| o.cached_tokens).sum();
        let mut ttft: Vec<f64> = mine.iter().filter_map(|o| o.ttft_ms).collect();
        ttft.sort_by(f64::total_cmp);
        let queue = if name == "all" {
            r.mean_queue.values().sum::<f64>() / r.mean_queue.len().max(1) as f64
        } else {
            r.mean_queue.get(name).copied().unwrap_or(0.0)
        };
        out.insert(
            name.clone(),
            Row {
                requests: mine.len(),
                hit: if prompt == 0 { 0.0 } else { 100.0 * cached as f64 / prompt as f64 },
                queue,
                p50: percentile(&ttft, 50.0),
                p90: percentile(&ttft, 90.0),
            },
        );
    }
    out
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    println!("Switchyard demo: a simulated inference pool behind the gateway, routed by the picker.\n");
    // 1. Switchyard.
    let fleet = sim::start_fleet(&fleet_config(args.seed)).await?;
    let dir = tempfile_dir()?;
    let endpoints_file = sim::write_endpoints_file(&fleet, &dir)?;
    println!("pool ({} simulated model servers, model {MODEL}, LoRA adapters {}):", fleet.len(), ADAPTERS.join(", "));
    for h in &fleet {
        println!("  {:<26} {:<20} http://{}", h.name, h.flavor.name(), h.addr);
    }
    let epp = app::start_standalone(StandaloneOptions {
        host: [127, 0, 0, 1].into(),
        grpc_port: 0,
        grpc_health_port: 0,
        metrics_port: 0,
        pool: crate::discovery::PoolSource::file(endpoints_file.clone()),
        tls: Tls::Plaintext,
        picker: PickerSettings { seed: args.seed, ..PickerSettings::default() },
        ..StandaloneOptions::default()
    })
    .await?;
    let ready_by = Instant::now() + Duration::from_secs(10);
    while !epp.readiness.is_ready() && Instant::now() < ready_by {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (stop, stop_rx) = watch::channel(false);
    let pool: Vec<String> = fleet.iter().map(|h| h.addr.to_string()).collect();
    let gw_cfg = GatewayConfig {
        ext_proc: vec![format!("http://{}", epp.ext_proc_addr)],
        failure_mode: FailureMode::Open,
        pool: pool.clone(),
        message_timeout: Duration::from_secs(10),
    };
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], if args.serve { args.port } else { 0 }));
    let (gw_addr, _gw) = gateway::start(gw_cfg, listen, stop_rx.clone()).await?;
    println!("\npicker (ext-proc) on {}, gateway on http://{gw_addr}\n", epp.ext_proc_addr);
    println!(
        "workload: {} chat requests, {} concurrent clients, 24 shared system prompts, 30% LoRA, half streaming",
        args.requests, args.concurrency
    );
    let sy = run_workload("switchyard", &format!("http://{gw_addr}"), &fleet, &args).await;

    // 2. The same workload on a fresh identical fleet, round-robin.
    let rr_fleet = sim::start_fleet(&fleet_config(args.seed)).await?;
    let rr_pool: Vec<String> = rr_fleet.iter().map(|h| h.addr.to_string()).collect();
    let rr_cfg = GatewayConfig {
        ext_proc: vec![],
        failure_mode: FailureMode::Close,
        pool: rr_pool,
        message_timeout: Duration::from_secs(10),
    };
    let (rr_addr, _rr) = gateway::start(rr_cfg, "127.0.0.1:0".parse()?, stop_rx.clone()).await?;
    let rr = run_workload("round-robin", &format!("http://{rr_addr}"), &rr_fleet, &args).await;

    let names: Vec<String> = fleet.iter().map(|h| h.name.clone()).collect();
    let (a, b) = (rows(&sy, &names), rows(&rr, &names));
    println!("\nwhere requests went and why (switchyard | round-robin):");
    println!(
        "{:<26} {:>13} {:>17} {:>15} {:>23} {:>23}",
        "endpoint", "requests", "prefix hit %", "mean queue", "TTFT p50 ms", "TTFT p90 ms"
    );
    for name in names.iter().chain(std::iter::once(&"all".to_string())) {
        let (x, y) = (&a[name], &b[name]);
        println!(
            "{:<26} {:>6} | {:<4} {:>7.1} | {:<7.1} {:>6.2} | {:<6.2} {:>10.0} | {:<10.0} {:>10.0} | {:<10.0}",
            name, x.requests, y.requests, x.hit, y.hit, x.queue, y.queue, x.p50, y.p50, x.p90, y.p90
        );
    }
    let failed = |r: &RunResult| r.outcomes.iter().filter(|o| !o.ok).count();
    println!(
        "\nwall time: switchyard {:.1} s, round-robin {:.1} s; failed requests: {} | {}",
        sy.seconds,
        rr.seconds,
        failed(&sy),
        failed(&rr)
    );
    println!(
        "Switchyard sends requests that share a system prompt to the server that already holds it in its KV cache (prefix hit %),"
    );
    println!("and away from servers with queues; round-robin ignores both.");

    if args.serve {
        println!(
            "\nserving; try:\n  curl -s http://{gw_addr}/v1/chat/completions -H 'content-type: application/json' \\\n    -d '{{\"model\":\"{MODEL}\",\"messages\":[{{\"role\":\"user\",\"content\":\"hello\"}}],\"max_tokens\":16}}'\n(ctrl-c to stop)"
        );
        let _ = tokio::signal::ctrl_c().await;
    }
    let _ = stop.send(true);
    epp.shutdown(Duration::from_secs(2)).await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("switchyard-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
