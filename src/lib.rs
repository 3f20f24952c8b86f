//! Switchyard: an Endpoint Picker for the Gateway API Inference Extension, built as a distributed
//! control plane.
//!
//! # Layout
//! - [`model`]: plain data shared by all roles (endpoints, engine-neutral metrics).
//! - [`metrics`]: exposition scanner, metric specs, engine mappings, normalization (pure).
//! - [`config`]: `EndpointPickerConfig` loading and validation.
//! - [`scraper`]: scraper actors (one per endpoint) and their supervisor.
//! - [`metrics_age`]: the per-endpoint metrics-age gauge every role exports.
//! - [`leader`]: finding and following the aggregator leader (pickers, scrapers).
//! - [`sim`]: the model-server simulator used by the demo, the tests and the benchmarks.
//! - [`tools`]: command-line tools beside the product (`metrics parse`, benchmarks).
//!
//! Roles never import each other; they meet through the model types and the control-plane
//! protocol (`switchyard-proto`).

pub mod aggregator;
pub mod app;
pub mod config;
pub mod control_tls;
pub mod discovery;
pub mod etcd;
pub mod gateway;
pub mod health;
pub mod leader;
pub mod metrics;
pub mod metrics_age;
pub mod metrics_auth;
pub mod model;
pub mod picker;
pub mod preface;
pub mod protocol;
pub mod roles;
pub mod scheduling;
pub mod scraper;
pub mod sim;
pub mod telemetry;
pub mod tools;
pub mod wire;

/// Installs ring as the process-wide rustls provider (reqwest and tonic are built without one so
/// that only one TLS provider is compiled). Idempotent; called before any client is built.
pub fn ensure_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Accepted connections with `TCP_NODELAY` set, for `serve_with_incoming` (servers that bind
/// their own listener do not get tonic's nodelay default, and small gRPC frames then wait for
/// delayed ACKs).
pub fn nodelay_incoming(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use futures::StreamExt as _;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|r| {
        r.inspect(|s| {
            let _ = s.set_nodelay(true);
        })
    })
}
