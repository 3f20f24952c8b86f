//! `switchyard bench extproc`: drives ext-proc streams the way Envoy (and `switchyard gateway`)
//! does, at a fixed concurrency for a fixed time, against Switchyard's picker and against a null
//! ext-proc server in the same run, and reports throughput and latency percentiles.
//!
//! The picker runs on a synthetic snapshot (no scraping), so the figure is the request path alone.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::Args;
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::{
    ExternalProcessor, ExternalProcessorServer,
};
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Msg;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Answer;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    HttpBody, HttpHeaders, ProcessingRequest, ProcessingResponse, body_mutation,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status, Streaming};

use crate::config::EndpointPickerConfig;
use crate::model::{Endpoint, EndpointId, EndpointMetrics, EndpointState, MetricsSample, MetricsState, Snapshot};
use crate::picker::{ExtProcService, Picker, PickerMetrics, PickerSettings, proto};
use crate::scheduling::{Scheduler, SchedulerConfig};
use crate::tools::bench::percentile;
pub use crate::tools::load::{BackgroundLoad, FAILURES_KEPT, LoadFailure, LoadShape};

#[derive(Args, Clone)]
pub struct ExtProcBenchArgs {
    #[arg(long, default_value_t = 100)]
    pub endpoints: usize,
    /// Concurrent streams.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Seconds per target (after 1 s of warm-up).
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Chat body sizes to test, in KiB.
    #[arg(long, value_delimiter = ',', default_value = "1,200")]
    pub body_kib: Vec<usize>,
    /// HTTP/2 connections to the server (Envoy shares a few).
    #[arg(long, default_value_t = 2)]
    pub connections: usize,
    /// Run an OTLP trace sink here that counts the spans it receives (point
    /// OTEL_EXPORTER_OTLP_ENDPOINT at it to measure the cost of tracing).
    #[arg(long)]
    pub otlp_sink: Option<std::net::SocketAddr>,
}

/// A synthetic pool: `n` endpoints with fresh, varied metrics.
pub fn synthetic_snapshot(n: usize) -> Snapshot {
    let now = SystemTime::now();
    let endpoints = (0..n)
        .map(|i| EndpointState {
            endpoint: Arc::new(Endpoint {
                id: EndpointId::new(format!("bench/vllm-{i}-rank-0")),
                address: format!("10.{}.{}.{}:8000", i / 65536, (i / 256) % 256, i % 256),
                metrics_url: String::new(),
                engine: "vllm".into(),
                labels: BTreeMap::new(),
            }),
            metrics: MetricsState::Known {
                sample: Arc::new(MetricsSample {
                    metrics: EndpointMetrics {
                        queued: Some((i % 7) as u64),
                        running: Some((i % 13) as u64),
                        kv_usage: Some((i % 10) as f64 / 10.0),
                        cache_block_size: Some(16),
                        cache_num_blocks: Some(7000),
                        ..Default::default()
                    },
                    // Far in the future: stays fresh for the whole run.
                    scraped_at: now + Duration::from_secs(3600),
                    errors: vec![],
                }),
                last_error: None,
            },
            shared_load: Default::default(),
            shared_sent_since_scrape: 0,
        })
        .collect();
    Snapshot {
        epoch: 1,
        seq: 1,
        endpoints,
        published_at: now,
        routed_blocks: Vec::new(),
        objectives: Default::default(),
        publish_span: None,
    }
}

/// An ext-proc server that answers every stream with a fixed destination and the bodies unchanged,
/// and nothing else: the null server of the benchmarks (and, recording what the proxy reports as
/// served, a test double for gateways).
#[derive(Clone)]
pub struct FixedExtProc {
    /// `x-gateway-destination-endpoint` value (may list fallbacks).
    pub destination: String,
    /// When set, every `x-gateway-destination-endpoint-served` the proxy reports is recorded.
    pub served: Option<Arc<std::sync::Mutex<Vec<String>>>>,
}

impl FixedExtProc {
    pub fn null() -> Self {
        FixedExtProc { destination: "10.0.0.1:8000".into(), served: None }
    }
}

#[tonic::async_trait]
impl ExternalProcessor for FixedExtProc {
    type ProcessStream = ReceiverStream<Result<ProcessingResponse, Status>>;

