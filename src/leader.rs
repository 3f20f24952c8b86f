//! The client side of the control plane: finding the aggregator leader and noticing when the one
//! followed is no longer it. Pickers (snapshot watch, reports) and scrapers use this.
//!
//! A leader can vanish without closing its connections (paused process, partition). Two things
//! catch that: HTTP/2 keep-alive pings on every control-plane channel (a silent peer is dropped
//! after `KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT`), and, with etcd, [`LeaderFinder::superseded`],
//! which resolves as soon as the election names someone else.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::aggregator::election::{self, EtcdSettings};

const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub enum LeaderSource {
    /// Aggregator control addresses, tried in turn; followers refuse, the leader accepts.
    Addresses(Vec<String>),
    /// The election's leader value is the leader's control address.
    Etcd(EtcdSettings),
}

/// Finds the leader; keeps one etcd client for its lookups.
pub struct LeaderFinder {
    source: LeaderSource,
    etcd: Option<etcd_client::Client>,
}

impl LeaderFinder {
    pub fn new(source: LeaderSource) -> Self {
        LeaderFinder { source, etcd: None }
    }

    /// Addresses to try now, in order: the elected leader, or every listed address.
    pub async fn candidates(&mut self) -> Vec<String> {
        match &self.source {
            LeaderSource::Addresses(a) => a.clone(),
            LeaderSource::Etcd(_) => self.elected().await.into_iter().collect(),
        }
    }

    /// The elected leader per etcd; `None` when there is none or etcd cannot be reached (the
    /// client is then rebuilt at the next call).
    async fn elected(&mut self) -> Option<String> {
        let LeaderSource::Etcd(settings) = &self.source else { return None };
        if self.etcd.is_none() {
            self.etcd = election::connect(settings).await.ok();
        }
        let client = self.etcd.as_mut()?;
        match election::leader_value(client, &settings.election).await {
            Ok(leader) => leader,
            Err(e) => {
                tracing::debug!(error = %e, "cannot ask etcd for the leader");
                self.etcd = None;
                None
            }
        }
    }

    /// Resolves once etcd names a leader other than `target` (a follower of an address list
    /// relies on the stream ending instead, and this never resolves). While etcd is unreachable
    /// or has no leader, the current stream is kept: the leader itself stops publishing when it
    /// loses its lease.
    pub async fn superseded(&mut self, target: &str) {
        let poll = match &self.source {
            LeaderSource::Etcd(s) => (s.ttl / 4).clamp(Duration::from_millis(250), Duration::from_secs(1)),
            LeaderSource::Addresses(_) => return std::future::pending().await,
        };
        loop {
            tokio::time::sleep(poll).await;
            if let Some(leader) = self.elected().await
                && leader != target
            {
                tracing::info!(old = %target, new = %leader, "the aggregator leader changed");
                return;
            }
        }
    }
}

/// A control-plane channel to `target` (`host:port` or a URL) with keep-alive pings, so that a
/// peer that stops answering is dropped instead of waited on forever.
pub async fn connect(target: &str) -> Result<Channel, String> {
    let url = if target.contains("://") { target.to_string() } else { format!("http://{target}") };
    Endpoint::from_shared(url)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .connect()
        .await
        .map_err(|e| e.to_string())
}
