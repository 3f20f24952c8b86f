//! An in-test Kubernetes API server on 127.0.0.1 that the real `kube` client, `kube::runtime`'s
//! watcher and `kubectl` talk to over plain HTTP/1.1.
//!
//! It stores objects of any registered resource (core pods by default, CRDs when a test registers
//! them) as JSON, stamps every write with a global increasing `resourceVersion`, keeps the history
//! of events for watches that resume from an older version, and serves discovery, LIST (selectors,
//! `limit`/`continue`) and WATCH (history then live events, selector transitions, bookmarks,
//! `timeoutSeconds`, 410 Expired after compaction). Tests change the world through [`FakeApiServer`]
//! (`apply`, `delete`, `compact`) and break it (`drop_watches`, `set_down`), then check what the
//! clients did through `request_log` and `watch_count`.
//!
//! A test double beside the product (like the simulator): the integration tests and the
//! discovery benchmark use it; nothing in the roles does. It panics on misuse, as test code does.
//!
//! It does not: authenticate, accept writes over HTTP (create, update, patch and delete are test
//! controls, and discovery advertises only get/list/watch), validate objects against a schema,
//! serve the aggregated (v2) discovery format (clients fall back to the legacy documents), or
//! stream initial events (`sendInitialEvents` is refused with 422, as a server without the
//! WatchList feature does).

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

pub mod select;
mod server;
mod stream;

/// One registered resource: what a CRD (or a built-in type) makes the server serve.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub kind: String,
    pub namespaced: bool,
}

/// What happened to an object, as a watch reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One write, kept in the history with the object state at that time. `previous` is the state
/// before a modification: a selector watch needs it to turn a MODIFIED into ADDED or DELETED.
#[derive(Debug)]
struct Event {
    rv: u64,
    resource: ResourceKey,
    kind: EventType,
    object: Value,
    previous: Option<Value>,
}

/// Storage identity of a resource: `(group, plural)`, shared by all its versions.
type ResourceKey = (String, String);
/// Object identity within a resource: `(namespace, name)`, namespace empty when cluster-scoped.
type ObjectKey = (String, String);

enum WatchMsg {
    Event(Arc<Event>),
    /// Close the connection without ending the chunked body, as a dying server does.
    Abort,
}

/// An open watch: events of `resource` are sent to it until its receiver (the response body) goes.
struct WatchSub {
    resource: ResourceKey,
    tx: mpsc::UnboundedSender<WatchMsg>,
}

/// The rest of a paged LIST, served from the snapshot taken by its first page.
struct Page {
    rv: u64,
    items: VecDeque<Value>,
}

/// Everything the server knows; guarded by one mutex that is never held across an await, so a
/// write and its fan-out to open watches are atomic with respect to a watch starting.
struct Store {
    rv: u64,
    /// The history holds every event with `rv > compacted`; a watch from an older version gets 410.
    compacted: u64,
    resources: Vec<Resource>,
    objects: BTreeMap<ResourceKey, BTreeMap<ObjectKey, Value>>,
    history: Vec<Arc<Event>>,
    watches: Vec<WatchSub>,
    pages: HashMap<String, Page>,
    next_token: u64,
    next_uid: u64,
    uid_prefix: u32,
    log: Vec<String>,
}

/// State shared by the server tasks and the test handle.
struct Shared {
    store: Mutex<Store>,
    /// `true` while the server is "down": every connection is closed and new ones are dropped.
    down: watch::Sender<bool>,
    addr: SocketAddr,
}

/// The fake API server; it stops (closing every connection) when dropped.
pub struct FakeApiServer {
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

// === impl Resource ===

impl Resource {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.clone() } else { format!("{}/{}", self.group, self.version) }
    }

    fn key(&self) -> ResourceKey {
        (self.group.clone(), self.plural.clone())
    }
}

// === impl Store ===

