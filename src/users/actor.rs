//! The per-user actor: owns one user's [`Book`], handles one message at a time, sends alerts off
//! the request path, and evicts itself when idle, leaving its state in the store.
//!
//! Embedded mode: the book is the authority, and one message at a time is what makes admission
//! atomic. Redis mode (see [`RemoteUser`]): the Redis scripts are the authority (atomic across
//! replicas); the book then only holds what this replica decided on its own while Redis was
//! away, under the outage policy's local limits.

use super::alerts::{AlertSender, UserAlert};
use super::book::{Alert, Book, Counts, Grant, OpenRequest, UsageReport};
use super::calendar::{day_key, month_key};
use super::limits::UserLimits;
use super::messages::{Admit, Meter, Settle, Snapshot, Verdict};
use super::org::OrgLedger;
use super::outage::{outage_refusal, Known};
use super::redis::{Admitted, Metered, PendingSettle, RedisLedger, Unavailable};
use super::store::UserStore;
use super::AdmitRequest;
use crate::accounting::{Outcome, Usage};
use crate::clock::Clock;
use crate::error::ApiError;
use crate::telemetry::Metrics;
use actix::fut::{ready, ActorFutureExt, WrapFuture};
use actix::{Actor, ActorContext, AsyncContext, Context, Handler, ResponseActFuture};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What every actor shares.
#[derive(Debug, Clone)]
pub(super) struct Shared {
    pub clock: Arc<dyn Clock>,
    pub org: Arc<OrgLedger>,
    pub store: Arc<dyn UserStore>,
    pub remote: Option<Arc<RedisLedger>>,
    pub alerts: AlertSender,
    pub metrics: Metrics,
    pub directory: Arc<Mutex<HashMap<String, actix::Addr<UserActor>>>>,
    pub mailbox_capacity: usize,
    pub idle_evict: Duration,
}

/// Redis mode: what this replica knows of the user beyond Redis.
struct RemoteUser {
    ledger: Arc<RedisLedger>,
    prefix: String,
    /// Requests Redis admitted for this replica, until settled (or adopted by the book when
    /// Redis went away while they ran).
    open: HashMap<String, OpenRequest>,
    /// Requests this replica admitted on its own while Redis was away.
    local: HashSet<String>,
    /// The user's running figures as Redis last reported them.
    known: Option<Known>,
    /// The day and month whose alerts this actor already claimed.
    alerted: (Option<u64>, Option<u32>),
}

pub(super) struct UserActor {
    user_id: String,
    book: Book,
    limits: Option<UserLimits>,
    remote: Option<RemoteUser>,
    shared: Shared,
    last_active: Instant,
    evicting: bool,
}

type Reply<T> = ResponseActFuture<UserActor, T>;

fn now_reply<T: 'static>(value: T) -> Reply<T> {
    Box::pin(ready(value))
}

impl UserActor {
    pub(super) fn new(user_id: String, shared: Shared) -> Self {
        let remote = shared.remote.clone().map(|ledger| RemoteUser {
            prefix: ledger.user_prefix(&user_id),
            ledger,
            open: HashMap::new(),
            local: HashSet::new(),
            known: None,
            alerted: (None, None),
        });
        let state = match remote {
            Some(_) => Default::default(),
            None => shared.store.load(&user_id).unwrap_or_default(),
        };
        Self {
            user_id,
            book: Book::new(state),
            limits: None,
            remote,
            shared,
            last_active: Instant::now(),
            evicting: false,
        }
    }

    fn touched(&mut self) {
        self.last_active = Instant::now();
        if self.remote.is_some() {
            return; // alerts come from Redis' figures (remote_alerts)
        }
        if let Some(limits) = self.limits {
            for alert in self.book.due_alerts(&limits) {
                self.shared.alerts.send(UserAlert {
                    user_id: self.user_id.clone(),
                    alert,
                });
            }
        }
    }

    fn evict_if_idle(&mut self, ctx: &mut Context<Self>) {
        let remote_open = self.remote.as_ref().is_some_and(|r| !r.open.is_empty());
        if self.evicting
            || self.book.has_open_requests()
            || remote_open
            || self.last_active.elapsed() < self.shared.idle_evict
        {
            return;
        }
        self.evicting = true;
        if self.remote.is_none() {
            self.shared
                .store
                .save(&self.user_id, self.book.state().clone());
        }
        let me = ctx.address();
        let mut directory = self
            .shared
            .directory
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if directory.get(&self.user_id) == Some(&me) {
            directory.remove(&self.user_id);
        }
        drop(directory);
        ctx.stop();
    }

