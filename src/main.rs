//! The `switchyard` binary: one subcommand per role and per tool.

use std::io::Read;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;

use switchyard::config;
use switchyard::metrics_auth::MetricsAuth;
use switchyard::sim;
use switchyard::telemetry;
use switchyard::tools;

/// Exit code for configuration and usage errors (clap uses 2 for usage errors too).
pub(crate) const EXIT_CONFIG: u8 = 2;

mod check;
mod cli;

use cli::*;

/// mimalloc (per-thread heaps) instead of glibc's malloc: the scraper lanes allocate a page's
/// samples on one thread and the aggregator frees them on another, and glibc's arenas spent
/// 12–15 % of a scrape's CPU in malloc, free, their locks and `malloc_consolidate`
/// (docs/benchmarks.md, "Batched results, SIMD UTF-8 and mimalloc").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (filter, json) = (cli.log_filter(), cli.zap_encoder.as_deref() == Some("json"));
    switchyard::ensure_crypto_provider();
    if cli.ha_enable_leader_election == Some(true) {
        eprintln!(
            "error: --ha-enable-leader-election: Switchyard does not elect through Kubernetes leases; for high \
             availability run `switchyard aggregator` replicas with --etcd-endpoints (they elect a leader through \
             etcd) and any number of `switchyard picker` replicas (docs/distributed.md)"
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    if cli.check_config {
        telemetry::init(&filter, json, None);
        return check::run(&cli.command);
    }
    // One count for the runtime and the scraper lanes (tokio would also read the variable, and
    // panic on a bad value).
    let worker_threads = match switchyard::worker_threads() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let metrics_auth = match MetricsAuth::from_flags(cli.metrics_endpoint_auth, cli.metrics_token_file.clone()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match cli.command {
        Command::Metrics(MetricsCommand::Parse(args)) => {
            telemetry::init(&filter, json, None);
            metrics_parse(&args)
        }
        Command::Crds(args) => crds(&args),
        command => {
            // The demo prints a table: role logs below warnings would land in the middle of it.
            let prints_table = matches!(
                command,
                Command::Demo(_) | Command::Bench(switchyard::tools::bench::BenchCommand::Routing(_))
            );
            let quiet_demo = prints_table && cli.log.is_none() && cli.verbosity.is_none();
            let filter = if quiet_demo { "warn".to_string() } else { filter };
            run_async(command, Logging { filter, json, tracing: cli.tracing, metrics_auth }, worker_threads)
        }
    }
}

/// How the async roles log and trace.
struct Logging {
    filter: String,
    json: bool,
    /// `--tracing` as given.
    tracing: Option<bool>,
    /// `--metrics-endpoint-auth` / `--metrics-token-file`, for every role's metrics port.
    metrics_auth: MetricsAuth,
}

/// The role name traces carry (`service.name` = `switchyard-<role>` unless OTEL_SERVICE_NAME).
fn role_name(command: &Command) -> &'static str {
    match command {
        Command::Standalone(_) => "standalone",
        Command::Aggregator(_) => "aggregator",
        Command::Picker(_) => "picker",
        Command::Scraper(_) => "scraper",
        Command::Gateway(_) => "gateway",
        Command::Sim(_) => "sim",
        Command::Demo(_) => "demo",
        Command::Bench(_) => "bench",
        Command::Metrics(_) | Command::Crds(_) => "tool",
    }
}

fn crds(args: &CrdsArgs) -> ExitCode {
    use switchyard::discovery::kubernetes::crd;
    let Some(dir) = &args.out else {
        print!("{}", crd::crds_yaml());
        return ExitCode::SUCCESS;
    };
    for (name, yaml) in crd::crd_files() {
        let path = dir.join(&name);
        if let Err(e) = std::fs::write(&path, yaml) {
            eprintln!("error: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("{}", path.display());
    }
    ExitCode::SUCCESS
}

fn run_async(command: Command, logging: Logging, worker_threads: usize) -> ExitCode {
    let system = actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(worker_threads)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cannot build the tokio runtime: {e}"))
    });
    let result = system.block_on(async move {
        // Inside the runtime: the OTLP exporter's channel lives on it.
        let traces = match telemetry::TraceSettings::from_env(logging.tracing, role_name(&command)) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("warning: traces are off: {e}");
                None
            }
        };
        let telemetry = telemetry::init(&logging.filter, logging.json, traces.as_ref());
        let result = match command {
            Command::Demo(args) => tools::demo::run(args).await,
            Command::Standalone(args) => run_standalone(*args, logging.metrics_auth).await,
            Command::Gateway(args) => run_gateway(args).await,
            Command::Aggregator(args) => run_aggregator(*args, logging.metrics_auth).await,
            Command::Picker(args) => run_picker(*args, logging.metrics_auth).await,
            Command::Scraper(args) => run_scraper(*args, logging.metrics_auth).await,
            Command::Sim(args) => run_sim(args).await,
            Command::Bench(cmd) => tools::bench::run(cmd).await,
            Command::Metrics(_) | Command::Crds(_) => unreachable!("handled synchronously"),
        };
        telemetry.shutdown();
        result
    });
    // Actors spawned before a start-up error (the aggregator, the scrapers) have not run yet;
    // dropping them makes actix start them, and their timers need a runtime. Outside one, a port
    // already in use printed its error and then panicked "there is no reactor running".
    let runtime = system.runtime().tokio_runtime().handle().clone();
    {
        let _inside = runtime.enter();
        drop(system);
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            let discovery = e.downcast_ref::<switchyard::discovery::DiscoveryError>();
            if e.downcast_ref::<config::ConfigError>().is_some() || discovery.is_some_and(|d| d.is_config()) {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn run_standalone(args: StandaloneArgs, metrics_auth: MetricsAuth) -> anyhow::Result<()> {
    use switchyard::app::{self, StandaloneOptions};
    args.control_tls.refuse()?;
    let picker = args.scheduling.settings(&args.inference_objectives)?;
    let _ = args.health_checking;
    let serve = args.serve.options();
    let opts = StandaloneOptions {
        host: serve.host,
        grpc_port: serve.grpc_port,
        grpc_health_port: serve.grpc_health_port,
        metrics_port: serve.metrics_port,
        config_file: args.config.config_file,
        config_text: args.config.config_text,
        pool: args.discovery.pool()?,
        metric_flags: args.metric_flags.to_flags(),
        refresh_metrics_interval: args.scrape.refresh_metrics_interval,
        metrics_staleness_threshold: args.metrics_staleness_threshold,
        scrape_timeout: args.scrape.scrape_timeout,
        tls: serve.tls,
        handshake_timeout: serve.handshake_timeout,
        picker,
        metrics_auth,
    };
    let handle = app::start_standalone(opts).await?;
    shutdown_signal().await;
    tracing::info!("shutting down: readiness off, draining");
    handle.shutdown(std::time::Duration::from_secs(args.grace_period_secs)).await;
    Ok(())
}

async fn run_aggregator(args: AggregatorArgs, metrics_auth: MetricsAuth) -> anyhow::Result<()> {
    use switchyard::roles::{AggregatorOptions, start_aggregator};
    let handle = start_aggregator(AggregatorOptions {
        host: args.listen_host,
        control_port: args.control_port,
        grpc_health_port: args.grpc_health_port,
        metrics_port: args.metrics_port,
        advertise: args.advertise_address,
        config_file: args.config.config_file,
        config_text: args.config.config_text,
        pool: args.discovery.pool()?,
        metric_flags: args.metric_flags.to_flags(),
        refresh_metrics_interval: args.scrape.refresh_metrics_interval,
        scrape_timeout: args.scrape.scrape_timeout,
        etcd: args.etcd.settings()?,
        remote_scrapers: args.remote_scrapers,
        handshake_timeout: args.handshake_timeout,
        metrics_auth,
        control_tls: args.control_tls.settings(),
        slow_subscriber_timeout: switchyard::aggregator::serve::SLOW_AFTER,
    })
    .await?;
    shutdown_signal().await;
    handle.shutdown(std::time::Duration::from_secs(5)).await;
    Ok(())
}

/// How a picker or scraper finds the aggregator leader: etcd when configured, else the addresses.
pub(crate) fn leader_source(
    etcd: &EtcdArgs,
    aggregators: &[String],
) -> anyhow::Result<switchyard::picker::subscribe::LeaderSource> {
    use switchyard::picker::subscribe::LeaderSource;
    match (etcd.settings()?, aggregators.is_empty()) {
        (Some(s), _) => Ok(LeaderSource::Etcd(s)),
        (None, false) => Ok(LeaderSource::Addresses(aggregators.to_vec())),
        (None, true) => {
            Err(switchyard::config::ConfigError::invalid("--etcd-endpoints", "set --etcd-endpoints or --aggregators")
                .into())
        }
    }
}

async fn run_scraper(args: ScraperArgs, metrics_auth: MetricsAuth) -> anyhow::Result<()> {
    use switchyard::roles::{ScraperOptions, start_scraper};
    let leader = leader_source(&args.etcd, &args.aggregators)?;
    let handle = start_scraper(ScraperOptions {
        leader,
        scraper_id: args.scraper_id.unwrap_or_else(|| format!("scraper-{}", std::process::id())),
        metrics_addr: std::net::SocketAddr::new(args.listen_host, args.metrics_port),
        config_file: args.config.config_file,
        config_text: args.config.config_text,
        metric_flags: args.metric_flags.to_flags(),
        refresh_metrics_interval: args.scrape.refresh_metrics_interval,
        scrape_timeout: args.scrape.scrape_timeout,
        metrics_auth,
        control_tls: args.control_tls.settings(),
    })
    .await?;
    shutdown_signal().await;
    handle.shutdown().await;
    Ok(())
}

async fn run_picker(args: PickerArgs, metrics_auth: MetricsAuth) -> anyhow::Result<()> {
    use switchyard::roles::{PickerOptions, start_picker};
    let leader = leader_source(&args.etcd, &args.aggregators)?;
    let handle = start_picker(PickerOptions {
        serve: switchyard::app::ServeOptions { metrics_auth, ..args.serve.options() },
        config_file: args.config.config_file,
        config_text: args.config.config_text,
        metrics_staleness_threshold: args.metrics_staleness_threshold,
        leader,
        picker: args.scheduling.settings(&args.inference_objectives)?,
        picker_id: format!("picker-{}", std::process::id()),
        control_tls: args.control_tls.settings(),
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
