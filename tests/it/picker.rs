//! The standalone picker driven over gRPC exactly as Envoy drives it, against sim endpoints.

use std::sync::atomic::Ordering;
use std::time::Duration;

use switchyard::sim::{self, Flavor};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::envoy::{HttpRequest, Sandbox, send};
use crate::support::client;

fn fleet(n: usize) -> sim::FleetConfig {
    sim::FleetConfig { fleet: vec![(Flavor::VllmV1, n)], adapters: vec!["sql-lora".into()], ..Default::default() }
}

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

#[actix_rt::test]
async fn routes_a_chat_request_end_to_end() {
    let sb = Sandbox::start(fleet(3), None, |_| {}).await;
    let mut c = sb.client().await;
    let req = HttpRequest {
        headers: vec![
            ("x-request-id".into(), "req-1".into()),
            ("x-gateway-destination-endpoint".into(), "1.2.3.4:1".into()),
        ],
        ..HttpRequest::chat(MODEL, "hello there")
    };
    let mut ex = send(&mut c, &req).await;
    let r = &ex.routed;
    assert!(r.immediate.is_none(), "{:?}", r.immediate);
    let dest = r.set_headers.get("x-gateway-destination-endpoint").expect("destination header").clone();
    assert_eq!(r.metadata_destination.as_deref(), Some(dest.as_str()), "header and envoy.lb metadata agree");
    assert!(r.clear_route_cache);
    assert!(sb.sim_by_addr(&dest).is_some(), "{dest} is a pool endpoint, not the client's value");
    assert_eq!(r.body, req.body, "unchanged body is forwarded byte for byte");
    assert_eq!(r.set_headers.get("content-length"), Some(&req.body.len().to_string()));
    for h in ["x-gateway-inference-objective", "x-gateway-model-name-rewrite", "x-gateway-destination-endpoint-subset"]
    {
        assert!(r.remove_headers.iter().any(|x| x == h), "{h} is stripped before the model server");
    }
    // Forward to the chosen sim server, then play the response phase.
    let resp = client()
        .post(format!("http://{dest}/v1/chat/completions"))
        .body(r.body.clone())
        .send()
        .await
        .expect("upstream");
    assert_eq!(resp.headers()["x-sim-server"], sb.sim_by_addr(&dest).expect("sim").name.as_str());
    let body = resp.bytes().await.expect("body").to_vec();
    let (a, b) = body.split_at(body.len() / 2);
    let seen = ex.respond(200, "application/json", &[a.to_vec(), b.to_vec()], Some(&dest)).await;
    let v: serde_json::Value = serde_json::from_slice(&seen).expect("json");
    assert!(v["usage"]["prompt_tokens"].as_u64().expect("usage") > 0);
}

#[actix_rt::test]
async fn model_rewrite_and_streamed_responses() {
    let sb = Sandbox::start(fleet(2), None, |_| {}).await;
    let mut c = sb.client().await;
    let mut req = HttpRequest::chat("my-alias", "tell me a story");
    req.headers.push(("x-gateway-model-name-rewrite".into(), "sql-lora".into()));
    let body: serde_json::Value = serde_json::from_slice(&req.body).expect("json");
    let mut stream_body = body.clone();
    stream_body["stream"] = serde_json::json!(true);
    stream_body["stream_options"] = serde_json::json!({"include_usage": true});
    req.body = stream_body.to_string().into_bytes();
    let mut ex = send(&mut c, &req).await;
    let forwarded: serde_json::Value = serde_json::from_slice(&ex.routed.body).expect("json");
    assert_eq!(forwarded["model"], "sql-lora", "the model server sees the rewritten model");
    let dest = ex.routed.set_headers["x-gateway-destination-endpoint"].clone();
    let mut resp = client()
        .post(format!("http://{dest}/v1/chat/completions"))
        .body(ex.routed.body.clone())
        .send()
        .await
        .expect("upstream");
    let mut chunks = Vec::new();
    while let Some(c) = resp.chunk().await.expect("chunk") {
        chunks.push(c.to_vec());
    }
    assert!(chunks.len() > 2, "the sim streams");
    let seen = ex.respond(200, "text/event-stream", &chunks, Some(&dest)).await;
    let text = String::from_utf8(seen).expect("utf8");
    assert!(text.contains("\"model\":\"my-alias\""), "the client sees its own model name: {text}");
    assert!(!text.contains("sql-lora"));
    assert!(text.ends_with("data: [DONE]\n\n"));
}