impl Store {
    fn resource(&self, group: &str, version: &str, plural: &str) -> Option<&Resource> {
        self.resources.iter().find(|r| r.group == group && r.version == version && r.plural == plural)
    }

    /// Appends an event to the history and hands it to every open watch of its resource, dropping
    /// watches whose connection is gone.
    fn publish(&mut self, event: Event) {
        let event = Arc::new(event);
        self.history.push(event.clone());
        self.watches.retain(|w| {
            if w.resource != event.resource {
                return !w.tx.is_closed();
            }
            w.tx.send(WatchMsg::Event(event.clone())).is_ok()
        });
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }
}

// === impl Shared ===

impl Shared {
    fn store(&self) -> MutexGuard<'_, Store> {
        // A test that panicked while holding the lock already failed; keep serving the others.
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

// === impl FakeApiServer ===

impl FakeApiServer {
    /// Binds 127.0.0.1:0 and serves until dropped; core/v1 pods are registered.
    pub async fn start() -> FakeApiServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind fake api server");
        let addr = listener.local_addr().expect("fake api server address");
        let store = Store {
            rv: 1,
            compacted: 0,
            resources: Vec::new(),
            objects: BTreeMap::new(),
            history: Vec::new(),
            watches: Vec::new(),
            pages: HashMap::new(),
            next_token: 0,
            next_uid: 0,
            uid_prefix: rand::random(),
            log: Vec::new(),
        };
        let (down, _) = watch::channel(false);
        let shared = Arc::new(Shared { store: Mutex::new(store), down, addr });
        let accept = tokio::spawn(server::accept_loop(listener, shared.clone()));
        let server = FakeApiServer { shared, accept };
        server.register("", "v1", "pods", "Pod", true);
        server
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// Writes `dir/kubeconfig`: one cluster at [`Self::url`], a context with namespace "default".
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\n\
             current-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
            self.url()
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    /// A `kube::Client` for this server, default namespace "default".
    pub fn client(&self) -> kube::Client {
        crate::ensure_crypto_provider();
        let url: hyper::Uri = self.url().parse().expect("fake api server url");
        kube::Client::try_from(kube::Config::new(url)).expect("kube client")
    }

    /// Serves a resource from now on, as installing a CRD does. Registering it again replaces
    /// its kind and scope.
    pub fn register(&self, group: &str, version: &str, plural: &str, kind: &str, namespaced: bool) {
        let resource = Resource {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            kind: kind.into(),
            namespaced,
        };
        let mut store = self.shared.store();
        store.resources.retain(|r| !(r.group == group && r.version == version && r.plural == plural));
        store.resources.push(resource);
    }

    /// Stops serving every version of a resource, as deleting its CRD does: its objects are gone and
    /// its open watches end (cleanly, as the API server ends them).
    pub fn unregister(&self, group: &str, plural: &str) {
        let mut store = self.shared.store();
        let key: ResourceKey = (group.into(), plural.into());
        store.resources.retain(|r| r.key() != key);
        store.objects.remove(&key);
        store.history.retain(|e| e.resource != key);
        // Dropping the sender ends the watch stream after what it already queued.
        store.watches.retain(|w| w.resource != key);
    }

