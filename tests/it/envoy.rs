//! An ext-proc client that behaves like Envoy's ext_proc filter in FULL_DUPLEX_STREAMED mode, and
//! the in-process sandbox (sim fleet + standalone Switchyard) the picker tests run against.

use std::collections::HashMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue, Metadata};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Msg;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Answer;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    HttpBody, HttpHeaders, ProcessingRequest, ProcessingResponse, body_mutation, common_response,
};
use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};
use switchyard::app::{self, StandaloneHandle, StandaloneOptions};
use switchyard::picker::PickerSettings;
use switchyard::sim::{self, SimHandle};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::support::wait_for;

pub struct Sandbox {
    pub fleet: Vec<SimHandle>,
    pub epp: Option<StandaloneHandle>,
    _dir: tempfile::TempDir,
}

impl Sandbox {
    pub async fn start(
        fleet: sim::FleetConfig,
        config_text: Option<&str>,
        tweak: impl FnOnce(&mut StandaloneOptions),
    ) -> Sandbox {
        let fleet = sim::start_fleet(&fleet).await.expect("fleet");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = sim::write_endpoints_file(&fleet, dir.path()).expect("endpoints file");
        let mut opts = StandaloneOptions {
            config_text: config_text.map(str::to_string),
            picker: PickerSettings { seed: 42, ..Default::default() },
            ..StandaloneOptions::loopback(switchyard::discovery::PoolSource::file(path))
        };
        tweak(&mut opts);
        let epp = app::start_standalone(opts).await.expect("standalone starts");
        let n = fleet.len();
        let mut snapshots = epp.snapshots.clone();
        wait_for("every endpoint scraped", Duration::from_secs(10), || {
            let s = snapshots.borrow_and_update().clone();
            async move { (s.endpoints.len() == n && s.endpoints.iter().all(|e| e.metrics.sample().is_some())).then_some(()) }
        })
        .await;
        wait_for("picker ready", Duration::from_secs(5), || {
            let ready = epp.readiness.is_ready() && epp.picker.view.load().snapshot.endpoints.len() == n;
            async move { ready.then_some(()) }
        })
        .await;
        Sandbox { fleet, epp: Some(epp), _dir: dir }
    }

    pub fn epp(&self) -> &StandaloneHandle {
        self.epp.as_ref().expect("running")
    }

    pub async fn client(&self) -> ExternalProcessorClient<Channel> {
        let url = format!("http://{}", self.epp().ext_proc_addr);
        ExternalProcessorClient::connect(url).await.expect("connect ext-proc")
    }

    pub fn sim_by_addr(&self, addr: &str) -> Option<&SimHandle> {
        self.fleet.iter().find(|h| h.addr.to_string() == addr)
    }
}

/// One HTTP request as Envoy presents it.
#[derive(Clone, Default)]
pub struct HttpRequest {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Body chunks to send (1 = one message).
    pub chunks: usize,
    /// `envoy.lb.subset_hint` list (None = absent).
    pub subset: Option<Vec<String>>,
}

