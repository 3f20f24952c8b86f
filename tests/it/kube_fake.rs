//! The fake against its real clients: `kube` (Api, watcher, reflector, discovery) and `kubectl`.

use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt as _;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, ObjectList, WatchEvent, WatchParams};
use kube::runtime::{WatchStreamExt as _, reflector, watcher};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt as _;

use crate::support::wait_for;
use switchyard::tools::kube_fake::FakeApiServer;
use switchyard::tools::kube_fake::select::LabelSelector;

const WAIT: Duration = Duration::from_secs(20);

fn pod(namespace: &str, name: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"containers": [{"name": "server", "image": "vllm/vllm-openai"}]},
    })
}

fn names<K: kube::Resource + Clone>(list: &ObjectList<K>) -> Vec<String> {
    list.items.iter().map(|o| o.meta().name.clone().unwrap_or_default()).collect()
}

async fn next<S: futures::Stream + Unpin>(stream: &mut S) -> S::Item {
    tokio::time::timeout(WAIT, stream.next()).await.expect("next event in time").expect("stream open")
}

/// Requests that listed pods in "default" (a watch is a GET with `watch=true`).
fn pod_lists(server: &FakeApiServer) -> usize {
    let log = server.request_log();
    log.iter().filter(|r| r.starts_with("GET /api/v1/namespaces/default/pods") && !r.contains("watch=true")).count()
}

#[test]
fn test_label_selector_operators() {
    let object = json!({"metadata": {"labels": {"app": "vllm", "tier": "gpu", "empty": ""}}});
    let cases = [
        ("", true),
        ("app=vllm", true),
        ("app==vllm,tier=gpu", true),
        ("app=vllm,tier=cpu", false),
        ("app!=sglang", true),
        ("zone!=a", true),
        ("app in (sglang, vllm)", true),
        ("app in (sglang),tier", false),
        ("app notin (sglang,triton)", true),
        ("zone notin (a)", true),
        ("tier notin (gpu)", false),
        ("app", true),
        ("!zone", true),
        ("!app", false),
        ("empty=", true),
        ("example.com/role", false),
    ];
    for (text, expected) in cases {
        let selector = LabelSelector::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(selector.matches(&object), expected, "{text}");
    }
    for bad in ["app in vllm", "app = = x", "a b", "app in (x", "!"] {
        assert!(LabelSelector::parse(bad).is_err(), "{bad} should not parse");
    }
}

#[tokio::test]
async fn test_kube_client_lists_and_watches_pods_by_label() {
    let server = FakeApiServer::start().await;
    server.apply(pod("default", "a", json!({"app": "vllm"})));
    server.apply(pod("default", "b", json!({"app": "other"})));
    server.apply(pod("elsewhere", "c", json!({"app": "vllm"})));
    let api: Api<Pod> = Api::namespaced(server.client(), "default");

    let list = |selector: &'static str| {
        let api = api.clone();
        async move { names(&api.list(&ListParams::default().labels(selector)).await.expect("list")) }
    };
    assert_eq!(list("app=vllm").await, ["a"]);
    assert_eq!(list("app!=vllm").await, ["b"]);
    assert_eq!(list("app notin (vllm)").await, ["b"]);
    assert_eq!(list("app in (vllm,other)").await, ["a", "b"]);
    let everywhere: Api<Pod> = Api::all(server.client());
    let all = everywhere.list(&ListParams::default().labels("app=vllm")).await.expect("list all");
    assert_eq!(names(&all), ["a", "c"]);
    let by_name = api.list(&ListParams::default().fields("metadata.name=b")).await.expect("list by name");
    assert_eq!(names(&by_name), ["b"]);
    let first = api.list(&ListParams::default().limit(1)).await.expect("first page");
    let token = first.metadata.continue_.clone().expect("continue token");
    let second = api.list(&ListParams::default().limit(1).continue_token(&token)).await.expect("second page");
    assert_eq!((names(&first), names(&second)), (vec!["a".to_string()], vec!["b".to_string()]));
    assert_eq!(second.metadata.continue_, None);

    let mut events = watcher(api.clone(), watcher::Config::default().labels("app=vllm")).boxed();
    assert!(matches!(next(&mut events).await.expect("event"), watcher::Event::Init));
    match next(&mut events).await.expect("event") {
        watcher::Event::InitApply(p) => assert_eq!(p.name_any(), "a"),
        other => panic!("expected InitApply(a), got {other:?}"),
    }
    assert!(matches!(next(&mut events).await.expect("event"), watcher::Event::InitDone));

    // Writes the selector does not match are not sent: the next event is the matching pod.
    server.apply(pod("default", "b", json!({"app": "other", "v": "2"})));
    server.apply(pod("elsewhere", "c", json!({"app": "vllm", "v": "2"})));
    server.apply(pod("default", "e", json!({"app": "vllm"})));
    let applied = |event: watcher::Event<Pod>| match event {
        watcher::Event::Apply(p) => (p.name_any(), p.labels().get("v").cloned()),
        other => panic!("expected Apply, got {other:?}"),
    };
    assert_eq!(applied(next(&mut events).await.expect("event")), ("e".into(), None));
    server.apply(pod("default", "e", json!({"app": "vllm", "v": "2"})));
    assert_eq!(applied(next(&mut events).await.expect("event")), ("e".into(), Some("2".into())));
    // A modification into the selector arrives as an add, one out of it as a delete.
    server.apply(pod("default", "b", json!({"app": "vllm", "v": "3"})));
    assert_eq!(applied(next(&mut events).await.expect("event")), ("b".into(), Some("3".into())));
    server.apply(pod("default", "b", json!({"app": "other", "v": "4"})));
    match next(&mut events).await.expect("event") {
        watcher::Event::Delete(p) => assert_eq!(p.name_any(), "b"),
        other => panic!("expected Delete(b), got {other:?}"),
    }
    server.delete("", "pods", "default", "e").expect("e existed");
    match next(&mut events).await.expect("event") {
        watcher::Event::Delete(p) => {
            assert_eq!((p.name_any(), p.labels().get("v").map(String::as_str)), ("e".into(), Some("2")))
        }
        other => panic!("expected Delete(e), got {other:?}"),
    }
}

