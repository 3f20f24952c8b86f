//! Kubernetes discovery against the fake API server: the real `kube` watcher and reflector turn
//! an InferencePool and its pods into the endpoint set, and a running standalone scrapes them.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use switchyard::discovery::kubernetes::{KubernetesOptions, PoolRef, start_with_client};
use switchyard::discovery::{DiscoveryMetrics, EndpointSet, EndpointSource, PoolSource, Resolver};
use switchyard::metrics::EngineRegistry;
use tokio::sync::watch;

use crate::support::wait_for;
use switchyard::tools::kube_fake::FakeApiServer;

const GROUP: &str = "inference.networking.k8s.io";
const X_GROUP: &str = "inference.networking.x-k8s.io";
const DEADLINE: Duration = Duration::from_secs(15);

async fn fake_with_crds() -> FakeApiServer {
    let fake = FakeApiServer::start().await;
    fake.register(GROUP, "v1", "inferencepools", "InferencePool", true);
    fake
}

struct PodSpec<'a> {
    name: &'a str,
    namespace: &'a str,
    labels: Value,
    ip: &'a str,
    ready: bool,
    annotations: Value,
    terminating: bool,
}

impl Default for PodSpec<'_> {
    fn default() -> Self {
        PodSpec {
            name: "pod",
            namespace: "default",
            labels: json!({"app": "vllm"}),
            ip: "10.0.0.1",
            ready: true,
            annotations: json!({}),
            terminating: false,
        }
    }
}

fn pod(p: PodSpec<'_>) -> Value {
    let mut metadata =
        json!({"name": p.name, "namespace": p.namespace, "labels": p.labels, "annotations": p.annotations});
    if p.terminating {
        metadata["deletionTimestamp"] = json!("2026-12-01T00:00:00Z");
    }
    json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": metadata,
        "spec": {"containers": [{"name": "server", "image": "vllm"}]},
        "status": {"podIP": p.ip, "conditions": [{"type": "Ready", "status": if p.ready { "True" } else { "False" }}]},
    })
}

fn pool(name: &str, selector: Value, ports: &[u16]) -> Value {
    let ports: Vec<Value> = ports.iter().map(|p| json!({"number": p})).collect();
    json!({
        "apiVersion": format!("{GROUP}/v1"), "kind": "InferencePool",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"selector": {"matchLabels": selector}, "targetPorts": ports},
    })
}

fn resolver() -> Resolver {
    Resolver { registry: Arc::new(EngineRegistry::builtin()), source: Default::default() }
}

fn options(pool: PoolRef) -> KubernetesOptions {
    KubernetesOptions { namespace: "default".into(), pool, kubeconfig: None, metrics_port: None }
}

fn by_name(name: &str) -> PoolRef {
    PoolRef::Pool { name: name.into(), group: GROUP.into() }
}

fn watch_pool(fake: &FakeApiServer, pool: PoolRef) -> (EndpointSource, DiscoveryMetrics) {
    let metrics = DiscoveryMetrics::default();
    let source = start_with_client(fake.client(), &options(pool), resolver(), metrics.clone()).expect("source");
    (source, metrics)
}

/// Waits until the published set satisfies `check`; returns it.
async fn until(source: &EndpointSource, what: &str, check: impl Fn(&EndpointSet) -> bool) -> Arc<EndpointSet> {
    let mut rx: watch::Receiver<Arc<EndpointSet>> = source.updates();
    wait_for(what, DEADLINE, || {
        let set = rx.borrow_and_update().clone();
        let ok = check(&set);
        async move { ok.then_some(set) }
    })
    .await
}

fn ids(set: &EndpointSet) -> Vec<String> {
    set.endpoints.iter().map(|e| e.id.to_string()).collect()
}

fn has_ids(want: &[&str]) -> impl Fn(&EndpointSet) -> bool {
    let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    move |set| set.synced && ids(set) == want
}

