//! Label and field selectors as the API server parses them from `labelSelector` and
//! `fieldSelector`, and matching them against a stored object.
//!
//! Label selectors support equality (`k=v`, `k==v`, `k!=v`), sets (`k in (a,b)`, `k notin (a,b)`)
//! and existence (`k`, `!k`), comma meaning AND. Field selectors support `metadata.name` and
//! `metadata.namespace` with `=`, `==` and `!=`: the fields every resource has (kube's watcher
//! selects a single object by `metadata.name`). Not supported: the `>`/`<` label operators and
//! per-resource fields such as `spec.nodeName`; both are rejected as a bad request, so a test that
//! relies on them fails loudly instead of silently matching everything.

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum SelectorError {
    #[error("unable to parse requirement: {0:?}")]
    Requirement(String),
    #[error("field label not supported: {0}")]
    Field(String),
}

/// One label requirement; a selector is a list of them, all of which must hold.
#[derive(Debug, Clone, PartialEq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed `labelSelector`; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector(Vec<Requirement>);

/// A parsed `fieldSelector`: `(field path, wanted value, equal)` terms.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSelector(Vec<(&'static str, String, bool)>);

// === impl LabelSelector ===

impl LabelSelector {
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for term in split_top_level(text) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            requirements.push(parse_requirement(term)?);
        }
        Ok(LabelSelector(requirements))
    }

    pub fn matches(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels");
        let label = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        self.0.iter().all(|req| match req {
            Requirement::Equals(k, v) => label(k) == Some(v),
            // As in the API server: a missing label satisfies `!=` and `notin`.
            Requirement::NotEquals(k, v) => label(k) != Some(v),
            Requirement::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::NotIn(k, vs) => label(k).is_none_or(|l| vs.iter().all(|v| v != l)),
            Requirement::Exists(k) => label(k).is_some(),
            Requirement::NotExists(k) => label(k).is_none(),
        })
    }
}

/// Splits on commas outside parentheses, so `a in (x,y),b` is two terms.
fn split_top_level(text: &str) -> Vec<&str> {
    let (mut terms, mut depth, mut start) = (Vec::new(), 0usize, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&text[start..]);
    terms
}

fn parse_requirement(term: &str) -> Result<Requirement, SelectorError> {
    let bad = || SelectorError::Requirement(term.to_string());
    if let Some(open) = term.find('(') {
        let values = term[open + 1..].strip_suffix(')').ok_or_else(bad)?;
        let values: Vec<String> = values.split(',').map(|v| v.trim().to_string()).collect();
        if values.iter().any(|v| !valid_value(v)) {
            return Err(bad());
        }
        let mut head = term[..open].split_whitespace();
        let (key, op) = (head.next().ok_or_else(bad)?, head.next().ok_or_else(bad)?);
        if head.next().is_some() || !valid_key(key) {
            return Err(bad());
        }
        return match op {
            "in" => Ok(Requirement::In(key.to_string(), values)),
            "notin" => Ok(Requirement::NotIn(key.to_string(), values)),
            _ => Err(bad()),
        };
    }
    let binary = [("!=", false), ("==", true), ("=", true)];
    for (op, equal) in binary {
        if let Some((key, value)) = term.split_once(op) {
            let (key, value) = (key.trim(), value.trim());
            if !valid_key(key) || !valid_value(value) {
                return Err(bad());
            }
            let (key, value) = (key.to_string(), value.to_string());
            return Ok(if equal { Requirement::Equals(key, value) } else { Requirement::NotEquals(key, value) });
        }
    }
    match term.strip_prefix('!') {
        Some(key) if valid_key(key.trim()) => Ok(Requirement::NotExists(key.trim().to_string())),
        None if valid_key(term) => Ok(Requirement::Exists(term.to_string())),
        _ => Err(bad()),
    }
}

/// Label keys: an optional DNS prefix and `/`, then a name of alphanumerics, `-`, `_` and `.`.
fn valid_key(key: &str) -> bool {
    let name = key.rsplit_once('/').map_or(key, |(_, name)| name);
    !name.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

/// Label values may be empty (`k=` selects objects whose label `k` is the empty string).
fn valid_value(value: &str) -> bool {
    value.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

// === impl FieldSelector ===

impl FieldSelector {
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let mut terms = Vec::new();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, value, equal) = if let Some((f, v)) = term.split_once("!=") {
                (f, v, false)
            } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (f, v, true)
            } else {
                return Err(SelectorError::Requirement(term.to_string()));
            };
            let path = match field.trim() {
                "metadata.name" => "/metadata/name",
                "metadata.namespace" => "/metadata/namespace",
                other => return Err(SelectorError::Field(other.to_string())),
            };
            terms.push((path, value.trim().to_string(), equal));
        }
        Ok(FieldSelector(terms))
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(path, wanted, equal)| {
            let actual = object.pointer(path).and_then(Value::as_str).unwrap_or("");
            (actual == wanted) == *equal
        })
    }
}

/// Both selectors of one request.
#[derive(Debug, Clone, Default)]
pub struct Selectors {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Selectors {
    pub fn matches(&self, object: &Value) -> bool {
        self.labels.matches(object) && self.fields.matches(object)
    }
}
