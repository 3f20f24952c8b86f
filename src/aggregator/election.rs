//! Leadership for aggregator replicas: a lease with a deadline.
//!
//! The etcd elector campaigns on an election name with a lease of `ttl`; the epoch of a term is
//! the etcd revision of the leader key, which grows with every new term, so snapshots stamped with
//! it fence out an old leader that comes back. The lease is renewed every `ttl / 3`; when the
//! renewal deadline gets within `ttl / 3` of expiry without a successful renewal, the elector
//! reports `Lost` *before* anything else (the aggregator stops publishing), then resigns and
//! campaigns again. The static elector (standalone mode, tests) is leader at once, forever.

use std::time::Duration;

use etcd_client::{LeaderKey, ResignOptions};
use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::etcd::{EtcdSettings, connect};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeadershipEvent {
    /// This replica leads from now on; stamp snapshots with `epoch`.
    Acquired { epoch: u64 },
    /// Stop publishing now.
    Lost { reason: String },
}

#[derive(Debug, Error)]
pub enum ElectionError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("lease TTL must be at least 2 s, got {0:?}")]
    Ttl(Duration),
    /// The lease could not be kept: this replica stopped leading and campaigns again.
    #[error("stepped down: {0}")]
    SteppedDown(String),
}

/// Resolves once `stop` turns true (or its sender is gone). Drops the `watch::Ref` at once so
/// callers' futures stay `Send`.
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|v| *v).await;
}

/// Leader at once (epoch 1), until `stop`.
pub async fn run_static(events: mpsc::Sender<LeadershipEvent>, mut stop: watch::Receiver<bool>) {
    let _ = events.send(LeadershipEvent::Acquired { epoch: 1 }).await;
    let _ = stop.wait_for(|s| *s).await;
}

/// Campaigns until `stop`, reporting leadership changes on `events`. Retries on etcd errors.
pub async fn run_etcd(
    settings: EtcdSettings,
    events: mpsc::Sender<LeadershipEvent>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), ElectionError> {
    if settings.ttl < Duration::from_secs(2) {
        return Err(ElectionError::Ttl(settings.ttl));
    }
    loop {
        let stopping = *stop.borrow();
        if stopping {
            return Ok(());
        }
        match term(&settings, &events, &mut stop).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "election attempt failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(settings.ttl / 4) => {}
                    _ = stopped(stop.clone()) => return Ok(()),
                }
            }
        }
    }
}

/// When a lease is renewed and when its holder must step down. One schedule runs from the grant
/// through the campaign into the term: renewals every TTL/3 after the previous one, and stepping
/// down TTL/3 before the lease would expire, so a renewal always has TTL/3 to complete first.
#[derive(Debug, Clone, Copy)]
struct LeaseClock {
    renew_every: Duration,
    next_renewal: Instant,
    /// When the lease expires unless renewed.
    expires: Instant,
}

impl LeaseClock {
    fn new(ttl: Duration, granted: Instant) -> Self {
        LeaseClock { renew_every: ttl / 3, next_renewal: granted + ttl / 3, expires: granted + ttl }
    }

    /// A renewal is starting now.
    fn renewing(&mut self, now: Instant) {
        self.next_renewal = now + self.renew_every;
    }

    /// etcd acknowledged a renewal sent at `sent` with `ttl`.
    fn renewed(&mut self, sent: Instant, ttl: Duration) {
        self.expires = sent + ttl;
    }

    fn step_down_at(&self) -> Instant {
        self.expires.checked_sub(self.renew_every).unwrap_or(self.expires)
    }
}

