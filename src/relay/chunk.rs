//! Reading and writing OpenAI `chat.completion.chunk` payloads.
//!
//! The hot path deserialises each chunk once, into a borrowed view (no copies of the text unless
//! it holds escapes) that the relay and the output filter both read. Chunks are relayed as the
//! provider wrote them; only a chunk that crosses the output cap is rewritten, and the
//! gateway's own closing chunks are built here.

use crate::accounting::Usage;
use crate::tokenize::TokenCounter;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{json, Value};
use smallvec::SmallVec;
use std::borrow::Cow;
use std::fmt;

/// What one upstream `data:` payload is.
// A chunk's view holds its one choice in place and lives for one event: boxing it would
// allocate for every chunk of every stream.
#[allow(clippy::large_enum_variant)]
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
    pub id: Option<Text<'a>>,
    #[serde(borrow, default)]
    pub model: Option<Text<'a>>,
    #[serde(default)]
    pub created: Option<u64>,
    #[serde(borrow, default)]
    pub(super) choices: Option<Choices<'a>>,
    #[serde(default)]
    pub(super) usage: Option<UsageView>,
    #[serde(default)]
    pub(super) error: Option<serde::de::IgnoredAny>,
    /// OpenAI's padding string (random per chunk): read for where it lies, which
    /// [`super::chunk_layout`] needs, and otherwise ignored.
    #[serde(borrow, default)]
    pub(super) obfuscation: Padding<'a>,
}

/// A chunk's choices: one, almost always, held in place (a stream reads every content chunk
/// without allocating for it).
pub(super) type Choices<'a> = SmallVec<[ChoiceView<'a>; 1]>;

/// A field of any JSON value, kept when it is a string without escapes (borrowed from the
/// chunk); any other value is read past, as an ignored field is.
#[derive(Debug, Default)]
pub struct Padding<'a>(pub Option<&'a str>);

impl<'de: 'a, 'a> Deserialize<'de> for Padding<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Padding(match AnyValue::deserialize(deserializer)? {
            AnyValue::BorrowedStr(text) => Some(text),
            _ => None,
        }))
    }
}

/// One choice of a chunk. Read as a map: `index` of any type (an unsigned integer is kept, as
/// `Value::as_u64` reads it; given twice, the last counts, as in a `Value`), `delta` and
/// `finish_reason` at most once each, other fields ignored.
#[derive(Debug, Default)]
pub struct ChoiceView<'a> {
    pub index: Option<u64>,
    pub delta: Option<DeltaView<'a>>,
    pub finish_reason: Option<Cow<'a, str>>,
}

/// A choice's delta: its texts, and whether it has any other field (which the client gets even
/// while a guardrail holds the texts back). Each text field at most once.
#[derive(Debug, Default)]
pub struct DeltaView<'a> {
    pub content: Option<Cow<'a, str>>,
    pub refusal: Option<Cow<'a, str>>,
    pub tool_calls: Option<Vec<ToolCallView<'a>>>,
    /// A field besides `content` and `refusal` (`role`, `tool_calls`, ...).
    pub other_keys: bool,
}

/// A tool call in a delta: `index` read like a choice's, `function` at most once.
#[derive(Debug, Default)]
pub struct ToolCallView<'a> {
    pub index: Option<u64>,
    pub function: Option<FunctionView<'a>>,
}

#[derive(Debug, Deserialize)]
pub struct FunctionView<'a> {
    #[serde(borrow, default)]
    pub arguments: Option<Text<'a>>,
}

/// A JSON string, borrowed from the chunk unless it holds escapes (a plain `Option<Cow<str>>`
/// field is always copied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(TextVisitor)
    }
}

/// An `index` of any JSON type: `Some` for an unsigned integer, as `Value::as_u64` reads it.
struct AnyIndex(Option<u64>);

impl<'de> Deserialize<'de> for AnyIndex {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(AnyIndex(match AnyValue::deserialize(deserializer)? {
            AnyValue::Unsigned(v) => Some(v),
            AnyValue::Signed(v) => u64::try_from(v).ok(),
            _ => None,
        }))
    }
}

/// Any JSON value, read past; integers and strings without escapes are kept (what
/// [`AnyIndex`] and [`Padding`] look for).
enum AnyValue<'de> {
    Unsigned(u64),
    Signed(i64),
    BorrowedStr(&'de str),
    Other,
}

impl<'de> Deserialize<'de> for AnyValue<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AnyVisitor;
        impl<'de> Visitor<'de> for AnyVisitor {
            type Value = AnyValue<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(AnyValue::Unsigned(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(AnyValue::Signed(v))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(AnyValue::BorrowedStr(v))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(AnyValue::Other)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(AnyValue::Other)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(AnyValue::Other)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(AnyValue::Other)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(AnyValue::Other)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                AnyValue::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(AnyValue::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(AnyValue::Other)
            }
        }
        deserializer.deserialize_any(AnyVisitor)
    }
}

/// Marks `field` seen, or fails if it was (serde's derived structs refuse a field given twice).
fn once<E: de::Error>(seen: &mut bool, field: &'static str) -> Result<(), E> {
    if std::mem::replace(seen, true) {
        return Err(E::duplicate_field(field));
    }
    Ok(())
}

