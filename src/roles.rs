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
use crate::aggregator::serve::ControlPlaneService;
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
}

pub struct AggregatorHandle {
    pub control_addr: SocketAddr,
    pub health_addr: SocketAddr,
    pub leading: watch::Receiver<bool>,
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _actors: (Addr<Aggregator>, Addr<ScrapeSupervisor>),
}

impl AggregatorHandle {
    /// Resigns (the next replica takes over at once) and stops serving.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(grace, futures::future::join_all(self.tasks)).await;
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
    let (control_addr, health_addr) = (control.local_addr()?, health_listener.local_addr()?);

    let (aggregator, outputs) = Aggregator::follower(Duration::from_millis(5));
    let aggregator = aggregator.start();
    let sink = ScrapeSink { scraped: aggregator.clone().recipient(), failed: aggregator.clone().recipient() };
    let settings = ScrapeSettings {
        interval: opts.refresh_metrics_interval,
        fetch: FetchSettings { timeout: opts.scrape_timeout, ..FetchSettings::default() },
    };
    let supervisor =
        ScrapeSupervisor::with_metrics(registry, &settings, sink, ScrapeMetrics::new(&mut Registry::default()))?
            .start();
    aggregator.do_send(EndpointsChanged(endpoints.clone()));
    supervisor.do_send(AssignEndpoints(endpoints));

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
        let aggregator = aggregator.clone();
        tokio::spawn(async move {
            while let Some(e) = events.recv().await {
                match e {
                    LeadershipEvent::Acquired { epoch } => aggregator.do_send(LeadershipAcquired { epoch }),
                    LeadershipEvent::Lost { .. } => aggregator.do_send(LeadershipLost),
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
                let ready = *leading.borrow_and_update() && snaps.borrow_and_update().epoch > 0;
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
        leading: outputs.leading.clone(),
        etcd: etcd.clone(),
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
    tracing::info!(%control_addr, %health_addr, "aggregator serving");
    Ok(AggregatorHandle {
        control_addr,
        health_addr,
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
    app::follow_snapshots(rx, picker.clone(), readiness.clone());
    let servers = app::serve_picker(picker.clone(), readiness.clone(), metrics_registry, &opts.serve).await?;
    tokio::spawn(subscribe::follow_leader(opts.leader.clone(), opts.picker_id.clone(), tx, servers.stop.subscribe()));
    tracing::info!(ext_proc = %servers.ext_proc_addr, "picker serving");
    Ok(PickerHandle { servers, picker, readiness })
}
