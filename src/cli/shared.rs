//! Flag groups several subcommands share: etcd, control-plane TLS, scheduling, discovery, the
//! serving ports, config, scraping and upstream's metric flags.

use std::path::PathBuf;

use clap::Args;
use switchyard::config::MetricFlags;
use switchyard::picker::RequestLimits;

use super::*;

#[derive(Args, Clone)]
pub(crate) struct EtcdArgs {
    /// etcd endpoints, comma-separated (e.g. http://127.0.0.1:2379).
    #[arg(long, value_delimiter = ',')]
    pub(crate) etcd_endpoints: Vec<String>,
    #[arg(long, env = "ETCD_USER")]
    pub(crate) etcd_user: Option<String>,
    #[arg(long, env = "ETCD_PASSWORD")]
    pub(crate) etcd_password: Option<String>,
    /// CA bundle for etcd's server certificate (TLS to etcd; default with TLS: the system roots).
    #[arg(long)]
    pub(crate) etcd_ca_file: Option<std::path::PathBuf>,
    /// Client certificate for etcd's `--client-cert-auth` (with --etcd-key-file).
    #[arg(long, requires = "etcd_key_file")]
    pub(crate) etcd_cert_file: Option<std::path::PathBuf>,
    /// Client key for --etcd-cert-file.
    #[arg(long, requires = "etcd_cert_file")]
    pub(crate) etcd_key_file: Option<std::path::PathBuf>,
    /// Use TLS to etcd even without a CA or client certificate (trusting the system roots).
    /// Implied by https:// endpoints and by any of the --etcd-*-file flags.
    #[arg(long)]
    pub(crate) etcd_tls: bool,
    /// Election name shared by the aggregator replicas.
    #[arg(long, default_value = "switchyard-aggregator")]
    pub(crate) election_name: String,
    /// Leadership lease TTL.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub(crate) lease_ttl: std::time::Duration,
}

impl EtcdArgs {
    /// `None` without etcd endpoints; an error when a TLS file cannot be read.
    pub(crate) fn settings(&self) -> anyhow::Result<Option<switchyard::etcd::EtcdSettings>> {
        use switchyard::etcd::{EtcdSettings, EtcdTls};
        if self.etcd_endpoints.is_empty() {
            return Ok(None);
        }
        let mut s = EtcdSettings::new(self.etcd_endpoints.clone(), self.election_name.clone(), "", self.lease_ttl);
        s.user = self.etcd_user.clone().zip(self.etcd_password.clone());
        let files = [&self.etcd_ca_file, &self.etcd_cert_file, &self.etcd_key_file];
        let https = self.etcd_endpoints.iter().any(|e| e.starts_with("https://"));
        if self.etcd_tls || https || files.iter().any(|f| f.is_some()) {
            s.tls = Some(EtcdTls::from_files(
                self.etcd_ca_file.as_deref(),
                self.etcd_cert_file.as_deref(),
                self.etcd_key_file.as_deref(),
            )?);
        }
        Ok(Some(s))
    }
}

/// mTLS on the control plane (aggregator port; picker and scraper clients): docs/security.md.
#[derive(Args, Clone)]
pub(crate) struct ControlTlsArgs {
    /// This process's certificate chain (PEM): the aggregator serves TLS with it, pickers and
    /// scrapers present it as their client certificate. Reloaded when the file changes.
    #[arg(long, requires = "control_plane_key")]
    pub(crate) control_plane_cert: Option<PathBuf>,
    /// The private key of --control-plane-cert (PEM).
    #[arg(long, requires = "control_plane_cert")]
    pub(crate) control_plane_key: Option<PathBuf>,
    /// CA bundle (PEM) peers are verified against: client certificates on the aggregator, the
    /// aggregator's certificate on pickers and scrapers (default there: the system roots).
    #[arg(long)]
    pub(crate) control_plane_ca: Option<PathBuf>,
    /// Pickers and scrapers: the name the aggregator's certificate must carry (default: the host
    /// they dial, usually the leader's IP from etcd).
    #[arg(long)]
    pub(crate) control_plane_server_name: Option<String>,
    /// Refuse to start without --control-plane-cert, --control-plane-key and --control-plane-ca;
    /// the aggregator then refuses clients without a certificate signed by the CA.
    #[arg(long)]
    pub(crate) control_plane_tls_require: bool,
}

