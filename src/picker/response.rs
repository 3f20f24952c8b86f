//! Response bodies: usage extraction (JSON and SSE) and the model name rewritten back to what the
//! client asked for.

use serde_json::Value;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: Option<u64>,
}

/// Usage from a parsed `usage` object (chat/completions or responses field names; cached tokens
/// from OpenAI's `prompt_tokens_details` or upstream's `prompt_token_details` spelling).
fn usage_from(v: &Value) -> Option<Usage> {
    usage_of(v.get("usage")?)
}

/// Usage from the `usage` object itself.
fn usage_of(u: &Value) -> Option<Usage> {
    if !u.is_object() {
        return None;
    }
    let num = |keys: &[&str]| keys.iter().find_map(|k| u.get(*k).and_then(Value::as_u64));
    let cached = ["prompt_tokens_details", "prompt_token_details", "input_tokens_details"]
        .iter()
        .find_map(|k| u.get(*k).and_then(|d| d.get("cached_tokens")).and_then(Value::as_u64));
    Some(Usage {
        prompt_tokens: num(&["prompt_tokens", "input_tokens"]).unwrap_or(0),
        completion_tokens: num(&["completion_tokens", "output_tokens"]).unwrap_or(0),
        cached_tokens: cached,
    })
}

/// Usage of a complete (non-streaming) JSON body. Only the `usage` object is built; the rest of
/// the body (choices, message text) is validated and skipped without being allocated.
pub fn usage_from_json(body: &[u8]) -> Option<Usage> {
    #[derive(serde::Deserialize)]
    struct Top<'a> {
        #[serde(borrow)]
        usage: Option<&'a serde_json::value::RawValue>,
    }
    // (A struct would also read from an array: only an object is one.)
    let object = body.trim_ascii_start().starts_with(b"{");
    match serde_json::from_slice::<Top<'_>>(body) {
        Ok(top) if object => usage_of(&serde_json::from_str(top.usage?.get()).ok()?),
        // Not an object, invalid, or `usage` twice (the generic reading keeps the last one).
        _ => usage_from(&serde_json::from_slice(body).ok()?),
    }
}

/// Scans SSE `data:` lines; returns the first usage found (`response.completed` events carry it in
/// `response.usage`). Bad JSON and `[DONE]` are skipped.
pub fn usage_from_sse(text: &[u8]) -> Option<Usage> {
    for line in text.split(|b| *b == b'\n') {
        let Some(data) = line.strip_prefix(b"data:") else { continue };
        let data = data.trim_ascii();
        if data == b"[DONE]" || !data.windows(5).any(|w| w == b"usage") {
            continue;
        }
        let Ok(v) = serde_json::from_slice::<Value>(data) else { continue };
        if v.get("type").and_then(Value::as_str) == Some("response.completed")
            && let Some(u) = v.get("response").and_then(usage_from)
        {
            return Some(u);
        }
        if let Some(u) = usage_from(&v) {
            return Some(u);
        }
    }
    None
}

/// Replaces `"model":"<target>"` (and the spaced variant) with the client-facing name.
pub fn rewrite_model_back(body: &[u8], target: &str, incoming: &str) -> Option<Vec<u8>> {
    if target == incoming {
        return None;
    }
    let enc = |m: &str| serde_json::to_string(m).unwrap_or_default();
    let (t, i) = (enc(target), enc(incoming));
    let mut out: Option<Vec<u8>> = None;
    for sep in [":", ": "] {
        let from = format!("\"model\"{sep}{t}");
        let to = format!("\"model\"{sep}{i}");
        let src = out.as_deref().unwrap_or(body);
        if memchr::memmem::find(src, from.as_bytes()).is_some() {
            out = Some(replace_all(src, from.as_bytes(), to.as_bytes()));
        }
    }
    out
}

fn replace_all(src: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(src.len() + 16);
    let mut last = 0;
    for pos in memchr::memmem::find_iter(src, from) {
        out.extend_from_slice(&src[last..pos]);
        out.extend_from_slice(to);
        last = pos + from.len();
    }
    out.extend_from_slice(&src[last..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_spellings() {
        let openai = br#"{"object":"chat.completion","usage":{"prompt_tokens":10,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":8}}}"#;
        assert_eq!(
            usage_from_json(openai),
            Some(Usage { prompt_tokens: 10, completion_tokens: 5, cached_tokens: Some(8) })
        );
        let upstream =
            br#"{"usage":{"prompt_tokens":3,"completion_tokens":1,"prompt_token_details":{"cached_tokens":2}}}"#;
        assert_eq!(usage_from_json(upstream).and_then(|u| u.cached_tokens), Some(2));
        let responses = br#"{"object":"response","usage":{"input_tokens":4,"output_tokens":6}}"#;
        assert_eq!(
            usage_from_json(responses),
            Some(Usage { prompt_tokens: 4, completion_tokens: 6, cached_tokens: None })
        );
        assert_eq!(usage_from_json(b"{}"), None);
        assert_eq!(usage_from_json(br#"{"usage":null}"#), None);
        assert_eq!(usage_from_json(br#"{"usage":[1]}"#), None);
        assert_eq!(usage_from_json(br#"[{"usage":{"prompt_tokens":1}}]"#), None);
        // Twice: the last one, as a generic JSON reading has it.
        let twice = br#"{"usage":{"prompt_tokens":1},"usage":{"prompt_tokens":2}}"#;
        assert_eq!(usage_from_json(twice).map(|u| u.prompt_tokens), Some(2));
    }

    #[test]
    fn usage_in_sse() {
        let sse = b"data: {\"choices\":[]}\n\ndata: {bad json usage}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n";
        assert_eq!(usage_from_sse(sse).map(|u| u.prompt_tokens), Some(7));
        let responses = b"event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":9,\"output_tokens\":1}}}\n\n";
        assert_eq!(usage_from_sse(responses).map(|u| u.prompt_tokens), Some(9));
        assert_eq!(usage_from_sse(b"data: [DONE]\n\n"), None);
    }

    #[test]
    fn model_rewritten_back() {
        let body = br#"{"model":"base","choices":[],"x":{"model": "base"}}"#;
        let out = rewrite_model_back(body, "base", "alias").expect("rewritten");
        assert_eq!(out, br#"{"model":"alias","choices":[],"x":{"model": "alias"}}"#.to_vec());
        assert_eq!(rewrite_model_back(body, "base", "base"), None);
        assert_eq!(rewrite_model_back(body, "other", "alias"), None);
    }
}
