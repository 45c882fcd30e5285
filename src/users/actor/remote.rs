//! The Redis-mode half of the user's actor: turning the scripts' answers (or their failures)
//! into the client's answers, the outage policy's local admission, Redis-side alert claims, and
//! settlement through Redis or the journal. See the parent module for the actor itself.

use super::{now_reply, Reply, UserActor};
use crate::accounting::{Outcome, Usage};
use crate::calendar::{day_key, month_key, next_day_ms};
use crate::error::{ApiError, ErrorCode};
use crate::users::alerts::UserAlert;
use crate::users::book::{Alert, Book, Counts, Grant, OpenRequest, Refusal};
use crate::users::limits::UserLimits;
use crate::users::messages::{Meter, MeterAnswer, Settle};
use crate::users::outage::{outage_refusal, Known};
use crate::users::redis::{Admitted, Metered, PendingSettle, RedisLedger, Unavailable};
use crate::users::AdmitRequest;
use actix::fut::WrapFuture;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Redis mode: what this replica knows of the user beyond Redis.
pub(super) struct RemoteUser {
    pub(super) ledger: Arc<RedisLedger>,
    /// The user's key prefix (shared with every call's future, not copied).
    pub(super) prefix: Arc<str>,
    /// Requests Redis admitted for this replica, until settled (or adopted by the book when
    /// Redis went away while they ran).
    pub(super) open: HashMap<String, OpenRequest>,
    /// Requests this replica admitted on its own while Redis was away.
    pub(super) local: HashSet<String>,
    /// The user's running figures as Redis last reported them.
    pub(super) known: Option<Known>,
    /// The day and month whose alerts this actor already claimed.
    pub(super) alerted: (Option<u64>, Option<u32>),
    /// Requests whose admit call is in flight, and those among them whose caller left
    /// meanwhile (settled as soon as the answer arrives).
    pub(super) admitting: HashSet<String>,
    cancelled: HashSet<String>,
    /// A refusal only time lifts (minute window, day's requests): until when it holds, for
    /// requests under which limits.
    pub(super) refused_until: Option<(std::time::Instant, UserLimits, ApiError)>,
}

impl RemoteUser {
    /// What a Redis call's future needs: the ledger and the user's key prefix.
    pub(super) fn handles(&self) -> (Arc<RedisLedger>, Arc<str>) {
        (self.ledger.clone(), self.prefix.clone())
    }

    pub(super) fn new(ledger: Arc<RedisLedger>, user_id: &str) -> Self {
        Self {
            prefix: ledger.user_prefix(user_id).into(),
            ledger,
            open: HashMap::new(),
            local: HashSet::new(),
            known: None,
            alerted: (None, None),
            admitting: HashSet::new(),
            cancelled: HashSet::new(),
            refused_until: None,
        }
    }
}

impl UserActor {
    /// Redis mode: the refusal to repeat without asking Redis, while it holds (and only for a
    /// request under the same limits: another plan may allow more).
    pub(super) fn cached_refusal(&mut self, limits: &UserLimits) -> Option<ApiError> {
        let remote = self.remote.as_mut()?;
        match &remote.refused_until {
            Some((until, cached_for, error))
                if std::time::Instant::now() < *until && cached_for == limits =>
            {
                let left = until.saturating_duration_since(std::time::Instant::now());
                Some(
                    error
                        .clone()
                        .retry_after(left.as_millis().div_ceil(1000).max(1) as u64),
                )
            }
            Some((until, ..)) if std::time::Instant::now() >= *until => {
                remote.refused_until = None;
                None
            }
            _ => None,
        }
    }

    /// Redis mode: an admit call for `request_id` is in flight.
    pub(super) fn admitting(&mut self, request_id: &str) {
        if let Some(remote) = self.remote.as_mut() {
            remote.admitting.insert(request_id.to_string());
        }
    }

    /// Redis mode: the admit call for `request_id` was answered. If its caller left meanwhile
    /// (a settlement arrived first), the settlement to apply now.
    pub(super) fn admitted_cancelled(&mut self, request_id: &str) -> Option<Settle> {
        let remote = self.remote.as_mut()?;
        remote.admitting.remove(request_id);
        remote.cancelled.remove(request_id).then(|| Settle {
            request_id: request_id.to_string(),
            usage: Usage::default(),
            outcome: Outcome::ClientGone,
        })
    }

