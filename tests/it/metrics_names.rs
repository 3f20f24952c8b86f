//! The metrics ports: upstream's metric names and label sets, and `--metrics-endpoint-auth`.

use std::time::Duration;

use switchyard::metrics_auth::MetricsAuth;
use switchyard::roles::{AggregatorOptions, start_aggregator};

use crate::support::{client, vllm_fleet};

async fn status(req: reqwest::RequestBuilder) -> u16 {
    req.send().await.expect("request").status().as_u16()
}

/// Every role's metrics port answers 401 on `/metrics` and `/debug/*` without the token from the
/// file, and reads a rotated token at the next request.
#[actix_rt::test]
async fn metrics_ports_require_the_bearer_token_when_auth_is_on() {
    let dir = tempfile::tempdir().expect("dir");
    let (_fleet, file) = vllm_fleet(1, dir.path()).await;
    let token = dir.path().join("token");
    std::fs::write(&token, "first-token\n").expect("token");
    let auth = MetricsAuth::bearer_token_file(&token);
    let standalone = switchyard::app::start_standalone(switchyard::app::StandaloneOptions {
        metrics_auth: auth.clone(),
        ..switchyard::app::StandaloneOptions::loopback(switchyard::discovery::PoolSource::file(file.clone()))
    })
    .await
    .expect("standalone");
    let agg = start_aggregator(AggregatorOptions { metrics_auth: auth, ..AggregatorOptions::local(file) })
        .await
        .expect("aggregator");
    let c = client();
    for addr in [standalone.metrics_addr, agg.metrics_addr] {
        let metrics = format!("http://{addr}/metrics");
        let level = format!("http://{addr}/debug/log-level");
        assert_eq!(status(c.get(&metrics)).await, 401, "{addr}: no token");
        assert_eq!(status(c.get(&metrics).bearer_auth("wrong")).await, 401, "{addr}: wrong token");
        assert_eq!(status(c.put(&level).body("info")).await, 401, "{addr}: /debug/* is guarded too");
        let ok = c.get(&metrics).bearer_auth("first-token").send().await.expect("metrics");
        assert_eq!(ok.status().as_u16(), 200);
        assert!(ok.text().await.expect("text").trim_end().ends_with("# EOF"));
    }
    // Rotation applies at the next request, without a restart.
    std::fs::write(&token, "second-token").expect("rotate");
    let metrics = format!("http://{}/metrics", standalone.metrics_addr);
    assert_eq!(status(c.get(&metrics).bearer_auth("first-token")).await, 401);
    assert_eq!(status(c.get(&metrics).bearer_auth("second-token")).await, 200);
    agg.shutdown(Duration::from_secs(1)).await;
    standalone.shutdown(Duration::from_secs(1)).await;
}

/// Family name (without `_total`, `_bucket`, … suffixes as declared by `# TYPE`) → the label names
/// of its series (without `le`), parsed from OpenMetrics text.
pub fn families(text: &str) -> std::collections::BTreeMap<String, std::collections::BTreeSet<Vec<String>>> {
    let mut out: std::collections::BTreeMap<String, std::collections::BTreeSet<Vec<String>>> = Default::default();
    let mut declared: Vec<String> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split_whitespace().next().unwrap_or_default().to_string();
            out.entry(name.clone()).or_default();
            declared.push(name);
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, labels) = match line.split_once('{') {
            Some((n, rest)) => (n, rest.split_once('}').map(|(l, _)| l).unwrap_or_default()),
            None => (line.split_whitespace().next().unwrap_or_default(), ""),
        };
        let family = declared.iter().rev().find(|d| series.starts_with(d.as_str())).cloned().unwrap_or_default();
        let mut names: Vec<String> = labels
            .split("\",")
            .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.trim().to_string()))
            .filter(|k| k != "le" && !k.is_empty())
            .collect();
        names.sort();
        out.entry(family).or_default().insert(names);
    }
    out
}

