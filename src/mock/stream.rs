//! The body of one mock reply: the OpenAI-shaped JSON objects, and the SSE event stream of either
//! API family.
//!
//! A [`Reply`] is everything decided about an answer before it starts (format, how many tokens,
//! tool call, pace, framing, fault). [`Reply::sse_stream`] turns it into a body stream that
//! yields each SSE event as its own chunk (each byte, under `bytes` framing), sleeping before the
//! first event and before each content event; its state owns the [`EndRecorder`], so dropping the
//! body early records [`super::StreamEnd::Dropped`]. The Anthropic shapes live in `anthropic.rs`;
//! this module knows nothing of routes or request parsing.

use std::collections::VecDeque;
use std::io;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use serde_json::{json, Value};

use super::knobs::{Api, Framing};
use super::recorder::EndRecorder;
use super::words::{generated_text, token_text, TOOL_ARGUMENTS, TOOL_ARGUMENT_FRAGMENTS};

/// A mid-reply failure (the status fault is answered before any reply exists).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Interruption {
    ErrorEvent,
    AbruptClose,
    Stall,
}

/// The tool call a reply ends with; its arguments are always [`TOOL_ARGUMENTS`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ToolCall {
    /// `call_mock_…` (OpenAI) or `toolu_mock_…` (Anthropic).
    pub id: String,
    pub name: String,
    /// o200k tokens of [`TOOL_ARGUMENTS`]: output tokens on top of the text.
    pub argument_tokens: u32,
}

/// Everything decided about one answer before it starts.
#[derive(Clone, Debug)]
pub(crate) struct Reply {
    /// The API family whose shapes the reply takes.
    pub api: Api,
    pub id: String,
    pub created: u64,
    /// The model exactly as the request sent it (knob suffix included).
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
    /// Content (text) tokens to generate.
    pub tokens: u32,
    /// OpenAI's name for the ending: `stop`, `length` or `tool_calls`.
    pub finish_reason: &'static str,
    /// Anthropic's name for the same ending: `end_turn`, `max_tokens` or `tool_use`.
    pub stop_reason: &'static str,
    pub prompt_tokens: u32,
    pub first_token_delay: Duration,
    /// Pause before each content event; zero means no pacing.
    pub token_interval: Duration,
    /// Fault to inject, and after how many content tokens (already capped at `tokens`).
    pub interruption: Option<(Interruption, u32)>,
    /// The tool call that follows the text, if any.
    pub tool: Option<ToolCall>,
    pub framing: Framing,
}

/// The event that ends an OpenAI stream.
const DONE: &str = "data: [DONE]\n\n";

/// The keep-alive `pings` framing puts before each OpenAI content event.
const OPENAI_PING: &str = ": ping\n\n";

impl Reply {
    /// Output tokens: the text's, plus the tool call's arguments.
    pub(crate) fn output_tokens(&self) -> u32 {
        let arguments = self.tool.as_ref().map_or(0, |tool| tool.argument_tokens);
        self.tokens.saturating_add(arguments)
    }

