//! Builds the scheduler from an `EndpointPickerConfig`: plugin types and parameters as upstream,
//! with upstream's defaulting rules, validated strictly (errors name the key's path).

use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::config::{ConfigError, EndpointPickerConfig, PluginSpec};

/// What one plugin instance is, once its parameters are read.
#[derive(Debug, Clone, PartialEq)]
pub enum Plugin {
    Filter(FilterKind),
    Scorer(ScorerKind),
    Picker(PickerKind),
    Detector(Detector),
    Prefix(PrefixParams),
    /// Accepted for compatibility, no effect on scheduling (data sources, parsers, profile handler,
    /// in-flight producer, flow-control policies).
    Inert,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FilterKind {
    Detector(Detector),
    HeaderBasedTesting,
    PrefixAffinity { threshold: f64, exploration: f64 },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ScorerKind {
    Queue,
    KvCache,
    RunningRequests,
    LoraAffinity,
    PrefixCache,
    TokenLoad {
        threshold_tokens: f64,
    },
    /// Switchyard's: expected wait = (queue + 1) × the endpoint's learned time per queued request.
    LearnedLatency,
}

impl FilterKind {
    /// The upstream plugin type name.
    pub fn type_name(&self) -> &'static str {
        match self {
            FilterKind::Detector(Detector::Utilization { .. }) => "utilization-detector",
            FilterKind::Detector(Detector::Concurrency { .. }) => "concurrency-detector",
            FilterKind::HeaderBasedTesting => "header-based-testing-filter",
            FilterKind::PrefixAffinity { .. } => "prefix-cache-affinity-filter",
        }
    }
}

impl PickerKind {
    /// The upstream plugin type name.
    pub fn type_name(&self) -> &'static str {
        match self {
            PickerKind::MaxScore { .. } => "max-score-picker",
            PickerKind::Random { .. } => "random-picker",
            PickerKind::WeightedRandom { .. } => "weighted-random-picker",
        }
    }
}

