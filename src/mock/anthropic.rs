//! Anthropic's Messages API as the mock speaks it: the request fields it checks, the prompt
//! estimate over Anthropic shapes, the `message` object, the stream's events and the error body.
//!
//! The shapes follow the official SDK's types (`anthropic-sdk-python`: `types/message.py`,
//! `types/usage.py`, `types/raw_*_event.py`, `types/tool_use_block.py`,
//! `types/shared/error_response.py`) and its recorded streams: `message_start`,
//! `content_block_start`, `ping`, `content_block_delta`…, `content_block_stop`, (a `tool_use`
//! block the same way), `message_delta`, `message_stop`; each as `event: <type>` and
//! `data: <json>`. Routing and HTTP stay in `mod.rs`; the stream's order and pacing in
//! `stream.rs`.

use bytes::Bytes;
use serde_json::{json, Value};

use super::stream::{named_sse, Reply, ToolCall};
use super::words::{generated_text, token_text, TOOL_ARGUMENTS};

/// The header every Messages request must carry.
pub(crate) const VERSION_HEADER: &str = "anthropic-version";

/// The fields of a Messages request the mock looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MessagesRequest {
    /// The model exactly as sent (knob suffix included).
    pub model: String,
    pub max_tokens: u32,
    pub stream: bool,
    /// The prompt estimate ([`input_tokens`]).
    pub input_tokens: u32,
}

/// Checks a Messages request body as the real API does: `model` (string), `max_tokens` (integer
/// of at least 1) and `messages` (array) are required, `stream` is a boolean if present. The
/// error is the message of a 400 `invalid_request_error`.
pub(crate) fn parse_request(body: &Value) -> Result<MessagesRequest, String> {
    let object = body
        .as_object()
        .ok_or_else(|| "request body must be a JSON object".to_owned())?;
    let field = |name: &str| object.get(name).filter(|value| !value.is_null());
    let required = |name: &str| format!("{name}: Field required");
    let model = match field("model") {
        None => return Err(required("model")),
        Some(Value::String(model)) => model.clone(),
        Some(_) => return Err("model: Input should be a valid string".to_owned()),
    };
    let max_tokens = match field("max_tokens").map(|value| (value.as_i64(), value.as_u64())) {
        None => return Err(required("max_tokens")),
        Some((_, Some(max))) if max >= 1 => u32::try_from(max).unwrap_or(u32::MAX),
        Some((Some(_), _)) => {
            return Err("max_tokens: Input should be greater than or equal to 1".to_owned())
        }
        Some(_) => return Err("max_tokens: Input should be a valid integer".to_owned()),
    };
    let messages = match field("messages") {
        None => return Err(required("messages")),
        Some(Value::Array(messages)) => messages,
        Some(_) => return Err("messages: Input should be a valid list".to_owned()),
    };
    let stream = match field("stream") {
        None => false,
        Some(Value::Bool(stream)) => *stream,
        Some(_) => return Err("stream: Input should be a valid boolean".to_owned()),
    };
    Ok(MessagesRequest {
        model,
        max_tokens,
        stream,
        input_tokens: input_tokens(field("system"), messages),
    })
}

/// Prompt estimate, as `prompt_tokens` on the OpenAI path but over Anthropic shapes: o200k tokens
/// of the system prompt (a string or text blocks) and of each message's content (a string or
/// text blocks), plus 3 per message (the system prompt counts as one), plus 3. An OpenAI request
/// whose system message moved to `system` keeps its estimate.
fn input_tokens(system: Option<&Value>, messages: &[Value]) -> u32 {
    let bpe = crate::tokenize::TokenCounter::o200k_estimate();
    let count = |content: &Value| -> usize {
        match content {
            Value::String(text) => bpe.count(text) as usize,
            Value::Array(blocks) => blocks
                .iter()
                .filter(|block| block.get("type").and_then(Value::as_str) == Some("text"))
                .filter_map(|block| block.get("text").and_then(Value::as_str))
                .map(|text| bpe.count(text) as usize)
                .sum(),
            _ => 0,
        }
    };
    let contents = messages.iter().filter_map(|m| m.get("content"));
    let text: usize = system.into_iter().chain(contents).map(count).sum();
    let turns = messages.len() + usize::from(system.is_some());
    let total = text.saturating_add(3 * turns).saturating_add(3);
    u32::try_from(total).unwrap_or(u32::MAX)
}

