//! A selective scanner for the Prometheus text exposition format (0.0.4) and OpenMetrics text.
//!
//! It reads only the sample lines whose metric name is wanted and skips every other line after
//! looking at its name, which is where its speed comes from: a vLLM page is mostly histogram
//! buckets that no engine mapping needs. Skipped lines are never validated, so garbage in a family
//! nobody asked for cannot fail a scrape.
//!
//! Accepted: `# HELP`/`# TYPE` in any order or missing (untyped samples are read like any other),
//! `_created`/`_total` samples, histograms and summaries (their samples are plain lines), scientific
//! notation, integers, negative values, `NaN`, `±Inf`, empty and escaped label values, a trailing
//! comma in label sets, timestamps (integer milliseconds or OpenMetrics float seconds), exemplars
//! (`# {...}` after the value), UTF-8 quoted names (`{"name", l="v"}`), `# EOF`, CRLF line ends.

use std::borrow::Cow;

use thiserror::Error;

/// One sample line of a wanted family.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<'a> {
    pub name: &'a str,
    pub labels: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    pub value: f64,
    /// As written: milliseconds (text 0.0.4) or seconds (OpenMetrics). Used only for ordering.
    pub timestamp: Option<f64>,
}

impl Sample<'_> {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_ref())
    }
}

/// Which sample names to read. A name `n` also selects `n_total` (counters are often declared
/// without the suffix in OpenMetrics).
#[derive(Debug, Clone)]
pub enum Wanted<'w> {
    All,
    Names(&'w [String]),
}

/// A malformed line of a wanted family.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("line {line}: {reason}")]
pub struct LineError {
    pub line: usize,
    pub reason: String,
}

/// What the scan saw besides samples.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScanReport {
    /// For `Wanted::Names`: which wanted names were declared by `# TYPE` or `# HELP`.
    pub declared: Vec<bool>,
    /// Malformed lines among the wanted ones (the sample is skipped, the scan goes on).
    pub errors: Vec<LineError>,
    /// Lines looked at.
    pub lines: usize,
}

/// At most this many line errors are kept; the rest are only counted in `lines`.
const MAX_LINE_ERRORS: usize = 16;

/// Scans `page`, calling `on_sample(index_in_wanted, sample)` for each wanted sample (index 0 for
/// `Wanted::All`).
pub fn scan<'a>(page: &'a str, wanted: Wanted<'_>, mut on_sample: impl FnMut(usize, Sample<'a>)) -> ScanReport {
    let mut report = ScanReport {
        declared: match wanted {
            Wanted::All => Vec::new(),
            Wanted::Names(names) => vec![false; names.len()],
        },
        ..ScanReport::default()
    };
    let prefilter = match wanted {
        Wanted::All => None,
        Wanted::Names(names) => Some(Prefilter::new(names)),
    };
    for (lineno, raw) in lines(page).enumerate() {
        report.lines += 1;
        // Most lines are samples of families nobody asked for: a line starting with a name is
        // rejected on its first bytes before anything else is looked at (what `may_match` would
        // say of it once trimmed: a name has no blanks and no `\r`).
        let starts_with_name = raw.as_bytes().first().is_some_and(|&b| is_name_start(b));
        if let Some(pf) = &prefilter
            && starts_with_name
            && !pf.may_match(raw)
        {
            continue;
        }
        let line = raw.strip_suffix('\r').unwrap_or(raw).trim_start_matches([' ', '\t']);
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            if let (Wanted::Names(names), Some(pf)) = (&wanted, &prefilter)
                && let Some(family) = comment.strip_prefix(" TYPE ")
                && pf.may_match(family.trim_start())
            {
                note_declaration(family, names, &mut report.declared);
            }
            continue;
        }
        // An indented sample line meets the prefilter here, once trimmed.
        if let Some(pf) = &prefilter
            && !starts_with_name
            && !pf.may_match(line)
        {
            continue;
        }
        let (name, rest, in_braces) = match split_name(line) {
            Ok(parts) => parts,
            Err(reason) => {
                // A line whose name cannot be read may belong to anyone; report it only when
                // reading everything.
                if matches!(wanted, Wanted::All) {
                    push_error(&mut report, lineno, reason);
                }
                continue;
            }
        };
        let index = match wanted {
            Wanted::All => 0,
            Wanted::Names(names) => match match_name(name, names) {
                Some(i) => i,
                None => continue,
            },
        };
        match parse_rest(name, rest, in_braces) {
            Ok(sample) => on_sample(index, sample),
            Err(reason) => push_error(&mut report, lineno, reason),
        }
    }
    report
}

