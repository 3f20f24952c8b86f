//! The client side of the control plane: finding the aggregator leader, following it, and
//! noticing when the one followed is no longer it. Pickers (snapshot watch, reports) and scrapers
//! run their sessions through [`follow`], the one follow-the-leader loop.
//!
//! A leader can vanish without closing its connections (paused process, partition). Two things
//! catch that: HTTP/2 keep-alive pings on every control-plane channel (a silent peer is dropped
//! after `KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT`), and, with etcd, [`LeaderFinder::superseded`],
//! which resolves as soon as the election names someone else.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

use crate::etcd::{self, EtcdSettings};

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
            self.etcd = etcd::connect(settings).await.ok();
        }
        let client = self.etcd.as_mut()?;
        match etcd::leader_value(client, &settings.election).await {
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

/// Backoff between rounds of candidates that all failed: doubles from the first to the last.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_millis(500));

/// Runs `session` against the current leader until `stop` is set: finds the leader (etcd or the
/// address list), connects, and runs one session on the channel until it ends (with an error or
/// not), the election names someone else, or `stop`; then `ended` runs (also when the session was
/// cut off) and the next leader is looked for, with a growing backoff after rounds where no
/// session could start.
pub async fn follow<S, F>(
    source: LeaderSource,
    mut stop: watch::Receiver<bool>,
    what: &'static str,
    mut session: S,
    mut ended: impl FnMut(),
) where
    S: FnMut(Channel, String) -> F,
    F: Future<Output = Result<(), String>>,
{
    let mut finder = LeaderFinder::new(source);
    let mut backoff = BACKOFF.0;
    loop {
        if *stop.borrow() {
            return;
        }
        for target in finder.candidates().await {
            let channel = match connect(&target).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(aggregator = %target, error = %e, what, "cannot connect");
                    continue;
                }
            };
            let started = tokio::time::Instant::now();
            let outcome = tokio::select! {
                r = session(channel, target.clone()) => r,
                _ = finder.superseded(&target) => Ok(()),
                _ = stop.wait_for(|s| *s) => {
                    ended();
                    return;
                }
            };
            ended();
            if let Err(e) = outcome {
                tracing::debug!(aggregator = %target, error = %e, what, "session ended");
            }
            // A session that lasted reached a leader: look again at once.
            if started.elapsed() > BACKOFF.1 {
                backoff = BACKOFF.0;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(BACKOFF.1);
    }
}
