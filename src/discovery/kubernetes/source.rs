//! The Kubernetes endpoint source: `kube::runtime` watchers → reflector stores on the pool's
//! Pods, its InferencePool (by name, either version) and the namespace's InferenceObjectives;
//! after every settled change the stores are read through [`rules`](super::rules) into the
//! current endpoint set (ready pods × active target ports) and published.
//!
//! Only aggregators (and standalone) run this; every aggregator replica keeps its stores warm, so
//! a new leader publishes at once. A lost watch, `410 Gone` or API server restart is the
//! watcher's to recover: it relists (backing off), and the store's relist replaces its content, so
//! deletions missed meanwhile are applied. A pool that does not exist yet (or is deleted) gives
//! an empty, not-synced set; a missing InferenceObjective CRD is logged once and retried.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use futures::stream::{BoxStream, SelectAll};
use futures::{FutureExt as _, StreamExt as _};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Resource, ResourceExt as _};
use thiserror::Error;
use tokio::sync::watch;

use super::crd::{POOL_GROUP_V1, POOL_GROUP_V1ALPHA2, v1, v1alpha2};
use super::rules::{self, PodWarning, PoolError, PoolSpec, ResolveContext};
use crate::discovery::{DiscoveryMetrics, EndpointSet, EndpointSource, Resolver};

/// Which pods make the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolRef {
    /// An InferencePool (`--pool-name`) of `group` (`--pool-group`).
    Pool { name: String, group: String },
    /// Pods by label selector and target ports, without a pool object
    /// (`--endpoint-selector`, `--endpoint-target-ports`).
    Selector { selector: String, target_ports: Vec<u16> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesOptions {
    /// `--pool-namespace` (default: env `NAMESPACE`, then `default`).
    pub namespace: String,
    pub pool: PoolRef,
    /// `--kubeconfig` (else `KUBECONFIG`, else in-cluster, else `~/.kube/config`).
    pub kubeconfig: Option<PathBuf>,
    /// `--model-server-metrics-port` (used when the pool has exactly one target port).
    pub metrics_port: Option<u16>,
}

#[derive(Debug, Error)]
pub enum KubernetesError {
    #[error("--pool-group: {0:?} is not supported (use {POOL_GROUP_V1} or {POOL_GROUP_V1ALPHA2})")]
    UnknownGroup(String),
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error("cannot read the kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("no Kubernetes configuration (in-cluster or kubeconfig): {0}")]
    Infer(#[source] kube::config::InferConfigError),
    #[error("cannot build the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

impl KubernetesError {
    /// A mistake in the flags or the kubeconfig (exit code 2), not a cluster that misbehaves.
    pub fn is_config(&self) -> bool {
        !matches!(self, KubernetesError::Client(_))
    }
}

impl KubernetesOptions {
    /// The flags' pool, checked before anything connects (selector syntax, ports, group).
    pub fn validate(&self) -> Result<Option<PoolSpec>, KubernetesError> {
        match &self.pool {
            PoolRef::Selector { selector, target_ports } => {
                Ok(Some(PoolSpec::from_flags(&self.namespace, selector, target_ports)?))
            }
            PoolRef::Pool { group, .. } if group != POOL_GROUP_V1 && group != POOL_GROUP_V1ALPHA2 => {
                Err(KubernetesError::UnknownGroup(group.clone()))
            }
            PoolRef::Pool { name, .. } if name.trim().is_empty() => {
                Err(PoolError::Empty { field: "--pool-name".into() }.into())
            }
            PoolRef::Pool { .. } => Ok(None),
        }
    }
}

/// A client from `--kubeconfig`, or the usual inference (`KUBECONFIG`, in-cluster, home).
pub async fn client(kubeconfig: Option<&std::path::Path>) -> Result<kube::Client, KubernetesError> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|source| KubernetesError::Kubeconfig { path: path.display().to_string(), source })?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|source| KubernetesError::Kubeconfig { path: path.display().to_string(), source })?
        }
        None => kube::Config::infer().await.map_err(KubernetesError::Infer)?,
    };
    kube::Client::try_from(config).map_err(KubernetesError::Client)
}

/// Starts watching. The set starts empty and not synced; it fills once the stores have listed.
pub async fn start(
    opts: &KubernetesOptions,
    resolver: Resolver,
    metrics: DiscoveryMetrics,
) -> Result<EndpointSource, KubernetesError> {
    opts.validate()?;
    let client = client(opts.kubeconfig.as_deref()).await?;
    start_with_client(client, opts, resolver, metrics)
}

/// What changed, for the loop: which store, and whether it is now complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Pods,
    Pool,
    Objectives,
}