    /// Creates or replaces an object of a registered resource (found by its apiVersion and kind),
    /// publishing ADDED or MODIFIED; returns the stored object. Replacing keeps uid and
    /// creationTimestamp; an apply that changes nothing writes nothing, as on a real server.
    pub fn apply(&self, object: impl serde::Serialize) -> Value {
        let mut object = serde_json::to_value(object).expect("object as json");
        let (api_version, kind) = (str_at(&object, "/apiVersion"), str_at(&object, "/kind"));
        let mut store = self.shared.store();
        let resource = store
            .resources
            .iter()
            .find(|r| r.api_version() == api_version && r.kind == kind)
            .unwrap_or_else(|| panic!("apply: {api_version} {kind} is not registered"))
            .clone();
        let name = str_at(&object, "/metadata/name");
        assert!(!name.is_empty(), "apply: object without metadata.name");
        let metadata = object.pointer_mut("/metadata").and_then(Value::as_object_mut).expect("metadata object");
        let namespace = if resource.namespaced {
            let ns = metadata.get("namespace").and_then(Value::as_str).unwrap_or("default").to_string();
            metadata.insert("namespace".into(), json!(ns));
            ns
        } else {
            metadata.remove("namespace");
            String::new()
        };
        let key = (namespace, name);
        let previous = store.objects.get(&resource.key()).and_then(|objects| objects.get(&key)).cloned();
        if let Some(previous) = &previous {
            for field in ["uid", "creationTimestamp", "resourceVersion"] {
                match previous.pointer(&format!("/metadata/{field}")) {
                    Some(value) => metadata.insert(field.into(), value.clone()),
                    None => metadata.remove(field),
                };
            }
            if *previous == object {
                return object;
            }
        } else {
            store.next_uid += 1;
            let uid = format!("{:08x}-0000-4000-8000-{:012x}", store.uid_prefix, store.next_uid);
            let now = k8s_openapi::jiff::Timestamp::now().as_second();
            let created = k8s_openapi::jiff::Timestamp::from_second(now).expect("timestamp in range");
            metadata.insert("uid".into(), json!(uid));
            metadata.insert("creationTimestamp".into(), json!(created.to_string()));
        }
        let rv = store.next_rv();
        set_rv(&mut object, rv);
        store.objects.entry(resource.key()).or_default().insert(key, object.clone());
        let kind = if previous.is_some() { EventType::Modified } else { EventType::Added };
        store.publish(Event { rv, resource: resource.key(), kind, object: object.clone(), previous });
        object
    }

    /// Deletes an object, publishing DELETED with its last state (stamped with the deletion's
    /// resourceVersion, as the API server does); returns that state, `None` if it did not exist.
    pub fn delete(&self, group: &str, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        let mut store = self.shared.store();
        let resource: ResourceKey = (group.into(), plural.into());
        let mut object = store.objects.get_mut(&resource)?.remove(&(namespace.into(), name.into()))?;
        let rv = store.next_rv();
        set_rv(&mut object, rv);
        store.publish(Event { rv, resource, kind: EventType::Deleted, object: object.clone(), previous: None });
        Some(object)
    }

    /// Forgets the event history and every paged LIST in progress: a watch resuming from a version
    /// older than the current one gets 410 Expired, as after an etcd compaction.
    pub fn compact(&self) {
        let mut store = self.shared.store();
        store.compacted = store.rv;
        store.history.clear();
        store.pages.clear();
    }

    /// Cuts every open watch connection mid-stream, as an API server restart or a load balancer
    /// would; clients see the chunked body end without its terminating chunk.
    pub fn drop_watches(&self) {
        let mut store = self.shared.store();
        for watch in store.watches.drain(..) {
            let _ = watch.tx.send(WatchMsg::Abort);
        }
    }

    /// While down, every open connection is closed and new connections are closed as soon as they
    /// are accepted, without a response. The stored objects survive, as they do in etcd.
    pub fn set_down(&self, down: bool) {
        self.shared.down.send_replace(down);
    }

    /// `METHOD path?query` of every request served, in order.
    pub fn request_log(&self) -> Vec<String> {
        self.shared.store().log.clone()
    }

    /// Watches whose connection is still open.
    pub fn watch_count(&self) -> usize {
        let mut store = self.shared.store();
        store.watches.retain(|w| !w.tx.is_closed());
        store.watches.len()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.accept.abort();
        self.shared.down.send_replace(true);
    }
}

fn str_at(value: &Value, pointer: &str) -> String {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or_default().to_string()
}

fn set_rv(object: &mut Value, rv: u64) {
    if let Some(metadata) = object.pointer_mut("/metadata").and_then(Value::as_object_mut) {
        metadata.insert("resourceVersion".into(), json!(rv.to_string()));
    }
}
