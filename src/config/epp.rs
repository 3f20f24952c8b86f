//! The `EndpointPickerConfig` document (`inference.networking.x-k8s.io/v1alpha1`).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ConfigError, path_error};
use crate::metrics::{DEFAULT_ENGINE, DEFAULT_ENGINE_LABEL_KEY, EngineConfig};

pub const API_VERSION: &str = "inference.networking.x-k8s.io/v1alpha1";
pub const KIND: &str = "EndpointPickerConfig";

/// Feature gates upstream accepts; `dataLayer` is a no-op kept for compatibility.
const FEATURE_GATES: [&str; 3] = ["dataLayer", "enableLegacyMetrics", "flowControl"];

/// Plugin types upstream registers, and Switchyard's own (at the end). Types Switchyard does not
/// implement are rejected at instantiation with a clear message rather than silently ignored.
pub const PLUGIN_TYPES: [&str; 34] = [
    "single-profile-handler",
    "max-score-picker",
    "random-picker",
    "weighted-random-picker",
    "queue-scorer",
    "kv-cache-utilization-scorer",
    "running-requests-size-scorer",
    "lora-affinity-scorer",
    "prefix-cache-scorer",
    "token-load-scorer",
    "approx-prefix-cache-producer",
    "inflight-load-producer",
    "predicted-latency-producer",
    "latency-slo-admitter",
    "prefix-cache-affinity-filter",
    "slo-headroom-tier-filter",
    "latency-scorer",
    "utilization-detector",
    "concurrency-detector",
    "global-strict-fairness-policy",
    "round-robin-fairness-policy",
    "fcfs-ordering-policy",
    "edf-ordering-policy",
    "slo-deadline-ordering-policy",
    "static-usage-limit-policy",
    "metrics-data-source",
    "core-metrics-extractor",
    "k8s-notification-source",
    "endpoint-notification-source",
    "openai-parser",
    "passthrough-parser",
    "header-based-testing-filter",
    "destination-endpoint-served-verifier",
    "learned-latency-scorer",
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointPickerConfig {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub feature_gates: Vec<String>,
    #[serde(default)]
    pub plugins: Vec<PluginSpec>,
    #[serde(default)]
    pub scheduling_profiles: Vec<ProfileSpec>,
    #[serde(default)]
    pub saturation_detector: Option<PluginRef>,
    #[serde(default)]
    pub data_layer: Option<DataLayerSpec>,
    #[serde(default)]
    pub parser: Option<PluginRef>,
    /// Accepted for compatibility; flow control is not implemented (see docs/config.md).
    #[serde(default)]
    pub flow_control: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PluginSpec {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(default)]
    pub parameters: Option<Value>,
}

impl PluginSpec {
    /// `name` defaults to `type`.
    pub fn name(&self) -> &str {
        self.name.as_deref().filter(|n| !n.is_empty()).unwrap_or(&self.type_)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProfileSpec {
    pub name: String,
    #[serde(default)]
    pub plugins: Vec<ProfilePluginRef>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProfilePluginRef {
    pub plugin_ref: String,
    #[serde(default)]
    pub weight: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PluginRef {
    pub plugin_ref: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DataLayerSpec {
    #[serde(default)]
    pub sources: Vec<SourceSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceSpec {
    pub plugin_ref: String,
    #[serde(default)]
    pub extractors: Vec<PluginRef>,
}

/// Parameters of `core-metrics-extractor`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CoreMetricsParams {
    #[serde(default)]
    pub engine_label_key: Option<String>,
    #[serde(default)]
    pub default_engine: Option<String>,
    #[serde(default)]
    pub engine_configs: Vec<EngineConfig>,
}

impl CoreMetricsParams {
    pub fn engine_label_key(&self) -> &str {
        self.engine_label_key.as_deref().filter(|s| !s.is_empty()).unwrap_or(DEFAULT_ENGINE_LABEL_KEY)
    }

    pub fn default_engine(&self) -> &str {
        self.default_engine.as_deref().filter(|s| !s.is_empty()).unwrap_or(DEFAULT_ENGINE)
    }
}

/// Parameters of `metrics-data-source`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricsDataSourceParams {
    #[serde(default = "default_scheme")]
    pub scheme: String,
    #[serde(default = "default_path")]
    pub path: String,
    #[serde(default = "default_true")]
    pub insecure_skip_verify: bool,
}

impl Default for MetricsDataSourceParams {
    fn default() -> Self {
        MetricsDataSourceParams { scheme: default_scheme(), path: default_path(), insecure_skip_verify: true }
    }
}

fn default_scheme() -> String {
    "http".into()
}

fn default_path() -> String {
    "/metrics".into()
}

fn default_true() -> bool {
    true
}

/// Upstream's built-in default configuration.
pub const DEFAULT_CONFIG: &str = "\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
featureGates: []
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
- type: metrics-data-source
- type: core-metrics-extractor
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: queue-scorer, weight: 2}
  - {pluginRef: kv-cache-utilization-scorer, weight: 2}
  - {pluginRef: prefix-cache-scorer, weight: 3}
dataLayer:
  sources:
  - pluginRef: metrics-data-source
    extractors: [{pluginRef: core-metrics-extractor}]
";

impl EndpointPickerConfig {
    pub fn default_config() -> Self {
        // A constant covered by tests.
        Self::from_yaml(DEFAULT_CONFIG).unwrap_or_else(|e| unreachable!("default config is valid: {e}"))
    }

    /// Parses and validates a document.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let value: Value = serde_saphyr::from_str(text).map_err(|e| ConfigError::Yaml(e.to_string()))?;
        if !value.is_object() {
            return Err(ConfigError::invalid("<root>", "expected a mapping (an EndpointPickerConfig document)"));
        }
        let cfg: EndpointPickerConfig = serde_path_to_error::deserialize(value).map_err(|e| path_error("", e))?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.api_version != API_VERSION {
            return Err(ConfigError::invalid(
                "apiVersion",
                format!("expected {API_VERSION:?}, got {:?}", self.api_version),
            ));
        }
        if self.kind != KIND {
            return Err(ConfigError::invalid("kind", format!("expected {KIND:?}, got {:?}", self.kind)));
        }
        for (i, gate) in self.feature_gates.iter().enumerate() {
            if !FEATURE_GATES.contains(&gate.as_str()) {
                return Err(ConfigError::invalid(
                    format!("featureGates[{i}]"),
                    format!("unknown feature gate {gate:?} (known: {})", FEATURE_GATES.join(", ")),
                ));
            }
        }
        let mut names = BTreeSet::new();
        for (i, p) in self.plugins.iter().enumerate() {
            if p.type_.trim().is_empty() {
                return Err(ConfigError::invalid(format!("plugins[{i}].type"), "plugin type must not be empty"));
            }
            if !PLUGIN_TYPES.contains(&p.type_.as_str()) {
                return Err(ConfigError::invalid(
                    format!("plugins[{i}].type"),
                    format!("unknown plugin type {:?}", p.type_),
                ));
            }
            if !names.insert(p.name()) {
                return Err(ConfigError::invalid(
                    format!("plugins[{i}].name"),
                    format!("duplicate plugin name {:?}", p.name()),
                ));
            }
        }
        let check_ref = |path: String, r: &str| {
            if names.contains(r) { Ok(()) } else { Err(ConfigError::invalid(path, format!("no plugin named {r:?}"))) }
        };
        let mut profiles = BTreeSet::new();
        for (i, prof) in self.scheduling_profiles.iter().enumerate() {
            if prof.name.trim().is_empty() {
                return Err(ConfigError::invalid(
                    format!("schedulingProfiles[{i}].name"),
                    "profile name must not be empty",
                ));
            }
            if !profiles.insert(prof.name.as_str()) {
                return Err(ConfigError::invalid(
                    format!("schedulingProfiles[{i}].name"),
                    format!("duplicate profile name {:?}", prof.name),
                ));
            }
            for (j, r) in prof.plugins.iter().enumerate() {
                check_ref(format!("schedulingProfiles[{i}].plugins[{j}].pluginRef"), &r.plugin_ref)?;
                if let Some(w) = r.weight
                    && !(w.is_finite() && w >= 0.0)
                {
                    return Err(ConfigError::invalid(
                        format!("schedulingProfiles[{i}].plugins[{j}].weight"),
                        "weight must be a finite number >= 0",
                    ));
                }
            }
        }
        if let Some(r) = &self.saturation_detector {
            // Like upstream, the default detector may be referenced without being defined.
            if r.plugin_ref != "utilization-detector" {
                check_ref("saturationDetector.pluginRef".into(), &r.plugin_ref)?;
            }
        }
        if let Some(r) = &self.parser
            && r.plugin_ref != "openai-parser"
        {
            check_ref("parser.pluginRef".into(), &r.plugin_ref)?;
        }
        if let Some(dl) = &self.data_layer {
            for (i, s) in dl.sources.iter().enumerate() {
                check_ref(format!("dataLayer.sources[{i}].pluginRef"), &s.plugin_ref)?;
                for (j, e) in s.extractors.iter().enumerate() {
                    check_ref(format!("dataLayer.sources[{i}].extractors[{j}].pluginRef"), &e.plugin_ref)?;
                }
            }
        }
        self.core_metrics_params()?;
        self.metrics_data_source()?;
        Ok(())
    }

    /// Decodes the parameters of the first plugin of `type_`, with error paths inside them.
    pub fn plugin_params<T: serde::de::DeserializeOwned + Default>(
        &self,
        type_: &str,
    ) -> Result<Option<(usize, T)>, ConfigError> {
        let Some((i, p)) = self.plugins.iter().enumerate().find(|(_, p)| p.type_ == type_) else {
            return Ok(None);
        };
        let prefix = format!("plugins[{i}].parameters");
        let params = match &p.parameters {
            None | Some(Value::Null) => T::default(),
            Some(v) => serde_path_to_error::deserialize(v.clone()).map_err(|e| path_error(&prefix, e))?,
        };
        Ok(Some((i, params)))
    }

    pub fn core_metrics_params(&self) -> Result<Option<(usize, CoreMetricsParams)>, ConfigError> {
        self.plugin_params("core-metrics-extractor")
    }

    pub fn metrics_data_source(&self) -> Result<MetricsDataSourceParams, ConfigError> {
        let Some((i, p)) = self.plugin_params::<MetricsDataSourceParams>("metrics-data-source")? else {
            return Ok(MetricsDataSourceParams::default());
        };
        if p.scheme != "http" && p.scheme != "https" {
            return Err(ConfigError::invalid(
                format!("plugins[{i}].parameters.scheme"),
                format!("must be http or https, got {:?}", p.scheme),
            ));
        }
        if !p.path.starts_with('/') {
            return Err(ConfigError::invalid(format!("plugins[{i}].parameters.path"), "must start with '/'"));
        }
        Ok(p)
    }

    /// The `metrics-data-source` parameters the config sets explicitly.
    pub(crate) fn metrics_data_source_given(&self) -> Result<Vec<&'static str>, ConfigError> {
        let params = self.plugins.iter().find(|p| p.type_ == "metrics-data-source").and_then(|p| p.parameters.as_ref());
        let Some(Value::Object(map)) = params else { return Ok(Vec::new()) };
        Ok(["scheme", "path", "insecureSkipVerify"].into_iter().filter(|k| map.contains_key(*k)).collect())
    }

    pub fn has_feature_gate(&self, gate: &str) -> bool {
        self.feature_gates.iter().any(|g| g == gate)
    }
}
