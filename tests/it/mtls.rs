//! mTLS on the control plane: pickers and scrapers with certificates from the aggregator's CA get
//! snapshots and assignments, clients without one (or with one from another CA) are refused when
//! mutual TLS is required, a plaintext client is told the port speaks TLS, and rotated files apply
//! to new connections while established streams keep going.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use switchyard::control_tls::{ClientTls, ControlTls};
use switchyard::etcd::EtcdSettings;
use switchyard::picker::subscribe::LeaderSource;
use switchyard::roles::{
    AggregatorOptions, PickerOptions, ScraperOptions, start_aggregator, start_picker, start_scraper,
};
use switchyard_proto::v1 as pb;
use switchyard_proto::v1::control_plane_client::ControlPlaneClient;

use crate::etcd::Etcd;
use crate::support::{vllm_fleet, wait_for};

const DEADLINE: Duration = Duration::from_secs(15);

/// The name on the aggregators' certificates (not their IP: clients verify it with
/// `--control-plane-server-name`, as in a cluster where pod IPs change).
const SERVER_NAME: &str = "aggregator.switchyard.test";

/// A certificate authority of the test.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Ca { issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA") }
    }

    /// Writes `<name>.crt`/`.key` (a certificate for `sans`, signed here) and `<name>-ca.pem`
    /// (this CA) into `dir`, replacing what was there; the flags that name them.
    fn issue(&self, dir: &Path, name: &str, sans: &[&str]) -> ControlTls {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("p");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        let write = |file: String, pem: String| -> PathBuf {
            let path = dir.join(file);
            std::fs::write(&path, pem).expect("write");
            path
        };
        ControlTls {
            cert: Some(write(format!("{name}.crt"), cert.pem())),
            key: Some(write(format!("{name}.key"), key.serialize_pem())),
            ca: Some(write(format!("{name}-ca.pem"), self.issuer.pem())),
            server_name: None,
            require: false,
        }
    }
}

/// Client flags: `files` verified against `SERVER_NAME`.
fn client(files: &ControlTls) -> ControlTls {
    ControlTls { server_name: Some(SERVER_NAME.into()), ..files.clone() }
}

fn client_tls(flags: &ControlTls) -> std::sync::Arc<ClientTls> {
    ClientTls::load(flags).expect("client flags").expect("TLS on")
}

/// The first update of a `WatchSnapshots` stream at `addr`, or why there is none (bounded).
async fn first_update(addr: SocketAddr, tls: Option<&ClientTls>) -> Result<pb::SnapshotUpdate, String> {
    let attempt = async {
        let channel = switchyard::leader::connect(&addr.to_string(), tls).await?;
        let request = pb::WatchRequest {
            version: switchyard::wire::PROTOCOL_VERSION,
            picker_id: "mtls-test".into(),
            ..Default::default()
        };
        let status = |s: tonic::Status| format!("{:?}: {}", s.code(), switchyard::leader::status_error(&s));
        let mut stream = ControlPlaneClient::new(channel).watch_snapshots(request).await.map_err(status)?.into_inner();
        stream.message().await.map_err(status)?.ok_or_else(|| "stream ended".to_string())
    };
    tokio::time::timeout(Duration::from_secs(5), attempt).await.unwrap_or_else(|_| Err("timed out".into()))
}

fn etcd_settings(etcd: &Etcd, election: &str) -> EtcdSettings {
    EtcdSettings::new(vec![etcd.endpoint.clone()], election, "", Duration::from_secs(2))
}

/// An aggregator requiring mutual TLS, a remote scraper and a picker, all through etcd: the
/// scraper is assigned the endpoints, their metrics reach the picker over `WatchSnapshots`.
#[actix_rt::test]
async fn a_picker_and_a_scraper_with_certificates_work_over_required_mtls() {
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let (fleet, file) = vllm_fleet(2, dir.path()).await;
    let ca = Ca::new("control plane CA");
    let server = ControlTls { require: true, ..ca.issue(dir.path(), "aggregator", &[SERVER_NAME]) };
    let agg = start_aggregator(AggregatorOptions {
        etcd: Some(etcd_settings(&etcd, "mtls-roles")),
        remote_scrapers: true,
        control_tls: server,
        ..AggregatorOptions::local(file)
    })
    .await
    .expect("aggregator");
    let leader = LeaderSource::Etcd(etcd_settings(&etcd, "mtls-roles"));
    let scraper = start_scraper(ScraperOptions {
        control_tls: ControlTls { require: true, ..client(&ca.issue(dir.path(), "scraper", &[])) },
        ..ScraperOptions::local(leader.clone(), "mtls-scraper")
    })
    .await
    .expect("scraper");
    let picker = start_picker(PickerOptions {
        leader,
        control_tls: ControlTls { require: true, ..client(&ca.issue(dir.path(), "picker", &[])) },
        ..PickerOptions::local(agg.control_addr, "mtls-picker", 1)
    })
    .await
    .expect("picker");
    let (held, want) = (picker.picker.clone(), fleet.len());
    wait_for("every endpoint's metrics, scraped remotely, in the picker's snapshot", DEADLINE, || {
        let s = held.held();
        async move {
            (s.epoch > 0 && s.endpoints.len() == want && s.endpoints.iter().all(|e| e.metrics.sample().is_some()))
                .then_some(())
        }
    })
    .await;
    wait_for("picker ready", DEADLINE, || async { picker.readiness.is_ready().then_some(()) }).await;
    picker.shutdown(Duration::from_secs(1)).await;
    scraper.shutdown().await;
    agg.shutdown(Duration::from_secs(1)).await;
}

