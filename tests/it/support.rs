//! Helpers shared by the integration tests.

use std::future::Future;
use std::time::Duration;

/// Polls `check` every 20 ms until it returns `Some`, or panics after `timeout` with `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A plain HTTP client (with the process crypto provider installed first).
pub fn client() -> reqwest::Client {
    switchyard::ensure_crypto_provider();
    reqwest::Client::new()
}

/// Regression: servers bound to our own listeners left Nagle on, and small gRPC frames waited for
/// delayed ACKs (40 ms stalls through the gateway at low concurrency).
#[tokio::test]
async fn test_accepted_connections_have_nodelay() {
    use futures::StreamExt as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut incoming = Box::pin(switchyard::nodelay_incoming(listener));
    let _client = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let accepted = incoming.next().await.expect("a connection").expect("accepted");
    assert!(accepted.nodelay().expect("nodelay"));
}

/// `n` simulated vLLM V1 servers and an endpoints file listing them, written in `dir`.
pub async fn vllm_fleet(n: usize, dir: &std::path::Path) -> (Vec<switchyard::sim::SimHandle>, std::path::PathBuf) {
    use switchyard::sim::{self, Flavor, FleetConfig};
    let fleet =
        sim::start_fleet(&FleetConfig { fleet: vec![(Flavor::VllmV1, n)], ..Default::default() }).await.expect("fleet");
    let file = sim::write_endpoints_file(&fleet, dir).expect("endpoints file");
    (fleet, file)
}

/// The `/metrics` page served at `addr` (panics when it cannot be read).
pub async fn metrics_text(addr: std::net::SocketAddr) -> String {
    client().get(format!("http://{addr}/metrics")).send().await.expect("metrics").text().await.expect("text")
}

/// A `switchyard` child process, killed when dropped.
pub struct Proc(pub std::process::Child);

impl Proc {
    /// Runs the binary under test with `args` and extra environment `env`, output discarded.
    pub fn spawn(args: &[String], env: &[(&str, String)]) -> Proc {
        use std::process::{Command, Stdio};
        let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn switchyard");
        Proc(child)
    }

    /// Sends `sig` (e.g. `-STOP`) to the process.
    pub fn signal(&self, sig: &str) {
        let ok =
            std::process::Command::new("kill").args([sig, &self.0.id().to_string()]).status().expect("kill").success();
        assert!(ok, "kill {sig}");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Owned command-line arguments.
pub fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// Arguments of a child `switchyard aggregator` on loopback reading `endpoints` (etcd and other
/// flags are the caller's to add).
pub fn aggregator_args(control: u16, health: u16, endpoints: &str) -> Vec<String> {
    strings(&[
        "aggregator",
        "--listen-host",
        "127.0.0.1",
        "--control-port",
        &control.to_string(),
        "--grpc-health-port",
        &health.to_string(),
        "--metrics-port",
        &crate::etcd::free_port().to_string(),
        "--endpoints-file",
        endpoints,
        "--log",
        "warn",
    ])
}