/// Splits on `\n` with memchr (the hot loop of a scan is finding line ends).
fn lines(page: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(page);
    std::iter::from_fn(move || {
        let s = rest?;
        match memchr::memchr(b'\n', s.as_bytes()) {
            Some(i) => {
                rest = Some(&s[i + 1..]);
                Some(&s[..i])
            }
            None => {
                rest = None;
                Some(s)
            }
        }
    })
}

/// Rejects lines by comparing their first 8 bytes with those of each wanted name (masked for
/// names shorter than 8 bytes). A pass only means "maybe"; the name is then read in full.
struct Prefilter {
    keys: Vec<(u64, u64)>,
    /// A wanted name starts with `{` or a quote (UTF-8 names): no prefiltering possible.
    disabled: bool,
}

impl Prefilter {
    fn new(names: &[String]) -> Self {
        let keys = names
            .iter()
            .map(|n| {
                let len = n.len().min(8);
                let mask = if len == 8 { u64::MAX } else { (1u64 << (8 * len)) - 1 };
                (prefix_key(n.as_bytes()) & mask, mask)
            })
            .collect();
        let disabled = names.iter().any(|n| n.is_empty() || !is_name_start(n.as_bytes()[0]));
        Prefilter { keys, disabled }
    }

    fn may_match(&self, line: &str) -> bool {
        if self.disabled || line.starts_with('{') {
            return true;
        }
        let key = prefix_key(line.as_bytes());
        self.keys.iter().any(|(k, mask)| key & mask == *k)
    }
}

fn prefix_key(b: &[u8]) -> u64 {
    if let Some(first) = b.first_chunk::<8>() {
        return u64::from_le_bytes(*first);
    }
    let mut k = [0u8; 8];
    let n = b.len().min(8);
    k[..n].copy_from_slice(&b[..n]);
    u64::from_le_bytes(k)
}

/// Reads every sample of a page; used by tests, `metrics parse --all` and as a reference.
pub fn parse_all(page: &str) -> (Vec<Sample<'_>>, ScanReport) {
    let mut out = Vec::new();
    let report = scan(page, Wanted::All, |_, s| out.push(s));
    (out, report)
}

fn push_error(report: &mut ScanReport, lineno: usize, reason: String) {
    if report.errors.len() < MAX_LINE_ERRORS {
        report.errors.push(LineError { line: lineno + 1, reason });
    }
}

fn match_name(name: &str, names: &[String]) -> Option<usize> {
    names.iter().position(|w| {
        name.len() >= w.len()
            && name.as_bytes()[..w.len()] == *w.as_bytes()
            && (name.len() == w.len() || &name[w.len()..] == "_total")
    })
}

/// Notes which wanted families a `# TYPE` line declares (`rest` starts at the family name).
fn note_declaration(rest: &str, names: &[String], declared: &mut [bool]) {
    let family = rest.trim_start().split([' ', '\t']).next().unwrap_or_default();
    let family = family.trim_matches('"');
    for (i, w) in names.iter().enumerate() {
        if w == family || w.strip_suffix("_total") == Some(family) {
            declared[i] = true;
        }
    }
}

fn is_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b == b':'
}

const NAME_CHARS: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric() || b == b'_' || b == b':';
        i += 1;
    }
    t
};

fn is_name_char(b: u8) -> bool {
    NAME_CHARS[b as usize]
}

/// Splits a sample line into its metric name and the rest (starting at `{` or whitespace).
/// For a UTF-8 quoted name (`{"name", ...}`) the rest starts after the name, inside the braces,
/// and the flag is set.
fn split_name(line: &str) -> Result<(&str, &str, bool), String> {
    let bytes = line.as_bytes();
    if bytes[0] == b'{' {
        let inner = line[1..].trim_start();
        let Some(quoted) = inner.strip_prefix('"') else {
            return Err("expected a metric name".into());
        };
        let end = quoted.find('"').ok_or_else(|| "unterminated quoted metric name".to_string())?;
        let name = &quoted[..end];
        if name.contains('\\') {
            return Err("escaped characters in a quoted metric name are not supported".into());
        }
        return Ok((name, &quoted[end + 1..], true));
    }
    if !is_name_start(bytes[0]) {
        return Err(format!("invalid character {:?} at start of metric name", char::from(bytes[0])));
    }
    let end = bytes.iter().position(|&b| !is_name_char(b)).unwrap_or(bytes.len());
    Ok((&line[..end], &line[end..], false))
}

