//! The span pipeline behind the sampler: a bounded queue that never blocks the thread that ends a
//! span (the request path), drained by one background thread that batches and exports. A full
//! queue drops the span and counts it (`switchyard_trace_spans_dropped_total`); the SDK's own batch
//! processor drops silently, which is why this one exists.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use prometheus_client::metrics::counter::Counter;

/// Queue and batch sizes.
#[derive(Debug, Clone, Copy)]
pub struct QueueSettings {
    /// Spans waiting for export at most (`OTEL_BSP_MAX_QUEUE_SIZE`, default 2048).
    pub max_queue: usize,
    /// Spans per export call (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, default 512).
    pub max_batch: usize,
    /// Longest wait before a partial batch goes out (`OTEL_BSP_SCHEDULE_DELAY` ms, default 1000).
    pub delay: Duration,
}

impl QueueSettings {
    /// From the standard `OTEL_BSP_*` variables, with defaults for the rest.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().and_then(|v| v.trim().parse::<u64>().ok());
        QueueSettings {
            max_queue: var("OTEL_BSP_MAX_QUEUE_SIZE").map_or(2048, |v| v.max(1) as usize),
            max_batch: var("OTEL_BSP_MAX_EXPORT_BATCH_SIZE").map_or(512, |v| v.max(1) as usize),
            delay: Duration::from_millis(var("OTEL_BSP_SCHEDULE_DELAY").unwrap_or(1000).max(1)),
        }
    }
}

enum Msg {
    Span(Box<SpanData>),
    /// The provider's resource (service name, attributes), for the exporter.
    Resource(Box<Resource>),
    Flush(SyncSender<()>),
    Shutdown(SyncSender<()>),
}

/// Counts shared with the metrics endpoint.
#[derive(Debug, Default)]
pub struct SpanCounts {
    pub exported: Counter,
    pub dropped: Counter,
    pub export_errors: Counter,
}

#[derive(Debug)]
pub struct BoundedBatchProcessor {
    tx: SyncSender<Msg>,
    counts: Arc<SpanCounts>,
}

impl BoundedBatchProcessor {
    /// Starts the export thread.
    pub fn start<E: SpanExporter + 'static>(exporter: E, settings: QueueSettings, counts: Arc<SpanCounts>) -> Self {
        let (tx, rx) = sync_channel(settings.max_queue);
        let thread_counts = counts.clone();
        let spawned = std::thread::Builder::new()
            .name("switchyard-trace-export".into())
            .spawn(move || export_loop(exporter, rx, settings, thread_counts));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the trace export thread; spans will be dropped");
        }
        BoundedBatchProcessor { tx, counts }
    }

    fn ask(&self, make: impl FnOnce(SyncSender<()>) -> Msg, timeout: Duration) -> OTelSdkResult {
        let (done_tx, done_rx) = sync_channel(1);
        // Control messages wait for room (they are rare); spans never do.
        self.tx.send(make(done_tx)).map_err(|_| OTelSdkError::AlreadyShutdown)?;
        done_rx.recv_timeout(timeout).map_err(|_| OTelSdkError::Timeout(timeout))
    }
}

impl SpanProcessor for BoundedBatchProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        match self.tx.try_send(Msg::Span(Box::new(span))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.counts.dropped.inc();
            }
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.ask(Msg::Flush, Duration::from_secs(5))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.ask(Msg::Shutdown, timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        // Sent before any span (the provider sets it when it is built).
        let _ = self.tx.send(Msg::Resource(Box::new(resource.clone())));
    }
}

fn export_loop<E: SpanExporter>(mut exporter: E, rx: Receiver<Msg>, s: QueueSettings, counts: Arc<SpanCounts>) {
    let mut batch: Vec<SpanData> = Vec::with_capacity(s.max_batch);
    let send = |batch: &mut Vec<SpanData>, exporter: &mut E| {
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        // The exporter bounds its own calls (the OTLP exporter: OTEL_EXPORTER_OTLP_TIMEOUT).
        let result = futures::executor::block_on(exporter.export(std::mem::take(batch)));
        match result {
            Ok(()) => {
                counts.exported.inc_by(n);
            }
            Err(e) => {
                // Logged on the first failure and then every 1024th span lost.
                let before = counts.export_errors.inc_by(n);
                if before == 0 || before / 1024 != (before + n) / 1024 {
                    tracing::warn!(error = %e, spans = n, "span export failed");
                }
            }
        };
    };
    loop {
        match rx.recv_timeout(s.delay) {
            Ok(Msg::Span(span)) => {
                batch.push(*span);
                if batch.len() >= s.max_batch {
                    send(&mut batch, &mut exporter);
                }
            }
            Ok(Msg::Resource(r)) => exporter.set_resource(&r),
            Ok(Msg::Flush(done)) => {
                send(&mut batch, &mut exporter);
                let _ = done.send(());
            }
            Ok(Msg::Shutdown(done)) => {
                send(&mut batch, &mut exporter);
                let _ = exporter.shutdown();
                let _ = done.send(());
                return;
            }
            Err(RecvTimeoutError::Timeout) => send(&mut batch, &mut exporter),
            Err(RecvTimeoutError::Disconnected) => {
                send(&mut batch, &mut exporter);
                return;
            }
        }
    }
}