impl ControlTlsArgs {
    pub(crate) fn settings(&self) -> switchyard::control_tls::ControlTls {
        switchyard::control_tls::ControlTls {
            cert: self.control_plane_cert.clone(),
            key: self.control_plane_key.clone(),
            ca: self.control_plane_ca.clone(),
            server_name: self.control_plane_server_name.clone(),
            require: self.control_plane_tls_require,
        }
    }
}

/// Scheduling flags of the roles that serve ext-proc (standalone, picker).
#[derive(Args)]
pub(crate) struct SchedulingArgs {
    /// Ignore the proxy's x-gateway-destination-endpoint-subset hint.
    #[arg(long, action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true", value_name = "BOOL")]
    pub(crate) disable_endpoint_subset_filter: bool,
    /// Request bodies above this size get a 413.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    pub(crate) max_request_body_bytes: usize,
    /// One request header (name and value) above this size gets a 431.
    #[arg(long, default_value_t = RequestLimits::default().max_header_bytes)]
    pub(crate) max_header_bytes: usize,
    /// Request headers (names and values) above this total get a 431.
    #[arg(long, default_value_t = RequestLimits::default().max_request_header_bytes)]
    pub(crate) max_request_header_bytes: usize,
    /// More request headers than this get a 431.
    #[arg(long, default_value_t = RequestLimits::default().max_request_headers)]
    pub(crate) max_request_headers: usize,
    /// Header bytes held by all requests not routed yet; a request past it gets a 429.
    #[arg(long, default_value_t = RequestLimits::default().max_pending_header_bytes)]
    pub(crate) max_pending_header_bytes: usize,
    /// A request body not complete this long after its headers gets a 408.
    #[arg(long, default_value = "60s", value_parser = parse_positive_duration)]
    pub(crate) request_body_timeout: std::time::Duration,
    /// Seed for scheduling randomness (default: random).
    #[arg(long)]
    pub(crate) seed: Option<u64>,
}

impl SchedulingArgs {
    pub(crate) fn settings(&self, objectives: &[String]) -> anyhow::Result<switchyard::picker::PickerSettings> {
        let mut s = switchyard::picker::PickerSettings {
            max_body_bytes: self.max_request_body_bytes,
            disable_subset_filter: self.disable_endpoint_subset_filter,
            objectives: switchyard::app::parse_objectives(objectives)?,
            limits: RequestLimits {
                max_header_bytes: self.max_header_bytes,
                max_request_header_bytes: self.max_request_header_bytes,
                max_request_headers: self.max_request_headers,
                max_pending_header_bytes: self.max_pending_header_bytes,
                request_body_timeout: self.request_body_timeout,
            },
            ..Default::default()
        };
        if let Some(seed) = self.seed {
            s.seed = seed;
        }
        Ok(s)
    }
}

/// Where the pool comes from (standalone, aggregator): exactly one of a static file, an
/// InferencePool, or a label selector with target ports.
#[derive(Args)]
pub(crate) struct DiscoveryArgs {
    /// Static endpoints file, watched for edits (see docs/standalone.md; `switchyard sim
    /// --endpoints-out` writes one).
    #[arg(long, conflicts_with_all = ["pool_name", "endpoint_selector"])]
    pub(crate) endpoints_file: Option<PathBuf>,
    /// InferencePool name: pods come from the cluster.
    #[arg(long, conflicts_with = "endpoint_selector")]
    pub(crate) pool_name: Option<String>,
    /// Namespace of the pool and its pods (default: env NAMESPACE, then `default`).
    #[arg(long)]
    pub(crate) pool_namespace: Option<String>,
    /// Group of the InferencePool (`inference.networking.x-k8s.io` selects the v1alpha2 pool).
    #[arg(long, default_value = "inference.networking.k8s.io")]
    pub(crate) pool_group: String,
    /// Pods by label selector instead of a pool: `k=v,k2=v2` (with --endpoint-target-ports).
    #[arg(long, requires = "endpoint_target_ports")]
    pub(crate) endpoint_selector: Option<String>,
    /// Target ports of the selected pods, comma-separated (1 to 8).
    #[arg(long, value_delimiter = ',', requires = "endpoint_selector")]
    pub(crate) endpoint_target_ports: Vec<u16>,
    /// kubeconfig file (default: env KUBECONFIG, then in-cluster config, then ~/.kube/config).
    #[arg(long, env = "KUBECONFIG")]
    pub(crate) kubeconfig: Option<PathBuf>,
    /// Scrape metrics on this port instead of the target port (pools with one target port).
    #[arg(long, default_value_t = 0)]
    pub(crate) model_server_metrics_port: u16,
    /// How often the endpoints file is read for edits.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub(crate) endpoints_file_poll: std::time::Duration,
}

