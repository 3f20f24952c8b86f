//! Wiring of the distributed roles; only builds and spawns.
//!
//! - `aggregator`: follows its discovery source, campaigns through etcd (or leads alone without
//!   etcd), scrapes its endpoints with its own scraper actors or hands them to remote scrapers,
//!   publishes snapshots stamped with the etcd term and serves them to pickers on the
//!   control-plane port. Only the leader publishes; readiness = leading, synced, published.
//! - `picker`: follows the leader's snapshot stream, reports its load, serves ext-proc from what
//!   it holds.
//! - `scraper`: scrapes what the leader assigns and streams the results back.
//!
//! With control-plane TLS settings ([`crate::control_tls`]) the aggregator's control port and
//! the picker's and scraper's connections to it use TLS, with the files reloaded as they change.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};
use tonic::transport::Server;

use crate::aggregator::election;
use crate::aggregator::serve::{ControlPlaneRoutes, ControlPlaneService, Subscribers};
use crate::app::{self, ControlPlane, PickerServers, ServeOptions};
use crate::config::{self, MetricFlags};
use crate::control_tls::{ClientTls, ControlTls, PLAINTEXT_REFUSAL, ServerTls};
use crate::discovery::PoolSource;
use crate::etcd::EtcdSettings;
use crate::health::{HealthService, Readiness};
use crate::metrics_auth::MetricsAuth;
use crate::model::Snapshot;
use crate::picker::subscribe::{self, LeaderSource};
use crate::picker::{Picker, PickerMetrics, PickerSettings};
use crate::preface;
use crate::scheduling::{Scheduler, SchedulerConfig};
use crate::scraper::remote::{self, ScraperRoleMetrics};
use crate::scraper::{AssignEndpoints, FetchSettings, ScrapeMetrics, ScrapeSettings, ScrapeSupervisor};

#[derive(Debug, Clone)]
pub struct AggregatorOptions {
    pub host: std::net::IpAddr,
    pub control_port: u16,
    pub grpc_health_port: u16,
    /// Prometheus `/metrics` (leadership, snapshot, scrape latency and errors).
    pub metrics_port: u16,
    /// Address pickers use to reach this replica (stored as the election value).
    pub advertise: Option<String>,
    pub config_file: Option<PathBuf>,
    pub config_text: Option<String>,
    pub pool: PoolSource,
    pub metric_flags: MetricFlags,
    pub refresh_metrics_interval: Duration,
    pub scrape_timeout: Duration,
    /// `None`: lead alone (single replica).
    pub etcd: Option<EtcdSettings>,
    /// Endpoints are scraped by `switchyard scraper` processes (rendezvous-hashed across them)
    /// instead of by this process.
    pub remote_scrapers: bool,
    /// Connections to the control and health ports must send the HTTP/2 preface within this.
    pub handshake_timeout: Duration,
    /// Who may read `/metrics` and use `/debug/*` (`--metrics-endpoint-auth`).
    pub metrics_auth: MetricsAuth,
    /// TLS on the control port (default: plaintext).
    pub control_tls: ControlTls,
    /// A picker whose snapshot stream stays full this long is cut off (it reconnects).
    pub slow_subscriber_timeout: Duration,
}

impl AggregatorOptions {
    /// A single replica on loopback with free ports, scraping `endpoints_file` itself, no etcd
    /// (tools and tests).
    pub fn local(endpoints_file: PathBuf) -> Self {
        AggregatorOptions {
            host: [127, 0, 0, 1].into(),
            control_port: 0,
            grpc_health_port: 0,
            metrics_port: 0,
            advertise: None,
            config_file: None,
            config_text: None,
            pool: PoolSource::file(endpoints_file),
            metric_flags: MetricFlags::default(),
            refresh_metrics_interval: Duration::from_millis(50),
            scrape_timeout: Duration::from_secs(1),
            etcd: None,
            remote_scrapers: false,
            handshake_timeout: crate::preface::DEFAULT_TIMEOUT,
            metrics_auth: MetricsAuth::disabled(),
            control_tls: ControlTls::default(),
            slow_subscriber_timeout: crate::aggregator::serve::SLOW_AFTER,
        }
    }
}

pub struct AggregatorHandle {
    pub control_addr: SocketAddr,
    pub health_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub leading: watch::Receiver<bool>,
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    control_plane: ControlPlane,
}

