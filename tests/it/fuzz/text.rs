//! Fuzz targets over text the picker and scrapers read from outside: metrics pages (the
//! exposition scanner and normalization) and metric specs.

use std::borrow::Cow;

use switchyard::metrics::exposition::{self, Sample, Wanted};
use switchyard::metrics::{EngineMapping, EngineRegistry, MetricSpec, normalize};

use super::harness::{Rng, Target};

const FIXTURE_PAGES: &[(&str, &str)] = &[("tests/fixtures", "txt")];

const PAGE_TOKENS: &[&[u8]] = &[
    b"# TYPE ",
    b"# HELP ",
    b"# EOF",
    b" counter\n",
    b" gauge\n",
    b"_total",
    b"_created",
    b"{",
    b"}",
    b"=\"",
    b"\",",
    b"\\\"",
    b"\\\\",
    b"\\n",
    b"{\"",
    b"\", ",
    b" # {trace_id=\"abc\"} 1.0 1700000000.000",
    b" 1700000000000",
    b"\r\n",
    b"vllm:num_requests_waiting",
    b"vllm:kv_cache_usage_perc",
    b"vllm:lora_requests_info{max_lora=\"2\",running_lora_adapters=\"a,b\",waiting_lora_adapters=\"\"} ",
    b"vllm:cache_config_info{block_size=\"16\",num_gpu_blocks=\"100\"} 1\n",
    b"engine=\"1\"",
    b"sglang:token_usage",
    b"nv_trt_llm_request_metrics{request_type=\"waiting\"} ",
    "é".as_bytes(),
    "\u{feff}".as_bytes(),
];

/// The exposition scanner: never panics, and reading only some families gives exactly the
/// samples of those families that reading everything gives (the prefilter loses nothing).
pub const EXPOSITION: Target = Target {
    name: "exposition",
    extra_seeds: FIXTURE_PAGES,
    dictionary: PAGE_TOKENS,
    generate: generate_page,
    check: check_exposition,
};

/// Normalization with every built-in engine mapping: never panics, KV-cache usage stays in
/// 0..=1, a metric the mapping does not read stays unset, CRLF pages read like LF pages.
pub const NORMALIZE: Target = Target {
    name: "normalize",
    extra_seeds: FIXTURE_PAGES,
    dictionary: PAGE_TOKENS,
    generate: generate_page,
    check: check_normalize,
};

/// Metric specs (config and flags): never panics; a parsed spec prints as text that parses back
/// to it, and each selector matches a sample that carries its labels.
pub const SPEC: Target =
    Target { name: "spec", extra_seeds: &[], dictionary: SPEC_TOKENS, generate: generate_spec, check: check_spec };

const SPEC_TOKENS: &[&[u8]] = &[
    b" or ",
    b"{",
    b"}",
    b"\"",
    b"=",
    b"=~",
    b"!=",
    b",",
    b"\\",
    b"__name__",
    b" ",
    b"\t",
    "é".as_bytes(),
    "\u{a0}".as_bytes(),
];

