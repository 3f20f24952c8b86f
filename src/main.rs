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
    /// All roles in one process: scrapers, aggregator and the ext-proc picker (the default role).
    Standalone(Box<StandaloneArgs>),
    /// The main job in one command: sim fleet + picker + gateway, a workload, and a comparison
    /// with round-robin.
    Demo(tools::demo::DemoArgs),
    /// A development data plane that consults an ext-proc server as Envoy does.
    Gateway(GatewayArgs),
    /// Aggregator replica: etcd election, scraping, snapshots for pickers.
    Aggregator(Box<AggregatorArgs>),
    /// Picker replica: follows the aggregator leader, serves ext-proc.
    Picker(Box<PickerArgs>),
    /// Scraper replica: scrapes the endpoints the aggregator leader assigns it.
    Scraper(Box<ScraperArgs>),
    /// Run simulated model servers on loopback.
    Sim(SimArgs),
    /// Tools for metrics pages.
    #[command(subcommand)]
    Metrics(MetricsCommand),
    /// Benchmarks (results go to docs/benchmarks.md).
    #[command(subcommand)]
    Bench(tools::bench::BenchCommand),
}

#[derive(Args, Clone)]
struct EtcdArgs {
    /// etcd endpoints, comma-separated (e.g. http://127.0.0.1:2379).
    #[arg(long, value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    #[arg(long, env = "ETCD_USER")]
    etcd_user: Option<String>,
    #[arg(long, env = "ETCD_PASSWORD")]
    etcd_password: Option<String>,
    /// Election name shared by the aggregator replicas.
    #[arg(long, default_value = "switchyard-aggregator")]
    election_name: String,
    /// Leadership lease TTL.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    lease_ttl: std::time::Duration,
}

impl EtcdArgs {
    fn settings(&self) -> Option<switchyard::aggregator::election::EtcdSettings> {
        (!self.etcd_endpoints.is_empty()).then(|| switchyard::aggregator::election::EtcdSettings {
            endpoints: self.etcd_endpoints.clone(),
            election: self.election_name.clone(),
            value: String::new(),
            ttl: self.lease_ttl,
            user: self.etcd_user.clone().zip(self.etcd_password.clone()),
        })
    }
}

#[derive(Args)]
struct AggregatorArgs {
    #[arg(long, default_value = "0.0.0.0")]
    listen_host: std::net::IpAddr,
    /// Control-plane gRPC port (pickers watch snapshots here).
    #[arg(long, default_value_t = 9010)]
    control_port: u16,
    #[arg(long, default_value_t = 9013)]
    grpc_health_port: u16,
    /// Address pickers should use for this replica (default: the bound control address).
    #[arg(long)]
    advertise_address: Option<String>,
    #[arg(long)]
    config_file: Option<PathBuf>,
    #[arg(long)]
    config_text: Option<String>,
    #[arg(long)]
    endpoints_file: PathBuf,
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    refresh_metrics_interval: std::time::Duration,
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    scrape_timeout: std::time::Duration,
    /// Leave scraping to `switchyard scraper` processes (rendezvous-hashed assignment).
    #[arg(long)]
    remote_scrapers: bool,
    #[command(flatten)]
    etcd: EtcdArgs,
    #[command(flatten)]
    metric_flags: MetricFlagArgs,
}

#[derive(Args)]
struct ScraperArgs {
    /// Aggregator control addresses (when etcd is not used), comma-separated.
    #[arg(long, value_delimiter = ',')]
    aggregators: Vec<String>,
    /// Stable identity of this scraper (default: scraper-<pid>).
    #[arg(long)]
    scraper_id: Option<String>,
    #[arg(long)]
    config_file: Option<PathBuf>,
    #[arg(long)]
    config_text: Option<String>,
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    refresh_metrics_interval: std::time::Duration,
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    scrape_timeout: std::time::Duration,
    #[command(flatten)]
    etcd: EtcdArgs,
    #[command(flatten)]
    metric_flags: MetricFlagArgs,
}

