//! `switchyard gateway`: end to end through the picker, fallbacks, failure modes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;
use switchyard::gateway::{self, FailureMode, GatewayConfig};
use switchyard::sim::{self, Flavor};
use switchyard::tools::loadgen::FixedExtProc;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

use crate::envoy::Sandbox;
use crate::support::client;

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

async fn gateway(ext_proc: Vec<String>, mode: FailureMode, pool: Vec<String>) -> (SocketAddr, watch::Sender<bool>) {
    let (stop, rx) = watch::channel(false);
    let cfg = GatewayConfig { ext_proc, failure_mode: mode, pool, message_timeout: Duration::from_secs(5) };
    let (addr, _task) = gateway::start(cfg, "127.0.0.1:0".parse().expect("addr"), rx).await.expect("gateway");
    (addr, stop)
}

#[actix_rt::test]
async fn requests_flow_through_gateway_and_picker() {
    let sb = Sandbox::start(
        sim::FleetConfig { fleet: vec![(Flavor::VllmV1, 2), (Flavor::Sglang, 1)], ..Default::default() },
        None,
        |_| {},
    )
    .await;
    let pool = sb.fleet.iter().map(|h| h.addr.to_string()).collect();
    let (gw, _stop) = gateway(vec![format!("http://{}", sb.epp().ext_proc_addr)], FailureMode::Close, pool).await;
    let url = format!("http://{gw}/v1/chat/completions");
    let body = serde_json::json!({"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 5});
    let resp = client().post(&url).json(&body).send().await.expect("send");
    assert_eq!(resp.status(), 200);
    let server = resp.headers()["x-sim-server"].to_str().expect("str").to_string();
    assert!(sb.fleet.iter().any(|h| h.name == server));
    assert_eq!(resp.headers()["x-went-into-resp-headers"], "true", "response header mutations applied");
    let v: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(v["model"], MODEL);

    // Streaming passes through chunk by chunk.
    let mut stream_body = body.clone();
    stream_body["stream"] = serde_json::json!(true);
    stream_body["max_tokens"] = serde_json::json!(30);
    let mut resp = client().post(&url).json(&stream_body).send().await.expect("send");
    let mut chunks = 0;
    while resp.chunk().await.expect("chunk").is_some() {
        chunks += 1;
    }
    assert!(chunks > 5, "tokens arrive as separate chunks: {chunks}");

    // Immediate responses reach the client as they are.
    let resp = client().post(&url).body("{broken").send().await.expect("send");
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.expect("text").starts_with("inference error: BadRequest - "));
}

#[tokio::test]
async fn falls_back_to_the_next_endpoint_and_reports_served() {
    let live = sim::start_fleet(&sim::FleetConfig { fleet: vec![(Flavor::VllmV1, 1)], ..Default::default() })
        .await
        .expect("fleet");
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let served = Arc::new(Mutex::new(Vec::new()));
    // Two destinations, the first unreachable; record what the gateway reports as served.
    let svc = FixedExtProc { destination: format!("{dead},{}", live[0].addr), served: Some(served.clone()) };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let ext_addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ExternalProcessorServer::new(svc))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let (gw, _stop) = gateway(vec![format!("http://{ext_addr}")], FailureMode::Close, vec![]).await;
    let body = serde_json::json!({"model": MODEL, "prompt": "hi", "max_tokens": 2});
    let resp = client().post(format!("http://{gw}/v1/completions")).json(&body).send().await.expect("send");
    assert_eq!(resp.status(), 200);
    let _ = resp.bytes().await;
    assert!(
        served.lock().expect("lock").iter().all(|s| *s == live[0].addr.to_string()),
        "served = the endpoint that answered"
    );
    assert!(!served.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn failure_modes_when_ext_proc_is_down() {
    let live = sim::start_fleet(&sim::FleetConfig { fleet: vec![(Flavor::VllmV1, 1)], ..Default::default() })
        .await
        .expect("fleet");
    let down = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let pool = vec![live[0].addr.to_string()];
    let body = serde_json::json!({"model": MODEL, "prompt": "hi", "max_tokens": 2});
    let (open, _s1) = gateway(vec![format!("http://{down}")], FailureMode::Open, pool.clone()).await;
    let resp = client().post(format!("http://{open}/v1/completions")).json(&body).send().await.expect("send");
    assert_eq!(resp.status(), 200, "FailOpen goes to a pool endpoint");
    let (close, _s2) = gateway(vec![format!("http://{down}")], FailureMode::Close, pool).await;
    let resp = client().post(format!("http://{close}/v1/completions")).json(&body).send().await.expect("send");
    assert_eq!(resp.status(), 503, "FailClose answers 503");
}
