//! The ext-proc and control ports against hostile peers (issue 16): header bytes without bound,
//! request bodies that never end, streams that start out of order, connections that never speak
//! HTTP/2. Each test is named after the defect it pins.

use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Msg;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Answer;
use envoy_types::pb::envoy::service::ext_proc::v3::{HttpBody, HttpHeaders, HttpTrailers, ProcessingRequest};
use switchyard::picker::RequestLimits;
use switchyard::roles::{AggregatorOptions, start_aggregator};
use switchyard::sim::{self, Flavor};
use tokio::io::AsyncReadExt as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::envoy::{HttpRequest, Sandbox, send};
use crate::support::{vllm_fleet, wait_for};

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";
const MIB: usize = 1024 * 1024;

fn fleet() -> sim::FleetConfig {
    sim::FleetConfig { fleet: vec![(Flavor::VllmV1, 1)], ..Default::default() }
}

fn request_headers(extra: Vec<(String, Vec<u8>)>, end_of_stream: bool) -> ProcessingRequest {
    let mut pairs: Vec<(String, Vec<u8>)> = vec![
        (":method".into(), b"POST".to_vec()),
        (":path".into(), b"/v1/chat/completions".to_vec()),
        (":authority".into(), b"gateway".to_vec()),
        ("content-type".into(), b"application/json".to_vec()),
    ];
    pairs.extend(extra);
    let headers = pairs.into_iter().map(|(key, raw_value)| HeaderValue { key, raw_value, ..Default::default() });
    message(Msg::RequestHeaders(HttpHeaders {
        headers: Some(HeaderMap { headers: headers.collect() }),
        end_of_stream,
        ..Default::default()
    }))
}

fn message(m: Msg) -> ProcessingRequest {
    ProcessingRequest { request: Some(m), metadata_context: Some(Default::default()), ..Default::default() }
}

fn body(bytes: &[u8], end_of_stream: bool) -> ProcessingRequest {
    message(Msg::RequestBody(HttpBody { body: bytes.to_vec(), end_of_stream, ..Default::default() }))
}

/// `n` headers of `size` bytes each.
fn big_headers(n: usize, size: usize) -> Vec<(String, Vec<u8>)> {
    (0..n).map(|i| (format!("x-big-{i}"), vec![b'a'; size])).collect()
}

/// One `Process` stream: what the test sends, and what the picker answers.
struct Stream {
    tx: mpsc::Sender<ProcessingRequest>,
    rx: tonic::Streaming<envoy_types::pb::envoy::service::ext_proc::v3::ProcessingResponse>,
}

impl Stream {
    async fn open(c: &mut ExternalProcessorClient<Channel>, first: ProcessingRequest) -> Stream {
        let (tx, rx) = mpsc::channel(8);
        tx.send(first).await.expect("send");
        let rx = c.process(ReceiverStream::new(rx)).await.expect("open").into_inner();
        Stream { tx, rx }
    }

    /// The next answer, which must come (a generous bound: 32 MiB messages are slow to encode in
    /// debug builds on a loaded 2-core machine).
    async fn answer(&mut self) -> Result<Answer, tonic::Status> {
        let next =
            tokio::time::timeout(Duration::from_secs(30), self.rx.message()).await.expect("an answer within 30 s");
        next.map(|m| m.expect("an answer, not the end").response.expect("a response case"))
    }

    /// The immediate response the picker answered with.
    async fn refused(&mut self) -> (i32, String) {
        match self.answer().await.expect("not a stream error") {
            Answer::ImmediateResponse(ir) => {
                (ir.status.map_or(0, |s| s.code), String::from_utf8_lossy(&ir.body).into_owned())
            }
            other => panic!("expected an immediate response, got {other:?}"),
        }
    }
}

async fn metrics(sb: &Sandbox) -> String {
    crate::support::metrics_text(sb.epp().metrics_addr).await
}

