//! Open-loop load: every request of a trace is sent at its arrival time, whether or not earlier
//! ones have finished (a closed loop would slow down with the system it measures and hide its
//! tail). Each request streams; the client records what it saw.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use tokio::time::Instant;

use super::workload::TraceRecord;

/// One request as the client saw it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Outcome {
    /// Seconds after the run's start the request was sent.
    pub sent_at: f64,
    /// HTTP status (0: no response).
    pub status: u16,
    /// The model server that answered (`x-sim-server`).
    pub server: Option<String>,
    pub ttft_ms: Option<f64>,
    pub e2e_ms: Option<f64>,
    pub output_tokens: u64,
    pub objective: Option<String>,
    /// For a response that is not a success: the start of its body (why it failed).
    pub error: Option<String>,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status) && self.ttft_ms.is_some()
    }
}

/// Sends `trace` (times already scaled to the offered load) to `url`; waits for every response,
/// at most `drain` after the last arrival.
pub async fn run_open_loop(
    url: String,
    trace: Arc<Vec<(f64, serde_json::Value, Option<String>)>>,
    drain: Duration,
) -> Vec<Outcome> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(1024).build().unwrap_or_default();
    let start = Instant::now();
    let last = trace.last().map(|t| t.0).unwrap_or(0.0);
    let deadline = start + Duration::from_secs_f64(last) + drain;
    let mut tasks = Vec::with_capacity(trace.len());
    for i in 0..trace.len() {
        let (client, url, trace) = (client.clone(), url.clone(), trace.clone());
        let at = start + Duration::from_secs_f64(trace[i].0);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let (sent_at, body, objective) = &trace[i];
            match tokio::time::timeout_at(deadline, send(&client, &url, body, objective.as_deref(), start)).await {
                Ok(o) => o,
                Err(_) => Outcome {
                    sent_at: *sent_at,
                    objective: objective.clone(),
                    error: Some("no answer before the drain deadline".into()),
                    ..Outcome::default()
                },
            }
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.unwrap_or_default());
    }
    out
}

async fn send(
    client: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
    objective: Option<&str>,
    start: Instant,
) -> Outcome {
    let sent = Instant::now();
    let mut out = Outcome {
        sent_at: sent.duration_since(start).as_secs_f64(),
        objective: objective.map(str::to_string),
        ..Outcome::default()
    };
    let mut req = client.post(url).json(body);
    if let Some(o) = objective {
        req = req.header("x-gateway-inference-objective", o);
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            out.error = Some(format!("request failed: {e}"));
            return out;
        }
    };
    out.status = resp.status().as_u16();
    out.server = resp.headers().get("x-sim-server").and_then(|v| v.to_str().ok()).map(str::to_string);
    let mut stream = resp.bytes_stream();
    let mut all = Vec::new();
    while let Some(Ok(chunk)) = stream.next().await {
        if out.ttft_ms.is_none() && chunk.windows(5).any(|w| w == b"data:") {
            out.ttft_ms = Some(sent.elapsed().as_secs_f64() * 1000.0);
        }
        all.extend_from_slice(&chunk);
    }
    out.e2e_ms = Some(sent.elapsed().as_secs_f64() * 1000.0);
    if !(200..300).contains(&out.status) {
        let text = String::from_utf8_lossy(&all);
        out.error = Some(format!("{} {}", out.status, text.chars().take(120).collect::<String>()));
    }
    if let Some(u) = crate::picker::response::usage_from_sse(&all) {
        out.output_tokens = u.completion_tokens;
    }
    out
}

/// Scales a unit-rate trace to `rate` requests per second and builds the bodies (`first_index`
/// numbers the requests, which keeps their unshared suffixes unique).
pub fn schedule(
    records: &[TraceRecord],
    rate: f64,
    base_model: &str,
    first_index: usize,
) -> Vec<(f64, serde_json::Value, Option<String>)> {
    let first = records.first().map(|r| r.at).unwrap_or(0.0);
    records
        .iter()
        .enumerate()
        .map(|(i, r)| ((r.at - first) / rate, r.body(first_index + i, base_model), r.objective.clone()))
        .collect()
}
