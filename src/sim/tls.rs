//! HTTPS for a simulated server (`switchyard sim --tls`): a self-signed certificate generated at
//! start, like the ones model servers behind a picker often serve, so that scraping over HTTPS
//! (and `insecureSkipVerify`) can be exercised. Certificate generation and handshakes are the
//! picker's ([`crate::picker::tls`]); this only adapts them to `axum::serve`. It does not load
//! certificates from files, reload them or ask for client certificates.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::serve::Listener;
use futures::StreamExt as _;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::picker::tls;

/// Handshaken connections on a listener, for `axum::serve`.
pub(super) struct TlsListener {
    incoming: ReceiverStream<io::Result<TlsStream<TcpStream>>>,
    local: SocketAddr,
    /// Held while serving: dropping the listener (the server task ends) stops the accept loop.
    _stop: watch::Sender<bool>,
}

/// Wraps `listener` with a certificate for `localhost` generated now. Must run on a tokio runtime.
pub(super) fn listen(listener: TcpListener) -> io::Result<TlsListener> {
    crate::ensure_crypto_provider();
    let local = listener.local_addr()?;
    let key = tls::self_signed().map_err(io::Error::other)?;
    let mut cfg = ServerConfig::builder().with_no_client_auth().with_cert_resolver(tls::CertStore::new(key));
    // Unlike the ext-proc port (gRPC only), scrapers and curl may speak HTTP/1.1.
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let (stop, stop_rx) = watch::channel(false);
    Ok(TlsListener { incoming: tls::incoming(listener, Arc::new(cfg), stop_rx), local, _stop: stop })
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.incoming.next().await {
                Some(Ok(stream)) => {
                    let peer = stream.get_ref().0.peer_addr().unwrap_or(self.local);
                    return (stream, peer);
                }
                // Failed handshakes are dropped (and logged) by the accept loop.
                Some(Err(_)) => continue,
                // The accept loop only ends once `_stop` is dropped, i.e. with this listener.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use crate::sim::{self, Flavor, FleetConfig};

    async fn tls_server() -> sim::SimHandle {
        let cfg = FleetConfig { fleet: vec![(Flavor::VllmV1, 1)], tls: true, ..FleetConfig::default() };
        sim::start_fleet(&cfg).await.expect("fleet").remove(0)
    }

    fn client(verify: bool, http1_only: bool) -> reqwest::Client {
        crate::ensure_crypto_provider();
        let b = reqwest::Client::builder().danger_accept_invalid_certs(!verify);
        let b = if http1_only { b.http1_only() } else { b };
        b.build().expect("client")
    }

    #[tokio::test]
    async fn serves_https_over_h2_and_http1_with_a_self_signed_certificate() {
        let h = tls_server().await;
        assert_eq!(h.metrics_url(), format!("https://{}/metrics", h.addr));
        for http1_only in [false, true] {
            let resp = client(false, http1_only).get(h.metrics_url()).send().await.expect("https scrape");
            let want = if http1_only { reqwest::Version::HTTP_11 } else { reqwest::Version::HTTP_2 };
            assert_eq!(resp.version(), want);
            let page = resp.text().await.expect("page");
            assert!(page.contains("vllm:num_requests_waiting"), "{page:.200}");
        }
        let err = client(true, false).get(h.metrics_url()).send().await.expect_err("untrusted certificate");
        let chain = format!("{:?}", err);
        assert!(chain.contains("certificate") || chain.contains("Certificate"), "{chain}");
    }

    #[tokio::test]
    async fn plain_http_stays_the_default() {
        let h = sim::start_fleet(&FleetConfig { fleet: vec![(Flavor::VllmV1, 1)], ..FleetConfig::default() })
            .await
            .expect("fleet")
            .remove(0);
        assert_eq!(h.metrics_url(), format!("http://{}/metrics", h.addr));
        let resp = client(true, false).get(h.metrics_url()).send().await.expect("http scrape");
        assert_eq!(resp.status(), reqwest::StatusCode::OK);
    }
}