impl AggregatorHandle {
    /// Resigns (the next replica takes over at once) and stops serving.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(grace, futures::future::join_all(self.tasks)).await;
        self.control_plane.stop();
    }
}

pub async fn start_aggregator(opts: AggregatorOptions) -> anyhow::Result<AggregatorHandle> {
    crate::ensure_crypto_provider();
    let cfg = config::load(opts.config_file.as_deref(), opts.config_text.as_deref())?;
    let resolver = app::resolver(&cfg, &opts.metric_flags)?;
    let server_tls = ServerTls::load(&opts.control_tls).map_err(config::ConfigError::from)?;

    let control = app::bind(opts.host, opts.control_port, "--control-port").await?;
    let health_listener = app::bind(opts.host, opts.grpc_health_port, "--grpc-health-port").await?;
    let metrics_listener = app::bind(opts.host, opts.metrics_port, "--metrics-port").await?;
    let (control_addr, health_addr, metrics_addr) =
        (control.local_addr()?, health_listener.local_addr()?, metrics_listener.local_addr()?);
    let mut metrics_registry = Registry::default();
    crate::telemetry::register_metrics(&mut metrics_registry);
    let role_metrics = crate::aggregator::metrics::AggregatorMetrics::new(&mut metrics_registry);
    let settings = ScrapeSettings {
        interval: opts.refresh_metrics_interval,
        fetch: FetchSettings {
            timeout: opts.scrape_timeout,
            insecure_skip_verify: resolver.source.insecure_skip_verify,
            ..FetchSettings::default()
        },
    };
    let control_plane =
        ControlPlane::start(None, &opts.pool, resolver, &settings, opts.remote_scrapers, &mut metrics_registry).await?;
    let outputs = control_plane.outputs.clone();
    crate::aggregator::metrics::AggregatorMetrics::register_routed(&mut metrics_registry, &outputs.routed);
    crate::aggregator::metrics::AggregatorMetrics::register_metrics_age(&mut metrics_registry, &outputs);
    outputs.gauges.register(&mut metrics_registry);

    let (stop, stop_rx) = watch::channel(false);
    let handshake = opts.handshake_timeout;
    let mut tasks = Vec::new();
    // Election → aggregator.
    let (events_tx, events) = mpsc::channel(16);
    let mut etcd = opts.etcd.clone();
    if let Some(s) = &mut etcd {
        s.value = opts.advertise.clone().unwrap_or_else(|| control_addr.to_string());
        let (s, rx) = (s.clone(), stop_rx.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = election::run_etcd(s, events_tx, rx).await {
                tracing::error!(error = %e, "election stopped");
            }
        }));
    } else {
        tasks.push(tokio::spawn(election::run_static(events_tx, stop_rx.clone())));
    }
    tokio::spawn(crate::aggregator::follow_election(events, control_plane.aggregator.clone()));
    let readiness = Arc::new(Readiness::default());
    tokio::spawn(crate::aggregator::track_readiness(outputs.clone(), readiness.clone(), role_metrics));
    let svc = ControlPlaneService {
        snapshots: outputs.snapshots.clone(),
        routed: outputs.routed.clone(),
        leading: outputs.leading.clone(),
        etcd: etcd.clone(),
        remote: control_plane.remote.clone(),
        reports: Some(control_plane.aggregator.clone().recipient()),
        subscribers: Arc::new(Subscribers::new(opts.slow_subscriber_timeout)),
        open_streams: outputs.gauges.subscribers.clone(),
    };
    crate::aggregator::metrics::AggregatorMetrics::register_subscribers(&mut metrics_registry, &svc.subscribers);
    let signal = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let router = Server::builder().add_service(ControlPlaneRoutes::new(svc, 256 * 1024 * 1024));
    if let Some(server_tls) = &server_tls {
        tasks.push(tokio::spawn(server_tls.clone().reload_loop(stop_rx.clone())));
    }
    let tls_stop = stop_rx.clone();
    tasks.push(tokio::spawn(async move {
        let r = match server_tls {
            None => {
                let incoming = preface::deadline(crate::nodelay_incoming(control), handshake);
                router.serve_with_incoming_shutdown(incoming, signal).await
            }
            Some(server_tls) => {
                let config = move || server_tls.config();
                let refusal = Some(Arc::from(PLAINTEXT_REFUSAL));
                let tls = crate::picker::tls::incoming_with(control, config, tls_stop, handshake, refusal);
                router.serve_with_incoming_shutdown(preface::deadline(tls, handshake), signal).await
            }
        };
        if let Err(e) = r {
            tracing::error!(error = %e, "control-plane server failed");
        }
    }));
    let health = tonic_health::pb::health_server::HealthServer::new(HealthService { readiness });
    let signal = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    tasks.push(tokio::spawn(async move {
        let _ = Server::builder()
            .add_service(health)
            .serve_with_incoming_shutdown(
                preface::deadline(crate::nodelay_incoming(health_listener), handshake),
                signal,
            )
            .await;
    }));
    let signal = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    tasks.push(app::serve_metrics(metrics_listener, Arc::new(metrics_registry), opts.metrics_auth.clone(), signal));
    tracing::info!(%control_addr, %health_addr, %metrics_addr, "aggregator serving");
    Ok(AggregatorHandle {
        control_addr,
        health_addr,
        metrics_addr,
        leading: outputs.leading,
        snapshots: outputs.snapshots,
        stop,
        tasks,
        control_plane,
    })
}

