//! The arguments of the tool subcommands: `crds`, `metrics`, `sim`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use switchyard::sim;

use super::*;

#[derive(Args)]
pub(crate) struct CrdsArgs {
    /// Write `<group>_<plural>.yaml` files here (e.g. deploy/charts/switchyard/crds) instead of
    /// printing one multi-document YAML.
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
}

#[derive(Subcommand)]
pub(crate) enum MetricsCommand {
    /// Normalize one exposition (file or stdin) and print one JSON object.
    Parse(ParseArgs),
}

#[derive(Args)]
pub(crate) struct ParseArgs {
    /// Engine mapping to use (default: the config's default engine).
    #[arg(long)]
    pub(crate) engine: Option<String>,
    /// EndpointPickerConfig file (its core-metrics-extractor engines are used).
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) metric_flags: MetricFlagArgs,
    /// Exposition file, or `-` for stdin.
    #[arg(default_value = "-")]
    pub(crate) file: String,
}

#[derive(Args)]
pub(crate) struct SimArgs {
    /// Servers per engine flavor: vllm-v1, vllm-v0, sglang, triton-tensorrt-llm, trtllm-serve.
    #[arg(long, default_value = "vllm-v1=1,vllm-v0=1,sglang=1,triton-tensorrt-llm=1,trtllm-serve=1")]
    pub(crate) fleet: String,
    #[arg(long, default_value = "127.0.0.1")]
    pub(crate) host: std::net::IpAddr,
    /// First port (consecutive ports follow); 0 picks free ports.
    #[arg(long, default_value_t = 8000)]
    pub(crate) base_port: u16,
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Simulated seconds per real second.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) speed: f64,
    #[arg(long, default_value = "meta-llama/Llama-3.1-8B-Instruct")]
    pub(crate) model: String,
    /// LoRA adapters served by the vLLM servers (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub(crate) lora_adapters: Vec<String>,
    #[arg(long, default_value_t = 4)]
    pub(crate) max_lora: u32,
    #[arg(long, default_value_t = 7000)]
    pub(crate) kv_blocks: u32,
    #[arg(long, default_value_t = 16)]
    pub(crate) block_size: u32,
    #[arg(long, default_value_t = 256)]
    pub(crate) max_num_seqs: u32,
    #[arg(long, default_value_t = 12000.0)]
    pub(crate) prefill_tokens_per_s: f64,
    #[arg(long, default_value_t = 12.0)]
    pub(crate) decode_base_ms: f64,
    #[arg(long, default_value_t = 0.12)]
    pub(crate) decode_per_seq_ms: f64,
    /// Stop after this many seconds (default: run until interrupted).
    #[arg(long)]
    pub(crate) duration_secs: Option<u64>,
    /// Also write the fleet as a static endpoints file for `switchyard standalone`.
    #[arg(long)]
    pub(crate) endpoints_out: Option<PathBuf>,
    /// Serve HTTPS with a self-signed certificate generated at start (the picker then needs
    /// `metrics-data-source` `scheme: https`).
    #[arg(long)]
    pub(crate) tls: bool,
    /// Per server in start order, how many times slower it runs (e.g. `3` makes the first 3×
    /// slower); servers past the list run at full speed.
    #[arg(long, value_delimiter = ',')]
    pub(crate) slowdown: Vec<f64>,
}

impl SimArgs {
    pub(crate) fn fleet_config(&self) -> anyhow::Result<sim::FleetConfig> {
        Ok(sim::FleetConfig {
            fleet: sim::parse_fleet(&self.fleet).map_err(anyhow::Error::msg)?,
            host: self.host,
            base_port: self.base_port,
            seed: self.seed,
            speed: self.speed,
            model: self.model.clone(),
            adapters: self.lora_adapters.clone(),
            params: sim::ModelParams {
                kv_blocks: self.kv_blocks,
                block_size: self.block_size,
                max_num_seqs: self.max_num_seqs,
                max_lora: self.max_lora,
                prefill_tokens_per_s: self.prefill_tokens_per_s,
                decode_base_s: self.decode_base_ms / 1000.0,
                decode_per_seq_s: self.decode_per_seq_ms / 1000.0,
                ..sim::ModelParams::default()
            },
            tls: self.tls,
            slowdown: self.slowdown.clone(),
        })
    }
}
