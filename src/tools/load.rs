//! Background ext-proc traffic for the benchmarks and tests that need requests flowing while
//! something else happens (a failover, a soak): Envoy-style exchanges on a number of streams per
//! target, back to back or paced, counting answered and failed exchanges and keeping the failure
//! reasons and latencies. It measures nothing itself; `loadgen` drives the timed benchmarks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use tokio::time::Instant;

use crate::tools::loadgen::{chat_body, one_exchange};

/// Continuous ext-proc traffic (Envoy-style exchanges) until stopped, counting answered and
/// failed exchanges and keeping the reasons of the first [`FAILURES_KEPT`] failures.
pub struct BackgroundLoad {
    ok: Arc<std::sync::atomic::AtomicU64>,
    failed: Arc<std::sync::atomic::AtomicU64>,
    running: Arc<std::sync::atomic::AtomicBool>,
    failures: Arc<std::sync::Mutex<Vec<LoadFailure>>>,
    /// Latencies (ms) of the exchanges answered since the last `take_latencies`.
    latencies: Arc<std::sync::Mutex<Vec<f64>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Failure reasons kept by a [`BackgroundLoad`] (all are counted).
pub const FAILURES_KEPT: usize = 1000;

/// Latencies kept between two `take_latencies` calls.
const LATENCIES_KEPT: usize = 1 << 20;

/// One failed exchange.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadFailure {
    /// Seconds since the load started.
    pub at_s: f64,
    pub target: SocketAddr,
    pub reason: String,
}

/// What a [`BackgroundLoad`] sends: `streams` streams to each target, each at `rate_per_stream`
/// exchanges per second (`None`: back to back), request `n` of stream `s` carrying `body(s, n)`.
#[derive(Clone)]
pub struct LoadShape {
    pub streams: usize,
    pub rate_per_stream: Option<f64>,
    pub body: Arc<dyn Fn(usize, u64) -> Vec<u8> + Send + Sync>,
}

impl LoadShape {
    /// Back to back, the same 1 KiB chat body every time.
    pub fn fixed(streams: usize) -> Self {
        let body = chat_body(1);
        LoadShape { streams, rate_per_stream: None, body: Arc::new(move |_, _| body.clone()) }
    }
}

impl BackgroundLoad {
    pub fn start(addr: SocketAddr, streams: usize) -> Self {
        Self::start_shaped(&[addr], LoadShape::fixed(streams))
    }

    /// `shape.streams` streams to each of `targets`.
    pub fn start_shaped(targets: &[SocketAddr], shape: LoadShape) -> Self {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let (ok, failed, running) =
            (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(true)));
        let failures: Arc<std::sync::Mutex<Vec<LoadFailure>>> = Arc::default();
        let latencies: Arc<std::sync::Mutex<Vec<f64>>> = Arc::default();
        let started = Instant::now();
        let mut tasks = Vec::new();
        for (t, &addr) in targets.iter().enumerate() {
            for s in 0..shape.streams {
                let (ok, failed, running) = (ok.clone(), failed.clone(), running.clone());
                let (failures, latencies) = (Arc::clone(&failures), Arc::clone(&latencies));
                let (body, rate, stream) = (shape.body.clone(), shape.rate_per_stream, t * shape.streams + s);
                tasks.push(tokio::spawn(async move {
                    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(format!("http://{addr}")) else {
                        return;
                    };
                    let mut c = ExternalProcessorClient::new(endpoint.connect_lazy());
                    let mut pace = rate.filter(|r| *r > 0.0).map(|r| {
                        let mut i = tokio::time::interval(Duration::from_secs_f64(1.0 / r));
                        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        i
                    });
                    let mut n = 0u64;
                    while running.load(Ordering::Relaxed) {
                        if let Some(p) = &mut pace {
                            p.tick().await;
                        }
                        let t0 = Instant::now();
                        match one_exchange(&mut c, &body(stream, n), b"{}").await {
                            Ok(()) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                let ms = t0.elapsed().as_secs_f64() * 1000.0;
                                let mut held = latencies.lock().unwrap_or_else(|p| p.into_inner());
                                // Unread (no `take_latencies`), they stop being kept.
                                if held.len() < LATENCIES_KEPT {
                                    held.push(ms);
                                }
                            }
                            Err(reason) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                let mut kept = failures.lock().unwrap_or_else(|p| p.into_inner());
                                if kept.len() < FAILURES_KEPT {
                                    kept.push(LoadFailure {
                                        at_s: started.elapsed().as_secs_f64(),
                                        target: addr,
                                        reason,
                                    });
                                }
                            }
                        }
                        n += 1;
                    }
                }));
            }
        }
        BackgroundLoad { ok, failed, running, failures, latencies, tasks }
    }

    /// (answered, failed) so far.
    pub fn counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering;
        (self.ok.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed))
    }

    /// The failures kept so far, oldest first.
    pub fn failures(&self) -> Vec<LoadFailure> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The latencies (ms) of the exchanges answered since the last call.
    pub fn take_latencies(&self) -> Vec<f64> {
        std::mem::take(&mut *self.latencies.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Stops the traffic; returns (answered, failed).
    pub async fn stop(self) -> (u64, u64) {
        use std::sync::atomic::Ordering;
        self.running.store(false, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        (self.ok.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed))
    }
}
