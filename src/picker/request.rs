//! OpenAI request bodies: API type from the path, validation, the model, the bytes the prefix
//! index hashes, and a model rewrite that leaves every other byte of the body as it was.
//!
//! The body is read as an ordered list of top-level keys with raw values: nothing below the top
//! level is allocated or re-serialized (upstream re-marshals every body with sorted keys).

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use serde_json::value::RawValue;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKind {
    Completions,
    ChatCompletions,
    Embeddings,
    Responses,
    Conversations,
}

impl ApiKind {
    /// Chosen by path suffix, as upstream (query string ignored); unknown → completions.
    pub fn from_path(path: &str) -> ApiKind {
        let path = path.split(['?', '#']).next().unwrap_or(path).trim_end_matches('/');
        if path.ends_with("/conversations") {
            ApiKind::Conversations
        } else if path.ends_with("/responses") {
            ApiKind::Responses
        } else if path.ends_with("/chat/completions") {
            ApiKind::ChatCompletions
        } else if path.ends_with("/embeddings") {
            ApiKind::Embeddings
        } else {
            ApiKind::Completions
        }
    }
}

/// A parsed request body.
#[derive(Debug)]
pub struct ParsedBody<'a> {
    fields: Vec<(Cow<'a, str>, &'a RawValue)>,
    pub model: String,
    pub stream: bool,
    pub cache_salt: String,
    /// What the prefix index hashes: the raw messages / input / items, or the prompt text.
    pub prefix_input: Cow<'a, [u8]>,
}

struct Ordered<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Ordered<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ordered<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(k) = map.next_key::<Cow<'de, str>>()? {
                    let v: &'de RawValue = map.next_value()?;
                    out.push((k, v));
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Deserialize)]
struct ChatMessage<'a> {
    /// Only checked to be a string.
    #[serde(borrow, rename = "role")]
    _role: Cow<'a, str>,
}

impl<'a> ParsedBody<'a> {
    pub fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// The body with `model` replaced; other top-level values are copied byte for byte.
    pub fn with_model(&self, model: &str) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(self.fields.iter().map(|(k, v)| k.len() + v.get().len() + 4).sum::<usize>() + 16);
        out.push(b'{');
        for (i, (k, v)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            // Keys and strings re-encoded by serde_json are always valid JSON.
            out.extend_from_slice(serde_json::to_string(k.as_ref()).unwrap_or_default().as_bytes());
            out.push(b':');
            if k == "model" {
                out.extend_from_slice(serde_json::to_string(model).unwrap_or_default().as_bytes());
            } else {
                out.extend_from_slice(v.get().as_bytes());
            }
        }
        out.push(b'}');
        out
    }
}

fn is_nonempty_array(v: &RawValue) -> Result<Vec<&RawValue>, String> {
    let items: Vec<&RawValue> = serde_json::from_str(v.get()).map_err(|_| "must be an array".to_string())?;
    if items.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(items)
}