/// Upstream's names and label sets, parsed from a standalone's exposition after a routed
/// request and an error.
#[actix_rt::test]
async fn upstream_names_and_label_sets() {
    let dir = tempfile::tempdir().expect("dir");
    let (_fleet, file) = vllm_fleet(2, dir.path()).await;
    let standalone = switchyard::app::start_standalone(switchyard::app::StandaloneOptions::loopback(
        switchyard::discovery::PoolSource::file(file),
    ))
    .await
    .expect("standalone");
    let url = format!("http://{}/metrics", standalone.metrics_addr);
    let text = crate::support::wait_for("two ready pods", Duration::from_secs(10), || {
        let url = url.clone();
        async move {
            let t = client().get(&url).send().await.ok()?.text().await.ok()?;
            t.contains("inference_pool_ready_pods{name=\"switchyard\"} 2").then_some(t)
        }
    })
    .await;
    let f = families(&text);
    let labels = |names: &[&str]| {
        let mut v: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    };
    let expect = |family: &str, names: &[&str]| {
        let sets = f.get(family).unwrap_or_else(|| panic!("{family} not exported\n{text}"));
        assert!(sets.iter().all(|s| *s == labels(names)), "{family}: {sets:?}, want {names:?}");
    };
    expect("inference_pool_average_kv_cache_utilization", &["name"]);
    expect("inference_pool_average_queue_size", &["name"]);
    expect("inference_pool_average_running_requests", &["name"]);
    expect("inference_pool_ready_pods", &["name"]);
    expect("inference_pool_per_pod_queue_size", &["name", "model_server_pod"]);
    expect("inference_extension_info", &["commit", "build_ref"]);
    expect("inference_extension_scheduler_e2e_duration_seconds", &[]);
    expect("inference_extension_scheduler_attempts", &["status"]);
    expect("inference_extension_prefix_indexer_size", &[]);
    expect("switchyard_picker_picks", &["endpoint"]);
    expect("switchyard_picker_herd_share", &[]);
    expect("inference_extension_prefix_indexer_hit_ratio", &[]);
    expect("inference_extension_prefix_indexer_hit_bytes", &[]);
    expect("inference_extension_plugin_duration_seconds", &["extension_point", "plugin_type", "plugin_name"]);
    for (point, plugin) in [
        ("Scorer", "queue-scorer"),
        ("Scorer", "kv-cache-utilization-scorer"),
        ("Scorer", "prefix-cache-scorer"),
        ("Picker", "max-score-picker"),
    ] {
        let series = format!(
            "inference_extension_plugin_duration_seconds_count{{extension_point=\"{point}\",plugin_type=\"{plugin}\",plugin_name=\"{plugin}\"}}"
        );
        assert!(text.contains(&series), "a series per plugin of the default profile: {series}\n{text}");
    }
    let pick_series = text.lines().filter(|l| l.starts_with("switchyard_picker_picks_total{endpoint=")).count();
    assert_eq!(pick_series, 2, "a series per endpoint, before any pick\n{text}");
    assert!(!f["inference_pool_per_pod_queue_size"].is_empty(), "a series per pod\n{text}");
    // Families that get series once requests arrive (picker.rs `operator_metrics_are_exposed`
    // sends some): upstream's labels when present.
    for (family, names) in [
        ("inference_objective_request", &["model_name", "target_model_name", "priority"][..]),
        ("inference_objective_request_error", &["model_name", "target_model_name", "error_code"][..]),
        ("inference_objective_input_tokens", &["model_name", "target_model_name"][..]),
        ("inference_objective_output_tokens", &["model_name", "target_model_name"][..]),
        ("inference_objective_request_duration_seconds", &["model_name", "target_model_name"][..]),
        ("inference_objective_request_sizes", &["model_name", "target_model_name"][..]),
        ("inference_objective_response_sizes", &["model_name", "target_model_name"][..]),
        ("inference_objective_normalized_time_per_output_token_seconds", &["model_name", "target_model_name"][..]),
        ("inference_objective_running_requests", &["model_name"][..]),
    ] {
        let Some(sets) = f.get(family) else { continue };
        assert!(sets.iter().all(|s| *s == labels(names)), "{family}: {sets:?}");
    }
    standalone.shutdown(Duration::from_secs(1)).await;
}

/// A /metrics server answering every request with the current `page`.
async fn page_server(page: std::sync::Arc<std::sync::Mutex<String>>) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let page = page.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let body = page.lock().map(|p| p.clone()).unwrap_or_default();
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(format!("{head}{body}").as_bytes()).await;
            });
        }
    });
    addr
}

