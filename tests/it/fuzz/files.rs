//! Fuzz targets over the files an operator writes: the `EndpointPickerConfig` and the static
//! endpoints file.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde_json::{Value, json};
use switchyard::config::{self, EndpointPickerConfig, MetricFlags, MetricsDataSourceParams};
use switchyard::discovery::StaticEndpoints;
use switchyard::metrics::EngineRegistry;
use switchyard::model::{
    Endpoint, EndpointId, EndpointMetrics, EndpointState, Load, MetricsSample, MetricsState, Snapshot,
};
use switchyard::scheduling::{LocalLoad, PrefixIndex, RequestFeatures, Scheduler, SchedulerConfig, View};

use super::harness::{Rng, Target};

const YAML_TOKENS: &[&[u8]] = &[
    b"\n- ",
    b"\n  ",
    b": ",
    b"{",
    b"}",
    b"[",
    b"]",
    b"&a ",
    b"*a",
    b"<<: *a",
    b"!!str ",
    b"!!binary ",
    b"~",
    b"null",
    b".nan",
    b".inf",
    b"'",
    b"\"",
    b"|\n",
    b"---\n",
    b"...\n",
    b"# c\n",
    b"\t",
    b"type: ",
    b"parameters:",
    b"pluginRef: ",
    b"weight: ",
    b"name: ",
    b"port: ",
    b"ports: [",
    b"address: ",
    b"labels: {inference.networking.k8s.io/engine-type: sglang}",
];

/// The config loader, then everything built from a config (engine registry, metrics source,
/// scheduler, one decision): never panics; an accepted config is loaded the same way from
/// `--config-text`, and survives a round trip through YAML.
pub const CONFIG: Target = Target {
    name: "config",
    extra_seeds: &[("tests/fixtures", "yaml")],
    dictionary: YAML_TOKENS,
    generate: generate_config,
    check: check_config,
};

/// The endpoints-file loader and resolution: never panics; resolved ids are unique, one endpoint
/// per port, and an accepted file survives a round trip through YAML.
pub const ENDPOINTS: Target = Target {
    name: "endpoints",
    extra_seeds: &[],
    dictionary: YAML_TOKENS,
    generate: generate_endpoints,
    check: check_endpoints,
};

fn check_config(input: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(input);
    let Ok(cfg) = EndpointPickerConfig::from_yaml(&text) else { return Ok(()) };
    match config::load(None, Some(&text)) {
        Ok(again) if again == cfg => {}
        other => return Err(format!("--config-text loads {other:?}")),
    }
    let _ = cfg.engine_registry(&MetricFlags::default());
    let _ = cfg.metrics_data_source_with(&MetricFlags::default());
    if let Ok(sc) = SchedulerConfig::build(&cfg, Duration::from_secs(1)) {
        decide(Scheduler::new(sc))?;
    }
    let yaml = serde_saphyr::to_string(&cfg).map_err(|e| format!("does not serialize: {e}"))?;
    match EndpointPickerConfig::from_yaml(&yaml) {
        Ok(again) if again == cfg => Ok(()),
        other => Err(format!("round trip through {yaml:?} gives {other:?}")),
    }
}

/// One decision over a small pool with metrics, with a prompt long enough to hash.
fn decide(scheduler: Scheduler) -> Result<(), String> {
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let endpoints: Vec<EndpointState> = (0..3u64)
        .map(|i| EndpointState {
            endpoint: Arc::new(Endpoint {
                id: EndpointId::new(format!("e{i}")),
                address: format!("10.0.0.{i}:8000"),
                metrics_url: String::new(),
                engine: "vllm".into(),
                labels: Default::default(),
            }),
            metrics: MetricsState::Known {
                sample: Arc::new(MetricsSample {
                    metrics: EndpointMetrics {
                        queued: Some(i),
                        running: Some(1),
                        kv_usage: Some(0.5),
                        running_lora: Some(vec![]),
                        waiting_lora: Some(vec![]),
                        max_lora: Some(2),
                        cache_block_size: None,
                        cache_num_blocks: None,
                    },
                    scraped_at: now,
                    errors: vec![],
                }),
                last_error: None,
            },
            shared_load: Load::default(),
            shared_sent_since_scrape: 0,
        })
        .collect();
    let snapshot = Snapshot {
        epoch: 1,
        seq: 1,
        endpoints,
        published_at: now,
        routed_blocks: vec![],
        objectives: Arc::default(),
        publish_span: None,
    };
    let prompt = "You are a helpful assistant. ".repeat(20);
    let req = RequestFeatures {
        target_model: "m",
        priority: 0,
        prefix_input: prompt.as_bytes(),
        cache_salt: "",
        estimated_tokens: 200,
        test_selection: Some("10.0.0.1"),
    };
    let prefix = PrefixIndex::new();
    let local = [LocalLoad::default(); 3];
    let columns = switchyard::scheduling::Columns::new(&snapshot);
    let mut rng = SmallRng::seed_from_u64(1);
    for _ in 0..2 {
        let view = View { snapshot: &snapshot, columns: &columns, local: &local, prefix: &prefix, now };
        if let Ok(d) = scheduler.schedule(&view, &[0, 1, 2], &req, &mut rng) {
            let Some(&primary) = d.endpoints.first().filter(|_| d.endpoints.iter().all(|&i| i < 3)) else {
                return Err(format!("decision names no endpoint of the pool: {d:?}"));
            };
            let capacity = scheduler.prefix_capacity(&snapshot, primary);
            prefix.insert(&snapshot.endpoints[primary].endpoint.id, &d.prefix_hashes, capacity);
        }
    }
    Ok(())
}

