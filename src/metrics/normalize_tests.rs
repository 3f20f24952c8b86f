use super::*;
use crate::metrics::{EngineConfig, EngineRegistry};

const VLLM_V1: &str = include_str!("../../tests/fixtures/vllm_v1.txt");
const VLLM_V0: &str = include_str!("../../tests/fixtures/vllm_v0.txt");
const SGLANG: &str = include_str!("../../tests/fixtures/sglang.txt");
const TRITON: &str = include_str!("../../tests/fixtures/triton_tensorrt_llm.txt");
const TRTLLM: &str = include_str!("../../tests/fixtures/trtllm_serve.txt");

fn builtin(name: &str) -> EngineMapping {
    EngineRegistry::builtin().get(name).expect("built-in").as_ref().clone()
}

fn custom(cfg: EngineConfig) -> EngineMapping {
    EngineMapping::from_config(&cfg).expect("valid mapping")
}

fn strings(v: &[&str]) -> Option<Vec<String>> {
    Some(v.iter().map(|s| s.to_string()).collect())
}

#[test]
fn vllm_v1_page_with_zero_config() {
    let n = normalize(VLLM_V1, &builtin("vllm"));
    assert!(n.errors.is_empty(), "{:?}", n.errors);
    let m = n.metrics;
    assert_eq!((m.queued, m.running), (Some(4), Some(8)));
    assert_eq!(m.kv_usage, Some(0.96));
    // Three lora_requests_info series on the page: the newest (largest value) wins.
    assert_eq!(m.running_lora, strings(&["code-lora", "sql-lora"]));
    assert_eq!(m.waiting_lora, strings(&["sql-lora", "tweet-lora"]));
    assert_eq!(m.max_lora, Some(2));
    assert_eq!((m.cache_block_size, m.cache_num_blocks), (Some(16), Some(600)));
}

#[test]
fn vllm_v0_page_with_zero_config_reads_gpu_cache_usage() {
    assert!(!VLLM_V0.contains("vllm:kv_cache_usage_perc"));
    let n = normalize(VLLM_V0, &builtin("vllm"));
    assert!(n.errors.is_empty(), "{:?}", n.errors);
    assert_eq!(n.metrics.kv_usage, Some(0.96));
    assert_eq!(n.metrics.running_lora, strings(&["code-lora", "tweet-lora"]));
}

#[test]
fn vllm_transition_versions_prefer_the_new_name() {
    let page = "vllm:gpu_cache_usage_perc{model_name=\"m\"} 0.9\nvllm:kv_cache_usage_perc{engine=\"0\",model_name=\"m\"} 0.25\n";
    let n = normalize(page, &builtin("vllm"));
    assert_eq!(n.metrics.kv_usage, Some(0.25));
}

#[test]
fn other_engines_from_their_real_formats() {
    for (page, engine) in [(SGLANG, "sglang"), (TRITON, "triton-tensorrt-llm"), (TRTLLM, "trtllm-serve")] {
        let n = normalize(page, &builtin(engine));
        assert!(n.errors.is_empty(), "{engine}: {:?}", n.errors);
        let m = n.metrics;
        assert_eq!((m.queued, m.running, m.kv_usage), (Some(4), Some(8), Some(0.96)), "{engine}");
        assert_eq!((m.cache_block_size, m.cache_num_blocks), (Some(16), Some(600)), "{engine}");
        assert_eq!(m.running_lora, None, "{engine} reports no LoRA info");
    }
}

#[test]
fn wrong_engine_reports_each_missing_family() {
    let n = normalize(VLLM_V1, &builtin("sglang"));
    assert!(!n.any());
    assert_eq!(n.errors.len(), 4, "{:?}", n.errors);
    assert!(n.errors[0].starts_with("queued: metric family \"sglang:num_queue_reqs\" not found"));
}

#[test]
fn data_parallel_ranks_are_combined() {
    let page = r#"# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 3.0
vllm:num_requests_waiting{engine="1",model_name="m"} 5.0
vllm:num_requests_running{engine="0",model_name="m"} 10.0
vllm:num_requests_running{engine="1",model_name="m"} 12.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.2
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.6
vllm:lora_requests_info{engine="0",max_lora="2",running_lora_adapters="a",waiting_lora_adapters=""} 100.0
vllm:lora_requests_info{engine="0",max_lora="2",running_lora_adapters="a,b",waiting_lora_adapters="c"} 200.0
vllm:lora_requests_info{engine="1",max_lora="2",running_lora_adapters="d",waiting_lora_adapters=""} 150.0
vllm:cache_config_info{block_size="16",engine="0",num_gpu_blocks="1000"} 1.0
vllm:cache_config_info{block_size="16",engine="1",num_gpu_blocks="1000"} 1.0
"#;
    let n = normalize(page, &builtin("vllm"));
    assert!(n.errors.is_empty(), "{:?}", n.errors);
    let m = n.metrics;
    assert_eq!((m.queued, m.running), (Some(8), Some(22)), "counts are summed");
    assert!((m.kv_usage.expect("kv") - 0.4).abs() < 1e-12, "usage is averaged");
    assert_eq!(m.running_lora, strings(&["a", "b", "d"]), "newest per rank, unioned");
    assert_eq!(m.waiting_lora, strings(&["c"]));
    assert_eq!(m.cache_num_blocks, Some(2000), "blocks are summed");
}

