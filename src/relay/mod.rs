//! The relay: sends the request upstream and brings the reply back to the client, streamed
//! ([`stream`]) or whole ([`complete`]), under the output cap and the deadline.
//!
//! Only this module talks to the providers (`upstream`, the one place awc is used; `attempts`,
//! the fallback chain) and parses their output (`sse`, `chunk`, and `anthropic`, which
//! translates Anthropic's Messages API to and from OpenAI's shapes). It reports relayed tokens
//! through the request's [`crate::users::Ticket`] and returns a [`Relayed`] summary; it never settles, logs or calls
//! back up: the caller ends the request from that value.

pub mod anthropic;
pub mod attempts;
pub mod chunk;
pub mod chunk_layout;
pub mod complete;
pub mod health;
pub mod output_filter;
pub mod sse;
pub mod stream;
pub mod upstream;

use crate::accounting::{Outcome, Usage, UsageSource};
use crate::error::{ApiError, ErrorCode};
use crate::guardrails::RuleHit;
use crate::telemetry::CLIENT_CLOSED_REQUEST;
pub use attempts::{Attempts, RouteTaken, Started, Upstreams};
use std::time::Duration;

pub use upstream::{SendFailure, UpstreamClient, UpstreamResponse};

/// What the relay hands back when a reply has ended.
#[derive(Debug, Clone)]
pub struct Relayed {
    /// How it ended (never `Rejected`).
    pub outcome: Outcome,
    pub usage: Usage,
    pub usage_source: UsageSource,
    /// Time from the request's arrival to the first output token relayed.
    pub ttft: Option<Duration>,
    /// How the client was answered.
    pub answer: Answer,
    /// The output guardrail rule that cut the reply, if one did.
    pub blocked_by: Option<RuleHit>,
    /// A stream with output checks on: the characters its scanners released later than they
    /// arrived (the cost of scanning).
    pub held_back_chars: Option<u64>,
    /// The models tried, and the one that served.
    pub route: RouteTaken,
}

/// How the client was answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// A stream (200), which ended as the outcome says.
    Stream,
    /// A whole reply (200).
    Body,
    /// An HTTP error, before any reply started.
    Error(ApiError),
    /// Nothing: the client left first.
    Nothing,
}

impl Answer {
    /// The status logged for this answer (nginx's 499 when the client left first).
    pub fn status(&self) -> u16 {
        match self {
            Answer::Stream | Answer::Body => 200,
            Answer::Error(error) => error.code.status(),
            Answer::Nothing => CLIENT_CLOSED_REQUEST,
        }
    }
}

/// The HTTP error for a stream that ended with `outcome` before its first frame.
pub fn failed_before_reply(outcome: Outcome) -> ApiError {
    match outcome {
        Outcome::CutDeadline => ApiError::new(
            ErrorCode::UpstreamTimeout,
            "the upstream provider did not start its reply within the gateway's time limit",
        ),
        _ => ApiError::new(
            ErrorCode::UpstreamFailed,
            "the upstream provider failed before its reply started",
        ),
    }
}

/// Now, in unix seconds (the `created` of the chunks and replies the gateway writes).
pub(crate) fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
