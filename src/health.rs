//! `grpc.health.v1.Health` for every role: `liveness` is always serving; `readiness`, `""`,
//! `inference-extension` (what upstream's Helm chart probes) and
//! `envoy.service.ext_proc.v3.ExternalProcessor` are serving once the role is ready (a picker:
//! it holds a snapshot with at least one endpoint; an aggregator: it leads, its discovery source
//! has synced and it has published), and not serving while shutting down.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::Health;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

pub const EXT_PROC_SERVICE: &str = "envoy.service.ext_proc.v3.ExternalProcessor";
/// The service name upstream's `inferencepool` chart probes.
pub const INFERENCE_EXTENSION_SERVICE: &str = "inference-extension";

#[derive(Debug, Default)]
pub struct Readiness {
    ready: AtomicBool,
    draining: AtomicBool,
}

impl Readiness {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && !self.draining.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone)]
pub struct HealthService {
    pub readiness: Arc<Readiness>,
}

impl HealthService {
    fn status(&self, service: &str) -> Option<ServingStatus> {
        match service {
            "liveness" => Some(ServingStatus::Serving),
            "" | "readiness" | INFERENCE_EXTENSION_SERVICE | EXT_PROC_SERVICE => {
                Some(if self.readiness.is_ready() { ServingStatus::Serving } else { ServingStatus::NotServing })
            }
            _ => None,
        }
    }
}

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(&self, request: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        let service = request.into_inner().service;
        match self.status(&service) {
            Some(s) => Ok(Response::new(HealthCheckResponse { status: s as i32 })),
            None => Err(Status::not_found(format!("unknown service {service:?}"))),
        }
    }

    type WatchStream = ReceiverStream<Result<HealthCheckResponse, Status>>;

    async fn watch(&self, _: Request<HealthCheckRequest>) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("watch is not supported"))
    }
}
