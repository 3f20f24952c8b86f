use serde_json::{Value, json};

use super::*;

const NS: &str = "default";
const APP: &str = "vllm-llama3-8b-instruct";

/// The seed document's pool: targetPorts 8000, 8001, 8002.
fn seed_pool() -> PoolSpec {
    PoolSpec {
        namespace: NS.into(),
        name: APP.into(),
        selector: [("app".to_string(), APP.to_string())].into(),
        target_ports: vec![8000, 8001, 8002],
    }
}

fn one_port_pool() -> PoolSpec {
    PoolSpec { target_ports: vec![8000], ..seed_pool() }
}

/// A ready pod of the seed pool; `edit` adjusts its JSON before parsing.
fn pod(name: &str, edit: impl FnOnce(&mut Value)) -> Pod {
    let mut v = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": APP}},
        "status": {
            "podIP": "10.0.0.7",
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": "True"}
            ]
        }
    });
    edit(&mut v);
    serde_json::from_value(v).expect("valid pod")
}

fn remove(v: &mut Value, key: &str) {
    v.as_object_mut().expect("object").remove(key);
}

fn annotated(name: &str, active: &str) -> Pod {
    pod(name, |v| v["metadata"]["annotations"] = json!({ACTIVE_PORTS_ANNOTATION: active}))
}

fn labelled(name: &str, engine: &str) -> Pod {
    pod(name, |v| v["metadata"]["labels"]["inference.networking.k8s.io/engine-type"] = json!(engine))
}

struct Fixture {
    registry: EngineRegistry,
    source: MetricsDataSourceParams,
    metrics_port: Option<u16>,
}

impl Fixture {
    fn new() -> Self {
        Fixture { registry: EngineRegistry::builtin(), source: MetricsDataSourceParams::default(), metrics_port: None }
    }

    fn ctx(&self) -> ResolveContext<'_> {
        ResolveContext { registry: &self.registry, source: &self.source, metrics_port: self.metrics_port }
    }

    fn resolve(&self, pool: &PoolSpec, pod: &Pod) -> (Vec<Endpoint>, Vec<PodWarning>) {
        let mut warnings = Vec::new();
        let eps = pod_endpoints(pool, pod, &self.ctx(), &mut warnings);
        (eps, warnings)
    }

    fn ids(&self, pool: &PoolSpec, pod: &Pod) -> Vec<String> {
        self.resolve(pool, pod).0.iter().map(|e| e.id.to_string()).collect()
    }
}

fn bad_port(pod: &str, entry: &str) -> PodWarning {
    PodWarning::BadActivePort { pod: pod.into(), entry: entry.into() }
}

#[test]
fn seed_example_two_active_ports_give_ranks_0_and_2() {
    let f = Fixture::new();
    let (eps, warnings) = f.resolve(&seed_pool(), &annotated("p", "8000,8002"));
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(eps.len(), 2);
    assert_eq!(eps[0].id.as_str(), "default/p-rank-0");
    assert_eq!(eps[0].address, "10.0.0.7:8000");
    assert_eq!(eps[0].metrics_url, "http://10.0.0.7:8000/metrics");
    assert_eq!(eps[1].id.as_str(), "default/p-rank-2");
    assert_eq!(eps[1].address, "10.0.0.7:8002");
    assert_eq!(eps[1].metrics_url, "http://10.0.0.7:8002/metrics");
    assert_eq!(eps[1].engine, "vllm");
    assert_eq!(eps[1].labels.get("app").map(String::as_str), Some(APP));
}

#[test]
fn absent_annotation_means_every_target_port() {
    let f = Fixture::new();
    assert_eq!(f.ids(&seed_pool(), &pod("p", |_| {})), ["default/p-rank-0", "default/p-rank-1", "default/p-rank-2"]);
}

#[test]
fn empty_or_blank_annotation_means_no_endpoints() {
    let f = Fixture::new();
    for value in ["", "   ", " , "] {
        let (eps, warnings) = f.resolve(&seed_pool(), &annotated("p", value));
        assert!(eps.is_empty(), "{value:?} gave {eps:?}");
        assert!(warnings.is_empty(), "{value:?} warned {warnings:?}");
    }
}

