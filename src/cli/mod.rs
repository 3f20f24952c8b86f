//! Command-line arguments of the `switchyard` binary (upstream EPP flag names where they exist):
//! the command line and its subcommands here, each role's arguments in `roles`, the flag groups
//! several roles share in `shared`, the tools' arguments in `tool_args`.

mod roles;
mod shared;
mod tool_args;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use switchyard::tools;

pub(crate) use roles::*;
pub(crate) use shared::*;
pub(crate) use tool_args::*;

#[derive(Parser)]
#[command(name = "switchyard", version, about = "Endpoint Picker for LLM inference, as a distributed control plane")]
pub(crate) struct Cli {
    /// Log filter (RUST_LOG syntax), e.g. `info` or `switchyard=debug`; wins over --v.
    #[arg(long, global = true, env = "SWITCHYARD_LOG")]
    pub(crate) log: Option<String>,
    /// Log verbosity as upstream (2 default, 3-4 debug, 5 trace; 0-1 warnings only).
    #[arg(long = "v", global = true, value_name = "LEVEL")]
    pub(crate) verbosity: Option<i32>,
    /// Log format: `console` (default) or `json` (upstream's Helm chart passes json).
    #[arg(long, global = true, value_parser = ["json", "console"])]
    pub(crate) zap_encoder: Option<String>,
    /// Upstream's tracing switch: `--tracing=false` turns OpenTelemetry traces off whatever the
    /// OTEL_* variables say; `--tracing` alone exports over OTLP to the default endpoint
    /// (docs/tracing.md).
    #[arg(long, global = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub(crate) tracing: Option<bool>,
    /// Upstream's Kubernetes-lease HA; refused: Switchyard's HA is aggregator replicas elected
    /// through etcd (see docs/distributed.md).
    #[arg(long, global = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub(crate) ha_enable_leader_election: Option<bool>,
    /// Load the config and flags, print a summary and exit (0 valid, 2 invalid); binds nothing,
    /// connects to nothing.
    #[arg(long, global = true)]
    pub(crate) check_config: bool,
    /// Guard `/metrics` and `/debug/*` on every role's metrics port with a bearer token (read
    /// from --metrics-token-file at each request). Upstream's flag; default false here: Switchyard
    /// does no Kubernetes TokenReview, and a token needs a Secret you create (docs/operations.md).
    #[arg(long, global = true, action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true", value_name = "BOOL")]
    pub(crate) metrics_endpoint_auth: bool,
    /// File holding the bearer token for --metrics-endpoint-auth (re-read at each request, so a
    /// rotated Secret applies without a restart).
    #[arg(long, global = true)]
    pub(crate) metrics_token_file: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

impl Cli {
    /// The log filter: --log, else from --v, else info.
    pub(crate) fn log_filter(&self) -> String {
        match (&self.log, self.verbosity) {
            (Some(f), _) => f.clone(),
            (None, Some(v)) if v >= 5 => "trace".into(),
            (None, Some(v)) if v >= 3 => "info,switchyard=debug".into(),
            (None, Some(v)) if (0..2).contains(&v) => "warn".into(),
            _ => "info".into(),
        }
    }
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// All roles in one process: scrapers, aggregator and the ext-proc picker (the simplest deployment).
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
    /// The InferencePool and InferenceObjective CRDs, generated from the Rust types: printed, or
    /// written one file per CRD into a directory (the Helm chart's `crds/`).
    Crds(CrdsArgs),
    /// Benchmarks (results go to docs/benchmarks.md).
    #[command(subcommand)]
    Bench(tools::bench::BenchCommand),
}

pub(crate) fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    switchyard::scheduling::config::parse_duration(s).ok_or_else(|| format!("invalid duration {s:?} (e.g. 50ms, 2s)"))
}

/// A duration that must not be zero (a zero deadline would refuse everything).
pub(crate) fn parse_positive_duration(s: &str) -> Result<std::time::Duration, String> {
    parse_duration(s).and_then(|d| if d.is_zero() { Err(format!("{s:?} must be more than zero")) } else { Ok(d) })
}