/// Parses and validates; the error text is the 400 message.
pub fn parse_body(body: &[u8], api: ApiKind) -> Result<ParsedBody<'_>, String> {
    let Ordered(fields) = serde_json::from_slice(body).map_err(|e| format!("error unmarshaling request body: {e}"))?;
    let get = |key: &str| fields.iter().find(|(k, _)| k == key).map(|(_, v)| *v);
    let string = |key: &str| -> Option<String> { get(key).and_then(|v| serde_json::from_str::<String>(v.get()).ok()) };
    let required = |key: &str| get(key).filter(|v| v.get() != "null").ok_or_else(|| format!("{key} is required"));

    let prefix_input: Cow<'_, [u8]> = match api {
        ApiKind::ChatCompletions => {
            let messages = required("messages")?;
            // One pass over the messages for a valid body; the item-by-item checks below only
            // to name what is wrong with an invalid one.
            let valid = serde_json::from_str::<Vec<ChatMessage<'_>>>(messages.get()).is_ok_and(|m| !m.is_empty());
            if !valid {
                let items = is_nonempty_array(messages).map_err(|e| format!("messages {e}"))?;
                for (i, m) in items.iter().enumerate() {
                    serde_json::from_str::<ChatMessage<'_>>(m.get())
                        .map_err(|_| format!("messages[{i}] must be an object with a string role"))?;
                }
                return Err("messages must be a list of objects with a string role".into());
            }
            Cow::Borrowed(messages.get().as_bytes())
        }
        ApiKind::Completions => {
            let prompt = required("prompt")?;
            match serde_json::from_str::<serde_json::Value>(prompt.get()) {
                Ok(serde_json::Value::String(s)) if !s.is_empty() => Cow::Owned(s.into_bytes()),
                Ok(serde_json::Value::Array(items)) if !items.is_empty() => {
                    if items.iter().all(|v| v.is_string()) {
                        let parts: Vec<&str> = items.iter().filter_map(|v| v.as_str()).collect();
                        Cow::Owned(parts.join(" ").into_bytes())
                    } else if items.iter().all(|v| v.is_u64())
                        || items.iter().all(|v| v.as_array().is_some_and(|a| a.iter().all(|t| t.is_u64())))
                    {
                        // Token ids: nothing to hash by characters.
                        Cow::Borrowed(&[][..])
                    } else {
                        return Err("prompt must be a string, a list of strings or token ids".into());
                    }
                }
                _ => return Err("prompt must be a non-empty string or list".into()),
            }
        }
        ApiKind::Embeddings => {
            let input = required("input")?;
            if matches!(input.get(), "\"\"" | "[]") {
                return Err("input must not be empty".into());
            }
            Cow::Borrowed(input.get().as_bytes())
        }
        ApiKind::Responses => {
            let input = required("input")?;
            let mut bytes = Vec::with_capacity(input.get().len() + 64);
            for key in ["instructions", "tools"] {
                if let Some(v) = get(key) {
                    bytes.extend_from_slice(v.get().as_bytes());
                }
            }
            bytes.extend_from_slice(input.get().as_bytes());
            Cow::Owned(bytes)
        }
        ApiKind::Conversations => {
            let items = required("items")?;
            is_nonempty_array(items).map_err(|e| format!("items {e}"))?;
            Cow::Borrowed(items.get().as_bytes())
        }
    };
    let model = match get("model") {
        None => return Err("model not found in request body".into()),
        Some(v) => serde_json::from_str::<String>(v.get()).map_err(|_| "model must be a string".to_string())?,
    };
    if model.is_empty() {
        return Err("model not found in request body".into());
    }
    let stream = get("stream").is_some_and(|v| v.get() == "true");
    let cache_salt = string("cache_salt").unwrap_or_default();
    Ok(ParsedBody { fields, model, stream, cache_salt, prefix_input })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_by_path_suffix() {
        assert_eq!(ApiKind::from_path("/v1/chat/completions?x=1"), ApiKind::ChatCompletions);
        assert_eq!(ApiKind::from_path("/v1/completions"), ApiKind::Completions);
        assert_eq!(ApiKind::from_path("/openai/v1/embeddings"), ApiKind::Embeddings);
        assert_eq!(ApiKind::from_path("/v1/responses"), ApiKind::Responses);
        assert_eq!(ApiKind::from_path("/v1/conversations"), ApiKind::Conversations);
        assert_eq!(ApiKind::from_path("/whatever"), ApiKind::Completions);
    }

    #[test]
    fn chat_body_is_validated_and_kept_byte_exact() {
        let body = br#"{"zeta": 1.50, "model":"m","messages":[{"role":"user","content":"hi \u00e9"}],"stream":true,"cache_salt":"s"}"#;
        let p = parse_body(body, ApiKind::ChatCompletions).expect("valid");
        assert_eq!((p.model.as_str(), p.stream, p.cache_salt.as_str()), ("m", true, "s"));
        assert_eq!(&*p.prefix_input, br#"[{"role":"user","content":"hi \u00e9"}]"#);
        let rewritten = String::from_utf8(p.with_model("target")).expect("utf8");
        assert_eq!(
            rewritten,
            r#"{"zeta":1.50,"model":"target","messages":[{"role":"user","content":"hi \u00e9"}],"stream":true,"cache_salt":"s"}"#,
            "order, number formatting and escapes are preserved"
        );
    }

    #[test]
    fn bad_bodies_are_rejected_with_a_reason() {
        let cases: [(&[u8], ApiKind, &str); 9] = [
            (b"not json", ApiKind::Completions, "error unmarshaling"),
            (b"[1,2]", ApiKind::Completions, "error unmarshaling"),
            (br#"{"prompt":"x"}"#, ApiKind::Completions, "model not found"),
            (br#"{"model":7,"prompt":"x"}"#, ApiKind::Completions, "model must be a string"),
            (br#"{"model":"m","messages":[]}"#, ApiKind::ChatCompletions, "messages must not be empty"),
            (br#"{"model":"m","messages":[{"role":1}]}"#, ApiKind::ChatCompletions, "string role"),
            (br#"{"model":"m","prompt":""}"#, ApiKind::Completions, "non-empty"),
            (
                br#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#,
                ApiKind::Completions,
                "prompt is required",
            ),
            (br#"{"model":"m","input":[]}"#, ApiKind::Embeddings, "must not be empty"),
        ];
        for (body, api, want) in cases {
            let err = parse_body(body, api).expect_err(std::str::from_utf8(body).unwrap_or("?"));
            assert!(err.contains(want), "{err} / {want}");
        }
    }

    #[test]
    fn prompt_shapes() {
        let p = parse_body(br#"{"model":"m","prompt":["a","b"]}"#, ApiKind::Completions).expect("ok");
        assert_eq!(&*p.prefix_input, b"a b");
        let p = parse_body(br#"{"model":"m","prompt":[1,2,3]}"#, ApiKind::Completions).expect("ok");
        assert!(p.prefix_input.is_empty());
        assert!(parse_body(br#"{"model":"m","prompt":[1,"a"]}"#, ApiKind::Completions).is_err());
        let p = parse_body(br#"{"model":"m","input":"x","instructions":"be brief"}"#, ApiKind::Responses).expect("ok");
        assert_eq!(&*p.prefix_input, br#""be brief""x""#);
        assert!(parse_body(br#"{"model":"m","items":[{"a":1}]}"#, ApiKind::Conversations).is_ok());
    }
}