    /// The non-streamed `chat.completion` object.
    pub(crate) fn completion(&self) -> Value {
        let mut message = json!({
            "role": "assistant",
            "content": generated_text(self.tokens),
            "refusal": null,
        });
        if let Some(tool) = &self.tool {
            message["tool_calls"] = json!([{
                "id": tool.id,
                "type": "function",
                "function": {"name": tool.name, "arguments": TOOL_ARGUMENTS},
            }]);
        }
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_mock",
            "choices": [{
                "index": 0,
                "message": message,
                "logprobs": null,
                "finish_reason": self.finish_reason,
            }],
            "usage": self.usage(),
        })
    }

    /// The OpenAI error object sent for an injected `error@N` fault.
    pub(crate) fn fault_error(&self) -> Value {
        error_body(
            "mock fault: the provider failed mid-reply",
            "server_error",
            "mock_fault",
        )
    }

    /// The SSE body. OpenAI: role chunk, content chunks, tool-call chunks, finish chunk, usage
    /// chunk, `[DONE]`. Anthropic: the event sequence of its Messages API (`anthropic.rs`). An
    /// injected interruption takes the place of everything after its token.
    pub(crate) fn sse_stream(
        self,
        guard: EndRecorder,
    ) -> impl Stream<Item = Result<Bytes, io::Error>> + 'static {
        let state = SseState {
            reply: self,
            guard,
            step: Step::Open,
            pending: VecDeque::new(),
        };
        // The guard stays inside `state`, which the unfold future owns while it is pending.
        futures::stream::unfold(state, |mut state| async move {
            let item = state.advance().await?;
            Some((item, state))
        })
    }

    fn usage(&self) -> Value {
        let completion = self.output_tokens();
        let total = u64::from(self.prompt_tokens) + u64::from(completion);
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": total,
        })
    }

    fn chunk(&self, choices: Value) -> Value {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_mock",
            "choices": choices,
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    }

    fn delta_chunk(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        self.chunk(json!([{
            "index": 0,
            "delta": delta,
            "logprobs": null,
            "finish_reason": finish_reason,
        }]))
    }

    fn role_event(&self) -> Bytes {
        sse(&self.delta_chunk(json!({"role": "assistant", "content": ""}), None))
    }

    fn token_event(&self, index: u32) -> Bytes {
        sse(&self.delta_chunk(json!({"content": token_text(index)}), None))
    }

    /// The first tool-call chunk: id, type, name and empty arguments.
    fn tool_start_event(&self, tool: &ToolCall) -> Bytes {
        let call = json!({
            "index": 0,
            "id": tool.id,
            "type": "function",
            "function": {"name": tool.name, "arguments": ""},
        });
        sse(&self.delta_chunk(json!({"tool_calls": [call]}), None))
    }

    fn tool_arguments_event(&self, fragment: &str) -> Bytes {
        let call = json!({"index": 0, "function": {"arguments": fragment}});
        sse(&self.delta_chunk(json!({"tool_calls": [call]}), None))
    }

    fn finish_event(&self) -> Bytes {
        sse(&self.delta_chunk(json!({}), Some(self.finish_reason)))
    }

    fn usage_event(&self) -> Bytes {
        let mut chunk = self.chunk(json!([]));
        chunk["usage"] = self.usage();
        sse(&chunk)
    }

    /// Argument fragment `k` of the tool call's stream: OpenAI sends its empty first fragment in
    /// the start chunk, Anthropic as a delta of its own, as the real APIs do.
    fn tool_fragment(&self, k: usize) -> Option<&'static str> {
        match self.api {
            Api::OpenAi => TOOL_ARGUMENT_FRAGMENTS.get(k).copied(),
            Api::Anthropic => match k {
                0 => Some(""),
                k => TOOL_ARGUMENT_FRAGMENTS.get(k - 1).copied(),
            },
        }
    }
}

/// An OpenAI error body: `{"error":{"message","type","param","code"}}`.
pub(crate) fn error_body(message: &str, kind: &str, code: &str) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

/// An unnamed SSE event: `data: <json>`.
fn sse(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

/// A named SSE event: `event: <name>` then `data: <json>`.
pub(crate) fn named_sse(name: &str, value: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {value}\n\n"))
}

/// Where the SSE body is; each step emits the events of one stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// OpenAI: the role chunk. Anthropic: `message_start`, `content_block_start`, `ping`.
    Open,
    /// Content token with this index is next.
    Token(u32),
    Interrupt(Interruption),
    /// Anthropic: `content_block_stop` of the text block.
    TextStop,
    /// The tool call's first event.
    ToolStart,
    /// Tool-argument fragment `k` is next.
    ToolArguments(usize),
    /// Anthropic: `content_block_stop` of the tool block.
    ToolStop,
    /// OpenAI: the finish chunk. Anthropic: `message_delta`.
    Finish,
    /// OpenAI: the usage chunk.
    Usage,
    /// OpenAI: `[DONE]`. Anthropic: `message_stop`.
    Done,
    End,
}

