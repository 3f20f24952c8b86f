//! `switchyard gateway`: a small development data plane (HTTP/1.1 and h2c) that consults an
//! ext-proc server exactly as Envoy's ext_proc filter does for the EPP: FULL_DUPLEX_STREAMED
//! request and response bodies, header mutations and dynamic metadata applied, immediate
//! responses returned to the client, the request sent to `x-gateway-destination-endpoint` (next
//! listed endpoint when a connection fails), `x-gateway-destination-endpoint-served` reported in
//! metadata, streaming responses passed through as they arrive, and `failure_mode_allow`.
//!
//! It is a test and demo tool, not a production proxy: no TLS, no retries beyond connection
//! failures, request bodies buffered once the picker has answered.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue, Metadata};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Msg;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Answer;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    CommonResponse, HttpBody, HttpHeaders, ProcessingRequest, ProcessingResponse, body_mutation,
};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::seq::IndexedRandom;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

use crate::picker::proto::{DESTINATION, DESTINATION_SERVED, LB_NAMESPACE};

type Body = BoxBody<Bytes, std::io::Error>;

/// What happens when the ext-proc server cannot be reached (Envoy's `failure_mode_allow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureMode {
    /// Send to a random pool endpoint.
    Open,
    /// Answer 503.
    Close,
}

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// `http://host:port` of the ext-proc servers (streams are spread over them round-robin, as a
    /// Service in front of several pickers would); empty = round-robin over the pool (baseline).
    pub ext_proc: Vec<String>,
    pub failure_mode: FailureMode,
    /// Pool endpoints (`ip:port`) for fail-open and round-robin.
    pub pool: Vec<String>,
    /// How long to wait for each ext-proc answer (Envoy's `message_timeout`).
    pub message_timeout: Duration,
}

pub struct Gateway {
    cfg: GatewayConfig,
    ext: Vec<ExternalProcessorClient<Channel>>,
    upstream: Client<HttpConnector, Full<Bytes>>,
    next: AtomicUsize,
    next_ext: AtomicUsize,
}

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).map_err(|e: Infallible| match e {}).boxed());
    *r.status_mut() = status;
    r
}

fn proc_req(m: Msg, md: Option<Metadata>) -> ProcessingRequest {
    ProcessingRequest { request: Some(m), metadata_context: Some(md.unwrap_or_default()), ..Default::default() }
}

fn header_map(pairs: &[(String, Vec<u8>)]) -> HeaderMap {
    HeaderMap {
        headers: pairs
            .iter()
            .map(|(k, v)| HeaderValue { key: k.clone(), raw_value: v.clone(), ..Default::default() })
            .collect(),
    }
}

fn served_metadata(dest: &str) -> Metadata {
    let inner = Struct {
        fields: [(DESTINATION_SERVED.to_string(), Value { kind: Some(Kind::StringValue(dest.into())) })]
            .into_iter()
            .collect(),
    };
    Metadata { filter_metadata: [(LB_NAMESPACE.to_string(), inner)].into_iter().collect(), ..Default::default() }
}

/// Applies set/remove header mutations of a common response to `headers`.
fn apply(headers: &mut Vec<(String, Vec<u8>)>, common: &Option<CommonResponse>) {
    let Some(m) = common.as_ref().and_then(|c| c.header_mutation.as_ref()) else { return };
    for r in &m.remove_headers {
        headers.retain(|(k, _)| !k.eq_ignore_ascii_case(r));
    }
    for o in &m.set_headers {
        let Some(h) = &o.header else { continue };
        let value = if h.raw_value.is_empty() { h.value.clone().into_bytes() } else { h.raw_value.clone() };
        headers.retain(|(k, _)| !k.eq_ignore_ascii_case(&h.key));
        headers.push((h.key.to_ascii_lowercase(), value));
    }
}

fn streamed_body(common: Option<CommonResponse>) -> Option<(Vec<u8>, bool)> {
    match common?.body_mutation?.mutation? {
        body_mutation::Mutation::StreamedResponse(s) => Some((s.body, s.end_of_stream)),
        _ => None,
    }
}

fn metadata_destination(m: &Option<Struct>) -> Option<String> {
    let lb = m.as_ref()?.fields.get(LB_NAMESPACE)?;
    let Some(Kind::StructValue(s)) = &lb.kind else { return None };
    match &s.fields.get(DESTINATION)?.kind {
        Some(Kind::StringValue(v)) => Some(v.clone()),
        _ => None,
    }
}

