//! WATCH: one chunked response of newline-separated `{"type","object"}` events.
//!
//! A watch starts from its `resourceVersion`: unset or "0" replays the current objects as ADDED,
//! `N` replays the history after `N` (or sends one 410 Expired ERROR and ends when that history
//! was compacted). Live events follow, filtered by namespace and selectors the way the API
//! server's watch cache does: a modification that makes an object match is sent as ADDED, one that
//! makes it stop matching as DELETED with its previous state. With `allowWatchBookmarks` a
//! BOOKMARK carries the current resourceVersion every second; `timeoutSeconds` ends the stream
//! cleanly. The test's `drop_watches` ends it with an error instead, which makes hyper cut the
//! connection without the final chunk.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, StreamBody};
use hyper::Response;
use hyper::StatusCode;
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::{Instant, Interval};

use super::select::Selectors;
use super::server::{self, Body, Params};
use super::{Event, EventType, Resource, Shared, Store, WatchMsg, WatchSub, set_rv};

const BOOKMARK_PERIOD: Duration = Duration::from_secs(1);

/// Which events of a resource one watch sees.
struct Filter {
    namespace: Option<String>,
    selectors: Selectors,
}

/// What the body sends next.
enum Out {
    Line(Bytes),
    /// End the body with an error: hyper then closes the connection mid-stream.
    Abort,
}

/// The state of one open watch, unfolded into the response body.
struct Watch {
    shared: Arc<Shared>,
    filter: Filter,
    rx: mpsc::UnboundedReceiver<WatchMsg>,
    /// The watch's starting resourceVersion: only later events are sent (a client may ask for a
    /// version the store has not reached yet).
    after: u64,
    pending: VecDeque<Out>,
    deadline: Option<Instant>,
    bookmarks: Option<Interval>,
    /// `kind` and `apiVersion` of the watched resource, which a BOOKMARK object carries.
    type_meta: (String, String),
    done: bool,
}

/// Starts a watch; called with the store locked so that the replayed history and the live events
/// that follow neither overlap nor leave a gap.
pub fn watch(
    shared: &Arc<Shared>,
    store: &mut Store,
    resource: &Resource,
    namespace: Option<&str>,
    params: &Params,
) -> Response<Body> {
    let selectors = match server::selectors(params) {
        Ok(selectors) => selectors,
        Err(response) => return *response,
    };
    if params.get("sendInitialEvents").is_some_and(|s| server::parse_bool(s)) {
        let message = "sendInitialEvents: Forbidden: sendInitialEvents is forbidden for watch unless the WatchList \
                       feature gate is enabled";
        return server::status_response(422, "Invalid", message);
    }
    let timeout = match params.get("timeoutSeconds").map(|t| t.parse::<u64>()) {
        None | Some(Ok(0)) => None,
        Some(Ok(seconds)) => Some(Duration::from_secs(seconds)),
        Some(Err(_)) => return server::status_response(400, "BadRequest", "timeoutSeconds must be an integer"),
    };
    let filter = Filter { namespace: namespace.map(str::to_string), selectors };
    let key = resource.key();
    let mut pending = VecDeque::new();
    let mut after = store.rv;
    match params.get("resourceVersion").map(String::as_str).filter(|rv| !rv.is_empty() && *rv != "0") {
        None => {
            let objects = store.objects.get(&key).into_iter().flat_map(|objects| objects.values());
            for object in objects.filter(|o| filter.sees(o)) {
                pending.push_back(Out::Line(line("ADDED", object)));
            }
        }
        Some(rv) => {
            let Ok(rv) = rv.parse::<u64>() else {
                return server::status_response(400, "BadRequest", &format!("invalid resource version: {rv}"));
            };
            if rv < store.compacted {
                let message = format!("too old resource version: {rv} ({})", store.compacted);
                let error = line("ERROR", &server::status_object(410, "Expired", &message));
                let body = futures::stream::iter([Ok(Frame::data(error))]);
                return server::with_json_type(StatusCode::OK, StreamBody::new(body).boxed_unsync());
            }
            after = rv;
            let history = store.history.iter().filter(|e| e.rv > rv && e.resource == key);
            pending.extend(history.filter_map(|e| filter.render(e)).map(Out::Line));
        }
    }
    let (tx, rx) = mpsc::unbounded_channel();
    store.watches.push(WatchSub { resource: key, tx });
    let bookmarks = params.get("allowWatchBookmarks").is_some_and(|b| server::parse_bool(b)).then(|| {
        let mut interval = tokio::time::interval_at(Instant::now() + BOOKMARK_PERIOD, BOOKMARK_PERIOD);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval
    });
    let watch = Watch {
        shared: shared.clone(),
        filter,
        rx,
        after,
        pending,
        deadline: timeout.map(|t| Instant::now() + t),
        bookmarks,
        type_meta: (resource.kind.clone(), resource.api_version()),
        done: false,
    };
    // No length: hyper sends the body chunked, one event per chunk.
    let body = StreamBody::new(futures::stream::unfold(watch, Watch::next));
    server::with_json_type(StatusCode::OK, body.boxed_unsync())
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut text = json!({"type": kind, "object": object}).to_string();
    text.push('\n');
    Bytes::from(text)
}

