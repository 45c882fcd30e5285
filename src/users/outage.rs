//! The outage policy (Redis mode): what a replica allows on its own while Redis is away.
//!
//! - Request-rate windows (per minute, per day, concurrent) fail open into a local limiter at
//!   `limit / redis.expected_replicas` (rounded up), so N replicas together stay near the limit
//!   instead of allowing N times it. Availability matters more for these: they protect capacity.
//! - Token and spend caps fail closed beyond a small allowance: a user may use at most
//!   `redis.outage_allowance_tokens` / `_usd` per replica beyond what Redis last reported (and
//!   never past the caps themselves). Past it, new requests get 503 `state_unavailable` with a
//!   short `Retry-After`, and running streams are cut (`budget_exceeded`): money is a promise.
//! - The organisation cap likewise: what a replica decides alone may spend at most
//!   `redis.outage_allowance_usd` of the organisation's budget a day, never past what the cap
//!   left when Redis last reported the organisation's figures.
//!
//! Pure functions; the user's actor applies them with its local book.

use super::limits::{usd_to_micro, UserLimits};
use crate::config::RedisConfig;
use crate::error::{ApiError, ErrorCode};

/// Seconds a client is told to wait when a cap cannot be checked.
pub const FAIL_CLOSED_RETRY_SECS: u64 = 5;

/// The policy's knobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutagePolicy {
    pub replicas: u64,
    pub allowance_tokens: u64,
    pub allowance_micro_usd: u64,
}

impl OutagePolicy {
    pub fn new(config: &RedisConfig) -> Self {
        Self {
            replicas: config.expected_replicas.max(1),
            allowance_tokens: config.outage_allowance_tokens,
            allowance_micro_usd: usd_to_micro(config.outage_allowance_usd),
        }
    }

    /// The limits the local book enforces during an outage. `known` is what Redis last said
    /// about this user (none: only the allowance applies).
    pub fn local_limits(&self, limits: &UserLimits, known: Option<&Known>) -> UserLimits {
        let share = |limit: u64| limit.div_ceil(self.replicas);
        let headroom = |cap: u64, used: Option<u64>| match used {
            Some(used) => cap.saturating_sub(used),
            None => cap,
        };
        UserLimits {
            requests_per_minute: share(limits.requests_per_minute),
            requests_per_day: share(limits.requests_per_day),
            max_concurrent_streams: share(limits.max_concurrent_streams),
            tokens_per_day: self.allowance_tokens.min(headroom(
                limits.tokens_per_day,
                known.map(|k| k.tokens_running),
            )),
            daily_cap_micro_usd: self.allowance_micro_usd.min(headroom(
                limits.daily_cap_micro_usd,
                known.map(|k| k.spend_today),
            )),
            monthly_cap_micro_usd: self.allowance_micro_usd.min(headroom(
                limits.monthly_cap_micro_usd,
                known.map(|k| k.spend_month),
            )),
            ..*limits
        }
    }
}

impl OutagePolicy {
    /// The most the organisation may spend today on this replica's own decisions: the
    /// allowance, within what the cap (`cap`) left when Redis last reported the organisation's
    /// spend and promises (`running`; none yet: the allowance).
    pub fn org_limit(&self, cap: u64, running: Option<u64>) -> u64 {
        self.allowance_micro_usd
            .min(cap.saturating_sub(running.unwrap_or(0)))
    }
}

/// A user's running figures as Redis last reported them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Known {
    pub tokens_running: u64,
    pub spend_today: u64,
    pub spend_month: u64,
}

/// A local refusal during an outage: rate windows refuse as usual; token and spend caps
/// (which the local book only knows as an allowance) fail closed with 503.
pub fn outage_refusal(error: ApiError) -> ApiError {
    match error.code {
        ErrorCode::TokensPerDay
        | ErrorCode::DailyBudget
        | ErrorCode::MonthlyBudget
        | ErrorCode::OrgDailyBudget => ApiError::new(
            ErrorCode::StateUnavailable,
            "token and spend limits cannot be checked right now (shared state unavailable)",
        )
        .retry_after(FAIL_CLOSED_RETRY_SECS),
        _ => error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::users::refusal::Refusal;

    fn policy(replicas: u64) -> OutagePolicy {
        let mut config = RedisConfig {
            expected_replicas: replicas,
            ..RedisConfig::default()
        };
        config.outage_allowance_tokens = 1000;
        config.outage_allowance_usd = 0.01;
        OutagePolicy::new(&config)
    }

    #[test]
    fn rate_windows_are_shared_between_replicas_rounding_up() {
        let limits = UserLimits::for_plan(&Config::default(), "pro");
        let local = policy(3).local_limits(&limits, None);
        assert_eq!(
            local.requests_per_minute,
            limits.requests_per_minute.div_ceil(3)
        );
        assert_eq!(local.requests_per_day, limits.requests_per_day.div_ceil(3));
        assert_eq!(
            local.max_concurrent_streams,
            limits.max_concurrent_streams.div_ceil(3)
        );
        assert_eq!(
            policy(1).local_limits(&limits, None).requests_per_minute,
            limits.requests_per_minute
        );
    }

    #[test]
    fn tokens_and_spend_get_the_allowance_capped_by_what_is_left() {
        let limits = UserLimits::for_plan(&Config::default(), "pro");
        let unknown = policy(2).local_limits(&limits, None);
        assert_eq!(unknown.tokens_per_day, 1000);
        assert_eq!(unknown.daily_cap_micro_usd, 10_000);
        let nearly_spent = Known {
            tokens_running: limits.tokens_per_day - 10,
            spend_today: limits.daily_cap_micro_usd - 5,
            spend_month: limits.monthly_cap_micro_usd + 7,
        };
        let local = policy(2).local_limits(&limits, Some(&nearly_spent));
        assert_eq!(local.tokens_per_day, 10);
        assert_eq!(local.daily_cap_micro_usd, 5);
        assert_eq!(local.monthly_cap_micro_usd, 0);
    }

    #[test]
    fn caps_fail_closed_and_windows_refuse_as_usual() {
        let limits = UserLimits::for_plan(&Config::default(), "pro");
        let now = 1_795_608_000_000;
        for why in [
            Refusal::DayTokens,
            Refusal::DailySpend,
            Refusal::MonthlySpend,
            Refusal::OrgDaily,
        ] {
            let e = outage_refusal(why.error(&limits, now));
            assert_eq!(e.code, ErrorCode::StateUnavailable);
            assert_eq!(e.retry_after_secs, Some(FAIL_CLOSED_RETRY_SECS));
            assert!(!e.final_answer);
        }
        let e = outage_refusal(Refusal::Concurrency.error(&limits, now));
        assert_eq!(e.code, ErrorCode::ConcurrentStreams);
    }

    #[test]
    fn the_organisation_gets_the_allowance_within_what_its_cap_left() {
        let p = policy(2); // $0.01 allowance
        assert_eq!(p.org_limit(1_000_000, None), 10_000);
        assert_eq!(p.org_limit(1_000_000, Some(995_000)), 5_000);
        assert_eq!(p.org_limit(1_000_000, Some(1_200_000)), 0);
    }
}
