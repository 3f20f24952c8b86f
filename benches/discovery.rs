//! Discovery latency: from a Kubernetes API event (a pod added or deleted in the fake API server
//! of the integration tests, `switchyard::tools::kube_fake`, which speaks the real list/watch protocol) to the pickers' snapshot,
//! through the whole distributed path: watcher → reflector → aggregator → snapshot stream → a
//! picker over gRPC on loopback.
//! `cargo bench --bench discovery` — prints p50/p90/p99/max over 200 events.
#![allow(clippy::disallowed_types, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use serde_json::json;
use switchyard::discovery::PoolSource;
use switchyard::discovery::kubernetes::{KubernetesOptions, PoolRef};
use switchyard::roles::{AggregatorOptions, PickerOptions, start_aggregator, start_picker};

const EVENTS: usize = 200;

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((p / 100.0 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn pod(name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "vllm"}},
        "spec": {"containers": [{"name": "server", "image": "vllm"}]},
        // Nothing listens on port 9: scrapes are refused at once and do not matter here.
        "status": {"podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]},
    })
}

async fn run() {
    let fake = switchyard::tools::kube_fake::FakeApiServer::start().await;
    fake.register("inference.networking.k8s.io", "v1", "inferencepools", "InferencePool", true);
    fake.apply(json!({
        "apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
        "metadata": {"name": "pool", "namespace": "default"},
        "spec": {"selector": {"matchLabels": {"app": "vllm"}}, "targetPorts": [{"number": 9}]},
    }));
    fake.apply(pod("seed"));
    let dir = tempfile::tempdir().expect("dir");
    let agg = start_aggregator(AggregatorOptions {
        pool: PoolSource::Kubernetes(KubernetesOptions {
            namespace: "default".into(),
            pool: PoolRef::Pool { name: "pool".into(), group: "inference.networking.k8s.io".into() },
            kubeconfig: Some(fake.kubeconfig(dir.path())),
            metrics_port: None,
        }),
        ..AggregatorOptions::local(dir.path().join("unused"))
    })
    .await
    .expect("aggregator");
    let picker = start_picker(PickerOptions::local(agg.control_addr, "bench", 1)).await.expect("picker");
    let mut snapshots = picker.picker.snapshots();
    let has = |s: &switchyard::model::Snapshot, id: &str| s.endpoints.iter().any(|e| e.endpoint.id.as_str() == id);
    // Warm: the seed pod reached the picker.
    while !has(&snapshots.borrow_and_update(), "default/seed-rank-0") {
        snapshots.changed().await.expect("picker alive");
    }
    let mut delays = Vec::with_capacity(EVENTS);
    for i in 0..EVENTS {
        let name = format!("pod-{}", i / 2);
        let id = format!("default/{name}-rank-0");
        let add = i % 2 == 0;
        let started = Instant::now();
        if add {
            fake.apply(pod(&name));
        } else {
            fake.delete("", "pods", "default", &name);
        }
        while has(&snapshots.borrow_and_update(), &id) != add {
            tokio::time::timeout(Duration::from_secs(5), snapshots.changed())
                .await
                .expect("the change reached the picker within 5 s")
                .expect("picker alive");
        }
        delays.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    delays.sort_by(f64::total_cmp);
    println!("discovery → picker snapshot, {EVENTS} pod events (add/delete), distributed path on loopback");
    println!(
        "p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        pct(&delays, 50.0),
        pct(&delays, 90.0),
        pct(&delays, 99.0),
        pct(&delays, 100.0)
    );
    picker.shutdown(Duration::from_secs(1)).await;
    agg.shutdown(Duration::from_secs(1)).await;
}

fn main() {
    switchyard::ensure_crypto_provider();
    let system = actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime")
    });
    system.block_on(run());
}
