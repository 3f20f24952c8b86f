//! Renders a simulated server's state as the metrics page its real engine would serve: names,
//! labels, HELP/TYPE lines, histograms, `_created` samples and the surrounding process and HTTP
//! families that make real pages 25–60 KB.

use std::fmt::Write;

use super::model::{Hist, Stats};

/// Which real engine's /metrics format to emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Flavor {
    /// vLLM V1 (0.10+): `vllm:kv_cache_usage_perc`, `engine` label.
    VllmV1,
    /// vLLM V0 (0.6.4–0.7): `vllm:gpu_cache_usage_perc`, no `engine` label.
    VllmV0,
    Sglang,
    TritonTensorrtLlm,
    TrtllmServe,
}

impl Flavor {
    pub const ALL: [Flavor; 5] =
        [Flavor::VllmV1, Flavor::VllmV0, Flavor::Sglang, Flavor::TritonTensorrtLlm, Flavor::TrtllmServe];

    pub fn name(self) -> &'static str {
        match self {
            Flavor::VllmV1 => "vllm-v1",
            Flavor::VllmV0 => "vllm-v0",
            Flavor::Sglang => "sglang",
            Flavor::TritonTensorrtLlm => "triton-tensorrt-llm",
            Flavor::TrtllmServe => "trtllm-serve",
        }
    }

    pub fn parse(s: &str) -> Option<Flavor> {
        match s {
            "vllm" | "vllm-v1" => Some(Flavor::VllmV1),
            "vllm-v0" => Some(Flavor::VllmV0),
            "sglang" => Some(Flavor::Sglang),
            "triton" | "triton-tensorrt-llm" => Some(Flavor::TritonTensorrtLlm),
            "trtllm" | "trtllm-serve" => Some(Flavor::TrtllmServe),
            _ => None,
        }
    }

    /// The value of the engine-type label for pods of this flavor.
    pub fn engine(self) -> &'static str {
        match self {
            Flavor::VllmV1 | Flavor::VllmV0 => "vllm",
            Flavor::Sglang => "sglang",
            Flavor::TritonTensorrtLlm => "triton-tensorrt-llm",
            Flavor::TrtllmServe => "trtllm-serve",
        }
    }

    pub fn supports_lora(self) -> bool {
        matches!(self, Flavor::VllmV1 | Flavor::VllmV0)
    }
}

/// One `lora_requests_info` series: running and waiting adapters, and when the set changed
/// (unix seconds, the sample's value).
pub type LoraInfo = (Vec<String>, Vec<String>, f64);

/// Everything a page shows, copied out of the engine under its lock.
#[derive(Debug, Clone)]
pub struct PageView {
    pub model: String,
    pub waiting: usize,
    pub running: usize,
    pub kv_usage: f64,
    pub kv_blocks: u32,
    pub block_size: u32,
    pub max_lora: u32,
    /// LoRA info series, oldest first.
    pub lora_history: Vec<LoraInfo>,
    pub stats: Stats,
    pub http_requests: u64,
    pub http_latency: Hist,
    pub started_at: f64,
}

pub const HTTP_BUCKETS: [f64; 22] = [
    0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 7.5, 10.0, 30.0, 60.0,
    120.0,
];

pub fn render(flavor: Flavor, v: &PageView) -> String {
    let mut out = String::with_capacity(48 * 1024);
    match flavor {
        Flavor::VllmV1 | Flavor::VllmV0 => vllm(&mut out, flavor == Flavor::VllmV1, v),
        Flavor::Sglang => sglang(&mut out, v),
        Flavor::TritonTensorrtLlm => triton(&mut out, v),
        Flavor::TrtllmServe => trtllm(&mut out, v),
    }
    out
}

struct Page<'o> {
    out: &'o mut String,
    /// Python prometheus_client writes `_created` samples for counters and histograms.
    created: Option<f64>,
}

