//! Bounds on what one ext-proc stream can make the picker hold: request-header bytes (per header,
//! per request, and across every open stream) and the time from request headers to the end of the
//! request body. Checks are pure and the cross-stream budget is one atomic, so the request path
//! stays lock-free.
//!
//! It decides, it does not answer: `ext_proc` turns a [`LimitError`] into an immediate response
//! (431, 429 or 408). Bodies are bounded elsewhere (`max_body_bytes`), connections in
//! [`crate::preface`].

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use prometheus_client::metrics::gauge::Gauge;
use thiserror::Error;

/// Defaults follow Envoy's (60 KiB of request headers, 100 headers) with room for what Envoy and
/// the route add before ext-proc sees a request (pseudo-headers, `x-request-id`,
/// `x-forwarded-*`, `x-envoy-*`, tracing headers): a request Envoy accepts is never refused here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLimits {
    /// One header, name and value (`--max-header-bytes`). At least Envoy's whole-request default,
    /// since one cookie may legitimately take all of it.
    pub max_header_bytes: usize,
    /// All headers of one request, names and values (`--max-request-header-bytes`).
    pub max_request_header_bytes: usize,
    /// Headers in one request (`--max-request-headers`).
    pub max_request_headers: usize,
    /// Header bytes held by all streams still waiting to be routed (`--max-pending-header-bytes`).
    pub max_pending_header_bytes: usize,
    /// From request headers to the end of the request body (`--request-body-timeout`).
    pub request_body_timeout: Duration,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_header_bytes: 64 * 1024,
            max_request_header_bytes: 128 * 1024,
            max_request_headers: 200,
            // 512 requests at the per-request maximum, or tens of thousands of ordinary ones.
            max_pending_header_bytes: 64 * 1024 * 1024,
            request_body_timeout: Duration::from_secs(60),
        }
    }
}

/// A bound a request broke.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LimitError {
    #[error("request header {name} is {bytes} bytes, more than {max}")]
    HeaderTooLarge { name: String, bytes: usize, max: usize },
    #[error("{count} request headers, more than {max}")]
    TooManyHeaders { count: usize, max: usize },
    #[error("request headers are {bytes} bytes, more than {max}")]
    HeadersTooLarge { bytes: usize, max: usize },
    #[error("requests waiting to be routed hold {held} header bytes; {bytes} more would exceed {max}")]
    PendingHeadersExhausted { bytes: usize, held: usize, max: usize },
    #[error("request body not complete within {0:?}")]
    BodyTimeout(Duration),
}

impl LimitError {
    /// HTTP status and upstream's error code name: the request's fault (431, 408) or the
    /// picker's load (429, as upstream answers saturation).
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            LimitError::HeaderTooLarge { .. }
            | LimitError::TooManyHeaders { .. }
            | LimitError::HeadersTooLarge { .. } => (431, "BadRequest"),
            LimitError::PendingHeadersExhausted { .. } => (429, "ResourceExhausted"),
            LimitError::BodyTimeout(_) => (408, "BadRequest"),
        }
    }

    /// The flag that sets the bound (metric label and docs).
    pub fn limit(&self) -> &'static str {
        match self {
            LimitError::HeaderTooLarge { .. } => "max-header-bytes",
            LimitError::TooManyHeaders { .. } => "max-request-headers",
            LimitError::HeadersTooLarge { .. } => "max-request-header-bytes",
            LimitError::PendingHeadersExhausted { .. } => "max-pending-header-bytes",
            LimitError::BodyTimeout(_) => "request-body-timeout",
        }
    }
}

/// Bytes a header takes as decoded: name, `value` and `raw_value` (Envoy fills one of the two).
fn size(h: &HeaderValue) -> usize {
    h.key.len() + h.value.len() + h.raw_value.len()
}

/// The header bytes of a request, or the first per-request bound it breaks.
pub fn header_bytes(headers: &[HeaderValue], limits: &RequestLimits) -> Result<usize, LimitError> {
    if headers.len() > limits.max_request_headers {
        return Err(LimitError::TooManyHeaders { count: headers.len(), max: limits.max_request_headers });
    }
    let mut total = 0usize;
    for h in headers {
        let bytes = size(h);
        if bytes > limits.max_header_bytes {
            // The name comes from the client: quoted and cut short.
            let name: String = h.key.chars().take(40).collect();
            return Err(LimitError::HeaderTooLarge { name: format!("{name:?}"), bytes, max: limits.max_header_bytes });
        }
        total = total.saturating_add(bytes);
    }
    if total > limits.max_request_header_bytes {
        return Err(LimitError::HeadersTooLarge { bytes: total, max: limits.max_request_header_bytes });
    }
    Ok(total)
}