/// A store event: `Some(true)` the store is complete (initial list done), `Some(false)` an
/// object changed, `None` a partial relist (nothing to publish yet); or a watch error.
type Tick = (Kind, Result<Option<bool>, watcher::Error>);

fn ticks<K>(
    kind: Kind,
    api: Api<K>,
    config: watcher::Config,
    writer: reflector::store::Writer<K>,
) -> BoxStream<'static, Tick>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    watcher(api, config)
        .default_backoff()
        .modify(|o: &mut K| o.meta_mut().managed_fields = None)
        .reflect(writer)
        .map(move |e| {
            let tick = e.map(|e| match e {
                watcher::Event::InitDone => Some(true),
                watcher::Event::Apply(_) | watcher::Event::Delete(_) => Some(false),
                watcher::Event::Init | watcher::Event::InitApply(_) => None,
            });
            (kind, tick)
        })
        .boxed()
}

/// The pool object's store, by version.
enum PoolStore {
    Fixed(PoolSpec),
    V1(Store<v1::InferencePool>),
    V1alpha2(Store<v1alpha2::InferencePool>),
}

/// The source's state between ticks.
struct Watching {
    group: String,
    pods: Store<Pod>,
    pool: PoolStore,
    objectives: Option<Store<v1alpha2::InferenceObjective>>,
    /// Stores that have completed their initial list.
    listed: HashSet<Kind>,
    /// (pod, warning) already logged: each is logged once while the pod exists.
    warned: HashSet<(String, String)>,
    /// The last pool error logged (logged once per distinct error).
    pool_error: Option<String>,
    objectives_missing: bool,
    resolver: Resolver,
    metrics_port: Option<u16>,
    metrics: DiscoveryMetrics,
}

/// Starts the watchers on `client` (tests pass a client of a fake API server).
pub fn start_with_client(
    client: kube::Client,
    opts: &KubernetesOptions,
    resolver: Resolver,
    metrics: DiscoveryMetrics,
) -> Result<EndpointSource, KubernetesError> {
    let fixed_pool = opts.validate()?;
    let ns = opts.namespace.as_str();
    let mut streams: SelectAll<BoxStream<'static, Tick>> = SelectAll::new();
    let (pods, writer) = reflector::store();
    streams.push(ticks(Kind::Pods, Api::<Pod>::namespaced(client.clone(), ns), watcher::Config::default(), writer));
    let (pool, group, objectives) = match (fixed_pool, &opts.pool) {
        (Some(spec), _) => (PoolStore::Fixed(spec), String::new(), None),
        // validate() gives a selector's spec; this is only for the type checker.
        (None, PoolRef::Selector { .. }) => return Err(PoolError::Empty { field: "--endpoint-selector".into() }.into()),
        (None, PoolRef::Pool { name, group }) => {
            let by_name = watcher::Config::default().fields(&format!("metadata.name={name}"));
            let pool = if group == POOL_GROUP_V1ALPHA2 {
                let (store, writer) = reflector::store();
                let api = Api::<v1alpha2::InferencePool>::namespaced(client.clone(), ns);
                streams.push(ticks(Kind::Pool, api, by_name, writer));
                PoolStore::V1alpha2(store)
            } else {
                let (store, writer) = reflector::store();
                streams.push(ticks(
                    Kind::Pool,
                    Api::<v1::InferencePool>::namespaced(client.clone(), ns),
                    by_name,
                    writer,
                ));
                PoolStore::V1(store)
            };
            let (store, writer) = reflector::store();
            let api = Api::<v1alpha2::InferenceObjective>::namespaced(client.clone(), ns);
            streams.push(ticks(Kind::Objectives, api, watcher::Config::default(), writer));
            (pool, group.clone(), Some(store))
        }
    };
    let state = Watching {
        group,
        pods,
        pool,
        objectives,
        listed: HashSet::new(),
        warned: HashSet::new(),
        pool_error: None,
        objectives_missing: false,
        resolver,
        metrics_port: opts.metrics_port,
        metrics,
    };
    let (tx, rx) = watch::channel(Arc::new(EndpointSet::default()));
    Ok(EndpointSource::new(rx, tokio::spawn(run(state, streams, tx))))
}

