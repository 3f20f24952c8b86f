//! Who scrapes which endpoint. The aggregator owns the endpoint set and hands every new set to
//! one [`Assigner`]: the local scrape supervisor (this process scrapes everything) or the
//! connected `switchyard scraper` processes, over which it is spread by rendezvous
//! (highest-random-weight) hashing, so a scraper joining or leaving moves only the endpoints it
//! gains or loses. Both are re-assigned on every change of the set.

use std::collections::BTreeMap;
use std::hash::Hasher as _;
use std::sync::{Arc, Mutex, MutexGuard};

use actix::Recipient;
use switchyard_proto::v1 as pb;
use tokio::sync::mpsc;
use tonic::Status;
use xxhash_rust::xxh64::Xxh64;

use crate::model::Endpoint;
use crate::protocol::{AssignEndpoints, ScrapeSink};
use crate::wire;

/// Where the endpoint set goes.
#[derive(Clone)]
pub enum Assigner {
    /// This process scrapes every endpoint (its scrape supervisor).
    Local(Recipient<AssignEndpoints>),
    /// Remote scraper processes share them.
    Remote(Arc<RemoteScraping>),
}

impl Assigner {
    /// Hands over a new endpoint set.
    pub fn assign(&self, endpoints: &[Endpoint]) {
        match self {
            Assigner::Local(supervisor) => supervisor.do_send(AssignEndpoints(endpoints.to_vec())),
            Assigner::Remote(remote) => remote.set_endpoints(endpoints),
        }
    }

    /// This replica leads from `epoch` on (remote scrapers are told the term with their
    /// assignments).
    pub fn lead(&self, epoch: u64) {
        if let Assigner::Remote(remote) = self {
            remote.set_epoch(epoch);
        }
    }

    /// Leadership is lost: remote scrapers must reconnect to the new leader. Local scraping goes
    /// on (a standby keeps its metrics warm).
    pub fn step_down(&self) {
        if let Assigner::Remote(remote) = self {
            remote.disconnect_all();
        }
    }

    /// Scraper processes connected (0 when this process scrapes itself).
    pub fn remote_scrapers(&self) -> usize {
        match self {
            Assigner::Local(_) => 0,
            Assigner::Remote(remote) => remote.inner().scrapers.len(),
        }
    }

    /// Stops every local scraper (shutdown).
    pub fn stop(&self) {
        if let Assigner::Local(supervisor) = self {
            supervisor.do_send(AssignEndpoints(Vec::new()));
        }
    }
}

pub(crate) type AssignmentSender = mpsc::Sender<Result<pb::ScrapeAssignment, Status>>;

/// The connected scrapers, the endpoints they share and where their reports go.
pub struct RemoteScraping {
    pub sink: ScrapeSink,
    inner: Mutex<Remote>,
}

#[derive(Default)]
struct Remote {
    endpoints: Vec<Endpoint>,
    epoch: u64,
    scrapers: BTreeMap<String, AssignmentSender>,
}

impl RemoteScraping {
    pub fn new(sink: ScrapeSink) -> Arc<Self> {
        Arc::new(RemoteScraping { sink, inner: Mutex::new(Remote::default()) })
    }

    fn inner(&self) -> MutexGuard<'_, Remote> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_endpoints(&self, endpoints: &[Endpoint]) {
        let mut inner = self.inner();
        inner.endpoints = endpoints.to_vec();
        inner.reassign();
    }

    fn set_epoch(&self, epoch: u64) {
        self.inner().epoch = epoch;
    }

    /// A scraper connected (or reconnected): everyone gets their new share.
    pub(crate) fn join(&self, id: &str, tx: AssignmentSender) {
        let mut inner = self.inner();
        inner.scrapers.insert(id.to_string(), tx);
        inner.reassign();
    }

    /// A scraper's stream ended: its endpoints go to the others (unless it already reconnected
    /// on a new stream).
    pub(crate) fn leave(&self, id: &str, tx: &AssignmentSender) {
        let mut inner = self.inner();
        if inner.scrapers.get(id).is_some_and(|current| current.same_channel(tx)) {
            inner.scrapers.remove(id);
            tracing::info!(scraper = %id, "scraper left");
            inner.reassign();
        }
    }

    /// Drops every stream (leadership lost: scrapers reconnect to the new leader).
    pub fn disconnect_all(&self) {
        self.inner().scrapers.clear();
    }
}

impl Remote {
    /// Sends every connected scraper its full assignment.
    fn reassign(&self) {
        if self.scrapers.is_empty() {
            return;
        }
        let ids: Vec<String> = self.scrapers.keys().cloned().collect();
        for (id, endpoints) in assign(&self.endpoints, &ids) {
            let msg = pb::ScrapeAssignment {
                version: wire::PROTOCOL_VERSION,
                epoch: self.epoch,
                endpoints: endpoints.iter().map(|e| wire::endpoint_to_proto(e)).collect(),
            };
            if let Some(tx) = self.scrapers.get(&id)
                && tx.try_send(Ok(msg)).is_err()
            {
                tracing::warn!(scraper = %id, "assignment not delivered (stream full or closed)");
            }
        }
        tracing::info!(scrapers = ids.len(), endpoints = self.endpoints.len(), "endpoints assigned");
    }
}

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
