//! deploy/envoy.yaml expresses what `switchyard gateway` does.

#[test]
fn envoy_config_matches_the_epp_protocol() {
    let text = std::fs::read_to_string(format!("{}/deploy/envoy.yaml", env!("CARGO_MANIFEST_DIR")))
        .expect("deploy/envoy.yaml");
    let v: serde_json::Value = serde_saphyr::from_str(&text).expect("valid YAML");
    let hcm = &v["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    let ext = hcm["http_filters"]
        .as_array()
        .expect("filters")
        .iter()
        .find(|f| f["name"] == "envoy.filters.http.ext_proc")
        .expect("ext_proc filter");
    let mode = &ext["typed_config"]["processing_mode"];
    assert_eq!(mode["request_body_mode"], "FULL_DUPLEX_STREAMED");
    assert_eq!(mode["response_body_mode"], "FULL_DUPLEX_STREAMED");
    assert_eq!(mode["request_header_mode"], "SEND");
    assert_eq!(mode["request_trailer_mode"], "SEND");
    let clusters = v["static_resources"]["clusters"].as_array().expect("clusters");
    let servers = clusters.iter().find(|c| c["name"] == "model-servers").expect("model-servers");
    assert_eq!(servers["type"], "ORIGINAL_DST");
    assert_eq!(servers["original_dst_lb_config"]["http_header_name"], "x-gateway-destination-endpoint");
    let picker = clusters.iter().find(|c| c["name"] == "switchyard-picker").expect("picker cluster");
    assert_eq!(
        picker["health_checks"][0]["grpc_health_check"]["service_name"],
        "envoy.service.ext_proc.v3.ExternalProcessor"
    );
    assert_eq!(
        picker["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"],
        9002
    );
}

/// The chart's CRDs are what the Rust types generate (`switchyard crds --out ...`): a change to
/// the types without regenerating them fails here.
#[test]
fn chart_crds_match_the_rust_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/charts/switchyard/crds");
    let generated = switchyard::discovery::kubernetes::crd::crd_files();
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .expect("crds dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut names: Vec<String> = generated.iter().map(|(n, _)| n.clone()).collect();
    names.sort();
    let hint = "regenerate with `cargo run -- crds --out deploy/charts/switchyard/crds`";
    assert!(!names.is_empty(), "CRDs are generated");
    assert_eq!(on_disk, names, "{hint}");
    for (name, yaml) in generated {
        let text = std::fs::read_to_string(dir.join(&name)).expect("crd file");
        assert!(text == yaml, "{name} differs from the Rust types; {hint}");
    }
}

/// Every metric the dashboard's and the alert rules' expressions name is one a running standalone
/// exports (after a routed request and an error), and the rules have Prometheus's rule-file shape.
#[actix_rt::test]
async fn dashboard_and_alerts_name_only_exported_metrics() {
    use crate::envoy::{HttpRequest, Sandbox, send};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("dashboards/switchyard.json")).expect("dashboard"))
            .expect("dashboard JSON");
    let rules: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(root.join("alerts/switchyard.yaml")).expect("rules"))
            .expect("rules YAML");
    let mut exprs: Vec<String> = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            exprs.push(t["expr"].as_str().expect("expr").to_string());
        }
    }
    let groups = rules["groups"].as_array().expect("groups");
    assert!(!groups.is_empty());
    for g in groups {
        assert!(g["name"].is_string(), "a group has a name");
        for r in g["rules"].as_array().expect("rules") {
            assert!(r["alert"].is_string(), "{r}");
            exprs.push(r["expr"].as_str().expect("expr").to_string());
        }
    }

    let fleet =
        switchyard::sim::FleetConfig { fleet: vec![(switchyard::sim::Flavor::VllmV1, 2)], ..Default::default() };
    let sb = Sandbox::start(fleet, None, |_| {}).await;
    let mut c = sb.client().await;
    let _ = send(&mut c, &HttpRequest::chat("meta-llama/Llama-3.1-8B-Instruct", "hello")).await;
    let bad = HttpRequest { body: b"{".to_vec(), path: "/v1/chat/completions".into(), chunks: 1, ..Default::default() };
    let _ = send(&mut c, &bad).await;
    let text = crate::support::metrics_text(sb.epp().metrics_addr).await;
    let exported: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    for expr in &exprs {
        let names = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .filter(|w| w.starts_with("inference_") || w.starts_with("switchyard_"));
        for name in names {
            assert!(exported.contains(name), "{name} (in {expr}) is not exported\n{text}");
        }
    }
}