#[actix_rt::test]
async fn errors_use_upstream_codes_and_format() {
    let sb = Sandbox::start(fleet(2), None, |o| o.picker.max_body_bytes = 4096).await;
    let mut c = sb.client().await;
    let cases = [
        (
            HttpRequest {
                body: b"{not json".to_vec(),
                path: "/v1/chat/completions".into(),
                chunks: 1,
                ..Default::default()
            },
            400,
            "inference error: BadRequest - error unmarshaling",
        ),
        (
            HttpRequest {
                body: br#"{"messages":[{"role":"user","content":"x"}]}"#.to_vec(),
                path: "/v1/chat/completions".into(),
                chunks: 1,
                ..Default::default()
            },
            400,
            "inference error: BadRequest - model not found in request body",
        ),
        (HttpRequest::chat(MODEL, &"x".repeat(5000)), 413, "larger than 4096 bytes"),
        (
            HttpRequest { subset: Some(vec![]), ..HttpRequest::chat(MODEL, "hi") },
            503,
            "inference error: ServiceUnavailable - failed to find endpoint candidates",
        ),
        (
            HttpRequest { subset: Some(vec!["10.9.9.9:8000".into()]), ..HttpRequest::chat(MODEL, "hi") },
            503,
            "ServiceUnavailable",
        ),
    ];
    for (req, status, body) in cases {
        let ex = send(&mut c, &req).await;
        let (got_status, got_body) =
            ex.routed.immediate.clone().unwrap_or_else(|| panic!("expected {status}, got a route"));
        assert_eq!(got_status, status, "{got_body}");
        assert!(got_body.contains(body), "{got_body}");
    }
    // The stream after an error is closed; the server keeps serving new ones.
    let ex = send(&mut c, &HttpRequest::chat(MODEL, "still fine")).await;
    assert!(ex.routed.immediate.is_none());
}

#[actix_rt::test]
async fn subset_hint_restricts_candidates() {
    let sb = Sandbox::start(fleet(3), None, |_| {}).await;
    let mut c = sb.client().await;
    let only = sb.fleet[1].addr.to_string();
    for _ in 0..5 {
        let ex =
            send(&mut c, &HttpRequest { subset: Some(vec![only.clone()]), ..HttpRequest::chat(MODEL, "hi") }).await;
        assert_eq!(ex.routed.set_headers["x-gateway-destination-endpoint"], only);
    }
}

#[actix_rt::test]
async fn sheddable_requests_get_429_when_saturated() {
    // Every endpoint looks saturated to a detector whose staleness threshold is 1 ns.
    let cfg = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n- type: queue-scorer\n- type: utilization-detector\n  parameters: {metricsStalenessThreshold: 1ns}\nschedulingProfiles:\n- name: default\n  plugins: [{pluginRef: queue-scorer}]\n";
    let sb = Sandbox::start(fleet(2), Some(cfg), |o| {
        o.picker.objectives = [("batch".to_string(), -1), ("critical".to_string(), 10)].into_iter().collect();
    })
    .await;
    let mut c = sb.client().await;
    let mut req = HttpRequest::chat(MODEL, "low priority");
    req.headers.push(("x-gateway-inference-objective".into(), "batch".into()));
    let ex = send(&mut c, &req).await;
    let (status, body) = ex.routed.immediate.expect("shed");
    assert_eq!(status, 429);
    assert_eq!(body, "inference error: ResourceExhausted - system saturated, sheddable request dropped");
    req.headers[0].1 = "critical".into();
    assert!(send(&mut c, &req).await.routed.immediate.is_none(), "priority >= 0 is never shed");
}

