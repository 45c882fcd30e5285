//! A user's figures ([`Counts`], as the book or Redis holds them) and what is made of them: the
//! `x-ratelimit-*` headers and the `/v1/usage` report ([`UsageReport`]).

use super::limits::UserLimits;
use crate::accounting::RateLimitHeaders;
use crate::calendar::{next_day_ms, next_month_ms, rfc3339, MINUTE_MS};
use serde::Serialize;

/// One window in `/v1/usage`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowReport {
    pub used: u64,
    pub limit: u64,
    pub remaining: u64,
    pub resets_at: String,
}

/// One spend cap in `/v1/usage`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpendReport {
    pub used_usd: f64,
    pub limit_usd: f64,
    pub remaining_usd: f64,
    pub resets_at: String,
}

/// The user's counters and windows, as `/v1/usage` reports them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageReport {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cut_requests: u64,
    pub open_requests: u64,
    pub open_streams: u64,
    pub open_input_tokens: u64,
    pub open_output_tokens: u64,
    pub requests_per_minute: WindowReport,
    pub requests_per_day: WindowReport,
    pub tokens_per_day: WindowReport,
    pub concurrent_streams: WindowReport,
    pub daily_usd: SpendReport,
    pub monthly_usd: SpendReport,
}

/// A user's figures as the book or Redis holds them, for `/v1/usage` and the headers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cut_requests: u64,
    pub open_requests: u64,
    pub open_streams: u64,
    pub open_input_tokens: u64,
    pub open_output_tokens: u64,
    pub minute_used: u64,
    pub minute_oldest_ms: Option<u64>,
    pub requests_today: u64,
    /// Tokens today: settled plus reserved by open requests.
    pub tokens_running: u64,
    /// Spend today and this month: settled plus metered by open requests.
    pub spend_today_running: u64,
    pub spend_month_running: u64,
}

impl Counts {
    /// The `x-ratelimit-*` figures.
    pub fn rate_limits(&self, limits: &UserLimits) -> RateLimitHeaders {
        RateLimitHeaders {
            limit_requests: limits.requests_per_minute,
            remaining_requests: limits.requests_per_minute.saturating_sub(self.minute_used),
            limit_tokens: limits.tokens_per_day,
            remaining_tokens: limits.tokens_per_day.saturating_sub(self.tokens_running),
        }
    }

    /// The report for `/v1/usage`.
    pub fn report(&self, limits: &UserLimits, now_ms: u64) -> UsageReport {
        let window = |used: u64, limit: u64, resets_ms: u64| WindowReport {
            used,
            limit,
            remaining: limit.saturating_sub(used),
            resets_at: rfc3339(resets_ms),
        };
        let spend = |used: u64, limit: u64, resets_ms: u64| SpendReport {
            used_usd: micro_to_usd(used),
            limit_usd: micro_to_usd(limit),
            remaining_usd: micro_to_usd(limit.saturating_sub(used)),
            resets_at: rfc3339(resets_ms),
        };
        let minute_resets = self.minute_oldest_ms.map_or(now_ms, |t| t + MINUTE_MS);
        UsageReport {
            requests: self.requests,
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            cut_requests: self.cut_requests,
            open_requests: self.open_requests,
            open_streams: self.open_streams,
            open_input_tokens: self.open_input_tokens,
            open_output_tokens: self.open_output_tokens,
            requests_per_minute: window(
                self.minute_used,
                limits.requests_per_minute,
                minute_resets,
            ),
            requests_per_day: window(
                self.requests_today,
                limits.requests_per_day,
                next_day_ms(now_ms),
            ),
            tokens_per_day: window(
                self.tokens_running,
                limits.tokens_per_day,
                next_day_ms(now_ms),
            ),
            concurrent_streams: window(self.open_requests, limits.max_concurrent_streams, now_ms),
            daily_usd: spend(
                self.spend_today_running,
                limits.daily_cap_micro_usd,
                next_day_ms(now_ms),
            ),
            monthly_usd: spend(
                self.spend_month_running,
                limits.monthly_cap_micro_usd,
                next_month_ms(now_ms),
            ),
        }
    }
}

fn micro_to_usd(micro: u64) -> f64 {
    micro as f64 / 1_000_000.0
}
