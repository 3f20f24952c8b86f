//! The ext-proc stream: one per HTTP request, driven by Envoy's ext_proc filter in
//! FULL_DUPLEX_STREAMED mode. Message handling is synchronous: the only awaits are reading the
//! next message (raced against the request-body deadline) and sending answers. Bounds come from
//! [`super::limits`].

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessor;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Msg;
use envoy_types::pb::envoy::service::ext_proc::v3::{HttpBody, HttpHeaders, ProcessingRequest, ProcessingResponse};
use rand::seq::IndexedRandom;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::limits::{self, HeldHeaders, LimitError};
use super::proto::{self, CONTROL_HEADERS, DESTINATION, DESTINATION_SERVED, LB_NAMESPACE, MODEL_REWRITE, OBJECTIVE};
use super::request::{ApiKind, parse_body};
use super::response::{Usage, rewrite_model_back, usage_from_json, usage_from_sse};
use super::view::EndpointCounters;
use super::{PickError, Picker};
use crate::scheduling::{LocalLoads, RequestFeatures, ScheduleError, View};

#[path = "ext_proc_response.rs"]
mod response_phase;

#[derive(Clone)]
pub struct ExtProcService {
    pub picker: Arc<Picker>,
}

#[tonic::async_trait]
impl ExternalProcessor for ExtProcService {
    type ProcessStream = ReceiverStream<Result<ProcessingResponse, Status>>;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(32);
        let picker = self.picker.clone();
        tokio::spawn(async move {
            let mut stream = StreamState::new(picker);
            loop {
                let next = match stream.deadline {
                    None => inbound.message().await,
                    Some(at) => tokio::select! {
                        biased;
                        m = inbound.message() => m,
                        () = tokio::time::sleep_until(at) => {
                            let _ = tx.send(Ok(stream.on_deadline())).await;
                            break;
                        }
                    },
                };
                let msg = match next {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(request_id = %stream.request_id, %status, "ext-proc stream ended by the proxy");
                        break;
                    }
                };
                // Log lines while handling the message carry the request span (its request id).
                let span = stream.span.clone();
                let answers = span.in_scope(|| stream.on_message(msg));
                let failed = answers.is_err();
                for a in answers.unwrap_or_else(|s| vec![Err(s)]) {
                    if tx.send(a).await.is_err() {
                        return;
                    }
                }
                if failed || stream.finished {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    RequestHeaders,
    RequestBody,
    Routed,
}

/// Load this stream put on an endpoint; released when the stream ends, however it ends.
struct Inflight {
    counters: Arc<EndpointCounters>,
    tokens: i64,
    picker: Arc<Picker>,
    /// When it was routed and the endpoint's queue then (NaN: not known), until the first token
    /// of a successful streamed response teaches the endpoint's speed (then `None`).
    learn: Option<(Instant, f64)>,
}

impl Inflight {
    fn start(picker: &Arc<Picker>, counters: Arc<EndpointCounters>, tokens: i64, queued: f64) -> Self {
        counters.start(tokens);
        picker.note_load_changed();
        Inflight { counters, tokens, picker: picker.clone(), learn: Some((Instant::now(), queued)) }
    }

    /// The first token arrived (the first body chunk of a streamed response).
    fn first_token(&mut self) {
        if let Some((routed, queued)) = self.learn.take() {
            self.counters.observe_first_token(routed.elapsed(), queued);
        }
    }

    /// The response teaches nothing about the endpoint's speed (an error status, say).
    fn unlearnable(&mut self) {
        self.learn = None;
    }
}

impl Drop for Inflight {
    fn drop(&mut self) {
        self.counters.finish(self.tokens);
        self.picker.note_load_changed();
    }
}

struct StreamState {
    picker: Arc<Picker>,
    phase: Phase,
    request_id: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    subset: Option<Vec<String>>,
    incoming_model: String,
    target_model: String,
    destination: String,
    served: Option<String>,
    inflight: Option<Inflight>,
    streaming_response: bool,
    response_buffer: Vec<u8>,
    usage: Option<Usage>,
    finished: bool,
    /// When the stream opened (the request arrived), for the request duration.
    received: Instant,
    /// Response body bytes seen.
    response_bytes: u64,
    /// Counts the request in `inference_objective_running_requests` until the response completes.
    running: Option<super::model_series::RunningRequest>,
    /// The series this request records into, once its model and target model are known.
    series: Option<Arc<super::model_series::ModelSeries>>,
    /// This stream's share of the picker's header budget, held until it is routed.
    held_headers: Option<HeldHeaders>,
    /// When the request body must have ended (set while it is being received).
    deadline: Option<Instant>,
    /// `gateway.request`, open for the life of the stream.
    span: tracing::Span,
}

type Answers = Result<Vec<Result<ProcessingResponse, Status>>, Status>;

impl StreamState {
    fn new(picker: Arc<Picker>) -> Self {
        StreamState {
            picker,
            phase: Phase::RequestHeaders,
            request_id: String::new(),
            headers: Vec::new(),
            body: Vec::new(),
            subset: None,
            incoming_model: String::new(),
            target_model: String::new(),
            destination: String::new(),
            served: None,
            inflight: None,
            streaming_response: false,
            response_buffer: Vec::new(),
            usage: None,
            finished: false,
            received: Instant::now(),
            response_bytes: 0,
            running: None,
            series: None,
            held_headers: None,
            deadline: None,
            span: tracing::Span::none(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    fn on_message(&mut self, msg: ProcessingRequest) -> Answers {
        let md = msg.metadata_context.as_ref();
        if self.phase != Phase::Routed {
            self.subset = proto::subset_hint(md);
        }
        if let Some(served) = proto::metadata_string(md, LB_NAMESPACE, DESTINATION_SERVED) {
            self.served = Some(served.to_string());
        }
        let Some(request) = msg.request else {
            return Err(Status::invalid_argument("processing request without a message"));
        };
        self.check_order(&request)?;
        match request {
            Msg::RequestHeaders(h) => self.on_request_headers(h),
            Msg::RequestBody(b) => self.on_request_body(b),
            Msg::RequestTrailers(_) => {
                let mut out = Vec::new();
                if self.phase == Phase::RequestBody {
                    // Trailers end a body whose last chunk did not say so.
                    out = self.route(false)?;
                }
                out.push(Ok(proto::trailers_response(true)));
                Ok(out)
            }
            Msg::ResponseHeaders(h) => self.on_response_headers(h),
            Msg::ResponseBody(b) => self.on_response_body(b),
            Msg::ResponseTrailers(_) => {
                let mut out = self.flush_response(false);
                out.push(Ok(proto::trailers_response(false)));
                self.finished = true;
                Ok(out)
            }
        }
    }

    /// A request starts with its headers, and its response comes after it was routed: anything
    /// else is a proxy out of step (or not a proxy), refused before it is acted on.
    fn check_order(&self, request: &Msg) -> Result<(), Status> {
        let response = matches!(request, Msg::ResponseHeaders(_) | Msg::ResponseBody(_) | Msg::ResponseTrailers(_));
        match (self.phase, request) {
            (Phase::RequestHeaders, Msg::RequestHeaders(_)) => Ok(()),
            (Phase::RequestHeaders, _) => Err(Status::failed_precondition("first message is not request headers")),
            (Phase::RequestBody, _) if response => {
                Err(Status::failed_precondition("response phase before the request was routed"))
            }
            _ => Ok(()),
        }
    }

    fn on_request_headers(&mut self, h: HttpHeaders) -> Answers {
        if self.phase != Phase::RequestHeaders {
            return Err(Status::failed_precondition("request headers received twice"));
        }
        let list = h.headers.map(|m| m.headers).unwrap_or_default();
        self.request_id = request_id(&list).unwrap_or_else(|| self.picker.next_request_id());
        // Bounded before anything is copied; the decoded message itself is bounded by the
        // server's decode limit and dropped with this call.
        let limits = &self.picker.settings.limits;
        match limits::header_bytes(&list, limits).and_then(|n| self.picker.header_budget.try_hold(n)) {
            Ok(held) => self.held_headers = Some(held),
            Err(e) => {
                self.finished = true;
                return Ok(vec![Ok(self.error(e.into()))]);
            }
        }
        self.headers.reserve_exact(list.len());
        for hv in list {
            let value = if hv.raw_value.is_empty() { hv.value.into_bytes() } else { hv.raw_value };
            self.headers.push((hv.key.to_ascii_lowercase(), value));
        }
        self.span = super::trace::request_span(&self.headers, &self.request_id);
        if h.end_of_stream {
            return Ok(self.route_header_only());
        }
        self.phase = Phase::RequestBody;
        self.deadline = Some(Instant::now() + limits.request_body_timeout);
        Ok(Vec::new())
    }

    /// The request body did not end in time.
    fn on_deadline(&mut self) -> ProcessingResponse {
        self.finished = true;
        self.error(LimitError::BodyTimeout(self.picker.settings.limits.request_body_timeout).into())
    }

    /// Routed: the request headers are no longer needed, nor is the deadline.
    fn release_request(&mut self) {
        self.headers = Vec::new();
        self.held_headers = None;
        self.deadline = None;
    }

    fn on_request_body(&mut self, b: HttpBody) -> Answers {
        if self.phase != Phase::RequestBody {
            return Err(Status::failed_precondition("request body outside the request body phase"));
        }
        if self.body.len() + b.body.len() > self.picker.settings.max_body_bytes {
            self.finished = true;
            let msg = format!("request body larger than {} bytes", self.picker.settings.max_body_bytes);
            return Ok(vec![Ok(self.error(PickError::TooLarge(msg)))]);
        }
        self.body.extend_from_slice(&b.body);
        if b.end_of_stream { self.route(true) } else { Ok(Vec::new()) }
    }

    fn error(&self, e: PickError) -> ProcessingResponse {
        self.picker.metrics.record_error(&e, &self.incoming_model, &self.target_model);
        tracing::debug!(request_id = %self.request_id, error = %e, "request rejected");
        let (status, code) = e.status();
        proto::immediate(status, code, &e.to_string())
    }

    /// Candidate indices after the proxy's subset hint (matched on IP, all ports of a pod).
    fn candidates(&self, view: &super::view::PickerView) -> Result<Vec<usize>, PickError> {
        let all = 0..view.snapshot.endpoints.len();
        let hint = if self.picker.settings.disable_subset_filter { None } else { self.subset.as_ref() };
        let out: Vec<usize> = match hint {
            None => all.collect(),
            Some(list) => {
                // Exact `ip:port` matches when the hint names endpoints precisely; otherwise match
                // on IP, so every rank (port) of a listed pod qualifies, as upstream.
                let address = |i: usize| view.snapshot.endpoints[i].endpoint.address.as_str();
                let exact: Vec<usize> = all.clone().filter(|&i| list.iter().any(|a| a == address(i))).collect();
                if exact.is_empty() {
                    let ips: Vec<&str> = list.iter().map(|a| crate::scheduling::host(a)).collect();
                    all.filter(|&i| ips.contains(&crate::scheduling::host(address(i)))).collect()
                } else {
                    exact
                }
            }
        };
        if out.is_empty() { Err(PickError::NoCandidates) } else { Ok(out) }
    }

    /// Requests without a body (GET …) go to a random candidate, as upstream.
    fn route_header_only(&mut self) -> Vec<Result<ProcessingResponse, Status>> {
        self.phase = Phase::Routed;
        let view = self.picker.view.load_full();
        let mut rng = self.picker.rng();
        let chosen = self.candidates(&view).ok().and_then(|c| c.choose(&mut rng).copied());
        self.release_request();
        let Some(i) = chosen else {
            self.finished = true;
            return vec![Ok(self.error(PickError::Internal("no pods available in datastore".into())))];
        };
        self.destination = view.snapshot.endpoints[i].endpoint.address.clone();
        self.inflight = Some(Inflight::start(&self.picker, view.counters[i].clone(), 0, f64::NAN));
        let set = vec![proto::header(DESTINATION, self.destination.as_bytes())];
        let md = proto::destination_metadata(&self.destination);
        vec![Ok(proto::request_headers_response(set, remove_list(), Some(md)))]
    }

    fn route(&mut self, end_of_stream: bool) -> Answers {
        self.phase = Phase::Routed;
        let scheduled = self.schedule();
        self.release_request();
        match scheduled {
            Ok((set, body)) => {
                self.running = self.series.as_ref().map(|s| s.record_forwarded(body.len()));
                let md = proto::destination_metadata(&self.destination);
                let mut out = vec![proto::request_headers_response(set, remove_list(), Some(md))];
                proto::body_responses(&body, end_of_stream, true, &mut out);
                Ok(out.into_iter().map(Ok).collect())
            }
            Err(e) => {
                self.finished = true;
                self.span.record("error", tracing::field::display(&e));
                Ok(vec![Ok(self.error(e))])
            }
        }
    }

    fn schedule(
        &mut self,
    ) -> Result<(Vec<envoy_types::pb::envoy::config::core::v3::HeaderValueOption>, Vec<u8>), PickError> {
        let started = tokio::time::Instant::now();
        let view = self.picker.view.load_full();
        if !view.is_ready() {
            return Err(PickError::NoCandidates);
        }
        let path = self
            .header(":path")
            .or(self.header("x-original-path"))
            .or(self.header("x-forwarded-path"))
            .unwrap_or("/v1/completions");
        let api = ApiKind::from_path(path);
        let body = std::mem::take(&mut self.body);
        let parsed = parse_body(&body, api).map_err(PickError::BadRequest)?;
        self.incoming_model = parsed.model.clone();
        self.target_model = self.header(MODEL_REWRITE).filter(|m| !m.is_empty()).unwrap_or(&parsed.model).to_string();
        // Objectives from the cluster (in the snapshot) first, then --inference-objective.
        let priority = self
            .header(OBJECTIVE)
            .and_then(|o| view.snapshot.objectives.get(o).or_else(|| self.picker.settings.objectives.get(o)).copied())
            .unwrap_or(0);
        let candidates = self.candidates(&view)?;
        let estimated_tokens = (body.len() as i64 / 4).max(1) * 5 / 2;
        let features = RequestFeatures {
            target_model: &self.target_model,
            priority,
            prefix_input: &parsed.prefix_input,
            cache_salt: &parsed.cache_salt,
            estimated_tokens,
            test_selection: self.header("test-epp-endpoint-selection"),
        };
        let now = std::time::SystemTime::now();
        let mut rng = self.picker.rng();
        let span = super::trace::schedule_span(&self.span, &view, candidates.len());
        let explain = super::trace::is_sampled(&span);
        // No lock around the decision: the prefix index is shared (sharded inside), so streams
        // hash, look up and score in parallel.
        let (decision, explanation) = {
            let v = View {
                snapshot: &view.snapshot,
                columns: &view.columns,
                local: view.as_ref(),
                prefix: &self.picker.prefix,
                now,
            };
            let decision = self.picker.scheduler.schedule_explained(&v, &candidates, &features, &mut rng, explain);
            if let Ok((d, _)) = &decision {
                let primary = d.endpoints[0];
                let capacity = self.picker.scheduler.prefix_capacity(&view.snapshot, primary);
                let id = &view.snapshot.endpoints[primary].endpoint.id;
                self.picker.prefix.insert(id, &d.prefix_hashes, capacity);
                self.picker.note_routed(id, &d.prefix_hashes);
            }
            decision.map(|(d, e)| (Ok(d), e)).unwrap_or_else(|e| (Err(e), None))
        };
        let decision =
            decision.inspect_err(|_| self.picker.metrics.record_schedule_failure()).map_err(|e| match e {
                ScheduleError::NoCandidates => PickError::NoCandidates,
                ScheduleError::Saturated => PickError::Shed,
                ScheduleError::AllFiltered => PickError::Unschedulable(e.to_string()),
            })?;
        let primary = decision.endpoints[0];
        self.picker.metrics.record_prefix_hit(
            decision.prefix_matched_blocks,
            decision.prefix_hashes.len(),
            decision.block_size_tokens.saturating_mul(crate::scheduling::prefix::CHARS_PER_TOKEN),
        );
        super::trace::record_decision(&span, &view, primary, decision.load_agnostic, explanation.as_ref());
        let addresses: Vec<&str> =
            decision.endpoints.iter().map(|&i| view.snapshot.endpoints[i].endpoint.address.as_str()).collect();
        self.destination = addresses.join(",");
        // The queue this request joins (scraped, plus what pickers sent since), before it counts.
        let queued = view.columns.queued(primary) + LocalLoads::sent_since_scrape(view.as_ref(), primary) as f64;
        self.inflight = Some(Inflight::start(&self.picker, view.counters[primary].clone(), estimated_tokens, queued));
        // The client's bytes go upstream unchanged unless the model is rewritten (no copy).
        let rewritten = (self.target_model != self.incoming_model).then(|| parsed.with_model(&self.target_model));
        drop(parsed);
        let new_body = rewritten.unwrap_or(body);
        let series = self.picker.metrics.series(&self.incoming_model, &self.target_model);
        series.record_request(priority);
        self.series = Some(series);
        self.picker.metrics.record_pick(
            &view.snapshot.endpoints[primary].endpoint.id,
            started.elapsed(),
            decision.load_agnostic,
        );
        tracing::debug!(request_id = %self.request_id, model = %self.target_model, destination = %self.destination, "routed");
        self.span.record("model", self.incoming_model.as_str());
        self.span.record("target_model", self.target_model.as_str());
        self.span.record("destination", self.destination.as_str());
        let mut set = vec![
            proto::header(DESTINATION, self.destination.as_bytes()),
            proto::header("content-length", new_body.len().to_string().as_bytes()),
        ];
        // The model server continues the trace under this request's span.
        if let Some(tp) = crate::telemetry::propagation::traceparent(&self.span) {
            set.push(proto::header("traceparent", tp.as_bytes()));
        }
        Ok((set, new_body))
    }
}

/// The proxy's `x-request-id` (a short one: it goes into logs), for logs before headers are kept.
fn request_id(headers: &[HeaderValue]) -> Option<String> {
    let h = headers.iter().find(|h| h.key.eq_ignore_ascii_case("x-request-id"))?;
    let value = if h.raw_value.is_empty() { h.value.as_bytes() } else { &h.raw_value };
    std::str::from_utf8(value).ok().filter(|v| v.len() <= 256).map(str::to_string)
}

fn remove_list() -> Vec<String> {
    CONTROL_HEADERS.iter().map(|h| h.to_string()).collect()
}
