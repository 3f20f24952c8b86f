//! Engine mappings: which series of a model server's metrics page feed which engine-neutral
//! metric, and the registry that picks a mapping for an endpoint from its engine label.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::spec::{MetricSpec, SpecError};

/// The pod label that names an endpoint's engine, as upstream.
pub const DEFAULT_ENGINE_LABEL_KEY: &str = "inference.networking.k8s.io/engine-type";
pub const DEFAULT_ENGINE: &str = "vllm";

/// One `engineConfigs[]` entry of `core-metrics-extractor`, as written in YAML. An omitted spec
/// disables that metric; omitted label names default to `block_size` / `num_gpu_blocks`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EngineConfig {
    pub name: String,
    #[serde(default)]
    pub queued_requests_spec: Option<String>,
    #[serde(default)]
    pub running_requests_spec: Option<String>,
    #[serde(default)]
    pub kv_usage_spec: Option<String>,
    #[serde(default)]
    pub lora_spec: Option<String>,
    #[serde(default)]
    pub cache_info_spec: Option<String>,
    #[serde(default)]
    pub cache_block_size_label_name: Option<String>,
    #[serde(default)]
    pub cache_num_blocks_label_name: Option<String>,
    #[serde(default)]
    pub cache_block_size_spec: Option<String>,
    #[serde(default)]
    pub cache_num_blocks_spec: Option<String>,
}

/// A validated mapping, ready to normalize pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineMapping {
    pub name: String,
    pub queued: Option<MetricSpec>,
    pub running: Option<MetricSpec>,
    pub kv_usage: Option<MetricSpec>,
    pub lora: Option<MetricSpec>,
    pub cache_info: Option<MetricSpec>,
    pub cache_block_size_label: String,
    pub cache_num_blocks_label: String,
    pub cache_block_size: Option<MetricSpec>,
    pub cache_num_blocks: Option<MetricSpec>,
    /// Every metric name the specs read, deduplicated: what the scanner looks for.
    pub(crate) names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EngineError {
    #[error("engine {engine:?}: {field}: {source}")]
    Spec {
        engine: String,
        field: &'static str,
        #[source]
        source: SpecError,
    },
    #[error("engine name must not be empty")]
    EmptyName,
    #[error("engine name \"default\" is reserved")]
    ReservedName,
    #[error("duplicate engine name {0:?}")]
    Duplicate(String),
    #[error("default engine {0:?} is not defined (known: {1})")]
    UnknownDefault(String, String),
}

impl EngineConfig {
    fn builtin(name: &str, specs: [&str; 5], labels: [&str; 2], gauges: [&str; 2]) -> Self {
        let opt = |s: &str| Some(s.to_string());
        EngineConfig {
            name: name.to_string(),
            queued_requests_spec: opt(specs[0]),
            running_requests_spec: opt(specs[1]),
            kv_usage_spec: opt(specs[2]),
            lora_spec: opt(specs[3]),
            cache_info_spec: opt(specs[4]),
            cache_block_size_label_name: opt(labels[0]),
            cache_num_blocks_label_name: opt(labels[1]),
            cache_block_size_spec: opt(gauges[0]),
            cache_num_blocks_spec: opt(gauges[1]),
        }
    }
}

/// The built-in engines, upstream's defaults plus the vLLM V0 KV-cache name as a fallback.
pub fn builtin_engine_configs() -> Vec<EngineConfig> {
    vec![
        EngineConfig::builtin(
            "vllm",
            [
                "vllm:num_requests_waiting",
                "vllm:num_requests_running",
                // V1 from 0.10 exports kv_cache_usage_perc; V0 and V1 up to 0.11 export
                // gpu_cache_usage_perc (removed later). Prefer the new name when both exist.
                "vllm:kv_cache_usage_perc or vllm:gpu_cache_usage_perc",
                "vllm:lora_requests_info",
                "vllm:cache_config_info",
            ],
            ["block_size", "num_gpu_blocks"],
            ["", ""],
        ),
        EngineConfig::builtin(
            "sglang",
            ["sglang:num_queue_reqs", "sglang:num_running_reqs", "sglang:token_usage", "", "sglang:cache_config_info"],
            ["page_size", "num_pages"],
            ["", ""],
        ),
        EngineConfig::builtin(
            "trtllm-serve",
            ["trtllm_num_requests_waiting", "trtllm_num_requests_running", "trtllm_kv_cache_utilization", "", ""],
            ["block_size", "num_gpu_blocks"],
            ["trtllm_kv_cache_tokens_per_block", "trtllm_kv_cache_max_blocks"],
        ),
        EngineConfig::builtin(
            "triton-tensorrt-llm",
            [
                "nv_trt_llm_request_metrics{request_type=waiting}",
                "nv_trt_llm_request_metrics{request_type=scheduled}",
                "nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=fraction}",
                "",
                "",
            ],
            ["block_size", "num_gpu_blocks"],
            [
                "nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=tokens_per}",
                "nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=max}",
            ],
        ),
    ]
}

