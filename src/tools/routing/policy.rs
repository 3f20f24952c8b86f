//! The routing policies the scoreboard compares and how each one's data path is stood up.
//!
//! Switchyard's policies run the product's distributed shape: an aggregator in the bench process
//! scraping the sims, pickers as child `switchyard picker` processes (so their CPU is their own),
//! and the gateway in the bench process driving ext-proc as Envoy does. Round-robin is the gateway
//! alone. The peer, SMG, is its own gateway process, launched from a local venv.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

use crate::gateway::{self, FailureMode, GatewayConfig};
use crate::roles::{AggregatorHandle, AggregatorOptions, start_aggregator};
use crate::sim::SimHandle;
use crate::tools::procs::{Child, free_port};

use super::Rig;
use super::workload::OBJECTIVES;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// The gateway alone, round-robin over the pool.
    RoundRobin,
    /// `random-picker` only.
    Random,
    /// `queue-scorer` + `max-score-picker`.
    LeastQueue,
    /// Upstream's default profile (the built-in default config).
    UpstreamDefault,
    /// Switchyard's best profile, one picker.
    Switchyard,
    /// Switchyard's best profile, four pickers sharing the aggregator's view.
    Switchyard4p,
    /// SGLang's model gateway (`smg launch --policy cache_aware`), the peer.
    SmgCacheAware,
}

impl Policy {
    pub fn name(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round-robin",
            Policy::Random => "random",
            Policy::LeastQueue => "least-queue",
            Policy::UpstreamDefault => "upstream-default",
            Policy::Switchyard => "switchyard",
            Policy::Switchyard4p => "switchyard-4p",
            Policy::SmgCacheAware => "smg-cache-aware",
        }
    }

    /// Picker processes (0: no picker).
    pub fn pickers(self) -> usize {
        match self {
            Policy::RoundRobin | Policy::SmgCacheAware => 0,
            Policy::Switchyard4p => 4,
            _ => 1,
        }
    }

    /// The `EndpointPickerConfig` of the picker (None: the built-in default).
    pub fn config(self, rig: &Rig) -> Option<&str> {
        match self {
            Policy::Random => Some(RANDOM),
            Policy::LeastQueue => Some(LEAST_QUEUE),
            Policy::Switchyard | Policy::Switchyard4p => Some(&rig.switchyard_config),
            _ => None,
        }
    }
}

const RANDOM: &str = concat!(
    "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n",
    "plugins:\n- type: random-picker\n"
);
const LEAST_QUEUE: &str = concat!(
    "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n",
    "plugins:\n- type: queue-scorer\n- type: max-score-picker\n"
);
/// Switchyard's best profile (docs/config.md, "Profiles for hard workloads").
pub const BEST: &str = include_str!("../../../deploy/examples/switchyard-best.yaml");

/// A running data path: where clients send requests, and the processes whose CPU is routing.
pub struct DataPath {
    pub url: String,
    /// PIDs of the routing processes (pickers, or the peer's gateway).
    pub pids: Vec<u32>,
    children: Vec<Child>,
    aggregator: Option<AggregatorHandle>,
    stop: Option<watch::Sender<bool>>,
}

/// Where the peer's venv lives and how it is installed.
pub fn smg_venv() -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    home.join(".cache/switchyard-tools/smg-venv")
}

/// Installs SMG into its venv when it is not there yet.
pub fn ensure_smg() -> anyhow::Result<PathBuf> {
    let venv = smg_venv();
    let bin = venv.join("bin/smg");
    if bin.exists() {
        return Ok(bin);
    }
    eprintln!("installing smg==1.13.0 into {} (pip, from PyPI)...", venv.display());
    let ok = Command::new("python3").arg("-m").arg("venv").arg(&venv).status().is_ok_and(|s| s.success())
        && Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "smg==1.13.0"])
            .status()
            .is_ok_and(|s| s.success());
    anyhow::ensure!(ok && bin.exists(), "cannot install smg==1.13.0 with pip into {}", venv.display());
    Ok(bin)
}

