//! `OTEL_TRACES_EXPORTER=console`: one JSON line per span on stderr (for a look without a
//! collector; not for production rates).

use std::io::Write as _;

use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

#[derive(Debug)]
pub struct ConsoleExporter;

impl SpanExporter for ConsoleExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let mut out = std::io::stderr().lock();
        for span in batch {
            let attributes: serde_json::Map<String, serde_json::Value> =
                span.attributes.iter().map(|kv| (kv.key.to_string(), kv.value.to_string().into())).collect();
            let line = serde_json::json!({
                "span": span.name,
                "trace_id": span.span_context.trace_id().to_string(),
                "span_id": span.span_context.span_id().to_string(),
                "parent_span_id": span.parent_span_id.to_string(),
                "duration_us": span.end_time.duration_since(span.start_time).unwrap_or_default().as_micros() as u64,
                "links": span.links.iter().map(|l| l.span_context.span_id().to_string()).collect::<Vec<_>>(),
                "attributes": attributes,
            });
            let _ = writeln!(out, "{line}");
        }
        Ok(())
    }
}