#[test]
fn declared_family_without_samples_is_absent_not_zero() {
    let page = "# HELP vllm:lora_requests_info Running stats on lora requests.\n# TYPE vllm:lora_requests_info gauge\nvllm:num_requests_waiting 0\n";
    let n = normalize(page, &builtin("vllm"));
    assert_eq!(n.metrics.running_lora, None);
    assert_eq!(n.metrics.queued, Some(0));
    assert!(
        n.errors.iter().any(|e| e == "lora: metric family \"vllm:lora_requests_info\" is declared but has no samples"),
        "{:?}",
        n.errors
    );
}

#[test]
fn lora_series_with_empty_labels_gives_empty_lists() {
    let page = "vllm:lora_requests_info{max_lora=\"4\",running_lora_adapters=\"\",waiting_lora_adapters=\"\"} 1.7e9\n";
    let n = normalize(page, &builtin("vllm"));
    assert_eq!(n.metrics.running_lora, Some(vec![]));
    assert_eq!(n.metrics.waiting_lora, Some(vec![]));
    assert_eq!(n.metrics.max_lora, Some(4));
}

#[test]
fn lora_lists_are_trimmed_and_empties_skipped() {
    let page =
        "vllm:lora_requests_info{max_lora=\"4\",running_lora_adapters=\" a , ,b \",waiting_lora_adapters=\"c,\"} 1\n";
    let n = normalize(page, &builtin("vllm"));
    assert_eq!(n.metrics.running_lora, strings(&["a", "b"]));
    assert_eq!(n.metrics.waiting_lora, strings(&["c"]));
}

#[test]
fn disabled_specs_are_null_without_errors() {
    let mapping = custom(EngineConfig {
        name: "q-only".into(),
        queued_requests_spec: Some("vllm:num_requests_waiting".into()),
        kv_usage_spec: Some(String::new()),
        ..EngineConfig::default()
    });
    let n = normalize(VLLM_V1, &mapping);
    assert!(n.errors.is_empty());
    assert_eq!(n.metrics.queued, Some(4));
    assert_eq!(n.metrics.kv_usage, None);
}

#[test]
fn label_selectors_pick_series() {
    let mapping = custom(EngineConfig {
        name: "t".into(),
        queued_requests_spec: Some("nv_trt_llm_request_metrics{request_type=waiting}".into()),
        running_requests_spec: Some("nv_trt_llm_request_metrics{request_type=\"nope\"}".into()),
        ..EngineConfig::default()
    });
    let n = normalize(TRITON, &mapping);
    assert_eq!(n.metrics.queued, Some(4));
    assert_eq!(n.metrics.running, None);
    assert!(n.errors[0].starts_with("running: no series of \"nv_trt_llm_request_metrics\" matches"), "{:?}", n.errors);
}

#[test]
fn bad_values_cost_only_their_metric() {
    let page = "vllm:num_requests_waiting NaN\nvllm:num_requests_running 3\nvllm:kv_cache_usage_perc 45\nvllm:lora_requests_info{max_lora=\"x\",running_lora_adapters=\"\",waiting_lora_adapters=\"\"} 1\nvllm:cache_config_info{num_gpu_blocks=\"10\"} 1\n";
    let n = normalize(page, &builtin("vllm"));
    assert_eq!(n.metrics.running, Some(3));
    assert_eq!(n.metrics.queued, None);
    assert_eq!(n.metrics.kv_usage, None);
    assert_eq!(n.metrics.max_lora, None);
    assert_eq!(n.errors.len(), 4, "{:?}", n.errors);
    assert!(n.errors.iter().any(|e| e.contains("outside 0..1")));
    assert!(n.errors.iter().any(|e| e.contains("invalid max_lora")));
    assert!(n.errors.iter().any(|e| e.contains("label \"block_size\" missing")));
}

#[test]
fn malformed_lines_of_wanted_families_are_reported() {
    let page = "vllm:num_requests_waiting{model_name=\"m\" 3\nvllm:num_requests_waiting{model_name=\"m\"} 2\n";
    let n = normalize(page, &builtin("vllm"));
    assert_eq!(n.metrics.queued, Some(2));
    assert_eq!(n.line_errors.len(), 1);
}

#[test]
fn garbage_in_unwanted_families_is_ignored() {
    let page = format!("{VLLM_V1}\nsome_other_family{{broken 1 2 3\n\u{0}\u{1}garbage\n");
    let n = normalize(&page, &builtin("vllm"));
    assert!(n.errors.is_empty() && n.line_errors.is_empty());
    assert_eq!(n.metrics.queued, Some(4));
}

#[test]
fn openmetrics_counter_family_names_match_total_samples() {
    let mapping = custom(EngineConfig {
        name: "om".into(),
        queued_requests_spec: Some("my_queue".into()),
        ..EngineConfig::default()
    });
    let n = normalize("# TYPE my_queue counter\nmy_queue_total 7\nmy_queue_created 1.7e9\n# EOF\n", &mapping);
    assert_eq!(n.metrics.queued, Some(7));
}
