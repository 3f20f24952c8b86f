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

/// The environment variable that sizes the runtime (tokio's own name for it) and the scraper
/// lanes: `main` builds the runtime with [`worker_threads`], the lanes follow the same count.
pub const WORKER_THREADS_ENV: &str = "TOKIO_WORKER_THREADS";

/// Worker threads for this process: [`WORKER_THREADS_ENV`] when set (the chart sets it from the
/// container's CPU request, so a pod on a 64-core node does not start 64 workers), else the
/// cores this process may use. An unusable value is an error naming the variable.
pub fn worker_threads() -> Result<usize, String> {
    match std::env::var(WORKER_THREADS_ENV) {
        Ok(v) => parse_worker_threads(&v),
        Err(std::env::VarError::NotPresent) => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
        Err(e) => Err(format!("{WORKER_THREADS_ENV}: {e}")),
    }
}

fn parse_worker_threads(v: &str) -> Result<usize, String> {
    match v.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{WORKER_THREADS_ENV}={v:?}: expected a whole number of threads, at least 1")),
    }
}

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

#[cfg(test)]
mod worker_threads_tests {
    #[test]
    fn worker_thread_counts_are_positive_whole_numbers() {
        assert_eq!(super::parse_worker_threads("1"), Ok(1));
        assert_eq!(super::parse_worker_threads(" 8 "), Ok(8));
        for bad in ["0", "", "1.5", "-2", "many"] {
            let e = super::parse_worker_threads(bad).expect_err(bad);
            assert!(e.starts_with("TOKIO_WORKER_THREADS=") && e.contains("at least 1"), "{e}");
        }
    }
}