// === impl Filter ===

impl Filter {
    fn sees(&self, object: &Value) -> bool {
        server::in_namespace(object, self.namespace.as_deref()) && self.selectors.matches(object)
    }

    /// The line this watch gets for an event, if any.
    fn render(&self, event: &Event) -> Option<Bytes> {
        if !server::in_namespace(&event.object, self.namespace.as_deref()) {
            return None;
        }
        let now = self.selectors.matches(&event.object);
        match event.kind {
            EventType::Added => now.then(|| line("ADDED", &event.object)),
            EventType::Deleted => now.then(|| line("DELETED", &event.object)),
            EventType::Modified => {
                let before = event.previous.as_ref().filter(|p| self.selectors.matches(p));
                match (before, now) {
                    (Some(_), true) => Some(line("MODIFIED", &event.object)),
                    (None, true) => Some(line("ADDED", &event.object)),
                    (Some(previous), false) => {
                        let mut gone = previous.clone();
                        set_rv(&mut gone, event.rv);
                        Some(line("DELETED", &gone))
                    }
                    (None, false) => None,
                }
            }
        }
    }
}

// === impl Watch ===

impl Watch {
    async fn next(mut self) -> Option<(Result<Frame<Bytes>, std::io::Error>, Watch)> {
        loop {
            if self.done {
                return None;
            }
            match self.pending.pop_front() {
                Some(Out::Line(line)) => return Some((Ok(Frame::data(line)), self)),
                Some(Out::Abort) => {
                    self.done = true;
                    return Some((Err(std::io::Error::other("watch connection dropped by the test")), self));
                }
                None => {}
            }
            tokio::select! {
                msg = self.rx.recv() => match msg {
                    Some(msg) => self.receive(msg),
                    // The resource was unregistered (or the server is gone): end cleanly.
                    None => return None,
                },
                () = sleep_until(self.deadline) => return None,
                () = tick(self.bookmarks.as_mut()) => self.bookmark(),
            }
        }
    }

    fn receive(&mut self, msg: WatchMsg) {
        match msg {
            WatchMsg::Event(event) if event.rv > self.after => {
                self.pending.extend(self.filter.render(&event).map(Out::Line));
            }
            WatchMsg::Event(_) => {}
            WatchMsg::Abort => self.pending.push_back(Out::Abort),
        }
    }

    /// Queues a BOOKMARK at the current resourceVersion after every event published before it:
    /// events are published under the store lock, so once it is held they are all in `rx`.
    fn bookmark(&mut self) {
        let shared = self.shared.clone();
        let store = shared.store();
        while let Ok(msg) = self.rx.try_recv() {
            self.receive(msg);
        }
        let (kind, api_version) = &self.type_meta;
        let object =
            json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": store.rv.to_string()}});
        self.pending.push_back(Out::Line(line("BOOKMARK", &object)));
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn tick(interval: Option<&mut Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}
