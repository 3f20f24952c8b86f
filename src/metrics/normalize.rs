//! Turns one metrics page into engine-neutral [`EndpointMetrics`] with an engine's mapping.
//!
//! Each metric is read independently: a missing family or a bad value costs that metric only and
//! adds one message to `errors`. When several series match a spec (data-parallel ranks such as
//! vLLM V1's `engine="0"`, `engine="1"`, or several models in one Triton server), they are
//! combined into the engine-level value: request counts and block counts are summed, KV-cache usage
//! is averaged, LoRA adapter lists are unioned (the newest `lora_requests_info` series of each rank
//! wins) and `max_lora` is the largest per-rank value. See docs/metrics.md.

use std::collections::BTreeMap;

use super::engine::EngineMapping;
use super::exposition::{LineError, Sample, Wanted, scan};
use super::spec::MetricSpec;
use crate::model::EndpointMetrics;

/// Labels of `lora_requests_info` that carry data rather than identify a rank.
const LORA_DATA_LABELS: [&str; 3] = ["running_lora_adapters", "waiting_lora_adapters", "max_lora"];

/// Tolerance above 1.0 for KV-cache usage (float noise); anything larger is a mapping error.
const KV_USAGE_SLACK: f64 = 0.01;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Normalized {
    pub metrics: EndpointMetrics,
    /// One message per mapped metric that could not be read.
    pub errors: Vec<String>,
    /// Malformed lines of the families the mapping reads.
    pub line_errors: Vec<LineError>,
}

impl Normalized {
    /// True when at least one metric was read.
    pub fn any(&self) -> bool {
        self.metrics != EndpointMetrics::default()
    }
}

pub fn normalize(page: &str, mapping: &EngineMapping) -> Normalized {
    let mut samples: Vec<Sample<'_>> = Vec::new();
    let report = scan(page, Wanted::Names(mapping.names()), |_, s| samples.push(s));
    let ctx = Ctx { samples: &samples, declared: &report.declared, names: mapping.names() };
    let mut out = Normalized { line_errors: report.errors, ..Normalized::default() };
    let m = &mut out.metrics;
    let errors = &mut out.errors;
    let mut record = |field: &str, r: Result<(), String>| {
        if let Err(e) = r {
            errors.push(format!("{field}: {e}"));
        }
    };

    if let Some(spec) = &mapping.queued {
        record("queued", ctx.count(spec).map(|v| m.queued = Some(v)));
    }
    if let Some(spec) = &mapping.running {
        record("running", ctx.count(spec).map(|v| m.running = Some(v)));
    }
    if let Some(spec) = &mapping.kv_usage {
        record("kv_usage", ctx.ratio(spec).map(|v| m.kv_usage = Some(v)));
    }
    if let Some(spec) = &mapping.lora {
        record("lora", ctx.lora(spec, m));
    }
    if let Some(spec) = &mapping.cache_info {
        record("cache_info", ctx.cache_info(spec, mapping, m));
    }
    if let Some(spec) = &mapping.cache_block_size {
        let r = ctx.first(spec).and_then(|v| to_u32(v, "block size"));
        record("cache_block_size", r.map(|v| m.cache_block_size = Some(v)));
    }
    if let Some(spec) = &mapping.cache_num_blocks {
        record("cache_num_blocks", ctx.count(spec).map(|v| m.cache_num_blocks = Some(v)));
    }
    out
}

struct Ctx<'s, 'a> {
    samples: &'s [Sample<'a>],
    declared: &'s [bool],
    names: &'s [String],
}

impl<'s, 'a> Ctx<'s, 'a> {
    /// The series of the first alternative that has any, or why there are none.
    fn select(&self, spec: &MetricSpec) -> Result<Vec<&'s Sample<'a>>, String> {
        for sel in &spec.alternatives {
            let found: Vec<_> = self.samples.iter().filter(|s| sel.matches(s)).collect();
            if !found.is_empty() {
                return Ok(found);
            }
        }
        // Explain with the first alternative (the preferred name).
        let sel = &spec.alternatives[0];
        let names: Vec<&str> = spec.names().collect();
        let shown = names.join(" or ");
        let has_family = self.samples.iter().any(|s| names.contains(&s.name));
        if has_family {
            return Err(format!("no series of {shown:?} matches {sel}"));
        }
        let declared = names.iter().any(|n| self.names.iter().position(|w| w == n).is_some_and(|i| self.declared[i]));
        if declared {
            Err(format!("metric family {shown:?} is declared but has no samples"))
        } else {
            Err(format!("metric family {shown:?} not found"))
        }
    }

