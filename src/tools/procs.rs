//! Child processes for the benchmarks that run the distributed roles apart: etcd, `switchyard
//! sim`, and aggregator, picker and scraper replicas on loopback with free ports; their `/metrics`
//! and their resident memory. A child is SIGKILLed when dropped or killed (no resignation, no
//! drain: as a crash would end it).
//!
//! It does not decide what to measure or when to kill; `cpbench` and `soak` do.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A child process, killed and reaped when dropped.
pub struct Child(pub std::process::Child);

impl Child {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Where a child's stderr goes: `dir/name.log` when logs are kept, else nowhere.
fn stderr_to(logs: Option<&Path>, name: &str) -> anyhow::Result<Stdio> {
    Ok(match logs {
        Some(dir) => Stdio::from(std::fs::File::create(dir.join(format!("{name}.log")))?),
        None => Stdio::null(),
    })
}

/// A single-member etcd on loopback, its data under `dir`.
pub struct Etcd {
    pub child: Child,
    /// The client URL.
    pub url: String,
}

impl Etcd {
    /// Starts etcd and waits (up to 15 s) until its health endpoint answers.
    pub async fn start(dir: &Path) -> anyhow::Result<Etcd> {
        let (client, peer, metrics) = (free_port()?, free_port()?, free_port()?);
        let url = format!("http://127.0.0.1:{client}");
        let peer = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .args(["--name", "b", "--data-dir", &dir.join("etcd").display().to_string()])
            .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("b={peer}")])
            .args(["--listen-metrics-urls", &format!("http://127.0.0.1:{metrics}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start etcd (apt-get install etcd-server): {e}"))?;
        let etcd = Etcd { child: Child(child), url };
        let health = format!("http://127.0.0.1:{metrics}/health");
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if http.get(&health).send().await.is_ok_and(|r| r.status().is_success()) {
                return Ok(etcd);
            }
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "etcd did not become healthy within 15 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A role replica started as a child process, and its ports.
pub struct Role {
    pub child: Child,
    /// Aggregator: control port; picker: ext-proc port; scraper: unused (0).
    pub port: u16,
    pub metrics: u16,
}

/// How the role replicas of one run are started.
#[derive(Debug, Clone)]
pub struct Roles {
    pub exe: PathBuf,
    pub etcd_url: String,
    pub election: String,
    /// `--lease-ttl`, e.g. `2000ms`.
    pub ttl: String,
    /// `--log` of every replica.
    pub log: String,
    /// Each replica's stderr goes to `<dir>/<name>.log` when set.
    pub logs: Option<PathBuf>,
}

impl Roles {
    fn command(&self, name: &str, role: &str) -> anyhow::Result<Command> {
        let mut c = Command::new(&self.exe);
        c.args([role, "--log", &self.log]).stdout(Stdio::null()).stderr(stderr_to(self.logs.as_deref(), name)?);
        Ok(c)
    }

    fn etcd_args(&self) -> [&str; 6] {
        ["--etcd-endpoints", &self.etcd_url, "--election-name", &self.election, "--lease-ttl", &self.ttl]
    }

    /// An aggregator replica following `endpoints_file`, campaigning through etcd; `extra` flags
    /// are appended (e.g. `--remote-scrapers`).
    pub fn aggregator(&self, name: &str, endpoints_file: &Path, extra: &[&str]) -> anyhow::Result<Role> {
        let (port, metrics) = (free_port()?, free_port()?);
        let child = self
            .command(name, "aggregator")?
            .args(["--listen-host", "127.0.0.1", "--control-port", &port.to_string()])
            .args(["--grpc-health-port", &free_port()?.to_string(), "--metrics-port", &metrics.to_string()])
            .args(["--endpoints-file", &endpoints_file.display().to_string()])
            .args(self.etcd_args())
            .args(extra)
            .spawn()?;
        Ok(Role { child: Child(child), port, metrics })
    }

    /// A plaintext picker replica following the elected leader.
    pub fn picker(&self, name: &str, extra: &[&str]) -> anyhow::Result<Role> {
        let (port, metrics) = (free_port()?, free_port()?);
        let child = self
            .command(name, "picker")?
            .args(["--listen-host", "127.0.0.1", "--grpc-port", &port.to_string()])
            .args(["--grpc-health-port", &free_port()?.to_string(), "--metrics-port", &metrics.to_string()])
            .args(["--secure-serving=false"])
            .args(self.etcd_args())
            .args(extra)
            .spawn()?;
        Ok(Role { child: Child(child), port, metrics })
    }

    /// A scraper replica with identity `id`, scraping what the elected leader assigns it.
    pub fn scraper(&self, id: &str, extra: &[&str]) -> anyhow::Result<Role> {
        let metrics = free_port()?;
        let child = self
            .command(id, "scraper")?
            .args(["--scraper-id", id, "--listen-host", "127.0.0.1", "--metrics-port", &metrics.to_string()])
            .args(self.etcd_args())
            .args(extra)
            .spawn()?;
        Ok(Role { child: Child(child), port: 0, metrics })
    }
}

/// The `/metrics` text of a role on `port`; `None` when it does not answer.
pub async fn metrics_text(http: &reqwest::Client, port: u16) -> Option<String> {
    let r = http.get(format!("http://127.0.0.1:{port}/metrics")).timeout(Duration::from_secs(2)).send().await.ok()?;
    r.text().await.ok()
}

/// The sum of the samples of the series starting with `series` (a name, or a name and the
/// beginning of its labels, e.g. `name{map="x"`) in exposition `text`; `None` without any.
pub fn sample_sum(text: &str, series: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(series) else { continue };
        // The name must end here (not a longer name sharing the prefix).
        if !(series.contains('{') || rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        if let Some(v) = line.rsplit_once(' ').and_then(|(_, v)| v.trim().parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// The largest sample of the series starting with `series` (see [`sample_sum`]).
pub fn sample_max(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(series) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
        .reduce(f64::max)
}

/// Samples (series) in exposition `text`: a label set that keeps growing shows here.
pub fn series_count(text: &str) -> usize {
    text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).count()
}

/// Distinct values of the `endpoint` label on the page: more than the endpoints a role holds
/// means series of endpoints that left are kept.
pub fn endpoint_label_values(text: &str) -> usize {
    let values: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once("endpoint=\"")?.1.split_once('"').map(|(v, _)| v))
        .collect();
    values.len()
}

/// Resident memory of process `pid` in KiB (`VmRSS` of /proc/PID/status); `None` once it is gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_found_by_name_or_name_and_labels_and_longer_names_are_not_confused() {
        let text = "# TYPE a gauge\na 3\na_total 9\nb{map=\"x\"} 2\nb{map=\"y\"} 5\n# EOF\n";
        assert_eq!(sample_sum(text, "a"), Some(3.0));
        assert_eq!(sample_sum(text, "b"), Some(7.0));
        assert_eq!(sample_sum(text, "b{map=\"y\""), Some(5.0));
        assert_eq!(sample_max(text, "b{"), Some(5.0));
        assert_eq!(sample_sum(text, "c"), None);
        assert_eq!(series_count(text), 4);
        let page = "x{endpoint=\"a\"} 1\ny{endpoint=\"a\",kind=\"k\"} 2\nz{endpoint=\"b\"} 3\n# HELP endpoint=\"c\"\n";
        assert_eq!(endpoint_label_values(page), 2);
    }

    #[test]
    fn own_resident_memory_is_read() {
        assert!(rss_kib(std::process::id()).is_some_and(|k| k > 0));
    }
}
