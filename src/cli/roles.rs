//! The arguments of each role's subcommand.

use clap::Args;

use super::*;

#[derive(Args)]
pub(crate) struct AggregatorArgs {
    #[arg(long, default_value = "0.0.0.0")]
    pub(crate) listen_host: std::net::IpAddr,
    /// Control-plane gRPC port (pickers watch snapshots here).
    #[arg(long, default_value_t = 9010)]
    pub(crate) control_port: u16,
    #[arg(long, default_value_t = 9013)]
    pub(crate) grpc_health_port: u16,
    /// Prometheus /metrics: leadership, snapshot, scrape latency and errors per endpoint.
    #[arg(long, default_value_t = 9014)]
    pub(crate) metrics_port: u16,
    /// Address pickers should use for this replica (default: the bound control address).
    #[arg(long)]
    pub(crate) advertise_address: Option<String>,
    #[command(flatten)]
    pub(crate) discovery: DiscoveryArgs,
    /// Leave scraping to `switchyard scraper` processes (rendezvous-hashed assignment).
    #[arg(long)]
    pub(crate) remote_scrapers: bool,
    /// Connections to the control and health ports that have not sent the HTTP/2 preface within
    /// this are closed.
    #[arg(long, default_value = "10s", value_parser = parse_positive_duration)]
    pub(crate) handshake_timeout: std::time::Duration,
    #[command(flatten)]
    pub(crate) etcd: EtcdArgs,
    #[command(flatten)]
    pub(crate) control_tls: ControlTlsArgs,
    #[command(flatten)]
    pub(crate) metric_flags: MetricFlagArgs,
    #[command(flatten)]
    pub(crate) config: ConfigArgs,
    #[command(flatten)]
    pub(crate) scrape: ScrapeArgs,
}

#[derive(Args)]
pub(crate) struct ScraperArgs {
    /// Aggregator control addresses (when etcd is not used), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub(crate) aggregators: Vec<String>,
    /// Stable identity of this scraper (default: scraper-<pid>).
    #[arg(long)]
    pub(crate) scraper_id: Option<String>,
    #[arg(long, default_value = "0.0.0.0")]
    pub(crate) listen_host: std::net::IpAddr,
    /// Prometheus /metrics: scrape latency and errors per endpoint, assignment, dropped reports.
    #[arg(long, default_value_t = 9015)]
    pub(crate) metrics_port: u16,
    #[command(flatten)]
    pub(crate) etcd: EtcdArgs,
    #[command(flatten)]
    pub(crate) control_tls: ControlTlsArgs,
    #[command(flatten)]
    pub(crate) metric_flags: MetricFlagArgs,
    #[command(flatten)]
    pub(crate) config: ConfigArgs,
    #[command(flatten)]
    pub(crate) scrape: ScrapeArgs,
}

#[derive(Args)]
pub(crate) struct PickerArgs {
    /// Aggregator control addresses to try (when etcd is not used), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub(crate) aggregators: Vec<String>,
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub(crate) metrics_staleness_threshold: std::time::Duration,
    #[arg(long = "inference-objective")]
    pub(crate) inference_objectives: Vec<String>,
    #[arg(long, default_value_t = 30)]
    pub(crate) grace_period_secs: u64,
    #[command(flatten)]
    pub(crate) scheduling: SchedulingArgs,
    #[command(flatten)]
    pub(crate) etcd: EtcdArgs,
    #[command(flatten)]
    pub(crate) control_tls: ControlTlsArgs,
    #[command(flatten)]
    pub(crate) serve: ServeArgs,
    #[command(flatten)]
    pub(crate) config: ConfigArgs,
}

#[derive(Args)]
pub(crate) struct GatewayArgs {
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub(crate) listen: std::net::SocketAddr,
    /// ext-proc server URLs (plaintext h2c), comma-separated; streams are spread round-robin.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:9002")]
    pub(crate) ext_proc: Vec<String>,
    /// Static endpoints file: the pool used when failing open (and by --round-robin).
    #[arg(long)]
    pub(crate) endpoints_file: PathBuf,
    /// `open` sends to a random pool endpoint when ext-proc is unreachable; `close` answers 503.
    #[arg(long, default_value = "open", value_parser = ["open", "close"])]
    pub(crate) failure_mode: String,
    /// How long to wait for each ext-proc answer.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) message_timeout: std::time::Duration,
    /// Ignore ext-proc and round-robin over the pool (a baseline).
    #[arg(long)]
    pub(crate) round_robin: bool,
}

/// Flags follow upstream's EPP names where they exist.
#[derive(Args)]
pub(crate) struct StandaloneArgs {
    #[command(flatten)]
    pub(crate) discovery: DiscoveryArgs,
    /// Metrics older than this are not trusted for load scoring.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub(crate) metrics_staleness_threshold: std::time::Duration,
    /// Accepted for compatibility: health is always served on the ext-proc port too.
    #[arg(long)]
    pub(crate) health_checking: bool,
    /// InferenceObjective priorities, NAME=PRIORITY (repeatable); the cluster's
    /// InferenceObjectives win for the names they define.
    #[arg(long = "inference-objective")]
    pub(crate) inference_objectives: Vec<String>,
    #[command(flatten)]
    pub(crate) scheduling: SchedulingArgs,
    /// Seconds to drain in-flight requests on SIGTERM/SIGINT.
    #[arg(long, default_value_t = 30)]
    pub(crate) grace_period_secs: u64,
    #[command(flatten)]
    pub(crate) metric_flags: MetricFlagArgs,
    #[command(flatten)]
    pub(crate) serve: ServeArgs,
    #[command(flatten)]
    pub(crate) config: ConfigArgs,
    #[command(flatten)]
    pub(crate) scrape: ScrapeArgs,
    #[command(flatten)]
    pub(crate) control_tls: NoControlTlsArgs,
}