impl EngineMapping {
    pub fn from_config(cfg: &EngineConfig) -> Result<Self, EngineError> {
        if cfg.name.trim().is_empty() {
            return Err(EngineError::EmptyName);
        }
        if cfg.name == "default" {
            return Err(EngineError::ReservedName);
        }
        let parse = |field: &'static str, v: &Option<String>| {
            MetricSpec::parse(v.as_deref().unwrap_or("")).map_err(|source| EngineError::Spec {
                engine: cfg.name.clone(),
                field,
                source,
            })
        };
        let label = |v: &Option<String>, default: &str| match v.as_deref() {
            Some(s) if !s.trim().is_empty() => s.trim().to_string(),
            _ => default.to_string(),
        };
        let mut mapping = EngineMapping {
            name: cfg.name.clone(),
            queued: parse("queuedRequestsSpec", &cfg.queued_requests_spec)?,
            running: parse("runningRequestsSpec", &cfg.running_requests_spec)?,
            kv_usage: parse("kvUsageSpec", &cfg.kv_usage_spec)?,
            lora: parse("loraSpec", &cfg.lora_spec)?,
            cache_info: parse("cacheInfoSpec", &cfg.cache_info_spec)?,
            cache_block_size_label: label(&cfg.cache_block_size_label_name, "block_size"),
            cache_num_blocks_label: label(&cfg.cache_num_blocks_label_name, "num_gpu_blocks"),
            cache_block_size: parse("cacheBlockSizeSpec", &cfg.cache_block_size_spec)?,
            cache_num_blocks: parse("cacheNumBlocksSpec", &cfg.cache_num_blocks_spec)?,
            names: Vec::new(),
        };
        mapping.names = mapping.collect_names();
        Ok(mapping)
    }

    fn collect_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        let specs = [
            &self.queued,
            &self.running,
            &self.kv_usage,
            &self.lora,
            &self.cache_info,
            &self.cache_block_size,
            &self.cache_num_blocks,
        ];
        for spec in specs.into_iter().flatten() {
            for name in spec.names() {
                if !names.iter().any(|n| n == name) {
                    names.push(name.to_string());
                }
            }
        }
        names
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }
}

/// Overrides of the default engine's specs from the command line (`--total-queued-requests-metric`
/// and friends). `Some("")` disables a metric; `None` keeps the engine's spec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecOverrides {
    pub queued: Option<String>,
    pub running: Option<String>,
    pub kv_usage: Option<String>,
    pub lora: Option<String>,
    pub cache_info: Option<String>,
}

impl SpecOverrides {
    pub fn is_empty(&self) -> bool {
        *self == SpecOverrides::default()
    }

    pub fn apply(&self, cfg: &mut EngineConfig) {
        let set = |target: &mut Option<String>, v: &Option<String>| {
            if let Some(v) = v {
                *target = Some(v.clone());
            }
        };
        set(&mut cfg.queued_requests_spec, &self.queued);
        set(&mut cfg.running_requests_spec, &self.running);
        set(&mut cfg.kv_usage_spec, &self.kv_usage);
        set(&mut cfg.lora_spec, &self.lora);
        set(&mut cfg.cache_info_spec, &self.cache_info);
    }
}

/// All engines known to this process and how an endpoint picks one.
#[derive(Debug, Clone)]
pub struct EngineRegistry {
    engines: BTreeMap<String, Arc<EngineMapping>>,
    default_engine: String,
    label_key: String,
}

impl EngineRegistry {
    /// Builds the registry: built-ins, replaced whole by user entries of the same name, plus user
    /// engines; `overrides` then apply to the default engine.
    pub fn build(
        user: &[EngineConfig],
        default_engine: &str,
        label_key: &str,
        overrides: &SpecOverrides,
    ) -> Result<Self, EngineError> {
        let mut seen = std::collections::BTreeSet::new();
        for cfg in user {
            if !seen.insert(cfg.name.as_str()) {
                return Err(EngineError::Duplicate(cfg.name.clone()));
            }
        }
        let mut configs: BTreeMap<String, EngineConfig> =
            builtin_engine_configs().into_iter().map(|c| (c.name.clone(), c)).collect();
        for cfg in user {
            configs.insert(cfg.name.clone(), cfg.clone());
        }
        let Some(default_cfg) = configs.get_mut(default_engine) else {
            let known = configs.keys().cloned().collect::<Vec<_>>().join(", ");
            return Err(EngineError::UnknownDefault(default_engine.to_string(), known));
        };
        overrides.apply(default_cfg);
        let engines = configs
            .values()
            .map(|c| EngineMapping::from_config(c).map(|m| (c.name.clone(), Arc::new(m))))
            .collect::<Result<_, _>>()?;
        Ok(EngineRegistry { engines, default_engine: default_engine.to_string(), label_key: label_key.to_string() })
    }

    /// Built-ins only, default `vllm`.
    pub fn builtin() -> Self {
        // The built-in specs are constants covered by tests; failing here is a programming error.
        Self::build(&[], DEFAULT_ENGINE, DEFAULT_ENGINE_LABEL_KEY, &SpecOverrides::default())
            .unwrap_or_else(|e| unreachable!("built-in engines are valid: {e}"))
    }

    pub fn get(&self, name: &str) -> Option<&Arc<EngineMapping>> {
        self.engines.get(name)
    }

    pub fn default_mapping(&self) -> &Arc<EngineMapping> {
        // `build` checked that the default exists.
        &self.engines[&self.default_engine]
    }

    pub fn default_engine(&self) -> &str {
        &self.default_engine
    }

    pub fn label_key(&self) -> &str {
        &self.label_key
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.engines.keys().map(String::as_str)
    }

    /// The mapping for an endpoint with these labels: its engine label when it names a known
    /// engine, else the default engine.
    pub fn resolve(&self, labels: &BTreeMap<String, String>) -> &Arc<EngineMapping> {
        labels
            .get(&self.label_key)
            .and_then(|name| self.engines.get(name.trim()))
            .unwrap_or_else(|| self.default_mapping())
    }
}
