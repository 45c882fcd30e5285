//! Non-streamed replies: read the provider's whole `chat.completion` (bounded in size and by the
//! deadline), enforce the output cap on it, and decide what is billed.

use super::guard::OutputGuard;
use super::upstream::UpstreamResponse;
use super::{Finished, StreamEnd};
use crate::accounting::{Usage, UsageSource};
use crate::error::{ApiError, ErrorCode};
use crate::tokenize::TokenCounter;
use bytes::Bytes;
use serde_json::Value;
use tokio::time::Instant;

/// Everything one non-streamed reply needs.
pub struct CompleteJob {
    pub upstream: UpstreamResponse,
    pub counter: TokenCounter,
    pub max_output_tokens: u64,
    pub estimated_input_tokens: u64,
    pub started: Instant,
    pub deadline: Instant,
    pub max_body_bytes: usize,
    pub guard: Option<OutputGuard>,
}

/// The body for the client and the summary, or the error to answer with and its summary.
pub async fn complete(job: CompleteJob) -> Result<(Bytes, Finished), (ApiError, Finished)> {
    let counted = |end, output_tokens| Finished {
        end,
        usage: Usage {
            input_tokens: job.estimated_input_tokens,
            output_tokens,
        },
        usage_source: UsageSource::Counted,
        ttft: None,
        committed: false,
        blocked_by: None,
    };
    let mut upstream = job.upstream;
    let body = match tokio::time::timeout_at(
        job.deadline,
        upstream.body().limit(job.max_body_bytes),
    )
    .await
    {
        Err(_) => {
            let error = ApiError::new(
                ErrorCode::UpstreamTimeout,
                "the upstream provider did not finish within the gateway's time limit",
            );
            return Err((error, counted(StreamEnd::Deadline, 0)));
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "reading the upstream reply failed");
            return Err((failed(), counted(StreamEnd::UpstreamFailed, 0)));
        }
        Ok(Ok(body)) => body,
    };
    drop(upstream);
    let mut reply: Value = match serde_json::from_slice(&body) {
        Ok(Value::Object(o)) if !o.contains_key("error") => Value::Object(o),
        _ => {
            tracing::warn!("upstream reply is not a chat completion");
            return Err((failed(), counted(StreamEnd::UpstreamFailed, 0)));
        }
    };
    let (output_tokens, capped) = cap_reply(&mut reply, &job.counter, job.max_output_tokens);
    let blocked_by = job
        .guard
        .and_then(|mut guard| guard_reply(&mut reply, &mut guard));
    let reported = reply.get("usage").and_then(|u| {
        Some(Usage {
            input_tokens: u.get("prompt_tokens")?.as_u64()?,
            output_tokens: u.get("completion_tokens")?.as_u64()?,
        })
    });
    let end = match (&blocked_by, capped) {
        (Some(_), _) => StreamEnd::OutputBlocked,
        (None, true) => StreamEnd::TokenCap,
        (None, false) => StreamEnd::Completed,
    };
    let mut finished = counted(end, output_tokens);
    finished.blocked_by = blocked_by;
    finished.ttft = Some(Instant::now() - job.started);
    finished.committed = true;
    match (capped || finished.blocked_by.is_some(), reported) {
        (false, Some(usage)) => {
            finished.usage = usage;
            finished.usage_source = UsageSource::Upstream;
        }
        (true, _) => set_usage(&mut reply, finished.usage),
        (false, None) => {}
    }
    match serde_json::to_vec(&reply) {
        Ok(bytes) => Ok((Bytes::from(bytes), finished)),
        Err(_) => Err((failed(), finished)),
    }
}

fn failed() -> ApiError {
    ApiError::new(
        ErrorCode::UpstreamFailed,
        "the upstream provider sent an unusable reply",
    )
}

/// Cuts the reply's messages to `max_output_tokens` in total. Returns the tokens kept and
/// whether anything was cut (a provider that ignored `max_tokens`).
fn cap_reply(reply: &mut Value, counter: &TokenCounter, max_output_tokens: u64) -> (u64, bool) {
    let mut left = max_output_tokens;
    let mut capped = false;
    let Some(choices) = reply.get_mut("choices").and_then(Value::as_array_mut) else {
        return (0, false);
    };
    for choice in choices {
        let Some(Value::String(content)) = choice.pointer_mut("/message/content") else {
            continue;
        };
        let (kept, tokens) = counter.truncate(content, left);
        if kept.len() < content.len() {
            *content = kept.to_string();
            capped = true;
            if let Some(reason) = choice.get_mut("finish_reason") {
                *reason = Value::from("length");
            }
        }
        left = left.saturating_sub(tokens);
    }
    (max_output_tokens - left, capped)
}

/// Runs each choice's message texts (content, refusal, tool-call arguments) through the
/// output guard. A blocked choice keeps only the text before the match and finishes with
/// `content_filter` (OpenAI's own reason); returns the rule.
fn guard_reply(reply: &mut Value, guard: &mut OutputGuard) -> Option<String> {
    let mut blocked = None;
    let choices = reply.get_mut("choices").and_then(Value::as_array_mut)?;
    for choice in choices.iter_mut() {
        let mut rule = None;
        if let Some(message) = choice.get_mut("message") {
            let mut texts: Vec<&mut Value> = Vec::new();
            if let Some(m) = message.as_object_mut() {
                for (key, value) in m.iter_mut() {
                    match key.as_str() {
                        "content" | "refusal" => texts.push(value),
                        "tool_calls" => {
                            if let Some(calls) = value.as_array_mut() {
                                texts.extend(
                                    calls
                                        .iter_mut()
                                        .filter_map(|c| c.pointer_mut("/function/arguments")),
                                );
                            }
                        }
                        _ => {}
                    }
                }
            }
            for text in texts {
                let Value::String(s) = text else { continue };
                match guard.scan_whole(s) {
                    Ok(released) => *s = released,
                    Err((prefix, id)) => {
                        *s = prefix;
                        rule.get_or_insert(id);
                    }
                }
            }
        }
        if let Some(id) = rule {
            if let Some(reason) = choice.get_mut("finish_reason") {
                *reason = Value::from("content_filter");
            }
            blocked.get_or_insert(id);
        }
    }
    blocked
}

fn set_usage(reply: &mut Value, usage: Usage) {
    if let Value::Object(o) = reply {
        o.insert(
            "usage".into(),
            serde_json::json!({
                "prompt_tokens": usage.input_tokens,
                "completion_tokens": usage.output_tokens,
                "total_tokens": usage.total(),
            }),
        );
    }
}
