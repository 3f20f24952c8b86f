//! Logs and traces for every role: the `tracing` subscriber (console or JSON lines, filter
//! changeable at run time), and OpenTelemetry spans exported over OTLP/gRPC (or printed) through
//! a bounded queue that never blocks the request path.
//!
//! Configured by the standard variables: `OTEL_TRACES_EXPORTER` (`otlp` | `console` | `none`),
//! `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` (`parentbased_traceidratio` by default) and
//! `OTEL_TRACES_SAMPLER_ARG` (default 0.01), `OTEL_BSP_*`; and upstream's `--tracing` flag
//! (`--tracing=false` turns traces off whatever the variables say). Without an exporter variable
//! or an OTLP endpoint, nothing is exported.
//!
//! W3C trace context (`traceparent`) is the propagation format: continued from incoming requests,
//! injected into what the model server receives, and carried in control-plane snapshots as links.

mod console;
mod export;
pub mod propagation;

use std::sync::{Arc, OnceLock};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _, reload};

pub use export::{BoundedBatchProcessor, QueueSettings, SpanCounts};

/// Where spans go.
#[derive(Debug, Clone, PartialEq)]
pub enum Exporter {
    None,
    Otlp,
    Console,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    pub exporter: Exporter,
    /// Root-span sampling ratio (children follow their parent's decision).
    pub ratio: f64,
    pub service_name: String,
}

/// Sampling ratio when `OTEL_TRACES_SAMPLER_ARG` is not set: 1 % of root requests, cheap at
/// production rates; a traced caller's decision is always followed.
pub const DEFAULT_RATIO: f64 = 0.01;

impl TraceSettings {
    /// From `OTEL_*` and `--tracing` (`None`: not given).
    pub fn from_env(flag: Option<bool>, role: &str) -> Result<Self, String> {
        let var = |name: &str| std::env::var(name).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let endpoint = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"));
        let exporter = match (flag, var("OTEL_TRACES_EXPORTER").as_deref()) {
            (Some(false), _) => Exporter::None,
            (_, Some("otlp")) => Exporter::Otlp,
            (_, Some("console")) => Exporter::Console,
            (_, Some("none")) => Exporter::None,
            (_, Some(other)) => return Err(format!("OTEL_TRACES_EXPORTER: {other:?} is not otlp, console or none")),
            (Some(true), None) => Exporter::Otlp,
            (None, None) if endpoint.is_some() => Exporter::Otlp,
            (None, None) => Exporter::None,
        };
        let ratio = match var("OTEL_TRACES_SAMPLER").as_deref() {
            None | Some("parentbased_traceidratio") | Some("traceidratio") => match var("OTEL_TRACES_SAMPLER_ARG") {
                None => DEFAULT_RATIO,
                Some(arg) => arg
                    .parse::<f64>()
                    .ok()
                    .filter(|r| (0.0..=1.0).contains(r))
                    .ok_or_else(|| format!("OTEL_TRACES_SAMPLER_ARG: {arg:?} is not a ratio between 0 and 1"))?,
            },
            Some("always_on") | Some("parentbased_always_on") => 1.0,
            Some("always_off") | Some("parentbased_always_off") => 0.0,
            Some(other) => return Err(format!("OTEL_TRACES_SAMPLER: {other:?} is not supported")),
        };
        let service_name = var("OTEL_SERVICE_NAME").unwrap_or_else(|| format!("switchyard-{role}"));
        Ok(TraceSettings { exporter, ratio, service_name })
    }
}

/// What `init` set up; shut it down to flush the spans still queued.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    pub fn shutdown(&self) {
        if let Some(p) = &self.provider
            && let Err(e) = p.shutdown()
        {
            tracing::debug!(error = %e, "trace provider shutdown");
        }
    }
}

/// The span pipeline's counters, registered in every role's metrics registry.
#[derive(Clone, Default)]
pub struct TraceMetrics {
    pub exported: Counter,
    pub dropped: Counter,
    pub export_errors: Counter,
}

static TRACE_METRICS: OnceLock<TraceMetrics> = OnceLock::new();
/// Set once the OpenTelemetry layer is installed (spans leave the process).
static TRACES_ON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process exports spans (an OTLP or console exporter is installed).
pub fn traces_on() -> bool {
    TRACES_ON.load(std::sync::atomic::Ordering::Relaxed)
}

