//! Which scraper scrapes which endpoint: rendezvous (highest-random-weight) hashing, so a scraper
//! joining or leaving moves only the endpoints it gains or loses.

use std::collections::BTreeMap;
use std::hash::Hasher as _;

use xxhash_rust::xxh64::Xxh64;

use crate::model::Endpoint;

fn weight(endpoint: &str, scraper: &str) -> u64 {
    let mut h = Xxh64::new(0x5157_4348);
    h.write(endpoint.as_bytes());
    h.write(&[0]);
    h.write(scraper.as_bytes());
    h.finish()
}

/// Scraper id → its endpoints. Every endpoint goes to exactly one scraper (none when there are
/// no scrapers).
pub fn assign<'a>(endpoints: &'a [Endpoint], scrapers: &[String]) -> BTreeMap<String, Vec<&'a Endpoint>> {
    let mut out: BTreeMap<String, Vec<&Endpoint>> = scrapers.iter().map(|s| (s.clone(), Vec::new())).collect();
    for e in endpoints {
        if let Some(best) = scrapers.iter().max_by_key(|s| (weight(e.id.as_str(), s), s.as_str())) {
            out.entry(best.clone()).or_default().push(e);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EndpointId;

    fn eps(n: usize) -> Vec<Endpoint> {
        (0..n)
            .map(|i| Endpoint {
                id: EndpointId::new(format!("ep-{i}")),
                address: format!("10.0.0.{i}:8000"),
                metrics_url: String::new(),
                engine: "vllm".into(),
                labels: Default::default(),
            })
            .collect()
    }

    fn owner(a: &BTreeMap<String, Vec<&Endpoint>>, id: &str) -> String {
        a.iter().find(|(_, v)| v.iter().any(|e| e.id.as_str() == id)).map(|(k, _)| k.clone()).expect("assigned")
    }

    #[test]
    fn every_endpoint_once_and_balanced() {
        let e = eps(1000);
        let scrapers: Vec<String> = (0..4).map(|i| format!("s{i}")).collect();
        let a = assign(&e, &scrapers);
        assert_eq!(a.values().map(Vec::len).sum::<usize>(), 1000);
        assert!(
            a.values().all(|v| (200..300).contains(&v.len())),
            "{:?}",
            a.values().map(Vec::len).collect::<Vec<_>>()
        );
        assert!(assign(&e, &[]).is_empty());
    }

    #[test]
    fn a_scraper_leaving_moves_only_its_endpoints() {
        let e = eps(500);
        let four: Vec<String> = (0..4).map(|i| format!("s{i}")).collect();
        let three: Vec<String> = four[..3].to_vec();
        let (before, after) = (assign(&e, &four), assign(&e, &three));
        for ep in &e {
            let (b, a) = (owner(&before, ep.id.as_str()), owner(&after, ep.id.as_str()));
            if b != "s3" {
                assert_eq!(a, b, "{} moved although its scraper stayed", ep.id);
            }
        }
    }
}
