//! Wiring of the standalone role: config → engine registry, scheduler; discovery source →
//! aggregator (+ scrape supervisor) → picker → ext-proc, health and metrics servers. Only builds
//! and spawns; shutdown happens in one place: `StandaloneHandle::shutdown` (readiness false →
//! stop accepting → drain → exit).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use anyhow::Context as _;
use axum::serve::ListenerExt as _;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::Server;

use crate::aggregator::{Aggregator, AggregatorOutputs, Assigner, RemoteScraping};
use crate::config::{self, MetricFlags};
use crate::discovery::{DiscoveryMetrics, EndpointSource, PoolSource, Resolver};
use crate::health::{HealthService, Readiness};
use crate::metrics::EngineRegistry;
use crate::model::Snapshot;
use crate::picker::{ExtProcService, Picker, PickerMetrics, PickerSettings, tls, view};
use crate::preface;
use crate::protocol::ScrapeSink;
use crate::scheduling::{Scheduler, SchedulerConfig};
use crate::scraper::{FetchSettings, ScrapeMetrics, ScrapeSettings, ScrapeSupervisor};

/// How the ext-proc port is served.
#[derive(Debug, Clone)]
pub enum Tls {
    Plaintext,
    /// A certificate generated at start-up (`--secure-serving` without `--cert-path`).
    SelfSigned,
    /// `tls.crt` and `tls.key` from a directory, reloaded on change when `reload` is set
    /// (`--enable-cert-reload`).
    Files {
        dir: PathBuf,
        reload: bool,
    },
}

#[derive(Debug, Clone)]
pub struct StandaloneOptions {
    pub host: std::net::IpAddr,
    pub grpc_port: u16,
    pub grpc_health_port: u16,
    pub metrics_port: u16,
    pub config_file: Option<PathBuf>,
    pub config_text: Option<String>,
    pub pool: PoolSource,
    pub metric_flags: MetricFlags,
    pub refresh_metrics_interval: Duration,
    pub metrics_staleness_threshold: Duration,
    pub scrape_timeout: Duration,
    pub tls: Tls,
    /// Connections must send the HTTP/2 preface (after TLS, if any) within this.
    pub handshake_timeout: Duration,
    pub picker: PickerSettings,
    /// Who may read `/metrics` and use `/debug/*` (`--metrics-endpoint-auth`).
    pub metrics_auth: crate::metrics_auth::MetricsAuth,
}

impl Default for StandaloneOptions {
    fn default() -> Self {
        StandaloneOptions {
            host: std::net::IpAddr::from([0, 0, 0, 0]),
            grpc_port: 9002,
            grpc_health_port: 9003,
            metrics_port: 9090,
            config_file: None,
            config_text: None,
            pool: PoolSource::file("endpoints.yaml"),
            metric_flags: MetricFlags::default(),
            refresh_metrics_interval: Duration::from_millis(50),
            metrics_staleness_threshold: Duration::from_secs(2),
            scrape_timeout: Duration::from_secs(1),
            tls: Tls::SelfSigned,
            handshake_timeout: crate::preface::DEFAULT_TIMEOUT,
            picker: PickerSettings::default(),
            metrics_auth: Default::default(),
        }
    }
}

impl StandaloneOptions {
    /// Everything on 127.0.0.1 with ports the OS picks, plaintext, reading `pool`: what the demo,
    /// the benches and the tests run.
    pub fn loopback(pool: PoolSource) -> Self {
        StandaloneOptions {
            host: [127, 0, 0, 1].into(),
            grpc_port: 0,
            grpc_health_port: 0,
            metrics_port: 0,
            pool,
            tls: Tls::Plaintext,
            ..Self::default()
        }
    }
}

pub struct StandaloneHandle {
    pub ext_proc_addr: SocketAddr,
    pub health_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub picker: Arc<Picker>,
    pub readiness: Arc<Readiness>,
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    stop: watch::Sender<bool>,
    servers: Vec<tokio::task::JoinHandle<()>>,
    control_plane: ControlPlane,
}

impl StandaloneHandle {
    /// Readiness false, stop accepting, drain in-flight streams for at most `grace`.
    pub async fn shutdown(self, grace: Duration) {
        self.readiness.set_draining();
        let _ = self.stop.send(true);
        let drain = futures::future::join_all(self.servers);
        if tokio::time::timeout(grace, drain).await.is_err() {
            tracing::warn!(?grace, "shutdown grace period over; dropping remaining streams");
        }
        self.control_plane.stop();
    }
}