impl HttpRequest {
    pub fn chat(model: &str, content: &str) -> Self {
        let body =
            serde_json::json!({"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 4});
        HttpRequest {
            path: "/v1/chat/completions".into(),
            body: body.to_string().into_bytes(),
            chunks: 3,
            ..Default::default()
        }
    }
}

fn metadata(subset: &Option<Vec<String>>, served: Option<&str>) -> Metadata {
    let mut md = Metadata::default();
    if let Some(list) = subset {
        let values = list.iter().map(|s| Value { kind: Some(Kind::StringValue(s.clone())) }).collect();
        let inner = Struct {
            fields: [(
                "x-gateway-destination-endpoint-subset".to_string(),
                Value { kind: Some(Kind::ListValue(ListValue { values })) },
            )]
            .into_iter()
            .collect(),
        };
        md.filter_metadata.insert("envoy.lb.subset_hint".into(), inner);
    }
    if let Some(s) = served {
        let inner = Struct {
            fields: [(
                "x-gateway-destination-endpoint-served".to_string(),
                Value { kind: Some(Kind::StringValue(s.into())) },
            )]
            .into_iter()
            .collect(),
        };
        md.filter_metadata.insert("envoy.lb".into(), inner);
    }
    md
}

fn headers_msg(pairs: &[(String, String)], end_of_stream: bool, md: Metadata) -> ProcessingRequest {
    let headers = pairs
        .iter()
        .map(|(k, v)| HeaderValue { key: k.clone(), raw_value: v.clone().into_bytes(), ..Default::default() })
        .collect();
    ProcessingRequest {
        request: Some(Msg::RequestHeaders(HttpHeaders {
            headers: Some(HeaderMap { headers }),
            end_of_stream,
            ..Default::default()
        })),
        metadata_context: Some(md),
        ..Default::default()
    }
}

fn body_msg(body: &[u8], end_of_stream: bool, response: bool, md: Metadata) -> ProcessingRequest {
    let b = HttpBody { body: body.to_vec(), end_of_stream, ..Default::default() };
    ProcessingRequest {
        request: Some(if response { Msg::ResponseBody(b) } else { Msg::RequestBody(b) }),
        metadata_context: Some(md),
        ..Default::default()
    }
}

/// What the picker answered for the request phase.
#[derive(Debug, Default)]
pub struct Routed {
    pub set_headers: HashMap<String, String>,
    pub remove_headers: Vec<String>,
    pub metadata_destination: Option<String>,
    pub clear_route_cache: bool,
    pub body: Vec<u8>,
    pub immediate: Option<(i32, String)>,
}

pub struct Exchange {
    pub tx: mpsc::Sender<ProcessingRequest>,
    pub rx: tonic::Streaming<ProcessingResponse>,
    pub routed: Routed,
}

/// Sends the request phase exactly as Envoy does (headers, then all body chunks without waiting)
/// and collects the answers up to the end of the (mutated) request body.
pub async fn send(client: &mut ExternalProcessorClient<Channel>, req: &HttpRequest) -> Exchange {
    let (tx, rx) = mpsc::channel(64);
    let mut inbound = client.process(ReceiverStream::new(rx)).await.expect("open stream").into_inner();
    let mut headers = vec![
        (":method".to_string(), if req.body.is_empty() { "GET" } else { "POST" }.to_string()),
        (":path".to_string(), req.path.clone()),
        (":authority".to_string(), "gateway".to_string()),
        (":scheme".to_string(), "http".to_string()),
        ("content-type".to_string(), "application/json".to_string()),
    ];
    if !req.body.is_empty() {
        headers.push(("content-length".to_string(), req.body.len().to_string()));
    }
    headers.extend(req.headers.iter().cloned());
    let md = metadata(&req.subset, None);
    tx.send(headers_msg(&headers, req.body.is_empty(), md.clone())).await.expect("send headers");
    if !req.body.is_empty() {
        let size = req.body.len().div_ceil(req.chunks.max(1));
        let chunks: Vec<&[u8]> = req.body.chunks(size.max(1)).collect();
        for (i, c) in chunks.iter().enumerate() {
            tx.send(body_msg(c, i + 1 == chunks.len(), false, md.clone())).await.expect("send body");
        }
    }
    let mut routed = Routed::default();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), inbound.message())
            .await
            .expect("answer within 5 s")
            .expect("stream ok")
            .expect("an answer");
        match msg.response.expect("a response case is always set") {
            Answer::ImmediateResponse(ir) => {
                routed.immediate =
                    Some((ir.status.map_or(0, |s| s.code), String::from_utf8_lossy(&ir.body).into_owned()));
                break;
            }
            Answer::RequestHeaders(h) => {
                let common = h.response.expect("common response");
                routed.clear_route_cache = common.clear_route_cache;
                assert_eq!(
                    common.status,
                    common_response::ResponseStatus::Continue as i32,
                    "never CONTINUE_AND_REPLACE"
                );
                let mutation = common.header_mutation.unwrap_or_default();
                for o in mutation.set_headers {
                    let hv = o.header.expect("header");
                    assert!(hv.value.is_empty(), "values go in raw_value only");
                    routed.set_headers.insert(hv.key, String::from_utf8(hv.raw_value).expect("utf8"));
                }
                routed.remove_headers = mutation.remove_headers;
                routed.metadata_destination = msg.dynamic_metadata.and_then(|m| {
                    let lb = m.fields.get("envoy.lb")?;
                    let Some(Kind::StructValue(s)) = &lb.kind else { return None };
                    match &s.fields.get("x-gateway-destination-endpoint")?.kind {
                        Some(Kind::StringValue(v)) => Some(v.clone()),
                        _ => None,
                    }
                });
                if req.body.is_empty() {
                    break;
                }
            }
            Answer::RequestBody(b) => {
                assert!(!routed.set_headers.is_empty(), "body answered after the headers answer");
                let Some(body_mutation::Mutation::StreamedResponse(s)) =
                    b.response.and_then(|c| c.body_mutation).and_then(|m| m.mutation)
                else {
                    panic!("request body answers carry streamed_response");
                };
                routed.body.extend_from_slice(&s.body);
                if s.end_of_stream {
                    break;
                }
            }
            other => panic!("unexpected answer in the request phase: {other:?}"),
        }
    }
    Exchange { tx, rx: inbound, routed }
}

impl Exchange {
    /// Plays the response phase: headers, then body chunks; returns the body the client would see.
    pub async fn respond(
        &mut self,
        status: u16,
        content_type: &str,
        chunks: &[Vec<u8>],
        served: Option<&str>,
    ) -> Vec<u8> {
        let md = metadata(&None, served);
        let headers =
            vec![(":status".to_string(), status.to_string()), ("content-type".to_string(), content_type.to_string())];
        let mut msg = headers_msg(&headers, false, md.clone());
        if let Some(Msg::RequestHeaders(h)) = msg.request.take() {
            msg.request = Some(Msg::ResponseHeaders(h));
        }
        self.tx.send(msg).await.expect("send response headers");
        let answer = self.next().await;
        assert!(matches!(answer, Answer::ResponseHeaders(_)), "{answer:?}");
        let mut out = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            self.tx.send(body_msg(c, last, true, md.clone())).await.expect("send response body");
            if content_type.contains("event-stream") || last {
                // Streamed chunks are answered one by one; buffered bodies once at the end.
                loop {
                    match self.next().await {
                        Answer::ResponseBody(b) => {
                            let Some(body_mutation::Mutation::StreamedResponse(s)) =
                                b.response.and_then(|c| c.body_mutation).and_then(|m| m.mutation)
                            else {
                                panic!("response body answers carry streamed_response");
                            };
                            out.extend_from_slice(&s.body);
                            if s.end_of_stream || !last {
                                break;
                            }
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                }
            }
        }
        out
    }

    pub async fn next(&mut self) -> Answer {
        tokio::time::timeout(Duration::from_secs(5), self.rx.message())
            .await
            .expect("answer within 5 s")
            .expect("stream ok")
            .expect("an answer")
            .response
            .expect("response case set")
    }
}