impl<'de: 'a, 'a> Deserialize<'de> for ChoiceView<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ChoiceVisitor;
        impl<'de> Visitor<'de> for ChoiceVisitor {
            type Value = ChoiceView<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a choice object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut choice = ChoiceView::default();
                let (mut delta, mut finish) = (false, false);
                while let Some(Text(key)) = map.next_key::<Text<'de>>()? {
                    match key.as_ref() {
                        "index" => choice.index = map.next_value::<AnyIndex>()?.0,
                        "delta" => {
                            once(&mut delta, "delta")?;
                            choice.delta = map.next_value()?;
                        }
                        "finish_reason" => {
                            once(&mut finish, "finish_reason")?;
                            choice.finish_reason =
                                map.next_value::<Option<Text<'de>>>()?.map(|t| t.0);
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(choice)
            }
        }
        deserializer.deserialize_map(ChoiceVisitor)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for DeltaView<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DeltaVisitor;
        impl<'de> Visitor<'de> for DeltaVisitor {
            type Value = DeltaView<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a delta object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut delta = DeltaView::default();
                let (mut content, mut refusal, mut calls) = (false, false, false);
                while let Some(Text(key)) = map.next_key::<Text<'de>>()? {
                    match key.as_ref() {
                        "content" => {
                            once(&mut content, "content")?;
                            delta.content = map.next_value::<Option<Text<'de>>>()?.map(|t| t.0);
                        }
                        "refusal" => {
                            once(&mut refusal, "refusal")?;
                            delta.refusal = map.next_value::<Option<Text<'de>>>()?.map(|t| t.0);
                        }
                        "tool_calls" => {
                            once(&mut calls, "tool_calls")?;
                            delta.other_keys = true;
                            delta.tool_calls = map.next_value()?;
                        }
                        _ => {
                            delta.other_keys = true;
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(delta)
            }
        }
        deserializer.deserialize_map(DeltaVisitor)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for ToolCallView<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CallVisitor;
        impl<'de> Visitor<'de> for CallVisitor {
            type Value = ToolCallView<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a tool call object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut call = ToolCallView::default();
                let mut function = false;
                while let Some(Text(key)) = map.next_key::<Text<'de>>()? {
                    match key.as_ref() {
                        "index" => call.index = map.next_value::<AnyIndex>()?.0,
                        "function" => {
                            once(&mut function, "function")?;
                            call.function = map.next_value()?;
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(call)
            }
        }
        deserializer.deserialize_map(CallVisitor)
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct UsageView {
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
        self.usage.is_some() && self.choices.as_ref().is_none_or(|c| c.is_empty())
    }

    /// The chunk's choices (none for a usage-only chunk).
    pub fn choices(&self) -> &[ChoiceView<'_>] {
        self.choices.as_deref().unwrap_or_default()
    }

    /// Whether a choice finished in this chunk.
    pub fn has_finish_reason(&self) -> bool {
        self.choices().iter().any(|c| c.finish_reason.is_some())
    }

    /// Output tokens in this chunk: content, refusals and tool-call arguments of every choice.
    pub fn output_tokens(&self, counter: &TokenCounter) -> u64 {
        self.output_texts().map(|t| counter.count(t)).sum()
    }

    fn output_texts(&self) -> impl Iterator<Item = &str> {
        self.choices()
            .iter()
            .filter_map(|c| c.delta.as_ref())
            .flat_map(|d| {
                let calls = d
                    .tool_calls
                    .iter()
                    .flatten()
                    .filter_map(|t| Some(t.function.as_ref()?.arguments.as_ref()?.0.as_ref()));
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
            if let Some(Text(id)) = &view.id {
                self.id = id.to_string();
            }
            if let Some(Text(model)) = &view.model {
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
    fn the_view_borrows_text_and_reads_fields_as_a_value_would() {
        let Payload::Chunk(c) = Payload::parse(
            r#"{"choices":[{"index":"x","index":1,"delta":{"role":"assistant","content":"plain","refusal":"a\nb"},"finish_reason":null},{"delta":{"tool_calls":[{"index":-1,"function":{"arguments":"{}"}}]}}]}"#,
        ) else {
            panic!("expected a chunk")
        };
        let choices = c.choices();
        assert_eq!(choices.len(), 2);
        // The last `index` counts; a text without escapes is borrowed.
        assert_eq!(choices[0].index, Some(1));
        let delta = choices[0].delta.as_ref().unwrap();
        assert!(matches!(delta.content, Some(Cow::Borrowed("plain"))));
        assert_eq!(delta.refusal.as_deref(), Some("a\nb"));
        assert!(delta.other_keys && choices[0].finish_reason.is_none());
        // An index that is not an unsigned integer reads as absent.
        let calls = choices[1]
            .delta
            .as_ref()
            .unwrap()
            .tool_calls
            .as_ref()
            .unwrap();
        assert_eq!((choices[1].index, calls[0].index), (None, None));
        // Escaped keys are keys; a text field given twice is refused, as before.
        let Payload::Chunk(c) = Payload::parse(r#"{"choices":[{"delta":{"cont\u0065nt":"x"}}]}"#)
        else {
            panic!("expected a chunk")
        };
        assert_eq!(
            c.choices()[0].delta.as_ref().unwrap().content.as_deref(),
            Some("x")
        );
        assert!(matches!(
            Payload::parse(r#"{"choices":[{"delta":{"content":"a","content":"b"}}]}"#),
            Payload::Malformed
        ));
        // OpenAI's padding: kept where it is a plain string, any other value read past.
        for (padding, kept) in [
            (r#""Ab3""#, Some("Ab3")),
            (r#""A\u0062""#, None),
            (r#"7"#, None),
            (r#"{"x":[1,null]}"#, None),
        ] {
            let data =
                format!(r#"{{"choices":[{{"delta":{{"content":"x"}}}}],"obfuscation":{padding}}}"#);
            let Payload::Chunk(c) = Payload::parse(&data) else {
                panic!("expected a chunk: {data}")
            };
            assert_eq!(c.obfuscation.0, kept, "{data}");
        }
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