impl Page<'_> {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn gauge(&mut self, name: &str, help: &str, labels: &str, value: f64) {
        self.head(name, "gauge", help);
        self.sample(name, labels, value);
    }

    fn counter(&mut self, name: &str, help: &str, labels: &str, value: f64) {
        self.head(name, "counter", help);
        self.sample(&format!("{name}_total"), labels, value);
        if let Some(c) = self.created {
            self.sample(&format!("{name}_created"), labels, c);
        }
    }

    fn sample(&mut self, name: &str, labels: &str, value: f64) {
        if labels.is_empty() {
            let _ = writeln!(self.out, "{name} {}", fmt_value(value));
        } else {
            let _ = writeln!(self.out, "{name}{{{labels}}} {}", fmt_value(value));
        }
    }

    fn histogram(&mut self, name: &str, help: &str, labels: &str, h: &Hist) {
        self.head(name, "histogram", help);
        let sep = if labels.is_empty() { "" } else { "," };
        for (b, n) in h.bounds.iter().zip(&h.counts) {
            let _ =
                writeln!(self.out, "{name}_bucket{{{labels}{sep}le=\"{}\"}} {}", fmt_value(*b), fmt_value(*n as f64));
        }
        let _ = writeln!(self.out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", fmt_value(h.count as f64));
        self.sample(&format!("{name}_count"), labels, h.count as f64);
        self.sample(&format!("{name}_sum"), labels, h.sum);
        if let Some(c) = self.created {
            self.sample(&format!("{name}_created"), labels, c);
        }
    }
}

/// Python-style float formatting (`1.0`, `0.25`, `1.7e+09`-free).
fn fmt_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

fn python_process(p: &mut Page<'_>, v: &PageView) {
    p.head("python_gc_objects_collected_total", "counter", "Objects collected during gc");
    for g in 0..3 {
        p.sample("python_gc_objects_collected_total", &format!("generation=\"{g}\""), 1200.0 / f64::from(g + 1));
    }
    p.head("python_gc_objects_uncollectable_total", "counter", "Uncollectable objects found during GC");
    for g in 0..3 {
        p.sample("python_gc_objects_uncollectable_total", &format!("generation=\"{g}\""), 0.0);
    }
    p.head("python_gc_collections_total", "counter", "Number of times this generation was collected");
    for g in 0..3 {
        p.sample("python_gc_collections_total", &format!("generation=\"{g}\""), 80.0 / f64::from(g + 1));
    }
    p.gauge(
        "python_info",
        "Python platform information",
        "implementation=\"CPython\",major=\"3\",minor=\"12\",patchlevel=\"7\",version=\"3.12.7\"",
        1.0,
    );
    p.gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.", "", 7.2e10);
    p.gauge("process_resident_memory_bytes", "Resident memory size in bytes.", "", 3.1e9);
    p.gauge("process_start_time_seconds", "Start time of the process since unix epoch in seconds.", "", v.started_at);
    p.counter("process_cpu_seconds", "Total user and system CPU time spent in seconds.", "", 123.45);
    p.gauge("process_open_fds", "Number of open file descriptors.", "", 87.0);
    p.gauge("process_max_fds", "Maximum number of open file descriptors.", "", 1_048_576.0);
}

fn http_families(p: &mut Page<'_>, v: &PageView) {
    let handlers = ["/v1/completions", "/v1/chat/completions", "/metrics", "/health", "/v1/models"];
    p.head("http_requests_total", "counter", "Total number of requests by method, status and handler.");
    for h in handlers {
        p.sample(
            "http_requests_total",
            &format!("handler=\"{h}\",method=\"POST\",status=\"2xx\""),
            v.http_requests as f64,
        );
    }
    for h in handlers {
        let labels = format!("handler=\"{h}\",method=\"POST\"");
        p.histogram(
            "http_request_duration_highr_seconds",
            "Latency with many buckets but no API specific labels. Made for more accurate percentile calculations.",
            &labels,
            &v.http_latency,
        );
    }
}

