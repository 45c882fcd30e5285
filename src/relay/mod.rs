//! The relay: sends the request upstream and brings the reply back to the client, streamed
//! ([`stream`]) or whole ([`complete`]), under the output cap and the deadline.
//!
//! Only this module talks to the provider (`upstream`, the one place awc is used) and parses
//! its output (`sse`, `chunk`). It reports tokens to the user's [`crate::users::Ticket`] and
//! hands a [`Finished`] summary to its caller, who logs it.

pub mod chunk;
pub mod complete;
pub mod guard;
pub mod health;
pub mod sse;
pub mod stream;
pub mod upstream;

use crate::accounting::{Outcome, Usage, UsageSource};
use std::time::Duration;

pub use upstream::{UpstreamClient, UpstreamResponse};

/// How a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// The provider finished (`[DONE]`).
    Completed,
    /// The output cap was reached: the client got `finish_reason: "length"`.
    TokenCap,
    /// The user's actor said stop (a spend or token limit was crossed mid-stream).
    BudgetExceeded,
    /// `limits.deadline_secs` passed.
    Deadline,
    /// The provider broke, went silent, or sent an error or something unreadable.
    UpstreamFailed,
    /// The client disconnected.
    ClientGone,
    /// An output guardrail matched: the client got the text before the match, then the error.
    OutputBlocked,
}

impl StreamEnd {
    /// Endings the client must be told about as errors.
    pub fn is_error(self) -> bool {
        matches!(
            self,
            StreamEnd::Deadline
                | StreamEnd::UpstreamFailed
                | StreamEnd::BudgetExceeded
                | StreamEnd::ClientGone
                | StreamEnd::OutputBlocked
        )
    }

    /// The HTTP error for an ending that came before the stream opened.
    pub fn pre_stream_error(self) -> crate::error::ApiError {
        use crate::error::{ApiError, ErrorCode};
        match self {
            StreamEnd::Deadline => ApiError::new(
                ErrorCode::UpstreamTimeout,
                "the upstream provider did not start its reply within the gateway's time limit",
            ),
            StreamEnd::Completed
            | StreamEnd::TokenCap
            | StreamEnd::BudgetExceeded
            | StreamEnd::UpstreamFailed
            | StreamEnd::ClientGone
            | StreamEnd::OutputBlocked => ApiError::new(
                ErrorCode::UpstreamFailed,
                "the upstream provider failed before its reply started",
            ),
        }
    }

    pub fn outcome(self) -> Outcome {
        match self {
            StreamEnd::Completed => Outcome::Completed,
            StreamEnd::TokenCap => Outcome::CutTokenCap,
            StreamEnd::BudgetExceeded => Outcome::CutBudget,
            StreamEnd::Deadline => Outcome::CutDeadline,
            StreamEnd::UpstreamFailed => Outcome::UpstreamError,
            StreamEnd::ClientGone => Outcome::ClientGone,
            StreamEnd::OutputBlocked => Outcome::CutGuardrail,
        }
    }

    /// The error event (message, type, code) the client gets for an abnormal ending.
    pub fn client_error(self) -> (&'static str, &'static str, &'static str) {
        match self {
            StreamEnd::Deadline => (
                "the request exceeded the gateway's time limit",
                "timeout_error",
                "deadline_exceeded",
            ),
            StreamEnd::BudgetExceeded => (
                "your spend or token limit was reached during this response",
                "rate_limit_error",
                "budget_exceeded",
            ),
            StreamEnd::OutputBlocked => (
                "the response was stopped by an output guardrail",
                "content_filter_error",
                "output_blocked",
            ),
            StreamEnd::Completed
            | StreamEnd::TokenCap
            | StreamEnd::UpstreamFailed
            | StreamEnd::ClientGone => (
                "the upstream provider failed during the response",
                "upstream_error",
                "upstream_failed",
            ),
        }
    }
}

/// What the relay hands back when a request has ended.
#[derive(Debug, Clone)]
pub struct Finished {
    pub end: StreamEnd,
    pub usage: Usage,
    pub usage_source: UsageSource,
    /// Time from the request's arrival to the first output token relayed.
    pub ttft: Option<Duration>,
    /// Whether the client got a stream (else it got an HTTP error, or nothing).
    pub committed: bool,
    /// The output guardrail rule that cut the reply, if one did.
    pub blocked_by: Option<String>,
}