    async fn process(
        &self,
        req: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(32);
        let me = self.clone();
        tokio::spawn(async move {
            let mut body = Vec::new();
            while let Ok(Some(msg)) = inbound.message().await {
                if let Some(served) = &me.served
                    && let Some(s) = proto::metadata_string(
                        msg.metadata_context.as_ref(),
                        proto::LB_NAMESPACE,
                        proto::DESTINATION_SERVED,
                    )
                {
                    served.lock().unwrap_or_else(|p| p.into_inner()).push(s.to_string());
                }
                let mut out = Vec::new();
                match msg.request {
                    Some(Msg::RequestHeaders(_)) => {}
                    Some(Msg::RequestBody(b)) => {
                        body.extend_from_slice(&b.body);
                        if b.end_of_stream {
                            let set = vec![proto::header(proto::DESTINATION, me.destination.as_bytes())];
                            out.push(proto::request_headers_response(
                                set,
                                Vec::new(),
                                Some(proto::destination_metadata(&me.destination)),
                            ));
                            proto::body_responses(&std::mem::take(&mut body), true, true, &mut out);
                        }
                    }
                    Some(Msg::ResponseHeaders(_)) => out.push(proto::response_headers_response(Vec::new())),
                    Some(Msg::ResponseBody(b)) => proto::body_responses(&b.body, b.end_of_stream, false, &mut out),
                    _ => {}
                }
                for r in out {
                    if tx.send(Ok(r)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn headers(pairs: &[(&str, &str)], end_of_stream: bool) -> HttpHeaders {
    let headers = pairs
        .iter()
        .map(|(k, v)| HeaderValue { key: k.to_string(), raw_value: v.as_bytes().to_vec(), ..Default::default() })
        .collect();
    HttpHeaders { headers: Some(HeaderMap { headers }), end_of_stream, ..Default::default() }
}

fn req(m: Msg) -> ProcessingRequest {
    ProcessingRequest { request: Some(m), metadata_context: Some(Default::default()), ..Default::default() }
}

/// One request through ext-proc as Envoy does it; returns false on any protocol surprise.
pub async fn one_exchange(
    client: &mut ExternalProcessorClient<Channel>,
    body: &[u8],
    response: &[u8],
) -> Result<(), String> {
    let (tx, rx) = mpsc::channel(16);
    let mut inbound = client.process(ReceiverStream::new(rx)).await.map_err(|e| e.to_string())?.into_inner();
    let len = body.len().to_string();
    let h = [
        (":method", "POST"),
        (":path", "/v1/chat/completions"),
        (":authority", "gw"),
        ("content-type", "application/json"),
        ("content-length", len.as_str()),
    ];
    let send = |m| {
        let tx = tx.clone();
        async move { tx.send(req(m)).await.map_err(|_| "stream closed".to_string()) }
    };
    send(Msg::RequestHeaders(headers(&h, false))).await?;
    let chunks: Vec<&[u8]> = body.chunks(64 * 1024).collect();
    for (i, c) in chunks.iter().enumerate() {
        send(Msg::RequestBody(HttpBody {
            body: c.to_vec(),
            end_of_stream: i + 1 == chunks.len(),
            ..Default::default()
        }))
        .await?;
    }
    match next(&mut inbound).await? {
        Answer::RequestHeaders(_) => {}
        Answer::ImmediateResponse(ir) => return Err(format!("immediate response {:?}", ir.status)),
        other => return Err(format!("unexpected {other:?}")),
    }
    loop {
        match next(&mut inbound).await? {
            Answer::RequestBody(b) => {
                if let Some(body_mutation::Mutation::StreamedResponse(s)) =
                    b.response.and_then(|c| c.body_mutation).and_then(|m| m.mutation)
                    && s.end_of_stream
                {
                    break;
                }
            }
            other => return Err(format!("unexpected {other:?}")),
        }
    }
    send(Msg::ResponseHeaders(headers(&[(":status", "200"), ("content-type", "application/json")], false))).await?;
    if !matches!(next(&mut inbound).await?, Answer::ResponseHeaders(_)) {
        return Err("expected response headers answer".into());
    }
    send(Msg::ResponseBody(HttpBody { body: response.to_vec(), end_of_stream: true, ..Default::default() })).await?;
    match next(&mut inbound).await? {
        Answer::ResponseBody(_) => Ok(()),
        other => Err(format!("unexpected {other:?}")),
    }
}

async fn next(inbound: &mut Streaming<ProcessingResponse>) -> Result<Answer, String> {
    inbound
        .message()
        .await
        .map_err(|e| e.to_string())?
        .and_then(|m| m.response)
        .ok_or_else(|| "stream ended".to_string())
}

pub struct LoadResult {
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub latencies_ms: Vec<f64>,
}

/// Runs `concurrency` workers against `addr` for `seconds` (after 1 s warm-up).
pub async fn drive(
    addr: SocketAddr,
    concurrency: usize,
    connections: usize,
    seconds: u64,
    body: Arc<Vec<u8>>,
) -> anyhow::Result<LoadResult> {
    let mut clients = Vec::new();
    for _ in 0..connections.max(1) {
        let ch =
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect().await.context("connect")?;
        clients.push(ExternalProcessorClient::new(ch).max_decoding_message_size(64 * 1024 * 1024));
    }
    let response = Arc::new(br#"{"id":"x","object":"chat.completion","model":"meta-llama/Llama-3.1-8B-Instruct","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":300,"completion_tokens":2,"total_tokens":302}}"#.to_vec());
    run_timed(concurrency, seconds, |w| {
        let client = clients[w % clients.len()].clone();
        let (body, response) = (body.clone(), response.clone());
        move || {
            let (mut client, body, response) = (client.clone(), body.clone(), response.clone());
            async move { one_exchange(&mut client, &body, &response).await.is_ok() }
        }
    })
    .await
}

/// Runs `concurrency` workers for `seconds` after 1 s of warm-up. `make_worker(i)` returns the
/// worker's request function: one request per call, `true` when it succeeded.
async fn run_timed<W, Fut>(
    concurrency: usize,
    seconds: u64,
    mut make_worker: impl FnMut(usize) -> W,
) -> anyhow::Result<LoadResult>
where
    W: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let warm_until = Instant::now() + Duration::from_secs(1);
    let stop_at = warm_until + Duration::from_secs(seconds);
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let mut request = make_worker(w);
        workers.push(tokio::spawn(async move {
            let (mut lat, mut errors) = (Vec::new(), 0u64);
            loop {
                let t0 = Instant::now();
                if t0 >= stop_at {
                    break;
                }
                let ok = request().await;
                if t0 >= warm_until {
                    if ok {
                        lat.push(t0.elapsed().as_secs_f64() * 1000.0);
                    } else {
                        errors += 1;
                    }
                }
            }
            (lat, errors)
        }));
    }
    let mut result = LoadResult { requests: 0, errors: 0, seconds: seconds as f64, latencies_ms: Vec::new() };
    for w in workers {
        let (lat, errors) = w.await?;
        result.requests += lat.len() as u64;
        result.errors += errors;
        result.latencies_ms.extend(lat);
    }
    result.latencies_ms.sort_by(f64::total_cmp);
    Ok(result)
}

async fn serve<S>(svc: ExternalProcessorServer<S>) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)>
where
    S: ExternalProcessor,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = Server::builder().add_service(svc).serve_with_incoming(crate::nodelay_incoming(listener)).await;
    });
    Ok((addr, task))
}

pub fn chat_body(kib: usize) -> Vec<u8> {
    let target = kib * 1024;
    let system = "You are a helpful assistant. Answer precisely and cite sources. ".repeat(target / 64 + 1);
    let system = &system[..target.saturating_sub(150).min(system.len())];
    serde_json::json!({"model": "meta-llama/Llama-3.1-8B-Instruct", "messages": [
        {"role": "system", "content": system}, {"role": "user", "content": "What is the capital of France?"}], "max_tokens": 64})
    .to_string()
    .into_bytes()
}

pub async fn run(args: ExtProcBenchArgs) -> anyhow::Result<()> {
    let sink = match args.otlp_sink {
        Some(addr) => Some(crate::tools::otlp_sink::Collector::start_with(addr, false).await?.0),
        None => None,
    };
    let scheduler =
        Scheduler::new(SchedulerConfig::build(&EndpointPickerConfig::default_config(), Duration::from_secs(2))?);
    let picker = Arc::new(Picker::new(
        scheduler,
        PickerSettings { max_body_bytes: 64 * 1024 * 1024, ..Default::default() },
        PickerMetrics::detached(),
    ));
    picker.accept(Arc::new(synthetic_snapshot(args.endpoints)));
    crate::app::follow_snapshots(picker.clone(), Arc::new(crate::health::Readiness::default()));
    let (sy_addr, _sy) =
        serve(ExternalProcessorServer::new(ExtProcService { picker }).max_decoding_message_size(64 * 1024 * 1024))
            .await?;
    let (null_addr, _null) =
        serve(ExternalProcessorServer::new(FixedExtProc::null()).max_decoding_message_size(64 * 1024 * 1024)).await?;
    println!(
        "ext-proc request path, {} endpoints, concurrency {}, {} connections, {} s per target",
        args.endpoints, args.concurrency, args.connections, args.seconds
    );
    println!(
        "{:<8} {:<11} {:>9} {:>8} {:>8} {:>8} {:>7}",
        "body", "server", "req/s", "p50 ms", "p90 ms", "p99 ms", "errors"
    );
    for kib in &args.body_kib {
        let body = Arc::new(chat_body(*kib));
        let mut rows = Vec::new();
        for (name, addr) in [("null", null_addr), ("switchyard", sy_addr)] {
            let r = drive(addr, args.concurrency, args.connections, args.seconds, body.clone()).await?;
            let rps = r.requests as f64 / r.seconds;
            let (p50, p90, p99) = (
                percentile(&r.latencies_ms, 50.0),
                percentile(&r.latencies_ms, 90.0),
                percentile(&r.latencies_ms, 99.0),
            );
            println!(
                "{:<8} {:<11} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>7}",
                format!("{kib} KiB"),
                name,
                rps,
                p50,
                p90,
                p99,
                r.errors
            );
            rows.push((rps, p50, p99));
        }
        let (null, sy) = (rows[0], rows[1]);
        println!(
            "{:<8} ratio       throughput {:.2}x of null, p50 {:.2}x, p99 {:.2}x",
            format!("{kib} KiB"),
            sy.0 / null.0,
            sy.1 / null.1,
            sy.2 / null.2
        );
    }
    if let Some(sink) = sink {
        // What the export queue still holds arrives within its schedule delay.
        tokio::time::sleep(Duration::from_secs(2)).await;
        println!("spans received by the OTLP sink: {}", sink.count());
    }
    Ok(())
}

#[derive(Args, Clone)]
pub struct GatewayBenchArgs {
    /// Sim endpoints behind the picker.
    #[arg(long, default_value_t = 4)]
    pub endpoints: usize,
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
}

/// End to end through `switchyard gateway` against sim endpoints: gateway + picker versus the
/// gateway going straight to one endpoint. The sims run 100× faster than real time so that the
/// proxy path, not the model, dominates.
pub async fn run_gateway(args: GatewayBenchArgs) -> anyhow::Result<()> {
    use crate::app::StandaloneOptions;
    use crate::gateway::{self, FailureMode, GatewayConfig};
    use crate::sim::{self, Flavor};
    crate::ensure_crypto_provider();
    let cfg = sim::FleetConfig { fleet: vec![(Flavor::VllmV1, args.endpoints)], speed: 100.0, ..Default::default() };
    let fleet = sim::start_fleet(&cfg).await?;
    let dir = std::env::temp_dir().join(format!("switchyard-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = sim::write_endpoints_file(&fleet, &dir)?;
    let epp =
        crate::app::start_standalone(StandaloneOptions::loopback(crate::discovery::PoolSource::file(file))).await?;
    while !epp.readiness.is_ready() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let pool: Vec<String> = fleet.iter().map(|h| h.addr.to_string()).collect();
    let with_picker = GatewayConfig {
        ext_proc: vec![format!("http://{}", epp.ext_proc_addr)],
        failure_mode: FailureMode::Close,
        pool: pool.clone(),
        message_timeout: Duration::from_secs(10),
    };
    let direct = GatewayConfig {
        ext_proc: vec![],
        failure_mode: FailureMode::Close,
        pool: vec![pool[0].clone()],
        message_timeout: Duration::from_secs(10),
    };
    let (a, _t1) = gateway::start(with_picker, "127.0.0.1:0".parse()?, stop_rx.clone()).await?;
    let (b, _t2) = gateway::start(direct, "127.0.0.1:0".parse()?, stop_rx.clone()).await?;
    println!(
        "end to end through the gateway: {} sim endpoints (100x speed), concurrency {}, {} s each",
        args.endpoints, args.concurrency, args.seconds
    );
    println!("{:<34} {:>8} {:>8} {:>8} {:>8}", "path", "req/s", "p50 ms", "p90 ms", "p99 ms");
    let mut rows = Vec::new();
    for (name, addr) in [("gateway -> one endpoint (direct)", b), ("gateway -> picker -> pool", a)] {
        let r = http_load(addr, args.concurrency, args.seconds).await?;
        let rps = r.requests as f64 / r.seconds;
        let l = &r.latencies_ms;
        println!(
            "{name:<34} {rps:>8.0} {:>8.2} {:>8.2} {:>8.2}   errors={}",
            percentile(l, 50.0),
            percentile(l, 90.0),
            percentile(l, 99.0),
            r.errors
        );
        rows.push((rps, percentile(l, 50.0), percentile(l, 99.0)));
    }
    println!(
        "added by the picker: p50 {:+.2} ms, p99 {:+.2} ms; throughput {:.2}x",
        rows[1].1 - rows[0].1,
        rows[1].2 - rows[0].2,
        rows[1].0 / rows[0].0
    );
    epp.shutdown(Duration::from_secs(1)).await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

async fn http_load(addr: SocketAddr, concurrency: usize, seconds: u64) -> anyhow::Result<LoadResult> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build()?;
    let url = format!("http://{addr}/v1/chat/completions");
    let body = Arc::new(serde_json::json!({"model": "meta-llama/Llama-3.1-8B-Instruct", "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}).to_string());
    run_timed(concurrency, seconds, |_| {
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        move || {
            let request = client.post(&url).header("content-type", "application/json").body(body.to_string());
            async move {
                match request.send().await {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                }
            }
        }
    })
    .await
}