#[derive(Args)]
struct PickerArgs {
    #[arg(long, default_value_t = 9002)]
    grpc_port: u16,
    #[arg(long, default_value_t = 9003)]
    grpc_health_port: u16,
    #[arg(long, default_value_t = 9090)]
    metrics_port: u16,
    #[arg(long, default_value = "0.0.0.0")]
    listen_host: std::net::IpAddr,
    #[arg(long)]
    config_file: Option<PathBuf>,
    #[arg(long)]
    config_text: Option<String>,
    /// Aggregator control addresses to try (when etcd is not used), comma-separated.
    #[arg(long, value_delimiter = ',')]
    aggregators: Vec<String>,
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    metrics_staleness_threshold: std::time::Duration,
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    secure_serving: bool,
    #[arg(long)]
    cert_path: Option<PathBuf>,
    #[arg(long)]
    enable_cert_reload: bool,
    #[arg(long = "inference-objective")]
    inference_objectives: Vec<String>,
    #[arg(long, default_value_t = 30)]
    grace_period_secs: u64,
    #[command(flatten)]
    etcd: EtcdArgs,
}

#[derive(Args)]
struct GatewayArgs {
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// ext-proc server URLs (plaintext h2c), comma-separated; streams are spread round-robin.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:9002")]
    ext_proc: Vec<String>,
    /// Static endpoints file: the pool used when failing open (and by --round-robin).
    #[arg(long)]
    endpoints_file: PathBuf,
    /// `open` sends to a random pool endpoint when ext-proc is unreachable; `close` answers 503.
    #[arg(long, default_value = "open", value_parser = ["open", "close"])]
    failure_mode: String,
    /// How long to wait for each ext-proc answer.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    message_timeout: std::time::Duration,
    /// Ignore ext-proc and round-robin over the pool (a baseline).
    #[arg(long)]
    round_robin: bool,
}

