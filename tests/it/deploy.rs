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