    /// Redis mode: the admit script's answer (or its failure) turned into the client's answer.
    fn admitted(
        &mut self,
        reply: Result<Admitted, Unavailable>,
        request: AdmitRequest,
    ) -> Result<Grant, ApiError> {
        let Some(remote) = self.remote.as_mut() else {
            return Err(ApiError::new(
                crate::error::ErrorCode::Internal,
                "user actor lost its Redis ledger",
            ));
        };
        let limits = request.limits;
        let admitted = match reply {
            Ok(admitted) => admitted,
            Err(error) => return self.admit_during_outage(request, &error),
        };
        remote.known = Some(admitted.known);
        if !self.book.has_open_requests() {
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
            Err(why) => return Err(why.error(&limits, admitted.now_ms).rate_limits(rate_limits)),
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
            return Err(ApiError::new(
                crate::error::ErrorCode::Internal,
                "user actor lost its Redis ledger",
            ));
        };
        tracing::debug!(user_id = %self.user_id, error = %error, "admitting under the outage policy");
        request.limits = remote
            .ledger
            .policy
            .local_limits(&request.limits, remote.known.as_ref());
        let request_id = request.request_id.clone();
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
                let refusal = outage_refusal(refusal);
                metrics.record_outage_decision(
                    if refusal.code == crate::error::ErrorCode::StateUnavailable {
                        "fail_closed"
                    } else {
                        "refused"
                    },
                );
                Err(refusal)
            }
        }
    }

    /// Redis mode: the outage policy's limits for requests this book holds.
    fn local_limits(&self, limits: &UserLimits) -> UserLimits {
        match &self.remote {
            Some(remote) => remote
                .ledger
                .policy
                .local_limits(limits, remote.known.as_ref()),
            None => *limits,
        }
    }

    fn meter_in_book(&mut self, request_id: &str, tokens: u64, limits: &UserLimits) -> Verdict {
        let local = self.local_limits(limits);
        let now = self.shared.clock.now_ms();
        let within = self
            .book
            .meter(request_id, tokens, &local, now, &self.shared.org);
        self.touched();
        if within {
            let allowance = self.book.allowance(request_id, &local, &self.shared.org);
            Verdict::Continue { allowance }
        } else {
            Verdict::StopBudget
        }
    }

    /// Redis mode: the meter script's answer (or its failure) for a request Redis admitted.
    fn metered(
        &mut self,
        reply: Result<Metered, Unavailable>,
        request_id: &str,
        tokens: u64,
        limits: &UserLimits,
    ) -> Verdict {
        let Some(remote) = self.remote.as_mut() else {
            return Verdict::StopBudget;
        };
        let verdict = match reply {
            Ok(Metered::Within(k, _)) | Ok(Metered::Over(k)) => {
                let known = remote.known.get_or_insert_with(Known::default);
                known.spend_today = k.spend_today;
                known.spend_month = k.spend_month;
                let known = *known;
                self.remote_alerts(known, self.shared.clock.now_ms());
                match reply {
                    // The organisation cap is counted here, per replica: no allowance then.
                    Ok(Metered::Within(_, allowance)) if self.shared.org.cap().is_none() => {
                        Verdict::Continue { allowance }
                    }
                    Ok(Metered::Within(..)) => Verdict::Continue { allowance: 0 },
                    _ => Verdict::StopBudget,
                }
            }
            Ok(Metered::Unknown) => Verdict::Continue { allowance: 0 },
            Err(_) => {
                // Redis went away mid-stream: the book takes the request over and meters what
                // streams from now on against the outage allowance.
                let Some(open) = remote.open.remove(request_id) else {
                    return Verdict::Continue { allowance: 0 };
                };
                let adopted = OpenRequest {
                    input_tokens: 0,
                    reserved_tokens: 0,
                    metered_output_tokens: 0,
                    ..open
                };
                self.book.adopt(request_id.to_string(), adopted);
                return self.meter_in_book(request_id, tokens, limits);
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
            return Verdict::StopBudget;
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
        let percent = u64::from(limits.alert_threshold_percent);
        let crossed = |spend: u64, cap: u64| cap > 0 && spend * 100 >= cap * percent;
        let (day, month) = (day_key(now_ms), month_key(now_ms));
        let mut due = Vec::new();
        if crossed(known.spend_today, limits.daily_cap_micro_usd) && remote.alerted.0 != Some(day) {
            remote.alerted.0 = Some(day);
            due.push((day, known.spend_today, limits.daily_cap_micro_usd, "daily"));
        }
        if crossed(known.spend_month, limits.monthly_cap_micro_usd)
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
            let ledger = remote.ledger.clone();
            let prefix = remote.prefix.clone();
            let alerts = self.shared.alerts.clone();
            let user_id = self.user_id.clone();
            actix_rt::spawn(async move {
                if let Ok(true) = ledger.claim_alert(&prefix, window, period).await {
                    alerts.send(UserAlert {
                        user_id,
                        alert: Alert {
                            window,
                            spend_micro_usd: spend,
                            cap_micro_usd: cap,
                            percent: limits.alert_threshold_percent,
                        },
                    });
                }
            });
        }
    }

    /// Redis mode: settles a request this replica admitted (through Redis or on its own).
    fn settle_remote(&mut self, msg: Settle) -> Reply<()> {
        let Some(remote) = self.remote.as_mut() else {
            return now_reply(());
        };
        let in_book = self.book.open_request(&msg.request_id).cloned();
        let Some(open) = remote.open.remove(&msg.request_id).or(in_book.clone()) else {
            return now_reply(()); // settled already
        };
        let local = remote.local.remove(&msg.request_id);
        let (ledger, prefix) = (remote.ledger.clone(), remote.prefix.clone());
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
        let (input_nano_usd, output_nano_usd) = open.price.nano_usd_per_token();
        let entry = PendingSettle {
            prefix,
            request_id: msg.request_id,
            input_tokens: msg.usage.input_tokens,
            output_tokens: msg.usage.output_tokens,
            cut: msg.outcome != Outcome::Completed,
            local,
            day: open.day,
            month: open.month,
            input_nano_usd,
            output_nano_usd,
            admitted_ms: open.admitted_ms,
        };
        self.touched();
        Box::pin(async move { ledger.settle(entry).await }.into_actor(self))
    }
}