#[tokio::test]
async fn test_watch_sends_bookmarks_and_honours_timeout() {
    let server = FakeApiServer::start().await;
    server.apply(pod("default", "a", json!({})));
    let api: Api<Pod> = Api::namespaced(server.client(), "default");
    let started = tokio::time::Instant::now();
    let stream = api.watch(&WatchParams::default().timeout(2), "0").await.expect("watch");
    let events: Vec<WatchEvent<Pod>> =
        tokio::time::timeout(WAIT, stream.try_collect()).await.expect("ends").expect("events");
    assert!(started.elapsed() >= Duration::from_secs(2), "ended early after {:?}", started.elapsed());
    assert!(matches!(&events[0], WatchEvent::Added(p) if p.name_any() == "a"), "{events:?}");
    let bookmark = events.iter().find_map(|e| match e {
        WatchEvent::Bookmark(b) => Some(b.metadata.resource_version.clone()),
        _ => None,
    });
    let rv = api.get("a").await.expect("get a").resource_version().expect("resourceVersion");
    assert_eq!(bookmark.as_deref(), Some(rv.as_str()), "{events:?}");
}

#[tokio::test]
async fn test_watcher_resumes_after_dropped_watch_and_relists_after_compaction() {
    let server = FakeApiServer::start().await;
    for name in ["a", "b"] {
        server.apply(pod("default", name, json!({"app": "vllm"})));
    }
    let api: Api<Pod> = Api::namespaced(server.client(), "default");
    let (reader, writer) = reflector::store();
    let stream = reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
    let task = tokio::spawn(stream.for_each(|_| async {}));
    let store_names = || {
        let mut names: Vec<String> = reader.state().iter().map(|p| p.name_any()).collect();
        names.sort();
        names
    };
    let has = |want: &'static [&'static str]| {
        let names = store_names();
        async move { (names == want).then_some(()) }
    };
    wait_for("store with a, b", WAIT, || has(&["a", "b"])).await;
    wait_for("one watch", WAIT, || async { (server.watch_count() == 1).then_some(()) }).await;
    assert_eq!(pod_lists(&server), 1);

    // A cut watch resumes from its resourceVersion: no relist, and events flow again.
    let watches = server.request_log().len();
    server.drop_watches();
    wait_for("a new watch", WAIT, || async {
        let log = server.request_log();
        (log.len() > watches && server.watch_count() == 1).then_some(())
    })
    .await;
    server.apply(pod("default", "c", json!({"app": "vllm"})));
    wait_for("store with a, b, c", WAIT, || has(&["a", "b", "c"])).await;
    assert_eq!(pod_lists(&server), 1, "{:?}", server.request_log());

    // b is deleted while the server is down and its history is compacted: the resumed watch gets
    // 410 Expired and the watcher relists, which is the only way it can learn that b is gone.
    server.set_down(true);
    wait_for("watches closed", WAIT, || async { (server.watch_count() == 0).then_some(()) }).await;
    server.delete("", "pods", "default", "b").expect("b existed");
    server.compact();
    server.drop_watches();
    server.set_down(false);
    wait_for("store without b", WAIT, || has(&["a", "c"])).await;
    assert_eq!(pod_lists(&server), 2, "{:?}", server.request_log());
    task.abort();
}