/// One lease: campaign, lead while renewals succeed, step down. `Ok` only when stopped.
async fn term(
    s: &EtcdSettings,
    events: &mpsc::Sender<LeadershipEvent>,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), ElectionError> {
    let mut client = connect(s).await?;
    let ttl_secs = s.ttl.as_secs().max(2) as i64;
    let granted = Instant::now();
    let lease = client.lease_grant(ttl_secs, None).await?.id();
    let (mut keeper, mut acks) = client.lease_keep_alive(lease).await?;
    let mut clock = LeaseClock::new(s.ttl, granted);

    // Campaign while keeping the lease alive (a campaign can block for a whole term of another
    // replica: its client has no request timeout).
    let mut campaigner = crate::etcd::connect_blocking(s).await?;
    let campaign = {
        let c = &mut campaigner;
        let (name, value) = (s.election.clone(), s.value.clone());
        async move { c.campaign(name, value, lease).await }
    };
    tokio::pin!(campaign);
    let leader: LeaderKey = loop {
        tokio::select! {
            r = &mut campaign => {
                let resp = r?;
                break resp.leader().cloned().ok_or_else(|| etcd_client::Error::InvalidArgs("campaign without a leader key".into()))?;
            }
            _ = tokio::time::sleep_until(clock.next_renewal) => {
                let sent = Instant::now();
                clock.renewing(sent);
                keeper.keep_alive().await?;
                if let Some(ack) = acks.message().await? && ack.ttl() > 0 {
                    clock.renewed(sent, Duration::from_secs(ack.ttl() as u64));
                }
            }
            _ = stopped(stop.clone()) => {
                let _ = client.lease_revoke(lease).await;
                return Ok(());
            }
        }
    };
    let epoch = leader.rev() as u64;
    tracing::info_span!("leadership_acquired", election = %s.election, epoch).in_scope(|| {
        tracing::info!(election = %s.election, epoch, "leadership acquired");
    });
    let _ = events.send(LeadershipEvent::Acquired { epoch }).await;

    let reason = loop {
        // Step down before the lease can expire under us: that deadline wins over a renewal that
        // is due, and bounds one in flight. Renewals keep the schedule of the campaign: the first
        // one in the term is not pushed back by winning.
        tokio::select! {
            biased;
            _ = tokio::time::sleep_until(clock.step_down_at()) => break "lease not renewed in time".to_string(),
            _ = tokio::time::sleep_until(clock.next_renewal) => {
                let sent = Instant::now();
                clock.renewing(sent);
                let renewed = async {
                    keeper.keep_alive().await?;
                    acks.message().await
                };
                match tokio::time::timeout_at(clock.step_down_at(), renewed).await {
                    Ok(Ok(Some(ack))) if ack.ttl() > 0 => clock.renewed(sent, Duration::from_secs(ack.ttl() as u64)),
                    Ok(Ok(Some(_))) => break "lease expired".to_string(),
                    Ok(Ok(None)) => break "keep-alive stream closed".to_string(),
                    Ok(Err(e)) => tracing::debug!(error = %e, "lease renewal failed"),
                    Err(_) => tracing::debug!("lease renewal timed out"),
                }
            }
            _ = stopped(stop.clone()) => {
                let _ = events.send(LeadershipEvent::Lost { reason: "shutting down".into() }).await;
                let _ = client.resign(Some(ResignOptions::new().with_leader(leader.clone()))).await;
                let _ = client.lease_revoke(lease).await;
                return Ok(());
            }
        }
    };
    // Stop publishing first, then log, then clean up what can be.
    let _ = events.send(LeadershipEvent::Lost { reason: reason.clone() }).await;
    tracing::info_span!("leadership_lost", election = %s.election, epoch, reason = %reason).in_scope(|| {
        tracing::warn!(election = %s.election, epoch, %reason, "leadership lost");
    });
    let _ = tokio::time::timeout(Duration::from_secs(1), client.lease_revoke(lease)).await;
    Err(ElectionError::SteppedDown(reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: stepping down was reported as `invalid arguments: lease not renewed in time`
    /// (an etcd-client error kind for bad requests).
    #[test]
    fn stepping_down_is_its_own_error_kind() {
        let e = ElectionError::SteppedDown("lease not renewed in time".into());
        assert_eq!(e.to_string(), "stepped down: lease not renewed in time");
        assert!(!matches!(e, ElectionError::Etcd(_)));
    }

    /// Regression: the term restarted the renewal timer when the campaign was won, so a win just
    /// before a renewal was due pushed the first renewal to within a few ms of the step-down
    /// deadline, and a replica that had just taken over stepped down under load with a healthy
    /// lease.
    #[test]
    fn winning_keeps_a_full_renewal_interval_before_stepping_down() {
        let ttl = Duration::from_secs(3);
        let r = ttl / 3;
        let t0 = Instant::now();
        let mut clock = LeaseClock::new(ttl, t0);
        assert_eq!(clock.next_renewal, t0 + r);
        // Campaigning: a renewal at t0 + r, acknowledged.
        clock.renewing(t0 + r);
        clock.renewed(t0 + r, ttl);
        // Won at any moment before the next renewal: the term keeps this schedule, so its first
        // renewal still has TTL/3 before the step-down deadline.
        assert_eq!(clock.next_renewal, t0 + 2 * r);
        assert!(clock.step_down_at() >= clock.next_renewal + r, "a renewal has TTL/3 to complete");
        // No acknowledgement: step down TTL/3 before the lease expires, not after.
        clock.renewing(t0 + 2 * r);
        assert_eq!(clock.step_down_at(), t0 + r + ttl - r);
        assert!(clock.step_down_at() < clock.expires);
    }
}