#[derive(Debug, Clone)]
pub struct PickerOptions {
    pub serve: ServeOptions,
    pub config_file: Option<PathBuf>,
    pub config_text: Option<String>,
    pub metrics_staleness_threshold: Duration,
    pub leader: LeaderSource,
    pub picker: PickerSettings,
    pub picker_id: String,
    /// TLS to the aggregators' control port (default: plaintext).
    pub control_tls: ControlTls,
}

impl PickerOptions {
    /// A plaintext picker on loopback with free ports and the default config, following the
    /// aggregator at `aggregator` (tools and tests).
    pub fn local(aggregator: SocketAddr, picker_id: &str, seed: u64) -> Self {
        PickerOptions {
            serve: ServeOptions {
                host: [127, 0, 0, 1].into(),
                grpc_port: 0,
                grpc_health_port: 0,
                metrics_port: 0,
                tls: crate::app::Tls::Plaintext,
                handshake_timeout: crate::preface::DEFAULT_TIMEOUT,
                metrics_auth: MetricsAuth::disabled(),
            },
            config_file: None,
            config_text: None,
            metrics_staleness_threshold: Duration::from_secs(2),
            leader: LeaderSource::Addresses(vec![aggregator.to_string()]),
            picker: PickerSettings { seed, ..PickerSettings::default() },
            picker_id: picker_id.to_string(),
            control_tls: ControlTls::default(),
        }
    }
}

pub struct PickerHandle {
    pub servers: PickerServers,
    pub picker: Arc<Picker>,
    pub readiness: Arc<Readiness>,
}

impl PickerHandle {
    pub async fn shutdown(self, grace: Duration) {
        self.readiness.set_draining();
        let _ = self.servers.stop.send(true);
        let _ = tokio::time::timeout(grace, futures::future::join_all(self.servers.servers)).await;
    }
}

pub async fn start_picker(opts: PickerOptions) -> anyhow::Result<PickerHandle> {
    crate::ensure_crypto_provider();
    let cfg = config::load(opts.config_file.as_deref(), opts.config_text.as_deref())?;
    let scheduler = Scheduler::new(SchedulerConfig::build(&cfg, opts.metrics_staleness_threshold)?);
    let client_tls = ClientTls::load(&opts.control_tls).map_err(config::ConfigError::from)?;
    let mut metrics_registry = Registry::default();
    crate::telemetry::register_metrics(&mut metrics_registry);
    let picker = Arc::new(Picker::new(scheduler, opts.picker.clone(), PickerMetrics::new(&mut metrics_registry)));
    let readiness = Arc::new(Readiness::default());
    app::follow_snapshots(picker.clone(), readiness.clone());
    let servers = app::serve_picker(picker.clone(), readiness.clone(), metrics_registry, &opts.serve).await?;
    if let Some(client_tls) = &client_tls {
        tokio::spawn(client_tls.clone().reload_loop(servers.stop.subscribe()));
    }
    tokio::spawn(subscribe::follow_leader(
        opts.leader.clone(),
        client_tls.clone(),
        opts.picker_id.clone(),
        picker.clone(),
        servers.stop.subscribe(),
    ));
    tokio::spawn(crate::picker::report::run(
        picker.clone(),
        opts.leader.clone(),
        client_tls,
        opts.picker_id.clone(),
        crate::picker::report::ReportTiming::default(),
        servers.stop.subscribe(),
    ));
    tracing::info!(ext_proc = %servers.ext_proc_addr, "picker serving");
    Ok(PickerHandle { servers, picker, readiness })
}

