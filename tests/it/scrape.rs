//! Scraper actors against the simulator and hostile servers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use switchyard::metrics::EngineRegistry;
use switchyard::model::{Endpoint, EndpointId, MetricsState};
use switchyard::scraper::{
    AssignEndpoints, FetchSettings, GetState, ScrapeReports, ScrapeSettings, ScrapeSink, ScrapeSupervisor,
};
use switchyard::sim::{self, Flavor};
use switchyard::tools::board::{Board, GetBoard};

use crate::hostile::{self, Hostile};
use crate::support::wait_for;

fn endpoint(id: &str, addr: &str, engine: &str) -> Endpoint {
    Endpoint {
        id: EndpointId::new(id),
        address: addr.to_string(),
        metrics_url: format!("http://{addr}/metrics"),
        engine: engine.to_string(),
        labels: BTreeMap::new(),
    }
}

const INTERVAL: Duration = Duration::from_millis(50);

fn settings() -> ScrapeSettings {
    ScrapeSettings {
        interval: INTERVAL,
        fetch: FetchSettings { timeout: Duration::from_millis(300), max_page_bytes: 256 * 1024, ..Default::default() },
    }
}

/// When `id` was last scraped successfully, per the board; `None` before its first success.
async fn last_scraped(board: &Addr<Board>, id: &EndpointId) -> Option<SystemTime> {
    board.send(GetBoard).await.ok()?.states.get(id)?.sample().map(|s| s.scraped_at)
}

/// Every failure published, per endpoint (the board keeps only a count and the last error of
/// endpoints that were once scraped); every batch goes on to the board.
struct FailureLog(BTreeMap<EndpointId, Vec<String>>, ScrapeSink);

impl Actor for FailureLog {
    type Context = Context<Self>;
}

impl Handler<ScrapeReports> for FailureLog {
    type Result = ();

    fn handle(&mut self, msg: ScrapeReports, _: &mut Context<Self>) {
        for failed in msg.0.iter().filter_map(|r| r.as_ref().err()) {
            self.0.entry(failed.endpoint.clone()).or_default().push(failed.error.to_string());
        }
        self.1.reports.do_send(msg);
    }
}

#[derive(Message)]
#[rtype(result = "BTreeMap<EndpointId, Vec<String>>")]
struct GetFailures;

impl Handler<GetFailures> for FailureLog {
    type Result = MessageResult<GetFailures>;

    fn handle(&mut self, _: GetFailures, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.0.clone())
    }
}

/// A /metrics server that counts the connections it gets and hangs up.
async fn counting_server() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::Relaxed);
            drop(sock);
        }
    });
    (addr, hits)
}

/// Waits until `counter` reaches `n`.
async fn count_reaches(what: &str, counter: &AtomicUsize, n: usize) {
    wait_for(what, Duration::from_secs(10), || async move { (counter.load(Ordering::Relaxed) >= n).then_some(()) })
        .await;
}

#[actix_rt::test]
async fn every_engine_is_scraped_and_normalized() {
    let fleet = sim::start_fleet(&sim::FleetConfig::default()).await.expect("fleet");
    let endpoints: Vec<Endpoint> =
        fleet.iter().map(|h| endpoint(&h.name, &h.addr.to_string(), h.flavor.engine())).collect();
    let (board, sink) = Board::start_sink();
    let sup = ScrapeSupervisor::new(Arc::new(EngineRegistry::builtin()), &settings(), sink).expect("sup").start();
    sup.do_send(AssignEndpoints(endpoints.clone()));
    let view = wait_for("all endpoints scraped", Duration::from_secs(10), || {
        let board = board.clone();
        async move {
            let v = board.send(GetBoard).await.ok()?;
            (v.states.len() == 5 && v.states.values().all(|s| s.sample().is_some())).then_some(v)
        }
    })
    .await;
    for (id, state) in &view.states {
        let s = state.sample().expect("sample");
        assert!(s.errors.is_empty(), "{id}: {:?}", s.errors);
        assert_eq!(s.metrics.queued, Some(0), "{id}");
        assert_eq!(s.metrics.kv_usage, Some(0.0), "{id}");
        assert_eq!(s.metrics.cache_block_size, Some(16), "{id}");
        let lora = fleet.iter().find(|h| h.name == id.as_str()).expect("handle").flavor.supports_lora();
        assert_eq!(s.metrics.running_lora.is_some(), lora, "{id}");
    }
    let state = sup.send(GetState).await.expect("state");
    assert_eq!(state.scraping.len(), 5);
}