impl DiscoveryArgs {
    /// The pool source the flags name (exactly one of file, pool, selector).
    pub(crate) fn pool(&self) -> Result<switchyard::discovery::PoolSource, switchyard::config::ConfigError> {
        use switchyard::discovery::PoolSource;
        use switchyard::discovery::kubernetes::{KubernetesOptions, PoolRef};
        if let Some(path) = &self.endpoints_file {
            return Ok(PoolSource::File { path: path.clone(), poll: self.endpoints_file_poll });
        }
        if self.pool_name.is_none() && self.endpoint_selector.is_none() {
            return Err(switchyard::config::ConfigError::invalid(
                "--pool-name",
                "set one of --pool-name, --endpoint-selector (with --endpoint-target-ports) or --endpoints-file",
            ));
        }
        let namespace = self
            .pool_namespace
            .clone()
            .filter(|n| !n.is_empty())
            .or_else(|| std::env::var("NAMESPACE").ok().filter(|n| !n.is_empty()))
            .unwrap_or_else(|| "default".into());
        let pool = match (&self.pool_name, &self.endpoint_selector) {
            (Some(name), _) => PoolRef::Pool { name: name.clone(), group: self.pool_group.clone() },
            (None, selector) => PoolRef::Selector {
                selector: selector.clone().unwrap_or_default(),
                target_ports: self.endpoint_target_ports.clone(),
            },
        };
        Ok(PoolSource::Kubernetes(KubernetesOptions {
            namespace,
            pool,
            kubeconfig: self.kubeconfig.clone(),
            metrics_port: (self.model_server_metrics_port != 0).then_some(self.model_server_metrics_port),
        }))
    }
}

/// The control-plane TLS flags, hidden on standalone so that giving one is refused with the
/// reason rather than clap's "unexpected argument".
#[derive(Args)]
pub(crate) struct NoControlTlsArgs {
    #[arg(long = "control-plane-cert", hide = true)]
    cert: Option<PathBuf>,
    #[arg(long = "control-plane-key", hide = true)]
    key: Option<PathBuf>,
    #[arg(long = "control-plane-ca", hide = true)]
    ca: Option<PathBuf>,
    #[arg(long = "control-plane-server-name", hide = true)]
    server_name: Option<String>,
    #[arg(long = "control-plane-tls-require", hide = true)]
    require: bool,
}

impl NoControlTlsArgs {
    pub(crate) fn refuse(&self) -> Result<(), switchyard::config::ConfigError> {
        let given = [
            ("--control-plane-cert", self.cert.is_some()),
            ("--control-plane-key", self.key.is_some()),
            ("--control-plane-ca", self.ca.is_some()),
            ("--control-plane-server-name", self.server_name.is_some()),
            ("--control-plane-tls-require", self.require),
        ];
        match given.iter().find(|(_, set)| *set) {
            None => Ok(()),
            Some((flag, _)) => Err(switchyard::config::ConfigError::invalid(
                *flag,
                "standalone has no control-plane port (its roles talk in-process); the --control-plane-* flags \
                 apply to `switchyard aggregator`, `picker` and `scraper` (docs/security.md)",
            )),
        }
    }
}

