//! OpenTelemetry traces across processes, received by a real OTLP/gRPC trace service run in the
//! test: an aggregator process and a picker process export to it; a request routed with a
//! `traceparent` continues the caller's trace, and the control plane's spans are linked.

use std::time::Duration;

use switchyard::tools::otlp_sink::Collector;

use crate::envoy::{HttpRequest, send};
use crate::etcd::free_port;
use crate::support::{Proc, aggregator_args, strings, vllm_fleet, wait_for};

/// A role exporting every span to the test's collector (it flushes every 50 ms).
fn spawn(args: &[String], otlp_port: u16) -> Proc {
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{otlp_port}")),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio".into()),
        ("OTEL_TRACES_SAMPLER_ARG", "1.0".into()),
        ("OTEL_BSP_SCHEDULE_DELAY", "50".into()),
        ("OTEL_SERVICE_NAME", String::new()),
    ];
    Proc::spawn(args, &env)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[actix_rt::test]
async fn a_routed_request_and_the_control_plane_arrive_as_linked_spans() {
    let (collector, otlp) = Collector::start("127.0.0.1:0".parse().expect("addr")).await.expect("otlp sink");
    let otlp = otlp.port();
    let dir = tempfile::tempdir().expect("dir");
    let (_fleet, file) = vllm_fleet(2, dir.path()).await;
    let control = free_port();
    let _aggregator = spawn(&aggregator_args(control, free_port(), &file.display().to_string()), otlp);
    let grpc = free_port();
    let _picker = spawn(
        &strings(&[
            "picker",
            "--listen-host",
            "127.0.0.1",
            "--grpc-port",
            &grpc.to_string(),
            "--grpc-health-port",
            &free_port().to_string(),
            "--metrics-port",
            &free_port().to_string(),
            "--secure-serving=false",
            "--aggregators",
            &format!("127.0.0.1:{control}"),
            "--log",
            "warn",
        ]),
        otlp,
    );
    // Both processes export: the aggregator scrapes and publishes, the picker applies updates.
    wait_for("scrape, publish and apply_update spans", Duration::from_secs(20), || {
        let spans = collector.spans();
        let has = |service: &str, name: &str| spans.iter().any(|s| s.service == service && s.name == name);
        let ok = has("switchyard-aggregator", "scrape")
            && has("switchyard-aggregator", "publish")
            && has("switchyard-picker", "apply_update");
        async move { ok.then_some(()) }
    })
    .await;

    let url = format!("http://127.0.0.1:{grpc}");
    let ext_proc = wait_for("the picker serves", Duration::from_secs(20), || {
        let url = url.clone();
        async move {
            envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient::connect(
                url,
            )
            .await
            .ok()
        }
    })
    .await;
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let req = HttpRequest {
        headers: vec![("traceparent".into(), format!("00-{caller_trace}-{caller_span}-01"))],
        ..HttpRequest::chat("meta-llama/Llama-3.1-8B-Instruct", "hello")
    };
    let routed = wait_for("a routed request", Duration::from_secs(20), || {
        let req = req.clone();
        let mut c = ext_proc.clone();
        async move {
            let ex = send(&mut c, &req).await;
            ex.routed.set_headers.contains_key("x-gateway-destination-endpoint").then_some(ex)
        }
    })
    .await;
    drop(ext_proc);
    // The model server gets the caller's trace, continued by the picker's span.
    let downstream = routed.routed.set_headers.get("traceparent").expect("traceparent injected").clone();
    let destination = routed.routed.set_headers.get("x-gateway-destination-endpoint").cloned();
    // The proxy ends the stream (the request span ends with it).
    drop(routed);
    assert!(downstream.starts_with(&format!("00-{caller_trace}-")), "{downstream}");
    assert!(!downstream.contains(caller_span), "a child of the caller's span, not the caller's span");

    let (request, schedule) = wait_for("the request's spans", Duration::from_secs(20), || {
        let spans = collector.spans();
        let request = spans.iter().find(|s| s.name == "gateway.request" && hex(&s.trace_id) == caller_trace).cloned();
        let schedule = request
            .as_ref()
            .and_then(|r| spans.iter().find(|s| s.name == "schedule" && s.parent_span_id == r.span_id).cloned());
        async move { Some((request?, schedule?)) }
    })
    .await;
    assert_eq!(request.service, "switchyard-picker");
    assert_eq!(hex(&request.parent_span_id), caller_span, "continues the caller's span");
    assert!(downstream.contains(&hex(&request.span_id)), "the model server's parent is the request span");
    let chosen = schedule.attributes.get("chosen").expect("chosen endpoint");
    assert_eq!(Some(chosen), destination.as_ref(), "the span names the endpoint the request went to");
    for key in ["candidates", "snapshot_epoch", "snapshot_seq", "metrics_age_ms"] {
        assert!(schedule.attributes.contains_key(key), "schedule span lacks {key}: {:?}", schedule.attributes);
    }
    assert!(
        schedule.attributes.keys().any(|k| k.starts_with("score.")),
        "per-scorer scores: {:?}",
        schedule.attributes
    );
    // "Why did it go there" is one click from the publish that delivered the metrics used (it
    // may still be on its way from the aggregator).
    let (trace, span) = schedule.links.first().cloned().expect("schedule links to a publish span");
    let publish = wait_for("the linked publish span", Duration::from_secs(10), || {
        let found = collector.spans().into_iter().find(|s| s.trace_id == trace && s.span_id == span);
        async move { found }
    })
    .await;
    assert_eq!((publish.service.as_str(), publish.name.as_str()), ("switchyard-aggregator", "publish"));
    let spans = collector.spans();
    let linked_apply = spans.iter().filter(|s| s.name == "apply_update").any(|apply| {
        apply
            .links
            .iter()
            .any(|(t, sp)| spans.iter().any(|s| &s.trace_id == t && &s.span_id == sp && s.name == "publish"))
    });
    assert!(linked_apply, "a picker's apply_update links to the leader's publish span");
    let scrape = spans.iter().find(|s| s.name == "scrape").expect("scrape span");
    for key in ["endpoint", "engine", "status"] {
        assert!(scrape.attributes.contains_key(key), "scrape span lacks {key}: {:?}", scrape.attributes);
    }
}
