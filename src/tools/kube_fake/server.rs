//! The HTTP side of the fake: accepting connections (and refusing them while down), routing, GET
//! and LIST of objects, discovery documents and `Status` errors. Watches are in `stream`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use super::select::{FieldSelector, LabelSelector, Selectors};
use super::{Page, Resource, Shared, Store, stream};

pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;
/// Query parameters of one request, decoded; a repeated key keeps its last value.
pub type Params = HashMap<String, String>;

/// Serves HTTP/1.1 (what kubectl and kube speak over plain http) until the server is dropped.
pub async fn accept_loop(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(_) => {
                // Out of file descriptors and the like: retry without spinning a core.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let mut down = shared.down.subscribe();
        if *down.borrow_and_update() {
            // A server that is down: the client sees its connection closed with no response.
            continue;
        }
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(shared.clone(), req));
            let connection = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service);
            // Going down drops the connection mid-flight, which closes the socket.
            tokio::select! {
                _ = connection => {}
                _ = down.wait_for(|down| *down) => {}
            }
        });
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let uri = req.uri().clone();
    let target = uri.path_and_query().map_or(uri.path(), |pq| pq.as_str());
    shared.store().log.push(format!("{} {target}", req.method()));
    Ok(route(&shared, req.method(), &uri))
}

fn route(shared: &Arc<Shared>, method: &Method, uri: &Uri) -> Response<Body> {
    if method != Method::GET {
        let message = format!("the server does not allow this method on the requested resource: {method}");
        return status_response(405, "MethodNotAllowed", &message);
    }
    let Ok(axum::extract::Query(params)) = axum::extract::Query::<Params>::try_from_uri(uri) else {
        return status_response(400, "BadRequest", "malformed query string");
    };
    let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        ["version"] => json_response(StatusCode::OK, &version()),
        ["api"] => json_response(StatusCode::OK, &api_versions(shared)),
        ["apis"] => json_response(StatusCode::OK, &group_list(&shared.store())),
        ["api", "v1"] => resource_list(&shared.store(), "", "v1"),
        ["apis", group, version] => resource_list(&shared.store(), group, version),
        ["api", "v1", rest @ ..] => resource_request(shared, "", "v1", rest, &params),
        ["apis", group, version, rest @ ..] => resource_request(shared, group, version, rest, &params),
        _ => not_found(),
    }
}

fn resource_request(
    shared: &Arc<Shared>,
    group: &str,
    version: &str,
    rest: &[&str],
    params: &Params,
) -> Response<Body> {
    let (namespace, plural, name) = match *rest {
        ["namespaces", namespace, plural] => (Some(namespace), plural, None),
        ["namespaces", namespace, plural, name] => (Some(namespace), plural, Some(name)),
        [plural] => (None, plural, None),
        [plural, name] => (None, plural, Some(name)),
        _ => return not_found(),
    };
    let mut store = shared.store();
    let Some(resource) = store.resource(group, version, plural).cloned() else {
        return not_found();
    };
    // A cluster-scoped resource has no namespaced paths; a namespaced object is only addressable
    // with its namespace (listing without one spans all namespaces).
    let cluster_in_namespace = namespace.is_some() && !resource.namespaced;
    if cluster_in_namespace || (resource.namespaced && namespace.is_none() && name.is_some()) {
        return not_found();
    }
    if let Some(name) = name {
        return get(&store, &resource, namespace.unwrap_or(""), name);
    }
    if params.get("watch").is_some_and(|w| parse_bool(w)) {
        return stream::watch(shared, &mut store, &resource, namespace, params);
    }
    list(&mut store, &resource, namespace, params)
}

fn get(store: &Store, resource: &Resource, namespace: &str, name: &str) -> Response<Body> {
    let object = store.objects.get(&resource.key()).and_then(|objects| objects.get(&(namespace.into(), name.into())));
    match object {
        Some(object) => json_response(StatusCode::OK, object),
        None => {
            let mut status = status_object(404, "NotFound", &format!("{} \"{name}\" not found", resource.plural));
            status["details"] = json!({"name": name, "group": resource.group, "kind": resource.plural});
            json_response(StatusCode::NOT_FOUND, &status)
        }
    }
}

/// LIST: the current state (or the rest of a paged list's snapshot), filtered and paged.
fn list(store: &mut Store, resource: &Resource, namespace: Option<&str>, params: &Params) -> Response<Body> {
    let selectors = match selectors(params) {
        Ok(selectors) => selectors,
        Err(response) => return *response,
    };
    let limit = match params.get("limit").map(|l| l.parse::<usize>()) {
        None => 0,
        Some(Ok(limit)) => limit,
        Some(Err(_)) => return status_response(400, "BadRequest", "limit must be a non-negative integer"),
    };
    let (rv, mut items) = match params.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => match store.pages.remove(token) {
            Some(page) => (page.rv, page.items),
            None => {
                let message = "The provided continue parameter is too old to display a consistent list result. \
                               You can start a new list without the continue parameter.";
                return status_response(410, "Expired", message);
            }
        },
        None => {
            if let Some(response) = check_list_version(store.rv, params) {
                return response;
            }
            let objects = store.objects.get(&resource.key()).into_iter().flat_map(|objects| objects.values());
            let items = objects.filter(|o| in_namespace(o, namespace) && selectors.matches(o)).cloned().collect();
            (store.rv, items)
        }
    };
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if limit > 0 && items.len() > limit {
        let rest = items.split_off(limit);
        store.next_token += 1;
        let token = format!("{rv}-{}", store.next_token);
        metadata["continue"] = json!(token);
        metadata["remainingItemCount"] = json!(rest.len());
        store.pages.insert(token, Page { rv, items: rest });
    }
    let list = json!({
        "kind": format!("{}List", resource.kind),
        "apiVersion": resource.api_version(),
        "metadata": metadata,
        "items": items,
    });
    json_response(StatusCode::OK, &list)
}

