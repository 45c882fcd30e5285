//! Messages a user's actor answers, and their replies.

use crate::accounting::{Outcome, Usage};
use actix::Message;
use serde::Serialize;

/// Reserve for a new request before it reaches the upstream.
#[derive(Debug, Message)]
#[rtype(result = "Result<Admission, Refusal>")]
pub struct Admit {
    pub request_id: String,
    pub estimated_input_tokens: u64,
    pub max_tokens: u32,
    pub stream: bool,
}

/// What admission granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// The output cap this request may use (≤ what it asked for).
    pub max_tokens: u32,
}

/// Why admission refused; carries what the client needs to wait or give up.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub error: crate::error::ApiError,
}

/// Output tokens relayed since the last report.
#[derive(Debug, Message)]
#[rtype(result = "Verdict")]
pub struct Meter {
    pub request_id: String,
    pub output_tokens: u64,
}

/// The actor's answer to [`Meter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Continue,
    /// Stop relaying: a running limit was crossed.
    StopBudget,
}

/// Replace the reservation with what was used. Idempotent per request id.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Settle {
    pub request_id: String,
    pub usage: Usage,
    pub outcome: Outcome,
}

/// Read the user's counters.
#[derive(Debug, Message)]
#[rtype(result = "UserUsage")]
pub struct Snapshot;

/// The user's counters as `/v1/usage` reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UserUsage {
    /// Requests admitted.
    pub requests: u64,
    /// Settled input tokens.
    pub input_tokens: u64,
    /// Settled output tokens.
    pub output_tokens: u64,
    /// Requests settled with any ending other than `completed`.
    pub cut_requests: u64,
    /// Estimated input tokens reserved by requests still open.
    pub open_input_tokens: u64,
    /// Output tokens metered by requests still open.
    pub open_output_tokens: u64,
    /// Requests admitted and not yet settled.
    pub open_requests: u64,
    /// Streams admitted and not yet settled.
    pub open_streams: u64,
}