struct SseState {
    reply: Reply,
    guard: EndRecorder,
    step: Step,
    /// Framed body items produced but not yet yielded.
    pending: VecDeque<Bytes>,
}

impl SseState {
    /// Produces the next body item, or `None` once the body has ended.
    async fn advance(&mut self) -> Option<Result<Bytes, io::Error>> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                if self.reply.framing.bytes {
                    // Pending between bytes makes the server write each one on its own.
                    tokio::task::yield_now().await;
                }
                return Some(Ok(item));
            }
            match self.step {
                Step::Interrupt(kind) => {
                    if let Some(err) = self.interrupt(kind).await {
                        return Some(Err(err));
                    }
                }
                Step::End => return None,
                step => self.produce(step).await,
            }
        }
    }

    /// Runs one step: waits as it must, then queues its events and moves on.
    async fn produce(&mut self, step: Step) {
        let api = self.reply.api;
        match step {
            Step::Open => {
                if !self.reply.first_token_delay.is_zero() {
                    tokio::time::sleep(self.reply.first_token_delay).await;
                }
                self.step = self.after_tokens(0);
                match api {
                    Api::OpenAi => self.emit(self.reply.role_event(), false),
                    Api::Anthropic => {
                        for event in self.reply.anthropic_open_events() {
                            self.emit(event, false);
                        }
                    }
                }
            }
            Step::Token(index) => {
                pause(self.reply.token_interval).await;
                self.guard.token_sent();
                self.step = self.after_tokens(index.saturating_add(1));
                let event = match api {
                    Api::OpenAi => self.reply.token_event(index),
                    Api::Anthropic => self.reply.anthropic_text_delta(index),
                };
                self.emit(event, true);
            }
            Step::TextStop => {
                self.step = self.after_text();
                self.emit(self.reply.anthropic_block_stop(0), false);
            }
            Step::ToolStart => {
                let Some(tool) = self.reply.tool.clone() else {
                    self.step = Step::Finish;
                    return;
                };
                pause(self.reply.token_interval).await;
                self.step = Step::ToolArguments(0);
                match api {
                    Api::OpenAi => self.emit(self.reply.tool_start_event(&tool), true),
                    Api::Anthropic => self.emit(self.reply.anthropic_tool_start(&tool), false),
                }
            }
            Step::ToolArguments(k) => {
                let Some(fragment) = self.reply.tool_fragment(k) else {
                    self.step = self.after_tool();
                    return;
                };
                pause(self.reply.token_interval).await;
                if self.reply.tool_fragment(k.saturating_add(1)).is_some() {
                    self.step = Step::ToolArguments(k.saturating_add(1));
                } else {
                    let arguments = self.reply.tool.as_ref().map_or(0, |t| t.argument_tokens);
                    self.guard.add_tokens_sent(arguments);
                    self.step = self.after_tool();
                }
                let event = match api {
                    Api::OpenAi => self.reply.tool_arguments_event(fragment),
                    Api::Anthropic => self.reply.anthropic_input_json_delta(fragment),
                };
                self.emit(event, true);
            }
            Step::ToolStop => {
                self.step = Step::Finish;
                self.emit(self.reply.anthropic_block_stop(1), false);
            }
            Step::Finish => {
                self.step = if api == Api::OpenAi && self.reply.include_usage {
                    Step::Usage
                } else {
                    Step::Done
                };
                let event = match api {
                    Api::OpenAi => self.reply.finish_event(),
                    Api::Anthropic => self.reply.anthropic_message_delta(),
                };
                self.emit(event, false);
            }
            Step::Usage => {
                self.step = Step::Done;
                self.emit(self.reply.usage_event(), false);
            }
            Step::Done => {
                self.step = Step::End;
                self.guard.complete();
                let event = match api {
                    Api::OpenAi => Bytes::from_static(DONE.as_bytes()),
                    Api::Anthropic => self.reply.anthropic_message_stop(),
                };
                self.emit(event, false);
            }
            Step::Interrupt(_) | Step::End => {}
        }
    }

    /// The step that follows once `sent` content tokens are out.
    fn after_tokens(&self, sent: u32) -> Step {
        match self.reply.interruption {
            Some((kind, after)) if sent >= after => Step::Interrupt(kind),
            _ if sent >= self.reply.tokens => match self.reply.api {
                Api::OpenAi => self.after_text(),
                Api::Anthropic => Step::TextStop,
            },
            _ => Step::Token(sent),
        }
    }

    /// The step that follows the text (and, for Anthropic, its block's stop).
    fn after_text(&self) -> Step {
        if self.reply.tool.is_some() {
            Step::ToolStart
        } else {
            Step::Finish
        }
    }

    /// The step that follows the last tool-argument fragment.
    fn after_tool(&self) -> Step {
        match self.reply.api {
            Api::OpenAi => Step::Finish,
            Api::Anthropic => Step::ToolStop,
        }
    }

    /// Queues `event` as the framing says; `content` marks an event that carries reply content.
    fn emit(&mut self, event: Bytes, content: bool) {
        if content && self.reply.framing.pings {
            let ping = match self.reply.api {
                Api::OpenAi => Bytes::from_static(OPENAI_PING.as_bytes()),
                Api::Anthropic => self.reply.anthropic_ping(),
            };
            self.queue(ping);
        }
        self.queue(event);
    }

    fn queue(&mut self, event: Bytes) {
        let event = if self.reply.framing.crlf {
            crlf(&event)
        } else {
            event
        };
        if self.reply.framing.bytes {
            self.pending
                .extend((0..event.len()).map(|i| event.slice(i..i + 1)));
        } else {
            self.pending.push_back(event);
        }
    }

    /// Ends the body as `kind` says; `Some` is the error item that aborts the connection.
    async fn interrupt(&mut self, kind: Interruption) -> Option<io::Error> {
        self.step = Step::End;
        // Let the server flush the tokens already yielded: an abort drops unwritten bytes.
        tokio::task::yield_now().await;
        match kind {
            Interruption::ErrorEvent => {
                self.guard.complete();
                let event = match self.reply.api {
                    Api::OpenAi => sse(&self.reply.fault_error()),
                    Api::Anthropic => self.reply.anthropic_error_event(),
                };
                self.emit(event, false);
                None
            }
            Interruption::AbruptClose => {
                self.guard.complete();
                Some(abrupt_close_error(self.guard.tokens_sent()))
            }
            Interruption::Stall => std::future::pending().await,
        }
    }
}

