//! Configuration: upstream's `EndpointPickerConfig` YAML, read strictly and validated once.
//!
//! Unknown keys anywhere, plugin parameters included, are errors that name the key's path
//! (`plugins[2].parameters.engineConfigs[0].kvUsageSpc`). The value returned by [`load`] is
//! immutable; roles derive what they need from it (engine registry, scheduling profiles).
//! Command-line flags are merged in by [`MetricFlags`] without touching the YAML types.

mod epp;

use std::path::Path;

use thiserror::Error;

pub use epp::{
    API_VERSION, CoreMetricsParams, DataLayerSpec, EndpointPickerConfig, KIND, MetricsDataSourceParams, PluginRef,
    PluginSpec, ProfilePluginRef, ProfileSpec, SourceSpec,
};

use crate::metrics::{EngineError, EngineRegistry, MetricSpec, SpecOverrides};

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error("cannot read config file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config is not valid YAML: {0}")]
    Yaml(String),
    #[error("--config-file and --config-text are mutually exclusive")]
    BothSources,
}

impl ConfigError {
    pub fn invalid(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid { path: path.into(), message: message.into() }
    }
}

/// Reads the config from `--config-file`, `--config-text`, or the built-in default.
pub fn load(file: Option<&Path>, text: Option<&str>) -> Result<EndpointPickerConfig, ConfigError> {
    match (file, text) {
        (Some(_), Some(_)) => Err(ConfigError::BothSources),
        (Some(path), None) => {
            let text = std::fs::read_to_string(path)
                .map_err(|source| ConfigError::Io { path: path.display().to_string(), source })?;
            EndpointPickerConfig::from_yaml(&text)
        }
        (None, Some(text)) => EndpointPickerConfig::from_yaml(text),
        (None, None) => Ok(EndpointPickerConfig::default_config()),
    }
}

/// Upstream's metric-mapping flags. `Some("")` disables the metric; `None` keeps the engine's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricFlags {
    pub total_queued_requests_metric: Option<String>,
    pub total_running_requests_metric: Option<String>,
    pub kv_cache_usage_percentage_metric: Option<String>,
    pub lora_info_metric: Option<String>,
    pub cache_info_metric: Option<String>,
    /// `--model-server-metrics-scheme`, `-path`, `-https-insecure-skip-verify` (deprecated
    /// upstream): when given, they replace the built-in defaults; parameters the config's
    /// `metrics-data-source` plugin sets win over them.
    pub metrics_scheme: Option<String>,
    pub metrics_path: Option<String>,
    pub metrics_insecure_skip_verify: Option<bool>,
}

impl MetricFlags {
    fn overrides(&self) -> Result<SpecOverrides, ConfigError> {
        let check = |flag: &str, v: &Option<String>| -> Result<Option<String>, ConfigError> {
            if let Some(spec) = v {
                MetricSpec::parse(spec).map_err(|e| ConfigError::invalid(flag, e.to_string()))?;
            }
            Ok(v.clone())
        };
        Ok(SpecOverrides {
            queued: check("--total-queued-requests-metric", &self.total_queued_requests_metric)?,
            running: check("--total-running-requests-metric", &self.total_running_requests_metric)?,
            kv_usage: check("--kv-cache-usage-percentage-metric", &self.kv_cache_usage_percentage_metric)?,
            lora: check("--lora-info-metric", &self.lora_info_metric)?,
            cache_info: check("--cache-info-metric", &self.cache_info_metric)?,
        })
    }
}

impl EndpointPickerConfig {
    /// The metrics data source, as upstream resolves it: built-in defaults < the deprecated
    /// `--model-server-metrics-*` flags (when given) < the parameters the `metrics-data-source`
    /// plugin sets.
    pub fn metrics_data_source_with(&self, flags: &MetricFlags) -> Result<MetricsDataSourceParams, ConfigError> {
        let mut p = MetricsDataSourceParams::default();
        if let Some(scheme) = &flags.metrics_scheme {
            if scheme != "http" && scheme != "https" {
                return Err(ConfigError::invalid(
                    "--model-server-metrics-scheme",
                    format!("must be http or https, got {scheme:?}"),
                ));
            }
            p.scheme = scheme.clone();
        }
        if let Some(path) = &flags.metrics_path {
            if !path.starts_with('/') {
                return Err(ConfigError::invalid("--model-server-metrics-path", "must start with '/'"));
            }
            p.path = path.clone();
        }
        if let Some(skip) = flags.metrics_insecure_skip_verify {
            p.insecure_skip_verify = skip;
        }
        let given = self.metrics_data_source_given()?;
        let plugin = self.metrics_data_source()?;
        if given.contains(&"scheme") {
            p.scheme = plugin.scheme;
        }
        if given.contains(&"path") {
            p.path = plugin.path;
        }
        if given.contains(&"insecureSkipVerify") {
            p.insecure_skip_verify = plugin.insecure_skip_verify;
        }
        Ok(p)
    }

    /// The engine registry from the `core-metrics-extractor` plugin (built-ins when absent) with
    /// the metric flags applied to the default engine.
    pub fn engine_registry(&self, flags: &MetricFlags) -> Result<EngineRegistry, ConfigError> {
        let overrides = flags.overrides()?;
        let (index, params) = match self.core_metrics_params()? {
            Some((i, p)) => (Some(i), p),
            None => (None, CoreMetricsParams::default()),
        };
        let base = index.map(|i| format!("plugins[{i}].parameters")).unwrap_or_else(|| "core-metrics-extractor".into());
        let engine_path = |name: &str, field: &str| {
            let j = params.engine_configs.iter().position(|c| c.name == name);
            match j {
                Some(j) if field.is_empty() => format!("{base}.engineConfigs[{j}]"),
                Some(j) => format!("{base}.engineConfigs[{j}].{field}"),
                None => format!("{base}.defaultEngine"),
            }
        };
        EngineRegistry::build(&params.engine_configs, params.default_engine(), params.engine_label_key(), &overrides)
            .map_err(|e| match &e {
                EngineError::Spec { engine, field, .. } => {
                    ConfigError::invalid(engine_path(engine, field), e.to_string())
                }
                EngineError::Duplicate(name) => {
                    let second = params.engine_configs.iter().enumerate().filter(|(_, c)| &c.name == name).nth(1);
                    let j = second.map_or(0, |(j, _)| j);
                    ConfigError::invalid(format!("{base}.engineConfigs[{j}].name"), e.to_string())
                }
                EngineError::EmptyName | EngineError::ReservedName => {
                    let j = params
                        .engine_configs
                        .iter()
                        .position(|c| c.name.trim().is_empty() || c.name == "default")
                        .unwrap_or(0);
                    ConfigError::invalid(format!("{base}.engineConfigs[{j}].name"), e.to_string())
                }
                EngineError::UnknownDefault(..) => ConfigError::invalid(format!("{base}.defaultEngine"), e.to_string()),
            })
    }
}

pub(crate) fn path_error<E: std::fmt::Display>(prefix: &str, e: serde_path_to_error::Error<E>) -> ConfigError {
    let inner = e.path().to_string();
    let path = match (prefix.is_empty(), inner.as_str()) {
        (true, _) => inner.clone(),
        (false, "." | "") => prefix.to_string(),
        (false, _) => format!("{prefix}.{inner}"),
    };
    let path = if path.is_empty() || path == "." { "<root>".to_string() } else { path };
    ConfigError::invalid(path, e.into_inner().to_string())
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
