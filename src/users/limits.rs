//! The limits that apply to one user: `[rate]` and `[cost]`, overridden by the user's plan
//! (and by an operator's per-user overrides, [`super::admin`]).

use crate::config::{Config, CostOverrides, RateOverrides};

/// One user's limits, money in integer micro-USD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserLimits {
    pub requests_per_minute: u64,
    pub requests_per_day: u64,
    pub tokens_per_day: u64,
    pub max_concurrent_streams: u64,
    pub min_granted_tokens: u32,
    pub daily_cap_micro_usd: u64,
    pub monthly_cap_micro_usd: u64,
    pub alert_threshold_percent: u8,
}

impl UserLimits {
    /// The limits of `plan` (the global ones where the plan names none).
    pub fn for_plan(config: &Config, plan: &str) -> Self {
        let global = Self {
            requests_per_minute: config.rate.requests_per_minute,
            requests_per_day: config.rate.requests_per_day,
            tokens_per_day: config.rate.tokens_per_day,
            max_concurrent_streams: config.rate.max_concurrent_streams,
            min_granted_tokens: config.rate.min_granted_tokens,
            daily_cap_micro_usd: usd_to_micro(config.cost.max_daily_usd),
            monthly_cap_micro_usd: usd_to_micro(config.cost.max_monthly_usd),
            alert_threshold_percent: config.cost.alert_threshold_percent,
        };
        match config.plans.get(plan) {
            Some(p) => global.overridden(&p.rate, &p.cost),
            None => global,
        }
    }

    /// These limits with the keys `rate` and `cost` set replaced (a plan's, or an operator's
    /// per-user overrides).
    pub fn overridden(self, rate: &RateOverrides, cost: &CostOverrides) -> Self {
        Self {
            requests_per_minute: rate.requests_per_minute.unwrap_or(self.requests_per_minute),
            requests_per_day: rate.requests_per_day.unwrap_or(self.requests_per_day),
            tokens_per_day: rate.tokens_per_day.unwrap_or(self.tokens_per_day),
            max_concurrent_streams: rate
                .max_concurrent_streams
                .unwrap_or(self.max_concurrent_streams),
            min_granted_tokens: rate.min_granted_tokens.unwrap_or(self.min_granted_tokens),
            daily_cap_micro_usd: cost
                .max_daily_usd
                .map_or(self.daily_cap_micro_usd, usd_to_micro),
            monthly_cap_micro_usd: cost
                .max_monthly_usd
                .map_or(self.monthly_cap_micro_usd, usd_to_micro),
            alert_threshold_percent: cost
                .alert_threshold_percent
                .unwrap_or(self.alert_threshold_percent),
        }
    }
}

impl UserLimits {
    /// Whether `spend` has reached `alert_threshold_percent` of `cap` (a cap of 0: never).
    pub fn alert_due(&self, spend_micro_usd: u64, cap_micro_usd: u64) -> bool {
        cap_micro_usd > 0
            && u128::from(spend_micro_usd) * 100
                >= u128::from(cap_micro_usd) * u128::from(self.alert_threshold_percent)
    }
}

/// USD (validated finite, ≥ 0) to micro-USD.
pub fn usd_to_micro(usd: f64) -> u64 {
    (usd * 1_000_000.0).round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_override_only_what_they_name() {
        let mut config = Config::default();
        let pro = config.plans.get_mut("pro").unwrap();
        pro.rate.requests_per_minute = Some(60);
        pro.cost.max_daily_usd = Some(2.0);
        let limits = UserLimits::for_plan(&config, "pro");
        assert_eq!(limits.requests_per_minute, 60);
        assert_eq!(limits.daily_cap_micro_usd, 2_000_000);
        assert_eq!(limits.requests_per_day, 100);
        assert_eq!(limits.monthly_cap_micro_usd, 10_000_000);
        assert_eq!(
            UserLimits::for_plan(&config, "basic").requests_per_minute,
            10
        );
    }
}
