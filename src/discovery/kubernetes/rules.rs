//! The pure rules of Kubernetes discovery, as upstream's EPP applies them: which pods of a pool
//! count, which of their ports are active, and the endpoint (id, address, metrics URL, engine)
//! each active port becomes. Also the pool itself, validated, from an InferencePool of either
//! version or from the `--endpoint-selector` / `--endpoint-target-ports` flags.
//!
//! No I/O and no async: callers pass what their watch stores hold and log the warnings returned.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::Pod;
use thiserror::Error;

use super::crd::{v1, v1alpha2};
use crate::config::MetricsDataSourceParams;
use crate::discovery::join_host_port;
use crate::metrics::EngineRegistry;
use crate::model::{Endpoint, EndpointId};

/// The pod annotation that narrows a pod's endpoints to some of the pool's target ports.
pub const ACTIVE_PORTS_ANNOTATION: &str = "inference.networking.k8s.io/active-ports";

/// Upstream's bound on `targetPorts`.
pub const MAX_TARGET_PORTS: usize = 8;

/// What discovery needs of a pool, from an InferencePool of either version or from the
/// `--endpoint-selector` / `--endpoint-target-ports` flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    pub namespace: String,
    pub name: String,
    /// Pods count only when their labels contain all of these. Empty (possible only from a CRD,
    /// as upstream) selects every pod of the namespace.
    pub selector: BTreeMap<String, String>,
    /// In order: a port's index is the `rank` in endpoint ids. 1 to 8, distinct, never 0.
    pub target_ports: Vec<u16>,
}

/// A pool that cannot be used; `field` names the offending field or flag.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PoolError {
    #[error("{field}: {count} target ports, need 1 to {MAX_TARGET_PORTS}")]
    PortCount { field: String, count: usize },
    #[error("{field}: port {port} is outside 1..65535")]
    PortRange { field: String, port: i64 },
    #[error("{field}: duplicate port {port}")]
    DuplicatePort { field: String, port: u16 },
    #[error("{field}: must not be empty")]
    Empty { field: String },
    #[error("{field}: {entry:?} is not a key=value label pair without whitespace")]
    BadSelector { field: String, entry: String },
    #[error("{field}: label {key:?} given twice")]
    DuplicateLabel { field: String, key: String },
}

/// What pod → endpoint resolution needs besides the pool.
#[derive(Debug, Clone, Copy)]
pub struct ResolveContext<'a> {
    pub registry: &'a EngineRegistry,
    pub source: &'a MetricsDataSourceParams,
    /// `--model-server-metrics-port`: used only when the pool has exactly 1 target port (with
    /// several, each rank is its own server with its own metrics page on its own port).
    pub metrics_port: Option<u16>,
}

/// Something odd about a pod that did not stop it from counting; for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodWarning {
    /// The engine label names no engine the registry knows: the default engine is used.
    UnknownEngine { pod: String, label: String, value: String },
    /// An active-ports entry that is not a number or not one of the pool's target ports.
    BadActivePort { pod: String, entry: String },
}

// === impl PoolSpec ===

impl PoolSpec {
    /// From a GA pool. Unlike the flags, duplicate ports are rejected (the CRD's CEL rule
    /// forbids them, so one here means validation was bypassed).
    pub fn from_v1(pool: &v1::InferencePool) -> Result<Self, PoolError> {
        let (namespace, name) = identity(&pool.metadata)?;
        let ports = &pool.spec.target_ports;
        if ports.is_empty() || ports.len() > MAX_TARGET_PORTS {
            return Err(PoolError::PortCount { field: "spec.targetPorts".into(), count: ports.len() });
        }
        let mut target_ports: Vec<u16> = Vec::with_capacity(ports.len());
        for (i, p) in ports.iter().enumerate() {
            let field = || format!("spec.targetPorts[{i}].number");
            let port = port_from_i32(p.number)
                .ok_or_else(|| PoolError::PortRange { field: field(), port: p.number.into() })?;
            if target_ports.contains(&port) {
                return Err(PoolError::DuplicatePort { field: field(), port });
            }
            target_ports.push(port);
        }
        Ok(PoolSpec { namespace, name, selector: pool.spec.selector.match_labels.clone(), target_ports })
    }

