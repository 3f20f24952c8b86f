use super::*;
use crate::metrics::normalize;

const VALID: &str = include_str!("../../tests/fixtures/config.yaml");
const WRONG_KEY: &str = include_str!("../../tests/fixtures/config.wrongkey.yaml");

fn invalid_path(text: &str) -> (String, String) {
    match EndpointPickerConfig::from_yaml(text) {
        Err(ConfigError::Invalid { path, message }) => (path, message),
        other => panic!("expected an invalid-config error, got {other:?}"),
    }
}

fn registry(text: &str, flags: &MetricFlags) -> Result<EngineRegistry, ConfigError> {
    EndpointPickerConfig::from_yaml(text)?.engine_registry(flags)
}

#[test]
fn default_config_loads() {
    let cfg = EndpointPickerConfig::default_config();
    assert_eq!(cfg.scheduling_profiles[0].plugins.len(), 3);
    let reg = cfg.engine_registry(&MetricFlags::default()).expect("registry");
    assert_eq!(reg.default_engine(), "vllm");
    assert_eq!(reg.names().collect::<Vec<_>>(), ["sglang", "triton-tensorrt-llm", "trtllm-serve", "vllm"]);
}

#[test]
fn valid_fixture_loads_and_user_engines_replace_builtins() {
    let reg = registry(VALID, &MetricFlags::default()).expect("valid");
    let mine = reg.get("my-engine").expect("user engine");
    assert_eq!(mine.queued.as_ref().expect("spec").alternatives[0].labels, vec![("pool".into(), "a".into())]);
    assert_eq!(mine.lora, None);
    // The user's sglang entry replaced the built-in whole: no fields merged in.
    assert_eq!(reg.get("sglang").expect("sglang").cache_block_size_label, "page_size");
    let page = "my_queue_depth{pool=\"a\"} 3\nmy_queue_depth{pool=\"b\"} 100\nmy_running 2\nmy_kv_fraction 0.5\n";
    let n = normalize(page, mine);
    assert_eq!((n.metrics.queued, n.metrics.running, n.metrics.kv_usage), (Some(3), Some(2), Some(0.5)));
}

#[test]
fn wrong_key_fixture_names_the_key_path() {
    let (path, message) = invalid_path(WRONG_KEY);
    assert_eq!(path, "plugins[0].parameters.engineConfigs[0].kvUsageSpc");
    assert!(message.contains("unknown field `kvUsageSpc`"), "{message}");
}

#[test]
fn unknown_top_level_and_nested_keys() {
    let base = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n";
    let (path, msg) = invalid_path(&format!("{base}plugin: []\n"));
    assert_eq!(path, "plugin");
    assert!(msg.contains("unknown field `plugin`"), "{path}: {msg}");
    let (path, msg) =
        invalid_path(&format!("{base}schedulingProfiles:\n- name: a\n  plugins:\n  - pluginRef: x\n    wieght: 2\n"));
    assert_eq!(path, "schedulingProfiles[0].plugins[0].wieght");
    assert!(msg.contains("wieght"));
    let (path, _) =
        invalid_path(&format!("{base}plugins:\n- type: metrics-data-source\n  parameters: {{schema: http}}\n"));
    assert_eq!(path, "plugins[0].parameters.schema");
}

#[test]
fn semantic_errors_name_their_key() {
    let base = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n";
    for (doc, want_path, want) in [
        ("kind: Other\n", "kind", "expected"),
        ("featureGates: [dataLayer, warpDrive]\n", "featureGates[1]", "unknown feature gate"),
        ("plugins:\n- type: no-such-plugin\n", "plugins[0].type", "unknown plugin type"),
        ("plugins:\n- type: queue-scorer\n- type: queue-scorer\n", "plugins[1].name", "duplicate plugin name"),
        (
            "schedulingProfiles:\n- name: p\n  plugins: [{pluginRef: ghost}]\n",
            "schedulingProfiles[0].plugins[0].pluginRef",
            "no plugin named",
        ),
        (
            "plugins:\n- type: metrics-data-source\n  parameters: {scheme: ftp}\n",
            "plugins[0].parameters.scheme",
            "http or https",
        ),
    ] {
        let text =
            if doc.starts_with("kind") { format!("apiVersion: {API_VERSION}\n{doc}") } else { format!("{base}{doc}") };
        let (path, msg) = invalid_path(&text);
        assert_eq!(path, want_path, "{doc}");
        assert!(msg.contains(want), "{doc}: {msg}");
    }
}

