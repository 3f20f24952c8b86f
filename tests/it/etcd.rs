//! A real etcd on loopback (Debian's `etcd-server`), and the election against it.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use switchyard::aggregator::election::{self, LeadershipEvent};
use switchyard::etcd::EtcdSettings;
use tokio::sync::{mpsc, watch};

/// A port nothing listens on now and not handed out before by this process: the OS can return
/// the same free port to binds in a row, and two roles given one port fight over it.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        if GIVEN.lock().unwrap_or_else(|p| p.into_inner()).insert(port) {
            return port;
        }
    }
}

/// An etcd process with a temporary data dir; killed on drop.
pub struct Etcd {
    child: Child,
    pub endpoint: String,
    _dir: tempfile::TempDir,
}

impl Etcd {
    pub async fn start() -> Etcd {
        Etcd::launch("http", &[]).await
    }

    /// etcd serving clients over TLS only, requiring a client certificate signed by `pki`'s CA.
    pub async fn start_tls(pki: &Pki) -> Etcd {
        let files =
            [("--cert-file", &pki.server_cert), ("--key-file", &pki.server_key), ("--trusted-ca-file", &pki.ca)];
        let mut args: Vec<String> = vec!["--client-cert-auth".into()];
        for (flag, path) in files {
            args.extend([flag.to_string(), path.display().to_string()]);
        }
        Etcd::launch("https", &args).await
    }

    async fn launch(scheme: &str, extra: &[String]) -> Etcd {
        let dir = tempfile::tempdir().expect("tempdir");
        let (client, peer) = (free_port(), free_port());
        let metrics_port = free_port();
        let child = Command::new("etcd")
            .args([
                "--name",
                "it",
                "--data-dir",
                &dir.path().join("data").display().to_string(),
                "--listen-client-urls",
                &format!("{scheme}://127.0.0.1:{client}"),
                "--advertise-client-urls",
                &format!("{scheme}://127.0.0.1:{client}"),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-cluster",
                &format!("it=http://127.0.0.1:{peer}"),
                "--listen-metrics-urls",
                &format!("http://127.0.0.1:{metrics_port}"),
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd is installed (apt-get install etcd-server; scripts/setup.sh does it)");
        let endpoint = format!("{scheme}://127.0.0.1:{client}");
        let etcd = Etcd { child, endpoint, _dir: dir };
        // The plaintext metrics listener answers /health whatever the client URLs' scheme.
        let url = format!("http://127.0.0.1:{metrics_port}/health");
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

/// A CA and the certificates it signed, as PEM files in a temp dir.
pub struct Pki {
    pub ca: std::path::PathBuf,
    pub server_cert: std::path::PathBuf,
    pub server_key: std::path::PathBuf,
    pub client_cert: std::path::PathBuf,
    pub client_key: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        };
        let named = |cn: &str, sans: Vec<String>| {
            let mut p = CertificateParams::new(sans).expect("params");
            p.distinguished_name.push(DnType::CommonName, cn);
            p
        };
        let mut ca_params = named("switchyard test CA", vec![]);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("CA");
        let leaf = |cn: &str, sans: Vec<String>, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().expect("key");
            let mut p = named(cn, sans);
            p.extended_key_usages = vec![usage];
            (p.signed_by(&key, &ca).expect("signed").pem(), key.serialize_pem())
        };
        let server = leaf("etcd", vec!["127.0.0.1".into(), "localhost".into()], ExtendedKeyUsagePurpose::ServerAuth);
        let client = leaf("switchyard", vec![], ExtendedKeyUsagePurpose::ClientAuth);
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, pem: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).expect("write pem");
            path
        };
        Pki {
            ca: write("ca.pem", &ca.pem()),
            server_cert: write("server.pem", &server.0),
            server_key: write("server-key.pem", &server.1),
            client_cert: write("client.pem", &client.0),
            client_key: write("client-key.pem", &client.1),
            _dir: dir,
        }
    }
}

fn settings(etcd: &Etcd, value: &str) -> EtcdSettings {
    EtcdSettings::new(vec![etcd.endpoint.clone()], "switchyard-it", value, Duration::from_secs(2))
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
    assert_eq!(switchyard::etcd::current_leader(&settings(&etcd, "x")).await.expect("leader").as_deref(), Some("a:1"));
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

/// Regression: the campaign ran on a client whose requests time out after TTL/2, so a standby was
/// cut out of the queue every TTL/2 and re-created its key each time (epochs jumped by tens,
/// failover came up to TTL/4 late). A standby waits quietly: its key is created once, so the next
/// term's epoch (its key's revision) follows the leader's almost at once.
#[tokio::test]
async fn test_a_standby_waits_in_the_queue_without_being_cut_off() {
    let etcd = Etcd::start().await;
    let mut a = replica(settings(&etcd, "a:1"));
    let e1 = epoch(next(&mut a, Duration::from_secs(5)).await);
    let mut b = replica(settings(&etcd, "b:1"));
    // Three TTL/2 request timeouts' worth of waiting (TTL 2 s): nothing may happen to b meanwhile.
    assert_eq!(next(&mut b, Duration::from_secs(3)).await, None, "b waits while a leads");
    let _ = a.stop.send(true);
    let e2 = epoch(next(&mut b, Duration::from_secs(3)).await);
    assert!(e2 > e1 && e2 - e1 <= 2, "b's key was created once, right after a's: epochs {e1} -> {e2}");
    let _ = b.stop.send(true);
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

#[tokio::test]
async fn election_over_tls_with_a_client_certificate() {
    use switchyard::etcd::EtcdTls;
    let pki = Pki::new();
    let etcd = Etcd::start_tls(&pki).await;
    let tls = |cert: bool| {
        let (c, k) = (pki.client_cert.as_path(), pki.client_key.as_path());
        EtcdTls::from_files(Some(&pki.ca), cert.then_some(c), cert.then_some(k)).expect("pem files")
    };
    let mut s = settings(&etcd, "a:1");
    s.tls = Some(tls(true));
    let mut a = replica(s.clone());
    epoch(next(&mut a, Duration::from_secs(10)).await);
    assert_eq!(switchyard::etcd::current_leader(&s).await.expect("leader over TLS").as_deref(), Some("a:1"));

    // A bare host:port is taken as https when TLS is configured.
    let mut bare = s.clone();
    bare.endpoints = vec![etcd.endpoint.trim_start_matches("https://").to_string()];
    assert_eq!(switchyard::etcd::current_leader(&bare).await.expect("leader").as_deref(), Some("a:1"));

    // etcd requires the client certificate, and plaintext reaches nothing.
    let mut no_cert = s.clone();
    no_cert.tls = Some(tls(false));
    assert!(switchyard::etcd::current_leader(&no_cert).await.is_err(), "no client certificate must be refused");
    let mut plain = settings(&etcd, "x");
    plain.endpoints = vec![etcd.endpoint.replace("https://", "http://")];
    assert!(switchyard::etcd::current_leader(&plain).await.is_err(), "plaintext must not reach a TLS etcd");
    let _ = a.stop.send(true);
}

#[test]
fn tls_files_are_read_up_front_with_the_path_in_the_error() {
    use switchyard::etcd::EtcdTls;
    let missing = std::path::Path::new("/nonexistent/ca.pem");
    let err = EtcdTls::from_files(Some(missing), None, None).expect_err("missing CA file").to_string();
    assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    let pki = Pki::new();
    let err = EtcdTls::from_files(None, Some(&pki.client_cert), None).expect_err("cert without key").to_string();
    assert!(err.contains("--etcd-key-file"), "{err}");
}
