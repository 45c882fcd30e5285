//! Anthropic Messages stream events → OpenAI `chat.completion.chunk` payloads.
//!
//! Each event is read into one borrowed view (no copies of the text unless it holds escapes)
//! and each chunk is written straight into its string from a prefix built once at
//! `message_start`, so a token costs one small parse and one small write.
//!
//! What is relayed: the reply's text and its client tool calls (`tool_use` blocks, numbered from
//! 0 in the order they start, as OpenAI numbers `tool_calls`). What is not: thinking and
//! redacted thinking, signatures, citations, server tool use (`server_tool_use` and its results,
//! which Anthropic runs itself), and any block, delta or event type added later: they have no
//! place in an OpenAI chunk, so they are skipped rather than failing the stream. The ending
//! (`message_stop`) becomes a finish chunk, a usage-only chunk (prompt tokens include the cache's)
//! and `[DONE]`.
//!
//! An `error` event becomes one OpenAI error payload with Anthropic's message and type. Data that
//! is not JSON, or a known event missing a field it needs (or arriving before `message_start`),
//! becomes one `malformed_event` error payload. Either way nothing more is translated, so the
//! relay ends the stream as failed. Memory is the identity prefix and a few counters.

use super::{finish_reason, prompt_tokens};
use crate::error::ErrorBody;
use serde::Deserialize;
use std::borrow::Cow;
use std::fmt::Write as _;

/// The error payload for an event this translator cannot read.
const MALFORMED: &str = "malformed_event";
/// Every chunk after its `delta`.
const OPEN_TAIL: &str = r#","logprobs":null,"finish_reason":null}]}"#;

/// Turns Anthropic's Messages stream events into the OpenAI `chat.completion.chunk` payloads an
/// OpenAI provider would have sent for the same reply.
#[derive(Debug)]
pub struct StreamTranslator {
    created: u64,
    /// `{"id":…,"object":"chat.completion.chunk","created":…,"model":…,"choices":[`, from
    /// `message_start`.
    prefix: Option<String>,
    /// An ending was written (`[DONE]` or an error): nothing more is translated.
    ended: bool,
    /// `tool_use` blocks started so far.
    tool_calls: u32,
    /// The open `tool_use` block: (Anthropic content index, OpenAI tool-call index).
    open_tool: Option<(u64, u32)>,
    finish_reason: Option<&'static str>,
    input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    output_tokens: u64,
}

/// Any Messages stream event: the fields of every known type, each optional, so one parse reads
/// them all; unknown fields are skipped.
#[derive(Debug, Deserialize)]
struct EventView<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(default)]
    index: Option<u64>,
    #[serde(borrow, default)]
    message: Option<MessageView<'a>>,
    #[serde(borrow, default)]
    content_block: Option<BlockView<'a>>,
    #[serde(borrow, default)]
    delta: Option<DeltaView<'a>>,
    #[serde(default)]
    usage: Option<UsageView>,
    #[serde(borrow, default)]
    error: Option<ErrorView<'a>>,
}

#[derive(Debug, Deserialize)]
struct MessageView<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    usage: Option<UsageView>,
}

#[derive(Debug, Deserialize)]
struct BlockView<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
}

/// A content block's delta, or the message's (`stop_reason`).
#[derive(Debug, Deserialize)]
struct DeltaView<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    partial_json: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    stop_reason: Option<Cow<'a, str>>,
}

#[derive(Debug, Deserialize)]
struct UsageView {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct ErrorView<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
}

/// Just the type, for data the full view could not read.
#[derive(Debug, Deserialize)]
struct KindOnly<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
}

/// The event types this translator reads.
const KNOWN_EVENTS: &[&str] = &[
    "message_start",
    "content_block_start",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
    "ping",
    "error",
];

/// A known event lacked what it needs.
struct Malformed;

impl StreamTranslator {
    /// `created`: unix seconds for the chunks.
    pub fn new(created: u64) -> Self {
        Self {
            created,
            prefix: None,
            ended: false,
            tool_calls: 0,
            open_tool: None,
            finish_reason: None,
            input_tokens: None,
            cache_creation_input_tokens: None,
            cache_read_input_tokens: None,
            output_tokens: 0,
        }
    }