#[tokio::test]
async fn the_seed_documents_active_ports_example_gives_two_endpoints() {
    let fake = fake_with_crds().await;
    fake.apply(pool("pool", json!({"app": "vllm"}), &[8000, 8001, 8002]));
    fake.apply(pod(PodSpec {
        name: "pod-a",
        annotations: json!({"inference.networking.k8s.io/active-ports": "8000,8002"}),
        ..Default::default()
    }));
    let (source, _) = watch_pool(&fake, by_name("pool"));
    let set = until(&source, "two endpoints", has_ids(&["default/pod-a-rank-0", "default/pod-a-rank-2"])).await;
    let addresses: Vec<&str> = set.endpoints.iter().map(|e| e.address.as_str()).collect();
    assert_eq!(addresses, ["10.0.0.1:8000", "10.0.0.1:8002"]);
    assert_eq!(set.endpoints[1].metrics_url, "http://10.0.0.1:8002/metrics");

    // The annotation changes: the set follows without a restart.
    fake.apply(pod(PodSpec {
        name: "pod-a",
        annotations: json!({"inference.networking.k8s.io/active-ports": "8001"}),
        ..Default::default()
    }));
    until(&source, "rank 1 only", has_ids(&["default/pod-a-rank-1"])).await;
    fake.apply(pod(PodSpec {
        name: "pod-a",
        annotations: json!({"inference.networking.k8s.io/active-ports": ""}),
        ..Default::default()
    }));
    until(&source, "present but empty: no endpoints", |s| s.synced && s.endpoints.is_empty()).await;
}

#[tokio::test]
async fn only_ready_live_pods_of_the_pools_namespace_and_selector_count() {
    let fake = fake_with_crds().await;
    fake.apply(pool("pool", json!({"app": "vllm"}), &[8000]));
    fake.apply(pod(PodSpec { name: "ready", ..Default::default() }));
    fake.apply(pod(PodSpec { name: "not-ready", ready: false, ..Default::default() }));
    fake.apply(pod(PodSpec { name: "terminating", terminating: true, ..Default::default() }));
    fake.apply(pod(PodSpec { name: "no-ip", ip: "", ..Default::default() }));
    fake.apply(pod(PodSpec { name: "other-app", labels: json!({"app": "web"}), ..Default::default() }));
    fake.apply(pod(PodSpec { name: "elsewhere", namespace: "other", ..Default::default() }));
    let (source, _) = watch_pool(&fake, by_name("pool"));
    until(&source, "only the ready pod", has_ids(&["default/ready-rank-0"])).await;

    // NotReady becomes Ready; the ready one starts terminating.
    fake.apply(pod(PodSpec { name: "not-ready", ..Default::default() }));
    fake.apply(pod(PodSpec { name: "ready", terminating: true, ..Default::default() }));
    until(&source, "readiness followed", has_ids(&["default/not-ready-rank-0"])).await;
    fake.delete("", "pods", "default", "not-ready");
    until(&source, "deleted pod gone", |s| s.synced && s.endpoints.is_empty()).await;
}

#[tokio::test]
async fn selector_and_target_port_changes_of_the_pool_are_followed() {
    let fake = fake_with_crds().await;
    fake.apply(pool("pool", json!({"app": "vllm"}), &[8000]));
    fake.apply(pod(PodSpec { name: "a", labels: json!({"app": "vllm", "tier": "gold"}), ..Default::default() }));
    fake.apply(pod(PodSpec { name: "b", labels: json!({"app": "vllm"}), ip: "10.0.0.2", ..Default::default() }));
    let (source, _) = watch_pool(&fake, by_name("pool"));
    until(&source, "both pods", has_ids(&["default/a-rank-0", "default/b-rank-0"])).await;
    fake.apply(pool("pool", json!({"app": "vllm", "tier": "gold"}), &[8000]));
    until(&source, "narrower selector", has_ids(&["default/a-rank-0"])).await;
    fake.apply(pool("pool", json!({"app": "vllm", "tier": "gold"}), &[9000, 9001]));
    let set = until(&source, "two ports", has_ids(&["default/a-rank-0", "default/a-rank-1"])).await;
    assert_eq!(set.endpoints[1].address, "10.0.0.1:9001");
}

#[tokio::test]
async fn a_pool_that_does_not_exist_yet_is_empty_and_a_deleted_one_empties_the_set() {
    let fake = fake_with_crds().await;
    let (source, _) = watch_pool(&fake, by_name("pool"));
    // Start-up before the pool or any pod exists: not an error, an empty set, not synced.
    wait_for("both watches open", DEADLINE, || {
        let n = fake.watch_count();
        async move { (n >= 2).then_some(()) }
    })
    .await;
    let set = source.current();
    assert!(set.endpoints.is_empty() && !set.synced, "{set:?}");

    fake.apply(pod(PodSpec { name: "a", ..Default::default() }));
    fake.apply(pool("pool", json!({"app": "vllm"}), &[8000]));
    until(&source, "the pool appeared", has_ids(&["default/a-rank-0"])).await;
    fake.delete(GROUP, "inferencepools", "default", "pool");
    until(&source, "pool deleted", |s| !s.synced && s.endpoints.is_empty()).await;
    fake.apply(pool("pool", json!({"app": "vllm"}), &[8000]));
    until(&source, "pool recreated", has_ids(&["default/a-rank-0"])).await;
}