/// Header bytes held by every stream of a picker that has not been routed yet, bounded.
#[derive(Debug)]
pub struct HeaderBudget {
    held: AtomicUsize,
    max: usize,
    /// `switchyard_picker_pending_header_bytes`, kept in step with `held`.
    gauge: Gauge,
}

impl HeaderBudget {
    pub fn new(max: usize, gauge: Gauge) -> Arc<Self> {
        Arc::new(HeaderBudget { held: AtomicUsize::new(0), max, gauge })
    }

    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Holds `bytes` until the guard drops, unless that would take the total past the maximum.
    pub fn try_hold(self: &Arc<Self>, bytes: usize) -> Result<HeldHeaders, LimitError> {
        let fits = |held: usize| held.checked_add(bytes).filter(|&n| n <= self.max);
        match self.held.fetch_update(Ordering::Relaxed, Ordering::Relaxed, fits) {
            Ok(_) => {
                self.gauge.inc_by(gauge_value(bytes));
                Ok(HeldHeaders { budget: self.clone(), bytes })
            }
            Err(held) => Err(LimitError::PendingHeadersExhausted { bytes, held, max: self.max }),
        }
    }
}

fn gauge_value(bytes: usize) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

/// A stream's share of the [`HeaderBudget`], given back when the stream is routed or ends.
#[derive(Debug)]
pub struct HeldHeaders {
    budget: Arc<HeaderBudget>,
    bytes: usize,
}

impl Drop for HeldHeaders {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.bytes, Ordering::Relaxed);
        self.budget.gauge.dec_by(gauge_value(self.bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(key: &str, raw: usize) -> HeaderValue {
        HeaderValue { key: key.into(), raw_value: vec![b'x'; raw], ..Default::default() }
    }

    fn small() -> RequestLimits {
        RequestLimits {
            max_header_bytes: 100,
            max_request_header_bytes: 250,
            max_request_headers: 4,
            ..RequestLimits::default()
        }
    }

    #[test]
    fn every_per_request_bound_is_checked() {
        let l = small();
        assert_eq!(header_bytes(&[header("a", 10), header("bb", 20)], &l), Ok(33));
        assert_eq!(header_bytes(&[header("a", 99)], &l), Ok(100), "the bound itself is allowed");
        let too_long = header_bytes(&[header("cookie", 95)], &l).unwrap_err();
        assert_eq!(too_long, LimitError::HeaderTooLarge { name: "\"cookie\"".into(), bytes: 101, max: 100 });
        assert_eq!(too_long.status(), (431, "BadRequest"));
        let many = vec![header("a", 1); 5];
        assert_eq!(header_bytes(&many, &l), Err(LimitError::TooManyHeaders { count: 5, max: 4 }));
        let big = vec![header("a", 90); 3];
        assert_eq!(header_bytes(&big, &l), Err(LimitError::HeadersTooLarge { bytes: 273, max: 250 }));
        // A value in `value` counts as much as one in `raw_value`.
        let v = HeaderValue { key: "k".into(), value: "x".repeat(200), ..Default::default() };
        assert!(matches!(header_bytes(&[v], &l), Err(LimitError::HeaderTooLarge { .. })));
    }

    #[test]
    fn a_huge_header_name_is_cut_in_the_message() {
        let name = "n".repeat(1 << 20);
        let e = header_bytes(&[HeaderValue { key: name, ..Default::default() }], &small()).unwrap_err();
        assert!(e.to_string().len() < 120, "{e}");
    }

    #[test]
    fn budget_refuses_past_the_total_and_releases_on_drop() {
        let gauge = Gauge::default();
        let budget = HeaderBudget::new(100, gauge.clone());
        let a = budget.try_hold(60).expect("fits");
        let refused = budget.try_hold(41).unwrap_err();
        assert_eq!(refused, LimitError::PendingHeadersExhausted { bytes: 41, held: 60, max: 100 });
        assert_eq!(refused.status(), (429, "ResourceExhausted"));
        let b = budget.try_hold(40).expect("exactly the total fits");
        assert_eq!((budget.held(), gauge.get()), (100, 100));
        drop(a);
        assert_eq!((budget.held(), gauge.get()), (40, 40));
        drop(b);
        assert_eq!((budget.held(), gauge.get()), (0, 0));
        assert!(budget.try_hold(usize::MAX).is_err(), "no overflow");
    }
}