/// With --control-plane-tls-require a client needs a certificate signed by the aggregator's CA;
/// without it a client may come without a certificate, but one from another CA is still refused.
/// Either way the client must verify the aggregator's certificate against the name it carries.
#[actix_rt::test]
async fn clients_without_a_valid_certificate_are_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let (_fleet, file) = vllm_fleet(1, dir.path()).await;
    let (ca, other) = (Ca::new("control plane CA"), Ca::new("some other CA"));
    let server = ca.issue(dir.path(), "aggregator", &[SERVER_NAME]);
    let good = client(&ca.issue(dir.path(), "picker", &[]));
    let foreign = ControlTls { ca: good.ca.clone(), ..client(&other.issue(dir.path(), "foreign", &[])) };
    let anonymous = ControlTls { cert: None, key: None, ..good.clone() };
    for require in [true, false] {
        let options = AggregatorOptions {
            control_tls: ControlTls { require, ..server.clone() },
            ..AggregatorOptions::local(file.clone())
        };
        let agg = start_aggregator(options).await.expect("aggregator");
        let addr = agg.control_addr;
        let good_tls = client_tls(&good);
        let update = wait_for("the leader's first snapshot", DEADLINE, || {
            let tls = good_tls.clone();
            async move { first_update(addr, Some(&tls)).await.ok() }
        })
        .await;
        assert!(update.full && update.epoch > 0, "a client with a certificate of the CA is served");
        let refused = first_update(addr, Some(&client_tls(&foreign))).await;
        let error = refused.expect_err("a certificate from another CA is refused");
        assert!(error.contains("UnknownCA"), "the TLS alert is in the error (require: {require}): {error}");
        let anonymous_outcome = first_update(addr, Some(&client_tls(&anonymous))).await;
        if require {
            let error = anonymous_outcome.expect_err("no client certificate, mTLS required");
            assert!(error.contains("CertificateRequired"), "{error}");
        } else {
            assert!(anonymous_outcome.is_ok(), "no client certificate, not required: {anonymous_outcome:?}");
        }
        let unnamed = ControlTls { server_name: None, ..good.clone() };
        let mismatch = first_update(addr, Some(&client_tls(&unnamed))).await;
        let error = mismatch.expect_err("the certificate does not name 127.0.0.1");
        assert!(error.contains("not valid for name \"127.0.0.1\""), "the cause is named: {error}");
        agg.shutdown(Duration::from_secs(1)).await;
    }
}

/// A plaintext client against the TLS port is told what is wrong instead of seeing a reset.
#[actix_rt::test]
async fn a_plaintext_client_is_told_the_port_speaks_tls() {
    let dir = tempfile::tempdir().expect("dir");
    let (_fleet, file) = vllm_fleet(1, dir.path()).await;
    let server = Ca::new("control plane CA").issue(dir.path(), "aggregator", &[SERVER_NAME]);
    let agg = start_aggregator(AggregatorOptions { control_tls: server, ..AggregatorOptions::local(file) })
        .await
        .expect("aggregator");
    let error = first_update(agg.control_addr, None).await.expect_err("plaintext is refused");
    assert!(error.starts_with("Unavailable: "), "{error}");
    assert!(error.contains("speaks TLS only") && error.contains("--control-plane-ca"), "{error}");
    agg.shutdown(Duration::from_secs(1)).await;
}