#[tokio::test]
async fn deletions_missed_while_the_watch_was_down_are_applied_after_the_relist() {
    let fake = fake_with_crds().await;
    fake.apply(pool("pool", json!({"app": "vllm"}), &[8000]));
    fake.apply(pod(PodSpec { name: "a", ..Default::default() }));
    fake.apply(pod(PodSpec { name: "b", ip: "10.0.0.2", ..Default::default() }));
    let (source, _) = watch_pool(&fake, by_name("pool"));
    until(&source, "both pods", has_ids(&["default/a-rank-0", "default/b-rank-0"])).await;
    let lists_before =
        fake.request_log().iter().filter(|r| r.starts_with("GET /api/v1/namespaces/default/pods?")).count();

    // The API server goes away; b is deleted and the history compacted meanwhile (410 on resume).
    fake.set_down(true);
    wait_for("every watch cut", DEADLINE, || {
        let n = fake.watch_count();
        async move { (n == 0).then_some(()) }
    })
    .await;
    fake.delete("", "pods", "default", "b");
    fake.compact();
    fake.set_down(false);
    until(&source, "b gone after the relist", has_ids(&["default/a-rank-0"])).await;
    let lists = fake
        .request_log()
        .iter()
        .filter(|r| r.starts_with("GET /api/v1/namespaces/default/pods?") && !r.contains("watch=true"))
        .count();
    assert!(lists > 1 && lists >= lists_before, "a relist happened: {lists} pod lists: {:#?}", fake.request_log());
}

#[tokio::test]
async fn unknown_engine_labels_fall_back_to_the_default_and_are_counted_once_per_pod() {
    let fake = fake_with_crds().await;
    fake.apply(pool("pool", json!({"app": "vllm"}), &[8000]));
    let engine = |name: &'static str, value: &str, ip: &'static str| {
        pod(PodSpec {
            name,
            ip,
            labels: json!({"app": "vllm", "inference.networking.k8s.io/engine-type": value}),
            ..Default::default()
        })
    };
    fake.apply(engine("s", "sglang", "10.0.0.1"));
    fake.apply(engine("t", "triton-tensorrt-llm", "10.0.0.2"));
    fake.apply(engine("x", "vlm", "10.0.0.3"));
    let (source, metrics) = watch_pool(&fake, by_name("pool"));
    let set = until(&source, "three pods", |s| s.synced && s.endpoints.len() == 3).await;
    let engines: Vec<&str> = set.endpoints.iter().map(|e| e.engine.as_str()).collect();
    assert_eq!(engines, ["sglang", "triton-tensorrt-llm", "vllm"], "the typo falls back to the default engine");
    // Another change recomputes the set; the warning is not counted again for the same pod.
    fake.apply(pod(PodSpec { name: "y", ip: "10.0.0.4", ..Default::default() }));
    until(&source, "four pods", |s| s.endpoints.len() == 4).await;
    assert_eq!(metrics.unknown_engines(), 1);
}

#[tokio::test]
async fn objectives_of_the_pool_come_from_the_cluster_and_a_missing_crd_is_tolerated() {
    let fake = fake_with_crds().await;
    fake.apply(pool("pool", json!({"app": "vllm"}), &[8000]));
    fake.apply(pod(PodSpec { name: "a", ..Default::default() }));
    let (source, _) = watch_pool(&fake, by_name("pool"));
    // No InferenceObjective CRD: the pool works anyway.
    until(&source, "endpoints without the objectives CRD", has_ids(&["default/a-rank-0"])).await;
    fake.register(X_GROUP, "v1alpha2", "inferenceobjectives", "InferenceObjective", true);
    let objective = |name: &str, pool: &str, priority: i32| {
        json!({
            "apiVersion": format!("{X_GROUP}/v1alpha2"), "kind": "InferenceObjective",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"priority": priority, "poolRef": {"name": pool}},
        })
    };
    fake.apply(objective("critical", "pool", 10));
    fake.apply(objective("batch", "pool", -1));
    fake.apply(objective("someone-else", "other-pool", 5));
    let set = until(&source, "objectives picked up once the CRD exists", |s| s.objectives.len() == 2).await;
    assert_eq!(set.objectives.get("critical"), Some(&10));
    assert_eq!(set.objectives.get("batch"), Some(&-1));
}

