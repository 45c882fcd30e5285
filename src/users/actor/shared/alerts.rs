//! Redis mode's budget alerts: owed by Redis' figures (all replicas' spend), and claimed in Redis
//! so that exactly one replica sends each.

use super::Shared;
use crate::calendar::{day_key, month_key};
use crate::users::actor::UserActor;
use crate::users::alerts::UserAlert;
use crate::users::book::Alert;
use crate::users::outage::Known;
use std::time::Duration;

impl UserActor<Shared> {
    /// Claims (off the request path) the alerts `known`'s spend makes due, once per day and
    /// month per actor; the replica whose claim wins sends the alert.
    pub(super) fn claim_alerts(&mut self, known: Known, now_ms: u64) {
        let Some(limits) = self.limits else {
            return;
        };
        let shared = &mut self.authority;
        let (day, month) = (day_key(now_ms), month_key(now_ms));
        let mut due = Vec::new();
        if limits.alert_due(known.spend_today, limits.daily_cap_micro_usd)
            && shared.alerted.0 != Some(day)
        {
            shared.alerted.0 = Some(day);
            due.push((day, known.spend_today, limits.daily_cap_micro_usd, "daily"));
        }
        if limits.alert_due(known.spend_month, limits.monthly_cap_micro_usd)
            && shared.alerted.1 != Some(month)
        {
            shared.alerted.1 = Some(month);
            due.push((
                u64::from(month),
                known.spend_month,
                limits.monthly_cap_micro_usd,
                "monthly",
            ));
        }
        for (period, spend, cap, window) in due {
            let (ledger, prefix) = shared.handles();
            let alerts = self.env.alerts.clone();
            let user_id = self.user_id.clone();
            actix_rt::spawn(async move {
                // Redis may be briefly away: retry the claim a few times before giving up.
                for backoff_secs in [1, 2, 4, 0] {
                    match ledger.claim_alert(&prefix, window, period).await {
                        Ok(true) => {
                            alerts.send(UserAlert {
                                user_id,
                                alert: Alert {
                                    window,
                                    spend_micro_usd: spend,
                                    cap_micro_usd: cap,
                                    percent: limits.alert_threshold_percent,
                                },
                            });
                            return;
                        }
                        Ok(false) => return, // another replica sent it
                        Err(_) if backoff_secs > 0 => {
                            tokio::time::sleep(Duration::from_secs(backoff_secs)).await;
                        }
                        Err(e) => {
                            tracing::error!(user_id = %user_id, window, error = %e, "budget alert not sent: Redis unavailable");
                        }
                    }
                }
            });
        }
    }
}
