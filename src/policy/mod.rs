//! Input policy: turns a request body into a validated [`ChatRequest`] and builds the body the
//! upstream receives (explicit `max_tokens`, usage reporting on streams).
//!
//! Unknown fields pass through to the provider untouched; the fields the gateway relies on are
//! type-checked here, so a malformed request never reaches the upstream. [`guard`] holds the
//! guardrail settings: the prompt-injection filter and the output rules of a request.

pub mod guardrails;
mod upstream_body;

use crate::config::LimitsConfig;
use crate::error::{ApiError, ErrorCode};
use crate::tokenize::TokenCounter;
use bytes::Bytes;
use serde_json::{Map, Value};
use upstream_body::UpstreamBody;

/// Roles the gateway accepts in `messages`.
const ROLES: &[&str] = &[
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];
/// Most choices (`n`) a request may ask for: each one multiplies the output.
pub const MAX_CHOICES: u64 = 8;
/// The sampling parameters checked here and their ranges (OpenAI's); other fields pass through
/// unchecked, so a provider's new parameters keep working.
const SAMPLING_RANGES: &[(&str, f64, f64)] = &[
    ("temperature", 0.0, 2.0),
    ("top_p", 0.0, 1.0),
    ("presence_penalty", -2.0, 2.0),
    ("frequency_penalty", -2.0, 2.0),
];
/// Range of each `logit_bias` value.
const LOGIT_BIAS_RANGE: (f64, f64) = (-100.0, 100.0);
/// Most `top_logprobs` a request may ask for.
const MAX_TOP_LOGPROBS: u64 = 20;
/// Roles that are instructions, kept whatever the history trimming drops.
const SYSTEM_ROLES: &[&str] = &["system", "developer"];

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
    /// Bytes of the body as the client sent it (what the upstream body is sized from).
    body_len: usize,
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
        match body.get("n") {
            None | Some(Value::Null) => {}
            Some(n) if n.as_u64().is_some_and(|n| (1..=MAX_CHOICES).contains(&n)) => {}
            Some(_) => {
                return Err(invalid_json(&format!(
                    "`n` must be an integer from 1 to {MAX_CHOICES}"
                )))
            }
        }
        check_sampling(&body)?;
        let (requested_max_tokens, max_tokens_field) = requested_cap(&body)?;
        Ok(Self {
            body,
            model,
            stream,
            client_wants_usage,
            requested_max_tokens,
            max_tokens_field,
            body_len: bytes.len(),
        })
    }

    /// Applies the input limits: refuses a user message over `max_message_chars` (characters,
    /// not bytes: a limit on what users write; the model's earlier answers, tool results and
    /// system prompts are bounded by the context limit and trimming instead), trims the history
    /// to the last `max_history_turns` non-system messages (system messages are always kept; a
    /// tool result whose call was trimmed goes too), then drops the oldest whole turns while the
    /// prompt is estimated over `max_context_tokens` (so a long chat goes on, forgetting its
    /// beginning), and refuses it only when the latest turn (from the last user message on)
    /// and the system messages alone do not fit. Returns
    /// (estimated input tokens, messages trimmed).
    pub fn enforce(
        &mut self,
        limits: &LimitsConfig,
        counter: &TokenCounter,
    ) -> Result<(u64, usize), ApiError> {
        for (i, message) in self.messages().iter().enumerate() {
            if message.get("role").and_then(Value::as_str) != Some("user") {
                continue;
            }
            let chars = message.get("content").map_or(0, content_chars);
            if chars > limits.max_message_chars {
                return Err(ApiError::new(
                    ErrorCode::MessageTooLong,
                    format!(
                        "messages[{i}] has {chars} characters; the limit is {}",
                        limits.max_message_chars
                    ),
                ));
            }
        }
        let trimmed = self.trim_history(limits.max_history_turns);
        let (estimate, dropped) = self.trim_to_budget(limits.max_context_tokens, counter);
        let conversation = self.messages().iter().any(|m| !is_system(m));
        if !conversation {
            return Err(ApiError::new(
                ErrorCode::ContextTooLong,
                "trimming the history to its last turns left no conversation (only tool results \
                 whose calls were trimmed); send fewer tool results",
            ));
        }
        if estimate > limits.max_context_tokens {
            return Err(ApiError::new(
                ErrorCode::ContextTooLong,
                format!(
                    "the prompt is about {estimate} tokens; the limit is {}",
                    limits.max_context_tokens
                ),
            ));
        }
        Ok((estimate, trimmed + dropped))
    }

    /// Drops the oldest turns (a user message and everything after it up to the next user
    /// message: answers, tool calls, their results) while the estimate is over `max_tokens`.
    /// The latest turn — from the last user message on — is never cut; system messages stay.
    /// Returns (the estimate, messages dropped). Each message is counted once.
    fn trim_to_budget(&mut self, max_tokens: u64, counter: &TokenCounter) -> (u64, usize) {
        let fixed = self.schema_tokens(counter) + 3;
        let Some(Value::Array(messages)) = self.body.get_mut("messages") else {
            return (fixed, 0);
        };
        let mut costs: Vec<u64> = messages
            .iter()
            .map(|m| message_tokens(m, counter))
            .collect();
        let mut total = fixed + costs.iter().sum::<u64>();
        let before = messages.len();
        while total > max_tokens {
            let is_user = |m: &Value| m.get("role").and_then(Value::as_str) == Some("user");
            let Some(latest) = messages.iter().rposition(is_user) else {
                break;
            };
            let Some(oldest) = (0..latest).find(|&i| !is_system(&messages[i])) else {
                break; // only the latest turn is left: refused by the caller if still over
            };
            // The oldest turn ends where the next user message starts.
            let end = (oldest + 1..=latest)
                .find(|&i| is_user(&messages[i]))
                .unwrap_or(latest);
            for i in (oldest..end).rev() {
                if !is_system(&messages[i]) {
                    total = total.saturating_sub(costs.remove(i));
                    messages.remove(i);
                }
            }
        }
        (total, before - messages.len())
    }

    fn trim_history(&mut self, max_turns: usize) -> usize {
        let Some(Value::Array(messages)) = self.body.get_mut("messages") else {
            return 0;
        };
        let turns = messages.iter().filter(|m| !is_system(m)).count();
        if turns <= max_turns {
            return 0;
        }
        let mut to_drop = turns - max_turns;
        let before = messages.len();
        let mut dropping_orphans = false;
        messages.retain(|m| {
            if is_system(m) {
                return true;
            }
            if to_drop > 0 {
                to_drop -= 1;
                dropping_orphans = true;
                return false;
            }
            // Tool results right after the cut answer a call that is gone: drop them too.
            if dropping_orphans && m.get("role").and_then(Value::as_str) == Some("tool") {
                return false;
            }
            dropping_orphans = false;
            true
        });
        before - messages.len()
    }

    /// Estimated prompt tokens: message text plus OpenAI's per-message framing (3 tokens per
    /// message, 3 to prime the reply), and the tool schemas.
    pub fn estimate_input_tokens(&self, counter: &TokenCounter) -> u64 {
        let text: u64 = self
            .messages()
            .iter()
            .map(|m| message_tokens(m, counter))
            .sum();
        text + self.schema_tokens(counter) + 3
    }

    /// Tool schemas and response formats are sent to the model as well.
    fn schema_tokens(&self, counter: &TokenCounter) -> u64 {
        ["tools", "functions", "response_format"]
            .iter()
            .filter_map(|k| self.body.get(*k))
            .map(|v| counter.count(&v.to_string()))
            .sum()
    }

    fn messages(&self) -> &[Value] {
        self.body
            .get("messages")
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice)
    }

    /// Whether the request sets top-level field `name` (present and not `null`).
    pub fn sets(&self, name: &str) -> bool {
        self.body.get(name).is_some_and(|v| !v.is_null())
    }

    /// Choices requested (`n`, default 1).
    pub fn choices(&self) -> u64 {
        self.body.get("n").and_then(Value::as_u64).unwrap_or(1)
    }

    /// The text of every message (or only the user's), for the injection filter.
    pub fn message_texts(&self, all_roles: bool) -> Vec<String> {
        self.messages()
            .iter()
            .filter(|m| all_roles || m.get("role").and_then(Value::as_str) == Some("user"))
            .filter_map(|m| m.get("content"))
            .map(content_text)
            .collect()
    }

    /// Puts a system message first (the guardrail canary).
    pub fn prepend_system_message(&mut self, text: &str) {
        if let Some(Value::Array(messages)) = self.body.get_mut("messages") {
            messages.insert(0, serde_json::json!({"role": "system", "content": text}));
        }
    }

    /// What a system message of `text` adds to [`estimate_input_tokens`](Self::estimate_input_tokens).
    pub fn system_message_tokens(text: &str, counter: &TokenCounter) -> u64 {
        message_tokens(
            &serde_json::json!({"role": "system", "content": text}),
            counter,
        )
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

    /// The request body as checked (and trimmed), for translating into another provider format.
    pub fn body(&self) -> &Map<String, Value> {
        &self.body
    }

    /// The body sent to an OpenAI-format provider: the client's body under the provider's name
    /// for the model, with the granted cap set explicitly and, for streams, usage reporting
    /// switched on (providers refuse stream options on a non-streamed request: those go
    /// without).
    pub fn upstream_body(&self, model: &str, max_tokens: u32) -> Result<Bytes, ApiError> {
        let body = UpstreamBody {
            body: &self.body,
            model: (model != self.model).then_some(model),
            cap_field: self.max_tokens_field.name(),
            max_tokens,
            stream: self.stream,
        };
        // Room for the client's body and what the gateway adds (a canary message, the
        // options), so the writer rarely grows its buffer.
        let mut out = Vec::with_capacity(self.body_len + 512);
        serde_json::to_writer(&mut out, &body).map_err(|_| {
            ApiError::new(ErrorCode::Internal, "cannot encode the upstream request")
        })?;
        Ok(Bytes::from(out))
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

/// The known sampling parameters have their type and range (`400 invalid_parameter`); `null`
/// counts as absent.
fn check_sampling(body: &Map<String, Value>) -> Result<(), ApiError> {
    let in_range = |value: &Value, (lo, hi): (f64, f64)| {
        value.as_f64().is_some_and(|v| (lo..=hi).contains(&v))
    };
    for &(name, lo, hi) in SAMPLING_RANGES {
        match body.get(name) {
            None | Some(Value::Null) => {}
            Some(value) if in_range(value, (lo, hi)) => {}
            Some(_) => {
                return Err(invalid_parameter(format!(
                    "`{name}` must be a number from {lo} to {hi}"
                )))
            }
        }
    }
    match body.get("logit_bias") {
        None | Some(Value::Null) => {}
        Some(Value::Object(biases)) if biases.values().all(|v| in_range(v, LOGIT_BIAS_RANGE)) => {}
        Some(_) => {
            return Err(invalid_parameter(format!(
                "`logit_bias` must map token ids to numbers from {} to {}",
                LOGIT_BIAS_RANGE.0, LOGIT_BIAS_RANGE.1
            )))
        }
    }
    match body.get("top_logprobs") {
        None | Some(Value::Null) => {}
        Some(n) if n.as_u64().is_some_and(|n| n <= MAX_TOP_LOGPROBS) => {}
        Some(_) => {
            return Err(invalid_parameter(format!(
                "`top_logprobs` must be an integer from 0 to {MAX_TOP_LOGPROBS}"
            )))
        }
    }
    Ok(())
}

fn invalid_parameter(message: String) -> ApiError {
    ApiError::new(ErrorCode::InvalidParameter, message)
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

/// A system or developer message (always kept by trimming).
fn is_system(message: &Value) -> bool {
    message
        .get("role")
        .and_then(Value::as_str)
        .is_some_and(|r| SYSTEM_ROLES.contains(&r))
}

/// One message's estimated prompt tokens: its text, name and tool calls, plus 3 of framing.
fn message_tokens(message: &Value, counter: &TokenCounter) -> u64 {
    let content = message
        .get("content")
        .map_or(0, |c| content_tokens(c, counter));
    let name = message
        .get("name")
        .and_then(Value::as_str)
        .map_or(0, |n| counter.count(n) + 1);
    // Tool calls the assistant made are prompt text too.
    let calls = message
        .get("tool_calls")
        .map_or(0, |c| counter.count(&c.to_string()));
    content + name + calls + 3
}

fn content_chars(content: &Value) -> usize {
    match content {
        Value::String(s) => s.chars().count(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .map(|t| t.chars().count())
            .sum(),
        _ => 0,
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
    fn sampling_parameters_are_checked_for_type_and_range_and_the_rest_passes() {
        let with = |name: &str, value: Value| {
            let mut b = ok_body();
            b[name] = value;
            parse(b).map(|_| ())
        };
        let bad = Err(ErrorCode::InvalidParameter);
        for (name, lo, hi) in [
            ("temperature", 0.0, 2.0),
            ("top_p", 0.0, 1.0),
            ("presence_penalty", -2.0, 2.0),
            ("frequency_penalty", -2.0, 2.0),
        ] {
            assert_eq!(with(name, json!(lo)), Ok(()), "{name}");
            assert_eq!(with(name, json!(hi)), Ok(()), "{name}");
            assert_eq!(with(name, json!(null)), Ok(()), "{name}");
            assert_eq!(with(name, json!(hi + 0.01)), bad, "{name}");
            assert_eq!(with(name, json!(lo - 0.01)), bad, "{name}");
            assert_eq!(with(name, json!("NaN")), bad, "{name}");
            assert_eq!(with(name, json!("1")), bad, "{name}");
            assert_eq!(with(name, json!(true)), bad, "{name}");
        }
        assert_eq!(with("temperature", json!(99)), bad);
        assert_eq!(with("temperature", json!(-5)), bad);
        assert_eq!(with("top_p", json!(7)), bad);
        assert_eq!(
            with("logit_bias", json!({"50256": -100, "15": 100})),
            Ok(())
        );
        assert_eq!(with("logit_bias", json!({"50256": -101})), bad);
        assert_eq!(with("logit_bias", json!({"50256": "1"})), bad);
        assert_eq!(with("logit_bias", json!([1, 2])), bad);
        assert_eq!(with("top_logprobs", json!(0)), Ok(()));
        assert_eq!(with("top_logprobs", json!(20)), Ok(()));
        assert_eq!(with("top_logprobs", json!(21)), bad);
        assert_eq!(with("top_logprobs", json!(1.5)), bad);
        assert_eq!(with("top_logprobs", json!(-1)), bad);
        // Fields the gateway does not know pass through, whatever they hold.
        assert_eq!(with("a_new_provider_parameter", json!("NaN")), Ok(()));
        assert_eq!(with("reasoning_effort", json!("high")), Ok(()));
    }

    #[test]
    fn sets_is_true_for_present_non_null_fields() {
        let mut b = ok_body();
        b["n"] = json!(1);
        b["logprobs"] = json!(null);
        let r = parse(b).unwrap();
        assert!(r.sets("n"));
        assert!(r.sets("model"));
        assert!(!r.sets("logprobs"));
        assert!(!r.sets("tools"));
    }

    #[test]
    fn upstream_body_has_explicit_cap_and_usage_on_streams() {
        let mut b = ok_body();
        b["stream"] = json!(true);
        b["stream_options"] = json!({"include_usage": false});
        b["temperature"] = json!(0.2);
        let r = parse(b).unwrap();
        assert!(!r.client_wants_usage);
        let up: Value = serde_json::from_slice(&r.upstream_body("m", 77).unwrap()).unwrap();
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
        let up: Value = serde_json::from_slice(&r.upstream_body("m", 20).unwrap()).unwrap();
        assert_eq!(up["max_completion_tokens"], 20);
        assert!(up.get("max_tokens").is_none());
        assert!(up.get("stream_options").is_none());
    }

    fn limits() -> LimitsConfig {
        LimitsConfig::default()
    }

    #[test]
    fn message_length_is_counted_in_characters() {
        let counter = TokenCounter::for_model("gpt-4o");
        let mut ok = parse(
            json!({"model":"gpt-4o","messages":[{"role":"user","content":"é".repeat(4000)}]}),
        )
        .unwrap();
        assert!(ok.enforce(&limits(), &counter).is_ok());
        let mut long = parse(
            json!({"model":"gpt-4o","messages":[{"role":"user","content":"é".repeat(4001)}]}),
        )
        .unwrap();
        assert_eq!(
            long.enforce(&limits(), &counter).unwrap_err().code,
            ErrorCode::MessageTooLong
        );
        let mut parts = parse(
            json!({"model":"gpt-4o","messages":[{"role":"user","content":[
            {"type":"text","text":"a".repeat(2500)},{"type":"text","text":"b".repeat(2500)}]}]}),
        )
        .unwrap();
        assert_eq!(
            parts.enforce(&limits(), &counter).unwrap_err().code,
            ErrorCode::MessageTooLong
        );
    }

    #[test]
    fn the_message_limit_is_on_what_users_write_not_on_the_models_answers() {
        let counter = TokenCounter::for_model("gpt-4o");
        // A 1,000-token answer is about 6,000 characters: the chat must go on after it.
        let mut long_answer = parse(json!({"model":"gpt-4o","messages":[
            {"role":"system","content":"s".repeat(5000)},
            {"role":"user","content":"Explain it all."},
            {"role":"assistant","content":"word ".repeat(1200)},
            {"role":"user","content":"And then?"}]}))
        .unwrap();
        assert!(long_answer.enforce(&limits(), &counter).is_ok());
        let mut long_question = parse(json!({"model":"gpt-4o","messages":[
            {"role":"assistant","content":"Hi"},
            {"role":"user","content":"q".repeat(4001)}]}))
        .unwrap();
        let refused = long_question.enforce(&limits(), &counter).unwrap_err();
        assert_eq!(refused.code, ErrorCode::MessageTooLong);
        assert!(
            refused.message.contains("messages[1]"),
            "{}",
            refused.message
        );
    }

    #[test]
    fn history_keeps_the_last_turns_and_every_system_message() {
        let counter = TokenCounter::for_model("gpt-4o");
        let mut messages = vec![json!({"role":"system","content":"rules"})];
        for i in 0..15 {
            let role = if i % 2 == 0 { "user" } else { "assistant" };
            messages.push(json!({"role": role, "content": format!("m{i}")}));
        }
        let mut r = parse(json!({"model":"gpt-4o","messages":messages})).unwrap();
        assert_eq!(r.enforce(&limits(), &counter).unwrap().1, 5);
        let kept = r.messages();
        assert_eq!(kept.len(), 11);
        assert_eq!(kept[0]["role"], "system");
        assert_eq!(kept[1]["content"], "m5");
        assert_eq!(kept[10]["content"], "m14");
    }

    #[test]
    fn trimming_drops_tool_results_whose_call_was_cut() {
        let counter = TokenCounter::for_model("gpt-4o");
        let limits = LimitsConfig {
            max_history_turns: 2,
            ..limits()
        };
        let mut r = parse(json!({"model":"gpt-4o","messages":[
            {"role":"assistant","content":null,"tool_calls":[{"id":"t","type":"function","function":{"name":"f","arguments":"{}"}}]},
            {"role":"tool","tool_call_id":"t","content":"42"},
            {"role":"user","content":"thanks"}]}))
        .unwrap();
        r.enforce(&limits, &counter).unwrap();
        assert_eq!(r.messages().len(), 1);
        assert_eq!(r.messages()[0]["content"], "thanks");
    }

    #[test]
    fn the_context_estimate_is_checked_after_trimming() {
        let counter = TokenCounter::for_model("gpt-4o");
        let limits = LimitsConfig {
            max_context_tokens: 50,
            max_history_turns: 1,
            ..limits()
        };
        let mut trimmed_enough = parse(json!({"model":"gpt-4o","messages":[
            {"role":"user","content":"word ".repeat(100)},
            {"role":"user","content":"short"}]}))
        .unwrap();
        assert!(trimmed_enough.enforce(&limits, &counter).is_ok());
        let mut too_long = parse(json!({"model":"gpt-4o","messages":[
            {"role":"user","content":"word ".repeat(100)}]}))
        .unwrap();
        assert_eq!(
            too_long.enforce(&limits, &counter).unwrap_err().code,
            ErrorCode::ContextTooLong
        );
    }

    #[test]
    fn a_long_chat_forgets_its_oldest_turns_to_fit_the_context() {
        let counter = TokenCounter::for_model("gpt-4o");
        let limits = LimitsConfig {
            max_context_tokens: 450,
            ..limits()
        };
        // Three long answers (~200 tokens each), each after a tool call and its result.
        let mut messages = vec![json!({"role":"system","content":"rules"})];
        for turn in 0..3 {
            messages.push(json!({"role":"user","content":format!("question {turn}")}));
            messages.push(json!({"role":"assistant","content":null,"tool_calls":[
                {"id":format!("c{turn}"),"type":"function","function":{"name":"f","arguments":"{}"}}]}));
            messages.push(json!({"role":"tool","tool_call_id":format!("c{turn}"),"content":"ok"}));
            messages.push(json!({"role":"assistant","content":"word ".repeat(200)}));
        }
        messages.push(json!({"role":"user","content":"and now?"}));
        let mut chat = parse(json!({"model":"gpt-4o","messages":messages})).unwrap();
        let (estimate, trimmed) = chat.enforce(&limits, &counter).unwrap();
        assert!(estimate <= 450, "{estimate}");
        assert_eq!(estimate, chat.estimate_input_tokens(&counter));
        let kept = chat.messages();
        assert_eq!(kept.len() + trimmed, 14);
        assert_eq!(kept[0]["role"], "system");
        assert_eq!(kept.last().unwrap()["content"], "and now?");
        // Whatever was cut, no tool result is left without its call.
        assert_ne!(kept[1]["role"], "tool");
        assert!(trimmed >= 4, "at least the first turn went ({trimmed})");
        assert_eq!(
            kept[1]["role"], "user",
            "whole turns go: the next one starts with its question"
        );

        // An agent loop: the latest turn (question, tool call, big result) is never cut.
        let mut agent = parse(json!({"model":"gpt-4o","messages":[
            {"role":"system","content":"rules"},
            {"role":"user","content":"word ".repeat(300)},
            {"role":"assistant","content":"word ".repeat(300)},
            {"role":"user","content":"the question"},
            {"role":"assistant","content":null,"tool_calls":[
                {"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]},
            {"role":"tool","tool_call_id":"c","content":"word ".repeat(300)}]}))
        .unwrap();
        let (estimate, trimmed) = agent.enforce(&limits, &counter).unwrap();
        assert!(estimate <= 450, "{estimate}");
        assert_eq!(trimmed, 2);
        let roles: Vec<&str> = agent
            .messages()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["system", "user", "assistant", "tool"]);
        assert_eq!(agent.messages()[1]["content"], "the question");
        // When the latest turn alone is over the limit, the request is refused, not gutted.
        let mut too_big = parse(json!({"model":"gpt-4o","messages":[
            {"role":"user","content":"hi"},
            {"role":"assistant","content":"hello"},
            {"role":"user","content":"the question"},
            {"role":"assistant","content":null,"tool_calls":[
                {"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]},
            {"role":"tool","tool_call_id":"c","content":"word ".repeat(600)}]}))
        .unwrap();
        assert_eq!(
            too_big.enforce(&limits, &counter).unwrap_err().code,
            ErrorCode::ContextTooLong
        );
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
