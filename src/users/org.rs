//! The organisation-wide daily spend, shared by every user's actor: refuses everybody once the
//! whole organisation has spent `cost.max_org_daily_usd` today. It counts spend in flight
//! (input reserved at admission, output as metered), corrects to the final cost at settlement,
//! and counts the allowances promised to open requests of every user (see [`super::allowance`]),
//! so that no stream is allowed past the cap.
//!
//! In embedded mode this is the organisation's counter. In Redis mode the counter lives in
//! Redis (`org.lua`); this ledger then holds only what the replica decides on its own while
//! Redis is away, under the outage policy's limit ([`OrgLedger::set_outage_limit`]).

use super::refusal::Refusal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Debug, Default, Clone, Copy)]
struct Today {
    day: u64,
    spent: u64,
    promised: u64,
    /// Outage mode: the most the organisation may still spend today as Redis last said.
    limit: Option<u64>,
}

#[derive(Debug)]
pub struct OrgLedger {
    /// A reload may change it (not switch it on or off: that needs a restart).
    cap_micro_usd: AtomicU64,
    today: Mutex<Today>,
}

impl OrgLedger {
    /// `cap_micro_usd` 0 means no organisation cap.
    pub fn new(cap_micro_usd: u64) -> Self {
        Self {
            cap_micro_usd: AtomicU64::new(cap_micro_usd),
            today: Mutex::new(Today::default()),
        }
    }

    pub fn cap(&self) -> Option<u64> {
        let cap = self.cap_micro_usd.load(Ordering::Relaxed);
        (cap > 0).then_some(cap)
    }

    /// A reloaded cap (both old and new non-zero).
    pub fn set_cap(&self, cap_micro_usd: u64) {
        self.cap_micro_usd.store(cap_micro_usd, Ordering::Relaxed);
    }

    /// Today's figures (a new day starts from zero).
    fn on(&self, day: u64) -> std::sync::MutexGuard<'_, Today> {
        let mut guard = self.today.lock().unwrap_or_else(|p| p.into_inner());
        if guard.day < day {
            *guard = Today {
                day,
                limit: guard.limit,
                ..Today::default()
            };
        }
        guard
    }

    /// The cap that binds on `today`: the configured one, lowered in outage mode.
    fn binding_cap(&self, today: &Today) -> Option<u64> {
        let cap = self.cap()?;
        Some(today.limit.map_or(cap, |limit| cap.min(limit)))
    }

    /// Today's spend so far.
    pub fn spent(&self, day: u64) -> u64 {
        let today = self.on(day);
        if today.day == day {
            today.spent
        } else {
            0
        }
    }

    /// Today's promised allowances.
    pub fn promised(&self, day: u64) -> u64 {
        let today = self.on(day);
        if today.day == day {
            today.promised
        } else {
            0
        }
    }

    /// Adds (or, negative, removes) spend for `day`. A late correction for a past day is
    /// ignored.
    pub fn add(&self, day: u64, delta: i64) {
        let mut today = self.on(day);
        if today.day == day {
            today.spent = today.spent.saturating_add_signed(delta);
        }
    }

    /// Adds (or, negative, releases) promised spend for `day`.
    pub fn promise(&self, day: u64, delta: i64) {
        let mut today = self.on(day);
        if today.day == day {
            today.promised = today.promised.saturating_add_signed(delta);
        }
    }

    /// Spend free today for a request whose own promise is `own_promise` (none for a new
    /// one): the cap less the spend and everybody else's promises. `None`: no cap.
    pub fn free(&self, day: u64, own_promise: u64) -> Option<u64> {
        let today = self.on(day);
        let cap = self.binding_cap(&today)?;
        let (spent, promised) = if today.day == day {
            (today.spent, today.promised)
        } else {
            (0, 0)
        };
        Some(cap.saturating_sub(spent + promised.saturating_sub(own_promise)))
    }

    /// Whether a new request costing `cost` may be admitted today: refused `OrgDaily` past
    /// the cap, `OrgInFlight` if only the promises stand in the way (they end soon).
    pub fn check(&self, day: u64, cost: u64) -> Result<(), Refusal> {
        let today = self.on(day);
        let Some(cap) = self.binding_cap(&today) else {
            return Ok(());
        };
        let (spent, promised) = if today.day == day {
            (today.spent, today.promised)
        } else {
            (0, 0)
        };
        if spent + cost > cap {
            Err(Refusal::OrgDaily)
        } else if spent + promised + cost > cap {
            Err(Refusal::OrgInFlight)
        } else {
            Ok(())
        }
    }

    /// Whether replacing `old` of `day`'s spend and promises with `new` would pass the cap (a
    /// re-priced request: its cost and promise at the old price are counted already).
    pub fn would_pass_replacing(&self, day: u64, old: u64, new: u64) -> bool {
        let today = self.on(day);
        let Some(cap) = self.binding_cap(&today) else {
            return false;
        };
        let used = if today.day == day {
            today.spent + today.promised
        } else {
            0
        };
        used + new > cap + old
    }

    /// Outage mode (Redis away): the organisation may spend at most `limit` more today on this
    /// replica's own decisions. Redis mode keeps it current from the organisation's figures.
    pub fn set_outage_limit(&self, limit: u64) {
        let mut today = self.today.lock().unwrap_or_else(|p| p.into_inner());
        today.limit = Some(limit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promises_are_taken_from_the_free_spend() {
        let org = OrgLedger::new(1000);
        org.add(7, 300);
        org.promise(7, 200);
        assert_eq!(org.free(7, 0), Some(500));
        assert_eq!(
            org.free(7, 200),
            Some(700),
            "a request's own promise is its own"
        );
        assert_eq!(org.check(7, 500), Ok(()));
        assert_eq!(org.check(7, 600), Err(Refusal::OrgInFlight));
        assert_eq!(org.check(7, 800), Err(Refusal::OrgDaily));
        // A new day starts from zero; a late correction for the old one changes nothing.
        assert_eq!(org.free(8, 0), Some(1000));
        org.add(7, 50);
        assert_eq!(org.spent(8), 0);
        assert_eq!(OrgLedger::new(0).free(8, 0), None);
    }

    #[test]
    fn the_outage_limit_lowers_the_cap() {
        let org = OrgLedger::new(1000);
        org.set_outage_limit(100);
        org.add(3, 60);
        assert_eq!(org.free(3, 0), Some(40));
        assert_eq!(org.check(3, 41), Err(Refusal::OrgDaily));
        assert_eq!(org.free(4, 0), Some(100), "each day");
    }
}
