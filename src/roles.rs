//! Wiring of the distributed roles.
//!
//! - `aggregator`: campaigns through etcd (or leads alone without etcd), scrapes its endpoints
//!   with its own scraper actors, publishes snapshots stamped with the etcd term, serves them to
//!   pickers on the control-plane port. Only the leader publishes; readiness = leading with a
//!   snapshot.
//! - `picker`: follows the leader's snapshot stream and serves ext-proc from what it holds.
//!
//! Not yet: remote scrapers (`ControlPlane.Scrape`) and picker load reports (`Report`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use anyhow::Context as _;
use prometheus_client::registry::Registry;
use switchyard_proto::v1::control_plane_server::ControlPlaneServer;
use tokio::sync::{mpsc, watch};
use tonic::transport::Server;

use crate::aggregator::election::{self, EtcdSettings, LeadershipEvent};
use crate::aggregator::serve::{ControlPlaneService, RemoteScraping};
use crate::aggregator::{Aggregator, EndpointsChanged, LeadershipAcquired, LeadershipLost};
use crate::app::{self, PickerServers, ServeOptions};
use crate::config::{self, MetricFlags};
use crate::discovery::StaticEndpoints;
use crate::model::Snapshot;
use crate::picker::health::{HealthService, Readiness};
use crate::picker::subscribe::{self, LeaderSource};
use crate::picker::{Picker, PickerMetrics, PickerSettings};
use crate::protocol::ScrapeSink;
use crate::scheduling::{Scheduler, SchedulerConfig};
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
    pub endpoints_file: PathBuf,
    pub metric_flags: MetricFlags,
    pub refresh_metrics_interval: Duration,
    pub scrape_timeout: Duration,
    /// `None`: lead alone (single replica).
    pub etcd: Option<EtcdSettings>,
    /// Endpoints are scraped by `switchyard scraper` processes (rendezvous-hashed across them)
    /// instead of by this process.
    pub remote_scrapers: bool,
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
            endpoints_file,
            metric_flags: MetricFlags::default(),
            refresh_metrics_interval: Duration::from_millis(50),
            scrape_timeout: Duration::from_secs(1),
            etcd: None,
            remote_scrapers: false,
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
    _actors: (Addr<Aggregator>, Option<Addr<ScrapeSupervisor>>),
}

impl AggregatorHandle {
    /// Resigns (the next replica takes over at once) and stops serving.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(grace, futures::future::join_all(self.tasks)).await;
        crate::app::stop_actors(&self._actors.0, self._actors.1.as_ref());
    }
}

