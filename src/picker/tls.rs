//! TLS for the ext-proc port: a certificate from `--cert-path` (reloaded when its files change,
//! with `--enable-cert-reload`) or a self-signed one generated at start-up. Handshakes happen in
//! an accept loop beside the gRPC server; a failed handshake drops that connection only.
//!
//! The file watcher ([`watch_files`]) and the accept loop ([`incoming_with`]: configuration taken
//! per connection, plaintext HTTP/2 answered with a gRPC error) also serve the control plane's
//! TLS ([`crate::control_tls`]), which owns its own configurations.

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

/// What a file looks like from outside: a rewrite changes the modification time (or the size,
/// when two writes land within the clock's granularity).
type Stamp = Option<(SystemTime, u64)>;

fn stamps(paths: &[PathBuf]) -> Vec<Stamp> {
    paths.iter().map(|p| std::fs::metadata(p).and_then(|m| Ok((m.modified()?, m.len()))).ok()).collect()
}

/// Polls `paths` every `interval` and calls `changed` when any of them was written, created or
/// removed, 250 ms later so that a writer can finish all of them (upstream debounces as much).
/// Ends when `stop` turns true. The ext-proc certificate and the control-plane TLS files both
/// reload through it.
pub async fn watch_files(
    paths: Vec<PathBuf>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
    mut changed: impl FnMut(),
) {
    let mut seen = stamps(&paths);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if stamps(&paths) == seen {
            continue;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        seen = stamps(&paths);
        changed();
    }
}

/// Polls `dir` and swaps in a new certificate when its files change; a broken pair is logged and
/// the previous certificate kept. Ends when `stop` turns true.
pub async fn reload_loop(store: Arc<CertStore>, dir: PathBuf, interval: Duration, stop: watch::Receiver<bool>) {
    let files = vec![dir.join("tls.crt"), dir.join("tls.key")];
    watch_files(files, interval, stop, || match load_dir(&dir) {
        Ok(key) => {
            store.replace(key);
            tracing::info!(dir = %dir.display(), "TLS certificate reloaded");
        }
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "TLS certificate reload failed; keeping the previous one")
        }
    })
    .await;
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
    stop: watch::Receiver<bool>,
    handshake_timeout: Duration,
) -> ReceiverStream<io::Result<TlsStream<TcpStream>>> {
    incoming_with(listener, move || cfg.clone(), stop, handshake_timeout, None)
}

/// [`incoming_within`] with the server configuration taken from `config` at each connection (so
/// a reloaded one applies to new connections while established ones keep theirs). With
/// `refuse_plaintext`, a client that opens with a plaintext HTTP/2 preface instead of a TLS
/// ClientHello is answered, on every call it makes, with gRPC `UNAVAILABLE` and that message
/// (rather than a failed handshake it could only report as a reset or a protocol error); the
/// connection is closed after the handshake timeout.
pub fn incoming_with(
    listener: TcpListener,
    config: impl Fn() -> Arc<ServerConfig> + Send + 'static,
    mut stop: watch::Receiver<bool>,
    handshake_timeout: Duration,
    refuse_plaintext: Option<Arc<str>>,
) -> ReceiverStream<io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stop.wait_for(|s| *s) => return,
                _ = tx.closed() => return,
            };
            let Ok((sock, peer)) = accepted else { continue };
            let _ = sock.set_nodelay(true);
            let (acceptor, tx, refusal) = (TlsAcceptor::from(config()), tx.clone(), refuse_plaintext.clone());
            tokio::spawn(async move {
                let handshake = async {
                    if let Some(message) = refusal
                        && speaks_plaintext_http2(&sock).await
                    {
                        tracing::debug!(%peer, "plaintext HTTP/2 on a TLS port; answering UNAVAILABLE");
                        refuse(sock, message, handshake_timeout).await;
                        return None;
                    }
                    Some(acceptor.accept(sock).await)
                };
                match tokio::time::timeout(handshake_timeout, handshake).await {
                    Ok(Some(Ok(tls))) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Some(Err(e))) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Ok(None) => {}
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// The client's first byte is the `P` of `PRI * HTTP/2.0` (a TLS record starts with 0x16).
async fn speaks_plaintext_http2(sock: &TcpStream) -> bool {
    let mut first = [0u8; 1];
    matches!(sock.peek(&mut first).await, Ok(1) if first[0] == b'P')
}

/// Answers every gRPC call on `sock` with `UNAVAILABLE: message` for at most `within`.
async fn refuse(sock: TcpStream, message: Arc<str>, within: Duration) {
    let service = hyper::service::service_fn(move |_request| {
        let status = tonic::Status::unavailable(message.to_string());
        async move { Ok::<_, std::convert::Infallible>(status.into_http::<http_body_util::Empty<bytes::Bytes>>()) }
    });
    let connection = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .serve_connection(hyper_util::rt::TokioIo::new(sock), service);
    let _ = tokio::time::timeout(within, connection).await;
}