/// `resourceVersion` of a LIST: unset or "0" is any state, `N` (NotOlderThan) needs the store at
/// `N` or later; `Exact` is only served for the current version, since no older state is kept.
fn check_list_version(current: u64, params: &Params) -> Option<Response<Body>> {
    let rv = params.get("resourceVersion").filter(|rv| !rv.is_empty() && *rv != "0")?;
    let Ok(rv) = rv.parse::<u64>() else {
        return Some(status_response(400, "BadRequest", &format!("invalid resource version: {rv}")));
    };
    if rv > current {
        let message = format!("Too large resource version: {rv}, current: {current}");
        return Some(status_response(504, "Timeout", &message));
    }
    let exact = params.get("resourceVersionMatch").is_some_and(|m| m == "Exact");
    (exact && rv != current).then(|| status_response(410, "Expired", &format!("too old resource version: {rv}")))
}

/// Parses `labelSelector` and `fieldSelector`; a bad one is a 400 `Status`, as on a real server.
pub fn selectors(params: &Params) -> Result<Selectors, Box<Response<Body>>> {
    let labels = LabelSelector::parse(params.get("labelSelector").map_or("", String::as_str));
    let fields = FieldSelector::parse(params.get("fieldSelector").map_or("", String::as_str));
    match (labels, fields) {
        (Ok(labels), Ok(fields)) => Ok(Selectors { labels, fields }),
        (Err(e), _) | (_, Err(e)) => Err(Box::new(status_response(400, "BadRequest", &e.to_string()))),
    }
}

pub fn in_namespace(object: &Value, namespace: Option<&str>) -> bool {
    namespace.is_none_or(|ns| object.pointer("/metadata/namespace").and_then(Value::as_str) == Some(ns))
}

/// Go's `strconv.ParseBool` truths, which the API server uses for `watch` and friends.
pub fn parse_bool(text: &str) -> bool {
    matches!(text, "1" | "t" | "T" | "true" | "TRUE" | "True")
}

// --- discovery ---

fn version() -> Value {
    json!({
        "major": "1", "minor": "34", "gitVersion": "v1.34.0-switchyard-fake", "gitCommit": "0000000",
        "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24.0",
        "compiler": "gc", "platform": "linux/amd64",
    })
}

fn api_versions(shared: &Shared) -> Value {
    let address = [json!({"clientCIDR": "0.0.0.0/0", "serverAddress": shared.addr.to_string()})];
    json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": address})
}

fn group_list(store: &Store) -> Value {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for resource in store.resources.iter().filter(|r| !r.group.is_empty()) {
        match groups.iter_mut().find(|(name, _)| *name == resource.group) {
            Some((_, versions)) if versions.contains(&resource.version) => {}
            Some((_, versions)) => versions.push(resource.version.clone()),
            None => groups.push((resource.group.clone(), vec![resource.version.clone()])),
        }
    }
    let groups: Vec<Value> = groups
        .iter()
        .map(|(name, versions)| {
            let versions: Vec<Value> =
                versions.iter().map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v})).collect();
            json!({"name": name, "preferredVersion": versions[0].clone(), "versions": versions})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn resource_list(store: &Store, group: &str, version: &str) -> Response<Body> {
    let resources: Vec<Value> = store
        .resources
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .map(|r| {
            json!({
                "name": r.plural, "singularName": r.kind.to_lowercase(), "namespaced": r.namespaced,
                "kind": r.kind, "verbs": ["get", "list", "watch"],
            })
        })
        .collect();
    if resources.is_empty() && !group.is_empty() {
        return not_found();
    }
    let group_version = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    let list =
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources});
    json_response(StatusCode::OK, &list)
}

// --- responses ---

pub fn status_object(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "details": {}, "code": code,
    })
}

pub fn status_response(code: u16, reason: &str, message: &str) -> Response<Body> {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, &status_object(code, reason, message))
}

/// What the API server answers for a path it does not serve, such as a CRD not installed.
fn not_found() -> Response<Body> {
    status_response(404, "NotFound", "the server could not find the requested resource")
}

pub fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let body = Full::new(Bytes::from(body.to_string())).map_err(|never| match never {}).boxed_unsync();
    with_json_type(status, body)
}

pub fn with_json_type(status: StatusCode, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
