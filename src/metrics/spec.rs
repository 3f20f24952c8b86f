//! Metric specs: the PromQL-like selectors that name which series feed an engine-neutral metric.
//!
//! Syntax: `name{label=value, label2="value 2"}`, quotes optional for values without spaces,
//! commas or braces; whitespace tolerated; only `=` matchers. `a or b` tries `a` first and falls
//! back to `b` when `a` has no series (how the vLLM mapping reads both the V1 and the V0 name of
//! the KV-cache gauge). An empty spec disables the metric.

use std::fmt;

use thiserror::Error;

use super::exposition::Sample;

/// One selector: a metric name plus label equalities the series must contain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    pub name: String,
    pub labels: Vec<(String, String)>,
}

/// A parsed spec: selectors tried in order, the first with matching series wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricSpec {
    pub alternatives: Vec<Selector>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid metric spec {spec:?}: {reason}")]
pub struct SpecError {
    pub spec: String,
    pub reason: String,
}

impl MetricSpec {
    /// Parses a spec; `Ok(None)` for an empty (disabled) spec.
    pub fn parse(spec: &str) -> Result<Option<MetricSpec>, SpecError> {
        let err = |reason: String| SpecError { spec: spec.to_string(), reason };
        if spec.trim().is_empty() {
            return Ok(None);
        }
        let mut alternatives = Vec::new();
        for part in split_or(spec).map_err(err)? {
            alternatives.push(parse_selector(part).map_err(err)?);
        }
        Ok(Some(MetricSpec { alternatives }))
    }

    /// Parses a spec that must not be empty.
    pub fn parse_required(spec: &str) -> Result<MetricSpec, SpecError> {
        Self::parse(spec)?.ok_or_else(|| SpecError { spec: spec.to_string(), reason: "empty spec".into() })
    }

    /// Names of the metrics this spec reads.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.alternatives.iter().map(|s| s.name.as_str())
    }
}

impl Selector {
    /// Whether a sample is selected: same name (or `name_total`) and its labels contain the
    /// selector's.
    pub fn matches(&self, sample: &Sample<'_>) -> bool {
        let name_ok = sample.name == self.name || sample.name.strip_suffix("_total") == Some(self.name.as_str());
        name_ok && self.labels.iter().all(|(k, v)| sample.label(k) == Some(v.as_str()))
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if !self.labels.is_empty() {
            f.write_str("{")?;
            for (i, (k, v)) in self.labels.iter().enumerate() {
                if i > 0 {
                    f.write_str(",")?;
                }
                // The parser reads quoted values raw, up to the next quote (values never hold
                // one): write them raw too. Debug escaping (`\\` for `\`) would not read back.
                if is_bare_value(v) {
                    // `k= ~v` is the value `~v`; `k=~v` would be a regex matcher.
                    let gap = if v.starts_with('~') { " " } else { "" };
                    write!(f, "{k}={gap}{v}")?;
                } else {
                    write!(f, "{k}=\"{v}\"")?;
                }
            }
            f.write_str("}")?;
        }
        Ok(())
    }
}

impl fmt::Display for MetricSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.alternatives.iter().enumerate() {
            if i > 0 {
                f.write_str(" or ")?;
            }
            write!(f, "{s}")?;
        }
        Ok(())
    }
}

/// A value that reads back the same without quotes. A value ending in an odd run of backslashes
/// can only have been read unquoted, and stays bare: quoted, the parser would take the final
/// `\"` for an escaped quote.
fn is_bare_value(v: &str) -> bool {
    !v.is_empty()
        && v.trim() == v
        && !v.bytes().any(|b| b.is_ascii_whitespace() || matches!(b, b',' | b'"' | b'{' | b'}'))
}

