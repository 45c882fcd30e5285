//! Input policy: turns a request body into a validated [`ChatRequest`] and builds the body the
//! upstream receives (explicit `max_tokens`, usage reporting on streams).
//!
//! Unknown fields pass through to the provider untouched; the fields the gateway relies on are
//! type-checked here, so a malformed request never reaches the upstream.

use crate::error::{ApiError, ErrorCode};
use crate::tokenize::TokenCounter;
use bytes::Bytes;
use serde_json::{Map, Value};

/// Roles the gateway accepts in `messages`.
const ROLES: &[&str] = &[
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

/// Which field carried the output cap (newer clients send `max_completion_tokens`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxTokensField {
    MaxTokens,
    MaxCompletionTokens,
}

impl MaxTokensField {
    fn name(self) -> &'static str {
        match self {
            MaxTokensField::MaxTokens => "max_tokens",
            MaxTokensField::MaxCompletionTokens => "max_completion_tokens",
        }
    }
}

/// A validated chat completion request.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    body: Map<String, Value>,
    pub model: String,
    pub stream: bool,
    /// The client asked for the usage chunk (`stream_options.include_usage`).
    pub client_wants_usage: bool,
    /// The cap the client asked for, if any.
    pub requested_max_tokens: Option<u32>,
    pub max_tokens_field: MaxTokensField,
}

impl ChatRequest {
    /// Parses and checks a request body.
    pub fn parse(bytes: &[u8]) -> Result<Self, ApiError> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|_| invalid_json("the request body is not valid JSON"))?;
        let Value::Object(body) = value else {
            return Err(invalid_json("the request body must be a JSON object"));
        };
        let model = match body.get("model") {
            Some(Value::String(m)) if !m.is_empty() => m.clone(),
            _ => return Err(invalid_json("`model` must be a non-empty string")),
        };
        let stream = optional_bool(&body, "stream")?.unwrap_or(false);
        let client_wants_usage = match body.get("stream_options") {
            None | Some(Value::Null) => false,
            Some(Value::Object(o)) => match o.get("include_usage") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => {
                    return Err(invalid_json(
                        "`stream_options.include_usage` must be a boolean",
                    ))
                }
            },
            Some(_) => return Err(invalid_json("`stream_options` must be an object")),
        };
        check_messages(body.get("messages"))?;
        let (requested_max_tokens, max_tokens_field) = requested_cap(&body)?;
        Ok(Self {
            body,
            model,
            stream,
            client_wants_usage,
            requested_max_tokens,
            max_tokens_field,
        })
    }

    /// Estimated prompt tokens: message text plus OpenAI's per-message framing (3 tokens per
    /// message, 3 to prime the reply).
    pub fn estimate_input_tokens(&self, counter: &TokenCounter) -> u64 {
        let messages = self.messages();
        let text: u64 = messages
            .iter()
            .map(|m| {
                let content = m.get("content").map_or(0, |c| content_tokens(c, counter));
                let name = m
                    .get("name")
                    .and_then(Value::as_str)
                    .map_or(0, |n| counter.count(n) + 1);
                content + name
            })
            .sum();
        text + 3 * messages.len() as u64 + 3
    }

    fn messages(&self) -> &[Value] {
        self.body
            .get("messages")
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice)
    }

    /// Choices requested (`n`, default 1).
    pub fn choices(&self) -> u64 {
        self.body.get("n").and_then(Value::as_u64).unwrap_or(1)
    }

    /// The text of the last user message (what the request log hashes).
    pub fn last_user_text(&self) -> String {
        self.messages()
            .iter()
            .rev()
            .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
            .and_then(|m| m.get("content"))
            .map(content_text)
            .unwrap_or_default()
    }

    /// The body sent upstream: the client's body with the granted cap set explicitly and, for
    /// streams, usage reporting switched on.
    pub fn upstream_body(&self, max_tokens: u32) -> Result<Bytes, ApiError> {
        let mut body = self.body.clone();
        body.remove("max_tokens");
        body.remove("max_completion_tokens");
        body.insert(self.max_tokens_field.name().into(), Value::from(max_tokens));
        if !self.stream {
            // Providers refuse stream options on a non-streamed request.
            body.remove("stream_options");
        } else {
            let options = body
                .entry("stream_options")
                .or_insert_with(|| Value::Object(Map::new()));
            if !options.is_object() {
                *options = Value::Object(Map::new());
            }
            if let Value::Object(o) = options {
                o.insert("include_usage".into(), Value::Bool(true));
            }
        }
        serde_json::to_vec(&body)
            .map(Bytes::from)
            .map_err(|_| ApiError::new(ErrorCode::Internal, "cannot encode the upstream request"))
    }
}

fn invalid_json(message: &str) -> ApiError {
    ApiError::new(ErrorCode::InvalidJson, message)
}

fn invalid_messages(message: &str) -> ApiError {
    ApiError::new(ErrorCode::InvalidMessages, message)
}

fn optional_bool(body: &Map<String, Value>, key: &str) -> Result<Option<bool>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(invalid_json(&format!("`{key}` must be a boolean"))),
    }
}

