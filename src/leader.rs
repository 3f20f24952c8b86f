//! The client side of the control plane: finding the aggregator leader, following it, and
//! noticing when the one followed is no longer it. Pickers (snapshot watch, reports) and scrapers
//! run their sessions through [`follow`], the one follow-the-leader loop.
//!
//! A leader can vanish without closing its connections (paused process, partition). Two things
//! catch that: HTTP/2 keep-alive pings on every control-plane channel (a silent peer is dropped
//! after `KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT`), and, with etcd, [`LeaderFinder::superseded`],
//! which resolves as soon as the election names someone else.
//!
//! Channels use TLS when the role has control-plane TLS settings ([`crate::control_tls`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

use crate::control_tls::ClientTls;
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
/// peer that stops answering is dropped instead of waited on forever; over TLS with `tls` (the
/// settings current at this call: files reloaded since apply to the next connection).
pub async fn connect(target: &str, tls: Option<&ClientTls>) -> Result<Channel, String> {
    let host = target.split_once("://").map_or(target, |(_, rest)| rest);
    let url = match tls {
        Some(_) => format!("https://{host}"),
        None if target.contains("://") => target.to_string(),
        None => format!("http://{target}"),
    };
    let mut endpoint = Endpoint::from_shared(url).map_err(|e| e.to_string())?;
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls.config()).map_err(|e| error_chain(&e))?;
    }
    endpoint
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .connect()
        .await
        .map_err(|e| error_chain(&e))
}

/// An error with its causes (a transport error alone says only "transport error"; the TLS or
/// socket error that explains it is a source). A cause whose text the previous one already ends
/// with is skipped (`io::Error` shows its inner error and also returns that error's source).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// A call's status as a session error: its message and, for transport failures (a refused client
/// certificate shows only as "transport error"), the causes.
pub fn status_error(status: &tonic::Status) -> String {
    let Some(source) = std::error::Error::source(status) else { return status.message().to_string() };
    let causes = error_chain(source);
    if causes.starts_with(status.message()) { causes } else { format!("{}: {causes}", status.message()) }
}

/// Backoff between rounds of candidates that all failed: doubles from the first to the last.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_millis(500));

/// Runs `session` against the current leader until `stop` is set: finds the leader (etcd or the
/// address list), connects (over TLS with `tls`), and runs one session on the channel until it
/// ends (with an error or not), the election names someone else, or `stop`; then `ended` runs
/// (also when the session was cut off) and the next leader is looked for, with a growing backoff
/// after rounds where no session could start. Rounds in a row where none could start are logged
/// as warnings (the 1st, 2nd, 4th, 8th, ...), with the last error: a certificate the leader
/// refuses shows there.
pub async fn follow<S, F>(
    source: LeaderSource,
    tls: Option<Arc<ClientTls>>,
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
    let mut failed_rounds = 0u64;
    loop {
        if *stop.borrow() {
            return;
        }
        let mut last_error = None;
        let mut reached = false;
        for target in finder.candidates().await {
            let channel = match connect(&target, tls.as_deref()).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(aggregator = %target, error = %e, what, "cannot connect");
                    last_error = Some(format!("{target}: cannot connect: {e}"));
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
            // A session that lasted reached a leader: look again at once.
            if started.elapsed() > BACKOFF.1 {
                backoff = BACKOFF.0;
                reached = true;
            }
            if let Err(e) = outcome {
                tracing::debug!(aggregator = %target, error = %e, what, "session ended");
                last_error = Some(format!("{target}: {e}"));
            }
        }
        if reached {
            failed_rounds = 0;
        } else if let Some(error) = last_error {
            failed_rounds += 1;
            if failed_rounds.is_power_of_two() {
                tracing::warn!(what, failed_rounds, %error, "no aggregator leader reachable");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(BACKOFF.1);
    }
}
