//! The shared vocabulary of what a request used and how it ended, passed from the relay to the
//! user's actor (settlement), the request log and the metrics.

use serde::Serialize;

/// How a request ended. One per request, logged and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Completed,
    CutTokenCap,
    CutBudget,
    CutDeadline,
    CutGuardrail,
    ClientGone,
    UpstreamError,
    Rejected,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::CutTokenCap => "cut_token_cap",
            Outcome::CutBudget => "cut_budget",
            Outcome::CutDeadline => "cut_deadline",
            Outcome::CutGuardrail => "cut_guardrail",
            Outcome::ClientGone => "client_gone",
            Outcome::UpstreamError => "upstream_error",
            Outcome::Rejected => "rejected",
        }
    }
}

/// Where the billed token numbers came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageSource {
    /// The provider's own `usage` report (the stream or reply completed normally).
    Upstream,
    /// The gateway's count: input estimated before the call, output counted as relayed.
    Counted,
}

/// Tokens billed for one request.
///
/// Definition (the one place it is decided, in the relay): when the provider reported usage
/// for a reply that reached the client whole, its numbers are billed; otherwise (cut, client
/// gone, upstream broke, no usage) the input estimate and the output tokens the gateway relayed
/// to the client are billed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.input_tokens + self.output_tokens
    }
}

/// The `x-ratelimit-*` numbers (OpenAI's names) for one answer: the per-minute request window
/// and the per-day token window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct RateLimitHeaders {
    pub limit_requests: u64,
    pub remaining_requests: u64,
    pub limit_tokens: u64,
    pub remaining_tokens: u64,
}
