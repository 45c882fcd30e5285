//! The body of one mock reply: the OpenAI-shaped JSON objects and the SSE event stream.
//!
//! A [`Reply`] is everything decided about an answer before it starts (how many tokens, pace,
//! fault). [`Reply::sse_stream`] turns it into a body stream that yields each SSE event as its
//! own chunk, sleeping before the role chunk and before each content token; its state owns the
//! [`EndRecorder`], so dropping the body early records [`super::StreamEnd::Dropped`]. This module
//! knows nothing of routes or request parsing.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use serde_json::{json, Value};

use super::recorder::EndRecorder;
use super::words::{generated_text, token_text};

/// A mid-reply failure (the status fault is answered before any reply exists).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Interruption {
    ErrorEvent,
    AbruptClose,
    Stall,
}

/// Everything decided about one answer before it starts.
#[derive(Clone, Debug)]
pub(crate) struct Reply {
    pub id: String,
    pub created: u64,
    /// The model exactly as the request sent it (knob suffix included).
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
    /// Content tokens to generate.
    pub tokens: u32,
    pub finish_reason: &'static str,
    pub prompt_tokens: u32,
    pub first_token_delay: Duration,
    /// Pause before each content token; zero means no pacing.
    pub token_interval: Duration,
    /// Fault to inject, and after how many content tokens (already capped at `tokens`).
    pub interruption: Option<(Interruption, u32)>,
}

/// The event that ends an OpenAI stream.
const DONE: &str = "data: [DONE]\n\n";

impl Reply {
    /// The non-streamed `chat.completion` object.
    pub(crate) fn completion(&self) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_mock",
            "choices": [{
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": generated_text(self.tokens),
                    "refusal": null,
                },
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

    /// The SSE body: role chunk, content chunks, finish chunk, usage chunk, `[DONE]`, or the
    /// injected interruption in their place.
    pub(crate) fn sse_stream(
        self,
        guard: EndRecorder,
    ) -> impl Stream<Item = Result<Bytes, io::Error>> + 'static {
        let state = SseState {
            reply: self,
            guard,
            step: Step::Role,
        };
        // The guard stays inside `state`, which the unfold future owns while it is pending.
        futures::stream::unfold(state, |mut state| async move {
            let item = state.advance().await?;
            Some((item, state))
        })
    }

    fn usage(&self) -> Value {
        let total = u64::from(self.prompt_tokens) + u64::from(self.tokens);
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.tokens,
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

    fn finish_event(&self) -> Bytes {
        sse(&self.delta_chunk(json!({}), Some(self.finish_reason)))
    }

    fn usage_event(&self) -> Bytes {
        let mut chunk = self.chunk(json!([]));
        chunk["usage"] = self.usage();
        sse(&chunk)
    }
}

/// An OpenAI error body: `{"error":{"message","type","param","code"}}`.
pub(crate) fn error_body(message: &str, kind: &str, code: &str) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

fn sse(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

/// Where the SSE body is; each step yields at most one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Role,
    /// Content token with this index is next.
    Token(u32),
    Interrupt(Interruption),
    Finish,
    Usage,
    Done,
    End,
}

struct SseState {
    reply: Reply,
    guard: EndRecorder,
    step: Step,
}

impl SseState {
    /// Produces the next body item, or `None` once the body has ended.
    async fn advance(&mut self) -> Option<Result<Bytes, io::Error>> {
        let event = match self.step {
            Step::Role => {
                if !self.reply.first_token_delay.is_zero() {
                    tokio::time::sleep(self.reply.first_token_delay).await;
                }
                self.step = self.after_tokens(0);
                self.reply.role_event()
            }
            Step::Token(index) => {
                pause(self.reply.token_interval).await;
                self.guard.token_sent();
                self.step = self.after_tokens(index.saturating_add(1));
                self.reply.token_event(index)
            }
            Step::Interrupt(kind) => return self.interrupt(kind).await,
            Step::Finish => {
                self.step = if self.reply.include_usage {
                    Step::Usage
                } else {
                    Step::Done
                };
                self.reply.finish_event()
            }
            Step::Usage => {
                self.step = Step::Done;
                self.reply.usage_event()
            }
            Step::Done => {
                self.step = Step::End;
                self.guard.complete();
                Bytes::from_static(DONE.as_bytes())
            }
            Step::End => return None,
        };
        Some(Ok(event))
    }

    /// The step that follows once `sent` content tokens are out.
    fn after_tokens(&self, sent: u32) -> Step {
        match self.reply.interruption {
            Some((kind, after)) if sent >= after => Step::Interrupt(kind),
            _ if sent >= self.reply.tokens => Step::Finish,
            _ => Step::Token(sent),
        }
    }

    async fn interrupt(&mut self, kind: Interruption) -> Option<Result<Bytes, io::Error>> {
        self.step = Step::End;
        // Let the server flush the tokens already yielded: an abort drops unwritten bytes.
        tokio::task::yield_now().await;
        match kind {
            Interruption::ErrorEvent => {
                self.guard.complete();
                Some(Ok(sse(&self.reply.fault_error())))
            }
            Interruption::AbruptClose => {
                self.guard.complete();
                Some(Err(abrupt_close_error(self.guard.tokens_sent())))
            }
            Interruption::Stall => std::future::pending().await,
        }
    }
}

/// The body error that makes actix abort the connection for a `close@N` fault.
pub(crate) fn abrupt_close_error(tokens_sent: u32) -> io::Error {
    io::Error::other(format!(
        "mock fault: abrupt close after {tokens_sent} tokens"
    ))
}

/// Paces content tokens. With no pacing it still yields once, so the server flushes each event
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
    use futures::StreamExt;
    use std::sync::Arc;

    fn reply(tokens: u32, include_usage: bool) -> Reply {
        Reply {
            id: "chatcmpl-mock-test".to_owned(),
            created: 1,
            model: "mock-gpt:tokens=3".to_owned(),
            stream: true,
            include_usage,
            tokens,
            finish_reason: "stop",
            prompt_tokens: 10,
            first_token_delay: Duration::ZERO,
            token_interval: Duration::ZERO,
            interruption: None,
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
}