async fn run(
    mut state: Watching,
    mut streams: SelectAll<BoxStream<'static, Tick>>,
    tx: watch::Sender<Arc<EndpointSet>>,
) {
    loop {
        let first = tokio::select! {
            t = streams.next() => match t {
                Some(t) => t,
                None => return,
            },
            _ = tx.closed() => return,
        };
        let mut changed = state.note(first);
        // A burst (a relist, many pods at once) is read in full before one recompute.
        while let Some(Some(t)) = streams.next().now_or_never() {
            changed |= state.note(t);
        }
        if changed {
            let span =
                tracing::info_span!("discovery_update", source = "kubernetes", endpoints = tracing::field::Empty);
            let _entered = span.enter();
            let set = state.compute();
            span.record("endpoints", set.endpoints.len());
            if *tx.borrow().as_ref() != set {
                state.metrics.set_endpoints("kubernetes", set.endpoints.len());
                state.metrics.update("kubernetes");
                tracing::info!(endpoints = set.endpoints.len(), synced = set.synced, "pool changed");
                tx.send_replace(Arc::new(set));
            }
        }
    }
}

impl Watching {
    /// Takes one tick; whether the set may have changed.
    fn note(&mut self, (kind, tick): Tick) -> bool {
        match tick {
            Ok(Some(complete)) => {
                if kind == Kind::Objectives && self.objectives_missing {
                    self.objectives_missing = false;
                    tracing::info!("InferenceObjective resources are readable now");
                }
                if complete {
                    self.listed.insert(kind);
                }
                true
            }
            Ok(None) => false,
            Err(e) => {
                if kind == Kind::Objectives {
                    if !self.objectives_missing {
                        self.objectives_missing = true;
                        tracing::warn!(error = %e, "cannot read InferenceObjectives (CRD not installed?); priorities come from --inference-objective until it can");
                    }
                } else {
                    self.metrics.error("kubernetes");
                    tracing::warn!(error = %e, what = ?kind, "watch failed; relisting");
                }
                false
            }
        }
    }

    /// The pool spec from the store (`None`: no pool, or one that cannot be used).
    fn pool(&mut self) -> Option<PoolSpec> {
        let spec = match &self.pool {
            PoolStore::Fixed(spec) => return Some(spec.clone()),
            PoolStore::V1(store) => store.state().first().map(|p| PoolSpec::from_v1(p)),
            PoolStore::V1alpha2(store) => store.state().first().map(|p| PoolSpec::from_v1alpha2(p)),
        };
        match spec? {
            Ok(spec) => {
                self.pool_error = None;
                Some(spec)
            }
            Err(e) => {
                let msg = e.to_string();
                if self.pool_error.as_deref() != Some(msg.as_str()) {
                    self.metrics.error("kubernetes");
                    tracing::warn!(error = %msg, "the InferencePool cannot be used; no endpoints until it is fixed");
                    self.pool_error = Some(msg);
                }
                None
            }
        }
    }

    fn compute(&mut self) -> EndpointSet {
        let needs = if matches!(self.pool, PoolStore::Fixed(_)) { 1 } else { 2 };
        let listed = [Kind::Pods, Kind::Pool].iter().filter(|k| self.listed.contains(k)).count() >= needs;
        let pool = if listed { self.pool() } else { None };
        let Some(pool) = pool else {
            return EndpointSet { endpoints: Vec::new(), synced: false, objectives: BTreeMap::new() };
        };
        let pods = self.pods.state();
        let ctx = ResolveContext {
            registry: &self.resolver.registry,
            source: &self.resolver.source,
            metrics_port: self.metrics_port,
        };
        let mut warnings = Vec::new();
        let endpoints = rules::pool_endpoints(&pool, pods.iter().map(|p| p.as_ref()), &ctx, &mut warnings);
        self.log_once(warnings, &pods);
        let objectives = match &self.objectives {
            Some(store) => store
                .state()
                .iter()
                .filter(|o| rules::objective_applies(o, &pool, &self.group))
                .map(|o| (o.name_any(), o.spec.priority.unwrap_or(0)))
                .collect(),
            None => BTreeMap::new(),
        };
        EndpointSet { endpoints, synced: true, objectives }
    }

    /// Logs (and counts) each warning once per pod; forgets pods that are gone.
    fn log_once(&mut self, warnings: Vec<PodWarning>, pods: &[Arc<Pod>]) {
        for w in warnings {
            let pod = match &w {
                PodWarning::UnknownEngine { pod, .. } | PodWarning::BadActivePort { pod, .. } => pod.clone(),
            };
            if self.warned.insert((pod, w.to_string())) {
                if matches!(w, PodWarning::UnknownEngine { .. }) {
                    self.metrics.unknown_engine();
                }
                tracing::warn!("{w}");
            }
        }
        if !self.warned.is_empty() {
            let present: HashSet<String> = pods.iter().map(|p| p.name_any()).collect();
            self.warned.retain(|(pod, _)| present.contains(pod));
        }
    }
}
