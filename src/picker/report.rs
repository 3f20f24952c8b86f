//! Reports to the leader what it cannot see: this picker's in-flight load per endpoint and the
//! prefix blocks it routed. The leader folds every picker's reports into the next snapshot, so all
//! pickers schedule with one view of load and prefix state.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use switchyard_proto::v1 as pb;
use switchyard_proto::v1::control_plane_client::ControlPlaneClient;
use tokio::sync::{mpsc, watch};

use super::Picker;
use crate::control_tls::ClientTls;
use crate::leader::LeaderSource;
use crate::wire;

/// Builds one report and marks its loads as reported.
pub fn build_report(picker: &Picker, picker_id: &str) -> pb::PickerReport {
    let view = picker.view.load_full();
    let mut loads = Vec::new();
    for (i, (state, c)) in view.snapshot.endpoints.iter().zip(&view.counters).enumerate() {
        let (requests, tokens) =
            (c.inflight_requests.load(Ordering::Relaxed), c.inflight_tokens.load(Ordering::Relaxed));
        let (sent, scrape) = view.own_sent_since_scrape(i);
        c.reported_requests.store(requests, Ordering::Relaxed);
        c.reported_tokens.store(tokens, Ordering::Relaxed);
        c.reported_sent.store(sent, Ordering::Relaxed);
        c.reported_sent_scrape.store(scrape, Ordering::Relaxed);
        if requests != 0 || tokens != 0 || sent > 0 {
            loads.push(pb::LoadDelta {
                endpoint_id: state.endpoint.id.to_string(),
                requests,
                tokens,
                sent_since_scrape: sent,
                scraped_at_unix_micros: scrape,
            });
        }
    }
    let routed = picker
        .take_routed()
        .into_iter()
        .map(|b| pb::PrefixBlocks { endpoint_id: b.endpoint.to_string(), hashes: b.hashes })
        .collect();
    pb::PickerReport { version: wire::PROTOCOL_VERSION, picker_id: picker_id.to_string(), loads, routed }
}

/// When reports go out: soon after this picker's load or routing changes, batched over
/// `min_interval`, and at least every `heartbeat` (the leader forgets a silent picker's load).
#[derive(Debug, Clone, Copy)]
pub struct ReportTiming {
    pub min_interval: Duration,
    pub heartbeat: Duration,
}

impl Default for ReportTiming {
    fn default() -> Self {
        ReportTiming { min_interval: Duration::from_millis(10), heartbeat: Duration::from_millis(250) }
    }
}

/// Sends reports to the current leader until `stop` (over TLS with `tls`).
pub async fn run(
    picker: Arc<Picker>,
    source: LeaderSource,
    tls: Option<Arc<ClientTls>>,
    picker_id: String,
    timing: ReportTiming,
    stop: watch::Receiver<bool>,
) {
    picker.enable_reporting();
    let session = |channel, _target: String| {
        let (picker, picker_id) = (picker.clone(), picker_id.clone());
        async move {
            let mut client = ControlPlaneClient::new(channel);
            let (tx, rx) = mpsc::channel(16);
            let mut call =
                tokio::spawn(async move { client.report(tokio_stream::wrappers::ReceiverStream::new(rx)).await });
            loop {
                tokio::select! {
                    _ = picker.report_due.notified() => {}
                    _ = tokio::time::sleep(timing.heartbeat) => {}
                    r = &mut call => return Err(format!("report stream ended: {r:?}")),
                }
                if tx.send(build_report(&picker, &picker_id)).await.is_err() {
                    return Err("report stream closed".to_string());
                }
                // Changes during this pause go out together in the next report.
                tokio::time::sleep(timing.min_interval).await;
            }
        }
    };
    crate::leader::follow(source, tls, stop, "reports", session, || {}).await;
}