    /// Translates one upstream SSE event (its `event:` name and its `data`), appending 0..n OpenAI
    /// `data:` payloads (JSON strings, or the literal `[DONE]`) to `out`.
    pub fn translate(&mut self, event: Option<&str>, data: &str, out: &mut Vec<String>) {
        if self.ended {
            return;
        }
        // Every event is an object (serde would also read a struct from an array).
        if !data.trim_start().starts_with('{') {
            self.fail(out, "malformed Anthropic event", MALFORMED);
            return;
        }
        let view = match serde_json::from_str::<EventView<'_>>(data) {
            Ok(view) => view,
            Err(_) => {
                // A shape this translator does not read is fine for a type it does not know.
                let known = match serde_json::from_str::<KindOnly<'_>>(data) {
                    Ok(k) => k.kind.as_deref().or(event).is_some_and(is_known),
                    Err(_) => true,
                };
                if known {
                    self.fail(out, "malformed Anthropic event", MALFORMED);
                }
                return;
            }
        };
        // Anthropic sends the type both ways; the data's is the one its SDKs read.
        let kind = view.kind.as_deref().or(event).unwrap_or("");
        let read = match kind {
            "message_start" => self.message_start(&view, out),
            "content_block_start" => self.block_start(&view, out),
            "content_block_delta" => self.block_delta(&view, out),
            "content_block_stop" => self.block_stop(&view),
            "message_delta" => self.message_delta(&view),
            "message_stop" => self.message_stop(out),
            "error" => {
                let error = view.error.as_ref();
                let kind = error.and_then(|e| e.kind.as_deref()).unwrap_or("api_error");
                let message = error
                    .and_then(|e| e.message.as_deref())
                    .unwrap_or("the upstream provider reported an error");
                self.fail(out, message, kind);
                Ok(())
            }
            // `ping`, and event types added later.
            _ => Ok(()),
        };
        if read.is_err() {
            self.fail(out, "malformed Anthropic event", MALFORMED);
        }
    }

    fn message_start(
        &mut self,
        view: &EventView<'_>,
        out: &mut Vec<String>,
    ) -> Result<(), Malformed> {
        if self.prefix.is_some() {
            return Err(Malformed);
        }
        let message = view.message.as_ref().ok_or(Malformed)?;
        let (Some(id), Some(model)) = (message.id.as_deref(), message.model.as_deref()) else {
            return Err(Malformed);
        };
        if let Some(usage) = &message.usage {
            self.learn_usage(usage);
        }
        let mut prefix = String::with_capacity(id.len() + model.len() + 80);
        prefix.push_str(r#"{"id":"#);
        push_json_str(&mut prefix, id);
        let _ = write!(
            prefix,
            r#","object":"chat.completion.chunk","created":{},"model":"#,
            self.created
        );
        push_json_str(&mut prefix, model);
        prefix.push_str(r#","choices":["#);
        let mut chunk = open_chunk(&prefix, 32);
        chunk.push_str(r#"{"role":"assistant","content":""}"#);
        chunk.push_str(OPEN_TAIL);
        out.push(chunk);
        self.prefix = Some(prefix);
        Ok(())
    }

    fn block_start(
        &mut self,
        view: &EventView<'_>,
        out: &mut Vec<String>,
    ) -> Result<(), Malformed> {
        let prefix = self.prefix.as_deref().ok_or(Malformed)?;
        let index = view.index.ok_or(Malformed)?;
        let block = view.content_block.as_ref().ok_or(Malformed)?;
        self.open_tool = None;
        match block.kind.as_deref().ok_or(Malformed)? {
            "text" => {
                if let Some(text) = block.text.as_deref().filter(|t| !t.is_empty()) {
                    out.push(content_chunk(prefix, text));
                }
            }
            "tool_use" => {
                let (Some(id), Some(name)) = (block.id.as_deref(), block.name.as_deref()) else {
                    return Err(Malformed);
                };
                let call = self.tool_calls;
                self.tool_calls = self.tool_calls.saturating_add(1);
                self.open_tool = Some((index, call));
                let mut chunk = open_chunk(prefix, id.len() + name.len() + 80);
                let _ = write!(chunk, r#"{{"tool_calls":[{{"index":{call},"id":"#);
                push_json_str(&mut chunk, id);
                chunk.push_str(r#","type":"function","function":{"name":"#);
                push_json_str(&mut chunk, name);
                chunk.push_str(r#","arguments":""}}]}"#);
                chunk.push_str(OPEN_TAIL);
                out.push(chunk);
            }
            // Thinking, server tools and their results, and block types added later.
            _ => {}
        }
        Ok(())
    }

    fn block_delta(
        &mut self,
        view: &EventView<'_>,
        out: &mut Vec<String>,
    ) -> Result<(), Malformed> {
        let prefix = self.prefix.as_deref().ok_or(Malformed)?;
        let index = view.index.ok_or(Malformed)?;
        let delta = view.delta.as_ref().ok_or(Malformed)?;
        match delta.kind.as_deref().ok_or(Malformed)? {
            "text_delta" => {
                let text = delta.text.as_deref().ok_or(Malformed)?;
                if !text.is_empty() {
                    out.push(content_chunk(prefix, text));
                }
            }
            "input_json_delta" => {
                let json = delta.partial_json.as_deref().ok_or(Malformed)?;
                // Only a client tool's input is relayed (not a server tool's).
                if let Some((_, call)) = self.open_tool.filter(|(open, _)| *open == index) {
                    if !json.is_empty() {
                        let mut chunk = open_chunk(prefix, json.len() + 64);
                        let _ = write!(
                            chunk,
                            r#"{{"tool_calls":[{{"index":{call},"function":{{"arguments":"#
                        );
                        push_json_str(&mut chunk, json);
                        chunk.push_str("}}]}");
                        chunk.push_str(OPEN_TAIL);
                        out.push(chunk);
                    }
                }
            }
            // thinking_delta, signature_delta, citations_delta, and delta types added later.
            _ => {}
        }
        Ok(())
    }

    fn block_stop(&mut self, view: &EventView<'_>) -> Result<(), Malformed> {
        self.prefix.as_ref().ok_or(Malformed)?;
        let index = view.index.ok_or(Malformed)?;
        if self.open_tool.is_some_and(|(open, _)| open == index) {
            self.open_tool = None;
        }
        Ok(())
    }

    fn message_delta(&mut self, view: &EventView<'_>) -> Result<(), Malformed> {
        self.prefix.as_ref().ok_or(Malformed)?;
        let delta = view.delta.as_ref().ok_or(Malformed)?;
        if let Some(stop) = delta.stop_reason.as_deref() {
            self.finish_reason = Some(finish_reason(Some(stop)));
        }
        // Counts here are cumulative; a missing one keeps what message_start said.
        if let Some(usage) = &view.usage {
            self.learn_usage(usage);
        }
        Ok(())
    }

    fn message_stop(&mut self, out: &mut Vec<String>) -> Result<(), Malformed> {
        let prefix = self.prefix.as_deref().ok_or(Malformed)?;
        let finish = self.finish_reason.unwrap_or_else(|| finish_reason(None));
        let mut chunk = open_chunk(prefix, 48);
        let _ = write!(
            chunk,
            r#"{{}},"logprobs":null,"finish_reason":"{finish}"}}]}}"#
        );
        out.push(chunk);
        let input = prompt_tokens(
            self.input_tokens,
            self.cache_creation_input_tokens,
            self.cache_read_input_tokens,
        );
        let output = self.output_tokens;
        let mut usage = String::with_capacity(prefix.len() + 96);
        usage.push_str(prefix);
        let _ = write!(
            usage,
            r#"],"usage":{{"prompt_tokens":{input},"completion_tokens":{output},"total_tokens":{}}}}}"#,
            input.saturating_add(output)
        );
        out.push(usage);
        out.push("[DONE]".into());
        self.ended = true;
        Ok(())
    }

    fn learn_usage(&mut self, usage: &UsageView) {
        if usage.input_tokens.is_some() {
            self.input_tokens = usage.input_tokens;
        }
        if usage.cache_creation_input_tokens.is_some() {
            self.cache_creation_input_tokens = usage.cache_creation_input_tokens;
        }
        if usage.cache_read_input_tokens.is_some() {
            self.cache_read_input_tokens = usage.cache_read_input_tokens;
        }
        if let Some(output) = usage.output_tokens {
            self.output_tokens = output;
        }
    }

    /// Ends the translation with one error payload.
    fn fail(&mut self, out: &mut Vec<String>, message: &str, kind: &str) {
        out.push(ErrorBody::new(message, kind, kind).to_json());
        self.ended = true;
    }
}

fn is_known(kind: &str) -> bool {
    KNOWN_EVENTS.contains(&kind)
}

/// A chunk up to its `delta`, with room for `extra` more bytes.
fn open_chunk(prefix: &str, extra: usize) -> String {
    let mut chunk = String::with_capacity(prefix.len() + extra + 64);
    chunk.push_str(prefix);
    chunk.push_str(r#"{"index":0,"delta":"#);
    chunk
}

fn content_chunk(prefix: &str, text: &str) -> String {
    let mut chunk = open_chunk(prefix, text.len() + 16);
    chunk.push_str(r#"{"content":"#);
    push_json_str(&mut chunk, text);
    chunk.push('}');
    chunk.push_str(OPEN_TAIL);
    chunk
}

/// Appends `s` as a JSON string literal.
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, byte) in s.bytes().enumerate() {
        let escape = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x00..=0x1f => "",
            _ => continue,
        };
        // `i` is at an ASCII byte, so both slices end on character boundaries.
        out.push_str(s.get(start..i).unwrap_or_default());
        if escape.is_empty() {
            let _ = write!(out, "\\u{byte:04x}");
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(s.get(start..).unwrap_or_default());
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    /// The tool-use stream from the Anthropic Python SDK's test fixtures
    /// (`tests/lib/streaming/fixtures/tool_use_response.txt`), with cache figures added.
    const TOOL_USE_STREAM: &[(&str, &str)] = &[
        (
            "message_start",
            r#"{"type":"message_start","message":{"id":"msg_019Q1hrJbZG26Fb9BQhrkHEr","type":"message","role":"assistant","model":"claude-sonnet-4-20250514","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":377,"cache_creation_input_tokens":20,"cache_read_input_tokens":3,"output_tokens":1,"service_tier":"standard"}}}"#,
        ),
        (
            "content_block_start",
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        ),
        ("ping", r#"{"type": "ping"}"#),
        (
            "content_block_delta",
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"I"}}"#,
        ),
        (
            "content_block_delta",
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"'ll check the current weather in Paris for you."}}"#,
        ),
        (
            "content_block_stop",
            r#"{"type":"content_block_stop","index":0}"#,
        ),
        (
            "content_block_start",
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01NRLabsLyVHZPKxbKvkfSMn","name":"get_weather","caller":{"type":"direct"},"input":{}}}"#,
        ),
        (
            "content_block_delta",
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}"#,
        ),
        (
            "content_block_delta",
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"locati"}}"#,
        ),
        (
            "content_block_delta",
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"on\": \"P"}}"#,
        ),
        (
            "content_block_delta",
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"ar"}}"#,
        ),
        (
            "content_block_delta",
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"is\"}"}}"#,
        ),
        (
            "content_block_stop",
            r#"{"type":"content_block_stop","index":1}"#,
        ),
        (
            "message_delta",
            r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":65}}"#,
        ),
        ("message_stop", r#"{"type":"message_stop"}"#),
    ];

    fn run(events: &[(&str, &str)]) -> Vec<String> {
        let mut translator = StreamTranslator::new(1_700_000_000);
        let mut out = Vec::new();
        for (event, data) in events {
            translator.translate(Some(event), data, &mut out);
        }
        out
    }

    fn parsed(out: &[String]) -> Vec<Value> {
        out.iter()
            .map(|p| {
                if p == "[DONE]" {
                    Value::from("[DONE]")
                } else {
                    serde_json::from_str(p).unwrap()
                }
            })
            .collect()
    }

    fn chunk(delta: Value, finish: Value) -> Value {
        json!({
            "id": "msg_019Q1hrJbZG26Fb9BQhrkHEr", "object": "chat.completion.chunk",
            "created": 1_700_000_000, "model": "claude-sonnet-4-20250514",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        })
    }

    fn arguments(index: u64, text: &str) -> Value {
        chunk(
            json!({"tool_calls": [{"index": index, "function": {"arguments": text}}]}),
            Value::Null,
        )
    }

    /// A stream of `message_start`, `body` and an ending with `stop_reason`.
    fn stream_with<'a>(
        body: &[(&'a str, &'a str)],
        message_delta: &'a str,
    ) -> Vec<(&'a str, &'a str)> {
        let mut events = vec![TOOL_USE_STREAM[0]];
        events.extend_from_slice(body);
        events.push(("message_delta", message_delta));
        events.push(("message_stop", r#"{"type":"message_stop"}"#));
        events
    }

    #[test]
    fn a_tool_use_stream_becomes_openai_chunks() {
        let out = run(TOOL_USE_STREAM);
        assert_eq!(
            parsed(&out),
            vec![
                chunk(json!({"role": "assistant", "content": ""}), Value::Null),
                chunk(json!({"content": "I"}), Value::Null),
                chunk(
                    json!({"content": "'ll check the current weather in Paris for you."}),
                    Value::Null
                ),
                chunk(
                    json!({"tool_calls": [{"index": 0, "id": "toolu_01NRLabsLyVHZPKxbKvkfSMn",
                        "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
                    Value::Null
                ),
                arguments(0, "{\"locati"),
                arguments(0, "on\": \"P"),
                arguments(0, "ar"),
                arguments(0, "is\"}"),
                chunk(json!({}), json!("tool_calls")),
                json!({
                    "id": "msg_019Q1hrJbZG26Fb9BQhrkHEr", "object": "chat.completion.chunk",
                    "created": 1_700_000_000, "model": "claude-sonnet-4-20250514", "choices": [],
                    "usage": {"prompt_tokens": 400, "completion_tokens": 65, "total_tokens": 465},
                }),
                Value::from("[DONE]"),
            ]
        );
        let joined: String = parsed(&out)
            .iter()
            .filter_map(|c| c.pointer("/choices/0/delta/tool_calls/0/function/arguments"))
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(
            serde_json::from_str::<Value>(&joined).unwrap(),
            json!({"location": "Paris"})
        );
    }

    #[test]
    fn the_relay_reads_the_chunks_like_an_openai_stream() {
        use crate::relay::chunk::Payload;
        let out = run(TOOL_USE_STREAM);
        let mut finished = 0;
        for data in &out {
            match Payload::parse(data) {
                Payload::Chunk(view) => finished += usize::from(view.has_finish_reason()),
                Payload::Done => {}
                other => panic!("{data} read as {other:?}"),
            }
        }
        assert_eq!(finished, 1);
        let Payload::Chunk(usage) = Payload::parse(&out[out.len() - 2]) else {
            panic!("a usage chunk")
        };
        assert!(usage.is_usage_only());
        assert_eq!(
            usage.usage().map(|u| (u.input_tokens, u.output_tokens)),
            Some((400, 65))
        );
    }

    #[test]
    fn tool_calls_are_numbered_apart_from_other_blocks() {
        let out = run(&stream_with(
            &[
                (
                    "content_block_start",
                    r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}"#,
                ),
                (
                    "content_block_delta",
                    r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Hmm"}}"#,
                ),
                (
                    "content_block_delta",
                    r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"abc"}}"#,
                ),
                (
                    "content_block_stop",
                    r#"{"type":"content_block_stop","index":0}"#,
                ),
                (
                    "content_block_start",
                    r#"{"type":"content_block_start","index":1,"content_block":{"type":"server_tool_use","id":"srvtoolu_1","name":"web_search","input":{}}}"#,
                ),
                (
                    "content_block_delta",
                    r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"query\":\"x\"}"}}"#,
                ),
                (
                    "content_block_stop",
                    r#"{"type":"content_block_stop","index":1}"#,
                ),
                (
                    "content_block_start",
                    r#"{"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_a","name":"a","input":{}}}"#,
                ),
                (
                    "content_block_delta",
                    r#"{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{}"}}"#,
                ),
                (
                    "content_block_stop",
                    r#"{"type":"content_block_stop","index":2}"#,
                ),
                (
                    "content_block_start",
                    r#"{"type":"content_block_start","index":3,"content_block":{"type":"tool_use","id":"toolu_b","name":"b","input":{}}}"#,
                ),
                (
                    "content_block_delta",
                    r#"{"type":"content_block_delta","index":3,"delta":{"type":"input_json_delta","partial_json":"{\"n\":1}"}}"#,
                ),
                (
                    "content_block_stop",
                    r#"{"type":"content_block_stop","index":3}"#,
                ),
                (
                    "content_block_delta",
                    r#"{"type":"content_block_delta","index":3,"delta":{"type":"input_json_delta","partial_json":"late"}}"#,
                ),
            ],
            r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":9}}"#,
        ));
        let calls: Vec<Value> = parsed(&out)
            .iter()
            .filter_map(|c| c.pointer("/choices/0/delta/tool_calls/0").cloned())
            .collect();
        assert_eq!(
            calls,
            vec![
                json!({"index": 0, "id": "toolu_a", "type": "function", "function": {"name": "a", "arguments": ""}}),
                json!({"index": 0, "function": {"arguments": "{}"}}),
                json!({"index": 1, "id": "toolu_b", "type": "function", "function": {"name": "b", "arguments": ""}}),
                json!({"index": 1, "function": {"arguments": "{\"n\":1}"}}),
            ]
        );
        // role, 4 tool chunks, finish, usage, [DONE]: thinking and the server tool are not relayed.
        assert_eq!(out.len(), 8);
    }

    #[test]
    fn stop_reasons_become_finish_reasons() {
        for (stop, finish) in [
            (r#""end_turn""#, "stop"),
            (r#""stop_sequence""#, "stop"),
            (r#""pause_turn""#, "stop"),
            (r#""max_tokens""#, "length"),
            (r#""tool_use""#, "tool_calls"),
            (r#""refusal""#, "content_filter"),
            (r#""a_new_reason""#, "stop"),
            ("null", "stop"),
        ] {
            let delta = format!(
                r#"{{"type":"message_delta","delta":{{"stop_reason":{stop}}},"usage":{{"output_tokens":2}}}}"#
            );
            let out = parsed(&run(&stream_with(&[], &delta)));
            assert_eq!(out[1]["choices"][0]["finish_reason"], finish, "{stop}");
        }
        // No message_delta at all: a normal stop, with message_start's counts.
        let out = parsed(&run(&[TOOL_USE_STREAM[0], TOOL_USE_STREAM[14]]));
        assert_eq!(out[1]["choices"][0]["finish_reason"], "stop");
        assert_eq!(out[2]["usage"]["completion_tokens"], 1);
    }

    #[test]
    fn message_delta_usage_updates_the_counts() {
        let out = parsed(&run(&stream_with(
            &[],
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"input_tokens":500,"cache_read_input_tokens":null,"output_tokens":7}}"#,
        )));
        assert_eq!(
            out[2]["usage"],
            json!({"prompt_tokens": 523, "completion_tokens": 7, "total_tokens": 530})
        );
    }

    #[test]
    fn an_error_event_ends_with_one_error_payload() {
        let out = run(&[
            TOOL_USE_STREAM[0],
            TOOL_USE_STREAM[3],
            (
                "error",
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            ),
            TOOL_USE_STREAM[4],
            (
                "error",
                r#"{"type":"error","error":{"type":"api_error","message":"again"}}"#,
            ),
            TOOL_USE_STREAM[14],
        ]);
        assert_eq!(out.len(), 3);
        assert_eq!(
            serde_json::from_str::<Value>(&out[2]).unwrap(),
            json!({"error": {"message": "Overloaded", "type": "overloaded_error", "param": null, "code": "overloaded_error"}})
        );
        // Named only by its data, before anything else.
        let out = parsed(&run(&[(
            "",
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        )]));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0]["error"]["code"], "overloaded_error");
    }

    #[test]
    fn malformed_events_end_with_one_malformed_payload() {
        let malformed = json!({"error": {"message": "malformed Anthropic event", "type": "malformed_event", "param": null, "code": "malformed_event"}});
        for bad in [
            ("content_block_delta", "not json"),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta"}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":5}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","delta":{"type":"text_delta","text":"x"}}"#,
            ),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","name":"f"}}"#,
            ),
            (
                "message_delta",
                r#"{"type":"message_delta","usage":{"output_tokens":3}}"#,
            ),
            ("message_start", TOOL_USE_STREAM[0].1),
            ("message_delta", "[1, 2]"),
        ] {
            let out = run(&[TOOL_USE_STREAM[0], bad, TOOL_USE_STREAM[3], bad]);
            assert_eq!(out.len(), 2, "{bad:?}");
            assert_eq!(
                serde_json::from_str::<Value>(&out[1]).unwrap(),
                malformed,
                "{bad:?}"
            );
        }
        // Content before message_start has no identity to go out under.
        let out = run(&[TOOL_USE_STREAM[3]]);
        assert_eq!(parsed(&out), vec![malformed.clone()]);
        let out = run(&[(
            "message_start",
            r#"{"type":"message_start","message":{"id":"m"}}"#,
        )]);
        assert_eq!(parsed(&out), vec![malformed]);
    }

    #[test]
    fn unknown_events_and_shapes_are_skipped() {
        let out = run(&stream_with(
            &[
                ("ping", r#"{"type":"ping"}"#),
                (
                    "future_event",
                    r#"{"type":"future_event","index":"not a number","message":7}"#,
                ),
                (
                    "content_block_start",
                    r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":"Hi \"you\"\n"}}"#,
                ),
                (
                    "content_block_delta",
                    r#"{"type":"content_block_delta","index":0,"delta":{"type":"citations_delta","citation":{"type":"char_location"}}}"#,
                ),
                (
                    "content_block_delta",
                    r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"\u00e9\u0001"}}"#,
                ),
                // The event name stands in for a missing type.
                (
                    "content_block_delta",
                    r#"{"index":0,"delta":{"type":"text_delta","text":"!"}}"#,
                ),
            ],
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":4}}"#,
        ));
        let texts: Vec<Value> = parsed(&out)
            .iter()
            .filter_map(|c| c.pointer("/choices/0/delta/content").cloned())
            .collect();
        assert_eq!(
            texts,
            vec![
                json!(""),
                json!("Hi \"you\"\n"),
                json!("é\u{1}"),
                json!("!")
            ]
        );
        assert_eq!(out.last().map(String::as_str), Some("[DONE]"));
    }

    #[test]
    fn identity_is_escaped() {
        let out = run(&[(
            "message_start",
            r#"{"type":"message_start","message":{"id":"m\"1","model":"c\\l","usage":{"input_tokens":1,"output_tokens":1}}}"#,
        )]);
        let v: Value = serde_json::from_str(&out[0]).unwrap();
        assert_eq!(
            (v["id"].as_str(), v["model"].as_str()),
            (Some("m\"1"), Some("c\\l"))
        );
    }

    #[test]
    fn json_strings_round_trip() {
        for s in [
            "",
            "plain",
            "q\"b\\s/",
            "\n\r\t\u{0}\u{1f}\u{7f}",
            "é漢字🦀\u{2028}",
        ] {
            let mut out = String::new();
            push_json_str(&mut out, s);
            assert_eq!(serde_json::from_str::<String>(&out).unwrap(), s);
        }
    }

    fn event_names() -> impl Strategy<Value = Option<String>> {
        prop_oneof![
            Just(None),
            proptest::sample::select(KNOWN_EVENTS).prop_map(|s| Some(s.to_string())),
            any::<String>().prop_map(Some),
        ]
    }

    /// Real events, cut anywhere, and noise.
    fn event_data() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            (proptest::sample::select(TOOL_USE_STREAM), any::<proptest::sample::Index>()).prop_map(
                |((_, data), cut)| {
                    let at = cut.index(data.len() + 1);
                    data.get(..at).unwrap_or(data).to_string()
                }
            ),
            proptest::sample::select(TOOL_USE_STREAM).prop_map(|(_, data)| data.to_string()),
            "\\{\"type\":\"(message_start|content_block_start|content_block_delta|message_delta|message_stop|error)\"(,\"[a-z_]{1,12}\":(null|1|-1|\"x\"|\\{\\}|\\[\\]))*\\}",
        ]
    }

    proptest! {
        #[test]
        fn any_input_is_safe(events in proptest::collection::vec((event_names(), event_data()), 0..40)) {
            let mut translator = StreamTranslator::new(0);
            let mut out = Vec::new();
            for (event, data) in &events {
                translator.translate(event.as_deref(), data, &mut out);
            }
            let mut ended = false;
            for payload in &out {
                prop_assert!(!ended, "a payload after the ending: {:?}", out);
                if payload == "[DONE]" {
                    ended = true;
                    continue;
                }
                let value: Value = serde_json::from_str(payload).unwrap();
                if value.get("error").is_some() {
                    ended = true;
                }
            }
        }
    }
}
