//! Non-streamed replies: read the provider's whole reply (bounded in size and by the deadline;
//! an Anthropic message is translated into a `chat.completion`), enforce the output cap on it,
//! and decide what is billed. A reply that fails before it is read whole moves the request to
//! the next model in its fallback chain: the client has seen nothing yet.

use super::anthropic;
use super::attempts::{Attempts, Started};
use super::chunk::usage_object;
use super::output_filter::OutputFilter;
use super::{Answer, Relayed};
use crate::accounting::{AttemptFailure, Outcome, Usage, UsageSource};
use crate::config::UpstreamFormat;
use crate::error::{ApiError, ErrorCode};
use crate::guardrails::RuleHit;
use crate::pricing::{micro_usd_to_usd, Price};
use crate::tokenize::TokenCounter;
use crate::users::Ticket;
use bytes::Bytes;
use serde_json::Value;
use tokio::time::Instant;

/// Everything one non-streamed reply needs.
pub struct CompleteJob {
    /// The reply that started (the first model's, or a fallback's).
    pub reply: Started,
    /// The rest of the request's fallback chain.
    pub attempts: Attempts,
    pub max_output_tokens: u64,
    pub estimated_input_tokens: u64,
    pub started: Instant,
    pub deadline: Instant,
    pub filter: Option<OutputFilter>,
}

/// Why a reply could not be read.
enum Unread {
    /// The deadline passed while reading.
    Deadline,
    Failed(AttemptFailure),
}

/// The summary, and the body for the client when it is answered with one (`Answer::Body`;
/// else the summary's `Answer::Error` says what to answer).
pub async fn complete(job: CompleteJob, ticket: &Ticket) -> (Relayed, Option<Bytes>) {
    let mut attempts = job.attempts;
    let counted = |outcome, output_tokens, attempts: &Attempts| Relayed {
        outcome,
        usage: Usage {
            input_tokens: job.estimated_input_tokens,
            output_tokens,
        },
        usage_source: UsageSource::Counted,
        ttft: None,
        answer: Answer::Body,
        blocked_by: None,
        held_back_chars: None,
        route: attempts.route(),
    };
    let refused = |outcome, error, attempts: &Attempts| {
        let mut relayed = counted(outcome, 0, attempts);
        relayed.answer = Answer::Error(error);
        (relayed, None)
    };
    let mut reply = job.reply;
    let (mut completion, price, counter) = loop {
        let (price, counter) = (reply.price, reply.counter);
        match read(reply, job.deadline).await {
            Ok(completion) => break (completion, price, counter),
            Err(Unread::Deadline) => {
                let error = ApiError::new(
                    ErrorCode::UpstreamTimeout,
                    "the upstream provider did not finish within the gateway's time limit",
                );
                return refused(Outcome::CutDeadline, error, &attempts);
            }
            Err(Unread::Failed(failure)) => {
                match attempts.fall_back(failure, failed(), ticket).await {
                    Ok(next) => reply = next,
                    Err(error) => {
                        let outcome = if error.code == ErrorCode::UpstreamTimeout {
                            Outcome::CutDeadline
                        } else {
                            Outcome::UpstreamError
                        };
                        return refused(outcome, error, &attempts);
                    }
                }
            }
        }
    };
    let (output_tokens, capped) = cap_reply(&mut completion, &counter, job.max_output_tokens);
    let blocked_by = job
        .filter
        .and_then(|mut filter| filter_reply(&mut completion, &mut filter));
    let reported = completion.get("usage").and_then(|u| {
        Some(Usage {
            input_tokens: u.get("prompt_tokens")?.as_u64()?,
            output_tokens: u.get("completion_tokens")?.as_u64()?,
        })
    });
    let outcome = match (&blocked_by, capped) {
        (Some(_), _) => Outcome::CutGuardrail,
        (None, true) => Outcome::CutTokenCap,
        (None, false) => Outcome::Completed,
    };
    let mut relayed = counted(outcome, output_tokens, &attempts);
    relayed.blocked_by = blocked_by;
    relayed.ttft = Some(Instant::now() - job.started);
    if let (false, Some(usage)) = (capped || relayed.blocked_by.is_some(), reported) {
        relayed.usage = usage;
        relayed.usage_source = UsageSource::Upstream;
    }
    // The reply's usage is what is billed, with its cost.
    set_usage(&mut completion, relayed.usage, price);
    match serde_json::to_vec(&completion) {
        Ok(bytes) => (relayed, Some(Bytes::from(bytes))),
        Err(_) => {
            relayed.answer = Answer::Error(failed());
            (relayed, None)
        }
    }
}

/// Reads one attempt's whole reply as a `chat.completion`.
async fn read(reply: Started, deadline: Instant) -> Result<Value, Unread> {
    let mut upstream = reply.response;
    let body = match tokio::time::timeout_at(deadline, upstream.body().limit(reply.max_event_bytes))
        .await
    {
        Err(_) => return Err(Unread::Deadline),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "reading the upstream reply failed");
            return Err(Unread::Failed(AttemptFailure::Broken));
        }
        Ok(Ok(body)) => body,
    };
    drop(upstream);
    let completion = match reply.format {
        UpstreamFormat::OpenAi => match serde_json::from_slice(&body) {
            Ok(Value::Object(o)) if !o.contains_key("error") => Some(Value::Object(o)),
            _ => None,
        },
        UpstreamFormat::Anthropic => anthropic::completion(&body, super::unix_seconds()),
    };
    completion.ok_or_else(|| {
        tracing::warn!("upstream reply is not a chat completion");
        Unread::Failed(AttemptFailure::Unusable)
    })
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
/// output filter. A blocked choice keeps only the text before the match and finishes with
/// `content_filter` (OpenAI's own reason); returns the rule.
fn filter_reply(reply: &mut Value, filter: &mut OutputFilter) -> Option<RuleHit> {
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
                match filter.scan_whole(s) {
                    Ok(released) => *s = released,
                    Err((prefix, hit)) => {
                        *s = prefix;
                        rule.get_or_insert(hit);
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

/// Sets the reply's `usage` to what is billed, with its `cost`; the provider's other usage
/// fields (token details) are kept when its counts are the ones billed.
fn set_usage(reply: &mut Value, usage: Usage, price: Price) {
    let Value::Object(o) = reply else { return };
    let billed = usage_object(usage, micro_usd_to_usd(price.cost_micro_usd(usage)));
    match (o.get_mut("usage").and_then(Value::as_object_mut), billed) {
        (Some(existing), Value::Object(billed)) => existing.extend(billed),
        (_, billed) => {
            o.insert("usage".into(), billed);
        }
    }
}
