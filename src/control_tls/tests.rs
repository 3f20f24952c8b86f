use std::path::Path;

use super::*;

/// A CA and a leaf it signed for `127.0.0.1`, written as `ca.pem`, `cert.pem`, `key.pem`.
fn write_pki(dir: &Path) -> ControlTls {
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("params")
        .signed_by(&key, &issuer)
        .expect("leaf");
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).expect("write");
    std::fs::write(dir.join("cert.pem"), cert.pem()).expect("write");
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).expect("write");
    ControlTls {
        cert: Some(dir.join("cert.pem")),
        key: Some(dir.join("key.pem")),
        ca: Some(dir.join("ca.pem")),
        server_name: None,
        require: false,
    }
}

fn setup() -> (tempfile::TempDir, ControlTls) {
    crate::ensure_crypto_provider();
    let dir = tempfile::tempdir().expect("dir");
    let flags = write_pki(dir.path());
    (dir, flags)
}

#[test]
fn no_flags_is_plaintext() {
    assert!(ServerTls::load(&ControlTls::default()).expect("server").is_none());
    assert!(ClientTls::load(&ControlTls::default()).expect("client").is_none());
}

#[test]
fn require_without_every_file_is_refused_naming_the_flag() {
    let (_dir, flags) = setup();
    let partial = ControlTls { ca: None, require: true, ..flags.clone() };
    let e = ServerTls::load(&partial).expect_err("server");
    assert_eq!(e.flag(), "--control-plane-tls-require");
    let e = ClientTls::load(&ControlTls { require: true, ..Default::default() }).expect_err("client");
    assert_eq!(e.flag(), "--control-plane-tls-require");
    assert!(ServerTls::load(&ControlTls { require: true, ..flags.clone() }).expect("all given").is_some());
    let server = ServerTls::load(&ControlTls { require: true, ..flags }).expect("ok").expect("tls");
    assert!(server.requires_client_cert());
}

#[test]
fn an_aggregator_needs_a_certificate_and_no_server_name() {
    let (_dir, flags) = setup();
    let ca_only = ControlTls { cert: None, key: None, ..flags.clone() };
    assert_eq!(ServerTls::load(&ca_only).expect_err("ca only").flag(), "--control-plane-cert");
    assert!(ClientTls::load(&ca_only).expect("a client may verify the server only").is_some());
    let named = ControlTls { server_name: Some("aggregator".into()), ..flags };
    assert_eq!(ServerTls::load(&named).expect_err("server name").flag(), "--control-plane-server-name");
    assert!(ClientTls::load(&named).expect("client").is_some());
}

#[test]
fn unusable_files_name_their_flag() {
    let (dir, flags) = setup();
    let missing = ControlTls { ca: Some(dir.path().join("nope.pem")), ..flags.clone() };
    let e = ServerTls::load(&missing).expect_err("missing");
    assert_eq!(e.flag(), "--control-plane-ca");
    assert!(e.to_string().contains("nope.pem"), "{e}");
    std::fs::write(dir.path().join("empty.pem"), "not a certificate").expect("write");
    let empty = ControlTls { cert: Some(dir.path().join("empty.pem")), ..flags.clone() };
    assert_eq!(ClientTls::load(&empty).expect_err("empty").flag(), "--control-plane-cert");
    let no_key = ControlTls { key: None, ..flags };
    assert_eq!(ServerTls::load(&no_key).expect_err("cert without key").flag(), "--control-plane-cert");
}

#[test]
fn a_broken_reload_keeps_the_previous_configuration() {
    let (dir, flags) = setup();
    let server = ServerTls::load(&flags).expect("load").expect("tls");
    let client = ClientTls::load(&flags).expect("load").expect("tls");
    let before = server.config();
    std::fs::write(dir.path().join("key.pem"), "garbage").expect("write");
    assert_eq!(server.reload().expect_err("broken key").flag(), "--control-plane-key");
    assert!(client.reload().is_err());
    assert!(Arc::ptr_eq(&before, &server.config()), "the previous configuration stays");
    write_pki(dir.path());
    server.reload().expect("fixed");
    assert!(!Arc::ptr_eq(&before, &server.config()), "a good reload replaces it");
    client.reload().expect("fixed");
}
