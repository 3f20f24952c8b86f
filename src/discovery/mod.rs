//! Discovery: where endpoints come from. Today a static endpoints file (YAML); Kubernetes
//! (InferencePool + Pods) plugs in beside it and produces the same `Vec<Endpoint>`.
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

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, MetricsDataSourceParams, path_error};
use crate::metrics::EngineRegistry;
use crate::model::{Endpoint, EndpointId};
pub mod kubernetes;

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

/// `ip:port`, IPv6 bracketed.
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
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
                    address: join_host_port(&e.address, *port),
                    metrics_url: format!("{}://{}{}", source.scheme, join_host_port(&e.address, metrics_port), path),
                    engine: engine.clone(),
                    labels: e.labels.clone(),
                });
            }
        }
        Ok(out)
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
}