#[actix_rt::test]
async fn load_shows_up_in_scraped_metrics() {
    let cfg = sim::FleetConfig {
        fleet: vec![(Flavor::VllmV1, 1)],
        params: sim::ModelParams { kv_blocks: 400, decode_base_s: 0.05, ..sim::ModelParams::default() },
        ..sim::FleetConfig::default()
    };
    let fleet = sim::start_fleet(&cfg).await.expect("fleet");
    let addr = fleet[0].addr.to_string();
    let (board, sink) = Board::start_sink();
    let sup = ScrapeSupervisor::new(Arc::new(EngineRegistry::builtin()), &settings(), sink).expect("sup").start();
    sup.do_send(AssignEndpoints(vec![endpoint("busy", &addr, "vllm")]));
    let client = crate::support::client();
    for _ in 0..6 {
        let (client, addr) = (client.clone(), addr.clone());
        tokio::spawn(async move {
            let body = serde_json::json!({"model": "meta-llama/Llama-3.1-8B-Instruct", "prompt": "x".repeat(4000), "max_tokens": 400});
            let _ = client.post(format!("http://{addr}/v1/completions")).json(&body).send().await;
        });
    }
    // 6 requests × (1000 + 400 tokens) / 16 = 528+ blocks > 400: some run, the rest queue.
    wait_for("a queue and KV usage to be scraped", Duration::from_secs(10), || {
        let board = board.clone();
        async move {
            let v = board.send(GetBoard).await.ok()?;
            let m = &v.states.get(&EndpointId::new("busy"))?.sample()?.metrics;
            (m.queued? > 0 && m.running? > 0 && m.kv_usage? > 0.5).then_some(())
        }
    })
    .await;
}

#[actix_rt::test]
async fn hostile_endpoints_only_hurt_themselves() {
    let fleet = sim::start_fleet(&sim::FleetConfig { fleet: vec![(Flavor::VllmV1, 1)], ..Default::default() })
        .await
        .expect("fleet");
    let mut endpoints = vec![endpoint("good", &fleet[0].addr.to_string(), "vllm")];
    let kinds = [
        (Hostile::Silent, "timed out"),
        (Hostile::Endless, "larger than"),
        (Hostile::Garbage, "no mapped metric"),
        (Hostile::ServerError, "http status 500"),
        (Hostile::NotUtf8, "not valid UTF-8"),
        (Hostile::Hangup, "request failed"),
    ];
    let mut expected: Vec<(String, &str)> = Vec::new();
    for (kind, reason) in kinds {
        let addr = hostile::spawn(kind).await;
        endpoints.push(endpoint(&format!("{kind:?}"), &addr.to_string(), "vllm"));
        expected.push((format!("{kind:?}"), reason));
    }
    // A port nothing listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    endpoints.push(endpoint("Refused", &closed.to_string(), "vllm"));
    expected.push(("Refused".into(), "connection refused"));

    let (board, board_sink) = Board::start_sink();
    let log = FailureLog(BTreeMap::new(), board_sink).start();
    let sink = ScrapeSink { reports: log.clone().recipient() };
    let sup = ScrapeSupervisor::new(Arc::new(EngineRegistry::builtin()), &settings(), sink).expect("sup").start();
    sup.do_send(AssignEndpoints(endpoints));
    let good = EndpointId::new("good");
    wait_for("the good endpoint scraped", Duration::from_secs(10), || last_scraped(&board, &good)).await;
    // Until the silent endpoint has timed out (300 ms) three times and every hostile endpoint has
    // failed, the good endpoint stays fresh at every look.
    let failures = wait_for("3 timeouts, every hostile endpoint failing", Duration::from_secs(10), || {
        let (board, log, good, expected) = (&board, &log, &good, &expected);
        async move {
            let scraped_at = last_scraped(board, good).await.expect("the good endpoint's sample stays on the board");
            let age = SystemTime::now().duration_since(scraped_at).unwrap_or_default();
            assert!(age < Duration::from_millis(1000), "good endpoint went stale: {age:?}");
            let failures = log.send(GetFailures).await.ok()?;
            let timeouts = failures.get(&EndpointId::new("Silent")).map_or(0, Vec::len);
            let all_failed = expected.iter().all(|(id, _)| failures.contains_key(&EndpointId::new(id)));
            (timeouts >= 3 && all_failed).then_some(failures)
        }
    })
    .await;
    for (id, reason) in &expected {
        let errors = &failures[&EndpointId::new(id)];
        assert!(errors.iter().all(|e| e.contains(reason)), "{id} fails with {reason:?}: {errors:?}");
    }
    assert!(!failures.contains_key(&good), "the good endpoint never failed: {:?}", failures.get(&good));
    let v = board.send(GetBoard).await.expect("board");
    for (id, _) in &expected {
        let state = v.states.get(&EndpointId::new(id)).cloned().unwrap_or_default();
        assert_eq!(state, MetricsState::Unknown, "{id} must never look scraped");
    }
}