#[derive(Debug, Clone)]
pub struct ScraperOptions {
    pub leader: LeaderSource,
    pub scraper_id: String,
    /// Where `/metrics` is served (port 0: any free port).
    pub metrics_addr: SocketAddr,
    pub config_file: Option<PathBuf>,
    pub config_text: Option<String>,
    pub metric_flags: MetricFlags,
    pub refresh_metrics_interval: Duration,
    pub scrape_timeout: Duration,
    /// Who may read `/metrics` and use `/debug/*` (`--metrics-endpoint-auth`).
    pub metrics_auth: MetricsAuth,
    /// TLS to the aggregators' control port (default: plaintext).
    pub control_tls: ControlTls,
}

impl ScraperOptions {
    /// A plaintext scraper following `leader`, its `/metrics` on a free loopback port, the
    /// default config, scraping every 50 ms (tools and tests).
    pub fn local(leader: LeaderSource, scraper_id: &str) -> Self {
        ScraperOptions {
            leader,
            scraper_id: scraper_id.to_string(),
            metrics_addr: ([127, 0, 0, 1], 0).into(),
            config_file: None,
            config_text: None,
            metric_flags: MetricFlags::default(),
            refresh_metrics_interval: Duration::from_millis(50),
            scrape_timeout: Duration::from_secs(1),
            metrics_auth: MetricsAuth::disabled(),
            control_tls: ControlTls::default(),
        }
    }
}

pub struct ScraperHandle {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    metrics_server: tokio::task::JoinHandle<()>,
    pub metrics_addr: SocketAddr,
    pub supervisor: Addr<ScrapeSupervisor>,
}

impl ScraperHandle {
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        let _ = self.metrics_server.await;
        self.supervisor.do_send(AssignEndpoints(Vec::new()));
    }
}

/// The scraper role: connects to the leader, scrapes what it is assigned, streams the results.
pub async fn start_scraper(opts: ScraperOptions) -> anyhow::Result<ScraperHandle> {
    crate::ensure_crypto_provider();
    let cfg = config::load(opts.config_file.as_deref(), opts.config_text.as_deref())?;
    let resolver = app::resolver(&cfg, &opts.metric_flags)?;
    let client_tls = ClientTls::load(&opts.control_tls).map_err(config::ConfigError::from)?;
    let mut metrics_registry = Registry::default();
    crate::telemetry::register_metrics(&mut metrics_registry);
    let role_metrics = ScraperRoleMetrics::new(&mut metrics_registry);
    let scrape_metrics = ScrapeMetrics::new(&mut metrics_registry);
    let metrics_listener = app::bind(opts.metrics_addr.ip(), opts.metrics_addr.port(), "--metrics-port").await?;
    let metrics_addr = metrics_listener.local_addr()?;
    let (sink, reports) = remote::sink(&opts.scraper_id, &role_metrics);
    let settings = ScrapeSettings {
        interval: opts.refresh_metrics_interval,
        fetch: FetchSettings {
            timeout: opts.scrape_timeout,
            insecure_skip_verify: resolver.source.insecure_skip_verify,
            ..FetchSettings::default()
        },
    };
    let supervisor = ScrapeSupervisor::with_metrics(resolver.registry, &settings, sink, scrape_metrics)?.start();
    let (stop, stop_rx) = watch::channel(false);
    let metrics_server = {
        let mut rx = stop_rx.clone();
        let signal = async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        app::serve_metrics(metrics_listener, Arc::new(metrics_registry), opts.metrics_auth.clone(), signal)
    };
    if let Some(client_tls) = &client_tls {
        tokio::spawn(client_tls.clone().reload_loop(stop_rx.clone()));
    }
    let task = tokio::spawn(remote::run(
        opts.leader.clone(),
        client_tls,
        opts.scraper_id.clone(),
        reports,
        supervisor.clone(),
        role_metrics,
        stop_rx,
    ));
    tracing::info!(%metrics_addr, "scraper serving metrics");
    Ok(ScraperHandle { stop, task, metrics_server, metrics_addr, supervisor })
}