    /// From a v1alpha2 pool: one target port.
    pub fn from_v1alpha2(pool: &v1alpha2::InferencePool) -> Result<Self, PoolError> {
        let (namespace, name) = identity(&pool.metadata)?;
        let number = pool.spec.target_port_number;
        let port = port_from_i32(number)
            .ok_or_else(|| PoolError::PortRange { field: "spec.targetPortNumber".into(), port: number.into() })?;
        Ok(PoolSpec { namespace, name, selector: pool.spec.selector.clone(), target_ports: vec![port] })
    }

    /// From `--endpoint-selector k=v,k2=v2` and `--endpoint-target-ports`, as upstream's
    /// standalone mode. The flags name no pool, so `name` is empty (callers may set one).
    /// Duplicate ports are dropped (first occurrence kept) since a repeated value is harmless.
    pub fn from_flags(namespace: &str, selector: &str, ports: &[u16]) -> Result<Self, PoolError> {
        let selector = parse_selector(selector)?;
        let field = || "--endpoint-target-ports".to_string();
        let mut target_ports: Vec<u16> = Vec::with_capacity(ports.len());
        for &port in ports {
            if port == 0 {
                return Err(PoolError::PortRange { field: field(), port: 0 });
            }
            if !target_ports.contains(&port) {
                target_ports.push(port);
            }
        }
        if target_ports.is_empty() || target_ports.len() > MAX_TARGET_PORTS {
            return Err(PoolError::PortCount { field: field(), count: target_ports.len() });
        }
        Ok(PoolSpec { namespace: namespace.to_string(), name: String::new(), selector, target_ports })
    }

    /// Whether a pod with these labels belongs to the pool (namespace aside).
    pub fn selects(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        self.selector.iter().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
    }
}

fn identity(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Result<(String, String), PoolError> {
    let get = |v: &Option<String>, field: &str| match v {
        Some(s) if !s.is_empty() => Ok(s.clone()),
        _ => Err(PoolError::Empty { field: field.to_string() }),
    };
    Ok((get(&meta.namespace, "metadata.namespace")?, get(&meta.name, "metadata.name")?))
}

fn port_from_i32(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|&p| p != 0)
}

fn parse_selector(text: &str) -> Result<BTreeMap<String, String>, PoolError> {
    let field = || "--endpoint-selector".to_string();
    let text = text.trim();
    if text.is_empty() {
        return Err(PoolError::Empty { field: field() });
    }
    let mut out = BTreeMap::new();
    for entry in text.split(',') {
        let bad = || PoolError::BadSelector { field: field(), entry: entry.to_string() };
        if entry.chars().any(char::is_whitespace) {
            return Err(bad());
        }
        // An empty value is a valid label value; an empty key is not a label.
        let (key, value) = entry.split_once('=').ok_or_else(bad)?;
        if key.is_empty() || value.contains('=') {
            return Err(bad());
        }
        if out.insert(key.to_string(), value.to_string()).is_some() {
            return Err(PoolError::DuplicateLabel { field: field(), key: key.to_string() });
        }
    }
    Ok(out)
}

// === impl PodWarning ===

impl fmt::Display for PodWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PodWarning::UnknownEngine { pod, label, value } => {
                write!(f, "pod {pod}: label {label}={value:?} names no known engine, using the default engine")
            }
            PodWarning::BadActivePort { pod, entry } => {
                write!(
                    f,
                    "pod {pod}: {ACTIVE_PORTS_ANNOTATION} entry {entry:?} is not a target port of the pool, ignored"
                )
            }
        }
    }
}

// === pods → endpoints ===

/// Endpoints of one pod (empty when it does not count), plus warnings.
///
/// A pod counts when it is in the pool's namespace, matches the whole selector, is Ready, is
/// not terminating and has an IP. It then gives one endpoint per active target port, in rank
/// order.
pub fn pod_endpoints(
    pool: &PoolSpec,
    pod: &Pod,
    ctx: &ResolveContext<'_>,
    warnings: &mut Vec<PodWarning>,
) -> Vec<Endpoint> {
    let Some((name, ip)) = counting_pod(pool, pod) else {
        return Vec::new();
    };
    let ranks = active_ranks(pool, pod, name, warnings);
    if ranks.is_empty() {
        return Vec::new();
    }
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let engine = engine_of(&labels, ctx.registry, name, warnings);
    let metrics_port_override = if pool.target_ports.len() == 1 { ctx.metrics_port } else { None };
    ranks
        .into_iter()
        .map(|rank| {
            let port = pool.target_ports[rank];
            let metrics_port = metrics_port_override.unwrap_or(port);
            Endpoint {
                id: EndpointId::new(format!("{}/{name}-rank-{rank}", pool.namespace)),
                address: join_host_port(ip, port),
                metrics_url: format!("{}://{}{}", ctx.source.scheme, join_host_port(ip, metrics_port), ctx.source.path),
                engine: engine.clone(),
                labels: labels.clone(),
            }
        })
        .collect()
}