#[actix_rt::test]
async fn failure_reasons_are_specific() {
    use switchyard::scraper::{Conn, Fetcher, ScrapeError, USER_AGENT};
    let fetcher = Fetcher::new(FetchSettings {
        timeout: Duration::from_millis(300),
        max_page_bytes: 64 * 1024,
        ..Default::default()
    })
    .expect("fetcher");
    let mapping = EngineRegistry::builtin().default_mapping().clone();
    let url = |a: std::net::SocketAddr| reqwest::Url::parse(&format!("http://{a}/metrics")).expect("url");
    let cases = [
        (Hostile::Silent, ScrapeError::Timeout(Duration::from_millis(300)).kind()),
        (Hostile::Endless, "too_large"),
        (Hostile::Garbage, "nothing_mapped"),
        (Hostile::ServerError, "status"),
        (Hostile::NotUtf8, "not_utf8"),
        (Hostile::Hangup, "request"),
    ];
    for (kind, want) in cases {
        let addr = hostile::spawn(kind).await;
        let err = fetcher.scrape(&url(addr), &mapping).await.expect_err("hostile");
        assert_eq!(err.kind(), want, "{kind:?} through the shared client: {err}");
        // The same through the endpoint's own connection, twice: the second scrape finds the
        // connection the server dropped after the first answer.
        let mut conn = Conn::for_url(&url(addr), USER_AGENT).expect("plain http");
        for attempt in 0..2 {
            let err = fetcher.scrape_on(Some(&mut conn), &url(addr), &mapping).await.expect_err("hostile");
            assert_eq!(err.kind(), want, "{kind:?} through its own connection, attempt {attempt}: {err}");
        }
    }
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    assert_eq!(fetcher.scrape(&url(closed), &mapping).await.expect_err("refused"), ScrapeError::Refused);
    let mut conn = Conn::for_url(&url(closed), USER_AGENT).expect("plain http");
    let err = fetcher.scrape_on(Some(&mut conn), &url(closed), &mapping).await.expect_err("refused");
    assert_eq!(err, ScrapeError::Refused);
}

const PAGE: &str = "# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{model_name=\"m\"} 3\n";

/// How [`scripted_server`] answers.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Script {
    /// `Content-Length`, connection kept.
    Length,
    /// Chunked, written in small pieces with pauses between them, connection kept.
    Chunked,
    /// `Content-Length`, then the server closes the connection without saying so.
    CloseAfterEach,
    /// `/metrics` redirects to `/metrics/`, which answers.
    Redirect,
}

