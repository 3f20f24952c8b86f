//! `switchyard demo`: starts a mixed sim fleet, scrapes it with scraper actors, sends it a short
//! workload and prints what the scrapers read per endpoint.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use clap::Args;

use crate::metrics::EngineRegistry;
use crate::model::{Endpoint, EndpointId};
use crate::scraper::{AssignEndpoints, ScrapeSettings, ScrapeSupervisor};
use crate::sim::{self, Flavor};
use crate::tools::board::{Board, GetBoard};

#[derive(Args, Clone)]
pub struct DemoArgs {
    /// Requests to send.
    #[arg(long, default_value_t = 120)]
    pub requests: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

const ADAPTERS: [&str; 3] = ["sql-lora", "tweet-lora", "code-lora"];

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let cfg = sim::FleetConfig {
        fleet: vec![
            (Flavor::VllmV1, 2),
            (Flavor::VllmV0, 1),
            (Flavor::Sglang, 1),
            (Flavor::TritonTensorrtLlm, 1),
            (Flavor::TrtllmServe, 1),
        ],
        seed: args.seed,
        adapters: ADAPTERS.iter().map(|s| s.to_string()).collect(),
        params: sim::ModelParams { max_lora: 2, ..sim::ModelParams::default() },
        ..sim::FleetConfig::default()
    };
    let fleet = sim::start_fleet(&cfg).await?;
    let endpoints: Vec<Endpoint> = fleet
        .iter()
        .map(|h| Endpoint {
            id: EndpointId::new(&h.name),
            address: h.addr.to_string(),
            metrics_url: h.metrics_url(),
            engine: h.flavor.engine().to_string(),
            labels: Default::default(),
        })
        .collect();
    println!("started {} simulated model servers:", fleet.len());
    for h in &fleet {
        println!("  {:<28} {:<20} {}", h.name, h.flavor.name(), h.metrics_url());
    }
    let (board, sink) = Board::start_sink();
    let supervisor =
        ScrapeSupervisor::new(Arc::new(EngineRegistry::builtin()), &ScrapeSettings::default(), sink)?.start();
    supervisor.do_send(AssignEndpoints(endpoints.clone()));

    crate::ensure_crypto_provider();
    let client = reqwest::Client::new();
    let targets: Vec<(String, Flavor)> = fleet.iter().map(|h| (h.addr.to_string(), h.flavor)).collect();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (client, targets, next) = (client.clone(), targets.clone(), next.clone());
        let total = args.requests;
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let (addr, flavor) = &targets[i % targets.len()];
                let model = if flavor.supports_lora() && i % 3 == 0 { ADAPTERS[i % ADAPTERS.len()] } else { "meta-llama/Llama-3.1-8B-Instruct" };
                let system = ["You are a helpful SQL assistant. ", "You are a terse poet. "][i % 2].repeat(40);
                let body = serde_json::json!({
                    "model": model,
                    "messages": [{"role": "system", "content": system}, {"role": "user", "content": format!("question {i}")}],
                    "max_tokens": 48,
                    "stream": i % 2 == 0,
                });
                let _ = client.post(format!("http://{addr}/v1/chat/completions")).json(&body).send().await.map(|r| r.bytes());
            }
        }));
    }
    let started = tokio::time::Instant::now();
    let mut peak = Board::default().states;
    while workers.iter().any(|w| !w.is_finished()) && started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let done = next.load(std::sync::atomic::Ordering::Relaxed).min(args.requests);
        eprint!("\rworkload: {done}/{} requests sent", args.requests);
        let view = board.send(GetBoard).await?;
        for (id, state) in view.states {
            let busier = match (state.sample(), peak.get(&id).and_then(|s| s.sample())) {
                (Some(new), Some(old)) => new.metrics.running.unwrap_or(0) >= old.metrics.running.unwrap_or(0),
                _ => true,
            };
            if busier {
                peak.insert(id, state);
            }
        }
    }
    eprintln!();
    println!("\nbusiest moment seen by the scrapers, per endpoint (normalized, engine-neutral):");
    println!(
        "{:<26} {:<20} {:>6} {:>7} {:>6} {:>6} {:>8}  lora (running|waiting / max)",
        "endpoint", "engine", "queue", "running", "kv%", "block", "blocks"
    );
    let now = SystemTime::now();
    for (id, state) in &peak {
        let engine = endpoints.iter().find(|e| &e.id == id).map_or("?", |e| e.engine.as_str());
        let Some(s) = state.sample() else {
            println!("{id:<26} {engine:<20} never scraped");
            continue;
        };
        let m = &s.metrics;
        let opt = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
        let lora = match (&m.running_lora, &m.waiting_lora) {
            (Some(r), Some(w)) => {
                format!("{}|{} / {}", r.join(","), w.join(","), m.max_lora.map_or("-".into(), |v| v.to_string()))
            }
            _ => "not reported".into(),
        };
        println!(
            "{:<26} {:<20} {:>6} {:>7} {:>6} {:>6} {:>8}  {}  (age {} ms)",
            id.as_str(),
            engine,
            opt(m.queued),
            opt(m.running),
            m.kv_usage.map_or("-".into(), |v| format!("{:.1}", v * 100.0)),
            opt(m.cache_block_size.map(u64::from)),
            opt(m.cache_num_blocks),
            lora,
            state.age(now).map_or(0, |a| a.as_millis())
        );
    }
    let view = board.send(GetBoard).await?;
    println!("\nscrapes: {} ok, {} failed", view.ok, view.failed);
    Ok(())
}
