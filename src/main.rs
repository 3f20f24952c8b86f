//! The `switchyard` binary: one subcommand per role and per tool.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use switchyard::config::{self, MetricFlags};
use switchyard::sim;
use switchyard::tools;

/// Exit code for configuration and usage errors (clap uses 2 for usage errors too).
const EXIT_CONFIG: u8 = 2;

#[derive(Parser)]
#[command(name = "switchyard", version, about = "Endpoint Picker for LLM inference, as a distributed control plane")]
struct Cli {
    /// Log filter (RUST_LOG syntax), e.g. `info` or `switchyard=debug`.
    #[arg(long, global = true, env = "SWITCHYARD_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a sim fleet, scrape it, send it load, and print what the scrapers read.
    Demo(tools::demo::DemoArgs),
    /// Run simulated model servers on loopback.
    Sim(SimArgs),
    /// Tools for metrics pages.
    #[command(subcommand)]
    Metrics(MetricsCommand),
    /// Benchmarks (results go to docs/benchmarks.md).
    #[command(subcommand)]
    Bench(tools::bench::BenchCommand),
}

#[derive(Subcommand)]
enum MetricsCommand {
    /// Normalize one exposition (file or stdin) and print one JSON object.
    Parse(ParseArgs),
}

#[derive(Args)]
struct ParseArgs {
    /// Engine mapping to use (default: the config's default engine).
    #[arg(long)]
    engine: Option<String>,
    /// EndpointPickerConfig file (its core-metrics-extractor engines are used).
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    metric_flags: MetricFlagArgs,
    /// Exposition file, or `-` for stdin.
    #[arg(default_value = "-")]
    file: String,
}

/// Upstream's metric-mapping flags; they override the default engine's specs (empty disables).
#[derive(Args, Clone, Default)]
pub struct MetricFlagArgs {
    #[arg(long)]
    total_queued_requests_metric: Option<String>,
    #[arg(long)]
    total_running_requests_metric: Option<String>,
    #[arg(long)]
    kv_cache_usage_percentage_metric: Option<String>,
    #[arg(long)]
    lora_info_metric: Option<String>,
    #[arg(long)]
    cache_info_metric: Option<String>,
}

impl MetricFlagArgs {
    fn to_flags(&self) -> MetricFlags {
        MetricFlags {
            total_queued_requests_metric: self.total_queued_requests_metric.clone(),
            total_running_requests_metric: self.total_running_requests_metric.clone(),
            kv_cache_usage_percentage_metric: self.kv_cache_usage_percentage_metric.clone(),
            lora_info_metric: self.lora_info_metric.clone(),
            cache_info_metric: self.cache_info_metric.clone(),
        }
    }
}

#[derive(Args)]
struct SimArgs {
    /// Servers per engine flavor: vllm-v1, vllm-v0, sglang, triton-tensorrt-llm, trtllm-serve.
    #[arg(long, default_value = "vllm-v1=1,vllm-v0=1,sglang=1,triton-tensorrt-llm=1,trtllm-serve=1")]
    fleet: String,
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// First port (consecutive ports follow); 0 picks free ports.
    #[arg(long, default_value_t = 8000)]
    base_port: u16,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Simulated seconds per real second.
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    #[arg(long, default_value = "meta-llama/Llama-3.1-8B-Instruct")]
    model: String,
    /// LoRA adapters served by the vLLM servers (comma-separated).
    #[arg(long, value_delimiter = ',')]
    lora_adapters: Vec<String>,
    #[arg(long, default_value_t = 4)]
    max_lora: u32,
    #[arg(long, default_value_t = 7000)]
    kv_blocks: u32,
    #[arg(long, default_value_t = 16)]
    block_size: u32,
    #[arg(long, default_value_t = 256)]
    max_num_seqs: u32,
    #[arg(long, default_value_t = 12000.0)]
    prefill_tokens_per_s: f64,
    #[arg(long, default_value_t = 12.0)]
    decode_base_ms: f64,
    #[arg(long, default_value_t = 0.12)]
    decode_per_seq_ms: f64,
    /// Stop after this many seconds (default: run until interrupted).
    #[arg(long)]
    duration_secs: Option<u64>,
}

impl SimArgs {
    fn fleet_config(&self) -> anyhow::Result<sim::FleetConfig> {
        Ok(sim::FleetConfig {
            fleet: sim::parse_fleet(&self.fleet).map_err(anyhow::Error::msg)?,
            host: self.host,
            base_port: self.base_port,
            seed: self.seed,
            speed: self.speed,
            model: self.model.clone(),
            adapters: self.lora_adapters.clone(),
            params: sim::ModelParams {
                kv_blocks: self.kv_blocks,
                block_size: self.block_size,
                max_num_seqs: self.max_num_seqs,
                max_lora: self.max_lora,
                prefill_tokens_per_s: self.prefill_tokens_per_s,
                decode_base_s: self.decode_base_ms / 1000.0,
                decode_per_seq_s: self.decode_per_seq_ms / 1000.0,
                ..sim::ModelParams::default()
            },
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log);
    switchyard::ensure_crypto_provider();
    match cli.command {
        Command::Metrics(MetricsCommand::Parse(args)) => metrics_parse(&args),
        command => run_async(command),
    }
}

fn init_logging(filter: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

fn run_async(command: Command) -> ExitCode {
    let system = actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cannot build the tokio runtime: {e}"))
    });
    let result = system.block_on(async move {
        match command {
            Command::Demo(args) => tools::demo::run(args).await,
            Command::Sim(args) => run_sim(args).await,
            Command::Bench(cmd) => tools::bench::run(cmd).await,
            Command::Metrics(_) => unreachable!("handled synchronously"),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<config::ConfigError>().is_some() {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn run_sim(args: SimArgs) -> anyhow::Result<()> {
    let cfg = args.fleet_config()?;
    let fleet = sim::start_fleet(&cfg).await.context("cannot start the sim fleet")?;
    println!("endpoints:");
    for h in &fleet {
        let e = h.endpoint();
        println!(
            "- {{name: {}, address: \"{}\", port: {}, labels: {{inference.networking.k8s.io/engine-type: {}}}, flavor: {}}}",
            e.name,
            e.address.ip(),
            e.address.port(),
            e.engine,
            e.flavor
        );
    }
    tracing::info!(servers = fleet.len(), "sim fleet running; ctrl-c to stop");
    match args.duration_secs {
        Some(secs) => tokio::time::sleep(std::time::Duration::from_secs(secs)).await,
        None => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    Ok(())
}

fn metrics_parse(args: &ParseArgs) -> ExitCode {
    match metrics_parse_inner(args) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn metrics_parse_inner(args: &ParseArgs) -> anyhow::Result<String> {
    let cfg = config::load(args.config.as_deref(), None)?;
    let registry = cfg.engine_registry(&args.metric_flags.to_flags())?;
    let mapping = match &args.engine {
        Some(name) => registry.get(name).with_context(|| {
            format!("unknown engine {name:?} (known: {})", registry.names().collect::<Vec<_>>().join(", "))
        })?,
        None => registry.default_mapping(),
    };
    let mut bytes = Vec::new();
    if args.file == "-" {
        std::io::stdin().read_to_end(&mut bytes).context("cannot read stdin")?;
    } else {
        bytes = std::fs::read(&args.file).with_context(|| format!("cannot read {}", args.file))?;
    }
    let page = String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("input is not valid UTF-8"))?;
    let out = tools::parse::parse_page(&page, mapping);
    Ok(serde_json::to_string(&out)?)
}