impl ScorerKind {
    /// The upstream plugin type name.
    pub fn type_name(self) -> &'static str {
        match self {
            ScorerKind::Queue => "queue-scorer",
            ScorerKind::KvCache => "kv-cache-utilization-scorer",
            ScorerKind::RunningRequests => "running-requests-size-scorer",
            ScorerKind::LoraAffinity => "lora-affinity-scorer",
            ScorerKind::PrefixCache => "prefix-cache-scorer",
            ScorerKind::TokenLoad { .. } => "token-load-scorer",
            ScorerKind::LearnedLatency => "learned-latency-scorer",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PickerKind {
    MaxScore { n: usize },
    Random { n: usize },
    WeightedRandom { n: usize },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Detector {
    Utilization { queue_threshold: f64, kv_threshold: f64, staleness: Duration, headroom: f64 },
    Concurrency { tokens: bool, max_requests: f64, max_tokens: f64, headroom: f64 },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrefixParams {
    pub auto_tune: bool,
    pub block_size_tokens: usize,
    pub max_blocks: usize,
    pub lru_capacity_per_server: usize,
    /// Cap on the whole index, in (hash, endpoint) entries (`maxIndexEntries`, Switchyard's): each
    /// endpoint holds at most this divided by the endpoints in the index.
    pub max_index_entries: usize,
}

impl Default for PrefixParams {
    fn default() -> Self {
        PrefixParams {
            auto_tune: true,
            block_size_tokens: 16,
            max_blocks: 256,
            lru_capacity_per_server: 31_250,
            max_index_entries: super::prefix::DEFAULT_MAX_INDEX_ENTRIES,
        }
    }
}

impl Default for Detector {
    fn default() -> Self {
        Detector::Utilization {
            queue_threshold: 5.0,
            kv_threshold: 0.8,
            staleness: Duration::from_millis(200),
            headroom: 0.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub name: String,
    pub filters: Vec<FilterKind>,
    pub scorers: Vec<(ScorerKind, f64)>,
    pub picker: PickerKind,
}

/// Everything the scheduler needs from the config.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    pub profile: Profile,
    pub prefix: PrefixParams,
    pub detector: Detector,
    /// Metrics older than this are not trusted for load scoring (`--metrics-staleness-threshold`).
    pub staleness: Duration,
    /// Candidates within this much of the best total score are treated as tied.
    pub tie_epsilon: f64,
    /// `destination-endpoint-served-verifier` is configured.
    pub served_verifier: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PickerParams {
    #[serde(default)]
    max_num_of_endpoints: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TokenLoadParams {
    #[serde(default)]
    queue_threshold_tokens: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ApproxPrefixParams {
    auto_tune: Option<bool>,
    block_size_tokens: Option<i64>,
    max_prefix_blocks_to_match: Option<i64>,
    max_prefix_tokens_to_match: Option<i64>,
    lru_capacity_per_server: Option<i64>,
    max_index_entries: Option<i64>,
    /// Deprecated: characters per block.
    block_size: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UtilizationParams {
    queue_depth_threshold: Option<f64>,
    kv_cache_util_threshold: Option<f64>,
    metrics_staleness_threshold: Option<String>,
    headroom: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ConcurrencyParams {
    concurrency_mode: Option<String>,
    max_concurrency: Option<i64>,
    max_token_concurrency: Option<i64>,
    headroom: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PrefixAffinityParams {
    affinity_threshold: Option<f64>,
    exploration_probability: Option<f64>,
    #[serde(rename = "maxTTFTPenaltyMs")]
    max_ttft_penalty_ms: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParams {}

fn params<T: DeserializeOwned + Default>(spec: &PluginSpec, i: usize) -> Result<T, ConfigError> {
    match &spec.parameters {
        None | Some(Value::Null) => Ok(T::default()),
        Some(v) => serde_path_to_error::deserialize(v.clone())
            .map_err(|e| crate::config::path_error(&format!("plugins[{i}].parameters"), e)),
    }
}

/// Parses a Go-style duration ("200ms", "2s", "1m30s", "1.5s").
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut total = 0.0f64;
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let value: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += value * scale;
        rest = &rest[unit_end..];
    }
    // Too large for a Duration is invalid, not a panic (found by fuzzing).
    Duration::try_from_secs_f64(total).ok()
}

fn picker_n(p: PickerParams) -> usize {
    p.max_num_of_endpoints.filter(|n| *n > 0).unwrap_or(1) as usize
}

fn instantiate(spec: &PluginSpec, i: usize) -> Result<Plugin, ConfigError> {
    let path = |field: &str| format!("plugins[{i}].parameters.{field}");
    let plugin = match spec.type_.as_str() {
        "max-score-picker" => Plugin::Picker(PickerKind::MaxScore { n: picker_n(params(spec, i)?) }),
        "random-picker" => Plugin::Picker(PickerKind::Random { n: picker_n(params(spec, i)?) }),
        "weighted-random-picker" => Plugin::Picker(PickerKind::WeightedRandom { n: picker_n(params(spec, i)?) }),
        "queue-scorer" => no_params(spec, i, Plugin::Scorer(ScorerKind::Queue))?,
        "kv-cache-utilization-scorer" => no_params(spec, i, Plugin::Scorer(ScorerKind::KvCache))?,
        "running-requests-size-scorer" => no_params(spec, i, Plugin::Scorer(ScorerKind::RunningRequests))?,
        "lora-affinity-scorer" => no_params(spec, i, Plugin::Scorer(ScorerKind::LoraAffinity))?,
        "learned-latency-scorer" => no_params(spec, i, Plugin::Scorer(ScorerKind::LearnedLatency))?,
        // Upstream ignores this plugin's parameters although its docs show them; here the old
        // parameters configure the prefix index (see `build`).
        "prefix-cache-scorer" => Plugin::Scorer(ScorerKind::PrefixCache),
        "token-load-scorer" => {
            let p: TokenLoadParams = params(spec, i)?;
            let thr = p.queue_threshold_tokens.filter(|t| *t > 0).unwrap_or(4_194_304);
            Plugin::Scorer(ScorerKind::TokenLoad { threshold_tokens: thr as f64 })
        }
        "approx-prefix-cache-producer" => Plugin::Prefix(prefix_params(params(spec, i)?, i)?),
        "utilization-detector" => {
            let p: UtilizationParams = params(spec, i)?;
            let q = p.queue_depth_threshold.unwrap_or(5.0);
            if q <= 0.0 {
                return Err(ConfigError::invalid(path("queueDepthThreshold"), "must be > 0"));
            }
            let kv = p.kv_cache_util_threshold.unwrap_or(0.8);
            if !(kv > 0.0 && kv <= 1.0) {
                return Err(ConfigError::invalid(path("kvCacheUtilThreshold"), "must be in (0, 1]"));
            }
            let staleness = match p.metrics_staleness_threshold.as_deref() {
                None => Duration::from_millis(200),
                Some(s) => parse_duration(s).filter(|d| !d.is_zero()).ok_or_else(|| {
                    ConfigError::invalid(path("metricsStalenessThreshold"), format!("invalid duration {s:?}"))
                })?,
            };
            let headroom = p.headroom.unwrap_or(0.0);
            if headroom < 0.0 {
                return Err(ConfigError::invalid(path("headroom"), "must be >= 0"));
            }
            Plugin::Detector(Detector::Utilization { queue_threshold: q, kv_threshold: kv, staleness, headroom })
        }
        "concurrency-detector" => {
            let p: ConcurrencyParams = params(spec, i)?;
            let tokens = match p.concurrency_mode.as_deref().unwrap_or("requests") {
                "requests" => false,
                "tokens" => true,
                other => {
                    return Err(ConfigError::invalid(
                        path("concurrencyMode"),
                        format!("must be requests or tokens, got {other:?}"),
                    ));
                }
            };
            let headroom = p.headroom.unwrap_or(0.0);
            if headroom < 0.0 {
                return Err(ConfigError::invalid(path("headroom"), "must be >= 0"));
            }
            Plugin::Detector(Detector::Concurrency {
                tokens,
                max_requests: p.max_concurrency.filter(|v| *v > 0).unwrap_or(100) as f64,
                max_tokens: p.max_token_concurrency.filter(|v| *v > 0).unwrap_or(1_000_000) as f64,
                headroom,
            })
        }
        "prefix-cache-affinity-filter" => {
            let p: PrefixAffinityParams = params(spec, i)?;
            let _ = p.max_ttft_penalty_ms;
            Plugin::Filter(FilterKind::PrefixAffinity {
                threshold: p.affinity_threshold.unwrap_or(0.8),
                exploration: p.exploration_probability.unwrap_or(0.01),
            })
        }
        "header-based-testing-filter" => no_params(spec, i, Plugin::Filter(FilterKind::HeaderBasedTesting))?,
        "single-profile-handler"
        | "openai-parser"
        | "inflight-load-producer"
        | "endpoint-notification-source"
        | "destination-endpoint-served-verifier" => no_params(spec, i, Plugin::Inert)?,
        "metrics-data-source" | "core-metrics-extractor" => Plugin::Inert, // validated by the config module
        "global-strict-fairness-policy"
        | "round-robin-fairness-policy"
        | "fcfs-ordering-policy"
        | "edf-ordering-policy"
        | "slo-deadline-ordering-policy"
        | "static-usage-limit-policy" => Plugin::Inert,
        other => {
            return Err(ConfigError::invalid(
                format!("plugins[{i}].type"),
                format!("plugin type {other:?} is not supported by Switchyard (see docs/config.md)"),
            ));
        }
    };
    Ok(plugin)
}

fn no_params(spec: &PluginSpec, i: usize, plugin: Plugin) -> Result<Plugin, ConfigError> {
    let _: NoParams = params(spec, i)?;
    Ok(plugin)
}

fn prefix_params(p: ApproxPrefixParams, i: usize) -> Result<PrefixParams, ConfigError> {
    let path = |field: &str| format!("plugins[{i}].parameters.{field}");
    let mut out = PrefixParams { auto_tune: p.auto_tune.unwrap_or(true), ..PrefixParams::default() };
    match (p.block_size_tokens, p.block_size) {
        (Some(t), _) if t > 0 => out.block_size_tokens = t as usize,
        (Some(_), _) => return Err(ConfigError::invalid(path("blockSizeTokens"), "must be > 0")),
        (None, Some(_)) => {
            return Err(ConfigError::invalid(
                path("blockSize"),
                "deprecated character-based block size: use blockSizeTokens",
            ));
        }
        (None, None) => {}
    }
    if let Some(b) = p.max_prefix_blocks_to_match.filter(|b| *b > 0) {
        out.max_blocks = b as usize;
    }
    if let Some(t) = p.max_prefix_tokens_to_match.filter(|t| *t > 0) {
        out.max_blocks = (t as usize / out.block_size_tokens).max(1);
    }
    if let Some(c) = p.lru_capacity_per_server {
        if c <= 0 {
            return Err(ConfigError::invalid(path("lruCapacityPerServer"), "must be > 0"));
        }
        out.lru_capacity_per_server = c as usize;
    }
    if let Some(c) = p.max_index_entries {
        if c <= 0 {
            return Err(ConfigError::invalid(path("maxIndexEntries"), "must be > 0"));
        }
        out.max_index_entries = usize::try_from(c).unwrap_or(usize::MAX);
    }
    Ok(out)
}

impl SchedulerConfig {
    /// Applies upstream's defaulting: no profile → one `default` profile with every filter, scorer
    /// and picker in plugin order; no picker → `max-score-picker`; scorer weight defaults to 1.
    pub fn build(cfg: &EndpointPickerConfig, staleness: Duration) -> Result<Self, ConfigError> {
        let mut plugins = Vec::with_capacity(cfg.plugins.len());
        for (i, spec) in cfg.plugins.iter().enumerate() {
            plugins.push((spec.name().to_string(), instantiate(spec, i)?));
        }
        let find = |name: &str| plugins.iter().find(|(n, _)| n == name).map(|(_, p)| p);
        let mut prefix = PrefixParams::default();
        for (i, spec) in cfg.plugins.iter().enumerate() {
            if spec.type_ == "prefix-cache-scorer" && spec.parameters.as_ref().is_some_and(|v| !v.is_null()) {
                prefix = prefix_params(params(spec, i)?, i)?;
            }
        }
        if let Some((_, Plugin::Prefix(p))) = plugins.iter().find(|(_, p)| matches!(p, Plugin::Prefix(_))) {
            prefix = *p;
        }
        let detector = match &cfg.saturation_detector {
            Some(r) => match find(&r.plugin_ref) {
                Some(Plugin::Detector(d)) => *d,
                None if r.plugin_ref == "utilization-detector" => Detector::default(),
                _ => {
                    return Err(ConfigError::invalid(
                        "saturationDetector.pluginRef",
                        format!("{:?} is not a saturation detector", r.plugin_ref),
                    ));
                }
            },
            None => plugins
                .iter()
                .find_map(|(n, p)| match p {
                    Plugin::Detector(d) if n == "utilization-detector" => Some(*d),
                    _ => None,
                })
                .unwrap_or_default(),
        };
        let refs: Vec<(String, Option<f64>, String)> = match cfg.scheduling_profiles.len() {
            0 => plugins
                .iter()
                .filter(|(_, p)| matches!(p, Plugin::Filter(_) | Plugin::Scorer(_) | Plugin::Picker(_)))
                .map(|(n, _)| (n.clone(), None, format!("plugins[name={n}]")))
                .collect(),
            1 => cfg.scheduling_profiles[0]
                .plugins
                .iter()
                .enumerate()
                .map(|(j, r)| (r.plugin_ref.clone(), r.weight, format!("schedulingProfiles[0].plugins[{j}].pluginRef")))
                .collect(),
            _ => {
                return Err(ConfigError::invalid(
                    "schedulingProfiles",
                    "single-profile-handler runs exactly one profile; multi-profile handlers are not supported",
                ));
            }
        };
        let name = cfg.scheduling_profiles.first().map_or("default".to_string(), |p| p.name.clone());
        let mut profile =
            Profile { name, filters: Vec::new(), scorers: Vec::new(), picker: PickerKind::MaxScore { n: 1 } };
        let mut picker = None;
        for (r, weight, path) in refs {
            match find(&r) {
                Some(Plugin::Filter(f)) => profile.filters.push(f.clone()),
                Some(Plugin::Detector(d)) => profile.filters.push(FilterKind::Detector(*d)),
                Some(Plugin::Scorer(s)) => profile.scorers.push((*s, weight.unwrap_or(1.0))),
                Some(Plugin::Picker(p)) => picker = picker.or(Some(*p)),
                Some(_) => return Err(ConfigError::invalid(path, format!("{r:?} is not a filter, scorer or picker"))),
                None => return Err(ConfigError::invalid(path, format!("no plugin named {r:?}"))),
            }
        }
        profile.picker = picker
            .or_else(|| plugins.iter().find_map(|(_, p)| if let Plugin::Picker(k) = p { Some(*k) } else { None }))
            .unwrap_or(PickerKind::MaxScore { n: 1 });
        Ok(SchedulerConfig {
            profile,
            prefix,
            detector,
            staleness,
            tie_epsilon: 0.01,
            served_verifier: cfg.plugins.iter().any(|p| p.type_ == "destination-endpoint-served-verifier"),
        })
    }
}