fn check_exposition(input: &[u8]) -> Result<(), String> {
    let page = String::from_utf8_lossy(input);
    let (all, report) = exposition::parse_all(&page);
    let lines = page.split('\n').count();
    if report.lines != lines {
        return Err(format!("{} lines counted, the page has {lines}", report.lines));
    }
    if report.errors.len() > 16 {
        return Err(format!("{} line errors kept (at most 16)", report.errors.len()));
    }
    // Wanted lists: the built-in engines' names, and names taken from the page itself (short
    // ones too, for the prefilter's masks).
    let registry = EngineRegistry::builtin();
    let mut lists: Vec<Vec<String>> = registry
        .names()
        .filter_map(|n| registry.get(n))
        .map(|m: &std::sync::Arc<EngineMapping>| m.names().to_vec())
        .collect();
    let mut from_page: Vec<String> = Vec::new();
    for s in all.iter().take(64) {
        let name = s.name.strip_suffix("_total").unwrap_or(s.name).to_string();
        if !from_page.contains(&name) {
            from_page.push(name);
        }
    }
    lists.push(from_page.iter().step_by(3).cloned().collect());
    lists.push(from_page.iter().map(|n| n.chars().take(3).collect()).collect());
    for names in &lists {
        let mut got: Vec<(usize, Sample<'_>)> = Vec::new();
        exposition::scan(&page, Wanted::Names(names), |i, s| got.push((i, s)));
        let want: Vec<(usize, Sample<'_>)> = all
            .iter()
            .filter_map(|s| {
                let wanted = |w: &String| s.name == w || s.name.strip_suffix("_total") == Some(w.as_str());
                names.iter().position(wanted).map(|i| (i, s.clone()))
            })
            .collect();
        // Debug text compares NaN values as equal.
        if format!("{got:?}") != format!("{want:?}") {
            return Err(format!("selective scan of {names:?} differs from the full scan:\n{got:?}\nvs\n{want:?}"));
        }
    }
    Ok(())
}

fn check_normalize(input: &[u8]) -> Result<(), String> {
    let page = String::from_utf8_lossy(input);
    let crlf = (!page.contains('\r')).then(|| page.replace('\n', "\r\n"));
    let registry = EngineRegistry::builtin();
    for name in registry.names() {
        let Some(mapping) = registry.get(name) else { continue };
        let n = normalize(&page, mapping);
        let m = &n.metrics;
        if let Some(kv) = m.kv_usage
            && !(0.0..=1.0).contains(&kv)
        {
            return Err(format!("{name}: kv_usage {kv} outside 0..=1"));
        }
        let unset = |what: &str, spec_set: bool, value_set: bool| {
            if value_set && !spec_set { Err(format!("{name}: {what} set without a spec")) } else { Ok(()) }
        };
        unset("queued", mapping.queued.is_some(), m.queued.is_some())?;
        unset("running", mapping.running.is_some(), m.running.is_some())?;
        unset("kv_usage", mapping.kv_usage.is_some(), m.kv_usage.is_some())?;
        unset("lora", mapping.lora.is_some(), m.running_lora.is_some() || m.max_lora.is_some())?;
        let block_specs = mapping.cache_info.is_some() || mapping.cache_block_size.is_some();
        unset("cache_block_size", block_specs, m.cache_block_size.is_some())?;
        let specs = [&mapping.queued, &mapping.running, &mapping.kv_usage, &mapping.lora, &mapping.cache_info]
            .iter()
            .filter(|s| s.is_some())
            .count()
            + usize::from(mapping.cache_block_size.is_some())
            + usize::from(mapping.cache_num_blocks.is_some());
        if n.errors.len() > specs {
            return Err(format!("{name}: {} errors for {specs} specs: {:?}", n.errors.len(), n.errors));
        }
        if let Some(crlf) = &crlf {
            let again = normalize(crlf, mapping);
            if again != n {
                return Err(format!("{name}: the CRLF page normalizes differently:\n{n:?}\nvs\n{again:?}"));
            }
        }
    }
    Ok(())
}

fn check_spec(input: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(input);
    let parsed = MetricSpec::parse(&text);
    if parsed.as_ref().is_ok_and(Option::is_some) != MetricSpec::parse_required(&text).is_ok() {
        return Err("parse and parse_required disagree".into());
    }
    let Ok(Some(spec)) = parsed else { return Ok(()) };
    if spec.alternatives.is_empty() {
        return Err("a spec without alternatives".into());
    }
    for sel in &spec.alternatives {
        if sel.name.is_empty() || sel.name.as_bytes()[0].is_ascii_digit() {
            return Err(format!("invalid metric name {:?} accepted", sel.name));
        }
        let sample = Sample {
            name: &sel.name,
            labels: sel.labels.iter().map(|(k, v)| (Cow::Borrowed(k.as_str()), Cow::Borrowed(v.as_str()))).collect(),
            value: 1.0,
            timestamp: None,
        };
        // A selector naming one label twice with different values matches nothing, by design.
        let keys: std::collections::HashSet<&str> = sel.labels.iter().map(|(k, _)| k.as_str()).collect();
        if keys.len() == sel.labels.len() && !sel.matches(&sample) {
            return Err(format!("{sel} does not match a sample with its own labels"));
        }
    }
    let printed = spec.to_string();
    match MetricSpec::parse(&printed) {
        Ok(Some(again)) if again == spec => Ok(()),
        other => Err(format!("{spec:?} prints as {printed:?}, which parses as {other:?}")),
    }
}

const NAMES: &[&str] = &[
    "vllm:num_requests_waiting",
    "vllm:num_requests_running",
    "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc",
    "vllm:lora_requests_info",
    "vllm:cache_config_info",
    "sglang:num_queue_reqs",
    "sglang:token_usage",
    "sglang:cache_config_info",
    "trtllm_kv_cache_utilization",
    "nv_trt_llm_request_metrics",
    "nv_trt_llm_kv_cache_block_metrics",
    "vllm",
    "v",
    "_",
    ":",
    "a_total",
    "process_cpu_seconds_total",
];

const LABELS: &[&str] = &[
    "engine",
    "model_name",
    "request_type",
    "kv_cache_block_type",
    "block_size",
    "num_gpu_blocks",
    "page_size",
    "num_pages",
    "max_lora",
    "running_lora_adapters",
    "waiting_lora_adapters",
    "le",
    "__name__",
];

const VALUES: &[&str] = &[
    "",
    "0",
    "1",
    "waiting",
    "scheduled",
    "fraction",
    "tokens_per",
    "max",
    "a,b",
    " a , ,b ",
    "x\\\"y",
    "back\\\\slash",
    "new\\nline",
    "dangling\\",
    "é☃",
    "16",
    "-1",
    "1e3",
    "99999999999999999999",
];

fn label_set(rng: &mut Rng, out: &mut String) {
    for i in 0..rng.below(4) {
        if i > 0 {
            out.push_str(if rng.chance(80) { "," } else { " , " });
        }
        if rng.chance(10) {
            out.push('"');
            out.push_str(rng.pick(LABELS));
            out.push('"');
        } else {
            out.push_str(rng.pick(LABELS));
        }
        out.push_str("=\"");
        out.push_str(rng.pick(VALUES));
        out.push('"');
    }
    if rng.chance(10) {
        out.push(',');
    }
}

fn value(rng: &mut Rng) -> String {
    match rng.below(6) {
        0 => rng.pick(&["NaN", "+Inf", "-Inf", "nan", "Inf", "infinity", "-0", "1e400", "1.5e-3", "0x1"]).to_string(),
        1 => format!("{}", rng.next_u64() as i64),
        2 => format!("{:.3}", (rng.next_u64() % 2000) as f64 / 1000.0),
        _ => format!("{}", rng.below(200)),
    }
}

/// A page of comments and samples in every shape the scanner accepts, and some it does not.
fn generate_page(rng: &mut Rng) -> Vec<u8> {
    let mut page = String::new();
    let eol = if rng.chance(20) { "\r\n" } else { "\n" };
    for _ in 0..rng.small(40) {
        if rng.chance(10) {
            page.push_str(rng.pick(&[" ", "\t", "  "]));
        }
        let name = rng.pick(NAMES);
        match rng.below(10) {
            0 => page.push_str(&format!("# TYPE {name} {}", rng.pick(&["gauge", "counter", "histogram", "info", ""]))),
            1 => page.push_str(&format!("# HELP {name} some \\n help")),
            2 if rng.chance(20) => page.push_str("# EOF"),
            _ => {
                if rng.chance(10) {
                    // UTF-8 quoted name inside the braces.
                    page.push_str(&format!("{{\"{name}.x\""));
                    if rng.chance(50) {
                        page.push(',');
                        label_set(rng, &mut page);
                    }
                    page.push('}');
                } else {
                    page.push_str(name);
                    if rng.chance(10) {
                        page.push_str(rng.pick(&["_total", "_created", "_bucket", "x"]));
                    }
                    if rng.chance(70) {
                        page.push('{');
                        label_set(rng, &mut page);
                        page.push('}');
                    }
                }
                page.push(' ');
                page.push_str(&value(rng));
                if rng.chance(15) {
                    page.push_str(&format!(" {}", rng.pick(&["1700000000000", "1700000000.5", "-1", "x"])));
                }
                if rng.chance(10) {
                    page.push_str(" # {trace_id=\"t\"} 1.0");
                }
            }
        }
        page.push_str(eol);
    }
    page.into_bytes()
}

/// Selectors joined by ` or `, with quoted, unquoted and odd label values.
fn generate_spec(rng: &mut Rng) -> Vec<u8> {
    let mut spec = String::new();
    for i in 0..rng.small(3) {
        if i > 0 {
            spec.push_str(" or ");
        }
        spec.push_str(rng.pick(NAMES));
        if rng.chance(60) {
            spec.push_str(rng.pick(&["{", " { "]));
            for j in 0..rng.below(3) {
                if j > 0 {
                    spec.push_str(rng.pick(&[",", " , "]));
                }
                spec.push_str(rng.pick(LABELS));
                spec.push_str(rng.pick(&["=", " = ", "=~", "!="]));
                let v = rng.pick(&["waiting", "a b", "x,y", "\\", "a\\b", "é", "{", "}", "or", "a or b", "\"\""]);
                if rng.chance(50) {
                    spec.push('"');
                    spec.push_str(v);
                    spec.push('"');
                } else {
                    spec.push_str(v);
                }
            }
            spec.push('}');
        }
    }
    spec.into_bytes()
}
