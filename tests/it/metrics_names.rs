//! The metrics ports: upstream's metric names and label sets, and `--metrics-endpoint-auth`.

use std::time::Duration;

use switchyard::metrics_auth::MetricsAuth;
use switchyard::roles::{AggregatorOptions, start_aggregator};

use crate::support::{client, vllm_fleet};

async fn status(req: reqwest::RequestBuilder) -> u16 {
    req.send().await.expect("request").status().as_u16()
}

/// Every role's metrics port answers 401 on `/metrics` and `/debug/*` without the token from the
/// file, and reads a rotated token at the next request.
#[actix_rt::test]
async fn metrics_ports_require_the_bearer_token_when_auth_is_on() {
    let dir = tempfile::tempdir().expect("dir");
    let (_fleet, file) = vllm_fleet(1, dir.path()).await;
    let token = dir.path().join("token");
    std::fs::write(&token, "first-token\n").expect("token");
    let auth = MetricsAuth::bearer_token_file(&token);
    let standalone = switchyard::app::start_standalone(switchyard::app::StandaloneOptions {
        host: [127, 0, 0, 1].into(),
        grpc_port: 0,
        grpc_health_port: 0,
        metrics_port: 0,
        pool: switchyard::discovery::PoolSource::file(file.clone()),
        tls: switchyard::app::Tls::Plaintext,
        metrics_auth: auth.clone(),
        ..Default::default()
    })
    .await
    .expect("standalone");
    let agg = start_aggregator(AggregatorOptions { metrics_auth: auth, ..AggregatorOptions::local(file) })
        .await
        .expect("aggregator");
    let c = client();
    for addr in [standalone.metrics_addr, agg.metrics_addr] {
        let metrics = format!("http://{addr}/metrics");
        let level = format!("http://{addr}/debug/log-level");
        assert_eq!(status(c.get(&metrics)).await, 401, "{addr}: no token");
        assert_eq!(status(c.get(&metrics).bearer_auth("wrong")).await, 401, "{addr}: wrong token");
        assert_eq!(status(c.put(&level).body("info")).await, 401, "{addr}: /debug/* is guarded too");
        let ok = c.get(&metrics).bearer_auth("first-token").send().await.expect("metrics");
        assert_eq!(ok.status().as_u16(), 200);
        assert!(ok.text().await.expect("text").trim_end().ends_with("# EOF"));
    }
    // Rotation applies at the next request, without a restart.
    std::fs::write(&token, "second-token").expect("rotate");
    let metrics = format!("http://{}/metrics", standalone.metrics_addr);
    assert_eq!(status(c.get(&metrics).bearer_auth("first-token")).await, 401);
    assert_eq!(status(c.get(&metrics).bearer_auth("second-token")).await, 200);
    agg.shutdown(Duration::from_secs(1)).await;
    standalone.shutdown(Duration::from_secs(1)).await;
}
