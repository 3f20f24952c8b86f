//! The static endpoints file as an endpoint source: read at start-up (an error there stops the
//! role with exit code 2), then watched. An edit that parses and resolves replaces the set; one
//! that does not keeps the last good set, and is logged once per distinct content and counted
//! (`switchyard_discovery_errors_total{source="file"}`), naming the key at fault.
//!
//! ```yaml
//! endpoints:
//! - name: vllm-0
//!   address: 10.0.0.5          # IP or host
//!   port: 8000                 # or ports: [8000, 8001] (one endpoint per port: <name>-rank-<i>)
//!   labels: {inference.networking.k8s.io/engine-type: vllm}
//!   metricsPort: 8000          # optional, default: the port
//!   metricsPath: /metrics      # optional, default: the metrics-data-source path
//! ```
//!
//! The file is polled (its content compared with the last one read) rather than watched with
//! inotify: no extra dependency, works on every filesystem (ConfigMap volumes swap a symlink), and
//! a poll every second costs one small read.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{DiscoveryMetrics, EndpointSet, EndpointSource, Resolver};
use crate::config::{ConfigError, MetricsDataSourceParams, path_error};
use crate::metrics::EngineRegistry;
use crate::model::{Endpoint, EndpointId};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StaticEndpoints {
    pub endpoints: Vec<StaticEndpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StaticEndpoint {
    pub name: String,
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_path: Option<String>,
}

impl StaticEndpoints {
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let value: serde_json::Value = serde_saphyr::from_str(text).map_err(|e| ConfigError::Yaml(e.to_string()))?;
        serde_path_to_error::deserialize(value).map_err(|e| path_error("", e))
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Io { path: path.display().to_string(), source })?;
        Self::from_yaml(&text)
    }

    /// Resolves ports, engines and metrics URLs.
    pub fn resolve(
        &self,
        registry: &EngineRegistry,
        source: &MetricsDataSourceParams,
    ) -> Result<Vec<Endpoint>, ConfigError> {
        let mut out: Vec<Endpoint> = Vec::new();
        for (i, e) in self.endpoints.iter().enumerate() {
            let at = |field: &str| format!("endpoints[{i}].{field}");
            if e.name.trim().is_empty() {
                return Err(ConfigError::invalid(at("name"), "must not be empty"));
            }
            if e.address.trim().is_empty() {
                return Err(ConfigError::invalid(at("address"), "must not be empty"));
            }
            let ports: Vec<u16> = match (e.port, e.ports.is_empty()) {
                (Some(p), true) => vec![p],
                (None, false) => e.ports.clone(),
                (Some(_), false) => return Err(ConfigError::invalid(at("ports"), "set either port or ports")),
                (None, true) => return Err(ConfigError::invalid(at("port"), "a port is required")),
            };
            if ports.contains(&0) {
                return Err(ConfigError::invalid(at("port"), "port 0 is not a valid target"));
            }
            let engine = registry.resolve(&e.labels).name.clone();
            for (rank, port) in ports.iter().enumerate() {
                let id = if ports.len() == 1 { e.name.clone() } else { format!("{}-rank-{rank}", e.name) };
                if out.iter().any(|o| o.id.as_str() == id) {
                    return Err(ConfigError::invalid(at("name"), format!("duplicate endpoint {id:?}")));
                }
                let metrics_port = e.metrics_port.unwrap_or(*port);
                let path = e.metrics_path.as_deref().unwrap_or(&source.path);
                out.push(Endpoint {
                    id: EndpointId::new(&id),
                    address: super::join_host_port(&e.address, *port),
                    metrics_url: format!(
                        "{}://{}{}",
                        source.scheme,
                        super::join_host_port(&e.address, metrics_port),
                        path
                    ),
                    engine: engine.clone(),
                    labels: e.labels.clone(),
                });
            }
        }
        Ok(out)
    }
}

/// How often the file is read for changes.
pub const DEFAULT_POLL: Duration = Duration::from_secs(1);

/// Reads `path` (an error here is the caller's to report) and keeps following it every `poll`
/// until every receiver of the source is gone.
pub fn watch_file(
    path: std::path::PathBuf,
    resolver: Resolver,
    poll: Duration,
    metrics: DiscoveryMetrics,
) -> Result<EndpointSource, ConfigError> {
    let text = read(&path)?;
    let first = load_text(&text, &resolver)?;
    metrics.set_endpoints("file", first.len());
    let (tx, rx) = watch::channel(Arc::new(EndpointSet::ready(first)));
    let task = tokio::spawn(follow_file(path, text, resolver, poll, metrics, tx));
    Ok(EndpointSource::new(rx, task))
}

fn read(path: &std::path::Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.display().to_string(), source })
}

fn load_text(text: &str, resolver: &Resolver) -> Result<Vec<Endpoint>, ConfigError> {
    StaticEndpoints::from_yaml(text)?.resolve(&resolver.registry, &resolver.source)
}