#[actix_rt::test]
async fn header_only_requests_and_broken_streams() {
    let sb = Sandbox::start(fleet(2), None, |_| {}).await;
    let mut c = sb.client().await;
    let ex = send(&mut c, &HttpRequest { path: "/v1/models".into(), ..Default::default() }).await;
    let dest = ex.routed.set_headers.get("x-gateway-destination-endpoint").expect("routed").clone();
    assert!(sb.sim_by_addr(&dest).is_some());

    // A body before any headers is a protocol violation: that stream fails, nothing else does.
    use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Msg;
    use envoy_types::pb::envoy::service::ext_proc::v3::{HttpBody, ProcessingRequest};
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut inbound = c.process(tokio_stream::wrappers::ReceiverStream::new(rx)).await.expect("open").into_inner();
    tx.send(ProcessingRequest {
        request: Some(Msg::RequestBody(HttpBody { body: b"x".to_vec(), end_of_stream: true, ..Default::default() })),
        ..Default::default()
    })
    .await
    .expect("send");
    let err = inbound.message().await.expect_err("stream error");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    // A client that goes away mid-body leaves nothing in flight.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let _inbound = c.process(tokio_stream::wrappers::ReceiverStream::new(rx)).await.expect("open").into_inner();
    drop(tx);
    assert!(send(&mut c, &HttpRequest::chat(MODEL, "after")).await.routed.immediate.is_none());
}

#[actix_rt::test]
async fn health_reports_liveness_and_readiness() {
    let sb = Sandbox::start(fleet(1), None, |_| {}).await;
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", sb.epp().health_addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut h = HealthClient::new(ch);
    for (service, want) in [
        ("liveness", ServingStatus::Serving),
        ("readiness", ServingStatus::Serving),
        ("inference-extension", ServingStatus::Serving),
        ("envoy.service.ext_proc.v3.ExternalProcessor", ServingStatus::Serving),
    ] {
        let r = h.check(tonic_health::pb::HealthCheckRequest { service: service.into() }).await.expect("check");
        assert_eq!(r.into_inner().status, want as i32, "{service}");
    }
    assert_eq!(
        h.check(tonic_health::pb::HealthCheckRequest { service: "nope".into() }).await.expect_err("unknown").code(),
        tonic::Code::NotFound
    );
    sb.epp().readiness.set_draining();
    for service in ["readiness", "inference-extension"] {
        let r = h.check(tonic_health::pb::HealthCheckRequest { service: service.into() }).await.expect("check");
        assert_eq!(r.into_inner().status, ServingStatus::NotServing as i32, "draining is not ready: {service}");
    }
}

#[actix_rt::test]
async fn prefix_affinity_across_requests() {
    let sb = Sandbox::start(fleet(4), None, |_| {}).await;
    let mut c = sb.client().await;
    let system = "You are a meticulous assistant that answers in JSON. ".repeat(60);
    let mut dests = Vec::new();
    for i in 0..6 {
        let body = serde_json::json!({"model": MODEL, "messages": [{"role": "system", "content": system}, {"role": "user", "content": format!("q{i}")}], "max_tokens": 2});
        let req = HttpRequest {
            path: "/v1/chat/completions".into(),
            body: body.to_string().into_bytes(),
            chunks: 2,
            ..Default::default()
        };
        let ex = send(&mut c, &req).await;
        dests.push(ex.routed.set_headers["x-gateway-destination-endpoint"].clone());
        // The stream ends here; the next pick must see no load left by it (affinity, not load).
        drop(ex);
        let picker = &sb.epp().picker;
        crate::support::wait_for("the request no longer in flight", Duration::from_secs(5), || {
            let idle = picker.view.load().counters.iter().all(|c| c.inflight_requests.load(Ordering::Relaxed) == 0);
            async move { idle.then_some(()) }
        })
        .await;
    }
    assert!(dests.iter().all(|d| *d == dests[0]), "shared system prompt sticks to one endpoint: {dests:?}");
}