/// The aggregator's and a client's files are replaced by ones from a new CA: new connections use
/// them (old certificates are then refused), and a picker streaming since before keeps receiving
/// snapshots on its established connection.
#[actix_rt::test]
async fn rotated_files_apply_to_new_connections_while_streams_keep_going() {
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let (_fleet, file) = vllm_fleet(1, dir.path()).await;
    let (old_ca, new_ca) = (Ca::new("old CA"), Ca::new("new CA"));
    let server = ControlTls { require: true, ..old_ca.issue(dir.path(), "aggregator", &[SERVER_NAME]) };
    let agg = start_aggregator(AggregatorOptions {
        etcd: Some(etcd_settings(&etcd, "mtls-rotation")),
        control_tls: server,
        ..AggregatorOptions::local(file)
    })
    .await
    .expect("aggregator");
    // The streaming picker's files are its own: they are not rotated.
    let streaming = start_picker(PickerOptions {
        leader: LeaderSource::Etcd(etcd_settings(&etcd, "mtls-rotation")),
        control_tls: client(&old_ca.issue(dir.path(), "streaming", &[])),
        ..PickerOptions::local(agg.control_addr, "streaming", 1)
    })
    .await
    .expect("picker");
    let held = streaming.picker.clone();
    wait_for("the picker streams snapshots", DEADLINE, || {
        let s = held.held();
        async move { (s.epoch > 0).then_some(()) }
    })
    .await;
    // A client whose files get rotated, reloading them as a role does.
    let rotating = client(&old_ca.issue(dir.path(), "rotating", &[]));
    let rotating_tls = client_tls(&rotating);
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(rotating_tls.clone().reload_loop(stop_rx));
    let addr = agg.control_addr;
    first_update(addr, Some(&rotating_tls)).await.expect("before the rotation");

    // The aggregator's files first: a client with only new material gets in once they reload.
    new_ca.issue(dir.path(), "aggregator", &[SERVER_NAME]);
    let fresh_flags = client(&new_ca.issue(dir.path(), "fresh", &[]));
    let fresh = client_tls(&fresh_flags);
    wait_for("a new connection with the new CA's certificate", DEADLINE, || {
        let tls = fresh.clone();
        async move { first_update(addr, Some(&tls)).await.ok() }
    })
    .await;
    // Trusting the new CA, but presenting a certificate of the old one.
    let late = ControlTls { ca: fresh_flags.ca.clone(), ..client(&old_ca.issue(dir.path(), "late", &[])) };
    let stale = first_update(addr, Some(&client_tls(&late))).await;
    let error = stale.expect_err("a certificate of the old CA is refused on new connections");
    assert!(error.contains("UnknownCA"), "{error}");
    let old = first_update(addr, Some(&rotating_tls)).await;
    let error = old.expect_err("the old CA does not verify the new server certificate");
    assert!(error.contains("UnknownIssuer"), "{error}");
    // Then the client's: it reloads them and connects again.
    new_ca.issue(dir.path(), "rotating", &[]);
    wait_for("the rotating client connects with its reloaded files", DEADLINE, || {
        let tls = rotating_tls.clone();
        async move { first_update(addr, Some(&tls)).await.ok() }
    })
    .await;

    // The streaming picker's files still name the old CA, which does not verify the aggregator's
    // new certificate: snapshots it gets now come over the connection it had.
    let seq = streaming.picker.held().seq;
    let held = streaming.picker.clone();
    wait_for("the established stream still delivers snapshots", DEADLINE, || {
        let s = held.held();
        async move { (s.seq > seq).then_some(()) }
    })
    .await;
    let _ = stop.send(true);
    streaming.shutdown(Duration::from_secs(1)).await;
    agg.shutdown(Duration::from_secs(1)).await;
}

/// The binary's flags: inconsistent ones exit 2 naming the flag before anything is bound;
/// `--check-config` reports the mode; standalone, which has no control-plane port, refuses them.
#[test]
fn the_flags_are_checked_at_start_up() {
    let dir = tempfile::tempdir().expect("dir");
    let endpoints = dir.path().join("endpoints.yaml");
    std::fs::write(&endpoints, "endpoints: []\n").expect("write");
    let files = Ca::new("control plane CA").issue(dir.path(), "aggregator", &[SERVER_NAME]);
    let path = |p: &Option<PathBuf>| p.as_ref().expect("path").display().to_string();
    let (cert, key, ca) = (path(&files.cert), path(&files.key), path(&files.ca));
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard")).args(args).output().expect("run");
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    };
    let eps = endpoints.display().to_string();
    let aggregator = ["aggregator", "--endpoints-file", &eps, "--listen-host", "127.0.0.1"];

    let (code, text) =
        run(&[&aggregator[..], &["--control-plane-tls-require", "--control-plane-ca", &ca, "--check-config"]].concat());
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("--control-plane-tls-require") && text.contains("--control-plane-cert"), "{text}");

    let (code, text) = run(&[&aggregator[..], &["--control-plane-ca", &ca, "--check-config"]].concat());
    assert_eq!(code, Some(2), "an aggregator needs a certificate: {text}");

    let mtls = ["--control-plane-cert", &cert, "--control-plane-key", &key, "--control-plane-ca", &ca];
    let required = [&mtls[..], &["--control-plane-tls-require", "--check-config"]].concat();
    let (code, text) = run(&[&aggregator[..], &required].concat());
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("control plane mutual TLS required"), "{text}");
    let picker = ["picker", "--aggregators", "127.0.0.1:9010", "--secure-serving=false"];
    let (code, text) = run(&[&picker[..], &required, &["--control-plane-server-name", SERVER_NAME]].concat());
    assert_eq!(code, Some(0), "{text}");

    let (code, text) = run(&[&["standalone", "--endpoints-file", &eps][..], &mtls, &["--check-config"]].concat());
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("--control-plane-cert: standalone has no control-plane port"), "{text}");
}