/// Flags follow upstream's EPP names where they exist.
#[derive(Args)]
struct StandaloneArgs {
    /// ext-proc gRPC port.
    #[arg(long, default_value_t = 9002)]
    grpc_port: u16,
    /// gRPC health port.
    #[arg(long, default_value_t = 9003)]
    grpc_health_port: u16,
    /// Prometheus metrics port.
    #[arg(long, default_value_t = 9090)]
    metrics_port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    listen_host: std::net::IpAddr,
    /// EndpointPickerConfig file.
    #[arg(long)]
    config_file: Option<PathBuf>,
    /// Inline EndpointPickerConfig.
    #[arg(long)]
    config_text: Option<String>,
    /// Static endpoints file (see docs/standalone.md; `switchyard sim --endpoints-out` writes one).
    #[arg(long)]
    endpoints_file: PathBuf,
    /// Metrics polling period per endpoint.
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    refresh_metrics_interval: std::time::Duration,
    /// Metrics older than this are not trusted for load scoring.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    metrics_staleness_threshold: std::time::Duration,
    /// Per-scrape timeout.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    scrape_timeout: std::time::Duration,
    /// TLS on the ext-proc port (self-signed unless --cert-path is set).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    secure_serving: bool,
    /// Directory with tls.crt and tls.key.
    #[arg(long)]
    cert_path: Option<PathBuf>,
    /// Reload the certificate when the files in --cert-path change.
    #[arg(long)]
    enable_cert_reload: bool,
    /// Ignore the proxy's x-gateway-destination-endpoint-subset hint.
    #[arg(long)]
    disable_endpoint_subset_filter: bool,
    /// Accepted for compatibility: health is always served on the ext-proc port too.
    #[arg(long)]
    health_checking: bool,
    /// Request bodies above this size get a 413.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    max_request_body_bytes: usize,
    /// InferenceObjective priorities, NAME=PRIORITY (repeatable).
    #[arg(long = "inference-objective")]
    inference_objectives: Vec<String>,
    /// Seed for scheduling randomness (default: random).
    #[arg(long)]
    seed: Option<u64>,
    /// Seconds to drain in-flight requests on SIGTERM/SIGINT.
    #[arg(long, default_value_t = 30)]
    grace_period_secs: u64,
    #[command(flatten)]
    metric_flags: MetricFlagArgs,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    switchyard::scheduling::config::parse_duration(s).ok_or_else(|| format!("invalid duration {s:?} (e.g. 50ms, 2s)"))
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
    /// Also write the fleet as a static endpoints file for `switchyard standalone`.
    #[arg(long)]
    endpoints_out: Option<PathBuf>,
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
            Command::Standalone(args) => run_standalone(*args).await,
            Command::Gateway(args) => run_gateway(args).await,
            Command::Aggregator(args) => run_aggregator(*args).await,
            Command::Picker(args) => run_picker(*args).await,
            Command::Scraper(args) => run_scraper(*args).await,
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

async fn run_standalone(args: StandaloneArgs) -> anyhow::Result<()> {
    use switchyard::app::{self, StandaloneOptions, Tls};
    let mut picker = switchyard::picker::PickerSettings {
        max_body_bytes: args.max_request_body_bytes,
        disable_subset_filter: args.disable_endpoint_subset_filter,
        objectives: app::parse_objectives(&args.inference_objectives)?,
        ..Default::default()
    };
    if let Some(seed) = args.seed {
        picker.seed = seed;
    }
    let _ = args.health_checking;
    let opts = StandaloneOptions {
        host: args.listen_host,
        grpc_port: args.grpc_port,
        grpc_health_port: args.grpc_health_port,
        metrics_port: args.metrics_port,
        config_file: args.config_file,
        config_text: args.config_text,
        endpoints_file: args.endpoints_file,
        metric_flags: args.metric_flags.to_flags(),
        refresh_metrics_interval: args.refresh_metrics_interval,
        metrics_staleness_threshold: args.metrics_staleness_threshold,
        scrape_timeout: args.scrape_timeout,
        tls: match (args.secure_serving, args.cert_path) {
            (false, _) => Tls::Plaintext,
            (true, None) => Tls::SelfSigned,
            (true, Some(dir)) => Tls::Files { dir, reload: args.enable_cert_reload },
        },
        picker,
    };
    let handle = app::start_standalone(opts).await?;
    shutdown_signal().await;
    tracing::info!("shutting down: readiness off, draining");
    handle.shutdown(std::time::Duration::from_secs(args.grace_period_secs)).await;
    Ok(())
}

async fn run_aggregator(args: AggregatorArgs) -> anyhow::Result<()> {
    use switchyard::roles::{AggregatorOptions, start_aggregator};
    let handle = start_aggregator(AggregatorOptions {
        host: args.listen_host,
        control_port: args.control_port,
        grpc_health_port: args.grpc_health_port,
        advertise: args.advertise_address,
        config_file: args.config_file,
        config_text: args.config_text,
        endpoints_file: args.endpoints_file,
        metric_flags: args.metric_flags.to_flags(),
        refresh_metrics_interval: args.refresh_metrics_interval,
        scrape_timeout: args.scrape_timeout,
        etcd: args.etcd.settings(),
        remote_scrapers: args.remote_scrapers,
    })
    .await?;
    shutdown_signal().await;
    handle.shutdown(std::time::Duration::from_secs(5)).await;
    Ok(())
}

/// How a picker or scraper finds the aggregator leader: etcd when configured, else the addresses.
fn leader_source(
    etcd: &EtcdArgs,
    aggregators: &[String],
) -> anyhow::Result<switchyard::picker::subscribe::LeaderSource> {
    use switchyard::picker::subscribe::LeaderSource;
    match (etcd.settings(), aggregators.is_empty()) {
        (Some(s), _) => Ok(LeaderSource::Etcd(s)),
        (None, false) => Ok(LeaderSource::Addresses(aggregators.to_vec())),
        (None, true) => {
            Err(switchyard::config::ConfigError::invalid("--etcd-endpoints", "set --etcd-endpoints or --aggregators")
                .into())
        }
    }
}

async fn run_scraper(args: ScraperArgs) -> anyhow::Result<()> {
    use switchyard::roles::{ScraperOptions, start_scraper};
    let leader = leader_source(&args.etcd, &args.aggregators)?;
    let handle = start_scraper(ScraperOptions {
        leader,
        scraper_id: args.scraper_id.unwrap_or_else(|| format!("scraper-{}", std::process::id())),
        config_file: args.config_file,
        config_text: args.config_text,
        metric_flags: args.metric_flags.to_flags(),
        refresh_metrics_interval: args.refresh_metrics_interval,
        scrape_timeout: args.scrape_timeout,
    })
    .await?;
    shutdown_signal().await;
    handle.shutdown().await;
    Ok(())
}

async fn run_picker(args: PickerArgs) -> anyhow::Result<()> {
    use switchyard::app::{ServeOptions, Tls};
    use switchyard::roles::{PickerOptions, start_picker};
    let leader = leader_source(&args.etcd, &args.aggregators)?;
    let handle = start_picker(PickerOptions {
        serve: ServeOptions {
            host: args.listen_host,
            grpc_port: args.grpc_port,
            grpc_health_port: args.grpc_health_port,
            metrics_port: args.metrics_port,
            tls: match (args.secure_serving, args.cert_path) {
                (false, _) => Tls::Plaintext,
                (true, None) => Tls::SelfSigned,
                (true, Some(dir)) => Tls::Files { dir, reload: args.enable_cert_reload },
            },
        },
        config_file: args.config_file,
        config_text: args.config_text,
        metrics_staleness_threshold: args.metrics_staleness_threshold,
        leader,
        picker: switchyard::picker::PickerSettings {
            objectives: switchyard::app::parse_objectives(&args.inference_objectives)?,
            ..Default::default()
        },
        picker_id: format!("picker-{}", std::process::id()),
    })
    .await?;
    shutdown_signal().await;
    handle.shutdown(std::time::Duration::from_secs(args.grace_period_secs)).await;
    Ok(())
}

async fn run_gateway(args: GatewayArgs) -> anyhow::Result<()> {
    use switchyard::gateway::{self, FailureMode, GatewayConfig};
    let file = switchyard::discovery::StaticEndpoints::load(&args.endpoints_file)?;
    let pool = file
        .endpoints
        .iter()
        .flat_map(|e| {
            let ports: Vec<u16> = e.port.into_iter().chain(e.ports.iter().copied()).collect();
            ports.into_iter().map(move |p| switchyard::discovery::join_host_port(&e.address, p))
        })
        .collect();
    let cfg = GatewayConfig {
        ext_proc: if args.round_robin { Vec::new() } else { args.ext_proc },
        failure_mode: if args.failure_mode == "open" { FailureMode::Open } else { FailureMode::Close },
        pool,
        message_timeout: args.message_timeout,
    };
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let (addr, task) = gateway::start(cfg, args.listen, stop_rx).await?;
    tracing::info!(%addr, "gateway listening");
    shutdown_signal().await;
    let _ = stop.send(true);
    let _ = task.await;
    Ok(())
}

/// SIGTERM or SIGINT.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

async fn run_sim(args: SimArgs) -> anyhow::Result<()> {
    let cfg = args.fleet_config()?;
    let fleet = sim::start_fleet(&cfg).await.context("cannot start the sim fleet")?;
    let file = sim::endpoints_file(&fleet);
    let yaml = serde_saphyr::to_string(&file).context("cannot encode the endpoints file")?;
    print!("{yaml}");
    if let Some(path) = &args.endpoints_out {
        std::fs::write(path, &yaml).with_context(|| format!("cannot write {}", path.display()))?;
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
