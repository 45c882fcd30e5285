//! A whole Anthropic Messages reply → the OpenAI `chat.completion` an OpenAI provider would have
//! sent.
//!
//! Text blocks become the message's `content` (joined as they came), `tool_use` blocks its
//! `tool_calls` (their `input` serialised as the `arguments` string); thinking, server tool use and
//! block types added later are not relayed, as in the stream. `usage` is written only when the
//! reply reports both counts, so the relay counts a reply that reports none instead of billing
//! zero. A `tool_use` block without its `id` or `name` makes the reply unusable (a call the
//! client could not answer).

use super::{finish_reason, prompt_tokens};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Debug, Deserialize)]
struct MessageReply {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    model: Option<String>,
    content: Vec<Value>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<UsageReply>,
}

#[derive(Debug, Deserialize)]
struct UsageReply {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
}

/// The OpenAI `chat.completion` object for an Anthropic Messages reply body; `None` when the body is
/// not a usable message (not JSON, `"type":"error"`, no content array).
pub fn completion(body: &[u8], created: u64) -> Option<Value> {
    let reply: MessageReply = serde_json::from_slice(body).ok()?;
    if reply.kind.as_deref() == Some("error") {
        return None;
    }
    let mut text: Option<String> = None;
    let mut tool_calls = Vec::new();
    for block in &reply.content {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                if let Some(t) = block.get("text").and_then(Value::as_str) {
                    text.get_or_insert_with(String::new).push_str(t);
                }
            }
            Some("tool_use") => {
                let id = block.get("id").and_then(Value::as_str)?;
                let name = block.get("name").and_then(Value::as_str)?;
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                tool_calls.push(json!({
                    "id": id,
                    "type": "function",
                    "function": { "name": name, "arguments": input.to_string() },
                }));
            }
            _ => {}
        }
    }
    let mut message = json!({ "role": "assistant", "content": text, "refusal": null });
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    let mut completion = json!({
        "id": reply.id.unwrap_or_default(),
        "object": "chat.completion",
        "created": created,
        "model": reply.model.unwrap_or_default(),
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason(reply.stop_reason.as_deref()),
        }],
    });
    if let Some((input, output)) = reply.usage.and_then(|u| {
        let output = u.output_tokens?;
        u.input_tokens?;
        let input = prompt_tokens(
            u.input_tokens,
            u.cache_creation_input_tokens,
            u.cache_read_input_tokens,
        );
        Some((input, output))
    }) {
        completion["usage"] = json!({
            "prompt_tokens": input,
            "completion_tokens": output,
            "total_tokens": input.saturating_add(output),
        });
    }
    Some(completion)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_reply() {
        let body = br#"{"id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant",
            "model":"claude-sonnet-4-5-20250929",
            "content":[{"type":"thinking","thinking":"...","signature":"s"},
                       {"type":"text","text":"Hello"},{"type":"text","text":", world"}],
            "stop_reason":"end_turn","stop_sequence":null,
            "usage":{"input_tokens":12,"cache_creation_input_tokens":null,"cache_read_input_tokens":30,"output_tokens":6}}"#;
        assert_eq!(
            completion(body, 7),
            Some(json!({
                "id": "msg_01XFDUDYJgAACzvnptvVoYEL", "object": "chat.completion", "created": 7,
                "model": "claude-sonnet-4-5-20250929",
                "choices": [{"index": 0,
                    "message": {"role": "assistant", "content": "Hello, world", "refusal": null},
                    "logprobs": null, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 42, "completion_tokens": 6, "total_tokens": 48},
            }))
        );
    }

    #[test]
    fn a_tool_use_reply() {
        let body = br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-x",
            "content":[{"type":"tool_use","id":"toolu_1","name":"get_weather","input":{"location":"Paris","units":["c"]}},
                       {"type":"tool_use","id":"toolu_2","name":"now","input":{}}],
            "stop_reason":"tool_use","usage":{"input_tokens":5,"output_tokens":9}}"#;
        let out = completion(body, 0).unwrap();
        let message = &out["choices"][0]["message"];
        assert_eq!(message["content"], Value::Null);
        assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
        let calls = message["tool_calls"].as_array().unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(
            (
                &calls[0]["id"],
                &calls[0]["type"],
                &calls[0]["function"]["name"]
            ),
            (&json!("toolu_1"), &json!("function"), &json!("get_weather"))
        );
        let arguments: Value =
            serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(arguments, json!({"location": "Paris", "units": ["c"]}));
        assert_eq!(calls[1]["function"]["arguments"], "{}");
        assert_eq!(out["usage"]["total_tokens"], 14);
    }

    #[test]
    fn stop_reasons_and_missing_usage() {
        let body = br#"{"id":"m","type":"message","model":"c","content":[{"type":"text","text":"cut"}],"stop_reason":"max_tokens"}"#;
        let out = completion(body, 0).unwrap();
        assert_eq!(out["choices"][0]["finish_reason"], "length");
        assert!(out.get("usage").is_none());
        let refused = br#"{"id":"m","type":"message","model":"c","content":[],"stop_reason":"refusal","usage":{"input_tokens":1,"output_tokens":0}}"#;
        let out = completion(refused, 0).unwrap();
        assert_eq!(out["choices"][0]["finish_reason"], "content_filter");
        assert_eq!(out["choices"][0]["message"]["content"], Value::Null);
    }

    #[test]
    fn unusable_bodies_are_none() {
        for body in [
            &br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#[..],
            br#"{"type":"error","content":[]}"#,
            br#"{"id":"m","type":"message"}"#,
            br#"{"id":"m","content":"text"}"#,
            br#"[1]"#,
            b"not json",
            br#"{"id":"m","content":[{"type":"tool_use","name":"f","input":{}}]}"#,
        ] {
            assert_eq!(
                completion(body, 0),
                None,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