/// Where the picker serves (upstream's flag names and ports).
#[derive(Args)]
pub(crate) struct ServeArgs {
    /// ext-proc gRPC port.
    #[arg(long, default_value_t = 9002)]
    pub(crate) grpc_port: u16,
    /// gRPC health port.
    #[arg(long, default_value_t = 9003)]
    pub(crate) grpc_health_port: u16,
    /// Prometheus metrics port.
    #[arg(long, default_value_t = 9090)]
    pub(crate) metrics_port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    pub(crate) listen_host: std::net::IpAddr,
    /// TLS on the ext-proc port (self-signed unless --cert-path is set).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) secure_serving: bool,
    /// Directory with tls.crt and tls.key.
    #[arg(long)]
    pub(crate) cert_path: Option<PathBuf>,
    /// Reload the certificate when the files in --cert-path change.
    #[arg(long)]
    pub(crate) enable_cert_reload: bool,
    /// Connections that have not completed TLS (if any), then sent the HTTP/2 preface, within
    /// this are closed (ext-proc and health ports).
    #[arg(long, default_value = "10s", value_parser = parse_positive_duration)]
    pub(crate) handshake_timeout: std::time::Duration,
}

impl ServeArgs {
    pub(crate) fn options(&self) -> switchyard::app::ServeOptions {
        use switchyard::app::Tls;
        switchyard::app::ServeOptions {
            host: self.listen_host,
            grpc_port: self.grpc_port,
            grpc_health_port: self.grpc_health_port,
            metrics_port: self.metrics_port,
            tls: match (self.secure_serving, &self.cert_path) {
                (false, _) => Tls::Plaintext,
                (true, None) => Tls::SelfSigned,
                (true, Some(dir)) => Tls::Files { dir: dir.clone(), reload: self.enable_cert_reload },
            },
            handshake_timeout: self.handshake_timeout,
            metrics_auth: Default::default(),
        }
    }
}

/// `--config-file` / `--config-text` (EndpointPickerConfig).
#[derive(Args)]
pub(crate) struct ConfigArgs {
    /// EndpointPickerConfig file.
    #[arg(long)]
    pub(crate) config_file: Option<PathBuf>,
    /// Inline EndpointPickerConfig.
    #[arg(long)]
    pub(crate) config_text: Option<String>,
}

/// How endpoints are scraped.
#[derive(Args)]
pub(crate) struct ScrapeArgs {
    /// Metrics polling period per endpoint.
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    pub(crate) refresh_metrics_interval: std::time::Duration,
    /// Per-scrape timeout.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub(crate) scrape_timeout: std::time::Duration,
}

/// Upstream's metric-mapping flags; they override the default engine's specs (empty disables).
#[derive(Args, Clone, Default)]
pub(crate) struct MetricFlagArgs {
    #[arg(long)]
    pub(crate) total_queued_requests_metric: Option<String>,
    #[arg(long)]
    pub(crate) total_running_requests_metric: Option<String>,
    #[arg(long)]
    pub(crate) kv_cache_usage_percentage_metric: Option<String>,
    #[arg(long)]
    pub(crate) lora_info_metric: Option<String>,
    #[arg(long)]
    pub(crate) cache_info_metric: Option<String>,
    /// Scheme of model-server metrics (http, https) unless the config's metrics-data-source sets it.
    #[arg(long)]
    pub(crate) model_server_metrics_scheme: Option<String>,
    /// Path of model-server metrics unless the config's metrics-data-source sets it.
    #[arg(long)]
    pub(crate) model_server_metrics_path: Option<String>,
    /// Accept self-signed model-server certificates (default true) unless the config sets it.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub(crate) model_server_metrics_https_insecure_skip_verify: Option<bool>,
}

impl MetricFlagArgs {
    pub(crate) fn to_flags(&self) -> MetricFlags {
        MetricFlags {
            total_queued_requests_metric: self.total_queued_requests_metric.clone(),
            total_running_requests_metric: self.total_running_requests_metric.clone(),
            kv_cache_usage_percentage_metric: self.kv_cache_usage_percentage_metric.clone(),
            lora_info_metric: self.lora_info_metric.clone(),
            cache_info_metric: self.cache_info_metric.clone(),
            metrics_scheme: self.model_server_metrics_scheme.clone(),
            metrics_path: self.model_server_metrics_path.clone(),
            metrics_insecure_skip_verify: self.model_server_metrics_https_insecure_skip_verify,
        }
    }
}
