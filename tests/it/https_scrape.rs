//! Regression: `metrics-data-source`'s `insecureSkipVerify` (default true) and the flag
//! `--model-server-metrics-https-insecure-skip-verify` were parsed but never applied, so scraping
//! an HTTPS model server with a self-signed certificate always failed.

use std::time::Duration;

use switchyard::app::{StandaloneHandle, StandaloneOptions, start_standalone};
use switchyard::config::MetricFlags;
use switchyard::discovery::PoolSource;
use switchyard::model::MetricsState;
use switchyard::scraper::{FetchSettings, Fetcher, ScrapeError};
use switchyard::sim::{self, Flavor, FleetConfig, SimHandle};

use crate::support::{client, wait_for};

/// Failed scrapes to see before concluding that none will succeed.
const FAILURES: u64 = 5;

fn config(insecure_skip_verify: Option<bool>) -> String {
    let skip = insecure_skip_verify.map(|v| format!("    insecureSkipVerify: {v}\n")).unwrap_or_default();
    format!(
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n\
         - type: metrics-data-source\n  parameters:\n    scheme: https\n{skip}"
    )
}

async fn tls_fleet(dir: &std::path::Path) -> (Vec<SimHandle>, std::path::PathBuf) {
    let cfg = FleetConfig { fleet: vec![(Flavor::VllmV1, 1)], tls: true, ..Default::default() };
    let fleet = sim::start_fleet(&cfg).await.expect("fleet");
    let file = sim::write_endpoints_file(&fleet, dir).expect("endpoints file");
    (fleet, file)
}

async fn standalone(file: &std::path::Path, config_text: String, metric_flags: MetricFlags) -> StandaloneHandle {
    let opts = StandaloneOptions {
        config_text: Some(config_text),
        metric_flags,
        ..StandaloneOptions::loopback(PoolSource::file(file))
    };
    start_standalone(opts).await.expect("standalone")
}

/// Waits until the snapshot lists the sim endpoint, resolved to the sim's https metrics URL.
async fn listed(h: &StandaloneHandle, sim: &SimHandle) {
    let mut snaps = h.snapshots.clone();
    let snapshot = wait_for("the endpoint listed", Duration::from_secs(10), || {
        let s = snaps.borrow_and_update().clone();
        async move { (s.endpoints.len() == 1).then_some(s) }
    })
    .await;
    assert_eq!(snapshot.endpoints[0].endpoint.metrics_url, sim.metrics_url(), "scraped over https");
}

/// `switchyard_scrape_errors_total` of `endpoint` on the standalone's /metrics, by kind.
async fn scrape_errors(h: &StandaloneHandle, endpoint: &str) -> Option<Vec<(String, u64)>> {
    let text = client().get(format!("http://{}/metrics", h.metrics_addr)).send().await.ok()?.text().await.ok()?;
    let want = format!("endpoint=\"{endpoint}\"");
    let counts = text
        .lines()
        .filter(|l| l.starts_with("switchyard_scrape_errors_total{") && l.contains(&want))
        .filter_map(|l| {
            let kind = l.split("kind=\"").nth(1)?.split('"').next()?.to_string();
            let n = l.rsplit(' ').next()?.parse::<f64>().ok()?;
            Some((kind, n as u64))
        })
        .collect();
    Some(counts)
}

#[actix_rt::test]
async fn test_insecure_skip_verify_is_applied_to_https_scrapes() {
    let dir = tempfile::tempdir().expect("dir");
    let (fleet, file) = tls_fleet(dir.path()).await;
    let name = fleet[0].name.clone();

    // Default (insecureSkipVerify true): the self-signed server is scraped.
    let h = standalone(&file, config(None), MetricFlags::default()).await;
    listed(&h, &fleet[0]).await;
    let mut snaps = h.snapshots.clone();
    let sample = wait_for("the https endpoint scraped", Duration::from_secs(10), || {
        let s = snaps.borrow_and_update().clone();
        async move { s.endpoints.first()?.metrics.sample().cloned() }
    })
    .await;
    assert!(sample.errors.is_empty(), "{:?}", sample.errors);
    assert_eq!(sample.metrics.queued, Some(0));
    assert_eq!(sample.metrics.kv_usage, Some(0.0));
    h.shutdown(Duration::from_secs(1)).await;

    // Verification on, by the plugin parameter or by the flag (the plugin not setting it): every
    // scrape fails and the endpoint never gets metrics.
    let off = MetricFlags { metrics_insecure_skip_verify: Some(false), ..Default::default() };
    for (what, text, flags) in
        [("insecureSkipVerify: false", config(Some(false)), MetricFlags::default()), ("the flag", config(None), off)]
    {
        let h = standalone(&file, text, flags).await;
        listed(&h, &fleet[0]).await;
        let errors = wait_for("failed scrapes counted", Duration::from_secs(10), || async {
            let errors = scrape_errors(&h, &name).await?;
            (errors.iter().map(|(_, n)| n).sum::<u64>() >= FAILURES).then_some(errors)
        })
        .await;
        assert!(errors.iter().all(|(kind, _)| kind == "request"), "{what}: {errors:?}");
        let snapshot = h.snapshots.borrow().clone();
        assert_eq!(snapshot.endpoints.len(), 1, "{what}");
        assert_eq!(snapshot.endpoints[0].metrics, MetricsState::Unknown, "{what}: never scraped");
        h.shutdown(Duration::from_secs(1)).await;
    }

    // What those failures are: the certificate is refused when verified (the standalone's
    // observables carry only the error kind).
    let url = reqwest::Url::parse(&fleet[0].metrics_url()).expect("url");
    let mapping = switchyard::metrics::EngineRegistry::builtin().default_mapping().clone();
    let verify = Fetcher::new(FetchSettings { insecure_skip_verify: false, ..Default::default() }).expect("fetcher");
    match verify.scrape(&url, &mapping).await {
        Err(ScrapeError::Request(msg)) => assert!(msg.to_lowercase().contains("certificate"), "{msg}"),
        other => panic!("expected a certificate error, got {other:?}"),
    }
    let skip = Fetcher::new(FetchSettings { insecure_skip_verify: true, ..Default::default() }).expect("fetcher");
    skip.scrape(&url, &mapping).await.expect("scraped without verification");
}