/// A /metrics server answering each request on a connection per `script`; counts connections.
async fn scripted_server(script: Script) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let mut request = Vec::new();
                loop {
                    // One request head.
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        let mut buf = [0u8; 1024];
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&request).into_owned();
                    request.clear();
                    let ok = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{PAGE}", PAGE.len());
                    match script {
                        Script::Length => sock.write_all(ok.as_bytes()).await.expect("write"),
                        Script::CloseAfterEach => {
                            sock.write_all(ok.as_bytes()).await.expect("write");
                            return;
                        }
                        Script::Redirect if head.starts_with("GET /metrics ") => {
                            let moved =
                                "HTTP/1.1 307 Temporary Redirect\r\nlocation: /metrics/\r\ncontent-length: 0\r\n\r\n";
                            sock.write_all(moved.as_bytes()).await.expect("write");
                        }
                        Script::Redirect => sock.write_all(ok.as_bytes()).await.expect("write"),
                        Script::Chunked => {
                            let (a, b) = PAGE.split_at(17);
                            let body = format!(
                                "{:x};x=y\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\nx-trailer: 1\r\n\r\n",
                                a.len(),
                                b.len()
                            );
                            let all = format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{body}");
                            for piece in all.as_bytes().chunks(7) {
                                sock.write_all(piece).await.expect("write");
                                tokio::time::sleep(Duration::from_millis(1)).await;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, connections)
}

#[actix_rt::test]
async fn plain_http_scrapes_keep_their_connection_and_recover_from_its_loss() {
    use switchyard::scraper::{Conn, Fetcher, USER_AGENT};
    let fetcher = Fetcher::new(settings().fetch).expect("fetcher");
    let mapping = EngineRegistry::builtin().default_mapping().clone();
    // Connections for three scrapes (a redirected endpoint's are the shared client's).
    let scripts = [
        (Script::Length, Some(1)),
        (Script::Chunked, Some(1)),
        (Script::CloseAfterEach, Some(3)),
        (Script::Redirect, None),
    ];
    for (script, connections_for_3) in scripts {
        let (addr, connections) = scripted_server(script).await;
        let url = reqwest::Url::parse(&format!("http://{addr}/metrics")).expect("url");
        let mut conn = Conn::for_url(&url, USER_AGENT).expect("plain http");
        for attempt in 0..3 {
            let page = fetcher.scrape_on(Some(&mut conn), &url, &mapping).await;
            let page = page.unwrap_or_else(|e| panic!("{script:?}, scrape {attempt}: {e}"));
            assert_eq!(page.metrics.queued, Some(3), "{script:?}, scrape {attempt}");
        }
        if let Some(n) = connections_for_3 {
            assert_eq!(connections.load(Ordering::Relaxed), n, "{script:?}: connections for 3 scrapes");
        }
    }
}

#[actix_rt::test]
async fn reassignment_starts_and_stops_actors() {
    let fleet = sim::start_fleet(&sim::FleetConfig { fleet: vec![(Flavor::VllmV1, 2)], ..Default::default() })
        .await
        .expect("fleet");
    let a = endpoint("a", &fleet[0].addr.to_string(), "vllm");
    let b = endpoint("b", &fleet[1].addr.to_string(), "vllm");
    let (board, sink) = Board::start_sink();
    let sup = ScrapeSupervisor::new(Arc::new(EngineRegistry::builtin()), &settings(), sink).expect("sup").start();
    sup.do_send(AssignEndpoints(vec![a.clone()]));
    wait_for("a scraped", Duration::from_secs(10), || last_scraped(&board, &a.id)).await;
    sup.do_send(AssignEndpoints(vec![b.clone()]));
    let state = sup.send(GetState).await.expect("state");
    assert_eq!(state.scraping.keys().collect::<Vec<_>>(), ["b"]);
    assert_eq!((state.started, state.stopped), (2, 1));
    // The supervisor has handled the switch: a's actor has been told to stop.
    let switched = SystemTime::now();
    // b's scrapes go on well past the switch (8 intervals); a's stopped at it. A tick of a's may
    // have fired before the stop was handled, so its fetch may land up to 2 intervals later.
    let b_at = wait_for("b scraped well after the switch", Duration::from_secs(10), || async {
        last_scraped(&board, &b.id).await.filter(|t| *t > switched + 8 * INTERVAL)
    })
    .await;
    let a_at = last_scraped(&board, &a.id).await.expect("a's sample stays on the board");
    let late = a_at.duration_since(switched).unwrap_or_default();
    let b_late = b_at.duration_since(switched).unwrap_or_default();
    assert!(late <= 2 * INTERVAL, "a still scraped {late:?} after the switch (b: {b_late:?})");
    // Changing the engine of an endpoint restarts its actor with the new mapping.
    let mut b2 = b.clone();
    b2.engine = "sglang".into();
    sup.do_send(AssignEndpoints(vec![b2]));
    let state = sup.send(GetState).await.expect("state");
    assert_eq!(state.scraping.get("b").map(String::as_str), Some("sglang"));
    assert_eq!((state.started, state.stopped), (3, 2));
}

/// Regression: shutting down an aggregator (or standalone) handle left its scrape actors and the
/// aggregator's publish timer running in the process, scraping every endpoint forever.
#[actix_rt::test]
async fn shut_down_roles_stop_scraping() {
    let (addr, hits) = counting_server().await;
    // The reference: a scraper of our own, at the roles' interval, on a second counting server.
    let (clock_addr, clock) = counting_server().await;
    let reference = ScrapeSupervisor::new(Arc::new(EngineRegistry::builtin()), &settings(), Board::start_sink().1)
        .expect("sup")
        .start();
    reference.do_send(AssignEndpoints(vec![endpoint("clock", &clock_addr.to_string(), "vllm")]));
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("endpoints.yaml");
    let yaml = format!("endpoints:\n- name: counted\n  address: 127.0.0.1\n  port: {}\n", addr.port());
    std::fs::write(&file, yaml).expect("write");

    let agg = switchyard::roles::start_aggregator(switchyard::roles::AggregatorOptions::local(file.clone()))
        .await
        .expect("aggregator");
    count_reaches("scrapes by the aggregator", &hits, 3).await;
    agg.shutdown(Duration::from_secs(1)).await;

    let opts = switchyard::app::StandaloneOptions::loopback(switchyard::discovery::PoolSource::file(file));
    let standalone = switchyard::app::start_standalone(opts).await.expect("standalone");
    let before = hits.load(Ordering::Relaxed);
    count_reaches("scrapes by the standalone", &hits, before + 3).await;
    standalone.shutdown(Duration::from_secs(1)).await;

    // Shutdown is judged by scrape rounds of a reference scraper with the same interval, so a
    // slow machine stretches the window instead of hiding stray scrapes.
    let after_shutdown = {
        let n = clock.load(Ordering::Relaxed);
        // A scrape in flight at shutdown may still connect: let two rounds pass first.
        count_reaches("2 reference scrapes", &clock, n + 2).await;
        hits.load(Ordering::Relaxed)
    };
    let n = clock.load(Ordering::Relaxed);
    count_reaches("10 reference scrapes", &clock, n + 10).await;
    assert_eq!(hits.load(Ordering::Relaxed), after_shutdown, "10 scrape intervals later, nothing scraped it");
}

/// Regression (issue 16): a failing endpoint was scraped again every interval, 20 times a second
/// at 50 ms (each attempt reading up to the page cap). It is now retried with exponential backoff
/// and jitter, and scraped every interval again as soon as a scrape succeeds.
#[actix_rt::test]
async fn failing_endpoints_are_retried_with_backoff_and_recover_at_once() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    let (hits, healthy) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
    let app = {
        let (hits, healthy) = (hits.clone(), healthy.clone());
        axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                hits.fetch_add(1, Ordering::SeqCst);
                let ok = healthy.load(Ordering::SeqCst);
                async move {
                    if ok {
                        (axum::http::StatusCode::OK, "vllm:num_requests_waiting 2\n")
                    } else {
                        (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "oops\n")
                    }
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });

    let (board, sink) = Board::start_sink();
    let sup = ScrapeSupervisor::new(Arc::new(EngineRegistry::builtin()), &settings(), sink).expect("sup").start();
    sup.do_send(AssignEndpoints(vec![endpoint("flaky", &addr.to_string(), "vllm")]));
    let first = hits.clone();
    wait_for("the first attempt", Duration::from_secs(5), || {
        let n = first.load(Ordering::SeqCst);
        async move { (n > 0).then_some(()) }
    })
    .await;
    // Over 3 s at a 50 ms interval: 60 attempts without backoff; with it (doubling from one
    // interval, capped at 1 s) about 7.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let failing = hits.load(Ordering::SeqCst);
    assert!((3..=15).contains(&failing), "{failing} attempts in 3 s at a failing endpoint");
    let v = board.send(GetBoard).await.expect("board");
    assert_eq!(v.states.get(&EndpointId::new("flaky")).cloned().unwrap_or_default(), MetricsState::Unknown);

    // It recovers: scraped within the cap, then every interval again.
    healthy.store(true, Ordering::SeqCst);
    let board_ = board.clone();
    wait_for("a good scrape after the endpoint recovers", Duration::from_secs(3), || {
        let board = board_.clone();
        async move {
            let v = board.send(GetBoard).await.ok()?;
            v.states.get(&EndpointId::new("flaky"))?.sample().map(|_| ())
        }
    })
    .await;
    let recovered = hits.load(Ordering::SeqCst);
    let after = hits.clone();
    wait_for("scrapes every interval again", Duration::from_secs(2), || {
        let n = after.load(Ordering::SeqCst);
        async move { (n >= recovered + 15).then_some(()) }
    })
    .await;
}