#[tokio::test]
async fn a_label_selector_pool_needs_no_crd() {
    let fake = FakeApiServer::start().await;
    fake.apply(pod(PodSpec { name: "a", ..Default::default() }));
    let (source, _) =
        watch_pool(&fake, PoolRef::Selector { selector: "app=vllm".into(), target_ports: vec![8000, 8001] });
    until(&source, "selected pod, two ports", has_ids(&["default/a-rank-0", "default/a-rank-1"])).await;
}

/// The whole path: pods with mixed engine labels in the cluster → a standalone process started
/// with --kubeconfig scrapes each with its engine's metric names → the picker's snapshot; the
/// pool's InferenceObjectives set request priorities (a sheddable one is shed when saturated).
#[actix_rt::test]
async fn a_standalone_scrapes_the_pools_pods_with_each_engines_metric_names() {
    use switchyard::sim::{self, Flavor, FleetConfig};
    let fleet = sim::start_fleet(&FleetConfig {
        fleet: vec![(Flavor::VllmV1, 1), (Flavor::Sglang, 1), (Flavor::TritonTensorrtLlm, 1)],
        ..Default::default()
    })
    .await
    .expect("fleet");
    let fake = fake_with_crds().await;
    // One pod per sim server, all on 127.0.0.1: each pod's active port is its server's port.
    let ports: Vec<u16> = fleet.iter().map(|h| h.addr.port()).collect();
    fake.apply(pool("pool", json!({"app": "llm"}), &ports));
    for (i, h) in fleet.iter().enumerate() {
        let name = format!("pod-{i}");
        fake.apply(pod(PodSpec {
            name: &name,
            ip: "127.0.0.1",
            labels: json!({"app": "llm", "inference.networking.k8s.io/engine-type": h.flavor.engine()}),
            annotations: json!({"inference.networking.k8s.io/active-ports": h.addr.port().to_string()}),
            ..Default::default()
        }));
    }
    fake.register(X_GROUP, "v1alpha2", "inferenceobjectives", "InferenceObjective", true);
    for (name, priority) in [("batch", -1), ("critical", 5)] {
        fake.apply(json!({
            "apiVersion": format!("{X_GROUP}/v1alpha2"), "kind": "InferenceObjective",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"priority": priority, "poolRef": {"name": "pool", "group": GROUP}},
        }));
    }
    // Every endpoint looks saturated (metrics older than 1 ns): only sheddable requests suffer.
    let saturated = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n- type: queue-scorer\n- type: utilization-detector\n  parameters: {metricsStalenessThreshold: 1ns}\nschedulingProfiles:\n- name: default\n  plugins: [{pluginRef: queue-scorer}]\n";
    let dir = tempfile::tempdir().expect("dir");
    let opts = switchyard::app::StandaloneOptions {
        config_text: Some(saturated.into()),
        ..switchyard::app::StandaloneOptions::loopback(PoolSource::Kubernetes(KubernetesOptions {
            kubeconfig: Some(fake.kubeconfig(dir.path())),
            ..options(by_name("pool"))
        }))
    };
    let standalone = switchyard::app::start_standalone(opts).await.expect("standalone");
    let want: BTreeSet<String> = (0..fleet.len()).map(|i| format!("default/pod-{i}-rank-{i}")).collect();
    let mut snaps = standalone.snapshots.clone();
    let snapshot = wait_for("every pod scraped with its engine's metrics", DEADLINE, || {
        let s = snaps.borrow_and_update().clone();
        let want = want.clone();
        async move {
            let scraped: BTreeSet<String> = s
                .endpoints
                .iter()
                .filter(|e| e.metrics.sample().is_some_and(|m| m.metrics.queued.is_some() && m.errors.is_empty()))
                .map(|e| e.endpoint.id.to_string())
                .collect();
            (scraped == want).then_some(s)
        }
    })
    .await;
    let engines: Vec<&str> = snapshot.endpoints.iter().map(|e| e.endpoint.engine.as_str()).collect();
    assert_eq!(engines, ["vllm", "sglang", "triton-tensorrt-llm"]);
    // The ext-proc side answers from it: readiness is on.
    let text = crate::support::metrics_text(standalone.metrics_addr).await;
    assert!(text.contains("switchyard_discovery_endpoints{source=\"kubernetes\"} 3"), "{text}");
    assert!(standalone.readiness.is_ready());
    assert_eq!(snapshot.objectives.get("batch"), Some(&-1));

    let url = format!("http://{}", standalone.ext_proc_addr);
    let mut ext_proc =
        envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient::connect(url)
            .await
            .expect("ext-proc");
    let mut req = crate::envoy::HttpRequest::chat("meta-llama/Llama-3.1-8B-Instruct", "hello");
    req.headers.push(("x-gateway-inference-objective".into(), "batch".into()));
    let shed = crate::envoy::send(&mut ext_proc, &req).await;
    assert_eq!(shed.routed.immediate.map(|(status, _)| status), Some(429), "priority -1 from the cluster");
    req.headers[0].1 = "critical".into();
    let routed = crate::envoy::send(&mut ext_proc, &req).await;
    assert!(routed.routed.immediate.is_none(), "priority 5 from the cluster is never shed");
    standalone.shutdown(Duration::from_secs(1)).await;
}

