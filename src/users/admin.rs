//! What an operator set for one user through the admin API: a block, and per-user overrides of
//! `rate.*` / `cost.*` keys that may expire. It lives where the user's state lives (the
//! user's state in embedded mode, saved with it; a hash beside the user's keys in Redis mode),
//! and every decision about the user applies it: admission, metering (a block or a new cap
//! reaches open streams at their next report), re-pricing and `/v1/usage`.

use super::limits::UserLimits;
use crate::config::{CostOverrides, RateOverrides};
use serde::{Deserialize, Serialize};

/// An operator's settings for one user.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UserAdmin {
    /// Refused (`403 user_blocked`) and open streams cut (`user_blocked`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub blocked: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overrides: Option<Overrides>,
}

/// Per-user overrides of the plan's limits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    #[serde(default)]
    pub rate: RateOverrides,
    #[serde(default)]
    pub cost: CostOverrides,
    /// When they stop applying (ms since the epoch); `None` = until removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
}

impl Overrides {
    /// Why these overrides cannot be applied, naming the key.
    pub fn invalid(&self, now_ms: u64) -> Option<String> {
        let cost = &self.cost;
        for (key, usd) in [
            ("cost.max_daily_usd", cost.max_daily_usd),
            ("cost.max_monthly_usd", cost.max_monthly_usd),
        ] {
            if let Some(usd) = usd {
                if !usd.is_finite() || !(0.0..=1e9).contains(&usd) {
                    return Some(format!("{key} must be a number of USD from 0 to 1e9"));
                }
            }
        }
        if let Some(percent) = cost.alert_threshold_percent {
            if !(1..=100).contains(&percent) {
                return Some("cost.alert_threshold_percent must be from 1 to 100".into());
            }
        }
        if self.rate.max_concurrent_streams == Some(0) {
            return Some(
                "rate.max_concurrent_streams must be at least 1 (block the user instead)".into(),
            );
        }
        if self.expires_at_ms.is_some_and(|at| at <= now_ms) {
            return Some("expires_at is in the past".into());
        }
        None
    }
}

/// A window an operator may reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Window {
    /// The rolling minute's requests.
    Minute,
    /// Today's requests, tokens and spend.
    Day,
    /// This month's spend.
    Month,
}

/// A change an operator makes.
#[derive(Debug, Clone, PartialEq)]
pub enum AdminOp {
    SetOverrides(Overrides),
    ClearOverrides,
    Block,
    Unblock,
    Reset(Vec<Window>),
}

impl UserAdmin {
    /// The overrides in force at `now_ms` (none once expired).
    pub fn active_overrides(&self, now_ms: u64) -> Option<&Overrides> {
        self.overrides
            .as_ref()
            .filter(|o| o.expires_at_ms.is_none_or(|at| now_ms < at))
    }

    /// `plan_limits` with the overrides in force applied.
    pub fn limits(&self, plan_limits: UserLimits, now_ms: u64) -> UserLimits {
        match self.active_overrides(now_ms) {
            Some(o) => plan_limits.overridden(&o.rate, &o.cost),
            None => plan_limits,
        }
    }

    /// Applies `op` to the settings (a window reset changes none of them).
    pub fn apply(&mut self, op: &AdminOp) {
        match op {
            AdminOp::SetOverrides(o) => self.overrides = Some(o.clone()),
            AdminOp::ClearOverrides => self.overrides = None,
            AdminOp::Block => self.blocked = true,
            AdminOp::Unblock => self.blocked = false,
            AdminOp::Reset(_) => {}
        }
    }

    /// Drops overrides that expired (nothing to keep for them).
    pub fn forget_expired(&mut self, now_ms: u64) {
        if self.overrides.is_some() && self.active_overrides(now_ms).is_none() {
            self.overrides = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn raised() -> Overrides {
        Overrides {
            rate: RateOverrides {
                requests_per_minute: Some(50),
                ..RateOverrides::default()
            },
            cost: CostOverrides {
                max_daily_usd: Some(2.0),
                ..CostOverrides::default()
            },
            expires_at_ms: Some(1_000),
        }
    }

    #[test]
    fn overrides_replace_only_their_keys_until_they_expire() {
        let plan = UserLimits::for_plan(&Config::default(), "pro");
        let mut admin = UserAdmin::default();
        admin.apply(&AdminOp::SetOverrides(raised()));
        let during = admin.limits(plan, 999);
        assert_eq!(during.requests_per_minute, 50);
        assert_eq!(during.daily_cap_micro_usd, 2_000_000);
        assert_eq!(during.monthly_cap_micro_usd, plan.monthly_cap_micro_usd);
        assert_eq!(during.requests_per_day, plan.requests_per_day);
        assert_eq!(admin.limits(plan, 1_000), plan);
        admin.forget_expired(1_000);
        assert_eq!(admin, UserAdmin::default());
    }

    #[test]
    fn invalid_overrides_name_their_key() {
        let mut o = raised();
        assert_eq!(o.invalid(0), None);
        assert!(o.invalid(1_000).unwrap().contains("expires_at"));
        o.cost.max_daily_usd = Some(-1.0);
        assert!(o.invalid(0).unwrap().contains("cost.max_daily_usd"));
        o.cost.max_daily_usd = None;
        o.cost.alert_threshold_percent = Some(0);
        assert!(o.invalid(0).unwrap().contains("alert_threshold_percent"));
        o.cost.alert_threshold_percent = None;
        o.rate.max_concurrent_streams = Some(0);
        assert!(o.invalid(0).unwrap().contains("max_concurrent_streams"));
    }

    #[test]
    fn a_block_and_overrides_survive_a_round_trip_through_json() {
        let mut admin = UserAdmin::default();
        assert_eq!(serde_json::to_string(&admin).unwrap(), "{}");
        admin.apply(&AdminOp::Block);
        admin.apply(&AdminOp::SetOverrides(raised()));
        let text = serde_json::to_string(&admin).unwrap();
        assert_eq!(serde_json::from_str::<UserAdmin>(&text).unwrap(), admin);
        admin.apply(&AdminOp::Unblock);
        admin.apply(&AdminOp::ClearOverrides);
        assert_eq!(admin, UserAdmin::default());
    }
}