/// `event` with every `\n` line end turned into `\r\n` (the JSON inside escapes its newlines).
fn crlf(event: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(event.len() + 8);
    for &byte in event {
        if byte == b'\n' {
            out.push(b'\r');
        }
        out.push(byte);
    }
    Bytes::from(out)
}

/// The body error that makes actix abort the connection for a `close@N` fault.
pub(crate) fn abrupt_close_error(tokens_sent: u32) -> io::Error {
    io::Error::other(format!(
        "mock fault: abrupt close after {tokens_sent} tokens"
    ))
}

/// Paces content events. With no pacing it still yields once, so the server flushes each event
/// as its own write instead of batching the whole reply.
async fn pause(interval: Duration) {
    if interval.is_zero() {
        tokio::task::yield_now().await;
    } else {
        tokio::time::sleep(interval).await;
    }
}

/// The pause between content tokens at `tokens_per_second`: zero for `<= 0`, infinite or NaN.
pub(crate) fn token_interval(tokens_per_second: f64) -> Duration {
    if tokens_per_second > 0.0 && tokens_per_second.is_finite() {
        Duration::try_from_secs_f64(1.0 / tokens_per_second).unwrap_or(Duration::MAX)
    } else {
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::super::recorder::{MockRecorder, StreamEnd};
    use super::*;
    use crate::relay::sse::{SseEvent, SseParser};
    use futures::StreamExt;
    use std::sync::Arc;

    fn reply(tokens: u32, include_usage: bool) -> Reply {
        Reply {
            api: Api::OpenAi,
            id: "chatcmpl-mock-test".to_owned(),
            created: 1,
            model: "mock-gpt:tokens=3".to_owned(),
            stream: true,
            include_usage,
            tokens,
            finish_reason: "stop",
            stop_reason: "end_turn",
            prompt_tokens: 10,
            first_token_delay: Duration::ZERO,
            token_interval: Duration::ZERO,
            interruption: None,
            tool: None,
            framing: Framing::default(),
        }
    }

    /// Runs the whole body; returns each item as text (`Err` for an error item).
    async fn collect(reply: Reply) -> (Vec<Result<String, String>>, Option<StreamEnd>) {
        let recorder = Arc::new(MockRecorder::default());
        let guard = recorder.start(Vec::new(), Value::Null);
        let items = reply
            .sse_stream(guard)
            .map(|item| {
                item.map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                    .map_err(|err| err.to_string())
            })
            .collect()
            .await;
        let end = recorder.requests().first().and_then(|r| r.end);
        (items, end)
    }

    fn data(event: &Result<String, String>) -> Value {
        let text = event.as_ref().map(String::as_str).unwrap_or_default();
        let json = text
            .strip_prefix("data: ")
            .and_then(|t| t.strip_suffix("\n\n"))
            .unwrap_or_default();
        serde_json::from_str(json).unwrap_or(Value::Null)
    }

    #[tokio::test]
    async fn full_stream_has_role_tokens_finish_usage_done() {
        let (items, end) = collect(reply(3, true)).await;
        assert_eq!(items.len(), 7);
        let role = data(&items[0]);
        assert_eq!(
            role["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        assert_eq!(role["usage"], Value::Null);
        assert_eq!(role["model"], "mock-gpt:tokens=3");
        let text: String = items[1..4]
            .iter()
            .map(|e| {
                data(e)["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect::<Option<_>>()
            .unwrap_or_default();
        assert_eq!(text, generated_text(3));
        let finish = data(&items[4]);
        assert_eq!(finish["choices"][0]["finish_reason"], "stop");
        assert_eq!(finish["choices"][0]["delta"], json!({}));
        let usage = data(&items[5]);
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["total_tokens"], 13);
        assert_eq!(items[6], Ok(DONE.to_owned()));
        assert!(matches!(
            end,
            Some(StreamEnd::Completed { tokens_sent: 3, .. })
        ));
    }

    #[tokio::test]
    async fn without_usage_chunks_carry_no_usage_key() {
        let (items, _) = collect(reply(1, false)).await;
        assert_eq!(items.len(), 4);
        assert!(data(&items[0]).get("usage").is_none());
        assert_eq!(items[3], Ok(DONE.to_owned()));
    }

    #[tokio::test]
    async fn error_fault_ends_with_error_event_and_no_done() {
        let mut faulty = reply(5, true);
        faulty.interruption = Some((Interruption::ErrorEvent, 2));
        let (items, end) = collect(faulty).await;
        assert_eq!(items.len(), 4);
        assert_eq!(data(&items[3])["error"]["code"], "mock_fault");
        assert!(matches!(
            end,
            Some(StreamEnd::Completed { tokens_sent: 2, .. })
        ));
    }

    #[tokio::test]
    async fn close_fault_ends_with_an_error_item() {
        let mut faulty = reply(5, false);
        faulty.interruption = Some((Interruption::AbruptClose, 1));
        let (items, _) = collect(faulty).await;
        assert_eq!(items.len(), 3);
        assert!(items[2].is_err());
    }

    #[tokio::test]
    async fn dropping_a_stalled_stream_records_dropped() {
        let recorder = Arc::new(MockRecorder::default());
        let guard = recorder.start(Vec::new(), Value::Null);
        let mut stalled = reply(5, false);
        stalled.interruption = Some((Interruption::Stall, 1));
        let mut body = Box::pin(stalled.sse_stream(guard));
        assert!(body.next().await.is_some());
        assert!(body.next().await.is_some());
        let more = tokio::time::timeout(Duration::from_millis(50), body.next()).await;
        assert!(more.is_err(), "a stalled stream must stay pending");
        drop(body);
        let end = recorder.requests().first().and_then(|r| r.end);
        assert!(matches!(
            end,
            Some(StreamEnd::Dropped { tokens_sent: 1, .. })
        ));
    }

    #[test]
    fn token_interval_handles_odd_rates() {
        assert_eq!(token_interval(10.0), Duration::from_millis(100));
        assert_eq!(token_interval(0.0), Duration::ZERO);
        assert_eq!(token_interval(-1.0), Duration::ZERO);
        assert_eq!(token_interval(f64::INFINITY), Duration::ZERO);
        assert_eq!(token_interval(f64::NAN), Duration::ZERO);
        assert_eq!(token_interval(1e-300), Duration::MAX);
    }

    #[test]
    fn completion_carries_text_and_usage() {
        let completion = reply(4, false).completion();
        assert_eq!(completion["object"], "chat.completion");
        let message = &completion["choices"][0]["message"];
        assert_eq!(message["content"], generated_text(4));
        assert_eq!(completion["usage"]["completion_tokens"], 4);
        assert_eq!(completion["usage"]["prompt_tokens"], 10);
    }

    /// Events of a whole body, fed to the gateway's own SSE parser item by item.
    fn parse(items: &[Result<String, String>]) -> Vec<SseEvent> {
        let mut parser = SseParser::new(1 << 20);
        let mut events = Vec::new();
        for item in items {
            let bytes = item.as_deref().unwrap_or_default();
            if let Err(err) = parser.feed(bytes.as_bytes(), &mut events) {
                panic!("unparsable body: {err}");
            }
        }
        parser.finish(&mut events);
        events
    }

    fn names(events: &[SseEvent]) -> Vec<&str> {
        events
            .iter()
            .map(|e| e.event.as_deref().unwrap_or("-"))
            .collect()
    }

    fn json_of(event: &SseEvent) -> Value {
        serde_json::from_str(&event.data).unwrap_or(Value::Null)
    }

    fn tool() -> ToolCall {
        ToolCall {
            id: "toolu_mock_test".to_owned(),
            name: "get_weather".to_owned(),
            argument_tokens: 9,
        }
    }

    fn anthropic(tokens: u32, with_tool: bool) -> Reply {
        Reply {
            api: Api::Anthropic,
            id: "msg_mock_test".to_owned(),
            model: "mock-claude:tokens=3".to_owned(),
            include_usage: false,
            finish_reason: if with_tool { "tool_calls" } else { "stop" },
            stop_reason: if with_tool { "tool_use" } else { "end_turn" },
            tool: with_tool.then(tool),
            ..reply(tokens, false)
        }
    }

    const TOOL_SEQUENCE: &[&str] = &[
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ];

    #[tokio::test]
    async fn anthropic_stream_is_the_api_event_sequence() {
        let (items, end) = collect(anthropic(3, true)).await;
        let events = parse(&items);
        assert_eq!(names(&events), TOOL_SEQUENCE);
        for event in &events {
            assert_eq!(json_of(event)["type"].as_str(), event.event.as_deref());
        }
        let start = json_of(&events[0]);
        assert_eq!(
            start["message"],
            json!({
                "id": "msg_mock_test", "type": "message", "role": "assistant",
                "model": "mock-claude:tokens=3", "content": [],
                "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 10, "cache_creation_input_tokens": 0,
                          "cache_read_input_tokens": 0, "output_tokens": 1},
            })
        );
        assert_eq!(
            json_of(&events[1]),
            json!({"type": "content_block_start", "index": 0,
                   "content_block": {"type": "text", "text": ""}})
        );
        let text: String = events[3..6]
            .iter()
            .map(|e| {
                let delta = json_of(e)["delta"].clone();
                assert_eq!(delta["type"], "text_delta");
                delta["text"].as_str().unwrap_or_default().to_owned()
            })
            .collect();
        assert_eq!(text, generated_text(3));
        assert_eq!(
            json_of(&events[6]),
            json!({"type": "content_block_stop", "index": 0})
        );
        assert_eq!(
            json_of(&events[7])["content_block"],
            json!({"type": "tool_use", "id": "toolu_mock_test", "name": "get_weather", "input": {}})
        );
        let arguments: Vec<String> = events[8..13]
            .iter()
            .map(|e| {
                let event = json_of(e);
                assert_eq!(event["index"], 1);
                assert_eq!(event["delta"]["type"], "input_json_delta");
                event["delta"]["partial_json"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        assert_eq!(arguments[0], "", "the API's first fragment is empty");
        assert_eq!(arguments.concat(), TOOL_ARGUMENTS);
        assert_eq!(json_of(&events[13])["index"], 1);
        assert_eq!(
            json_of(&events[14]),
            json!({"type": "message_delta",
                   "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                   "usage": {"output_tokens": 3 + 9}})
        );
        assert!(matches!(
            end,
            Some(StreamEnd::Completed {
                tokens_sent: 12,
                ..
            })
        ));
    }

    #[tokio::test]
    async fn anthropic_stream_without_tool_ends_the_turn() {
        let (items, end) = collect(anthropic(2, false)).await;
        let events = parse(&items);
        assert_eq!(
            names(&events),
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        let delta = json_of(&events[6]);
        assert_eq!(delta["delta"]["stop_reason"], "end_turn");
        assert_eq!(delta["usage"]["output_tokens"], 2);
        assert!(matches!(
            end,
            Some(StreamEnd::Completed { tokens_sent: 2, .. })
        ));
    }

    #[tokio::test]
    async fn anthropic_error_fault_ends_with_an_overloaded_error_event() {
        let mut faulty = anthropic(5, true);
        faulty.interruption = Some((Interruption::ErrorEvent, 2));
        let (items, end) = collect(faulty).await;
        let last = items.last().and_then(|item| item.as_deref().ok());
        assert!(last.is_some_and(|l| l.starts_with("event: error\ndata: {")));
        let events = parse(&items);
        assert_eq!(
            names(&events),
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_delta",
                "error",
            ]
        );
        assert_eq!(
            json_of(&events[5]),
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
        );
        assert!(matches!(
            end,
            Some(StreamEnd::Completed { tokens_sent: 2, .. })
        ));
    }

    #[tokio::test]
    async fn anthropic_close_fault_ends_with_an_error_item() {
        let mut faulty = anthropic(5, false);
        faulty.interruption = Some((Interruption::AbruptClose, 1));
        let (items, _) = collect(faulty).await;
        assert!(items.last().is_some_and(Result::is_err));
        assert_eq!(items.iter().filter(|i| i.is_err()).count(), 1);
    }

    #[tokio::test]
    async fn openai_tool_call_chunks() {
        let mut call = reply(2, true);
        call.finish_reason = "tool_calls";
        call.tool = Some(ToolCall {
            id: "call_mock_test".to_owned(),
            ..tool()
        });
        let (items, end) = collect(call).await;
        let chunks: Vec<Value> = parse(&items).iter().map(json_of).collect();
        // role, 2 tokens, tool start, fragments, finish, usage, [DONE] (not JSON).
        assert_eq!(chunks.len(), 1 + 2 + 1 + TOOL_ARGUMENT_FRAGMENTS.len() + 3);
        let start = &chunks[3]["choices"][0];
        assert_eq!(
            start["delta"],
            json!({"tool_calls": [{"index": 0, "id": "call_mock_test", "type": "function",
                                   "function": {"name": "get_weather", "arguments": ""}}]})
        );
        assert_eq!(start["finish_reason"], Value::Null);
        let arguments: String = chunks[4..4 + TOOL_ARGUMENT_FRAGMENTS.len()]
            .iter()
            .map(|chunk| {
                let call = &chunk["choices"][0]["delta"]["tool_calls"][0];
                assert_eq!(call["index"], 0);
                assert!(call.get("id").is_none());
                call["function"]["arguments"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        assert_eq!(arguments, TOOL_ARGUMENTS);
        let finish = &chunks[chunks.len() - 3];
        assert_eq!(finish["choices"][0]["finish_reason"], "tool_calls");
        let usage = &chunks[chunks.len() - 2]["usage"];
        assert_eq!(usage["completion_tokens"], 2 + 9);
        assert_eq!(usage["total_tokens"], 10 + 2 + 9);
        assert_eq!(items.last(), Some(&Ok(DONE.to_owned())));
        assert!(matches!(
            end,
            Some(StreamEnd::Completed {
                tokens_sent: 11,
                ..
            })
        ));
    }

    #[test]
    fn non_streamed_tool_calls() {
        let mut call = reply(2, false);
        call.finish_reason = "tool_calls";
        call.tool = Some(tool());
        let completion = call.completion();
        assert_eq!(completion["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            completion["choices"][0]["message"]["tool_calls"],
            json!([{"id": "toolu_mock_test", "type": "function",
                    "function": {"name": "get_weather", "arguments": TOOL_ARGUMENTS}}])
        );
        assert_eq!(completion["usage"]["completion_tokens"], 11);
        let message = anthropic(2, true).message();
        assert_eq!(
            message["content"],
            json!([
                {"type": "text", "text": generated_text(2)},
                {"type": "tool_use", "id": "toolu_mock_test", "name": "get_weather",
                 "input": {"city": "Paris", "days": 3}},
            ])
        );
        assert_eq!(message["stop_reason"], "tool_use");
        assert_eq!(message["stop_sequence"], Value::Null);
        assert_eq!(
            message["usage"],
            json!({"input_tokens": 10, "cache_creation_input_tokens": 0,
                   "cache_read_input_tokens": 0, "output_tokens": 11})
        );
    }

    /// Every framing yields the same events as normal framing, once re-parsed.
    #[tokio::test]
    async fn framings_reparse_to_the_same_events() {
        let framings = ["bytes", "crlf", "pings", "bytes+crlf", "bytes+crlf+pings"];
        for api in [Api::OpenAi, Api::Anthropic] {
            let base = match api {
                Api::OpenAi => Reply {
                    tool: Some(tool()),
                    ..reply(3, true)
                },
                Api::Anthropic => anthropic(3, true),
            };
            let (plain, _) = collect(base.clone()).await;
            let expected = parse(&plain);
            for raw in framings {
                let framing: Framing = raw.parse().unwrap_or_default();
                let (items, end) = collect(Reply {
                    framing,
                    ..base.clone()
                })
                .await;
                let body: String = items.iter().map(|i| i.as_deref().unwrap_or("")).collect();
                let mut events = parse(&items);
                if framing.pings {
                    let (pings, rest): (Vec<SseEvent>, Vec<SseEvent>) = events
                        .into_iter()
                        .partition(|e| e.event.as_deref() == Some("ping"));
                    let content = 3 + TOOL_ARGUMENT_FRAGMENTS.len();
                    match api {
                        // The stream's own ping, one per text delta, one per argument delta
                        // (the empty first one included).
                        Api::Anthropic => assert_eq!(pings.len(), 1 + content + 1, "{raw}"),
                        // Comments: one per content token, tool start and fragment.
                        Api::OpenAi => {
                            assert_eq!(body.matches(": ping").count(), content + 1, "{raw}")
                        }
                    }
                    events = rest;
                    if api == Api::Anthropic {
                        events.insert(2, expected[2].clone());
                    }
                }
                assert_eq!(events, expected, "{api:?} {raw}");
                if framing.bytes {
                    assert!(items.iter().all(|i| i.as_ref().is_ok_and(|b| b.len() == 1)));
                }
                if framing.crlf {
                    assert_eq!(body.matches('\n').count(), body.matches("\r\n").count());
                    assert!(body.contains("\r\n\r\n"));
                }
                assert!(matches!(
                    end,
                    Some(StreamEnd::Completed {
                        tokens_sent: 12,
                        ..
                    })
                ));
            }
        }
    }
}