async fn pending_is(sb: &Sandbox, bytes: usize) {
    let picker = sb.epp().picker.clone();
    wait_for(&format!("{bytes} pending header bytes"), Duration::from_secs(5), || {
        let held = picker.pending_header_bytes();
        async move { (held == bytes).then_some(()) }
    })
    .await;
}

/// Issue 16.1: eight streams of 32 one-MiB headers were held until the client left (RSS 14 →
/// 528 MB), and one stream of 60 such headers was accepted.
#[actix_rt::test]
async fn unbounded_header_bytes_get_431_and_nothing_is_held() {
    let sb = Sandbox::start(fleet(), None, |_| {}).await;
    let mut c = sb.client().await;
    let mut streams = Vec::new();
    for _ in 0..8 {
        streams.push(Stream::open(&mut c, request_headers(big_headers(32, MIB), false)).await);
    }
    for s in &mut streams {
        let (status, body) = s.refused().await;
        assert_eq!(status, 431, "{body}");
        assert!(body.starts_with("inference error: BadRequest - request header \"x-big-0\" is"), "{body}");
    }
    let mut one = Stream::open(&mut c, request_headers(big_headers(60, MIB), false)).await;
    assert_eq!(one.refused().await.0, 431);
    assert_eq!(sb.epp().picker.pending_header_bytes(), 0);
    let text = metrics(&sb).await;
    assert!(text.contains("switchyard_picker_limit_refusals_total{limit=\"max-header-bytes\"} 9"), "{text}");
    assert!(send(&mut c, &HttpRequest::chat(MODEL, "still served")).await.routed.immediate.is_none());
}

/// Each per-request bound answers 431; requests at the bound are served.
#[actix_rt::test]
async fn each_request_header_bound_answers_431() {
    let limits = RequestLimits::default();
    let sb = Sandbox::start(fleet(), None, |_| {}).await;
    let mut c = sb.client().await;
    let cases = [
        (big_headers(1, limits.max_header_bytes), "request header \"x-big-0\" is"),
        (big_headers(limits.max_request_headers, 1), "request headers, more than 200"),
        (big_headers(3, limits.max_header_bytes - 16), "request headers are"),
    ];
    for (headers, message) in cases {
        let mut s = Stream::open(&mut c, request_headers(headers, true)).await;
        let (status, body) = s.refused().await;
        assert_eq!(status, 431, "{body}");
        assert!(body.contains(message), "{body}");
    }
    let mut at_bound = HttpRequest::chat(MODEL, "large but allowed");
    at_bound.headers = vec![("cookie".into(), "c".repeat(limits.max_header_bytes - "cookie".len()))];
    assert!(send(&mut c, &at_bound).await.routed.immediate.is_none());
    assert_eq!(sb.epp().picker.pending_header_bytes(), 0, "released once routed");
}

/// Issue 16.1, across streams: requests under every per-request bound still cannot together hold
/// more than the pending total; refusals are counted and the budget comes back.
#[actix_rt::test]
async fn pending_header_bytes_are_bounded_across_streams() {
    let sb = Sandbox::start(fleet(), None, |o| {
        o.picker.limits = RequestLimits {
            max_header_bytes: MIB,
            max_request_header_bytes: MIB,
            max_pending_header_bytes: 4 * MIB,
            ..RequestLimits::default()
        };
    })
    .await;
    let mut c = sb.client().await;
    let headers = || request_headers(big_headers(1, 900 * 1024), false);
    let mut held = Vec::new();
    let mut per_stream = 0;
    for i in 1..=4 {
        held.push(Stream::open(&mut c, headers()).await);
        if per_stream == 0 {
            wait_for("the first stream held", Duration::from_secs(5), || {
                let n = sb.epp().picker.pending_header_bytes();
                async move { (n > 0).then_some(()) }
            })
            .await;
            per_stream = sb.epp().picker.pending_header_bytes();
        }
        pending_is(&sb, i * per_stream).await;
    }
    for _ in 0..4 {
        let (status, body) = Stream::open(&mut c, headers()).await.refused().await;
        assert_eq!(status, 429, "{body}");
        assert!(body.starts_with("inference error: ResourceExhausted - requests waiting to be routed hold"), "{body}");
    }
    let text = metrics(&sb).await;
    assert!(text.contains("switchyard_picker_limit_refusals_total{limit=\"max-pending-header-bytes\"} 4"), "{text}");
    assert!(text.contains(&format!("switchyard_picker_pending_header_bytes {}", 4 * per_stream)), "{text}");
    // A client that goes away gives its share back; so does a routed request.
    drop(held.pop());
    pending_is(&sb, 3 * per_stream).await;
    let mut admitted = Stream::open(&mut c, headers()).await;
    pending_is(&sb, 4 * per_stream).await;
    let chat = serde_json::json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).to_string();
    admitted.tx.send(body(chat.as_bytes(), true)).await.expect("body");
    assert!(matches!(admitted.answer().await, Ok(Answer::RequestHeaders(_))), "routed");
    pending_is(&sb, 3 * per_stream).await;
    drop(held);
    pending_is(&sb, 0).await;
}

