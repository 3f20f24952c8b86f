//! TLS and mutual TLS on the control plane: the aggregator's control port (`WatchSnapshots`,
//! `Report`, `Scrape`) and the picker and scraper clients that dial it.
//!
//! One set of flags for every distributed role: `--control-plane-cert`/`--control-plane-key`
//! (this process's certificate: the server's on an aggregator, the client's on a picker or
//! scraper), `--control-plane-ca` (what peers are verified against), `--control-plane-server-name`
//! (clients: the name the aggregator's certificate must carry, instead of the dialed host) and
//! `--control-plane-tls-require`.
//!
//! - The aggregator serves TLS when it has a certificate, and only TLS: a plaintext client gets
//!   `UNAVAILABLE` naming the flags it lacks. With a CA, client certificates are verified against
//!   it; without `--control-plane-tls-require` a client may still come without one (migration),
//!   with it the handshake of a client without a valid certificate fails.
//! - Clients use TLS when given a CA or a certificate; the server is verified against the CA (the
//!   system roots without one).
//! - `--control-plane-tls-require` refuses to start unless certificate, key and CA are all given.
//! - The files are polled every second ([`crate::picker::tls::watch_files`]); a change rebuilds
//!   the configuration, which new connections use. Established streams keep the session they
//!   have. A broken file is logged and the previous configuration kept.
//!
//! It does not cover the health and metrics ports (probes and Prometheus scrape those), the
//! ext-proc port ([`crate::picker::tls`]) or etcd ([`crate::etcd`]); it authenticates peers by
//! CA only (no per-role names or revocation lists).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use thiserror::Error;
use tokio::sync::watch;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::config::ConfigError;

/// How often the certificate, key and CA files are checked for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// What the aggregator answers a client that speaks plaintext to its TLS port.
pub const PLAINTEXT_REFUSAL: &str = "this aggregator's control-plane port speaks TLS only: give this client \
    --control-plane-ca (and --control-plane-cert/--control-plane-key if the aggregator requires client certificates)";

/// The control-plane TLS flags as given; the default is plaintext.
#[derive(Debug, Clone, Default)]
pub struct ControlTls {
    /// This process's certificate chain (PEM).
    pub cert: Option<PathBuf>,
    /// The private key of `cert` (PEM).
    pub key: Option<PathBuf>,
    /// CA bundle (PEM) that peers' certificates are verified against.
    pub ca: Option<PathBuf>,
    /// Clients only: verify the aggregator's certificate against this name instead of the host
    /// they dial (the leader's address in etcd is usually an IP).
    pub server_name: Option<String>,
    /// Refuse to run without mutual TLS (all of cert, key, CA).
    pub require: bool,
}

#[derive(Debug, Error)]
pub enum ControlTlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Pem { flag: &'static str, path: PathBuf, reason: String },
    #[error("{reason}")]
    Flags { flag: &'static str, reason: String },
    #[error("the certificate and key do not make a TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("cannot verify client certificates: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("the client TLS configuration is not usable: {0}")]
    Client(#[from] tonic::transport::Error),
}

impl ControlTlsError {
    /// The flag a start-up error is about.
    pub fn flag(&self) -> &'static str {
        match self {
            ControlTlsError::Read { flag, .. } | ControlTlsError::Pem { flag, .. } => flag,
            ControlTlsError::Flags { flag, .. } => flag,
            ControlTlsError::Rustls(_) | ControlTlsError::Verifier(_) | ControlTlsError::Client(_) => {
                "--control-plane-cert"
            }
        }
    }
}

impl From<ControlTlsError> for ConfigError {
    fn from(e: ControlTlsError) -> Self {
        ConfigError::invalid(e.flag(), e.to_string())
    }
}

fn flag_error(flag: &'static str, reason: impl Into<String>) -> ControlTlsError {
    ControlTlsError::Flags { flag, reason: reason.into() }
}

// === impl ControlTls ===

impl ControlTls {
    /// Whether any TLS flag is set.
    pub fn is_set(&self) -> bool {
        self.cert.is_some() || self.key.is_some() || self.ca.is_some()
    }

