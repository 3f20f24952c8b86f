//! `switchyard sim`: a fleet of simulated model servers on loopback.
//!
//! Each server emits the real /metrics format of its engine (vLLM V1 and V0, SGLang, Triton
//! TensorRT-LLM, trtllm-serve) and serves the OpenAI completions and chat completions APIs,
//! streaming (SSE) or not, with `usage`. Behaviour follows the queueing + KV-cache model in
//! [`model`]; runs are reproducible for a given seed and request sequence.
//!
//! With [`FleetConfig::tls`] they serve HTTPS with a self-signed certificate generated at start.
//!
//! It does not model tokenization (4 characters per token), chunked prefill, preemption or
//! speculative decoding.

pub mod model;
pub mod render;
pub mod server;
mod tls;

use std::net::{IpAddr, SocketAddr};

use serde::Serialize;
use tokio::net::TcpListener;

pub use model::ModelParams;
pub use render::Flavor;
pub use server::{SimHandle, SimServer, SimServerConfig};

/// What to start: how many servers of each flavor, and how they behave.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub fleet: Vec<(Flavor, usize)>,
    pub host: IpAddr,
    /// First port; 0 picks free ports.
    pub base_port: u16,
    pub seed: u64,
    pub speed: f64,
    pub model: String,
    /// LoRA adapters served by every server (only vLLM pages report them).
    pub adapters: Vec<String>,
    pub params: ModelParams,
    /// Serve HTTPS (self-signed certificate for `localhost`) instead of plain HTTP.
    pub tls: bool,
    /// Per server (in start order), how many times slower than `params` it runs (prefill rate
    /// divided, decode times multiplied); servers past the end run at 1.
    pub slowdown: Vec<f64>,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            fleet: Flavor::ALL.iter().map(|f| (*f, 1)).collect(),
            host: IpAddr::from([127, 0, 0, 1]),
            base_port: 0,
            seed: 1,
            speed: 1.0,
            model: "meta-llama/Llama-3.1-8B-Instruct".into(),
            adapters: Vec::new(),
            params: ModelParams::default(),
            tls: false,
            slowdown: Vec::new(),
        }
    }
}

/// Parses `vllm-v1=2,sglang=1`.
pub fn parse_fleet(s: &str) -> Result<Vec<(Flavor, usize)>, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|part| {
            let (name, count) = part.split_once('=').unwrap_or((part, "1"));
            let flavor = Flavor::parse(name.trim()).ok_or_else(|| {
                format!("unknown engine {name:?} (known: vllm-v1, vllm-v0, sglang, triton-tensorrt-llm, trtllm-serve)")
            })?;
            let count = count.trim().parse().map_err(|_| format!("invalid count {count:?} for {name}"))?;
            Ok((flavor, count))
        })
        .collect()
}

/// One started server, as printed by `switchyard sim` and read back as a static endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct SimEndpoint {
    pub name: String,
    pub flavor: &'static str,
    pub engine: &'static str,
    pub address: SocketAddr,
}

/// Starts the fleet. Servers are numbered per flavor; seeds differ per server but derive from
/// `cfg.seed`.
pub async fn start_fleet(cfg: &FleetConfig) -> std::io::Result<Vec<SimHandle>> {
    let mut handles = Vec::new();
    let mut port = cfg.base_port;
    for (flavor, count) in &cfg.fleet {
        for i in 0..*count {
            let listener = TcpListener::bind(SocketAddr::new(cfg.host, port)).await?;
            if port != 0 {
                port += 1;
            }
            let server_cfg = SimServerConfig {
                name: format!("sim-{}-{i}", flavor.name()),
                flavor: *flavor,
                model: cfg.model.clone(),
                // Every engine can serve adapters; only vLLM reports them in its metrics.
                adapters: cfg.adapters.clone(),
                params: cfg.params.slowed(cfg.slowdown.get(handles.len()).copied().unwrap_or(1.0)),
                seed: cfg.seed.wrapping_mul(1_000_003).wrapping_add(handles.len() as u64),
                speed: cfg.speed,
                tls: cfg.tls,
            };
            handles.push(SimServer::spawn(server_cfg, listener)?);
        }
    }
    Ok(handles)
}

/// The fleet as a static endpoints file (engine label set, flavor as an extra label).
pub fn endpoints_file(fleet: &[SimHandle]) -> crate::discovery::StaticEndpoints {
    crate::discovery::StaticEndpoints {
        endpoints: fleet
            .iter()
            .map(|h| crate::discovery::StaticEndpoint {
                name: h.name.clone(),
                address: h.addr.ip().to_string(),
                port: Some(h.addr.port()),
                ports: Vec::new(),
                labels: [
                    (crate::metrics::DEFAULT_ENGINE_LABEL_KEY.to_string(), h.flavor.engine().to_string()),
                    ("switchyard.io/sim-flavor".to_string(), h.flavor.name().to_string()),
                ]
                .into_iter()
                .collect(),
                metrics_port: None,
                metrics_path: None,
            })
            .collect(),
    }
}

/// Writes the fleet's endpoints file to `dir/endpoints.yaml` and returns its path.
pub fn write_endpoints_file(fleet: &[SimHandle], dir: &std::path::Path) -> std::io::Result<std::path::PathBuf> {
    let path = dir.join("endpoints.yaml");
    let yaml = serde_saphyr::to_string(&endpoints_file(fleet)).map_err(std::io::Error::other)?;
    std::fs::write(&path, yaml)?;
    Ok(path)
}

impl SimHandle {
    pub fn endpoint(&self) -> SimEndpoint {
        SimEndpoint {
            name: self.name.clone(),
            flavor: self.flavor.name(),
            engine: self.flavor.engine(),
            address: self.addr,
        }
    }

    /// `https` when the server was started with TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }

    pub fn metrics_url(&self) -> String {
        format!("{}://{}/metrics", self.scheme(), self.addr)
    }
}
