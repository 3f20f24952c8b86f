//! TLS for the ext-proc port: a certificate from `--cert-path` (reloaded when its files change,
//! with `--enable-cert-reload`) or a self-signed one generated at start-up. Handshakes happen in
//! an accept loop beside the gRPC server; a failed handshake drops that connection only.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

fn certified(cert_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<CertifiedKey> {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert_pem).collect::<Result<_, _>>().context("invalid certificate PEM")?;
    if certs.is_empty() {
        anyhow::bail!("no certificate in PEM");
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).context("invalid private key PEM")?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key).context("unsupported private key")?;
    Ok(CertifiedKey::new(certs, signing))
}

/// `tls.crt` and `tls.key` from `dir`.
pub fn load_dir(dir: &Path) -> anyhow::Result<CertifiedKey> {
    let cert = std::fs::read(dir.join("tls.crt")).with_context(|| format!("cannot read {}/tls.crt", dir.display()))?;
    let key = std::fs::read(dir.join("tls.key")).with_context(|| format!("cannot read {}/tls.key", dir.display()))?;
    certified(&cert, &key)
}

pub fn self_signed() -> anyhow::Result<CertifiedKey> {
    let k =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).context("cannot generate a certificate")?;
    certified(k.cert.pem().as_bytes(), k.signing_key.serialize_pem().as_bytes())
}

/// Serves whatever certificate it currently holds.
#[derive(Debug)]
pub struct CertStore {
    current: ArcSwap<CertifiedKey>,
}

impl CertStore {
    pub fn new(key: CertifiedKey) -> Arc<Self> {
        Arc::new(CertStore { current: ArcSwap::from_pointee(key) })
    }

    pub fn replace(&self, key: CertifiedKey) {
        self.current.store(Arc::new(key));
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn mtimes(dir: &Path) -> Option<(SystemTime, SystemTime)> {
    let m = |f: &str| std::fs::metadata(dir.join(f)).and_then(|m| m.modified()).ok();
    Some((m("tls.crt")?, m("tls.key")?))
}

/// Polls `dir` and swaps in a new certificate when its files change; a broken pair is logged and
/// the previous certificate kept. Ends when `stop` turns true.
pub async fn reload_loop(store: Arc<CertStore>, dir: PathBuf, interval: Duration, mut stop: watch::Receiver<bool>) {
    let mut seen = mtimes(&dir);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = mtimes(&dir);
        if now == seen {
            continue;
        }
        // Let a writer finish both files (upstream debounces 250 ms).
        tokio::time::sleep(Duration::from_millis(250)).await;
        seen = mtimes(&dir);
        match load_dir(&dir) {
            Ok(key) => {
                store.replace(key);
                tracing::info!(dir = %dir.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "TLS certificate reload failed; keeping the previous one")
            }
        }
    }
}

pub fn server_config(store: Arc<CertStore>) -> Arc<ServerConfig> {
    let mut cfg = ServerConfig::builder().with_no_client_auth().with_cert_resolver(store);
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(cfg)
}

/// Accepted, handshaken connections for `serve_with_incoming`; handshakes get 10 s.
pub fn incoming(
    listener: TcpListener,
    cfg: Arc<ServerConfig>,
    stop: watch::Receiver<bool>,
) -> ReceiverStream<io::Result<TlsStream<TcpStream>>> {
    incoming_within(listener, cfg, stop, Duration::from_secs(10))
}

/// [`incoming`] with handshakes bounded by `handshake_timeout`.
pub fn incoming_within(
    listener: TcpListener,
    cfg: Arc<ServerConfig>,
    mut stop: watch::Receiver<bool>,
    handshake_timeout: Duration,
) -> ReceiverStream<io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(cfg);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stop.wait_for(|s| *s) => return,
                _ = tx.closed() => return,
            };
            let Ok((sock, peer)) = accepted else { continue };
            let _ = sock.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(handshake_timeout, acceptor.accept(sock)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
