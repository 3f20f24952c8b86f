use kube::Resource;
use serde_json::{Value, json};

use super::*;

/// The seed document's example pool.
const SEED_POOL: &str = "\
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata:
  name: vllm-llama3-8b-instruct
  namespace: default
spec:
  selector:
    matchLabels:
      app: vllm-llama3-8b-instruct
  targetPorts:
  - number: 8000
  - number: 8001
  - number: 8002
  appProtocol: kubernetes.io/h2c
  endpointPickerRef:
    name: vllm-llama3-8b-instruct-epp
    port:
      number: 9002
    failureMode: FailOpen
status:
  parents:
  - parentRef: {group: gateway.networking.k8s.io, kind: Gateway, name: inference-gateway}
    conditions: [{type: Accepted, status: 'True'}]
";

fn by_name(name: &str) -> CustomResourceDefinition {
    crds().into_iter().find(|c| c.metadata.name.as_deref() == Some(name)).expect("crd present")
}

/// The openAPIV3Schema of the CRD's only version, as JSON.
fn schema(crd: &CustomResourceDefinition) -> Value {
    assert_eq!(crd.spec.versions.len(), 1);
    let schema = crd.spec.versions[0].schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref()).expect("schema");
    serde_json::to_value(schema).expect("schema serializes")
}

fn required(schema: &Value, pointer: &str) -> Vec<String> {
    let at = schema.pointer(pointer).unwrap_or_else(|| panic!("{pointer} missing in {schema:#}"));
    serde_json::from_value(at["required"].clone()).unwrap_or_default()
}

fn bounds(schema: &Value) -> (Option<f64>, Option<f64>) {
    (schema["minimum"].as_f64(), schema["maximum"].as_f64())
}

#[test]
fn names_groups_versions_and_scope() {
    let cases = [
        (
            "inferencepools.inference.networking.k8s.io",
            "inference.networking.k8s.io",
            "v1",
            "InferencePool",
            "inferencepools",
        ),
        (
            "inferencepools.inference.networking.x-k8s.io",
            "inference.networking.x-k8s.io",
            "v1alpha2",
            "InferencePool",
            "inferencepools",
        ),
        (
            "inferenceobjectives.inference.networking.x-k8s.io",
            "inference.networking.x-k8s.io",
            "v1alpha2",
            "InferenceObjective",
            "inferenceobjectives",
        ),
    ];
    for (name, group, version, kind, plural) in cases {
        let crd = by_name(name);
        assert_eq!(crd.spec.group, group);
        assert_eq!(crd.spec.names.kind, kind);
        assert_eq!(crd.spec.names.plural, plural);
        assert_eq!(crd.spec.scope, "Namespaced");
        let v = &crd.spec.versions[0];
        assert_eq!((v.name.as_str(), v.served, v.storage), (version, true, true));
        assert!(v.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(), "{name}: status subresource");
    }
    let ga = by_name("inferencepools.inference.networking.k8s.io");
    assert_eq!(ga.spec.names.short_names, Some(vec!["infpool".to_string()]));
    let approval = ga.metadata.annotations.as_ref().and_then(|a| a.get("api-approved.kubernetes.io"));
    assert!(approval.is_some_and(|url| url.starts_with("https://")), "protected group needs approval: {approval:?}");
    assert_eq!(v1::InferencePool::api_version(&()), "inference.networking.k8s.io/v1");
    assert_eq!(v1alpha2::InferencePool::api_version(&()), "inference.networking.x-k8s.io/v1alpha2");
    assert_eq!(v1alpha2::InferenceObjective::plural(&()), "inferenceobjectives");
}

#[test]
fn seed_pool_round_trips() {
    let pool: v1::InferencePool = serde_saphyr::from_str(SEED_POOL).expect("seed pool parses");
    let ports: Vec<i32> = pool.spec.target_ports.iter().map(|p| p.number).collect();
    assert_eq!(ports, [8000, 8001, 8002]);
    assert_eq!(pool.spec.app_protocol, Some(v1::AppProtocol::H2c));
    let epp = pool.spec.endpoint_picker_ref.as_ref().expect("ref");
    assert_eq!(
        (epp.kind.as_str(), epp.failure_mode, epp.port),
        ("Service", FailureMode::FailOpen, Some(v1::Port { number: 9002 }))
    );
    assert_eq!(pool.status.as_ref().map(|s| s.parents.len()), Some(1));

    let yaml = serde_saphyr::to_string(&pool).expect("serializes");
    let again: v1::InferencePool = serde_saphyr::from_str(&yaml).expect("reparses");
    assert_eq!(again, pool);
    // Nothing the EPP does not type is lost either (status is passed through).
    let original: Value = serde_saphyr::from_str(SEED_POOL).expect("yaml");
    let mut written = serde_json::to_value(&pool).expect("json");
    written["spec"]["endpointPickerRef"].as_object_mut().expect("ref").remove("kind");
    assert_eq!(written, original);
}