    fn files(&self) -> Vec<PathBuf> {
        [&self.cert, &self.key, &self.ca].into_iter().flatten().cloned().collect()
    }

    fn check_require(&self) -> Result<(), ControlTlsError> {
        if self.require && (self.cert.is_none() || self.key.is_none() || self.ca.is_none()) {
            return Err(flag_error(
                "--control-plane-tls-require",
                "mutual TLS is required: give --control-plane-cert, --control-plane-key and --control-plane-ca",
            ));
        }
        if self.cert.is_some() != self.key.is_some() {
            return Err(flag_error("--control-plane-cert", "--control-plane-cert and --control-plane-key go together"));
        }
        Ok(())
    }

    /// This process's certificate chain and key, when given.
    fn identity(&self) -> Result<Option<Keypair>, ControlTlsError> {
        let (Some(cert), Some(key)) = (&self.cert, &self.key) else { return Ok(None) };
        let (cert_pem, key_pem) = (read(cert, "--control-plane-cert")?, read(key, "--control-plane-key")?);
        let chain = certificates(&cert_pem, cert, "--control-plane-cert")?;
        let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| ControlTlsError::Pem {
            flag: "--control-plane-key",
            path: key.clone(),
            reason: format!("no usable private key: {e}"),
        })?;
        Ok(Some(Keypair { cert_pem, key_pem, chain, key: private }))
    }

    /// The CA bundle, when given.
    fn ca(&self) -> Result<Option<Bundle>, ControlTlsError> {
        let Some(path) = &self.ca else { return Ok(None) };
        let pem = read(path, "--control-plane-ca")?;
        let certs = certificates(&pem, path, "--control-plane-ca")?;
        Ok(Some(Bundle { pem, certs }))
    }
}

/// CA certificates, as PEM (for tonic) and parsed (for rustls).
struct Bundle {
    pem: Vec<u8>,
    certs: Vec<CertificateDer<'static>>,
}

