//! An OTLP/gRPC trace service that keeps (or only counts) what it receives: the collector of the
//! trace tests and the sink of `switchyard bench extproc --otlp-sink`. A tool beside the product.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use tonic::{Request, Response, Status};

/// One span as received, flattened.
#[derive(Debug, Clone)]
pub struct Received {
    pub service: String,
    pub name: String,
    pub trace_id: Vec<u8>,
    pub span_id: Vec<u8>,
    pub parent_span_id: Vec<u8>,
    pub links: Vec<(Vec<u8>, Vec<u8>)>,
    pub attributes: HashMap<String, String>,
}

/// Keeps every span received (`keep`) or only counts them.
#[derive(Clone, Default)]
pub struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
    count: Arc<std::sync::atomic::AtomicU64>,
    keep: bool,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let request = request.into_inner();
        let n: usize = request.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
        self.count.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        if !self.keep {
            return Ok(Response::new(ExportTraceServiceResponse { partial_success: None }));
        }
        let mut out = self.spans.lock().unwrap_or_else(|p| p.into_inner());
        for rs in request.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                .map(value_string)
                .unwrap_or_default();
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                out.push(Received {
                    service: service.clone(),
                    name: span.name,
                    trace_id: span.trace_id,
                    span_id: span.span_id,
                    parent_span_id: span.parent_span_id,
                    links: span.links.into_iter().map(|l| (l.trace_id, l.span_id)).collect(),
                    attributes: span
                        .attributes
                        .into_iter()
                        .filter_map(|kv| Some((kv.key, value_string(kv.value?.value.as_ref()?))))
                        .collect(),
                });
            }
        }
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

fn value_string(v: &AnyValue) -> String {
    match v {
        AnyValue::StringValue(s) => s.clone(),
        AnyValue::IntValue(i) => i.to_string(),
        AnyValue::DoubleValue(d) => d.to_string(),
        AnyValue::BoolValue(b) => b.to_string(),
        other => format!("{other:?}"),
    }
}

impl Collector {
    /// Serves the OTLP trace service on `addr` (port 0: any), keeping every span.
    pub async fn start(addr: std::net::SocketAddr) -> std::io::Result<(Collector, std::net::SocketAddr)> {
        Self::start_with(addr, true).await
    }

    /// Serves on `addr`, counting spans and keeping them only when `keep` (benchmarks count).
    pub async fn start_with(
        addr: std::net::SocketAddr,
        keep: bool,
    ) -> std::io::Result<(Collector, std::net::SocketAddr)> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let collector = Collector { keep, ..Collector::default() };
        let svc = TraceServiceServer::new(collector.clone());
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        Ok((collector, addr))
    }

    pub fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Spans received so far.
    pub fn count(&self) -> u64 {
        self.count.load(std::sync::atomic::Ordering::Relaxed)
    }
}