/// `switchyard_scrape_extraction_errors_total{endpoint,metric}` counts each scrape whose page lacks
/// a mapped metric, per metric, and stops counting once the metric is back.
#[actix_rt::test]
async fn extraction_errors_are_counted_per_endpoint_and_metric() {
    use actix::Actor as _;
    use switchyard::scraper::{AssignEndpoints, FetchSettings, ScrapeMetrics, ScrapeSettings, ScrapeSupervisor};

    let page = std::sync::Arc::new(std::sync::Mutex::new("vllm:num_requests_waiting 3\n".to_string()));
    let addr = page_server(page.clone()).await;
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = ScrapeMetrics::new(&mut registry);
    let registry = std::sync::Arc::new(registry);
    let (_board, sink) = switchyard::tools::board::Board::start_sink();
    let settings = ScrapeSettings {
        interval: Duration::from_millis(20),
        fetch: FetchSettings { timeout: Duration::from_millis(500), ..Default::default() },
    };
    let sup = ScrapeSupervisor::with_metrics(
        std::sync::Arc::new(switchyard::metrics::EngineRegistry::builtin()),
        &settings,
        sink,
        metrics,
    )
    .expect("supervisor")
    .start();
    sup.do_send(AssignEndpoints(vec![switchyard::model::Endpoint {
        id: switchyard::model::EndpointId::new("partial"),
        address: addr.to_string(),
        metrics_url: format!("http://{addr}/metrics"),
        engine: "vllm".into(),
        labels: Default::default(),
    }]));
    let text = || {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("encode");
        out
    };
    let count = |text: &str, metric: &str| -> u64 {
        let series = format!("switchyard_scrape_extraction_errors_total{{endpoint=\"partial\",metric=\"{metric}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(series.as_str())?.trim().parse().ok()).unwrap_or(0)
    };
    let seen = crate::support::wait_for("two scrapes missing kv_usage", Duration::from_secs(10), || {
        let t = text();
        async move { (count(&t, "kv_usage") >= 2).then_some(t) }
    })
    .await;
    assert_eq!(count(&seen, "queued"), 0, "queued is on the page\n{seen}");
    assert!(count(&seen, "running") >= 1, "{seen}");
    let sets = &families(&seen)["switchyard_scrape_extraction_errors"];
    assert!(sets.iter().all(|s| *s == ["endpoint".to_string(), "metric".to_string()]), "{sets:?}");

    // The metric comes back: its count stops growing while the others keep counting.
    if let Ok(mut p) = page.lock() {
        p.push_str("vllm:kv_cache_usage_perc 0.5\n");
    }
    // One scrape at a time, so at most one of the next three still read the old page.
    let base = count(&text(), "running");
    let after = crate::support::wait_for("later scrapes", Duration::from_secs(10), || {
        let t = text();
        async move { (count(&t, "running") >= base + 3).then_some(t) }
    })
    .await;
    let kv_mid = count(&after, "kv_usage");
    let later = crate::support::wait_for("still later scrapes", Duration::from_secs(10), || {
        let t = text();
        async move { (count(&t, "running") >= base + 6).then_some(t) }
    })
    .await;
    assert_eq!(count(&later, "kv_usage"), kv_mid, "kv_usage no longer counted once it is on the page\n{later}");
}

/// One request through the picker and its response: upstream's request/response families with
/// their label sets, the running gauge back at 0 once the response completed, and one prefix
/// hit-ratio observation.
#[actix_rt::test]
async fn response_side_upstream_families() {
    use crate::envoy::{HttpRequest, Sandbox, send};
    const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";
    let cfg = switchyard::sim::FleetConfig { fleet: vec![(switchyard::sim::Flavor::VllmV1, 1)], ..Default::default() };
    let sb = Sandbox::start(cfg, None, |_| {}).await;
    let mut c = sb.client().await;
    let req = HttpRequest::chat(MODEL, &"a long enough prompt to fill blocks ".repeat(20));
    let mut ex = send(&mut c, &req).await;
    let dest = ex.routed.set_headers["x-gateway-destination-endpoint"].clone();
    let read = || crate::support::metrics_text(sb.epp().metrics_addr);
    let during = read().await;
    assert!(during.contains(&format!("inference_objective_running_requests{{model_name=\"{MODEL}\"}} 1")), "{during}");
    let body = client()
        .post(format!("http://{dest}/v1/chat/completions"))
        .body(ex.routed.body.clone())
        .send()
        .await
        .expect("upstream")
        .bytes()
        .await
        .expect("body")
        .to_vec();
    let seen = ex.respond(200, "application/json", std::slice::from_ref(&body), Some(&dest)).await;
    assert_eq!(seen.len(), body.len());
    let text = read().await;
    let f = families(&text);
    let model_target = ["model_name".to_string(), "target_model_name".to_string()];
    for family in [
        "inference_objective_request_duration_seconds",
        "inference_objective_request_sizes",
        "inference_objective_response_sizes",
        "inference_objective_normalized_time_per_output_token_seconds",
    ] {
        let sets = f.get(family).unwrap_or_else(|| panic!("{family} not exported\n{text}"));
        assert!(!sets.is_empty() && sets.iter().all(|s| *s == model_target), "{family}: {sets:?}");
        let count = format!("{family}_count{{model_name=\"{MODEL}\",target_model_name=\"{MODEL}\"}} 1");
        assert!(text.contains(&count), "{count}\n{text}");
    }
    assert!(f["inference_objective_running_requests"].iter().all(|s| *s == ["model_name".to_string()]));
    assert!(text.contains(&format!("inference_objective_running_requests{{model_name=\"{MODEL}\"}} 0")), "{text}");
    let sizes = format!(
        "inference_objective_request_sizes_sum{{model_name=\"{MODEL}\",target_model_name=\"{MODEL}\"}} {}",
        req.body.len()
    );
    assert!(text.contains(&sizes), "{sizes}\n{text}");
    let responses = format!(
        "inference_objective_response_sizes_sum{{model_name=\"{MODEL}\",target_model_name=\"{MODEL}\"}} {}",
        body.len()
    );
    assert!(text.contains(&responses), "{responses}\n{text}");
    assert!(f["inference_extension_prefix_indexer_hit_ratio"].iter().all(Vec::is_empty), "no labels");
    assert!(text.contains("inference_extension_prefix_indexer_hit_ratio_count 1"), "{text}");
}
