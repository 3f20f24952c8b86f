//! Discovery: where the pool comes from. An endpoint source turns the outside world into the
//! current endpoint set over time and publishes it on a `watch` channel ([`EndpointSource`]);
//! the aggregator consumes that channel and owns the set from start to finish (it hands it to the
//! scrapers and puts it in snapshots). No role receives endpoints any other way.
//!
//! Sources, one shape:
//! - [`file`]: the static endpoints file, watched for edits;
//! - [`kubernetes`]: an InferencePool (or a label selector) and its ready pods × active ports;
//! - [`fixed`]: a set that never changes (tools and tests).
//!
//! A source never decides anything about metrics or scheduling, and never talks to scrapers or
//! pickers.

pub mod file;
pub mod kubernetes;

use std::collections::BTreeMap;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

pub use file::{StaticEndpoint, StaticEndpoints};

use crate::config::MetricsDataSourceParams;
use crate::metrics::EngineRegistry;
use crate::model::Endpoint;

/// What a source currently sees.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EndpointSet {
    /// Sorted by id; ids are unique.
    pub endpoints: Vec<Endpoint>,
    /// The source has read its world at least once (a Kubernetes pool that does not exist yet is
    /// not synced; the aggregator is not ready until its source is).
    pub synced: bool,
    /// InferenceObjective name → priority (Kubernetes: the objectives that reference the pool).
    pub objectives: BTreeMap<String, i32>,
}

impl EndpointSet {
    /// A synced set (sorted here).
    pub fn ready(mut endpoints: Vec<Endpoint>) -> Self {
        endpoints.sort_by(|a, b| a.id.cmp(&b.id));
        EndpointSet { endpoints, synced: true, objectives: BTreeMap::new() }
    }
}

/// A running source: the set it publishes, and the task that follows the outside world (aborted
/// when the source is dropped; it also ends by itself once nobody listens).
pub struct EndpointSource {
    updates: watch::Receiver<Arc<EndpointSet>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl EndpointSource {
    pub fn new(updates: watch::Receiver<Arc<EndpointSet>>, task: tokio::task::JoinHandle<()>) -> Self {
        EndpointSource { updates, task: Some(task) }
    }

    /// The set published so far, and every later one.
    pub fn updates(&self) -> watch::Receiver<Arc<EndpointSet>> {
        self.updates.clone()
    }

    /// The current set.
    pub fn current(&self) -> Arc<EndpointSet> {
        self.updates.borrow().clone()
    }
}

impl Drop for EndpointSource {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Where a role's pool comes from (its discovery flags).
#[derive(Debug, Clone)]
pub enum PoolSource {
    /// A static endpoints file, read every `poll` for edits.
    File { path: std::path::PathBuf, poll: std::time::Duration },
    /// The cluster: an InferencePool or a label selector, and their pods.
    Kubernetes(kubernetes::KubernetesOptions),
}

impl PoolSource {
    /// The static file, polled at the default interval.
    pub fn file(path: impl Into<std::path::PathBuf>) -> Self {
        PoolSource::File { path: path.into(), poll: file::DEFAULT_POLL }
    }

    /// Checks the source's settings without connecting to anything (the file is read and
    /// resolved); a one-line description of the pool.
    pub fn check(&self, resolver: &Resolver) -> Result<String, DiscoveryError> {
        match self {
            PoolSource::File { path, .. } => {
                let endpoints = StaticEndpoints::load(path)?.resolve(&resolver.registry, &resolver.source)?;
                Ok(format!("endpoints file {} ({} endpoints)", path.display(), endpoints.len()))
            }
            PoolSource::Kubernetes(opts) => {
                opts.validate()?;
                Ok(match &opts.pool {
                    kubernetes::PoolRef::Pool { name, group } => {
                        format!("InferencePool {}/{name} ({group})", opts.namespace)
                    }
                    kubernetes::PoolRef::Selector { selector, target_ports } => {
                        format!("pods in {} matching {selector} on ports {target_ports:?}", opts.namespace)
                    }
                })
            }
        }
    }

    /// Starts the source. An input that cannot be used at start-up is an error (exit code 2).
    pub async fn start(&self, resolver: Resolver, metrics: DiscoveryMetrics) -> Result<EndpointSource, DiscoveryError> {
        match self {
            PoolSource::File { path, poll } => Ok(file::watch_file(path.clone(), resolver, *poll, metrics)?),
            PoolSource::Kubernetes(opts) => Ok(kubernetes::start(opts, resolver, metrics).await?),
        }
    }
}

/// Why a source could not start.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Kubernetes(#[from] kubernetes::KubernetesError),
}

impl DiscoveryError {
    /// The operator's input is wrong (exit code 2).
    pub fn is_config(&self) -> bool {
        match self {
            DiscoveryError::Config(_) => true,
            DiscoveryError::Kubernetes(k) => k.is_config(),
        }
    }
}

/// A source whose set never changes.
pub fn fixed(endpoints: Vec<Endpoint>) -> EndpointSource {
    let (tx, rx) = watch::channel(Arc::new(EndpointSet::ready(endpoints)));
    // Holds the sender until every receiver is gone, so the set stays published.
    let task = tokio::spawn(async move { tx.closed().await });
    EndpointSource::new(rx, task)
}

/// What turns a source's raw entries into endpoints: the engine registry (engine label → engine)
/// and the metrics data source (scheme, path).
#[derive(Clone)]
pub struct Resolver {
    pub registry: Arc<EngineRegistry>,
    pub source: MetricsDataSourceParams,
}

/// `ip:port`, IPv6 bracketed.
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: String,
}

/// Discovery's own metrics (`switchyard_discovery_*`).
#[derive(Clone, Default)]
pub struct DiscoveryMetrics {
    /// Endpoints in the current set, by source.
    endpoints: Family<SourceLabel, Gauge>,
    /// Sets published after the first, by source.
    updates: Family<SourceLabel, Counter>,
    /// Inputs rejected (the last good set was kept), by source.
    errors: Family<SourceLabel, Counter>,
    /// Pods whose engine label names no configured engine (counted once per pod).
    unknown_engine: Counter,
}

impl DiscoveryMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = DiscoveryMetrics::default();
        registry.register("switchyard_discovery_endpoints", "Endpoints in the current set", m.endpoints.clone());
        registry.register("switchyard_discovery_updates", "Endpoint sets published after the first", m.updates.clone());
        registry.register(
            "switchyard_discovery_errors",
            "Source inputs rejected (the last good endpoint set was kept)",
            m.errors.clone(),
        );
        registry.register(
            "switchyard_discovery_unknown_engine",
            "Pods whose engine label names no configured engine (the default engine is used)",
            m.unknown_engine.clone(),
        );
        m
    }

    pub fn unknown_engine(&self) {
        self.unknown_engine.inc();
    }

    /// Pods counted with an unknown engine label so far.
    pub fn unknown_engines(&self) -> u64 {
        self.unknown_engine.get()
    }

    fn label(source: &str) -> SourceLabel {
        SourceLabel { source: source.to_string() }
    }

    pub fn set_endpoints(&self, source: &str, n: usize) {
        self.endpoints.get_or_create(&Self::label(source)).set(n as i64);
    }

    pub fn update(&self, source: &str) {
        self.updates.get_or_create(&Self::label(source)).inc();
    }

    pub fn error(&self, source: &str) {
        self.errors.get_or_create(&Self::label(source)).inc();
    }

    /// Rejected inputs counted so far for `source`.
    pub fn errors(&self, source: &str) -> u64 {
        self.errors.get_or_create(&Self::label(source)).get()
    }
}