/// An Anthropic error body: `{"type":"error","error":{"type":kind,"message":message}}`.
pub(crate) fn error_body(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

/// The error type Anthropic answers an HTTP status with.
pub(crate) fn error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

/// The error an `error@N` fault sends: what the API sends when it is overloaded.
pub(crate) fn overloaded() -> Value {
    error_body("overloaded_error", "Overloaded")
}

impl Reply {
    /// The non-streamed `message` object.
    pub(crate) fn message(&self) -> Value {
        let mut content = vec![json!({"type": "text", "text": generated_text(self.tokens)})];
        if let Some(tool) = &self.tool {
            let input = serde_json::from_str::<Value>(TOOL_ARGUMENTS).unwrap_or(Value::Null);
            content.push(json!({
                "type": "tool_use",
                "id": tool.id,
                "name": tool.name,
                "input": input,
            }));
        }
        json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": self.stop_reason,
            "stop_sequence": null,
            "usage": self.anthropic_usage(self.output_tokens()),
        })
    }

    fn anthropic_usage(&self, output_tokens: u32) -> Value {
        json!({
            "input_tokens": self.prompt_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": output_tokens,
        })
    }

    /// `message_start` (usage counts 1 output token, as the API's does), the text block's
    /// `content_block_start`, and a `ping`.
    pub(crate) fn anthropic_open_events(&self) -> Vec<Bytes> {
        let message = json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": null,
            "stop_sequence": null,
            "usage": self.anthropic_usage(1),
        });
        let block = json!({"type": "text", "text": ""});
        vec![
            event("message_start", json!({"message": message})),
            event(
                "content_block_start",
                json!({"index": 0, "content_block": block}),
            ),
            self.anthropic_ping(),
        ]
    }

    pub(crate) fn anthropic_ping(&self) -> Bytes {
        event("ping", json!({}))
    }

    pub(crate) fn anthropic_text_delta(&self, index: u32) -> Bytes {
        let delta = json!({"type": "text_delta", "text": token_text(index)});
        event("content_block_delta", json!({"index": 0, "delta": delta}))
    }

    pub(crate) fn anthropic_block_stop(&self, block: u32) -> Bytes {
        event("content_block_stop", json!({"index": block}))
    }

    /// The tool block's `content_block_start`: empty input, filled by `input_json_delta`s.
    pub(crate) fn anthropic_tool_start(&self, tool: &ToolCall) -> Bytes {
        let block = json!({"type": "tool_use", "id": tool.id, "name": tool.name, "input": {}});
        event(
            "content_block_start",
            json!({"index": 1, "content_block": block}),
        )
    }

    pub(crate) fn anthropic_input_json_delta(&self, fragment: &str) -> Bytes {
        let delta = json!({"type": "input_json_delta", "partial_json": fragment});
        event("content_block_delta", json!({"index": 1, "delta": delta}))
    }

    pub(crate) fn anthropic_message_delta(&self) -> Bytes {
        let delta = json!({"stop_reason": self.stop_reason, "stop_sequence": null});
        let usage = json!({"output_tokens": self.output_tokens()});
        event("message_delta", json!({"delta": delta, "usage": usage}))
    }

    pub(crate) fn anthropic_message_stop(&self) -> Bytes {
        event("message_stop", json!({}))
    }

    /// The `error` event of an `error@N` fault.
    pub(crate) fn anthropic_error_event(&self) -> Bytes {
        named_sse("error", &overloaded())
    }
}

/// The event `kind`: `fields` with `"type": kind`, sent as `event: kind`.
fn event(kind: &str, mut fields: Value) -> Bytes {
    fields["type"] = Value::String(kind.to_owned());
    named_sse(kind, &fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(body: Value) -> Result<MessagesRequest, String> {
        parse_request(&body)
    }

    #[test]
    fn requires_model_max_tokens_and_messages() {
        let ok = parsed(json!({"model": "m", "max_tokens": 5, "messages": []}));
        assert_eq!(
            ok.map(|r| (r.model, r.max_tokens, r.stream)),
            Ok(("m".to_owned(), 5, false))
        );
        let cases = [
            json!({"max_tokens": 5, "messages": []}),
            json!({"model": 1, "max_tokens": 5, "messages": []}),
            json!({"model": "m", "messages": []}),
            json!({"model": "m", "max_tokens": "5", "messages": []}),
            json!({"model": "m", "max_tokens": 2.5, "messages": []}),
            json!({"model": "m", "max_tokens": 0, "messages": []}),
            json!({"model": "m", "max_tokens": 5}),
            json!({"model": "m", "max_tokens": 5, "messages": {}}),
            json!({"model": "m", "max_tokens": 5, "messages": [], "stream": "yes"}),
            json!([]),
        ];
        for case in cases {
            assert!(parsed(case.clone()).is_err(), "{case} must be refused");
        }
        let missing = parsed(json!({"model": "m", "messages": []}));
        assert_eq!(missing, Err("max_tokens: Field required".to_owned()));
        let streamed =
            parsed(json!({"model": "m", "max_tokens": 1, "messages": [], "stream": true}));
        assert!(streamed.is_ok_and(|r| r.stream));
    }

    #[test]
    fn prompt_estimate_counts_system_and_text_blocks() {
        let messages = [
            json!({"role": "user", "content": " the quick brown fox"}),
            json!({"role": "assistant", "content": [
                {"type": "text", "text": " lazy dog"},
                {"type": "image", "source": {}},
            ]}),
        ];
        assert_eq!(input_tokens(None, &messages), 4 + 2 + 3 * 2 + 3);
        let system = json!(" the green valley");
        assert_eq!(
            input_tokens(Some(&system), &messages),
            3 + 4 + 2 + 3 * 3 + 3
        );
        let blocks = json!([{"type": "text", "text": " the green valley"}]);
        assert_eq!(input_tokens(Some(&blocks), &[]), 3 + 3 + 3);
        assert_eq!(input_tokens(None, &[]), 3);
    }

    #[test]
    fn error_types_by_status() {
        let types = [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (413, "request_too_large"),
            (429, "rate_limit_error"),
            (500, "api_error"),
            (503, "api_error"),
            (529, "overloaded_error"),
        ];
        for (status, kind) in types {
            assert_eq!(error_type(status), kind, "{status}");
        }
        assert_eq!(
            overloaded(),
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
        );
    }
}