fn requested_cap(body: &Map<String, Value>) -> Result<(Option<u32>, MaxTokensField), ApiError> {
    let read = |field: MaxTokensField| -> Result<Option<u32>, ApiError> {
        match body.get(field.name()) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .filter(|n| *n >= 1)
                .map(|n| Some(n.min(u32::MAX as u64) as u32))
                .ok_or_else(|| {
                    invalid_json(&format!("`{}` must be a positive integer", field.name()))
                }),
        }
    };
    let classic = read(MaxTokensField::MaxTokens)?;
    let newer = read(MaxTokensField::MaxCompletionTokens)?;
    Ok(match (classic, newer) {
        (None, Some(n)) => (Some(n), MaxTokensField::MaxCompletionTokens),
        (Some(a), Some(b)) => (Some(a.min(b)), MaxTokensField::MaxTokens),
        (a, None) => (a, MaxTokensField::MaxTokens),
    })
}

fn check_messages(messages: Option<&Value>) -> Result<(), ApiError> {
    let Some(Value::Array(messages)) = messages else {
        return Err(invalid_messages("`messages` must be a non-empty array"));
    };
    if messages.is_empty() {
        return Err(invalid_messages("`messages` must be a non-empty array"));
    }
    for (i, m) in messages.iter().enumerate() {
        let Value::Object(m) = m else {
            return Err(invalid_messages(&format!(
                "messages[{i}] must be an object"
            )));
        };
        match m.get("role").and_then(Value::as_str) {
            Some(role) if ROLES.contains(&role) => {}
            _ => {
                return Err(invalid_messages(&format!(
                    "messages[{i}].role must be one of {}",
                    ROLES.join(", ")
                )))
            }
        }
        match m.get("content") {
            None | Some(Value::Null) | Some(Value::String(_)) => {}
            Some(Value::Array(parts)) if parts.iter().all(Value::is_object) => {}
            Some(_) => {
                return Err(invalid_messages(&format!(
                    "messages[{i}].content must be a string or an array of content parts"
                )))
            }
        }
    }
    Ok(())
}

/// The text of a message's content: a string, or the `text` of its text parts.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn content_tokens(content: &Value, counter: &TokenCounter) -> u64 {
    match content {
        Value::String(s) => counter.count(s),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .map(|t| counter.count(t))
            .sum(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<ChatRequest, ErrorCode> {
        ChatRequest::parse(v.to_string().as_bytes()).map_err(|e| e.code)
    }

    fn ok_body() -> Value {
        json!({"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]})
    }

    #[test]
    fn rejects_malformed_requests_with_their_codes() {
        assert_eq!(
            ChatRequest::parse(b"{not json")
                .map_err(|e| e.code)
                .unwrap_err(),
            ErrorCode::InvalidJson
        );
        assert_eq!(parse(json!([1])).unwrap_err(), ErrorCode::InvalidJson);
        assert_eq!(
            parse(json!({"messages":[]})).unwrap_err(),
            ErrorCode::InvalidJson
        );
        assert_eq!(
            parse(json!({"model":"m","messages":[]})).unwrap_err(),
            ErrorCode::InvalidMessages
        );
        assert_eq!(
            parse(json!({"model":"m","messages":[{"role":"wizard","content":"x"}]})).unwrap_err(),
            ErrorCode::InvalidMessages
        );
        assert_eq!(
            parse(json!({"model":"m","messages":[{"role":"user","content":5}]})).unwrap_err(),
            ErrorCode::InvalidMessages
        );
        let mut b = ok_body();
        b["stream"] = json!("yes");
        assert_eq!(parse(b).unwrap_err(), ErrorCode::InvalidJson);
        let mut b = ok_body();
        b["max_tokens"] = json!(-1);
        assert_eq!(parse(b).unwrap_err(), ErrorCode::InvalidJson);
    }

    #[test]
    fn upstream_body_has_explicit_cap_and_usage_on_streams() {
        let mut b = ok_body();
        b["stream"] = json!(true);
        b["stream_options"] = json!({"include_usage": false});
        b["temperature"] = json!(0.2);
        let r = parse(b).unwrap();
        assert!(!r.client_wants_usage);
        let up: Value = serde_json::from_slice(&r.upstream_body(77).unwrap()).unwrap();
        assert_eq!(up["max_tokens"], 77);
        assert_eq!(up["stream_options"]["include_usage"], true);
        assert_eq!(up["temperature"], 0.2);
    }

    #[test]
    fn max_completion_tokens_is_kept_as_the_clients_field() {
        let mut b = ok_body();
        b["max_completion_tokens"] = json!(50);
        let r = parse(b).unwrap();
        assert_eq!(r.requested_max_tokens, Some(50));
        let up: Value = serde_json::from_slice(&r.upstream_body(20).unwrap()).unwrap();
        assert_eq!(up["max_completion_tokens"], 20);
        assert!(up.get("max_tokens").is_none());
        assert!(up.get("stream_options").is_none());
    }

    #[test]
    fn estimates_input_tokens_with_framing() {
        let r = parse(json!({"model":"gpt-4o","messages":[
            {"role":"system","content":"hello world"},
            {"role":"user","content":[{"type":"text","text":"hello world"}]}]}))
        .unwrap();
        assert_eq!(
            r.estimate_input_tokens(&TokenCounter::for_model("gpt-4o")),
            2 + 2 + 6 + 3
        );
        assert_eq!(r.last_user_text(), "hello world");
    }
}