fn check_endpoints(input: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(input);
    let Ok(file) = StaticEndpoints::from_yaml(&text) else { return Ok(()) };
    let registry = EngineRegistry::builtin();
    let https = MetricsDataSourceParams { scheme: "https".into(), path: "/m".into(), insecure_skip_verify: false };
    for source in [MetricsDataSourceParams::default(), https] {
        let Ok(endpoints) = file.resolve(&registry, &source) else { continue };
        let ports: usize = file.endpoints.iter().map(|e| if e.ports.is_empty() { 1 } else { e.ports.len() }).sum();
        if endpoints.len() != ports {
            return Err(format!("{} endpoints for {ports} ports", endpoints.len()));
        }
        let mut ids = HashSet::new();
        for e in &endpoints {
            if !ids.insert(e.id.as_str()) {
                return Err(format!("duplicate id {:?} resolved", e.id.as_str()));
            }
            if !e.metrics_url.starts_with(&format!("{}://", source.scheme)) || e.address.rsplit_once(':').is_none() {
                return Err(format!("resolved {e:?}"));
            }
        }
    }
    let yaml = serde_saphyr::to_string(&file).map_err(|e| format!("does not serialize: {e}"))?;
    match StaticEndpoints::from_yaml(&yaml) {
        Ok(again) if again == file => Ok(()),
        other => Err(format!("round trip through {yaml:?} gives {other:?}")),
    }
}

const DURATIONS: &[&str] =
    &["200ms", "1m30s", "1.5s", "0s", "5", "-1s", "1.2.3s", "99999999999999999999h", "1e9h", "µs", "", "2562047h"];

fn number(rng: &mut Rng) -> Value {
    match rng.below(8) {
        0 => json!(0),
        1 => json!(-1),
        2 => json!(i64::MAX),
        3 => json!(1i64 << 62),
        4 => json!(u64::MAX),
        5 => json!(1.5),
        6 => json!("12"),
        _ => json!(rng.below(100) + 1),
    }
}

fn parameters(rng: &mut Rng, type_: &str) -> Option<Value> {
    let keys: &[&str] = match type_ {
        "max-score-picker" | "random-picker" | "weighted-random-picker" => &["maxNumOfEndpoints"],
        "token-load-scorer" => &["queueThresholdTokens"],
        "prefix-cache-scorer" | "approx-prefix-cache-producer" => &[
            "autoTune",
            "blockSizeTokens",
            "maxPrefixBlocksToMatch",
            "maxPrefixTokensToMatch",
            "lruCapacityPerServer",
            "blockSize",
        ],
        "utilization-detector" => {
            &["queueDepthThreshold", "kvCacheUtilThreshold", "metricsStalenessThreshold", "headroom"]
        }
        "concurrency-detector" => &["concurrencyMode", "maxConcurrency", "maxTokenConcurrency", "headroom"],
        "prefix-cache-affinity-filter" => &["affinityThreshold", "explorationProbability", "maxTTFTPenaltyMs"],
        "metrics-data-source" => &["scheme", "path", "insecureSkipVerify"],
        "core-metrics-extractor" => &["engineLabelKey", "defaultEngine", "engineConfigs"],
        _ => &["unexpected"],
    };
    if rng.chance(40) {
        return None;
    }
    let mut p = serde_json::Map::new();
    for key in keys {
        if !rng.chance(50) {
            continue;
        }
        let v = match *key {
            "metricsStalenessThreshold" => json!(rng.pick(DURATIONS)),
            "concurrencyMode" => json!(rng.pick(&["requests", "tokens", "bytes"])),
            "scheme" => json!(rng.pick(&["http", "https", "ftp"])),
            "path" => json!(rng.pick(&["/metrics", "metrics", "/"])),
            "autoTune" | "insecureSkipVerify" => json!(rng.chance(50)),
            "defaultEngine" => json!(rng.pick(&["vllm", "sglang", "mine", "", "default"])),
            "engineLabelKey" => json!("engine"),
            "engineConfigs" => json!([{
                "name": rng.pick(&["mine", "vllm", "", "default"]),
                "queuedRequestsSpec": rng.pick(&["q", "q{a=b}", "", "q{", "a or b"]),
                "kvUsageSpec": rng.pick(&["kv", "kv{x=\"1\"} or kv2", ""]),
            }]),
            _ => number(rng),
        };
        p.insert((*key).into(), v);
    }
    Some(Value::Object(p))
}