    fn count(&self, spec: &MetricSpec) -> Result<u64, String> {
        let mut total = 0.0;
        for s in self.select(spec)? {
            if !s.value.is_finite() || s.value < 0.0 {
                return Err(format!("invalid value {} for {}", s.value, s.name));
            }
            total += s.value;
        }
        Ok(total.round() as u64)
    }

    fn ratio(&self, spec: &MetricSpec) -> Result<f64, String> {
        let series = self.select(spec)?;
        let mut total = 0.0;
        for s in &series {
            if !s.value.is_finite() || s.value < 0.0 || s.value > 1.0 + KV_USAGE_SLACK {
                return Err(format!("value {} of {} is outside 0..1", s.value, s.name));
            }
            total += s.value;
        }
        Ok((total / series.len() as f64).clamp(0.0, 1.0))
    }

    fn first(&self, spec: &MetricSpec) -> Result<f64, String> {
        Ok(self.select(spec)?[0].value)
    }

    fn lora(&self, spec: &MetricSpec, m: &mut EndpointMetrics) -> Result<(), String> {
        // Newest series per rank (labels other than the data labels identify the rank).
        let mut newest: BTreeMap<Vec<(&str, &str)>, &Sample<'a>> = BTreeMap::new();
        for s in self.select(spec)? {
            let mut rank: Vec<(&str, &str)> = s
                .labels
                .iter()
                .filter(|(k, _)| !LORA_DATA_LABELS.contains(&k.as_ref()))
                .map(|(k, v)| (k.as_ref(), v.as_ref()))
                .collect();
            rank.sort_unstable();
            let entry = newest.entry(rank).or_insert(s);
            if s.value > entry.value {
                *entry = s;
            }
        }
        let (mut running, mut waiting, mut max_lora) = (Vec::new(), Vec::new(), None::<u32>);
        for s in newest.values() {
            push_adapters(&mut running, s.label("running_lora_adapters"));
            push_adapters(&mut waiting, s.label("waiting_lora_adapters"));
            if let Some(text) = s.label("max_lora") {
                let v: u32 = text.trim().parse().map_err(|_| format!("invalid max_lora label {text:?}"))?;
                max_lora = Some(max_lora.map_or(v, |cur| cur.max(v)));
            }
        }
        m.running_lora = Some(running);
        m.waiting_lora = Some(waiting);
        m.max_lora = max_lora;
        Ok(())
    }

    fn cache_info(&self, spec: &MetricSpec, mapping: &EngineMapping, m: &mut EndpointMetrics) -> Result<(), String> {
        let series = self.select(spec)?;
        let label = |s: &Sample<'_>, name: &str| -> Result<u64, String> {
            let text = s.label(name).ok_or_else(|| format!("label {name:?} missing on {}", s.name))?;
            text.trim().parse::<u64>().map_err(|_| format!("invalid {name} label {text:?}"))
        };
        let block_size = label(series[0], &mapping.cache_block_size_label)?;
        let mut blocks = 0u64;
        for s in &series {
            blocks = blocks.saturating_add(label(s, &mapping.cache_num_blocks_label)?);
        }
        m.cache_block_size = Some(to_u32(block_size as f64, "block size")?);
        m.cache_num_blocks = Some(blocks);
        Ok(())
    }
}

fn push_adapters(out: &mut Vec<String>, list: Option<&str>) {
    for name in list.unwrap_or_default().split(',') {
        let name = name.trim();
        if !name.is_empty() && !out.iter().any(|n| n == name) {
            out.push(name.to_string());
        }
    }
}

fn to_u32(v: f64, what: &str) -> Result<u32, String> {
    if v.is_finite() && v >= 0.0 && v <= f64::from(u32::MAX) {
        Ok(v.round() as u32)
    } else {
        Err(format!("invalid {what} {v}"))
    }
}

#[cfg(test)]
#[path = "normalize_tests.rs"]
mod tests;