/// Issue 16.2: headers, then a chunk every 50 ms without `end_of_stream`, was never answered.
#[actix_rt::test]
async fn endless_request_body_gets_408_at_the_deadline() {
    let deadline = Duration::from_millis(400);
    let sb = Sandbox::start(fleet(), None, |o| o.picker.limits.request_body_timeout = deadline).await;
    let mut c = sb.client().await;
    let started = tokio::time::Instant::now();
    let mut s = Stream::open(&mut c, request_headers(Vec::new(), false)).await;
    let tx = s.tx.clone();
    let drip = tokio::spawn(async move {
        let chunk = vec![b' '; 16 * 1024];
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tick.tick().await;
            if tx.send(body(&chunk, false)).await.is_err() {
                return;
            }
        }
    });
    let (status, text) = s.refused().await;
    let took = started.elapsed();
    drip.abort();
    assert_eq!(status, 408, "{text}");
    assert_eq!(text, "inference error: BadRequest - request body not complete within 400ms");
    assert!(took >= deadline, "answered after {took:?}, before the deadline");
    let end = tokio::time::timeout(Duration::from_secs(5), s.rx.message()).await.expect("the stream ends");
    assert!(end.map(|m| m.is_none()).unwrap_or(true), "nothing follows the 408");
    assert!(metrics(&sb).await.contains("switchyard_picker_limit_refusals_total{limit=\"request-body-timeout\"} 1"));
    pending_is(&sb, 0).await;
    // A body that ends in time is routed under the same deadline.
    assert!(send(&mut c, &HttpRequest::chat(MODEL, "prompt")).await.routed.immediate.is_none());
}

/// Issue 16.3: a stream starting with request trailers or a response phase got a normal answer.
#[actix_rt::test]
async fn out_of_order_first_messages_fail_the_stream() {
    let sb = Sandbox::start(fleet(), None, |_| {}).await;
    let mut c = sb.client().await;
    let response_headers = || {
        message(Msg::ResponseHeaders(HttpHeaders {
            headers: Some(HeaderMap {
                headers: vec![HeaderValue { key: ":status".into(), raw_value: b"200".to_vec(), ..Default::default() }],
            }),
            ..Default::default()
        }))
    };
    let firsts = [
        message(Msg::RequestTrailers(HttpTrailers::default())),
        response_headers(),
        message(Msg::ResponseBody(HttpBody { body: b"{}".to_vec(), end_of_stream: true, ..Default::default() })),
        message(Msg::ResponseTrailers(HttpTrailers::default())),
    ];
    for first in firsts {
        let what = format!("{:?}", first.request);
        let err = Stream::open(&mut c, first).await.answer().await.expect_err(&what);
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{what}: {err}");
    }
    // A response phase before the request was routed is out of order too.
    let mut s = Stream::open(&mut c, request_headers(Vec::new(), false)).await;
    s.tx.send(response_headers()).await.expect("send");
    assert_eq!(s.answer().await.expect_err("out of order").code(), tonic::Code::FailedPrecondition);
    assert!(send(&mut c, &HttpRequest::chat(MODEL, "in order")).await.routed.immediate.is_none());
}