fn parse_rest<'a>(name: &'a str, rest: &'a str, in_braces: bool) -> Result<Sample<'a>, String> {
    let mut labels = Vec::new();
    let mut rest = rest;
    if in_braces {
        // `{"name", l="v"}` or `{"name"}`: continue the label list after the name.
        let r = rest.trim_start();
        rest = parse_labels(r.strip_prefix(',').unwrap_or(r), &mut labels)?;
    } else if let Some(r) = rest.trim_start_matches([' ', '\t']).strip_prefix('{') {
        rest = parse_labels(r, &mut labels)?;
    }
    let mut fields = rest.split_ascii_whitespace();
    let value_text = fields.next().ok_or_else(|| format!("{name}: missing value"))?;
    let value = parse_value(value_text).ok_or_else(|| format!("{name}: invalid value {value_text:?}"))?;
    let timestamp = match fields.next() {
        None | Some("#") => None,
        Some(ts) => Some(parse_value(ts).ok_or_else(|| format!("{name}: invalid timestamp {ts:?}"))?),
    };
    Ok(Sample { name, labels, value, timestamp })
}

/// Parses `l1="v1",l2="v2"}` (the opening brace already consumed); returns what follows `}`.
fn parse_labels<'a>(mut s: &'a str, out: &mut Vec<(Cow<'a, str>, Cow<'a, str>)>) -> Result<&'a str, String> {
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Ok(after);
        }
        let (key, after_key) = if let Some(q) = s.strip_prefix('"') {
            let (k, r) = read_quoted(q)?;
            (k, r)
        } else {
            let end = s.bytes().position(|b| !is_name_char(b)).unwrap_or(s.len());
            if end == 0 {
                return Err(format!("invalid label name at {:?}", head(s)));
            }
            (Cow::Borrowed(&s[..end]), &s[end..])
        };
        let after_eq =
            after_key.trim_start().strip_prefix('=').ok_or_else(|| format!("expected '=' after label {key:?}"))?;
        let after_quote = after_eq
            .trim_start()
            .strip_prefix('"')
            .ok_or_else(|| format!("expected '\"' to open the value of label {key:?}"))?;
        let (value, r) = read_quoted(after_quote)?;
        out.push((key, value));
        s = r.trim_start();
        if let Some(r) = s.strip_prefix(',') {
            s = r;
        } else if !s.starts_with('}') {
            return Err(format!("expected ',' or '}}' after label value, found {:?}", head(s)));
        }
    }
}

/// Reads a quoted string body up to the closing quote (the opening one already consumed),
/// unescaping `\\`, `\"` and `\n`.
fn read_quoted(s: &str) -> Result<(Cow<'_, str>, &str), String> {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => return Ok((Cow::Borrowed(&s[..i]), &s[i + 1..])),
            b'\\' => return read_quoted_escaped(s, i),
            _ => i += 1,
        }
    }
    Err("unterminated label value".into())
}

fn read_quoted_escaped(s: &str, first_escape: usize) -> Result<(Cow<'_, str>, &str), String> {
    let mut out = String::with_capacity(s.len().min(256));
    out.push_str(&s[..first_escape]);
    let mut chars = s[first_escape..].char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((Cow::Owned(out), &s[first_escape + i + 1..])),
            '\\' => match chars.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, '\\')) => out.push('\\'),
                Some((_, '"')) => out.push('"'),
                Some((_, other)) => {
                    out.push('\\');
                    out.push(other);
                }
                None => break,
            },
            c => out.push(c),
        }
    }
    Err("unterminated label value".into())
}

fn head(s: &str) -> &str {
    let end = s.char_indices().nth(16).map(|(i, _)| i).unwrap_or(s.len());
    &s[..end]
}

/// Parses a sample value or timestamp as Prometheus writes them.
pub fn parse_value(text: &str) -> Option<f64> {
    match text {
        "NaN" | "nan" => Some(f64::NAN),
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        _ => {
            // Rust accepts "infinity" and "nan" spellings Prometheus never writes; reject them so
            // garbage is not silently read as a number.
            let last = text.as_bytes().last()?;
            if !(last.is_ascii_digit() || *last == b'.') {
                return None;
            }
            text.parse::<f64>().ok()
        }
    }
}

#[cfg(test)]
#[path = "exposition_tests.rs"]
mod tests;
