//! A real etcd on loopback (Debian's `etcd-server`), and the election against it.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use switchyard::aggregator::election::{self, EtcdSettings, LeadershipEvent};
use tokio::sync::{mpsc, watch};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// An etcd process with a temporary data dir; killed on drop.
pub struct Etcd {
    child: Child,
    pub endpoint: String,
    _dir: tempfile::TempDir,
}

impl Etcd {
    pub async fn start() -> Etcd {
        let dir = tempfile::tempdir().expect("tempdir");
        let (client, peer) = (free_port(), free_port());
        let child = Command::new("etcd")
            .args([
                "--name",
                "it",
                "--data-dir",
                &dir.path().join("data").display().to_string(),
                "--listen-client-urls",
                &format!("http://127.0.0.1:{client}"),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{client}"),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-cluster",
                &format!("it=http://127.0.0.1:{peer}"),
                "--listen-metrics-urls",
                &format!("http://127.0.0.1:{}", free_port()),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd is installed (apt-get install etcd-server; scripts/setup.sh does it)");
        let endpoint = format!("http://127.0.0.1:{client}");
        let etcd = Etcd { child, endpoint, _dir: dir };
        let url = format!("{}/health", etcd.endpoint);
        crate::support::wait_for("etcd healthy", Duration::from_secs(15), || {
            let url = url.clone();
            async move {
                let r = crate::support::client().get(url).send().await.ok()?;
                r.text().await.ok().filter(|t| t.contains("true")).map(|_| ())
            }
        })
        .await;
        etcd
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([sig, &self.child.id().to_string()]).status().expect("kill").success();
        assert!(ok, "kill {sig}");
    }

    /// SIGSTOP: etcd stops answering without closing connections.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn settings(etcd: &Etcd, value: &str) -> EtcdSettings {
    EtcdSettings {
        endpoints: vec![etcd.endpoint.clone()],
        election: "switchyard-it".into(),
        value: value.into(),
        ttl: Duration::from_secs(2),
        user: None,
    }
}

struct Replica {
    events: mpsc::Receiver<LeadershipEvent>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn replica(s: EtcdSettings) -> Replica {
    let (tx, events) = mpsc::channel(16);
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let _ = election::run_etcd(s, tx, rx).await;
    });
    Replica { events, stop, task }
}

async fn next(r: &mut Replica, within: Duration) -> Option<LeadershipEvent> {
    tokio::time::timeout(within, r.events.recv()).await.ok().flatten()
}

fn epoch(e: Option<LeadershipEvent>) -> u64 {
    match e {
        Some(LeadershipEvent::Acquired { epoch }) => epoch,
        other => panic!("expected leadership, got {other:?}"),
    }
}

#[tokio::test]
async fn one_leader_then_failover_with_a_higher_epoch() {
    let etcd = Etcd::start().await;
    let mut a = replica(settings(&etcd, "a:1"));
    let e1 = epoch(next(&mut a, Duration::from_secs(5)).await);
    let mut b = replica(settings(&etcd, "b:1"));
    assert_eq!(next(&mut b, Duration::from_millis(800)).await, None, "b waits while a leads");
    assert_eq!(election::current_leader(&settings(&etcd, "x")).await.expect("leader").as_deref(), Some("a:1"));
    // Graceful: a resigns, b takes over at once.
    let _ = a.stop.send(true);
    let e2 = epoch(next(&mut b, Duration::from_secs(3)).await);
    assert!(e2 > e1, "new term, higher epoch: {e1} -> {e2}");
    // Crash: b's task dies without resigning; c takes over once the lease expires.
    let mut c = replica(settings(&etcd, "c:1"));
    b.task.abort();
    let e3 = epoch(next(&mut c, Duration::from_secs(6)).await);
    assert!(e3 > e2);
    let _ = c.stop.send(true);
}

#[tokio::test]
async fn leader_steps_down_when_etcd_is_unreachable_and_reelection_follows() {
    let etcd = Etcd::start().await;
    let mut a = replica(settings(&etcd, "a:1"));
    let e1 = epoch(next(&mut a, Duration::from_secs(5)).await);
    etcd.pause();
    let lost = next(&mut a, Duration::from_secs(3)).await;
    assert!(matches!(lost, Some(LeadershipEvent::Lost { .. })), "stops publishing within the TTL: {lost:?}");
    etcd.resume();
    let e2 = epoch(next(&mut a, Duration::from_secs(15)).await);
    assert!(e2 > e1, "re-elected in a new term: {e1} -> {e2}");
    let _ = a.stop.send(true);
}