    /// Redis mode: the admit script's answer (or its failure) turned into the client's answer.
    pub(super) fn admitted(
        &mut self,
        reply: Result<Admitted, Unavailable>,
        request: AdmitRequest,
    ) -> Result<Grant, ApiError> {
        let Some(remote) = self.remote.as_mut() else {
            return Err(lost_ledger());
        };
        let limits = request.limits;
        let admitted = match reply {
            Ok(admitted) => admitted,
            Err(error) => return self.admit_during_outage(request, &error),
        };
        remote.known = Some(admitted.known);
        if !self.book.has_open_requests() && remote.ledger.pending_settlements() == 0 {
            // Whatever this replica decided alone during an outage is in Redis by now.
            self.book = Book::default();
        }
        if admitted.expired_leases > 0 {
            tracing::info!(
                user_id = %self.user_id,
                freed = admitted.expired_leases,
                "freed concurrent-request slots whose lease ended (a replica died holding them)"
            );
        }
        let counts = Counts {
            minute_used: admitted.minute_used,
            tokens_running: admitted.known.tokens_running,
            ..Counts::default()
        };
        let rate_limits = counts.rate_limits(&limits);
        let granted = match admitted.decision {
            Ok(granted) => granted,
            Err(why) => {
                let error = why.error(&limits, admitted.now_ms).rate_limits(rate_limits);
                // Refusals nothing but time can lift (the minute window, the day's requests)
                // are answered here until then, sparing Redis an abusive client's retries.
                let wait_ms = match why {
                    Refusal::Minute { frees_at_ms } => {
                        Some(frees_at_ms.saturating_sub(admitted.now_ms))
                    }
                    Refusal::DayRequests => Some(next_day_ms(admitted.now_ms) - admitted.now_ms),
                    _ => None,
                };
                if let Some(wait_ms) = wait_ms {
                    let until =
                        std::time::Instant::now() + std::time::Duration::from_millis(wait_ms);
                    remote.refused_until = Some((until, limits, error.clone()));
                }
                return Err(error);
            }
        };
        let open = OpenRequest {
            stream: request.stream,
            day: day_key(admitted.now_ms),
            month: month_key(admitted.now_ms),
            admitted_ms: admitted.now_ms,
            price: request.price,
            input_tokens: request.estimated_input_tokens,
            reserved_tokens: request.estimated_input_tokens
                + u64::from(granted) * request.choices.max(1),
            metered_output_tokens: 0,
            promised_tokens: 0,
        };
        self.shared.org.add(open.day, open.cost() as i64);
        remote.open.insert(request.request_id, open);
        self.remote_alerts(admitted.known, admitted.now_ms);
        self.touched();
        Ok(Grant {
            max_tokens: granted,
            rate_limits,
        })
    }

    /// Redis mode, Redis away: the local book decides under the outage policy's limits.
    fn admit_during_outage(
        &mut self,
        mut request: AdmitRequest,
        error: &Unavailable,
    ) -> Result<Grant, ApiError> {
        let Some(remote) = self.remote.as_mut() else {
            return Err(lost_ledger());
        };
        tracing::debug!(user_id = %self.user_id, error = %error, "admitting under the outage policy");
        request.limits = remote
            .ledger
            .policy
            .local_limits(&request.limits, remote.known.as_ref());
        let request_id = request.request_id.clone();
        let price = request.price;
        let now = self.shared.clock.now_ms();
        let result = self.book.admit(request, now, &self.shared.org);
        let metrics = &self.shared.metrics;
        match result {
            Ok(grant) => {
                remote.local.insert(request_id);
                metrics.record_outage_decision("admitted");
                self.touched();
                Ok(grant)
            }
            Err(refusal) => {
                if error.may_have_applied() {
                    // The admit call may have reached Redis after all: close that record (with
                    // no usage) once Redis answers, so it holds no slot and is charged nothing.
                    remote.ledger.journal(PendingSettle::of(
                        remote.prefix.clone(),
                        request_id,
                        &OpenRequest::empty(price, now),
                        Usage::default(),
                        false,
                        false,
                    ));
                }
                let refusal = outage_refusal(refusal);
                metrics.record_outage_decision(if refusal.code == ErrorCode::StateUnavailable {
                    "fail_closed"
                } else {
                    "refused"
                });
                Err(refusal)
            }
        }
    }

