//! Fuzz targets over the OpenAI bodies the picker reads: request bodies of every API shape, and
//! response bodies (JSON usage, SSE usage, the model name rewritten back).

use serde_json::{Value, json};
use switchyard::picker::request::{ApiKind, parse_body};
use switchyard::picker::response::{rewrite_model_back, usage_from_json, usage_from_sse};

use super::harness::{Rng, Target};

/// One path per API shape the picker tells apart.
const PATHS: &[&str] =
    &["/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/v1/responses", "/v1/conversations"];

const JSON_TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"\"",
    b"null",
    b"true",
    b"false",
    b"\"model\":",
    b"\"messages\":",
    b"\"prompt\":",
    b"\"input\":",
    b"\"items\":",
    b"\"stream\":true",
    b"\"cache_salt\":",
    b"\"role\":\"user\"",
    b"\"usage\":",
    b"\"prompt_tokens\":",
    b"\"completion_tokens\":",
    b"\"prompt_tokens_details\":{\"cached_tokens\":",
    b"\"type\":\"response.completed\"",
    b"\\u0000",
    b"\\ud800",
    b"\\\"",
    b"data: ",
    b"data:[DONE]",
    b"\n\n",
    b"\r\n",
    b"[[[[[[[[[[[[[[[[",
];

/// Request bodies, parsed as each API shape: never panics; an accepted body rewritten to another
/// model is accepted again with the new model and everything else the picker reads unchanged.
pub const REQUEST: Target = Target {
    name: "request",
    extra_seeds: &[],
    dictionary: JSON_TOKENS,
    generate: generate_request,
    check: check_request,
};

/// Response bodies: usage from JSON and from SSE never panic and agree on a body sent as one SSE
/// event; the model rewrite happens exactly when the target model is in the body.
pub const RESPONSE: Target = Target {
    name: "response",
    extra_seeds: &[],
    dictionary: JSON_TOKENS,
    generate: generate_response,
    check: check_response,
};

fn check_request(input: &[u8]) -> Result<(), String> {
    // The path comes from the client too.
    let _ = ApiKind::from_path(&String::from_utf8_lossy(input));
    for path in PATHS {
        let api = ApiKind::from_path(path);
        let Ok(p) = parse_body(input, api) else { continue };
        if p.model.is_empty() {
            return Err(format!("{api:?}: accepted with an empty model"));
        }
        let rewritten = p.with_model("fuzz-target \u{e9}\"");
        let q = parse_body(&rewritten, api).map_err(|e| {
            format!("{api:?}: the rewritten body is refused ({e}): {}", String::from_utf8_lossy(&rewritten))
        })?;
        if q.model != "fuzz-target \u{e9}\"" {
            return Err(format!("{api:?}: rewritten model reads back as {:?}", q.model));
        }
        if (q.stream, &q.cache_salt, &q.prefix_input) != (p.stream, &p.cache_salt, &p.prefix_input) {
            return Err(format!("{api:?}: the rewrite changed what the picker reads"));
        }
    }
    Ok(())
}

fn check_response(input: &[u8]) -> Result<(), String> {
    let _ = usage_from_sse(input);
    let from_json = usage_from_json(input);
    if let Ok(v) = serde_json::from_slice::<Value>(input)
        && v.get("type").and_then(Value::as_str) != Some("response.completed")
    {
        let event = format!("data: {v}\n\n");
        let again = usage_from_sse(event.as_bytes());
        if again != from_json {
            return Err(format!("usage {from_json:?} from JSON but {again:?} from the same body as SSE"));
        }
    }
    if rewrite_model_back(input, "m", "m").is_some() {
        return Err("rewritten although the names are equal".into());
    }
    let present =
        [&b"\"model\":\"base\""[..], b"\"model\": \"base\""].iter().any(|p| input.windows(p.len()).any(|w| w == *p));
    match rewrite_model_back(input, "base", "alias \u{e9}") {
        Some(_) if !present => Err("rewritten without the target model in the body".into()),
        None if present => Err("the target model is in the body but was not rewritten".into()),
        _ => Ok(()),
    }
}

fn text(rng: &mut Rng) -> Value {
    let s = rng.pick(&["hi", "", "You are a helpful assistant. ", "é☃\u{0}", "a\"b\\c", "\u{10ffff}"]);
    Value::String(s.repeat(rng.small(40)))
}

fn messages(rng: &mut Rng) -> Value {
    let mut out = Vec::new();
    for _ in 0..rng.below(4) {
        let mut m = serde_json::Map::new();
        if rng.chance(90) {
            let role = rng.pick(&["system", "user", "assistant", "tool"]);
            m.insert("role".into(), if rng.chance(95) { json!(role) } else { json!(1) });
        }
        let content = match rng.below(3) {
            0 => text(rng),
            1 => json!([{"type": "text", "text": text(rng)}, {"type": "image_url", "image_url": {"url": "x"}}]),
            _ => Value::Null,
        };
        m.insert("content".into(), content);
        out.push(if rng.chance(95) { Value::Object(m) } else { text(rng) });
    }
    Value::Array(out)
}

