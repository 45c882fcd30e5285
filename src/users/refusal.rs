//! [`Refusal`]: why admission said no, and the client's error for it (code, message, when to
//! retry). The same rules refuse with the same errors whether the book or a Redis script
//! applied them.

use super::limits::UserLimits;
use crate::calendar::{next_day_ms, next_month_ms};
use crate::error::{ApiError, ErrorCode};

/// Why admission said no. The same rules refuse with the same errors whether the book or
/// the Redis script applied them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Concurrency,
    Minute {
        frees_at_ms: u64,
    },
    DayRequests,
    DailySpend,
    MonthlySpend,
    /// Only spend promised to running streams stands in the way: it ends within a batch.
    SpendInFlight,
    OrgDaily,
    /// Only spend promised to the organisation's running requests stands in the way.
    OrgInFlight,
    DayTokens,
    /// Redis mode: the operator's settings changed since the actor computed the limits; it
    /// reads them and asks again (never a client's answer).
    AdminChanged,
}

impl Refusal {
    /// The client's error: code, message and when to retry.
    pub fn error(self, limits: &UserLimits, now_ms: u64) -> ApiError {
        let until_midnight = secs_until(now_ms, next_day_ms(now_ms));
        match self {
            Refusal::Concurrency => ApiError::new(
                ErrorCode::ConcurrentStreams,
                format!(
                    "too many requests in flight (limit {})",
                    limits.max_concurrent_streams
                ),
            )
            .retry_after(1),
            Refusal::Minute { frees_at_ms } => ApiError::new(
                ErrorCode::RequestsPerMinute,
                format!(
                    "request limit reached ({} per minute)",
                    limits.requests_per_minute
                ),
            )
            .retry_after(secs_until(now_ms, frees_at_ms)),
            Refusal::DayRequests => ApiError::new(
                ErrorCode::RequestsPerDay,
                format!(
                    "daily request limit reached ({} per day)",
                    limits.requests_per_day
                ),
            )
            .retry_after(until_midnight)
            .no_retry(),
            Refusal::DailySpend => ApiError::new(ErrorCode::DailyBudget, "daily spend cap reached")
                .retry_after(until_midnight)
                .no_retry(),
            Refusal::MonthlySpend => {
                ApiError::new(ErrorCode::MonthlyBudget, "monthly spend cap reached")
                    .retry_after(secs_until(now_ms, next_month_ms(now_ms)))
                    .no_retry()
            }
            Refusal::SpendInFlight => ApiError::new(
                ErrorCode::DailyBudget,
                "the spend cap is nearly reached by requests in flight: retry when they end",
            )
            .retry_after(1),
            Refusal::OrgDaily => ApiError::new(
                ErrorCode::OrgDailyBudget,
                "the organisation's daily spend cap is reached",
            )
            .retry_after(until_midnight)
            .no_retry(),
            Refusal::OrgInFlight => ApiError::new(
                ErrorCode::OrgDailyBudget,
                "the organisation's daily spend cap is nearly reached by requests in flight: \
                 retry when they end",
            )
            .retry_after(1),
            Refusal::DayTokens => ApiError::new(
                ErrorCode::TokensPerDay,
                format!(
                    "daily token limit reached ({} per day)",
                    limits.tokens_per_day
                ),
            )
            .retry_after(until_midnight)
            .no_retry(),
            // Handled by the actor before any client sees it; should it escape, a retry works.
            Refusal::AdminChanged => ApiError::new(
                ErrorCode::StateUnavailable,
                "the user's settings changed while the request was admitted: retry",
            )
            .retry_after(1),
        }
    }
}

/// Whole seconds from `now_ms` until `at_ms`, at least 1.
fn secs_until(now_ms: u64, at_ms: u64) -> u64 {
    at_ms.saturating_sub(now_ms).div_ceil(1000).max(1)
}