/// Opens `n` TCP connections that send nothing and waits (at most `bound`) for the server to
/// close every one of them.
async fn silent_connections_closed(addr: SocketAddr, n: usize, bound: Duration) {
    let mut waits = Vec::new();
    for _ in 0..n {
        let mut sock = tokio::net::TcpStream::connect(addr).await.expect("connect");
        waits.push(tokio::spawn(async move {
            // The server may write (its SETTINGS, a TLS alert) before it closes.
            let mut buf = [0u8; 1024];
            while let Ok(read) = sock.read(&mut buf).await {
                if read == 0 {
                    break;
                }
            }
        }));
    }
    let all = futures::future::join_all(waits);
    tokio::time::timeout(bound, all).await.expect("silent connections closed by the server within the bound");
}

/// Issue 16.5: connections that never sent the HTTP/2 preface stayed open (50 of 50 after 6 s).
#[actix_rt::test]
async fn silent_connections_are_closed_on_the_ext_proc_port() {
    let deadline = Duration::from_millis(300);
    let sb = Sandbox::start(fleet(), None, |o| o.handshake_timeout = deadline).await;
    // A real client, connected first, is still served after the silent ones are gone.
    let mut c = sb.client().await;
    let started = tokio::time::Instant::now();
    silent_connections_closed(sb.epp().ext_proc_addr, 20, deadline + Duration::from_secs(3)).await;
    assert!(started.elapsed() >= deadline);
    silent_connections_closed(sb.epp().health_addr, 5, deadline + Duration::from_secs(3)).await;
    assert!(send(&mut c, &HttpRequest::chat(MODEL, "after")).await.routed.immediate.is_none());
}

/// Issue 16.5 over TLS: a silent TCP connection, and one that completes TLS and then says
/// nothing, are both closed.
#[actix_rt::test]
async fn silent_connections_are_closed_on_the_tls_ext_proc_port() {
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("tls.crt"), key.cert.pem()).expect("crt");
    std::fs::write(dir.path().join("tls.key"), key.signing_key.serialize_pem()).expect("key");
    let deadline = Duration::from_millis(300);
    let cert_dir = dir.path().to_path_buf();
    let sb = Sandbox::start(fleet(), None, move |o| {
        o.tls = switchyard::app::Tls::Files { dir: cert_dir, reload: false };
        o.handshake_timeout = deadline;
    })
    .await;
    let addr = sb.epp().ext_proc_addr;
    silent_connections_closed(addr, 10, deadline + Duration::from_secs(3)).await;

    switchyard::ensure_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(key.cert.der().clone()).expect("root");
    let mut cfg = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let closed = async {
        let mut buf = [0u8; 1024];
        while let Ok(read) = tls.read(&mut buf).await {
            if read == 0 {
                break;
            }
        }
    };
    tokio::time::timeout(deadline + Duration::from_secs(3), closed).await.expect("closed after TLS without a preface");
}

/// Issue 16.5 on the aggregator's control port.
#[actix_rt::test]
async fn silent_connections_are_closed_on_the_control_port() {
    let dir = tempfile::tempdir().expect("dir");
    let (_fleet, file) = vllm_fleet(1, dir.path()).await;
    let deadline = Duration::from_millis(300);
    let agg = start_aggregator(AggregatorOptions { handshake_timeout: deadline, ..AggregatorOptions::local(file) })
        .await
        .expect("aggregator");
    silent_connections_closed(agg.control_addr, 20, deadline + Duration::from_secs(3)).await;
    silent_connections_closed(agg.health_addr, 5, deadline + Duration::from_secs(3)).await;
    agg.shutdown(Duration::from_secs(1)).await;
}
