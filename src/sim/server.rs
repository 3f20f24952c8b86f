//! One simulated model server: the engine loop task plus an HTTP server with the OpenAI API and
//! the engine's /metrics page.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::{Listener, ListenerExt as _};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use xxhash_rust::xxh64::xxh64;

use super::model::{EngineCore, Event, Hist, ModelParams, SimRequest};
use super::render::{Flavor, HTTP_BUCKETS, LoraInfo, PageView, render};

/// Request bodies above this are refused (413), as a real server's front end would.
const MAX_BODY: usize = 32 * 1024 * 1024;
/// LoRA info series kept on the page (vLLM keeps old series around; the newest wins).
const LORA_HISTORY: usize = 3;

#[derive(Debug, Clone)]
pub struct SimServerConfig {
    pub name: String,
    pub flavor: Flavor,
    pub model: String,
    pub adapters: Vec<String>,
    pub params: ModelParams,
    pub seed: u64,
    /// Simulated seconds per wall-clock second (2.0 runs twice as fast).
    pub speed: f64,
    /// Serve HTTPS with a self-signed certificate generated at start.
    pub tls: bool,
}

pub struct SimServer {
    cfg: SimServerConfig,
    core: Mutex<EngineCore>,
    work: Notify,
    waiters: Mutex<HashMap<u64, mpsc::UnboundedSender<Event>>>,
    next_id: AtomicU64,
    /// Bumped whenever the page would change; the rendered page is cached per version.
    version: AtomicU64,
    page: Mutex<(u64, Bytes)>,
    lora_history: Mutex<Vec<LoraInfo>>,
    http: Mutex<(u64, Hist)>,
    start: Instant,
    started_at: f64,
}

/// A running simulated server.
pub struct SimHandle {
    pub name: String,
    pub flavor: Flavor,
    pub addr: SocketAddr,
    /// Serving HTTPS (see [`SimServerConfig::tls`]).
    pub tls: bool,
    pub server: Arc<SimServer>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default()
}

impl SimServer {
    /// Starts the engine loop and the HTTP server on `listener`.
    pub fn spawn(cfg: SimServerConfig, listener: TcpListener) -> std::io::Result<SimHandle> {
        let addr = listener.local_addr()?;
        let server = Arc::new(SimServer {
            core: Mutex::new(EngineCore::new(cfg.params.clone(), cfg.seed)),
            work: Notify::new(),
            waiters: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            version: AtomicU64::new(1),
            page: Mutex::new((0, Bytes::new())),
            lora_history: Mutex::new(Vec::new()),
            http: Mutex::new((0, Hist::new(&HTTP_BUCKETS))),
            start: Instant::now(),
            started_at: unix_now(),
            cfg,
        });
        let engine = tokio::spawn(server.clone().engine_loop());
        let app = Router::new()
            .route("/metrics", get(metrics))
            .route("/health", get(|| async { "" }))
            .route("/v1/models", get(models))
            .route("/v1/completions", post(completions))
            .route("/v1/chat/completions", post(chat_completions))
            .layer(DefaultBodyLimit::max(MAX_BODY))
            .with_state(server.clone());
        let http = if server.cfg.tls {
            // The TLS accept loop sets nodelay itself.
            tokio::spawn(serve(super::tls::listen(listener)?, app))
        } else {
            tokio::spawn(serve(
                listener.tap_io(|tcp| {
                    let _ = tcp.set_nodelay(true);
                }),
                app,
            ))
        };
        Ok(SimHandle {
            name: server.cfg.name.clone(),
            flavor: server.cfg.flavor,
            addr,
            tls: server.cfg.tls,
            server,
            tasks: vec![engine, http],
        })
    }

    /// Requests waiting in the engine queue right now.
    pub fn queue_depth(&self) -> usize {
        lock(&self.core).waiting()
    }