/// The in-process control plane: the discovery source, the aggregator that owns its set, and
/// the scrape supervisor it hands the set to (unless scraping is remote).
pub(crate) struct ControlPlane {
    pub aggregator: Addr<Aggregator>,
    pub outputs: AggregatorOutputs,
    pub remote: Option<Arc<RemoteScraping>>,
    /// Held for the life of the control plane: dropping it stops the source.
    _source: EndpointSource,
}

impl ControlPlane {
    /// Starts them. `epoch`: lead at once (standalone); `None`: wait for the election.
    pub(crate) async fn start(
        epoch: Option<u64>,
        pool: &PoolSource,
        resolver: Resolver,
        scrape: &ScrapeSettings,
        remote_scrapers: bool,
        metrics_registry: &mut Registry,
    ) -> anyhow::Result<Self> {
        // Exit code 2 for a config or flag error: main asks `DiscoveryError::is_config`.
        let source = pool.start(resolver.clone(), DiscoveryMetrics::new(metrics_registry)).await?;
        // The actor's address exists before it runs: the scrapers publish to it, it assigns them.
        let ctx = Context::<Aggregator>::new();
        let sink = ScrapeSink { reports: ctx.address().recipient() };
        let (assigner, remote) = if remote_scrapers {
            let remote = RemoteScraping::new(sink);
            (Assigner::Remote(remote.clone()), Some(remote))
        } else {
            let scrape_metrics = ScrapeMetrics::new(metrics_registry);
            let supervisor =
                ScrapeSupervisor::with_metrics(resolver.registry.clone(), scrape, sink, scrape_metrics)?.start();
            (Assigner::Local(supervisor.recipient()), None)
        };
        let interval = Duration::from_millis(5);
        let (aggregator, outputs) = match epoch {
            Some(epoch) => Aggregator::new(epoch, interval, source.updates(), assigner),
            None => Aggregator::follower(interval, source.updates(), assigner),
        };
        let aggregator = ctx.run(aggregator);
        Ok(ControlPlane { aggregator, outputs, remote, _source: source })
    }

    /// Stops the scrapers and the aggregator: their timers would keep them running (scraping,
    /// publishing) after every handle to them is gone.
    pub(crate) fn stop(self) {
        self.aggregator.do_send(crate::aggregator::Stop);
    }
}

/// The engine registry and metrics data source of a config: what resolves endpoints.
pub fn resolver(cfg: &config::EndpointPickerConfig, flags: &MetricFlags) -> anyhow::Result<Resolver> {
    let registry: Arc<EngineRegistry> = Arc::new(cfg.engine_registry(flags)?);
    Ok(Resolver { registry, source: cfg.metrics_data_source_with(flags)? })
}

pub(crate) async fn bind(host: std::net::IpAddr, port: u16, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(SocketAddr::new(host, port))
        .await
        .with_context(|| format!("cannot listen on {host}:{port} ({what})"))
}