#[test]
fn defaults_fill_unset_fields() {
    let pool: v1::InferencePool = serde_json::from_value(json!({
        "apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
        "metadata": {"name": "p"},
        "spec": {"selector": {"matchLabels": {}}, "targetPorts": [{"number": 8000}], "endpointPickerRef": {"name": "epp"}}
    }))
    .expect("valid");
    let epp = pool.spec.endpoint_picker_ref.expect("ref");
    assert_eq!((epp.kind.as_str(), epp.failure_mode, epp.group), ("Service", FailureMode::FailClose, None));
    assert_eq!(pool.spec.app_protocol, None);

    let old: v1alpha2::InferencePool = serde_json::from_value(json!({
        "apiVersion": "inference.networking.x-k8s.io/v1alpha2", "kind": "InferencePool",
        "metadata": {"name": "p"},
        "spec": {"selector": {"app": "x"}, "targetPortNumber": 8000, "extensionRef": {"name": "epp", "portNumber": 9002}},
        "status": {"parent": [{"parentRef": {"name": "gw"}}]}
    }))
    .expect("valid");
    let ext = old.spec.extension_ref.as_ref().expect("ref");
    assert_eq!((ext.kind.as_str(), ext.port_number, ext.failure_mode), ("Service", Some(9002), FailureMode::FailClose));
    assert_eq!(old.status.as_ref().map(|s| s.parents.len()), Some(1));
    assert_eq!(serde_json::to_value(&old).expect("json")["status"]["parent"][0]["parentRef"]["name"], "gw");

    let objective: v1alpha2::InferenceObjective = serde_json::from_value(json!({
        "apiVersion": "inference.networking.x-k8s.io/v1alpha2", "kind": "InferenceObjective",
        "metadata": {"name": "o"}, "spec": {"poolRef": {"name": "p"}}
    }))
    .expect("valid");
    assert_eq!(objective.spec.priority, None);
    assert_eq!(objective.spec.pool_ref.group.as_deref(), Some(POOL_GROUP_V1));
}

#[test]
fn schemas_mark_required_fields_and_bounds() {
    let ga = schema(&by_name("inferencepools.inference.networking.k8s.io"));
    let mut spec_required = required(&ga, "/properties/spec");
    spec_required.sort();
    assert_eq!(spec_required, ["selector", "targetPorts"]);
    assert_eq!(required(&ga, ""), ["spec"]);
    assert_eq!(required(&ga, "/properties/spec/properties/selector"), ["matchLabels"]);
    let ports = &ga["properties"]["spec"]["properties"]["targetPorts"];
    assert_eq!((&ports["minItems"], &ports["maxItems"]), (&json!(1), &json!(8)));
    assert_eq!(ports["x-kubernetes-validations"][0]["message"], "port number must be unique");
    assert_eq!(required(&ports["items"], ""), ["number"]);
    let number = &ports["items"]["properties"]["number"];
    assert_eq!(bounds(number), (Some(1.0), Some(65535.0)));
    assert_eq!(number["format"], "int32");
    let protocol = &ga["properties"]["spec"]["properties"]["appProtocol"];
    // Optional enums also list null (kube marks them nullable).
    assert_eq!(protocol["enum"], json!(["http", "kubernetes.io/h2c", null]));
    let epp = &ga["properties"]["spec"]["properties"]["endpointPickerRef"];
    assert_eq!(required(epp, ""), ["name"]);
    assert_eq!(epp["properties"]["kind"]["default"], "Service");
    assert_eq!(epp["properties"]["failureMode"]["enum"], json!(["FailOpen", "FailClose"]));
    let parents = &ga["properties"]["status"]["properties"]["parents"];
    assert_eq!(parents["items"]["x-kubernetes-preserve-unknown-fields"], true);

    let old = schema(&by_name("inferencepools.inference.networking.x-k8s.io"));
    let mut old_required = required(&old, "/properties/spec");
    old_required.sort();
    assert_eq!(old_required, ["selector", "targetPortNumber"]);
    let port = &old["properties"]["spec"]["properties"]["targetPortNumber"];
    assert_eq!(bounds(port), (Some(1.0), Some(65535.0)));
    assert_eq!(old["properties"]["spec"]["properties"]["selector"]["additionalProperties"]["type"], "string");
    assert_eq!(required(&old, "/properties/spec/properties/extensionRef"), ["name"]);
    assert_eq!(old["properties"]["status"]["properties"]["parent"]["type"], "array");

    let objective = schema(&by_name("inferenceobjectives.inference.networking.x-k8s.io"));
    assert_eq!(required(&objective, "/properties/spec"), ["poolRef"]);
    assert_eq!(required(&objective, "/properties/spec/properties/poolRef"), ["name"]);
    let group = &objective["properties"]["spec"]["properties"]["poolRef"]["properties"]["group"];
    assert_eq!(group["default"], POOL_GROUP_V1);
}

#[test]
fn crd_yaml_is_deterministic_and_parses_back() {
    let files = crd_files();
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "inference.networking.k8s.io_inferencepools.yaml",
            "inference.networking.x-k8s.io_inferencepools.yaml",
            "inference.networking.x-k8s.io_inferenceobjectives.yaml",
        ]
    );
    for ((name, yaml), crd) in files.iter().zip(crds()) {
        let parsed: CustomResourceDefinition = serde_saphyr::from_str(yaml).expect("file parses");
        assert_eq!(parsed, crd, "{name}");
        assert!(yaml.starts_with("apiVersion: apiextensions.k8s.io/v1\n"), "{name}: {yaml}");
    }
    let all = crds_yaml();
    assert_eq!(all, crds_yaml(), "same output every time");
    assert!(all.starts_with("---\napiVersion: apiextensions.k8s.io/v1\n"), "{all}");
    let docs: Vec<CustomResourceDefinition> = serde_saphyr::from_multiple(&all).expect("documents parse");
    assert_eq!(docs, crds());
}