impl Actor for UserActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.shared.mailbox_capacity);
        let every =
            (self.shared.idle_evict / 4).clamp(Duration::from_millis(50), Duration::from_secs(10));
        ctx.run_interval(every, |actor, ctx| actor.evict_if_idle(ctx));
    }
}

impl Handler<Admit> for UserActor {
    type Result = Reply<Option<Result<Grant, ApiError>>>;

    fn handle(&mut self, Admit(request): Admit, _: &mut Self::Context) -> Self::Result {
        if self.evicting {
            return now_reply(None);
        }
        self.limits = Some(request.limits);
        let now = self.shared.clock.now_ms();
        let Some(remote) = &self.remote else {
            let result = self.book.admit(request, now, &self.shared.org);
            self.touched();
            return now_reply(Some(result));
        };
        // The organisation cap is counted per replica (see README: Redis mode).
        let org = &self.shared.org;
        let input_cost = request.price.cost_micro_usd(Usage {
            input_tokens: request.estimated_input_tokens,
            output_tokens: 0,
        });
        if org
            .cap()
            .is_some_and(|cap| org.spent(day_key(now)) + input_cost > cap)
        {
            let error = super::book::Refusal::OrgDaily.error(&request.limits, now);
            return now_reply(Some(Err(error)));
        }
        let (ledger, prefix) = (remote.ledger.clone(), remote.prefix.clone());
        Box::pin(
            async move {
                let reply = ledger.admit(&prefix, &request).await;
                (reply, request)
            }
            .into_actor(self)
            .map(|(reply, request), actor, _| Some(actor.admitted(reply, request))),
        )
    }
}

impl Handler<Meter> for UserActor {
    type Result = Reply<Verdict>;

    fn handle(&mut self, msg: Meter, _: &mut Self::Context) -> Self::Result {
        let Some(limits) = self.limits else {
            return now_reply(Verdict::Continue { allowance: 0 });
        };
        let remote_held = self
            .remote
            .as_ref()
            .filter(|r| r.open.contains_key(&msg.request_id));
        let Some(remote) = remote_held else {
            // Embedded mode, or a request this replica's book holds.
            return now_reply(self.meter_in_book(&msg.request_id, msg.output_tokens, &limits));
        };
        let (ledger, prefix) = (remote.ledger.clone(), remote.prefix.clone());
        Box::pin(
            async move {
                let reply = ledger
                    .meter(&prefix, &msg.request_id, msg.output_tokens, &limits)
                    .await;
                (reply, msg)
            }
            .into_actor(self)
            .map(move |(reply, msg), actor, _| {
                actor.metered(reply, &msg.request_id, msg.output_tokens, &limits)
            }),
        )
    }
}

impl Handler<Settle> for UserActor {
    type Result = Reply<()>;

    fn handle(&mut self, msg: Settle, _: &mut Self::Context) -> Self::Result {
        if self.remote.is_some() {
            return self.settle_remote(msg);
        }
        let now = self.shared.clock.now_ms();
        self.book.settle(
            &msg.request_id,
            msg.usage,
            msg.outcome,
            now,
            &self.shared.org,
        );
        // Keep the store current, so a snapshot (embedded mode) holds settled usage.
        self.shared
            .store
            .save(&self.user_id, self.book.state().clone());
        self.touched();
        now_reply(())
    }
}

impl Handler<Snapshot> for UserActor {
    type Result = Reply<Option<UsageReport>>;

    fn handle(&mut self, Snapshot(limits): Snapshot, _: &mut Self::Context) -> Self::Result {
        if self.evicting {
            return now_reply(None);
        }
        let Some(remote) = &self.remote else {
            let report = self.book.report(&limits, self.shared.clock.now_ms());
            return now_reply(Some(report));
        };
        let (ledger, prefix) = (remote.ledger.clone(), remote.prefix.clone());
        Box::pin(
            async move {
                match ledger.usage(&prefix).await {
                    Ok((counts, now_ms)) => Some(counts.report(&limits, now_ms)),
                    Err(_) => None,
                }
            }
            .into_actor(self),
        )
    }
}