async fn follow_file(
    path: std::path::PathBuf,
    mut last: String,
    resolver: Resolver,
    poll: Duration,
    metrics: DiscoveryMetrics,
    tx: watch::Sender<Arc<EndpointSet>>,
) {
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tx.closed() => return,
        }
        // A file that cannot be read right now (being replaced) is the same as a bad edit: the
        // last good set stays.
        let text = match read(&path) {
            Ok(t) => t,
            Err(e) => {
                if last.is_empty() {
                    continue;
                }
                metrics.error("file");
                tracing::warn!(file = %path.display(), error = %e, "endpoints file unreadable; keeping the last good set");
                last.clear();
                continue;
            }
        };
        if text == last {
            continue;
        }
        last = text;
        match load_text(&last, &resolver) {
            Ok(endpoints) => {
                metrics.set_endpoints("file", endpoints.len());
                let set = EndpointSet::ready(endpoints);
                if tx.borrow().endpoints != set.endpoints {
                    tracing::info!(file = %path.display(), endpoints = set.endpoints.len(), "endpoints file changed");
                    metrics.update("file");
                    tx.send_replace(Arc::new(set));
                }
            }
            Err(e) => {
                metrics.error("file");
                tracing::warn!(file = %path.display(), error = %e, "endpoints file edit rejected; keeping the last good set");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_engines_and_urls() {
        let yaml = "endpoints:\n- {name: a, address: 10.0.0.1, port: 8000, labels: {inference.networking.k8s.io/engine-type: sglang}}\n- {name: b, address: 'fd00::1', ports: [8000, 8001], metricsPath: /m}\n";
        let eps = StaticEndpoints::from_yaml(yaml)
            .expect("valid")
            .resolve(&EngineRegistry::builtin(), &MetricsDataSourceParams::default())
            .expect("resolved");
        assert_eq!(eps.len(), 3);
        assert_eq!((eps[0].id.as_str(), eps[0].engine.as_str()), ("a", "sglang"));
        assert_eq!(eps[0].metrics_url, "http://10.0.0.1:8000/metrics");
        assert_eq!(eps[2].id.as_str(), "b-rank-1");
        assert_eq!(eps[2].address, "[fd00::1]:8001");
        assert_eq!(eps[2].metrics_url, "http://[fd00::1]:8001/m");
        assert_eq!(eps[1].engine, "vllm", "no label: default engine");
    }

    #[test]
    fn bad_files_name_the_key() {
        let err = StaticEndpoints::from_yaml("endpoints:\n- {name: a, address: x, port: 1, prot: 2}\n")
            .expect_err("unknown key");
        assert!(err.to_string().contains("endpoints[0].prot"), "{err}");
        let err = StaticEndpoints::from_yaml("endpoints:\n- {name: a, address: x}\n")
            .expect("parses")
            .resolve(&EngineRegistry::builtin(), &MetricsDataSourceParams::default())
            .expect_err("no port");
        assert!(err.to_string().contains("endpoints[0].port"), "{err}");
    }

    fn resolver() -> Resolver {
        Resolver { registry: Arc::new(EngineRegistry::builtin()), source: MetricsDataSourceParams::default() }
    }

    async fn next_ids(rx: &mut watch::Receiver<Arc<EndpointSet>>) -> Vec<String> {
        tokio::time::timeout(Duration::from_secs(5), rx.changed()).await.expect("a new set in time").expect("open");
        rx.borrow_and_update().endpoints.iter().map(|e| e.id.to_string()).collect()
    }

    #[tokio::test]
    async fn edits_change_the_set_and_bad_edits_keep_the_last_good_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("endpoints.yaml");
        std::fs::write(&path, "endpoints:\n- {name: b, address: 10.0.0.2, port: 8000}\n").expect("write");
        let metrics = DiscoveryMetrics::default();
        let source = watch_file(path.clone(), resolver(), Duration::from_millis(10), metrics.clone()).expect("loads");
        let mut rx = source.updates();
        assert_eq!(rx.borrow_and_update().endpoints.len(), 1);
        assert!(rx.borrow().synced);

        std::fs::write(
            &path,
            "endpoints:\n- {name: b, address: 10.0.0.2, port: 8000}\n- {name: a, address: 10.0.0.1, port: 8000}\n",
        )
        .expect("write");
        assert_eq!(next_ids(&mut rx).await, ["a", "b"], "sorted by id");

        // A typo: the set stays, the error is counted once for this content.
        std::fs::write(&path, "endpoints:\n- {name: c, address: 10.0.0.3, prot: 8000}\n").expect("write");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while metrics.errors("file") == 0 {
            assert!(tokio::time::Instant::now() < deadline, "the bad edit was never counted");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(metrics.errors("file"), 1, "one error per distinct bad content");
        assert!(!rx.has_changed().expect("open"), "nothing published for a bad edit");
        assert_eq!(source.current().endpoints.len(), 2);

        // Removed file: still the last good set.
        std::fs::remove_file(&path).expect("rm");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(source.current().endpoints.len(), 2);

        std::fs::write(&path, "endpoints:\n- {name: a, address: 10.0.0.1, port: 8000}\n").expect("write");
        assert_eq!(next_ids(&mut rx).await, ["a"]);
    }

    #[tokio::test]
    async fn a_bad_file_at_start_up_is_an_error_naming_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("endpoints.yaml");
        std::fs::write(&path, "endpoints:\n- {name: a, adress: 10.0.0.1, port: 8000}\n").expect("write");
        let err = watch_file(path, resolver(), DEFAULT_POLL, DiscoveryMetrics::default()).err().expect("refused");
        assert!(err.to_string().contains("endpoints[0].adress"), "{err}");
    }
}