    /// Prefix-cache counters since start: (cached prompt tokens, prompt tokens admitted).
    pub fn prefix_counters(&self) -> (u64, u64) {
        let core = lock(&self.core);
        (core.stats.prefix_hits, core.stats.prefix_queries)
    }

    fn sim_now(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * self.cfg.speed
    }

    async fn engine_loop(self: Arc<Self>) {
        loop {
            let step = {
                let mut core = lock(&self.core);
                core.step(self.sim_now())
            };
            let Some((duration, events)) = step else {
                self.work.notified().await;
                continue;
            };
            self.note_lora_change();
            self.version.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(std::time::Duration::from_secs_f64(duration / self.cfg.speed)).await;
            let waiters = lock(&self.waiters);
            for e in events {
                let id = match &e {
                    Event::Token { id, .. } | Event::Finished { id, .. } => *id,
                };
                if let Some(tx) = waiters.get(&id) {
                    let _ = tx.send(e);
                }
            }
            drop(waiters);
            self.version.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn note_lora_change(&self) {
        if !self.cfg.flavor.supports_lora() {
            return;
        }
        let (running, waiting) = {
            let core = lock(&self.core);
            (core.running_adapters(), core.waiting_adapters())
        };
        let mut history = lock(&self.lora_history);
        if history.last().is_some_and(|(r, w, _)| *r == running && *w == waiting) {
            return;
        }
        history.push((running, waiting, unix_now()));
        if history.len() > LORA_HISTORY {
            history.remove(0);
        }
    }

    fn render_page(&self) -> Bytes {
        let version = self.version.load(Ordering::Relaxed);
        {
            let page = lock(&self.page);
            if page.0 == version {
                return page.1.clone();
            }
        }
        let view = {
            let core = lock(&self.core);
            let (http_requests, http_latency) = lock(&self.http).clone();
            let mut lora_history = lock(&self.lora_history).clone();
            if lora_history.is_empty() {
                lora_history.push((Vec::new(), Vec::new(), self.started_at));
            }
            PageView {
                model: self.cfg.model.clone(),
                waiting: core.waiting(),
                running: core.running(),
                kv_usage: core.kv_usage(),
                kv_blocks: core.params.kv_blocks,
                block_size: core.params.block_size,
                max_lora: core.params.max_lora,
                lora_history,
                stats: core.stats.clone(),
                http_requests,
                http_latency,
                started_at: self.started_at,
            }
        };
        let bytes = Bytes::from(render(self.cfg.flavor, &view));
        *lock(&self.page) = (version, bytes.clone());
        bytes
    }

    /// Tokenizes (4 characters per token) and block-hashes a prompt, then queues it.
    fn submit(self: &Arc<Self>, text: &str, max_tokens: u32, adapter: Option<String>) -> Admitted {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let prompt_tokens = (text.len() as u32).div_ceil(4).max(1);
        let block_chars = (self.cfg.params.block_size as usize * 4).max(1);
        let mut prev = xxh64(self.cfg.model.as_bytes(), 0);
        let prompt_blocks = text
            .as_bytes()
            .chunks_exact(block_chars)
            .map(|chunk| {
                prev = xxh64(chunk, prev);
                prev
            })
            .collect();
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.waiters).insert(id, tx);
        let req = SimRequest { id, prompt_tokens, prompt_blocks, max_tokens, adapter, arrived: self.sim_now() };
        lock(&self.core).submit(req);
        self.version.fetch_add(1, Ordering::Relaxed);
        self.work.notify_one();
        Admitted { server: self.clone(), id, rx, started: Instant::now() }
    }
}

/// A submitted request; dropping it (client gone) removes the request from the engine.
struct Admitted {
    server: Arc<SimServer>,
    id: u64,
    rx: mpsc::UnboundedReceiver<Event>,
    started: Instant,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        lock(&self.server.waiters).remove(&self.id);
        lock(&self.server.core).cancel(self.id);
        let mut http = lock(&self.server.http);
        http.0 += 1;
        http.1.observe(self.started.elapsed().as_secs_f64());
    }
}