fn prompt(rng: &mut Rng) -> Value {
    match rng.below(6) {
        0 => json!([text(rng), text(rng)]),
        1 => json!([1, 2, 3, rng.next_u64()]),
        2 => json!([[1, 2], [3]]),
        3 => json!([1, "a"]),
        4 => json!(-1),
        _ => text(rng),
    }
}

/// A body of a random API shape, sometimes with the fields of another shape, odd types and
/// duplicate keys.
fn generate_request(rng: &mut Rng) -> Vec<u8> {
    let mut fields: Vec<(String, Value)> = Vec::new();
    if rng.chance(90) {
        let model = match rng.below(8) {
            0 => json!(""),
            1 => json!(7),
            2 => Value::Null,
            _ => json!(rng.pick(&["llama", "base-model", "lora-a", "m\u{e9}"])),
        };
        fields.push(("model".into(), model));
    }
    match rng.below(5) {
        0 => fields.push(("messages".into(), messages(rng))),
        1 => fields.push(("prompt".into(), prompt(rng))),
        2 => fields.push(("input".into(), if rng.chance(50) { text(rng) } else { messages(rng) })),
        3 => {
            fields.push(("input".into(), messages(rng)));
            fields.push(("instructions".into(), text(rng)));
            fields.push(("tools".into(), json!([{"type": "function", "name": "f"}])));
        }
        _ => fields.push(("items".into(), messages(rng))),
    }
    for (key, value) in [
        ("stream", json!(rng.chance(50))),
        ("cache_salt", text(rng)),
        ("max_tokens", json!(rng.next_u64() as i64)),
        ("temperature", json!(0.7)),
        ("stream_options", json!({"include_usage": true})),
        ("model", json!("second")),
    ] {
        if rng.chance(25) {
            fields.push((key.into(), value));
        }
    }
    let mut out = String::from("{");
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            out.push_str(if rng.chance(90) { "," } else { " ,\n " });
        }
        let key = if rng.chance(5) { k.replacen('m', "\\u006d", 1) } else { k.clone() };
        out.push_str(&format!("\"{key}\":{v}"));
    }
    out.push('}');
    out.into_bytes()
}

fn usage(rng: &mut Rng) -> Value {
    let n = |rng: &mut Rng| match rng.below(6) {
        0 => json!(-1),
        1 => json!(1.5),
        2 => json!("12"),
        3 => json!(u64::MAX),
        _ => json!(rng.below(5000)),
    };
    let mut u = serde_json::Map::new();
    let names: &[&str] = if rng.chance(50) {
        &["prompt_tokens", "completion_tokens", "total_tokens"]
    } else {
        &["input_tokens", "output_tokens", "total_tokens"]
    };
    for name in names {
        if rng.chance(85) {
            u.insert((*name).into(), n(rng));
        }
    }
    if rng.chance(40) {
        let details = rng.pick(&["prompt_tokens_details", "prompt_token_details", "input_tokens_details"]);
        u.insert(details.into(), json!({"cached_tokens": n(rng)}));
    }
    if rng.chance(5) { json!([u]) } else { Value::Object(u) }
}

/// A JSON response or an SSE stream (chat chunks or Responses API events).
fn generate_response(rng: &mut Rng) -> Vec<u8> {
    let model = rng.pick(&["base", "alias", "other"]);
    if rng.chance(30) {
        let body = json!({"id": "x", "object": "chat.completion", "model": model, "choices": [], "usage": usage(rng)});
        return body.to_string().into_bytes();
    }
    let eol = if rng.chance(10) { "\r\n" } else { "\n" };
    let mut out = String::new();
    for _ in 0..rng.small(6) {
        let event = match rng.below(5) {
            0 => json!({"type": "response.completed", "response": {"model": model, "usage": usage(rng)}}),
            1 => json!({"object": "chat.completion.chunk", "model": model, "choices": [], "usage": usage(rng)}),
            2 => {
                json!({"object": "chat.completion.chunk", "model": model, "choices": [{"delta": {"content": "usage"}}]})
            }
            _ => json!({"object": "chat.completion.chunk", "model": model, "choices": [{"delta": {"content": "hi"}}]}),
        };
        if rng.chance(20) {
            out.push_str(&format!("event: {}{eol}", event.get("type").and_then(Value::as_str).unwrap_or("message")));
        }
        let sep = if rng.chance(20) { ": " } else { ":" };
        out.push_str(&format!("data{sep}{event}{eol}{eol}"));
    }
    if rng.chance(70) {
        out.push_str(&format!("data: [DONE]{eol}{eol}"));
    }
    out.into_bytes()
}
