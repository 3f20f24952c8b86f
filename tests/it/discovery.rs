//! The static endpoints file is a watched source: edits change the fleet of a running process
//! (scrapers, snapshots), a bad edit keeps the last good set and is counted.

use std::collections::BTreeSet;
use std::time::Duration;

use switchyard::discovery::PoolSource;
use switchyard::picker::subscribe::LeaderSource;
use switchyard::roles::{AggregatorOptions, ScraperOptions, start_aggregator, start_scraper};
use switchyard::scraper::GetState;
use switchyard::sim::{self, SimHandle};

use crate::support::{client, vllm_fleet, wait_for};

const POLL: Duration = Duration::from_millis(50);

fn write_fleet(file: &std::path::Path, fleet: &[SimHandle]) {
    let yaml = serde_saphyr::to_string(&sim::endpoints_file(fleet)).expect("yaml");
    std::fs::write(file, yaml).expect("write endpoints file");
}

/// Ids in the snapshot whose metrics have been scraped.
fn scraped(s: &switchyard::model::Snapshot) -> BTreeSet<String> {
    s.endpoints.iter().filter(|e| e.metrics.sample().is_some()).map(|e| e.endpoint.id.to_string()).collect()
}

fn names(fleet: &[SimHandle]) -> BTreeSet<String> {
    fleet.iter().map(|h| h.name.clone()).collect()
}

#[actix_rt::test]
async fn an_edited_endpoints_file_changes_the_fleet_without_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let (fleet, file) = vllm_fleet(3, dir.path()).await;
    write_fleet(&file, &fleet[..2]);
    let opts = switchyard::app::StandaloneOptions::loopback(PoolSource::File { path: file.clone(), poll: POLL });
    let standalone = switchyard::app::start_standalone(opts).await.expect("standalone");
    let snaps = standalone.snapshots.clone();
    let expect = |want: BTreeSet<String>, what: &'static str| {
        let mut snaps = snaps.clone();
        wait_for(what, Duration::from_secs(10), move || {
            let s = snaps.borrow_and_update().clone();
            let want = want.clone();
            async move { (s.endpoints.len() == want.len() && scraped(&s) == want).then_some(()) }
        })
    };
    expect(names(&fleet[..2]), "the first two endpoints scraped").await;

    write_fleet(&file, &fleet);
    expect(names(&fleet), "the added endpoint scraped").await;

    // A typo keeps the fleet and is counted on /metrics.
    std::fs::write(&file, "endpoints:\n- {name: x, address: 127.0.0.1, prot: 1}\n").expect("write");
    let url = format!("http://{}/metrics", standalone.metrics_addr);
    let http = client();
    wait_for("the rejected edit counted", Duration::from_secs(10), || {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let text = http.get(&url).send().await.ok()?.text().await.ok()?;
            text.contains("switchyard_discovery_errors_total{source=\"file\"} 1").then_some(())
        }
    })
    .await;
    assert_eq!(scraped(&standalone.snapshots.borrow()), names(&fleet), "the last good set stays");

    write_fleet(&file, &fleet[1..2]);
    expect(names(&fleet[1..2]), "two endpoints removed").await;
    standalone.shutdown(Duration::from_secs(1)).await;
}

#[actix_rt::test]
async fn remote_scrapers_are_reassigned_when_the_set_changes() {
    let dir = tempfile::tempdir().expect("dir");
    let (fleet, file) = vllm_fleet(4, dir.path()).await;
    write_fleet(&file, &fleet[..1]);
    let agg = start_aggregator(AggregatorOptions {
        remote_scrapers: true,
        pool: PoolSource::File { path: file.clone(), poll: POLL },
        ..AggregatorOptions::local(file.clone())
    })
    .await
    .expect("aggregator");
    let scraper = start_scraper(ScraperOptions {
        refresh_metrics_interval: POLL,
        ..ScraperOptions::local(LeaderSource::Addresses(vec![agg.control_addr.to_string()]), "only")
    })
    .await
    .expect("scraper");
    let assigned = |want: BTreeSet<String>, what: &'static str| {
        let supervisor = scraper.supervisor.clone();
        wait_for(what, Duration::from_secs(10), move || {
            let (supervisor, want) = (supervisor.clone(), want.clone());
            async move {
                let have: BTreeSet<String> = supervisor.send(GetState).await.ok()?.scraping.into_keys().collect();
                (have == want).then_some(())
            }
        })
    };
    assigned(names(&fleet[..1]), "the first endpoint assigned").await;
    write_fleet(&file, &fleet);
    assigned(names(&fleet), "every endpoint assigned after the edit").await;
    let mut snaps = agg.snapshots.clone();
    let all = names(&fleet);
    wait_for("the leader's snapshot has them all scraped", Duration::from_secs(10), || {
        let s = snaps.borrow_and_update().clone();
        let all = all.clone();
        async move { (scraped(&s) == all).then_some(()) }
    })
    .await;
    scraper.shutdown().await;
    agg.shutdown(Duration::from_secs(1)).await;
}