/// Splits on the keyword `or` outside braces and quotes.
fn split_or(spec: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let (mut depth, mut in_quote, mut start) = (0i32, false, 0usize);
    let bytes = spec.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'"' if depth > 0 => in_quote = !in_quote,
            b'\\' if in_quote => i += 1,
            b'{' if !in_quote => depth += 1,
            b'}' if !in_quote => {
                depth -= 1;
                if depth < 0 {
                    return Err("unbalanced '}'".into());
                }
            }
            b'o' if depth == 0
                && spec[i..].starts_with("or")
                && i > 0
                && bytes[i - 1].is_ascii_whitespace()
                && bytes.get(i + 2).is_some_and(|c| c.is_ascii_whitespace()) =>
            {
                parts.push(&spec[start..i]);
                start = i + 2;
                i += 2;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    if in_quote {
        return Err("unterminated quoted value".into());
    }
    if depth != 0 {
        return Err("unbalanced '{'".into());
    }
    parts.push(&spec[start..]);
    Ok(parts)
}

fn parse_selector(text: &str) -> Result<Selector, String> {
    let text = text.trim();
    let name_end =
        text.bytes().position(|b| !(b.is_ascii_alphanumeric() || b == b'_' || b == b':')).unwrap_or(text.len());
    let name = &text[..name_end];
    if name.is_empty() {
        return Err("empty metric name".into());
    }
    if name.as_bytes()[0].is_ascii_digit() {
        return Err(format!("metric name {name:?} starts with a digit"));
    }
    let rest = text[name_end..].trim_start();
    let mut labels = Vec::new();
    if rest.is_empty() {
        return Ok(Selector { name: name.to_string(), labels });
    }
    let Some(inner) = rest.strip_prefix('{') else {
        return Err(format!("unexpected text {rest:?} after the metric name"));
    };
    let close = find_close(inner).ok_or("unbalanced '{'")?;
    let trailing = inner[close + 1..].trim();
    if !trailing.is_empty() {
        return Err(format!("unexpected text {trailing:?} after '}}'"));
    }
    let mut body = inner[..close].trim();
    while !body.is_empty() {
        let key_end = body.bytes().position(|b| !(b.is_ascii_alphanumeric() || b == b'_')).unwrap_or(body.len());
        let key = &body[..key_end];
        if key.is_empty() {
            return Err(format!("missing label name at {body:?}"));
        }
        let after_key = body[key_end..].trim_start();
        let after_eq = match after_key.as_bytes() {
            [b'=', b'~', ..] | [b'!', ..] => {
                return Err(format!("label {key:?}: only '=' matchers are supported"));
            }
            [b'=', ..] => after_key[1..].trim_start(),
            _ => return Err(format!("label {key:?} has no value (expected '=')")),
        };
        let (value, rest) = if let Some(q) = after_eq.strip_prefix('"') {
            let end = q.find('"').ok_or("unterminated quoted value")?;
            (&q[..end], &q[end + 1..])
        } else {
            let end = after_eq
                .bytes()
                .position(|b| b == b',' || b == b'"' || b == b'}' || b.is_ascii_whitespace())
                .unwrap_or(after_eq.len());
            if end == 0 {
                return Err(format!("label {key:?} has an empty value"));
            }
            (&after_eq[..end], &after_eq[end..])
        };
        if !key.starts_with("__") {
            labels.push((key.to_string(), value.to_string()));
        }
        let rest = rest.trim_start();
        body = match rest.strip_prefix(',') {
            Some(r) => r.trim_start(),
            None if rest.is_empty() => rest,
            None => return Err(format!("expected ',' between matchers, found {rest:?}")),
        };
    }
    Ok(Selector { name: name.to_string(), labels })
}

fn find_close(inner: &str) -> Option<usize> {
    let mut in_quote = false;
    for (i, b) in inner.bytes().enumerate() {
        match b {
            b'"' => in_quote = !in_quote,
            b'}' if !in_quote => return Some(i),
            b'{' if !in_quote => return None,
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(s: &str) -> Selector {
        MetricSpec::parse_required(s).expect("valid").alternatives.remove(0)
    }

    #[test]
    fn plain_and_labelled() {
        assert_eq!(sel("vllm:num_requests_waiting").name, "vllm:num_requests_waiting");
        let s = sel(" nv_trt_llm_request_metrics { request_type = waiting , model=\"a b\" } ");
        assert_eq!(s.name, "nv_trt_llm_request_metrics");
        assert_eq!(s.labels, vec![("request_type".into(), "waiting".into()), ("model".into(), "a b".into())]);
        assert_eq!(sel("m{}").labels, vec![]);
        assert_eq!(sel("m{a=\"1\",}").labels.len(), 1);
    }

    #[test]
    fn empty_is_disabled() {
        assert_eq!(MetricSpec::parse("").expect("ok"), None);
        assert_eq!(MetricSpec::parse("   ").expect("ok"), None);
    }

    #[test]
    fn dunder_labels_are_dropped() {
        assert!(sel("m{__name__=\"m\"}").labels.is_empty());
    }

    #[test]
    fn or_alternatives() {
        let spec = MetricSpec::parse_required("vllm:kv_cache_usage_perc or vllm:gpu_cache_usage_perc").expect("ok");
        assert_eq!(spec.names().collect::<Vec<_>>(), ["vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"]);
        // "or" inside a label value or a name is not a keyword.
        let s = MetricSpec::parse_required("color{x=\"a or b\"}").expect("ok");
        assert_eq!(s.alternatives.len(), 1);
        assert_eq!(s.alternatives[0].labels[0].1, "a or b");
    }

    #[test]
    fn malformed_specs_name_the_problem() {
        for (bad, why) in [
            ("{a=\"b\"}", "empty metric name"),
            ("m{a=\"b\"", "unbalanced"),
            ("m}", "unbalanced"),
            ("m{label}", "no value"),
            ("m{=v}", "missing label name"),
            ("m{l=}", "empty value"),
            ("m{l=\"v\"} extra", "unexpected text"),
            ("m extra", "unexpected text"),
            ("m{l!=\"v\"}", "only '='"),
            ("m{l=~\"v\"}", "only '='"),
            ("m{a=1 b=2}", "expected ','"),
            ("1abc", "starts with a digit"),
            ("a or ", "empty metric name"),
        ] {
            let e = MetricSpec::parse(bad).expect_err(bad);
            assert_eq!(e.spec, bad);
            assert!(e.reason.contains(why), "{bad}: {}", e.reason);
            assert!(e.to_string().contains(&e.reason));
        }
    }

    #[test]
    fn display_round_trips() {
        for s in ["a", "a{b=\"c\"}", "a{b=\"c\",d=\"e f\"} or g"] {
            let spec = MetricSpec::parse_required(s).expect("ok");
            assert_eq!(MetricSpec::parse_required(&spec.to_string()).expect("ok"), spec);
        }
    }

    /// Found by fuzzing (tests/it/fuzz.rs, target `spec`): Display escaped values Debug-style,
    /// so `a\b` printed as `"a\\b"` and read back with two backslashes; and the value `~x`
    /// printed as `k=~x`, which reads as a regex matcher.
    #[test]
    fn test_fuzz_display_round_trips_backslashes_and_odd_values() {
        let cases = [r#"m{a="x\y",b="{}"} or n{c="a or b"}"#, r"m{a=x\}", r#"m{a="",b="é \\"}"#, "m{a=é}", r"m{a= ~\}"];
        for s in cases {
            let spec = MetricSpec::parse_required(s).expect(s);
            let printed = spec.to_string();
            assert_eq!(MetricSpec::parse_required(&printed).expect(&printed), spec, "{s} printed as {printed}");
        }
    }
}
