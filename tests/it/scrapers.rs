//! Remote scrapers: the leader spreads endpoints over connected scrapers (rendezvous hashing) and
//! moves a departed scraper's endpoints to the others.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use switchyard::picker::subscribe::LeaderSource;
use switchyard::roles::{AggregatorOptions, ScraperOptions, start_aggregator, start_scraper};
use switchyard::scraper::GetState;

use crate::support::{vllm_fleet, wait_for};

#[actix_rt::test]
async fn endpoints_are_shared_and_reassigned_when_a_scraper_leaves() {
    let dir = tempfile::tempdir().expect("dir");
    let (fleet, file) = vllm_fleet(8, dir.path()).await;
    let agg = start_aggregator(AggregatorOptions { remote_scrapers: true, ..AggregatorOptions::local(file) })
        .await
        .expect("aggregator");
    let scraper = |id: &str| ScraperOptions::local(LeaderSource::Addresses(vec![agg.control_addr.to_string()]), id);
    let a = start_scraper(scraper("scraper-a")).await.expect("a");
    let b = start_scraper(scraper("scraper-b")).await.expect("b");
    let all: BTreeSet<String> = fleet.iter().map(|h| h.name.clone()).collect();
    let (sa, sb) = (a.supervisor.clone(), b.supervisor.clone());
    let owned = wait_for("both scrapers assigned, disjoint, covering all", Duration::from_secs(10), || {
        let (sa, sb, all) = (sa.clone(), sb.clone(), all.clone());
        async move {
            let ka: BTreeSet<String> = sa.send(GetState).await.ok()?.scraping.into_keys().collect();
            let kb: BTreeSet<String> = sb.send(GetState).await.ok()?.scraping.into_keys().collect();
            let union: BTreeSet<String> = ka.union(&kb).cloned().collect();
            (!ka.is_empty() && !kb.is_empty() && ka.is_disjoint(&kb) && union == all).then_some(ka)
        }
    })
    .await;
    let mut snaps = agg.snapshots.clone();
    wait_for("every endpoint's metrics in the leader's snapshot", Duration::from_secs(10), || {
        let s = snaps.borrow_and_update().clone();
        async move { (s.endpoints.len() == 8 && s.endpoints.iter().all(|e| e.metrics.sample().is_some())).then_some(()) }
    })
    .await;
    // a leaves: b takes over a's endpoints and they are scraped again.
    a.shutdown().await;
    let left_at = SystemTime::now();
    let sb2 = b.supervisor.clone();
    wait_for("b scrapes everything", Duration::from_secs(10), || {
        let (sb, all) = (sb2.clone(), all.clone());
        async move { (sb.send(GetState).await.ok()?.scraping.into_keys().collect::<BTreeSet<_>>() == all).then_some(()) }
    })
    .await;
    let mut snaps = agg.snapshots.clone();
    wait_for("a's endpoints fresh again", Duration::from_secs(10), || {
        let s = snaps.borrow_and_update().clone();
        let owned = owned.clone();
        async move {
            // Every one of a's endpoints is in the snapshot and was scraped since a left.
            let fresh = s
                .endpoints
                .iter()
                .filter(|e| owned.contains(e.endpoint.id.as_str()))
                .filter(|e| e.metrics.sample().is_some_and(|x| x.scraped_at > left_at))
                .count();
            (fresh == owned.len()).then_some(())
        }
    })
    .await;
    b.shutdown().await;
    agg.shutdown(Duration::from_secs(1)).await;
}