fn vllm(out: &mut String, v1: bool, v: &PageView) {
    let mut p = Page { out, created: Some(v.started_at) };
    python_process(&mut p, v);
    let base =
        if v1 { format!("engine=\"0\",model_name=\"{}\"", v.model) } else { format!("model_name=\"{}\"", v.model) };
    let l = base.as_str();
    p.gauge("vllm:num_requests_running", "Number of requests in model execution batches.", l, v.running as f64);
    p.gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", l, v.waiting as f64);
    if v1 {
        p.gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", l, v.kv_usage);
        p.counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            l,
            v.stats.prefix_queries as f64,
        );
        p.counter(
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens.",
            l,
            v.stats.prefix_hits as f64,
        );
    } else {
        p.gauge("vllm:num_requests_swapped", "Number of requests swapped to CPU.", l, 0.0);
        p.gauge("vllm:gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent usage.", l, v.kv_usage);
        p.gauge("vllm:cpu_cache_usage_perc", "CPU KV-cache usage. 1 means 100 percent usage.", l, 0.0);
        let rate =
            if v.stats.prefix_queries == 0 { 0.0 } else { v.stats.prefix_hits as f64 / v.stats.prefix_queries as f64 };
        p.gauge("vllm:gpu_prefix_cache_hit_rate", "GPU prefix cache block hit rate.", l, rate);
    }
    p.head("vllm:lora_requests_info", "gauge", "Running stats on lora requests.");
    for (running, waiting, ts) in &v.lora_history {
        let labels = format!(
            "max_lora=\"{}\",running_lora_adapters=\"{}\",waiting_lora_adapters=\"{}\"",
            v.max_lora,
            running.join(","),
            waiting.join(",")
        );
        p.sample("vllm:lora_requests_info", &labels, *ts);
    }
    let cache = format!(
        "block_size=\"{}\",cache_dtype=\"auto\",calculate_kv_scales=\"False\",cpu_offload_gb=\"0\",enable_prefix_caching=\"True\",{}gpu_memory_utilization=\"0.9\",is_attention_free=\"False\",num_cpu_blocks=\"None\",num_gpu_blocks=\"{}\",num_gpu_blocks_override=\"None\",sliding_window=\"None\",swap_space=\"4\",swap_space_bytes=\"4294967296\"",
        v.block_size,
        if v1 { "engine=\"0\"," } else { "" },
        v.kv_blocks
    );
    p.gauge("vllm:cache_config_info", "Information of the LLMEngine CacheConfig", &cache, 1.0);
    p.counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.", l, 0.0);
    p.counter("vllm:prompt_tokens", "Number of prefill tokens processed.", l, v.stats.prompt_tokens as f64);
    p.counter("vllm:generation_tokens", "Number of generation tokens processed.", l, v.stats.generation_tokens as f64);
    p.head("vllm:request_success_total", "counter", "Count of successfully processed requests.");
    for (reason, n) in [("stop", v.stats.finished_stop), ("length", v.stats.finished_length), ("abort", 0)] {
        p.sample("vllm:request_success_total", &format!("{l},finished_reason=\"{reason}\""), n as f64);
    }
    let s = &v.stats;
    p.histogram("vllm:request_prompt_tokens", "Number of prefill tokens processed.", l, &s.prompt_lens);
    p.histogram("vllm:request_generation_tokens", "Number of generation tokens processed.", l, &s.output_lens);
    p.histogram(
        "vllm:request_max_num_generation_tokens",
        "Histogram of maximum number of requested generation tokens.",
        l,
        &s.output_lens,
    );
    p.histogram("vllm:request_params_max_tokens", "Histogram of the max_tokens request parameter.", l, &s.output_lens);
    p.histogram("vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.", l, &s.output_lens);
    p.histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", l, &s.ttft);
    let itl = if v1 { "vllm:inter_token_latency_seconds" } else { "vllm:time_per_output_token_seconds" };
    p.histogram(itl, "Histogram of inter-token latency in seconds.", l, &s.ttft);
    p.histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", l, &s.e2e);
    p.histogram(
        "vllm:request_queue_time_seconds",
        "Histogram of time spent in WAITING phase for request.",
        l,
        &s.queue_time,
    );
    p.histogram(
        "vllm:request_inference_time_seconds",
        "Histogram of time spent in RUNNING phase for request.",
        l,
        &s.e2e,
    );
    p.histogram(
        "vllm:request_prefill_time_seconds",
        "Histogram of time spent in PREFILL phase for request.",
        l,
        &s.ttft,
    );
    p.histogram("vllm:request_decode_time_seconds", "Histogram of time spent in DECODE phase for request.", l, &s.e2e);
    http_families(&mut p, v);
}