#[test]
fn engine_config_errors_name_their_key() {
    let doc = |engines: &str, default: &str| {
        format!(
            "apiVersion: {API_VERSION}\nkind: {KIND}\nplugins:\n- type: core-metrics-extractor\n  parameters:\n    {default}\n    engineConfigs:\n{engines}"
        )
    };
    let cases = [
        (
            doc("    - name: a\n      kvUsageSpec: 'x{y'\n", ""),
            "plugins[0].parameters.engineConfigs[0].kvUsageSpec",
            "unbalanced",
        ),
        (
            doc("    - name: a\n    - name: a\n", ""),
            "plugins[0].parameters.engineConfigs[1].name",
            "duplicate engine name",
        ),
        (doc("    - name: a\n", "defaultEngine: nope"), "plugins[0].parameters.defaultEngine", "not defined"),
        (doc("    - name: default\n", ""), "plugins[0].parameters.engineConfigs[0].name", "reserved"),
    ];
    for (text, want_path, want) in cases {
        match registry(&text, &MetricFlags::default()) {
            Err(ConfigError::Invalid { path, message }) => {
                assert_eq!(path, want_path);
                assert!(message.contains(want), "{message}");
            }
            other => panic!("expected error for {text}: {other:?}"),
        }
    }
}

#[test]
fn metric_flags_override_the_default_engine() {
    // How upstream's docs configure SGLang: flags on a vllm-default EPP.
    let flags = MetricFlags {
        total_queued_requests_metric: Some("sglang:num_queue_reqs".into()),
        total_running_requests_metric: Some("sglang:num_running_reqs".into()),
        kv_cache_usage_percentage_metric: Some("sglang:token_usage".into()),
        lora_info_metric: Some(String::new()),
        cache_info_metric: Some(String::new()),
        ..MetricFlags::default()
    };
    let reg = EndpointPickerConfig::default_config().engine_registry(&flags).expect("registry");
    let n = normalize(include_str!("../../tests/fixtures/sglang.txt"), reg.default_mapping());
    assert!(n.errors.is_empty(), "{:?}", n.errors);
    assert_eq!(n.metrics.queued, Some(4));
    assert_eq!(n.metrics.running_lora, None, "empty flag disables LoRA");
    assert_eq!(n.metrics.cache_block_size, None, "empty flag disables cache info");
}

#[test]
fn metrics_data_source_flags_apply_where_the_config_does_not_set_the_parameter() {
    let flags = MetricFlags {
        metrics_scheme: Some("https".into()),
        metrics_path: Some("/stats".into()),
        metrics_insecure_skip_verify: Some(false),
        ..MetricFlags::default()
    };
    let p = EndpointPickerConfig::default_config().metrics_data_source_with(&flags).expect("flags");
    assert_eq!((p.scheme.as_str(), p.path.as_str(), p.insecure_skip_verify), ("https", "/stats", false));
    let none = EndpointPickerConfig::default_config().metrics_data_source_with(&MetricFlags::default()).expect("none");
    assert_eq!((none.scheme.as_str(), none.path.as_str(), none.insecure_skip_verify), ("http", "/metrics", true));
    let cfg = EndpointPickerConfig::from_yaml(
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n- type: metrics-data-source\n  parameters: {path: /m}\n",
    )
    .expect("config");
    let p = cfg.metrics_data_source_with(&flags).expect("plugin");
    assert_eq!(
        (p.scheme.as_str(), p.path.as_str()),
        ("https", "/m"),
        "the parameters the plugin sets win; the others come from the flags"
    );
    let bad = MetricFlags { metrics_scheme: Some("ftp".into()), ..MetricFlags::default() };
    let err = EndpointPickerConfig::default_config().metrics_data_source_with(&bad).expect_err("bad scheme");
    assert!(err.to_string().contains("--model-server-metrics-scheme"), "{err}");
}

#[test]
fn bad_metric_flag_is_a_config_error_naming_the_flag() {
    let flags = MetricFlags { kv_cache_usage_percentage_metric: Some("a{b".into()), ..MetricFlags::default() };
    match EndpointPickerConfig::default_config().engine_registry(&flags) {
        Err(ConfigError::Invalid { path, .. }) => assert_eq!(path, "--kv-cache-usage-percentage-metric"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn engine_label_selects_the_mapping() {
    let reg = registry(VALID, &MetricFlags::default()).expect("valid");
    let labels =
        |v: &str| [(crate::metrics::DEFAULT_ENGINE_LABEL_KEY.to_string(), v.to_string())].into_iter().collect();
    assert_eq!(reg.resolve(&labels("my-engine")).name, "my-engine");
    assert_eq!(reg.resolve(&labels("unknown")).name, "vllm", "unknown label falls back to the default");
    assert_eq!(reg.resolve(&Default::default()).name, "vllm");
}

#[test]
fn not_yaml_or_not_a_mapping() {
    assert!(matches!(EndpointPickerConfig::from_yaml("a: [unclosed"), Err(ConfigError::Yaml(_))));
    assert!(matches!(EndpointPickerConfig::from_yaml("- a\n- b\n"), Err(ConfigError::Invalid { .. })));
}

#[test]
fn duplicate_yaml_keys_are_rejected() {
    let text = format!("apiVersion: {API_VERSION}\nkind: {KIND}\nkind: {KIND}\n");
    assert!(EndpointPickerConfig::from_yaml(&text).is_err());
}