const HOP_BY_HOP: [&str; 8] =
    ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "trailer", "host"];

struct Routed {
    destinations: Vec<String>,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    stream: Option<(mpsc::Sender<ProcessingRequest>, Streaming<ProcessingResponse>)>,
}

enum Outcome {
    Routed(Routed),
    Immediate(Response<Body>),
    /// The ext-proc server could not be used.
    Failed(String),
}

impl Gateway {
    pub async fn new(cfg: GatewayConfig) -> anyhow::Result<Arc<Self>> {
        crate::ensure_crypto_provider();
        let mut ext = Vec::new();
        for url in &cfg.ext_proc {
            let ch = tonic::transport::Endpoint::from_shared(url.clone())?.tcp_nodelay(true).connect_lazy();
            ext.push(
                ExternalProcessorClient::new(ch)
                    .max_decoding_message_size(64 * 1024 * 1024)
                    .max_encoding_message_size(64 * 1024 * 1024),
            );
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let upstream = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Arc::new(Gateway { cfg, ext, upstream, next: AtomicUsize::new(0), next_ext: AtomicUsize::new(0) }))
    }

    /// Serves until `stop` turns true.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stop.wait_for(|s| *s) => return,
            };
            let Ok((sock, _)) = accepted else { continue };
            let _ = sock.set_nodelay(true);
            let gw = self.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let gw = gw.clone();
                    async move { Ok::<_, Infallible>(gw.handle(req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(sock), svc)
                    .await;
            });
        }
    }

    fn pool_pick(&self, random: bool) -> Option<String> {
        if random {
            return self.cfg.pool.choose(&mut rand::rng()).cloned();
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.cfg.pool.get(n % self.cfg.pool.len().max(1)).cloned()
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path_and_query().map_or("/".to_string(), |p| p.to_string());
        let mut headers: Vec<(String, Vec<u8>)> = vec![
            (":method".into(), parts.method.as_str().as_bytes().to_vec()),
            (":path".into(), path.clone().into_bytes()),
            (":scheme".into(), b"http".to_vec()),
            (":authority".into(), parts.headers.get("host").map_or(b"gateway".to_vec(), |h| h.as_bytes().to_vec())),
        ];
        for (k, v) in &parts.headers {
            headers.push((k.as_str().to_string(), v.as_bytes().to_vec()));
        }
        if !headers.iter().any(|(k, _)| k == "x-request-id") {
            headers.push(("x-request-id".into(), format!("gw-{:x}", rand::random::<u64>()).into_bytes()));
        }
        let Ok(collected) = body.collect().await else {
            return full(StatusCode::BAD_REQUEST, "cannot read request body");
        };
        let body = collected.to_bytes();
        let ext =
            (!self.ext.is_empty()).then(|| &self.ext[self.next_ext.fetch_add(1, Ordering::Relaxed) % self.ext.len()]);
        let outcome = match ext {
            None => match self.pool_pick(false) {
                Some(d) => Outcome::Routed(Routed {
                    destinations: vec![d],
                    headers: headers.clone(),
                    body: body.to_vec(),
                    stream: None,
                }),
                None => return full(StatusCode::SERVICE_UNAVAILABLE, "no endpoints"),
            },
            Some(client) => self.consult(client.clone(), headers.clone(), body.clone()).await,
        };
        let routed = match outcome {
            Outcome::Routed(r) => r,
            Outcome::Immediate(resp) => return resp,
            Outcome::Failed(why) => match (self.cfg.failure_mode, self.pool_pick(true)) {
                (FailureMode::Open, Some(d)) => {
                    tracing::debug!(%why, destination = %d, "ext-proc unavailable: failing open");
                    Routed { destinations: vec![d], headers, body: body.to_vec(), stream: None }
                }
                _ => return full(StatusCode::SERVICE_UNAVAILABLE, format!("ext-proc unavailable: {why}")),
            },
        };
        self.forward(routed).await
    }

    /// The request phase over ext-proc.
    async fn consult(
        &self,
        mut client: ExternalProcessorClient<Channel>,
        headers: Vec<(String, Vec<u8>)>,
        body: Bytes,
    ) -> Outcome {
        let (tx, rx) = mpsc::channel(64);
        let end_of_stream = body.is_empty();
        let first = proc_req(
            Msg::RequestHeaders(HttpHeaders {
                headers: Some(header_map(&headers)),
                end_of_stream,
                ..Default::default()
            }),
            None,
        );
        let _ = tx.send(first).await;
        if !end_of_stream {
            // Body chunks follow at once, without waiting for the headers answer.
            let chunks: Vec<Bytes> =
                (0..body.len()).step_by(64 * 1024).map(|i| body.slice(i..(i + 64 * 1024).min(body.len()))).collect();
            let n = chunks.len();
            for (i, c) in chunks.into_iter().enumerate() {
                let m = proc_req(
                    Msg::RequestBody(HttpBody { body: c.to_vec(), end_of_stream: i + 1 == n, ..Default::default() }),
                    None,
                );
                let _ = tx.send(m).await;
            }
        }
        let mut inbound =
            match tokio::time::timeout(self.cfg.message_timeout, client.process(ReceiverStream::new(rx))).await {
                Ok(Ok(r)) => r.into_inner(),
                Ok(Err(status)) => return Outcome::Failed(status.to_string()),
                Err(_) => return Outcome::Failed("timed out opening the stream".into()),
            };
        let mut headers = headers;
        let mut destination = None;
        let mut new_body = Vec::new();
        loop {
            let msg = match tokio::time::timeout(self.cfg.message_timeout, inbound.message()).await {
                Ok(Ok(Some(m))) => m,
                Ok(Ok(None)) => return Outcome::Failed("stream closed before an answer".into()),
                Ok(Err(status)) => return Outcome::Failed(status.to_string()),
                Err(_) => return Outcome::Failed("message timeout".into()),
            };
            let md_dest = metadata_destination(&msg.dynamic_metadata);
            match msg.response {
                Some(Answer::ImmediateResponse(ir)) => {
                    let status = ir
                        .status
                        .and_then(|s| StatusCode::from_u16(s.code as u16).ok())
                        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                    let mut resp = full(status, ir.body);
                    for o in ir.headers.map(|h| h.set_headers).unwrap_or_default() {
                        if let Some(h) = o.header
                            && let (Ok(k), Ok(v)) = (
                                hyper::header::HeaderName::from_bytes(h.key.as_bytes()),
                                hyper::header::HeaderValue::from_bytes(&h.raw_value),
                            )
                        {
                            resp.headers_mut().insert(k, v);
                        }
                    }
                    return Outcome::Immediate(resp);
                }
                Some(Answer::RequestHeaders(h)) => {
                    apply(&mut headers, &h.response);
                    let from_header = headers
                        .iter()
                        .find(|(k, _)| k == DESTINATION)
                        .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
                    destination = md_dest.or(from_header);
                    if end_of_stream {
                        break;
                    }
                }
                Some(Answer::RequestBody(b)) => {
                    let Some((chunk, eos)) = streamed_body(b.response) else {
                        return Outcome::Failed("body answer without streamed_response".into());
                    };
                    new_body.extend_from_slice(&chunk);
                    if eos {
                        break;
                    }
                }
                other => return Outcome::Failed(format!("unexpected answer {other:?}")),
            }
        }
        let Some(destination) = destination else {
            return Outcome::Failed("no destination in the answer".into());
        };
        let destinations = destination.split(',').map(|d| d.trim().to_string()).filter(|d| !d.is_empty()).collect();
        Outcome::Routed(Routed { destinations, headers, body: new_body, stream: Some((tx, inbound)) })
    }

    async fn forward(&self, routed: Routed) -> Response<Body> {
        let Routed { destinations, headers, body, stream } = routed;
        let body = Bytes::from(body);
        let method = headers
            .iter()
            .find(|(k, _)| k == ":method")
            .map_or("POST".to_string(), |(_, v)| String::from_utf8_lossy(v).into_owned());
        let path = headers
            .iter()
            .find(|(k, _)| k == ":path")
            .map_or("/".to_string(), |(_, v)| String::from_utf8_lossy(v).into_owned());
        let mut last_error = String::from("no destination");
        for dest in &destinations {
            let mut builder = Request::builder().method(method.as_str()).uri(format!("http://{dest}{path}"));
            for (k, v) in &headers {
                if k.starts_with(':') || HOP_BY_HOP.contains(&k.as_str()) || k == "content-length" {
                    continue;
                }
                builder = builder.header(k.as_str(), v.as_slice());
            }
            let Ok(req) = builder.header("content-length", body.len()).body(Full::new(body.clone())) else {
                return full(StatusCode::BAD_REQUEST, "invalid request after header mutation");
            };
            match self.upstream.request(req).await {
                Ok(resp) => return self.respond(resp, dest.clone(), stream).await,
                Err(e) if e.is_connect() => {
                    tracing::debug!(destination = %dest, error = %e, "connect failed; trying the next endpoint");
                    last_error = e.to_string();
                }
                Err(e) => return full(StatusCode::BAD_GATEWAY, format!("upstream error: {e}")),
            }
        }
        full(StatusCode::SERVICE_UNAVAILABLE, format!("no endpoint reachable: {last_error}"))
    }

    /// The response phase: headers through ext-proc, then each body chunk as it arrives.
    async fn respond(
        &self,
        resp: Response<Incoming>,
        dest: String,
        stream: Option<(mpsc::Sender<ProcessingRequest>, Streaming<ProcessingResponse>)>,
    ) -> Response<Body> {
        let (parts, mut upstream_body) = resp.into_parts();
        let Some((tx, mut inbound)) = stream else {
            let mut r = Response::from_parts(parts, upstream_body.map_err(std::io::Error::other).boxed());
            r.headers_mut().insert(
                "x-gateway-destination-endpoint-served",
                dest.parse().unwrap_or(hyper::header::HeaderValue::from_static("")),
            );
            return r;
        };
        let md = served_metadata(&dest);
        let mut headers: Vec<(String, Vec<u8>)> = vec![(":status".into(), parts.status.as_str().as_bytes().to_vec())];
        for (k, v) in &parts.headers {
            headers.push((k.as_str().to_string(), v.as_bytes().to_vec()));
        }
        let msg = proc_req(
            Msg::ResponseHeaders(HttpHeaders {
                headers: Some(header_map(&headers)),
                end_of_stream: false,
                ..Default::default()
            }),
            Some(md.clone()),
        );
        if tx.send(msg).await.is_ok()
            && let Ok(Ok(Some(m))) = tokio::time::timeout(self.cfg.message_timeout, inbound.message()).await
            && let Some(Answer::ResponseHeaders(h)) = m.response
        {
            apply(&mut headers, &h.response);
        }
        let mut builder = Response::builder().status(parts.status);
        for (k, v) in &headers {
            if k.starts_with(':') || HOP_BY_HOP.contains(&k.as_str()) || k == "content-length" {
                continue;
            }
            builder = builder.header(k.as_str(), v.as_slice());
        }
        let (client_tx, client_rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(64);
        // Upstream → ext-proc.
        let feeder = tokio::spawn(async move {
            while let Some(frame) = upstream_body.frame().await {
                let Ok(frame) = frame else { break };
                if let Ok(data) = frame.into_data() {
                    let m = proc_req(
                        Msg::ResponseBody(HttpBody { body: data.to_vec(), end_of_stream: false, ..Default::default() }),
                        Some(md.clone()),
                    );
                    if tx.send(m).await.is_err() {
                        return;
                    }
                }
            }
            let _ = tx
                .send(proc_req(
                    Msg::ResponseBody(HttpBody { body: Vec::new(), end_of_stream: true, ..Default::default() }),
                    Some(md),
                ))
                .await;
        });
        // ext-proc answers → client.
        let timeout = self.cfg.message_timeout;
        tokio::spawn(async move {
            loop {
                let m = match tokio::time::timeout(timeout.max(Duration::from_secs(600)), inbound.message()).await {
                    Ok(Ok(Some(m))) => m,
                    _ => break,
                };
                let Some(Answer::ResponseBody(b)) = m.response else { continue };
                let Some((chunk, eos)) = streamed_body(b.response) else { break };
                if !chunk.is_empty() && client_tx.send(Ok(Frame::data(Bytes::from(chunk)))).await.is_err() {
                    break;
                }
                if eos {
                    break;
                }
            }
            feeder.abort();
        });
        let body = StreamBody::new(ReceiverStream::new(client_rx)).boxed();
        builder.body(body).unwrap_or_else(|_| full(StatusCode::BAD_GATEWAY, "invalid response headers after mutation"))
    }
}

/// Binds and serves; returns the address.
pub async fn start(
    cfg: GatewayConfig,
    listen: SocketAddr,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let gw = Gateway::new(cfg).await?;
    Ok((addr, tokio::spawn(gw.serve(listener, stop))))
}