fn sglang(out: &mut String, v: &PageView) {
    let mut p = Page { out, created: None };
    let l = format!("model_name=\"{}\",tp_rank=\"0\",pp_rank=\"0\",dp_rank=\"0\"", v.model);
    let l = l.as_str();
    p.gauge("sglang:num_running_reqs", "The number of running requests.", l, v.running as f64);
    p.gauge("sglang:num_used_tokens", "The number of used tokens.", l, (v.kv_usage * f64::from(v.kv_blocks)).round());
    p.gauge("sglang:token_usage", "The token usage.", l, v.kv_usage);
    p.gauge("sglang:gen_throughput", "The generation throughput (token/s).", l, 0.0);
    p.gauge("sglang:num_queue_reqs", "The number of requests in the waiting queue.", l, v.waiting as f64);
    let rate =
        if v.stats.prefix_queries == 0 { 0.0 } else { v.stats.prefix_hits as f64 / v.stats.prefix_queries as f64 };
    p.gauge("sglang:cache_hit_rate", "The prefix cache hit rate.", l, rate);
    p.gauge(
        "sglang:cache_config_info",
        "Cache configuration.",
        &format!("{l},page_size=\"{}\",num_pages=\"{}\"", v.block_size, v.kv_blocks),
        1.0,
    );
    p.counter("sglang:prompt_tokens", "Number of prefill tokens processed.", l, v.stats.prompt_tokens as f64);
    p.counter(
        "sglang:generation_tokens",
        "Number of generation tokens processed.",
        l,
        v.stats.generation_tokens as f64,
    );
    p.counter(
        "sglang:num_requests",
        "Number of requests processed.",
        l,
        (v.stats.finished_stop + v.stats.finished_length) as f64,
    );
    p.histogram("sglang:time_to_first_token_seconds", "Histogram of time to first token in seconds.", l, &v.stats.ttft);
    p.histogram(
        "sglang:e2e_request_latency_seconds",
        "Histogram of End-to-end request latency in seconds",
        l,
        &v.stats.e2e,
    );
}

fn triton(out: &mut String, v: &PageView) {
    let mut p = Page { out, created: None };
    let m = "model=\"tensorrt_llm\",version=\"1\"";
    let finished = (v.stats.finished_stop + v.stats.finished_length) as f64;
    p.counter("nv_inference_request_success", "Number of successful inference requests, all batch sizes", m, finished);
    p.head("nv_trt_llm_request_metrics", "gauge", "TRT LLM request metrics");
    for (kind, value) in [
        ("context", 0.0),
        ("scheduled", v.running as f64),
        ("max", 256.0),
        ("active", v.running as f64),
        ("waiting", v.waiting as f64),
    ] {
        p.sample("nv_trt_llm_request_metrics", &format!("{m},request_type=\"{kind}\""), value);
    }
    let used = (v.kv_usage * f64::from(v.kv_blocks)).round();
    p.head("nv_trt_llm_kv_cache_block_metrics", "gauge", "TRT LLM KV cache block metrics");
    for (kind, value) in [
        ("tokens_per", f64::from(v.block_size)),
        ("used", used),
        ("free", f64::from(v.kv_blocks) - used),
        ("max", f64::from(v.kv_blocks)),
        ("fraction", v.kv_usage),
    ] {
        p.sample("nv_trt_llm_kv_cache_block_metrics", &format!("{m},kv_cache_block_type=\"{kind}\""), value);
    }
    p.gauge("nv_gpu_utilization", "GPU utilization rate [0.0 - 1.0)", "gpu_uuid=\"GPU-00000000-sim\"", 0.5);
}

fn trtllm(out: &mut String, v: &PageView) {
    let mut p = Page { out, created: None };
    let l = format!("model_name=\"{}\",engine_type=\"trtllm\"", v.model);
    let l = l.as_str();
    p.gauge("trtllm_num_requests_waiting", "Number of requests waiting.", l, v.waiting as f64);
    p.gauge("trtllm_num_requests_running", "Number of requests running.", l, v.running as f64);
    p.gauge("trtllm_kv_cache_utilization", "KV cache utilization, 0 to 1.", l, v.kv_usage);
    p.gauge("trtllm_kv_cache_tokens_per_block", "Tokens per KV cache block.", l, f64::from(v.block_size));
    p.gauge("trtllm_kv_cache_max_blocks", "Maximum number of KV cache blocks.", l, f64::from(v.kv_blocks));
    p.counter(
        "trtllm_request_success",
        "Count of successfully processed requests.",
        l,
        (v.stats.finished_stop + v.stats.finished_length) as f64,
    );
    p.histogram("trtllm_time_to_first_token_seconds", "Histogram of time to first token in seconds.", l, &v.stats.ttft);
    p.histogram(
        "trtllm_e2e_request_latency_seconds",
        "Histogram of end to end request latency in seconds.",
        l,
        &v.stats.e2e,
    );
}