/// Starts every role in this process. Must run inside an actix System on a tokio runtime.
pub async fn start_standalone(opts: StandaloneOptions) -> anyhow::Result<StandaloneHandle> {
    crate::ensure_crypto_provider();
    let cfg = config::load(opts.config_file.as_deref(), opts.config_text.as_deref())?;
    let resolver = resolver(&cfg, &opts.metric_flags)?;
    let scheduler = Scheduler::new(SchedulerConfig::build(&cfg, opts.metrics_staleness_threshold)?);

    let mut metrics_registry = Registry::default();
    crate::telemetry::register_metrics(&mut metrics_registry);
    let picker_metrics = PickerMetrics::new(&mut metrics_registry);
    if let crate::discovery::PoolSource::Kubernetes(k) = &opts.pool
        && let crate::discovery::kubernetes::PoolRef::Pool { name, .. } = &k.pool
    {
        picker_metrics.set_pool_name(name);
    }
    let picker = Arc::new(Picker::new(scheduler, opts.picker.clone(), picker_metrics));
    let readiness = Arc::new(Readiness::default());

    // Control plane in-process: discovery → aggregator → scrapers, leading alone.
    let settings = ScrapeSettings {
        interval: opts.refresh_metrics_interval,
        fetch: FetchSettings {
            timeout: opts.scrape_timeout,
            insecure_skip_verify: resolver.source.insecure_skip_verify,
            ..FetchSettings::default()
        },
    };
    let control_plane =
        ControlPlane::start(Some(1), &opts.pool, resolver, &settings, false, &mut metrics_registry).await?;
    let snapshots = control_plane.outputs.snapshots.clone();

    // Picker: every in-process snapshot enters it in order; views follow.
    tokio::spawn(feed_local(snapshots.clone(), picker.clone()));
    follow_snapshots(picker.clone(), readiness.clone());

    let served = serve_picker(
        picker.clone(),
        readiness.clone(),
        metrics_registry,
        &ServeOptions {
            host: opts.host,
            grpc_port: opts.grpc_port,
            grpc_health_port: opts.grpc_health_port,
            metrics_port: opts.metrics_port,
            tls: opts.tls.clone(),
            handshake_timeout: opts.handshake_timeout,
            metrics_auth: opts.metrics_auth.clone(),
        },
    )
    .await?;
    let PickerServers { ext_proc_addr, health_addr, metrics_addr, stop, servers } = served;
    tracing::info!(%ext_proc_addr, %health_addr, %metrics_addr, "standalone picker serving");
    Ok(StandaloneHandle {
        ext_proc_addr,
        health_addr,
        metrics_addr,
        picker,
        readiness,
        snapshots,
        stop,
        servers,
        control_plane,
    })
}

/// Where and how a picker serves.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub host: std::net::IpAddr,
    pub grpc_port: u16,
    pub grpc_health_port: u16,
    pub metrics_port: u16,
    pub tls: Tls,
    /// Connections to the ext-proc and health ports must complete the TLS handshake (if any)
    /// and then send the HTTP/2 preface, each within this (`--handshake-timeout`).
    pub handshake_timeout: Duration,
    /// Who may read `/metrics` and use `/debug/*` (`--metrics-endpoint-auth`).
    pub metrics_auth: crate::metrics_auth::MetricsAuth,
}

/// The picker's servers: ext-proc (+ health) on one port, health, metrics; stopped together.
pub struct PickerServers {
    pub ext_proc_addr: SocketAddr,
    pub health_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub stop: watch::Sender<bool>,
    pub servers: Vec<tokio::task::JoinHandle<()>>,
}

/// Hands every snapshot of the in-process aggregator to the picker until the aggregator stops.
async fn feed_local(mut snapshots: watch::Receiver<Arc<Snapshot>>, picker: Arc<Picker>) {
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        if snapshot.epoch != 0 {
            picker.accept(snapshot);
        }
        if snapshots.changed().await.is_err() {
            return;
        }
    }
}

/// Builds the picker's views from the snapshots it accepts and keeps readiness in step. Holds
/// the picker weakly: it ends when the picker is dropped.
pub fn follow_snapshots(picker: Arc<Picker>, readiness: Arc<Readiness>) {
    let (snapshots, target) = (picker.snapshots(), picker.view.clone());
    let picker = Arc::downgrade(&picker);
    tokio::spawn(view::follow(snapshots, target, move |v| {
        if let Some(p) = picker.upgrade() {
            p.on_view(v);
        }
        readiness.set_ready(v.is_ready());
    }));
}