async fn serve<L>(listener: L, app: Router)
where
    L: Listener,
    L::Addr: std::fmt::Debug,
{
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, "sim http server stopped");
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn metrics(State(s): State<Arc<SimServer>>) -> Response {
    let mut resp = s.render_page().into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    resp
}

async fn models(State(s): State<Arc<SimServer>>) -> Response {
    let mut data = vec![json!({"id": s.cfg.model, "object": "model", "owned_by": "switchyard-sim"})];
    for a in &s.cfg.adapters {
        data.push(json!({"id": a, "object": "model", "owned_by": "switchyard-sim", "parent": s.cfg.model}));
    }
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

#[derive(Clone, Copy, PartialEq)]
enum Api {
    Completions,
    Chat,
}

async fn completions(State(s): State<Arc<SimServer>>, body: Bytes) -> Response {
    handle(s, Api::Completions, body).await
}

async fn chat_completions(State(s): State<Arc<SimServer>>, body: Bytes) -> Response {
    handle(s, Api::Chat, body).await
}

fn error(status: StatusCode, kind: &str, message: String) -> Response {
    let body = json!({"object": "error", "message": message, "type": kind, "code": status.as_u16()});
    (status, axum::Json(body)).into_response()
}

fn prompt_text(api: Api, body: &Value) -> Result<String, String> {
    match api {
        Api::Completions => match body.get("prompt") {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(Value::Array(items)) if !items.is_empty() => Ok(items
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(" ")),
            _ => Err("prompt must be a non-empty string or array".into()),
        },
        Api::Chat => {
            let messages = body
                .get("messages")
                .and_then(Value::as_array)
                .filter(|m| !m.is_empty())
                .ok_or("messages must be a non-empty array")?;
            let mut text = String::new();
            for m in messages {
                let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
                let content = match m.get("content") {
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                    None => String::new(),
                };
                text.push_str(role);
                text.push_str(": ");
                text.push_str(&content);
                text.push('\n');
            }
            Ok(text)
        }
    }
}

async fn handle(s: Arc<SimServer>, api: Api, body: Bytes) -> Response {
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return error(StatusCode::BAD_REQUEST, "BadRequestError", "body must be a JSON object".into()),
        Err(e) => return error(StatusCode::BAD_REQUEST, "BadRequestError", format!("invalid JSON: {e}")),
    };
    let Some(model) = body.get("model").and_then(Value::as_str).map(str::to_string) else {
        return error(StatusCode::BAD_REQUEST, "BadRequestError", "model is required".into());
    };
    let adapter = if model == s.cfg.model {
        None
    } else if s.cfg.adapters.contains(&model) {
        Some(model.clone())
    } else {
        return error(StatusCode::NOT_FOUND, "NotFoundError", format!("The model `{model}` does not exist."));
    };
    let text = match prompt_text(api, &body) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, "BadRequestError", e),
    };
    let default_max = if api == Api::Chat { 64 } else { 16 };
    let max_tokens = body
        .get("max_completion_tokens")
        .or_else(|| body.get("max_tokens"))
        .and_then(Value::as_u64)
        .map_or(default_max, |v| v.clamp(1, 16_384) as u32);
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage = body.pointer("/stream_options/include_usage").and_then(Value::as_bool).unwrap_or(false);
    let admitted = s.submit(&text, max_tokens, adapter);
    let meta = ReplyMeta { id: format!("cmpl-{}-{}", s.cfg.name, admitted.id), created: unix_now() as u64, model, api };
    let mut resp = if stream { stream_reply(admitted, meta, include_usage) } else { full_reply(admitted, meta).await };
    if let Ok(v) = HeaderValue::from_str(&s.cfg.name) {
        resp.headers_mut().insert("x-sim-server", v);
    }
    resp
}