#[actix_rt::test]
async fn ext_proc_over_tls_with_a_mounted_certificate() {
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("tls.crt"), key.cert.pem()).expect("crt");
    std::fs::write(dir.path().join("tls.key"), key.signing_key.serialize_pem()).expect("key");
    let cert_dir = dir.path().to_path_buf();
    let sb =
        Sandbox::start(fleet(1), None, move |o| o.tls = switchyard::app::Tls::Files { dir: cert_dir, reload: true })
            .await;
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(key.cert.pem()))
        .domain_name("localhost");
    let ch = tonic::transport::Endpoint::from_shared(format!("https://{}", sb.epp().ext_proc_addr))
        .expect("uri")
        .tls_config(tls)
        .expect("tls")
        .connect()
        .await
        .expect("TLS handshake");
    let mut c =
        envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient::new(ch);
    let ex = send(&mut c, &HttpRequest::chat(MODEL, "over tls")).await;
    assert!(ex.routed.set_headers.contains_key("x-gateway-destination-endpoint"));
    // A new certificate written to the directory is picked up without a restart.
    let next = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    std::fs::write(dir.path().join("tls.crt"), next.cert.pem()).expect("crt");
    std::fs::write(dir.path().join("tls.key"), next.signing_key.serialize_pem()).expect("key");
    let addr = sb.epp().ext_proc_addr;
    let connect_with = |pem: String| async move {
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(pem))
            .domain_name("localhost");
        tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
            .expect("uri")
            .tls_config(tls)
            .expect("tls")
            .connect()
            .await
    };
    crate::support::wait_for("the reloaded certificate", Duration::from_secs(10), || {
        let pem = next.cert.pem();
        async move { connect_with(pem).await.ok().map(|_| ()) }
    })
    .await;
    assert!(connect_with(key.cert.pem()).await.is_err(), "the old certificate is no longer served");
    // Plaintext clients are refused on a TLS port.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{}", sb.epp().ext_proc_addr))
        .expect("uri")
        .connect()
        .await;
    match plain {
        // Refused at connect (the TLS listener rejects the HTTP/2 preface)...
        Err(_) => {}
        // ...or the connection is set up lazily and the first call fails: no stream is served.
        Ok(ch) => {
            let mut c =
                envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient::new(
                    ch,
                );
            let (_tx, rx) = tokio::sync::mpsc::channel(1);
            assert!(c.process(tokio_stream::wrappers::ReceiverStream::new(rx)).await.is_err(), "plaintext served");
        }
    }
}

#[actix_rt::test]
async fn operator_metrics_are_exposed() {
    let sb = Sandbox::start(fleet(2), None, |_| {}).await;
    let mut c = sb.client().await;
    let ex = send(&mut c, &HttpRequest::chat(MODEL, "count me")).await;
    let dest = ex.routed.set_headers["x-gateway-destination-endpoint"].clone();
    let name = sb.sim_by_addr(&dest).expect("sim").name.clone();
    let _ = send(
        &mut c,
        &HttpRequest { body: b"{".to_vec(), path: "/v1/chat/completions".into(), chunks: 1, ..Default::default() },
    )
    .await;
    let text = crate::support::metrics_text(sb.epp().metrics_addr).await;
    assert!(text.contains(&format!("switchyard_picker_picks_total{{endpoint=\"{name}\"}} 1")), "{text}");
    assert!(
        text.contains(
            "inference_objective_request_error_total{model_name=\"\",target_model_name=\"\",error_code=\"BadRequest\"} 1"
        ),
        "{text}"
    );
    assert!(text.contains("switchyard_scrape_duration_seconds_count{endpoint=\"sim-vllm-v1-0\"}"), "{text}");
    assert!(text.contains("inference_extension_scheduler_e2e_duration_seconds_count 1"));
    assert!(text.contains("switchyard_picker_snapshot_endpoints 2"));
    let f = crate::metrics_names::families(&text);
    let upstream: Vec<String> = ["model_name", "priority", "target_model_name"].map(String::from).to_vec();
    assert!(f["inference_objective_request"].contains(&upstream), "{text}");
    assert!(text.contains("inference_extension_scheduler_attempts_total{status=\"success\"} 1"), "{text}");
    assert!(text.trim_end().ends_with("# EOF"));
}