pub async fn start_aggregator(opts: AggregatorOptions) -> anyhow::Result<AggregatorHandle> {
    crate::ensure_crypto_provider();
    let cfg = config::load(opts.config_file.as_deref(), opts.config_text.as_deref())?;
    let registry = Arc::new(cfg.engine_registry(&opts.metric_flags)?);
    let source = cfg.metrics_data_source()?;
    let endpoints = StaticEndpoints::load(&opts.endpoints_file)?.resolve(&registry, &source)?;

    let control = tokio::net::TcpListener::bind(SocketAddr::new(opts.host, opts.control_port))
        .await
        .context("cannot bind the control port")?;
    let health_listener = tokio::net::TcpListener::bind(SocketAddr::new(opts.host, opts.grpc_health_port))
        .await
        .context("cannot bind the health port")?;
    let metrics_listener = tokio::net::TcpListener::bind(SocketAddr::new(opts.host, opts.metrics_port))
        .await
        .context("cannot bind the metrics port")?;
    let (control_addr, health_addr, metrics_addr) =
        (control.local_addr()?, health_listener.local_addr()?, metrics_listener.local_addr()?);
    let mut metrics_registry = Registry::default();
    let role_metrics = crate::aggregator::metrics::AggregatorMetrics::new(&mut metrics_registry);
    let scrape_metrics = ScrapeMetrics::new(&mut metrics_registry);

    let (aggregator, outputs) = Aggregator::follower(Duration::from_millis(5));
    crate::aggregator::metrics::AggregatorMetrics::register_routed(&mut metrics_registry, &outputs.routed);
    let aggregator = aggregator.start();
    let sink = ScrapeSink { scraped: aggregator.clone().recipient(), failed: aggregator.clone().recipient() };
    let settings = ScrapeSettings {
        interval: opts.refresh_metrics_interval,
        fetch: FetchSettings { timeout: opts.scrape_timeout, ..FetchSettings::default() },
    };
    aggregator.do_send(EndpointsChanged(endpoints.clone()));
    let (supervisor, remote) = if opts.remote_scrapers {
        (None, Some(RemoteScraping::new(endpoints, sink)))
    } else {
        let supervisor = ScrapeSupervisor::with_metrics(registry, &settings, sink, scrape_metrics)?.start();
        supervisor.do_send(AssignEndpoints(endpoints));
        (Some(supervisor), None)
    };

    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    // Election → aggregator.
    let (events_tx, mut events) = mpsc::channel(16);
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
    {
        let (aggregator, remote) = (aggregator.clone(), remote.clone());
        tokio::spawn(async move {
            while let Some(e) = events.recv().await {
                match e {
                    LeadershipEvent::Acquired { epoch } => aggregator.do_send(LeadershipAcquired { epoch }),
                    LeadershipEvent::Lost { .. } => {
                        aggregator.do_send(LeadershipLost);
                        if let Some(r) = &remote {
                            r.disconnect_all();
                        }
                    }
                }
            }
        });
    }
    // Readiness = leading with a snapshot.
    let readiness = Arc::new(Readiness::default());
    {
        let (mut leading, mut snaps, readiness) =
            (outputs.leading.clone(), outputs.snapshots.clone(), readiness.clone());
        tokio::spawn(async move {
            loop {
                let is_leading = *leading.borrow_and_update();
                let ready = {
                    let snapshot = snaps.borrow_and_update();
                    role_metrics.set_snapshot(&snapshot);
                    is_leading && snapshot.epoch > 0
                };
                role_metrics.set_leading(is_leading);
                readiness.set_ready(ready);
                tokio::select! {
                    r = leading.changed() => if r.is_err() { return },
                    r = snaps.changed() => if r.is_err() { return },
                }
            }
        });
    }
    let svc = ControlPlaneService {
        snapshots: outputs.snapshots.clone(),
        routed: outputs.routed.clone(),
        leading: outputs.leading.clone(),
        etcd: etcd.clone(),
        remote,
        reports: Some(aggregator.clone().recipient()),
    };
    let signal = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    tasks.push(tokio::spawn(async move {
        let r = Server::builder()
            .add_service(ControlPlaneServer::new(svc).max_encoding_message_size(256 * 1024 * 1024))
            .serve_with_incoming_shutdown(crate::nodelay_incoming(control), signal)
            .await;
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
            .serve_with_incoming_shutdown(crate::nodelay_incoming(health_listener), signal)
            .await;
    }));
    let signal = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    tasks.push(app::serve_metrics(metrics_listener, Arc::new(metrics_registry), signal));
    tracing::info!(%control_addr, %health_addr, %metrics_addr, "aggregator serving");
    Ok(AggregatorHandle {
        control_addr,
        health_addr,
        metrics_addr,
        leading: outputs.leading,
        snapshots: outputs.snapshots,
        stop,
        tasks,
        _actors: (aggregator, supervisor),
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
            },
            config_file: None,
            config_text: None,
            metrics_staleness_threshold: Duration::from_secs(2),
            leader: LeaderSource::Addresses(vec![aggregator.to_string()]),
            picker: PickerSettings { seed, ..PickerSettings::default() },
            picker_id: picker_id.to_string(),
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
    let mut metrics_registry = Registry::default();
    let picker = Arc::new(Picker::new(scheduler, opts.picker.clone(), PickerMetrics::new(&mut metrics_registry)));
    let readiness = Arc::new(Readiness::default());
    let (tx, rx) = watch::channel(Snapshot::empty());
    app::follow_snapshots(rx, picker.clone(), readiness.clone(), false);
    let servers = app::serve_picker(picker.clone(), readiness.clone(), metrics_registry, &opts.serve).await?;
    let learner = picker.clone();
    tokio::spawn(subscribe::follow_leader(
        opts.leader.clone(),
        opts.picker_id.clone(),
        tx,
        move |s: &Snapshot, full: bool| {
            learner.metrics.record_update(full);
            learner.learn(s);
        },
        servers.stop.subscribe(),
    ));
    tokio::spawn(crate::picker::report::run(
        picker.clone(),
        opts.leader.clone(),
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

/// The scraper role's own metrics (besides per-endpoint scrape latency and errors).
#[derive(Clone, Default)]
struct ScraperRoleMetrics {
    /// 1 while a leader's assignment stream is open.
    connected: prometheus_client::metrics::gauge::Gauge,
    assigned: prometheus_client::metrics::gauge::Gauge,
    dropped: prometheus_client::metrics::counter::Counter,
}

impl ScraperRoleMetrics {
    fn new(registry: &mut Registry) -> Self {
        let m = ScraperRoleMetrics::default();
        registry.register("switchyard_scraper_connected", "1 while streaming to the leader", m.connected.clone());
        registry.register(
            "switchyard_scraper_assigned_endpoints",
            "Endpoints assigned by the leader",
            m.assigned.clone(),
        );
        registry.register(
            "switchyard_scraper_reports_dropped",
            "Scrape results dropped because the leader stream lagged",
            m.dropped.clone(),
        );
        m
    }
}

/// Forwards scrape results into the leader stream; drops (and counts) when the stream lags.
struct StreamSink {
    scraper_id: String,
    tx: mpsc::Sender<switchyard_proto::v1::MetricsReport>,
    dropped: u64,
    metrics: ScraperRoleMetrics,
}

impl Actor for StreamSink {
    type Context = Context<Self>;
}

impl StreamSink {
    fn push(&mut self, report: switchyard_proto::v1::MetricsReport) {
        if self.tx.try_send(report).is_err() {
            self.dropped += 1;
            self.metrics.dropped.inc();
            if self.dropped.is_power_of_two() {
                tracing::warn!(dropped = self.dropped, "scrape reports dropped: the leader stream lags");
            }
        }
    }
}

impl Handler<crate::protocol::MetricsScraped> for StreamSink {
    type Result = ();

    fn handle(&mut self, m: crate::protocol::MetricsScraped, _: &mut Context<Self>) {
        let r = crate::wire::report_from_event(&self.scraper_id, Ok(&m));
        self.push(r);
    }
}

impl Handler<crate::protocol::ScrapeFailed> for StreamSink {
    type Result = ();

    fn handle(&mut self, f: crate::protocol::ScrapeFailed, _: &mut Context<Self>) {
        let r = crate::wire::report_from_event(&self.scraper_id, Err(&f));
        self.push(r);
    }
}

/// The scraper role: connects to the leader, scrapes what it is assigned, streams the results.
pub async fn start_scraper(opts: ScraperOptions) -> anyhow::Result<ScraperHandle> {
    use switchyard_proto::v1 as pb;
    use switchyard_proto::v1::control_plane_client::ControlPlaneClient;
    crate::ensure_crypto_provider();
    let cfg = config::load(opts.config_file.as_deref(), opts.config_text.as_deref())?;
    let registry = Arc::new(cfg.engine_registry(&opts.metric_flags)?);
    let mut metrics_registry = Registry::default();
    let role_metrics = ScraperRoleMetrics::new(&mut metrics_registry);
    let scrape_metrics = ScrapeMetrics::new(&mut metrics_registry);
    let metrics_listener = tokio::net::TcpListener::bind(opts.metrics_addr)
        .await
        .with_context(|| format!("cannot bind the metrics address {}", opts.metrics_addr))?;
    let metrics_addr = metrics_listener.local_addr()?;
    let (out_tx, out_rx) = mpsc::channel::<pb::MetricsReport>(4096);
    let sink_actor = StreamSink {
        scraper_id: opts.scraper_id.clone(),
        tx: out_tx.clone(),
        dropped: 0,
        metrics: role_metrics.clone(),
    }
    .start();
    let sink = ScrapeSink { scraped: sink_actor.clone().recipient(), failed: sink_actor.recipient() };
    let settings = ScrapeSettings {
        interval: opts.refresh_metrics_interval,
        fetch: FetchSettings { timeout: opts.scrape_timeout, ..FetchSettings::default() },
    };
    let supervisor = ScrapeSupervisor::with_metrics(registry, &settings, sink, scrape_metrics)?.start();
    let (stop, mut stop_rx) = watch::channel(false);
    let metrics_server = {
        let mut rx = stop_rx.clone();
        let signal = async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        app::serve_metrics(metrics_listener, Arc::new(metrics_registry), signal)
    };
    let out_rx = Arc::new(tokio::sync::Mutex::new(out_rx));
    let sup = supervisor.clone();
    let task = tokio::spawn(async move {
        let mut finder = crate::leader::LeaderFinder::new(opts.leader.clone());
        loop {
            if *stop_rx.borrow() {
                return;
            }
            for target in finder.candidates().await {
                let Ok(channel) = crate::leader::connect(&target).await else { continue };
                let mut client = ControlPlaneClient::new(channel);
                // Outbound: the hello, then whatever the scraper actors produce.
                let (tx, rx) = mpsc::channel::<pb::MetricsReport>(1024);
                let hello = pb::MetricsReport {
                    version: crate::wire::PROTOCOL_VERSION,
                    scraper_id: opts.scraper_id.clone(),
                    ..Default::default()
                };
                let _ = tx.send(hello).await;
                let pump = {
                    let out_rx = out_rx.clone();
                    tokio::spawn(async move {
                        let mut out_rx = out_rx.lock().await;
                        while let Some(r) = out_rx.recv().await {
                            if tx.send(r).await.is_err() {
                                return;
                            }
                        }
                    })
                };
                let Ok(resp) = client.scrape(tokio_stream::wrappers::ReceiverStream::new(rx)).await else {
                    pump.abort();
                    continue;
                };
                let mut inbound = resp.into_inner();
                tracing::info!(leader = %target, "scraping for the aggregator leader");
                role_metrics.connected.set(1);
                let superseded = finder.superseded(&target);
                tokio::pin!(superseded);
                loop {
                    tokio::select! {
                        _ = &mut superseded => break,
                        m = inbound.message() => match m {
                            Ok(Some(a)) => {
                                role_metrics.assigned.set(a.endpoints.len() as i64);
                                let eps = a.endpoints.into_iter().map(crate::wire::endpoint_from_proto).collect();
                                sup.do_send(AssignEndpoints(eps));
                            }
                            _ => break,
                        },
                        _ = stop_rx.changed() => break,
                    }
                }
                pump.abort();
                // The leader is gone: stop scraping until a leader assigns again.
                sup.do_send(AssignEndpoints(Vec::new()));
                role_metrics.connected.set(0);
                role_metrics.assigned.set(0);
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = stop_rx.changed() => {}
            }
        }
    });
    tracing::info!(%metrics_addr, "scraper serving metrics");
    Ok(ScraperHandle { stop, task, metrics_server, metrics_addr, supervisor })
}
