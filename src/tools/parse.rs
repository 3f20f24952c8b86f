//! `switchyard metrics parse`: normalize one exposition and print the result as JSON.

use serde::Serialize;

use crate::metrics::{EngineMapping, normalize};

/// The printed object: exactly these keys, `null` for what is absent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParseOutput {
    pub engine: String,
    pub queued: Option<u64>,
    pub running: Option<u64>,
    pub kv_usage: Option<f64>,
    pub running_lora: Option<Vec<String>>,
    pub waiting_lora: Option<Vec<String>>,
    pub max_lora: Option<u32>,
    pub cache_block_size: Option<u32>,
    pub cache_num_blocks: Option<u64>,
    pub errors: Vec<String>,
}

pub fn parse_page(page: &str, mapping: &EngineMapping) -> ParseOutput {
    let n = normalize(page, mapping);
    let m = n.metrics;
    let mut errors = n.errors;
    errors.extend(n.line_errors.iter().map(|e| format!("malformed {e}")));
    ParseOutput {
        engine: mapping.name.clone(),
        queued: m.queued,
        running: m.running,
        kv_usage: m.kv_usage,
        running_lora: m.running_lora,
        waiting_lora: m.waiting_lora,
        max_lora: m.max_lora,
        cache_block_size: m.cache_block_size,
        cache_num_blocks: m.cache_num_blocks,
        errors,
    }
}