struct ReplyMeta {
    id: String,
    created: u64,
    model: String,
    api: Api,
}

impl ReplyMeta {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.api, chunk) {
            (Api::Completions, _) => "text_completion",
            (Api::Chat, false) => "chat.completion",
            (Api::Chat, true) => "chat.completion.chunk",
        }
    }

    fn usage(prompt: u32, completion: u32, cached: u32) -> Value {
        json!({
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        })
    }

    fn chunk(&self, index: u32, finish: Option<&str>, usage: Option<Value>) -> Value {
        let choice = match self.api {
            Api::Completions => json!({"index": 0, "text": word(index), "logprobs": null, "finish_reason": finish}),
            Api::Chat if index == 0 => {
                json!({"index": 0, "delta": {"role": "assistant", "content": word(index)}, "finish_reason": finish})
            }
            Api::Chat => json!({"index": 0, "delta": {"content": word(index)}, "finish_reason": finish}),
        };
        let mut v = json!({"id": self.id, "object": self.object(true), "created": self.created, "model": self.model, "choices": [choice]});
        if let Some(u) = usage {
            v["choices"] = json!([]);
            v["usage"] = u;
        }
        v
    }
}

fn word(i: u32) -> &'static str {
    const WORDS: [&str; 8] = [" the", " quick", " model", " routes", " tokens", " to", " a", " server"];
    WORDS[i as usize % WORDS.len()]
}

async fn full_reply(mut admitted: Admitted, meta: ReplyMeta) -> Response {
    let mut text = String::new();
    while let Some(event) = admitted.rx.recv().await {
        match event {
            Event::Token { index, .. } => text.push_str(word(index)),
            Event::Finished { reason, prompt_tokens, completion_tokens, cached_tokens, .. } => {
                let choice = match meta.api {
                    Api::Completions => {
                        json!({"index": 0, "text": text, "logprobs": null, "finish_reason": reason.as_str()})
                    }
                    Api::Chat => {
                        json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason.as_str()})
                    }
                };
                let body = json!({
                    "id": meta.id, "object": meta.object(false), "created": meta.created, "model": meta.model,
                    "choices": [choice],
                    "usage": ReplyMeta::usage(prompt_tokens, completion_tokens, cached_tokens),
                });
                return axum::Json(body).into_response();
            }
        }
    }
    error(StatusCode::INTERNAL_SERVER_ERROR, "InternalServerError", "engine stopped".into())
}

fn stream_reply(admitted: Admitted, meta: ReplyMeta, include_usage: bool) -> Response {
    let state = (admitted, meta, false);
    let events = futures::stream::unfold(state, move |(mut admitted, meta, done)| async move {
        if done {
            return None;
        }
        let event = admitted.rx.recv().await?;
        let (chunk, done) = match event {
            Event::Token { index, .. } => (sse(&meta.chunk(index, None, None)), false),
            Event::Finished { reason, prompt_tokens, completion_tokens, cached_tokens, .. } => {
                // The last token's chunk was already sent; close with the finish reason.
                let mut last = meta.chunk(completion_tokens, Some(reason.as_str()), None);
                last["choices"][0]["text"] = json!("");
                if let Some(delta) = last["choices"][0].get_mut("delta") {
                    *delta = json!({});
                }
                let mut out = sse(&last);
                if include_usage {
                    let usage = ReplyMeta::usage(prompt_tokens, completion_tokens, cached_tokens);
                    out.push_str(&sse(&meta.chunk(0, None, Some(usage))));
                }
                out.push_str("data: [DONE]\n\n");
                (out, true)
            }
        };
        Some((Ok::<_, Infallible>(Bytes::from(chunk)), (admitted, meta, done)))
    });
    let mut resp = Response::new(Body::from_stream(events));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream; charset=utf-8"));
    resp
}

fn sse(v: &Value) -> String {
    format!("data: {v}\n\n")
}