#[test]
fn garbage_and_out_of_pool_entries_are_ignored_with_one_warning_each() {
    let f = Fixture::new();
    let (eps, warnings) = f.resolve(&seed_pool(), &annotated("p", " 8001 , abc, 9000,0,-1,70000,8001x,"));
    let ids: Vec<&str> = eps.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["default/p-rank-1"]);
    let expected: Vec<PodWarning> =
        ["abc", "9000", "0", "-1", "70000", "8001x"].iter().map(|e| bad_port("p", e)).collect();
    assert_eq!(warnings, expected);
    assert!(warnings[1].to_string().contains("\"9000\""), "{}", warnings[1]);
}

#[test]
fn duplicate_entries_collapse_and_ranks_follow_target_ports_order() {
    let f = Fixture::new();
    let (eps, warnings) = f.resolve(&seed_pool(), &annotated("p", "8002,8000,8002, 8000"));
    assert!(warnings.is_empty(), "{warnings:?}");
    let ids: Vec<&str> = eps.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["default/p-rank-0", "default/p-rank-2"]);
}

#[test]
fn only_ready_live_addressed_selected_pods_of_the_namespace_count() {
    let f = Fixture::new();
    let pool = seed_pool();
    let cases: Vec<(&str, Pod)> = vec![
        ("not ready", pod("p", |v| v["status"]["conditions"][1]["status"] = json!("False"))),
        (
            "no Ready condition",
            pod("p", |v| v["status"]["conditions"] = json!([{"type": "PodScheduled", "status": "True"}])),
        ),
        ("terminating", pod("p", |v| v["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z"))),
        ("no IP", pod("p", |v| remove(&mut v["status"], "podIP"))),
        ("empty IP", pod("p", |v| v["status"]["podIP"] = json!(""))),
        ("no status", pod("p", |v| remove(v, "status"))),
        ("other namespace", pod("p", |v| v["metadata"]["namespace"] = json!("other"))),
        ("selector mismatch", pod("p", |v| v["metadata"]["labels"]["app"] = json!("other"))),
        ("no labels", pod("p", |v| remove(&mut v["metadata"], "labels"))),
    ];
    for (what, pod) in &cases {
        let (eps, warnings) = f.resolve(&pool, pod);
        assert!(eps.is_empty(), "{what}: {eps:?}");
        assert!(warnings.is_empty(), "{what}: {warnings:?}");
    }
    // The selector needs all its labels; extra pod labels do not matter.
    let two = PoolSpec { selector: [("app".into(), APP.into()), ("tier".into(), "gpu".into())].into(), ..seed_pool() };
    assert!(f.ids(&two, &pod("p", |_| {})).is_empty());
    assert_eq!(f.ids(&two, &pod("p", |v| v["metadata"]["labels"]["tier"] = json!("gpu"))).len(), 3);
    // An empty selector (a CRD with empty matchLabels) selects every pod of the namespace.
    let all = PoolSpec { selector: BTreeMap::new(), ..seed_pool() };
    assert_eq!(f.ids(&all, &pod("p", |v| remove(&mut v["metadata"], "labels"))).len(), 3);
}

#[test]
fn engine_comes_from_the_label_unknown_falls_back_with_a_warning() {
    let f = Fixture::new();
    let pool = one_port_pool();
    let pods = [
        labelled("a", "vllm"),
        labelled("b", "sglang"),
        labelled("c", "triton-tensorrt-llm"),
        labelled("d", "tgi"),
        labelled("e", ""),
        pod("f", |_| {}),
    ];
    let mut warnings = Vec::new();
    let eps = pool_endpoints(&pool, &pods, &f.ctx(), &mut warnings);
    let engines: Vec<(&str, &str)> = eps.iter().map(|e| (e.id.as_str(), e.engine.as_str())).collect();
    assert_eq!(
        engines,
        [
            ("default/a-rank-0", "vllm"),
            ("default/b-rank-0", "sglang"),
            ("default/c-rank-0", "triton-tensorrt-llm"),
            ("default/d-rank-0", "vllm"),
            ("default/e-rank-0", "vllm"),
            ("default/f-rank-0", "vllm"),
        ]
    );
    let unknown = PodWarning::UnknownEngine {
        pod: "d".into(),
        label: "inference.networking.k8s.io/engine-type".into(),
        value: "tgi".into(),
    };
    assert_eq!(warnings, [unknown]);
}

#[test]
fn engine_label_key_and_default_come_from_the_registry() {
    let mut f = Fixture::new();
    f.registry = EngineRegistry::build(&[], "sglang", "example.com/engine", &Default::default()).expect("registry");
    let p = pod("p", |v| v["metadata"]["labels"]["example.com/engine"] = json!("triton-tensorrt-llm"));
    assert_eq!(f.resolve(&one_port_pool(), &p).0[0].engine, "triton-tensorrt-llm");
    // The upstream key means nothing to this registry: default engine, no warning.
    let (eps, warnings) = f.resolve(&one_port_pool(), &labelled("q", "vllm"));
    assert_eq!((eps[0].engine.as_str(), warnings.len()), ("sglang", 0));
}

