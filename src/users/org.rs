//! The organisation-wide daily spend, shared by every user's actor: a circuit breaker that
//! refuses everybody once the whole organisation has spent `cost.max_org_daily_usd` today.
//! It counts spend in flight (input reserved at admission, output as metered) and corrects to
//! the final cost at settlement.

use std::sync::Mutex;

#[derive(Debug)]
pub struct OrgLedger {
    cap_micro_usd: u64,
    day_and_spent: Mutex<(u64, u64)>,
}

impl OrgLedger {
    /// `cap_micro_usd` 0 means no organisation cap.
    pub fn new(cap_micro_usd: u64) -> Self {
        Self {
            cap_micro_usd,
            day_and_spent: Mutex::new((0, 0)),
        }
    }

    pub fn cap(&self) -> Option<u64> {
        (self.cap_micro_usd > 0).then_some(self.cap_micro_usd)
    }

    /// Today's spend so far.
    pub fn spent(&self, day: u64) -> u64 {
        let guard = self.day_and_spent.lock().unwrap_or_else(|p| p.into_inner());
        if guard.0 == day {
            guard.1
        } else {
            0
        }
    }

    /// Adds (or, negative, removes) spend for `day`.
    pub fn add(&self, day: u64, delta: i64) {
        let mut guard = self.day_and_spent.lock().unwrap_or_else(|p| p.into_inner());
        if guard.0 != day {
            if day < guard.0 {
                return; // a late correction for a past day
            }
            *guard = (day, 0);
        }
        guard.1 = guard.1.saturating_add_signed(delta);
    }

    /// Whether adding `cost` to today's spend would pass the cap.
    pub fn would_pass(&self, day: u64, cost: u64) -> bool {
        self.cap().is_some_and(|cap| self.spent(day) + cost > cap)
    }

    /// Whether replacing `old_cost` of `day`'s spend with `new_cost` would leave it past the cap
    /// (a re-priced request: its cost at the old price is in the spend already).
    pub fn would_pass_replacing(&self, day: u64, old_cost: u64, new_cost: u64) -> bool {
        self.cap()
            .is_some_and(|cap| self.spent(day) + new_cost > cap + old_cost)
    }

    /// Whether today's spend passes the cap.
    pub fn over(&self, day: u64) -> bool {
        self.cap().is_some_and(|cap| self.spent(day) > cap)
    }
}
