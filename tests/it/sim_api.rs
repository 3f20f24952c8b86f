//! The simulator's OpenAI API and metrics behaviour.

use std::time::Duration;

use switchyard::sim::{self, Flavor};

async fn one(flavor: Flavor, adapters: &[&str]) -> sim::SimHandle {
    let cfg = sim::FleetConfig {
        fleet: vec![(flavor, 1)],
        adapters: adapters.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    sim::start_fleet(&cfg).await.expect("fleet").remove(0)
}

#[tokio::test]
async fn chat_completion_with_usage_and_prefix_cache() {
    let h = one(Flavor::VllmV1, &[]).await;
    let client = crate::support::client();
    let body = serde_json::json!({
        "model": "meta-llama/Llama-3.1-8B-Instruct",
        "messages": [{"role": "system", "content": "You are helpful. ".repeat(100)}, {"role": "user", "content": "hi"}],
        "max_tokens": 8,
    });
    let url = format!("http://{}/v1/chat/completions", h.addr);
    let first: serde_json::Value =
        client.post(&url).json(&body).send().await.expect("send").json().await.expect("json");
    assert_eq!(first["object"], "chat.completion");
    let usage = &first["usage"];
    assert!(usage["prompt_tokens"].as_u64().expect("prompt") > 400);
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 0);
    let second: serde_json::Value =
        client.post(&url).json(&body).send().await.expect("send").json().await.expect("json");
    let cached = second["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().expect("cached");
    assert!(cached > 400, "the repeated prompt hits the prefix cache: {cached}");
}

#[tokio::test]
async fn streaming_sends_tokens_as_they_are_generated() {
    let h = one(Flavor::Sglang, &[]).await;
    let client = crate::support::client();
    let body = serde_json::json!({"model": "meta-llama/Llama-3.1-8B-Instruct", "prompt": "hello", "max_tokens": 20, "stream": true, "stream_options": {"include_usage": true}});
    let mut resp = client.post(format!("http://{}/v1/completions", h.addr)).json(&body).send().await.expect("send");
    assert!(resp.headers()["content-type"].to_str().expect("ct").starts_with("text/event-stream"));
    let mut chunks = 0;
    let mut text = String::new();
    let first_at = tokio::time::Instant::now();
    let mut first_chunk_delay = None;
    while let Some(c) = resp.chunk().await.expect("chunk") {
        first_chunk_delay.get_or_insert(first_at.elapsed());
        chunks += 1;
        text.push_str(&String::from_utf8_lossy(&c));
    }
    assert!(chunks >= 3, "{chunks} chunks");
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert!(text.contains("\"usage\""));
    assert!(first_chunk_delay.expect("chunk") < Duration::from_secs(1));
}

#[tokio::test]
async fn unknown_model_and_bad_bodies_are_rejected_like_vllm() {
    let h = one(Flavor::VllmV0, &["sql-lora"]).await;
    let client = crate::support::client();
    let url = format!("http://{}/v1/completions", h.addr);
    let r = client.post(&url).json(&serde_json::json!({"model": "nope", "prompt": "x"})).send().await.expect("send");
    assert_eq!(r.status(), 404);
    let r = client.post(&url).body("not json").send().await.expect("send");
    assert_eq!(r.status(), 400);
    let r = client
        .post(&url)
        .json(&serde_json::json!({"model": "sql-lora", "prompt": "x", "max_tokens": 2}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200, "adapters are served models");
    assert_eq!(r.headers()["x-sim-server"], "sim-vllm-v0-0");
}