/// Every aggregator replica keeps its reflectors warm: when the leader goes, the next one
/// publishes the pool at once, without listing again.
#[actix_rt::test]
async fn a_new_leader_publishes_the_pool_from_its_warm_reflector() {
    use switchyard::etcd::EtcdSettings;
    use switchyard::roles::{AggregatorOptions, start_aggregator};
    let etcd = crate::etcd::Etcd::start().await;
    let fake = fake_with_crds().await;
    fake.apply(pool("pool", json!({"app": "vllm"}), &[8000]));
    fake.apply(pod(PodSpec { name: "a", ..Default::default() }));
    fake.apply(pod(PodSpec { name: "b", ip: "10.0.0.2", ..Default::default() }));
    let dir = tempfile::tempdir().expect("dir");
    let replica = || AggregatorOptions {
        etcd: Some(EtcdSettings::new(vec![etcd.endpoint.clone()], "switchyard-k8s-it", "", Duration::from_secs(2))),
        pool: PoolSource::Kubernetes(KubernetesOptions {
            kubeconfig: Some(fake.kubeconfig(dir.path())),
            ..options(by_name("pool"))
        }),
        ..AggregatorOptions::local(dir.path().join("unused"))
    };
    let first = start_aggregator(replica()).await.expect("first");
    let second = start_aggregator(replica()).await.expect("second");
    let leads = |h: &switchyard::roles::AggregatorHandle| *h.leading.borrow();
    wait_for("one leader", DEADLINE, || {
        let one = leads(&first) != leads(&second);
        async move { one.then_some(()) }
    })
    .await;
    let (leader, standby) = if leads(&first) { (first, second) } else { (second, first) };
    let two = |s: &switchyard::model::Snapshot| s.endpoints.len() == 2;
    let mut snaps = leader.snapshots.clone();
    wait_for("the leader publishes the pool", DEADLINE, || {
        let ok = two(&snaps.borrow_and_update());
        async move { ok.then_some(()) }
    })
    .await;
    // Both replicas have listed and are watching (2 lists each of pods and pool at least).
    let lists = || fake.request_log().iter().filter(|r| r.contains("/pods?") && !r.contains("watch=true")).count();
    wait_for("the standby's reflector listed too", DEADLINE, || {
        let n = lists();
        async move { (n >= 2).then_some(()) }
    })
    .await;
    let lists_before = lists();
    leader.shutdown(Duration::from_secs(1)).await;
    let mut snaps = standby.snapshots.clone();
    let snapshot = wait_for("the new leader publishes the pool", DEADLINE, || {
        let s = snaps.borrow_and_update().clone();
        async move { (s.epoch > 0 && two(&s)).then_some(s) }
    })
    .await;
    assert!(*standby.leading.borrow());
    assert_eq!(lists(), lists_before, "the new leader published without listing pods again");
    assert_eq!(snapshot.endpoints[0].endpoint.id.as_str(), "default/a-rank-0");
    standby.shutdown(Duration::from_secs(1)).await;
}