#[test]
fn metrics_port_override_applies_only_to_single_port_pools() {
    let mut f = Fixture::new();
    f.metrics_port = Some(9400);
    f.source = MetricsDataSourceParams { scheme: "https".into(), path: "/m".into(), insecure_skip_verify: true };
    let (one, _) = f.resolve(&one_port_pool(), &pod("p", |_| {}));
    assert_eq!(one[0].address, "10.0.0.7:8000");
    assert_eq!(one[0].metrics_url, "https://10.0.0.7:9400/m");
    let (many, _) = f.resolve(&seed_pool(), &pod("p", |_| {}));
    let urls: Vec<&str> = many.iter().map(|e| e.metrics_url.as_str()).collect();
    assert_eq!(urls, ["https://10.0.0.7:8000/m", "https://10.0.0.7:8001/m", "https://10.0.0.7:8002/m"]);
}

#[test]
fn ipv6_pod_ips_are_bracketed() {
    let f = Fixture::new();
    let p = pod("p", |v| {
        v["status"]["podIP"] = json!("fd00::7");
        v["metadata"]["annotations"] = json!({ACTIVE_PORTS_ANNOTATION: "8001"});
    });
    let (eps, _) = f.resolve(&seed_pool(), &p);
    assert_eq!(eps[0].address, "[fd00::7]:8001");
    assert_eq!(eps[0].metrics_url, "http://[fd00::7]:8001/metrics");
}

#[test]
fn pool_endpoints_are_sorted_by_id_across_pods() {
    let f = Fixture::new();
    let pods = [annotated("b", "8001"), pod("a", |_| {}), pod("c", |v| v["status"]["podIP"] = json!(""))];
    let mut warnings = Vec::new();
    let ids: Vec<String> =
        pool_endpoints(&seed_pool(), &pods, &f.ctx(), &mut warnings).iter().map(|e| e.id.to_string()).collect();
    assert_eq!(ids, ["default/a-rank-0", "default/a-rank-1", "default/a-rank-2", "default/b-rank-1"]);
}

#[test]
fn from_flags_parses_selector_and_dedups_ports_in_order() {
    let pool = PoolSpec::from_flags("ns", "app=vllm,tier=gpu,empty=", &[8001, 8000, 8001]).expect("valid");
    assert_eq!(pool.namespace, "ns");
    assert_eq!(pool.target_ports, [8001, 8000]);
    let selector: Vec<(&str, &str)> = pool.selector.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(selector, [("app", "vllm"), ("empty", ""), ("tier", "gpu")]);
}

#[test]
fn from_flags_errors_name_the_flag() {
    let sel = "app=x";
    let cases: Vec<(PoolError, &str)> = vec![
        (PoolSpec::from_flags("ns", "", &[8000]).expect_err("empty"), "--endpoint-selector: must not be empty"),
        (PoolSpec::from_flags("ns", "  ", &[8000]).expect_err("blank"), "--endpoint-selector: must not be empty"),
        (PoolSpec::from_flags("ns", "app", &[8000]).expect_err("no ="), "\"app\" is not a key=value"),
        (PoolSpec::from_flags("ns", "=x", &[8000]).expect_err("no key"), "\"=x\" is not a key=value"),
        (PoolSpec::from_flags("ns", "app = x", &[8000]).expect_err("spaces"), "\"app = x\" is not"),
        (PoolSpec::from_flags("ns", "a=b, c=d", &[8000]).expect_err("space"), "\" c=d\" is not"),
        (PoolSpec::from_flags("ns", "a=b,,c=d", &[8000]).expect_err("hole"), "\"\" is not"),
        (PoolSpec::from_flags("ns", "a=b=c", &[8000]).expect_err("two ="), "\"a=b=c\" is not"),
        (PoolSpec::from_flags("ns", "a=b,a=c", &[8000]).expect_err("twice"), "label \"a\" given twice"),
        (PoolSpec::from_flags("ns", sel, &[]).expect_err("no ports"), "--endpoint-target-ports: 0 target ports"),
        (PoolSpec::from_flags("ns", sel, &[8000, 0]).expect_err("port 0"), "--endpoint-target-ports: port 0"),
        (
            PoolSpec::from_flags("ns", sel, &(9000..9009).collect::<Vec<u16>>()).expect_err("9 ports"),
            "--endpoint-target-ports: 9 target ports, need 1 to 8",
        ),
    ];
    for (err, expected) in cases {
        assert!(err.to_string().contains(expected), "{err} should contain {expected}");
    }
    // Eight distinct ports after removing duplicates are fine.
    let ports: Vec<u16> = (9000..9008).chain([9000]).collect();
    assert_eq!(PoolSpec::from_flags("ns", sel, &ports).expect("8 ports").target_ports.len(), 8);
}

