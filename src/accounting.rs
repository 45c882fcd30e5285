//! The shared vocabulary of what a request used and how it ended, passed from the relay to the
//! user's actor (settlement), the request log and the metrics. Every label a metric may carry
//! for an ending is an enum here whose `ALL` declares the label values up front.

use crate::error::ErrorCode;
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
    /// An operator blocked the user while the reply streamed.
    CutBlocked,
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
            Outcome::CutBlocked => "cut_blocked",
            Outcome::ClientGone => "client_gone",
            Outcome::UpstreamError => "upstream_error",
            Outcome::Rejected => "rejected",
        }
    }

    /// Why an answer that started was ended early (or left by its client); `None` for a
    /// whole answer and for a refusal.
    pub fn cut_reason(self) -> Option<CutReason> {
        match self {
            Outcome::Completed | Outcome::Rejected => None,
            Outcome::CutTokenCap => Some(CutReason::TokenCap),
            Outcome::CutBudget => Some(CutReason::Budget),
            Outcome::CutDeadline => Some(CutReason::Deadline),
            Outcome::CutGuardrail => Some(CutReason::Guardrail),
            Outcome::CutBlocked => Some(CutReason::UserBlocked),
            Outcome::UpstreamError => Some(CutReason::UpstreamFailed),
            Outcome::ClientGone => Some(CutReason::ClientGone),
        }
    }

    /// The error event that ends a started stream with this outcome, if it ends in one (a
    /// completed stream and one cut at the output cap end normally; a client that left gets
    /// nothing).
    pub fn stream_error(self) -> Option<ErrorCode> {
        match self {
            Outcome::CutBudget => Some(ErrorCode::BudgetExceeded),
            Outcome::CutDeadline => Some(ErrorCode::DeadlineExceeded),
            Outcome::CutGuardrail => Some(ErrorCode::OutputBlocked),
            Outcome::CutBlocked => Some(ErrorCode::UserBlocked),
            Outcome::UpstreamError => Some(ErrorCode::UpstreamFailed),
            Outcome::Completed | Outcome::CutTokenCap | Outcome::ClientGone | Outcome::Rejected => {
                None
            }
        }
    }
}

/// The `reason` label of `tollgate_stream_cuts_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CutReason {
    TokenCap,
    Budget,
    Deadline,
    Guardrail,
    UpstreamFailed,
    ClientGone,
    UserBlocked,
}

impl CutReason {
    pub const ALL: [CutReason; 7] = [
        CutReason::TokenCap,
        CutReason::Budget,
        CutReason::Deadline,
        CutReason::Guardrail,
        CutReason::UpstreamFailed,
        CutReason::ClientGone,
        CutReason::UserBlocked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CutReason::TokenCap => "token_cap",
            CutReason::Budget => "budget",
            CutReason::Deadline => "deadline",
            CutReason::Guardrail => "guardrail",
            CutReason::UpstreamFailed => "upstream_failed",
            CutReason::ClientGone => "client_gone",
            CutReason::UserBlocked => "user_blocked",
        }
    }
}

/// The `kind` label of `tollgate_upstream_errors_total`: how the provider failed a request
/// before it answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamFailure {
    /// It answered with an error or something unusable, or broke.
    Failed,
    /// It could not be reached (or its circuit is open).
    Unavailable,
    /// It did not answer in time.
    Timeout,
}

impl UpstreamFailure {
    pub const ALL: [UpstreamFailure; 3] = [
        UpstreamFailure::Failed,
        UpstreamFailure::Unavailable,
        UpstreamFailure::Timeout,
    ];

    /// The failure an error code reports, if it is an upstream one.
    pub fn of(code: ErrorCode) -> Option<Self> {
        match code {
            ErrorCode::UpstreamFailed => Some(UpstreamFailure::Failed),
            ErrorCode::UpstreamUnavailable => Some(UpstreamFailure::Unavailable),
            ErrorCode::UpstreamTimeout => Some(UpstreamFailure::Timeout),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamFailure::Failed => "upstream_failed",
            UpstreamFailure::Unavailable => "upstream_unavailable",
            UpstreamFailure::Timeout => "upstream_timeout",
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
        self.input_tokens.saturating_add(self.output_tokens)
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

/// Why one attempt at a provider failed before its first token: the log's `attempts[].failure`,
/// and whether the next model in the fallback list may be tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptFailure {
    /// The connection could not be made.
    Connect,
    /// No response headers, or no first event, within the first-byte timeout.
    Timeout,
    /// The provider answered with this HTTP status (not 2xx).
    Status(u16),
    /// The stream opened with an error event before any content.
    ErrorEvent,
    /// The stream broke, stalled or ended before any content.
    Broken,
    /// The reply was not a usable chat completion or stream.
    Unusable,
    /// The request cannot be written in this provider's format (e.g. `n` > 1 for Anthropic):
    /// the client's to change, so no fallback.
    Untranslatable,
}

impl AttemptFailure {
    /// Whether another model may serve the request instead: everything but a provider's
    /// refusal of the request itself (a 4xx other than 408 and 429 is the client's error).
    pub fn allows_fallback(self) -> bool {
        match self {
            AttemptFailure::Status(status) => {
                matches!(status, 408 | 429) || !(400..500).contains(&status)
            }
            AttemptFailure::Untranslatable => false,
            AttemptFailure::Connect
            | AttemptFailure::Timeout
            | AttemptFailure::ErrorEvent
            | AttemptFailure::Broken
            | AttemptFailure::Unusable => true,
        }
    }
}

impl std::fmt::Display for AttemptFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttemptFailure::Connect => f.write_str("connect"),
            AttemptFailure::Timeout => f.write_str("timeout"),
            AttemptFailure::Status(status) => write!(f, "status_{status}"),
            AttemptFailure::ErrorEvent => f.write_str("error_event"),
            AttemptFailure::Broken => f.write_str("broken"),
            AttemptFailure::Unusable => f.write_str("unusable"),
            AttemptFailure::Untranslatable => f.write_str("untranslatable"),
        }
    }
}

impl Serialize for AttemptFailure {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// One model tried for a request, as the log line's `attempts` lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attempt {
    pub model: String,
    /// Why it failed before its first token; `None` for the attempt that served (or that ended
    /// the request some other way).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<AttemptFailure>,
}