/// All endpoints of a pool, sorted by id.
pub fn pool_endpoints<'p>(
    pool: &PoolSpec,
    pods: impl IntoIterator<Item = &'p Pod>,
    ctx: &ResolveContext<'_>,
    warnings: &mut Vec<PodWarning>,
) -> Vec<Endpoint> {
    let mut out: Vec<Endpoint> = pods.into_iter().flat_map(|pod| pod_endpoints(pool, pod, ctx, warnings)).collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// The pod's name and IP when it counts for the pool.
fn counting_pod<'p>(pool: &PoolSpec, pod: &'p Pod) -> Option<(&'p str, &'p str)> {
    let meta = &pod.metadata;
    let name = meta.name.as_deref().filter(|n| !n.is_empty())?;
    if meta.namespace.as_deref() != Some(pool.namespace.as_str())
        || meta.deletion_timestamp.is_some()
        || !pool.selects(meta.labels.as_ref())
    {
        return None;
    }
    let status = pod.status.as_ref()?;
    let ready = status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True");
    let ip = status.pod_ip.as_deref().map(str::trim).filter(|ip| !ip.is_empty())?;
    ready.then_some((name, ip))
}

/// Indexes into `pool.target_ports` that the pod serves, ascending.
fn active_ranks(pool: &PoolSpec, pod: &Pod, name: &str, warnings: &mut Vec<PodWarning>) -> Vec<usize> {
    let annotation = pod.metadata.annotations.as_ref().and_then(|a| a.get(ACTIVE_PORTS_ANNOTATION));
    let Some(annotation) = annotation else {
        return (0..pool.target_ports.len()).collect();
    };
    // Present but empty means "serving nothing right now" (e.g. draining), not "all ports".
    let mut ranks: Vec<usize> = Vec::new();
    for entry in annotation.split(',').map(str::trim) {
        // Empty entries come from formatting (`8000,` or `8000, ,8001`), not from a wrong
        // port, so they are skipped without a warning.
        if entry.is_empty() {
            continue;
        }
        let rank = entry.parse::<u16>().ok().and_then(|port| pool.target_ports.iter().position(|&p| p == port));
        match rank {
            Some(rank) if !ranks.contains(&rank) => ranks.push(rank),
            Some(_) => {}
            None => warnings.push(PodWarning::BadActivePort { pod: name.to_string(), entry: entry.to_string() }),
        }
    }
    ranks.sort_unstable();
    ranks
}

/// The engine named by the pod's engine label when the registry knows it, else the default.
fn engine_of(
    labels: &BTreeMap<String, String>,
    registry: &EngineRegistry,
    pod: &str,
    warnings: &mut Vec<PodWarning>,
) -> String {
    let key = registry.label_key();
    match labels.get(key).map(|v| (v, v.trim())) {
        Some((_, name)) if registry.get(name).is_some() => name.to_string(),
        // An empty value is an unset label, not a typo worth a warning.
        Some((raw, name)) if !name.is_empty() => {
            warnings.push(PodWarning::UnknownEngine {
                pod: pod.to_string(),
                label: key.to_string(),
                value: raw.clone(),
            });
            registry.default_engine().to_string()
        }
        _ => registry.default_engine().to_string(),
    }
}

/// Whether an InferenceObjective is about this pool: same namespace, and its `poolRef` names the
/// pool in `pool_group` (`--pool-group`; an unset group means the GA group, as upstream).
pub fn objective_applies(objective: &v1alpha2::InferenceObjective, pool: &PoolSpec, pool_group: &str) -> bool {
    let pool_ref = &objective.spec.pool_ref;
    let group = pool_ref.group.as_deref().unwrap_or(super::crd::POOL_GROUP_V1);
    objective.metadata.namespace.as_deref() == Some(pool.namespace.as_str())
        && pool_ref.name == pool.name
        && group == pool_group
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