fn v1_pool(ports: &[i32]) -> v1::InferencePool {
    let ports: Vec<Value> = ports.iter().map(|n| json!({"number": n})).collect();
    serde_json::from_value(json!({
        "apiVersion": "inference.networking.k8s.io/v1",
        "kind": "InferencePool",
        "metadata": {"name": APP, "namespace": NS},
        "spec": {"selector": {"matchLabels": {"app": APP}}, "targetPorts": ports}
    }))
    .expect("valid pool")
}

#[test]
fn from_v1_keeps_port_order_and_selector() {
    assert_eq!(PoolSpec::from_v1(&v1_pool(&[8000, 8001, 8002])).expect("valid"), seed_pool());
}

#[test]
fn from_v1_rejects_bad_port_lists() {
    let err = |ports: &[i32]| PoolSpec::from_v1(&v1_pool(ports)).expect_err("invalid").to_string();
    assert_eq!(err(&[]), "spec.targetPorts: 0 target ports, need 1 to 8");
    assert_eq!(err(&(8000..8009).collect::<Vec<i32>>()), "spec.targetPorts: 9 target ports, need 1 to 8");
    assert_eq!(err(&[8000, 0]), "spec.targetPorts[1].number: port 0 is outside 1..65535");
    assert_eq!(err(&[65536]), "spec.targetPorts[0].number: port 65536 is outside 1..65535");
    assert_eq!(err(&[-5]), "spec.targetPorts[0].number: port -5 is outside 1..65535");
    assert_eq!(err(&[8000, 8001, 8000]), "spec.targetPorts[2].number: duplicate port 8000");
    let mut nameless = v1_pool(&[8000]);
    nameless.metadata.namespace = None;
    assert_eq!(PoolSpec::from_v1(&nameless).expect_err("no ns").to_string(), "metadata.namespace: must not be empty");
}

#[test]
fn from_v1alpha2_takes_its_single_port() {
    let mut pool: v1alpha2::InferencePool = serde_json::from_value(json!({
        "apiVersion": "inference.networking.x-k8s.io/v1alpha2",
        "kind": "InferencePool",
        "metadata": {"name": APP, "namespace": NS},
        "spec": {"selector": {"app": APP}, "targetPortNumber": 8000}
    }))
    .expect("valid pool");
    assert_eq!(PoolSpec::from_v1alpha2(&pool).expect("valid"), one_port_pool());
    pool.spec.target_port_number = 0;
    let err = PoolSpec::from_v1alpha2(&pool).expect_err("port 0").to_string();
    assert_eq!(err, "spec.targetPortNumber: port 0 is outside 1..65535");
}

#[test]
fn objectives_apply_to_the_named_pool_of_the_group_in_the_namespace() {
    let objective = |ns: &str, pool_ref: Value| -> v1alpha2::InferenceObjective {
        serde_json::from_value(json!({
            "apiVersion": "inference.networking.x-k8s.io/v1alpha2",
            "kind": "InferenceObjective",
            "metadata": {"name": "critical", "namespace": ns},
            "spec": {"priority": 10, "poolRef": pool_ref}
        }))
        .expect("valid objective")
    };
    let pool = seed_pool();
    let (ga, alpha) = (super::super::crd::POOL_GROUP_V1, super::super::crd::POOL_GROUP_V1ALPHA2);
    let defaulted = objective(NS, json!({"name": APP}));
    assert!(objective_applies(&defaulted, &pool, ga), "unset group means the GA group");
    assert!(!objective_applies(&defaulted, &pool, alpha));
    assert!(objective_applies(&objective(NS, json!({"name": APP, "group": alpha})), &pool, alpha));
    assert!(!objective_applies(&objective(NS, json!({"name": "other"})), &pool, ga));
    assert!(!objective_applies(&objective("other", json!({"name": APP})), &pool, ga));
}