    /// Redis mode: the meter script's answer (or its failure) for a request Redis admitted.
    pub(super) fn metered(
        &mut self,
        reply: Result<Metered, Unavailable>,
        msg: &Meter,
        limits: &UserLimits,
    ) -> MeterAnswer {
        let (request_id, tokens) = (msg.request_id.as_str(), msg.output_tokens);
        let Some(remote) = self.remote.as_mut() else {
            return MeterAnswer::Stop;
        };
        let verdict = match reply {
            Ok(Metered::Within(k, _)) | Ok(Metered::Over(k)) => {
                let known = remote.known.get_or_insert_with(Known::default);
                known.spend_today = k.spend_today;
                known.spend_month = k.spend_month;
                let known = *known;
                self.remote_alerts(known, self.shared.clock.now_ms());
                match reply {
                    Ok(Metered::Within(_, allowance)) => MeterAnswer::Continue { allowance },
                    _ => MeterAnswer::Stop,
                }
            }
            Ok(Metered::Unknown) => MeterAnswer::Continue { allowance: 0 },
            Err(_) => {
                // Redis went away mid-stream: the book takes the request over and meters what
                // streams from now on against the outage allowance.
                let Some(open) = remote.open.remove(request_id) else {
                    return MeterAnswer::Continue { allowance: 0 };
                };
                // The book counts the request's cost afresh from here (its settlement corrects
                // the organisation ledger against the book's figure): take the cost so far out.
                self.shared.org.add(open.day, -(open.cost() as i64));
                let adopted = OpenRequest {
                    input_tokens: 0,
                    reserved_tokens: 0,
                    metered_output_tokens: 0,
                    promised_tokens: 0,
                    ..open
                };
                self.book.adopt(request_id.to_string(), adopted);
                return self.meter_in_book(request_id, tokens, limits, msg.max_batch);
            }
        };
        let day = day_key(self.shared.clock.now_ms());
        if let Some(open) = self
            .remote
            .as_mut()
            .and_then(|r| r.open.get_mut(request_id))
        {
            let before = open.cost();
            open.metered_output_tokens += tokens;
            self.shared.org.add(day, (open.cost() - before) as i64);
        }
        if self.shared.org.over(day) {
            return MeterAnswer::Stop;
        }
        self.touched();
        verdict
    }

    /// Redis mode: alerts owed by Redis' figures, claimed in Redis so that exactly one replica
    /// sends each.
    fn remote_alerts(&mut self, known: Known, now_ms: u64) {
        let (Some(remote), Some(limits)) = (self.remote.as_mut(), self.limits) else {
            return;
        };
        let (day, month) = (day_key(now_ms), month_key(now_ms));
        let mut due = Vec::new();
        if limits.alert_due(known.spend_today, limits.daily_cap_micro_usd)
            && remote.alerted.0 != Some(day)
        {
            remote.alerted.0 = Some(day);
            due.push((day, known.spend_today, limits.daily_cap_micro_usd, "daily"));
        }
        if limits.alert_due(known.spend_month, limits.monthly_cap_micro_usd)
            && remote.alerted.1 != Some(month)
        {
            remote.alerted.1 = Some(month);
            due.push((
                u64::from(month),
                known.spend_month,
                limits.monthly_cap_micro_usd,
                "monthly",
            ));
        }
        for (period, spend, cap, window) in due {
            let (ledger, prefix) = remote.handles();
            let alerts = self.shared.alerts.clone();
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
                            tokio::time::sleep(std::time::Duration::from_secs(backoff_secs)).await;
                        }
                        Err(e) => {
                            tracing::error!(user_id = %user_id, window, error = %e, "budget alert not sent: Redis unavailable");
                        }
                    }
                }
            });
        }
    }

    /// Redis mode: settles a request this replica admitted (through Redis or on its own).
    pub(super) fn settle_remote(&mut self, msg: Settle) -> Reply<()> {
        let Some(remote) = self.remote.as_mut() else {
            return now_reply(());
        };
        let in_book = self.book.open_request(&msg.request_id).cloned();
        let Some(open) = remote.open.remove(&msg.request_id).or(in_book.clone()) else {
            if remote.admitting.contains(&msg.request_id) {
                // The caller left before its admit call was answered: settle on the answer.
                remote.cancelled.insert(msg.request_id);
            }
            return now_reply(()); // settled already
        };
        let local = remote.local.remove(&msg.request_id);
        let (ledger, prefix) = remote.handles();
        let now = self.shared.clock.now_ms();
        if in_book.is_some() {
            let org = &self.shared.org;
            self.book
                .settle(&msg.request_id, msg.usage, msg.outcome, now, org);
        } else {
            let cost = open.price.cost_micro_usd(msg.usage);
            self.shared
                .org
                .add(open.day, cost as i64 - open.cost() as i64);
        }
        let cut = msg.outcome != Outcome::Completed;
        let entry = PendingSettle::of(prefix, msg.request_id, &open, msg.usage, cut, local);
        self.touched();
        Box::pin(async move { ledger.settle(entry).await }.into_actor(self))
    }
}

/// Redis-mode handlers run only on actors built with a ledger; this answers the impossible case.
fn lost_ledger() -> ApiError {
    ApiError::new(ErrorCode::Internal, "user actor lost its Redis ledger")
}