/// A config of plugins (with parameters in range and out of it), profiles referencing them, and
/// the optional sections.
fn generate_config(rng: &mut Rng) -> Vec<u8> {
    const TYPES: &[&str] = &[
        "queue-scorer",
        "kv-cache-utilization-scorer",
        "prefix-cache-scorer",
        "lora-affinity-scorer",
        "running-requests-size-scorer",
        "token-load-scorer",
        "max-score-picker",
        "random-picker",
        "weighted-random-picker",
        "approx-prefix-cache-producer",
        "utilization-detector",
        "concurrency-detector",
        "prefix-cache-affinity-filter",
        "header-based-testing-filter",
        "metrics-data-source",
        "core-metrics-extractor",
        "single-profile-handler",
        "no-such-plugin",
    ];
    let mut plugins = Vec::new();
    let mut names = Vec::new();
    for _ in 0..rng.small(8) {
        let type_ = rng.pick(TYPES);
        let mut p = serde_json::Map::new();
        p.insert("type".into(), json!(type_));
        if rng.chance(15) {
            let name = format!("{type_}-{}", rng.below(2));
            p.insert("name".into(), json!(name));
            names.push(name);
        } else {
            names.push(type_.to_string());
        }
        if let Some(params) = parameters(rng, type_) {
            p.insert("parameters".into(), params);
        }
        plugins.push(Value::Object(p));
    }
    let mut cfg = serde_json::Map::new();
    cfg.insert("apiVersion".into(), json!(config::API_VERSION));
    cfg.insert("kind".into(), json!(config::KIND));
    if rng.chance(20) {
        cfg.insert("featureGates".into(), json!([rng.pick(&["dataLayer", "flowControl", "nope"])]));
    }
    cfg.insert("plugins".into(), Value::Array(plugins));
    if rng.chance(70) {
        let mut refs = Vec::new();
        for n in names.iter().filter(|_| rng.chance(70)).cloned().collect::<Vec<_>>() {
            refs.push(if rng.chance(50) {
                json!({"pluginRef": n})
            } else {
                json!({"pluginRef": n, "weight": number(rng)})
            });
        }
        cfg.insert("schedulingProfiles".into(), json!([{"name": "default", "plugins": refs}]));
    }
    if rng.chance(20) {
        let r = names[rng.below(names.len())].clone();
        cfg.insert("saturationDetector".into(), json!({"pluginRef": r}));
    }
    if rng.chance(10) {
        cfg.insert("flowControl".into(), json!({"maxBytes": number(rng), "x": [1, {"y": null}]}));
    }
    to_yaml(rng, &Value::Object(cfg))
}

/// An endpoints file: odd names, addresses and port lists, duplicates.
fn generate_endpoints(rng: &mut Rng) -> Vec<u8> {
    let mut endpoints = Vec::new();
    for _ in 0..rng.small(6) {
        let mut e = serde_json::Map::new();
        let name = rng.pick(&["a", "b", "a-rank-0", "", " ", "ns/pod-é", "a-rank-1"]);
        e.insert("name".into(), json!(name));
        let address = rng.pick(&["10.0.0.1", "fd00::1", "[fd00::1]", "host.example", "", "a:b:c", "1.2.3.4:80"]);
        e.insert("address".into(), json!(address));
        let port = |rng: &mut Rng| -> Value {
            match rng.below(5) {
                0 => json!(0),
                1 => json!(65535),
                2 => json!(65536),
                3 => json!(-1),
                _ => json!(8000 + rng.below(3)),
            }
        };
        match rng.below(4) {
            0 => {}
            1 => {
                let ports: Vec<Value> = (0..rng.below(4)).map(|_| port(rng)).collect();
                e.insert("ports".into(), Value::Array(ports));
            }
            _ => {
                e.insert("port".into(), port(rng));
            }
        }
        if rng.chance(50) {
            let engine = rng.pick(&["vllm", "sglang", "triton-tensorrt-llm", "trtllm-serve", "unknown", " sglang "]);
            e.insert("labels".into(), json!({"inference.networking.k8s.io/engine-type": engine}));
        }
        if rng.chance(20) {
            e.insert("metricsPort".into(), port(rng));
        }
        if rng.chance(20) {
            e.insert("metricsPath".into(), json!(rng.pick(&["/m", "", "m", "/x?y=1"])));
        }
        endpoints.push(Value::Object(e));
    }
    to_yaml(rng, &json!({ "endpoints": endpoints }))
}

/// YAML block style, or JSON (which is YAML too).
fn to_yaml(rng: &mut Rng, v: &Value) -> Vec<u8> {
    if rng.chance(20) {
        return v.to_string().into_bytes();
    }
    serde_saphyr::to_string(v).map(String::into_bytes).unwrap_or_else(|_| v.to_string().into_bytes())
}
