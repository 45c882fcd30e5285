//! Reading and writing OpenAI `chat.completion.chunk` payloads.
//!
//! The hot path deserialises each chunk into a borrowed view (no copies of the text unless it
//! holds escapes). Chunks are relayed as the provider wrote them; only a chunk that crosses the
//! output cap is rewritten, and the gateway's own closing chunks are built here.

use crate::accounting::Usage;
use crate::tokenize::TokenCounter;
use serde::Deserialize;
use serde_json::{json, Value};
use std::borrow::Cow;

/// What one upstream `data:` payload is.
#[derive(Debug)]
pub enum Payload<'a> {
    /// `[DONE]`
    Done,
    /// `{"error": …}`: the provider failed mid-stream.
    Error,
    Chunk(ChunkView<'a>),
    /// Not JSON, or not a chunk.
    Malformed,
}

impl<'a> Payload<'a> {
    pub fn parse(data: &'a str) -> Self {
        if data.trim() == "[DONE]" {
            return Payload::Done;
        }
        match serde_json::from_str::<ChunkView<'a>>(data) {
            Ok(view) if view.error.is_some() => Payload::Error,
            Ok(view) if view.choices.is_none() && view.usage.is_none() => Payload::Malformed,
            Ok(view) => Payload::Chunk(view),
            Err(_) => Payload::Malformed,
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct ChunkView<'a> {
    #[serde(borrow, default)]
    pub id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub model: Option<Cow<'a, str>>,
    #[serde(default)]
    pub created: Option<u64>,
    #[serde(borrow, default)]
    choices: Option<Vec<ChoiceView<'a>>>,
    #[serde(default)]
    usage: Option<UsageView>,
    #[serde(default)]
    error: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Deserialize)]
struct ChoiceView<'a> {
    #[serde(borrow, default)]
    delta: Option<DeltaView<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Debug, Deserialize)]
struct DeltaView<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    refusal: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<ToolCallView<'a>>>,
}

#[derive(Debug, Deserialize)]
struct ToolCallView<'a> {
    #[serde(borrow, default)]
    function: Option<FunctionView<'a>>,
}

#[derive(Debug, Deserialize)]
struct FunctionView<'a> {
    #[serde(borrow, default)]
    arguments: Option<Cow<'a, str>>,
}

#[derive(Debug, Deserialize)]
struct UsageView {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
}

impl ChunkView<'_> {
    /// The provider's usage report, when this chunk carries a whole one (both counts: a partial
    /// report is not billed from, the live count is).
    pub fn usage(&self) -> Option<Usage> {
        let usage = self.usage.as_ref()?;
        Some(Usage {
            input_tokens: usage.prompt_tokens?,
            output_tokens: usage.completion_tokens?,
        })
    }

    /// A usage-only chunk (`choices: []`), which the client gets only if it asked for usage.
    pub fn is_usage_only(&self) -> bool {
        self.usage.is_some() && self.choices.as_ref().is_none_or(Vec::is_empty)
    }

    /// Whether a choice finished in this chunk.
    pub fn has_finish_reason(&self) -> bool {
        self.choices
            .iter()
            .flatten()
            .any(|c| c.finish_reason.is_some())
    }

    /// Output tokens in this chunk: content, refusals and tool-call arguments of every choice.
    pub fn output_tokens(&self, counter: &TokenCounter) -> u64 {
        self.output_texts().map(|t| counter.count(t)).sum()
    }

    fn output_texts(&self) -> impl Iterator<Item = &str> {
        self.choices
            .iter()
            .flatten()
            .filter_map(|c| c.delta.as_ref())
            .flat_map(|d| {
                let calls = d
                    .tool_calls
                    .iter()
                    .flatten()
                    .filter_map(|t| t.function.as_ref()?.arguments.as_deref());
                d.content
                    .as_deref()
                    .into_iter()
                    .chain(d.refusal.as_deref())
                    .chain(calls)
            })
    }
}

/// Identity of the stream, taken from its first chunk, for the chunks the gateway writes.
#[derive(Debug, Clone, Default)]
pub struct StreamIdentity {
    pub id: String,
    pub model: String,
    pub created: u64,
}

impl StreamIdentity {
    pub fn learn(&mut self, view: &ChunkView<'_>) {
        if self.id.is_empty() {
            if let Some(id) = &view.id {
                self.id = id.to_string();
            }
            if let Some(model) = &view.model {
                self.model = model.to_string();
            }
            self.created = view.created.unwrap_or(self.created);
        }
    }