static LOG_FILTER: OnceLock<reload::Handle<EnvFilter, tracing_subscriber::Registry>> = OnceLock::new();

fn trace_metrics() -> &'static TraceMetrics {
    TRACE_METRICS.get_or_init(TraceMetrics::default)
}

/// Registers the span pipeline's counters (process-wide: one pipeline per process).
pub fn register_metrics(registry: &mut Registry) {
    let m = trace_metrics();
    registry.register("switchyard_trace_spans_exported", "Spans exported", m.exported.clone());
    registry.register(
        "switchyard_trace_spans_dropped",
        "Spans dropped because the export queue was full (the request path never waits for it)",
        m.dropped.clone(),
    );
    registry.register("switchyard_trace_spans_export_failed", "Spans whose export failed", m.export_errors.clone());
    registry.register_collector(Box::new(RuntimeTasks));
}

/// `switchyard_runtime_alive_tasks`: tasks alive on the runtime serving `/metrics` (the process's
/// one multi-thread runtime; actors run on it too), read at each scrape. A task that should end
/// with its stream or connection and does not shows here as growth under steady traffic.
#[derive(Debug)]
struct RuntimeTasks;

impl prometheus_client::collector::Collector for RuntimeTasks {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric as _;
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return Ok(());
        };
        let alive = i64::try_from(handle.metrics().num_alive_tasks()).unwrap_or(i64::MAX);
        let gauge = encoder.encode_descriptor(
            "switchyard_runtime_alive_tasks",
            "Tasks alive on the tokio runtime",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        prometheus_client::metrics::gauge::ConstGauge::new(alive).encode(gauge)
    }
}

/// Changes the log filter of the running process (`RUST_LOG` syntax).
pub fn set_log_filter(filter: &str) -> Result<(), String> {
    let new = EnvFilter::try_new(filter).map_err(|e| e.to_string())?;
    let handle = LOG_FILTER.get().ok_or("logging is not initialised")?;
    handle.reload(new).map_err(|e| e.to_string())
}

/// Installs the process's subscriber: logs (filter, format) and, when `traces` exports anywhere,
/// the OpenTelemetry layer. Must run inside the tokio runtime when traces go over OTLP.
pub fn init(filter: &str, json: bool, traces: Option<&TraceSettings>) -> Telemetry {
    // The log filter applies to the log only: spans are exported whatever the log level.
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let _ = LOG_FILTER.set(handle);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if json { fmt.json().with_filter(filter).boxed() } else { fmt.with_filter(filter).boxed() };
    let (otel, provider) = match traces.map(provider) {
        Some(Ok(Some(provider))) => {
            let tracer = provider.tracer("switchyard");
            opentelemetry::global::set_text_map_propagator(
                opentelemetry_sdk::propagation::TraceContextPropagator::new(),
            );
            // Switchyard's spans only (not its dependencies'); log events stay in the log.
            let layer =
                tracing_opentelemetry::layer().with_tracer(tracer).with_filter(tracing_subscriber::filter::filter_fn(
                    |m| m.is_span() && m.target().starts_with("switchyard") && *m.level() <= tracing::Level::INFO,
                ));
            (Some(layer), Some(provider))
        }
        Some(Err(e)) => {
            eprintln!("warning: traces are off: {e}");
            (None, None)
        }
        _ => (None, None),
    };
    let exporting = otel.is_some();
    if tracing_subscriber::registry().with(fmt).with(otel).try_init().is_ok() && exporting {
        TRACES_ON.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    Telemetry { provider }
}

fn provider(t: &TraceSettings) -> Result<Option<SdkTracerProvider>, String> {
    let m = trace_metrics();
    let counts = Arc::new(SpanCounts {
        exported: m.exported.clone(),
        dropped: m.dropped.clone(),
        export_errors: m.export_errors.clone(),
    });
    let queue = QueueSettings::from_env();
    let processor = match t.exporter {
        Exporter::None => return Ok(None),
        Exporter::Otlp => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build()
                .map_err(|e| format!("cannot build the OTLP exporter: {e}"))?;
            BoundedBatchProcessor::start(exporter, queue, counts)
        }
        Exporter::Console => BoundedBatchProcessor::start(console::ConsoleExporter, queue, counts),
    };
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(t.service_name.clone()).build();
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(t.ratio)));
    Ok(Some(
        SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(sampler)
            .with_resource(resource)
            .build(),
    ))
}