impl DataPath {
    pub async fn start(
        policy: Policy,
        pickers: usize,
        fleet: &[SimHandle],
        endpoints_file: &Path,
        rig: &Rig,
        seed: u64,
    ) -> anyhow::Result<DataPath> {
        let pool: Vec<String> = fleet.iter().map(|h| h.addr.to_string()).collect();
        if policy == Policy::SmgCacheAware {
            return start_smg(&pool).await;
        }
        let (stop, stop_rx) = watch::channel(false);
        let mut children = Vec::new();
        let mut pids = Vec::new();
        let mut ext_proc = Vec::new();
        let mut aggregator = None;
        if pickers > 0 {
            let agg = start_aggregator(AggregatorOptions::local(endpoints_file.to_path_buf())).await?;
            for i in 0..pickers {
                let port = free_port()?;
                let mut cmd = Command::new(&rig.exe);
                cmd.args(["picker", "--listen-host", "127.0.0.1", "--grpc-port", &port.to_string()])
                    .args([
                        "--grpc-health-port",
                        &free_port()?.to_string(),
                        "--metrics-port",
                        &free_port()?.to_string(),
                    ])
                    .args(["--secure-serving=false", "--aggregators", &agg.control_addr.to_string()])
                    .args(["--seed", &(seed + i as u64).to_string()])
                    .args(["--log", "error"]);
                // As the chart deploys a picker: one worker thread (its CPU request) unless the
                // bench's own environment says otherwise.
                if std::env::var_os(crate::WORKER_THREADS_ENV).is_none() {
                    cmd.env(crate::WORKER_THREADS_ENV, "1");
                }
                for (name, priority) in OBJECTIVES {
                    cmd.args(["--inference-objective", &format!("{name}={priority}")]);
                }
                if let Some(cfg) = policy.config(rig) {
                    cmd.args(["--config-text", cfg]);
                }
                let child = Child(cmd.stdout(Stdio::null()).spawn()?);
                pids.push(child.0.id());
                children.push(child);
                ext_proc.push(format!("http://127.0.0.1:{port}"));
            }
            aggregator = Some(agg);
        }
        let cfg = GatewayConfig {
            ext_proc,
            failure_mode: FailureMode::Close,
            pool,
            message_timeout: Duration::from_secs(10),
        };
        let (addr, _task) = gateway::start(cfg, "127.0.0.1:0".parse()?, stop_rx).await?;
        let path = DataPath { url: format!("http://{addr}"), pids, children, aggregator, stop: Some(stop) };
        path.wait_ready(fleet.len()).await?;
        Ok(path)
    }

    /// Waits until every routing process answers: fresh metrics of every endpoint at the
    /// aggregator, then as many requests in a row as there are routing processes go through. The
    /// gateway takes its ext-proc servers in turn, so that is one answer from each picker (a single
    /// success proved only one of four ready: the others' first requests got 503).
    async fn wait_ready(&self, endpoints: usize) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let body = serde_json::json!({"model": super::MODEL, "messages": [{"role": "user", "content": "ready?"}], "max_tokens": 1});
        let needed = self.pids.len().max(1);
        let mut in_a_row = 0;
        loop {
            let fresh = match &self.aggregator {
                Some(a) => {
                    a.snapshots.borrow().endpoints.iter().filter(|e| e.metrics.sample().is_some()).count() >= endpoints
                }
                None => true,
            };
            if fresh {
                let r = client.post(format!("{}/v1/chat/completions", self.url)).json(&body).send().await;
                if r.is_ok_and(|r| r.status().is_success()) {
                    in_a_row += 1;
                    if in_a_row >= needed {
                        return Ok(());
                    }
                    continue;
                }
            }
            in_a_row = 0;
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "the routing path did not become ready in 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// CPU seconds the routing processes used so far.
    pub fn cpu_seconds(&self) -> f64 {
        self.pids.iter().filter_map(|p| crate::tools::bench::cpu_seconds(&p.to_string())).sum()
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(true);
        }
        self.children.clear();
        if let Some(a) = self.aggregator.take() {
            a.shutdown(Duration::from_secs(1)).await;
        }
    }
}

async fn start_smg(pool: &[String]) -> anyhow::Result<DataPath> {
    let bin = ensure_smg()?;
    let (port, prom) = (free_port()?, free_port()?);
    let mut cmd = Command::new(bin);
    cmd.args(["launch", "--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--prometheus-host", "127.0.0.1", "--prometheus-port", &prom.to_string()])
        .args(["--policy", "cache_aware", "--log-level", "error", "--worker-urls"])
        .args(pool.iter().map(|a| format!("http://{a}")))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = Child(cmd.spawn()?);
    let path = DataPath {
        url: format!("http://127.0.0.1:{port}"),
        pids: vec![child.0.id()],
        children: vec![child],
        aggregator: None,
        stop: None,
    };
    path.wait_ready(pool.len()).await?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_policy_config_loads() {
        let rig = Rig::new(PathBuf::new());
        for p in [Policy::Random, Policy::LeastQueue, Policy::Switchyard] {
            let text = p.config(&rig).unwrap_or_default();
            assert!(!text.is_empty(), "{}", p.name());
            crate::config::load(None, Some(text)).unwrap_or_else(|e| panic!("{}: {e}", p.name()));
        }
    }
}