    /// The final chunk of a stream cut at the output cap.
    pub fn length_finish_chunk(&self) -> String {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "length"}],
        })
        .to_string()
    }

    /// A chunk the gateway writes for choice `index` (text a guardrail held back until the end).
    pub fn delta_chunk(&self, index: usize, delta: Value) -> String {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": index, "delta": delta, "logprobs": null, "finish_reason": null}],
        })
        .to_string()
    }

    /// A usage chunk with the gateway's numbers (for clients that asked for usage).
    pub fn usage_chunk(&self, usage: Usage, cost_usd: f64) -> String {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage_object(usage, cost_usd),
        })
        .to_string()
    }
}

/// OpenAI's `usage` object for `usage`, with `cost`: what the gateway bills, in USD.
pub fn usage_object(usage: Usage, cost_usd: f64) -> Value {
    json!({
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total(),
        "cost": cost_usd,
    })
}

/// The chunk `data` with `"cost": cost_usd` added to its `usage` object (the provider's own
/// fields kept); `None` when it is not a JSON object with a `usage` object.
pub fn with_cost(data: &str, cost_usd: f64) -> Option<String> {
    let mut value = serde_json::from_str::<Value>(data).ok()?;
    value
        .get_mut("usage")?
        .as_object_mut()?
        .insert("cost".into(), json!(cost_usd));
    Some(value.to_string())
}

/// Rewrites a chunk so it holds at most `budget` output tokens: text past the budget is cut,
/// and a choice's finish reason is cleared (the gateway sends its own). Returns the new payload
/// and the tokens it holds.
pub fn truncate_chunk(data: &str, counter: &TokenCounter, budget: u64) -> (String, u64) {
    let Ok(mut value) = serde_json::from_str::<Value>(data) else {
        return (String::new(), 0);
    };
    let mut left = budget;
    if let Some(choices) = value.get_mut("choices").and_then(Value::as_array_mut) {
        for choice in choices {
            if let Some(delta) = choice.get_mut("delta") {
                truncate_text_field(delta, "content", counter, &mut left);
                truncate_text_field(delta, "refusal", counter, &mut left);
                if let Some(calls) = delta.get_mut("tool_calls").and_then(Value::as_array_mut) {
                    for call in calls {
                        if let Some(function) = call.get_mut("function") {
                            truncate_text_field(function, "arguments", counter, &mut left);
                        }
                    }
                }
            }
            if let Some(reason) = choice.get_mut("finish_reason") {
                *reason = Value::Null;
            }
        }
    }
    (value.to_string(), budget - left)
}

fn truncate_text_field(parent: &mut Value, field: &str, counter: &TokenCounter, left: &mut u64) {
    let Some(Value::String(text)) = parent.get_mut(field) else {
        return;
    };
    let (kept, tokens) = counter.truncate(text, *left);
    *left = left.saturating_sub(tokens);
    let kept = kept.to_string();
    *text = kept;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter() -> TokenCounter {
        TokenCounter::for_model("gpt-4o")
    }

    #[test]
    fn classifies_payloads() {
        assert!(matches!(Payload::parse("[DONE]"), Payload::Done));
        assert!(matches!(
            Payload::parse(r#"{"error":{"message":"x"}}"#),
            Payload::Error
        ));
        assert!(matches!(Payload::parse("{oops"), Payload::Malformed));
        assert!(matches!(
            Payload::parse(r#"{"type":"overloaded"}"#),
            Payload::Malformed
        ));
        let Payload::Chunk(c) = Payload::parse(
            r#"{"id":"c1","model":"m","created":5,"choices":[{"index":0,"delta":{"content":" the quick","tool_calls":[{"function":{"arguments":"{\"a\":1}"}}]}}]}"#,
        ) else {
            panic!("expected a chunk")
        };
        assert_eq!(
            c.output_tokens(&counter()),
            2 + counter().count("{\"a\":1}")
        );
        assert!(c.usage().is_none());
        let Payload::Chunk(u) = Payload::parse(
            r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#,
        ) else {
            panic!("expected a chunk")
        };
        assert!(u.is_usage_only());
        assert_eq!(
            u.usage(),
            Some(Usage {
                input_tokens: 3,
                output_tokens: 4
            })
        );
    }

    #[test]
    fn truncation_keeps_the_budget_and_clears_finish_reason() {
        let data = r#"{"id":"c","choices":[{"index":0,"delta":{"content":" the quick brown fox"},"finish_reason":"stop"}]}"#;
        let (out, tokens) = truncate_chunk(data, &counter(), 2);
        assert_eq!(tokens, 2);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["choices"][0]["delta"]["content"], " the quick");
        assert_eq!(v["choices"][0]["finish_reason"], Value::Null);
    }
}