/// Binds and serves ext-proc, health and metrics.
pub async fn serve_picker(
    picker: Arc<Picker>,
    readiness: Arc<Readiness>,
    metrics_registry: Registry,
    opts: &ServeOptions,
) -> anyhow::Result<PickerServers> {
    let (stop, stop_rx) = watch::channel(false);
    let tls_stop = stop_rx.clone();
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let ext_listener = bind(opts.host, opts.grpc_port, "--grpc-port").await?;
    let health_listener = bind(opts.host, opts.grpc_health_port, "--grpc-health-port").await?;
    let metrics_listener = bind(opts.host, opts.metrics_port, "--metrics-port").await?;
    let (ext_proc_addr, health_addr, metrics_addr) =
        (ext_listener.local_addr()?, health_listener.local_addr()?, metrics_listener.local_addr()?);

    let mut servers = Vec::new();
    let ext = ExtProcService { picker: picker.clone() };
    let health = tonic_health::pb::health_server::HealthServer::new(HealthService { readiness: readiness.clone() });
    let router = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(ExternalProcessorServer::new(ext).max_decoding_message_size(64 * 1024 * 1024))
        .add_service(health.clone());
    let signal = stopped();
    let cert = match &opts.tls {
        Tls::Plaintext => None,
        Tls::SelfSigned => Some(tls::CertStore::new(tls::self_signed()?)),
        Tls::Files { dir, reload } => {
            let store = tls::CertStore::new(tls::load_dir(dir)?);
            if *reload {
                tokio::spawn(tls::reload_loop(store.clone(), dir.clone(), Duration::from_secs(1), tls_stop.clone()));
            }
            Some(store)
        }
    };
    let handshake = opts.handshake_timeout;
    servers.push(tokio::spawn(async move {
        let result = match cert {
            None => {
                let incoming = preface::deadline(crate::nodelay_incoming(ext_listener), handshake);
                router.serve_with_incoming_shutdown(incoming, signal).await
            }
            Some(store) => {
                let tls = tls::incoming_within(ext_listener, tls::server_config(store), tls_stop, handshake);
                router.serve_with_incoming_shutdown(preface::deadline(tls, handshake), signal).await
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "ext-proc server failed");
        }
    }));
    let signal = stopped();
    servers.push(tokio::spawn(async move {
        let r = Server::builder()
            .add_service(health)
            .serve_with_incoming_shutdown(
                preface::deadline(crate::nodelay_incoming(health_listener), handshake),
                signal,
            )
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "health server failed");
        }
    }));
    servers.push(serve_metrics(metrics_listener, Arc::new(metrics_registry), opts.metrics_auth.clone(), stopped()));
    Ok(PickerServers { ext_proc_addr, health_addr, metrics_addr, stop, servers })
}

/// Serves `registry` as OpenMetrics text on `GET /metrics`, and `PUT /debug/log-level`, until
/// `stop` resolves; both behind `auth` (401 without the bearer token when it is enabled).
pub fn serve_metrics(
    listener: tokio::net::TcpListener,
    registry: Arc<prometheus_client::registry::Registry>,
    auth: crate::metrics_auth::MetricsAuth,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let app = axum::Router::new()
            .route(
                "/debug/log-level",
                axum::routing::put(|body: String| async move {
                    match crate::telemetry::set_log_filter(body.trim()) {
                        Ok(()) => (axum::http::StatusCode::OK, format!("log filter now {:?}\n", body.trim())),
                        Err(e) => (axum::http::StatusCode::BAD_REQUEST, format!("{e}\n")),
                    }
                }),
            )
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let r = registry.clone();
                    async move {
                        let mut out = String::new();
                        let _ = prometheus_client::encoding::text::encode(&mut out, &r);
                        (
                            [(
                                axum::http::header::CONTENT_TYPE,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )],
                            out,
                        )
                    }
                }),
            )
            // Every route of this port: /metrics and /debug/*.
            .layer(axum::middleware::from_fn(move |req: axum::extract::Request, next: axum::middleware::Next| {
                let allowed = auth.check(req.headers());
                async move {
                    match allowed {
                        Ok(()) => next.run(req).await,
                        Err(status) => {
                            let challenge = [(axum::http::header::WWW_AUTHENTICATE, "Bearer")];
                            axum::response::IntoResponse::into_response((status, challenge, "unauthorized\n"))
                        }
                    }
                }
            }));
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
            tracing::error!(error = %e, "metrics server failed");
        }
    })
}

/// `--inference-objective name=priority` values.
pub fn parse_objectives(items: &[String]) -> Result<HashMap<String, i32>, config::ConfigError> {
    items
        .iter()
        .map(|item| {
            let (name, prio) = item.split_once('=').ok_or_else(|| {
                config::ConfigError::invalid("--inference-objective", format!("expected NAME=PRIORITY, got {item:?}"))
            })?;
            let prio: i32 = prio.trim().parse().map_err(|_| {
                config::ConfigError::invalid("--inference-objective", format!("invalid priority in {item:?}"))
            })?;
            Ok((name.trim().to_string(), prio))
        })
        .collect()
}