#[tokio::test]
async fn test_kubectl_gets_and_watches_pods() {
    let server = FakeApiServer::start().await;
    server.apply(pod("default", "a", json!({"app": "vllm"})));
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = server.kubeconfig(dir.path());
    let kubectl = |args: &[&str]| {
        let mut command = tokio::process::Command::new("kubectl");
        command.arg("--kubeconfig").arg(&kubeconfig).arg("--cache-dir").arg(dir.path().join("cache"));
        command.args(args).env("HOME", dir.path()).kill_on_drop(true);
        command
    };
    let get = tokio::time::timeout(WAIT, kubectl(&["get", "pods", "-o", "name"]).output()).await.expect("in time");
    let get = get.expect("kubectl runs");
    assert!(get.status.success(), "{}", String::from_utf8_lossy(&get.stderr));
    assert_eq!(String::from_utf8_lossy(&get.stdout), "pod/a\n");

    // `-o name` drops the event type; a jsonpath over the watch event keeps it.
    let events = r#"jsonpath={.type} {.object.metadata.name}{"\n"}"#;
    let mut watch = kubectl(&["get", "pods", "-w", "--output-watch-events", "-o", events])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn kubectl");
    let mut lines = tokio::io::BufReader::new(watch.stdout.take().expect("stdout")).lines();
    let mut next_line = async || {
        tokio::time::timeout(WAIT, lines.next_line()).await.expect("line in time").expect("read").expect("a line")
    };
    assert_eq!(next_line().await, "ADDED a");
    wait_for("kubectl watching", WAIT, || async { (server.watch_count() == 1).then_some(()) }).await;
    server.apply(pod("default", "b", json!({"app": "vllm"})));
    assert_eq!(next_line().await, "ADDED b");
    server.delete("", "pods", "default", "b").expect("b existed");
    assert_eq!(next_line().await, "DELETED b");
    watch.kill().await.expect("kill kubectl");
}

#[tokio::test]
async fn test_crd_resource_registered_at_runtime() {
    const GROUP: &str = "inference.networking.k8s.io";
    let server = FakeApiServer::start().await;
    let client = server.client();
    let gvk = GroupVersionKind::gvk(GROUP, "v1", "InferencePool");
    let pools: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), "default", &ApiResource::from_gvk_with_plural(&gvk, "inferencepools"));
    let expect_not_found = |result: kube::Result<ObjectList<DynamicObject>>| match result {
        Err(kube::Error::Api(status)) => assert_eq!((status.code, status.reason.as_str()), (404, "NotFound")),
        other => panic!("expected 404 NotFound, got {other:?}"),
    };
    expect_not_found(pools.list(&ListParams::default()).await);

    server.register(GROUP, "v1", "inferencepools", "InferencePool", true);
    server.apply(json!({
        "apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
        "metadata": {"name": "pool"},
        "spec": {"selector": {"matchLabels": {"app": "vllm"}}, "targetPorts": [{"number": 8000}]},
    }));
    let list = pools.list(&ListParams::default()).await.expect("list pools");
    assert_eq!(names(&list), ["pool"]);
    assert_eq!(list.items[0].data["spec"]["targetPorts"][0]["number"], 8000);
    let missing = pools.get("missing").await.expect_err("no such pool");
    assert!(matches!(missing, kube::Error::Api(s) if s.code == 404 && s.reason == "NotFound"));

    let discovery = kube::Discovery::new(client).filter(&[GROUP]).run().await.expect("discovery");
    let group = discovery.get(GROUP).expect("group discovered");
    let (resource, caps) = group.recommended_resources().into_iter().next().expect("a resource");
    assert_eq!((resource.plural.as_str(), resource.kind.as_str()), ("inferencepools", "InferencePool"));
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);

    server.unregister(GROUP, "inferencepools");
    expect_not_found(pools.list(&ListParams::default()).await);
}

/// `drop_watches` cuts the connection inside the chunked body (what a client sees when an API
/// server dies), unlike `timeoutSeconds`, which ends the body properly.
#[tokio::test]
async fn test_dropped_watch_is_cut_mid_stream() {
    let server = FakeApiServer::start().await;
    server.apply(pod("default", "a", json!({})));
    let url = format!("{}/api/v1/namespaces/default/pods?watch=true&resourceVersion=0", server.url());
    let mut response = crate::support::client().get(url).send().await.expect("watch");
    let first = tokio::time::timeout(WAIT, response.chunk()).await.expect("in time").expect("chunk").expect("event");
    let first: Value = serde_json::from_slice(&first).expect("json line");
    assert_eq!((first["type"].as_str(), first["object"]["metadata"]["name"].as_str()), (Some("ADDED"), Some("a")));
    server.drop_watches();
    let end = tokio::time::timeout(WAIT, response.chunk()).await.expect("in time");
    assert!(end.is_err(), "expected a broken body, got {end:?}");
}