/// A certificate chain and its key, as PEM (for tonic) and parsed (for rustls).
struct Keypair {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn read(path: &Path, flag: &'static str) -> Result<Vec<u8>, ControlTlsError> {
    std::fs::read(path).map_err(|source| ControlTlsError::Read { flag, path: path.to_path_buf(), source })
}

/// Every certificate of a PEM bundle; none is an error.
fn certificates(pem: &[u8], path: &Path, flag: &'static str) -> Result<Vec<CertificateDer<'static>>, ControlTlsError> {
    let bad = |reason: String| ControlTlsError::Pem { flag, path: path.to_path_buf(), reason };
    let certs: Vec<_> =
        CertificateDer::pem_slice_iter(pem).collect::<Result<_, _>>().map_err(|e| bad(format!("invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad("no certificate in the file".into()));
    }
    Ok(certs)
}

/// Reloads on file changes until `stop`: `reload` rebuilds, the outcome is logged.
async fn reload_loop(
    files: Vec<PathBuf>,
    stop: watch::Receiver<bool>,
    side: &'static str,
    reload: impl Fn() -> Result<(), ControlTlsError>,
) {
    crate::picker::tls::watch_files(files, RELOAD_INTERVAL, stop, || match reload() {
        Ok(()) => tracing::info!(side, "control-plane TLS files reloaded"),
        Err(e) => tracing::warn!(side, error = %e, "control-plane TLS reload failed; keeping the previous files"),
    })
    .await;
}

/// The aggregator's side: the server configuration new connections get.
#[derive(Debug)]
pub struct ServerTls {
    flags: ControlTls,
    current: ArcSwap<rustls::ServerConfig>,
}

// === impl ServerTls ===

impl ServerTls {
    /// `None` for plaintext (no flag set); an error names the flag when the flags are
    /// inconsistent or a file is unusable.
    pub fn load(flags: &ControlTls) -> Result<Option<Arc<ServerTls>>, ControlTlsError> {
        flags.check_require()?;
        if !flags.is_set() {
            return Ok(None);
        }
        if flags.cert.is_none() {
            return Err(flags_err_server_cert());
        }
        if flags.server_name.is_some() {
            return Err(flag_error(
                "--control-plane-server-name",
                "applies to pickers and scrapers (the name they verify the aggregator's certificate against)",
            ));
        }
        let config = Self::build(flags)?;
        Ok(Some(Arc::new(ServerTls { flags: flags.clone(), current: ArcSwap::from_pointee(config) })))
    }

    fn build(flags: &ControlTls) -> Result<rustls::ServerConfig, ControlTlsError> {
        let Some(Keypair { chain, key, .. }) = flags.identity()? else { return Err(flags_err_server_cert()) };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder =
            rustls::ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
        let builder = match flags.ca()? {
            Some(Bundle { certs, .. }) => {
                let mut roots = RootCertStore::empty();
                for c in certs {
                    roots.add(c)?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                // Without --control-plane-tls-require a client may come without a certificate
                // (clients being migrated); one that presents a certificate is still verified.
                let verifier = if flags.require { verifier } else { verifier.allow_unauthenticated() };
                builder.with_client_cert_verifier(verifier.build()?)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    /// The configuration for the next connection.
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        self.current.load_full()
    }

    /// Whether clients must present a certificate signed by the CA.
    pub fn requires_client_cert(&self) -> bool {
        self.flags.require
    }

    /// Reads the files again; on error the previous configuration stays.
    pub fn reload(&self) -> Result<(), ControlTlsError> {
        self.current.store(Arc::new(Self::build(&self.flags)?));
        Ok(())
    }

    /// Reloads when the files change, until `stop`.
    pub async fn reload_loop(self: Arc<Self>, stop: watch::Receiver<bool>) {
        let files = self.flags.files();
        reload_loop(files, stop, "server", move || self.reload()).await;
    }
}

fn flags_err_server_cert() -> ControlTlsError {
    flag_error(
        "--control-plane-cert",
        "an aggregator serves TLS with --control-plane-cert and --control-plane-key (--control-plane-ca alone \
         only verifies clients)",
    )
}

/// The picker's and scraper's side: the TLS settings new control-plane connections get.
#[derive(Debug)]
pub struct ClientTls {
    flags: ControlTls,
    current: ArcSwap<ClientTlsConfig>,
}

// === impl ClientTls ===

impl ClientTls {
    /// `None` for plaintext (no flag set); an error names the flag when the flags are
    /// inconsistent or a file is unusable.
    pub fn load(flags: &ControlTls) -> Result<Option<Arc<ClientTls>>, ControlTlsError> {
        flags.check_require()?;
        if !flags.is_set() {
            return Ok(None);
        }
        let config = Self::build(flags)?;
        Ok(Some(Arc::new(ClientTls { flags: flags.clone(), current: ArcSwap::from_pointee(config) })))
    }

    fn build(flags: &ControlTls) -> Result<ClientTlsConfig, ControlTlsError> {
        let mut config = ClientTlsConfig::new().timeout(Duration::from_secs(5));
        config = match flags.ca()? {
            Some(Bundle { pem, .. }) => config.ca_certificate(Certificate::from_pem(pem)),
            None => config.with_native_roots(),
        };
        if let Some(pair) = flags.identity()? {
            config = config.identity(Identity::from_pem(pair.cert_pem, pair.key_pem));
        }
        if let Some(name) = &flags.server_name {
            config = config.domain_name(name.clone());
        }
        // tonic builds the rustls client here: a key that does not match, or no system roots,
        // fails now rather than at every connection.
        tonic::transport::Endpoint::from_static("https://127.0.0.1").tls_config(config.clone())?;
        Ok(config)
    }

    /// The settings for the next connection.
    pub fn config(&self) -> ClientTlsConfig {
        self.current.load().as_ref().clone()
    }

    /// Reads the files again; on error the previous settings stay.
    pub fn reload(&self) -> Result<(), ControlTlsError> {
        self.current.store(Arc::new(Self::build(&self.flags)?));
        Ok(())
    }

    /// Reloads when the files change, until `stop`.
    pub async fn reload_loop(self: Arc<Self>, stop: watch::Receiver<bool>) {
        let files = self.flags.files();
        reload_loop(files, stop, "client", move || self.reload()).await;
    }
}

#[cfg(test)]
mod tests;
