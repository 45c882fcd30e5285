//! Redis mode: the shared ledger's scripts are the authority. Turns their answers into the
//! client's answers, repeats refusals only time lifts, and settles through Redis (or its
//! journal). What a replica decides alone while Redis is away is in [`outage`]; budget alerts,
//! claimed in Redis so one replica sends each, in [`alerts`].

mod alerts;
mod outage;

use super::{now_reply, Authority, Reply, UserActor, UserAddr};
use crate::accounting::{Outcome, Usage};
use crate::calendar::{day_key, month_key, next_day_ms};
use crate::error::{ApiError, ErrorCode};
use crate::users::book::{AdmitRequest, Book, Grant, OpenRequest, UserState};
use crate::users::limits::UserLimits;
use crate::users::messages::{Meter, MeterAnswer, Reprice, Settle};
use crate::users::outage::{Known, FAIL_CLOSED_RETRY_SECS};
use crate::users::redis::{Admitted, Metered, PendingSettle, RedisLedger, Repriced, Unavailable};
use crate::users::refusal::Refusal;
use crate::users::usage::{Counts, UsageReport};
use actix::fut::{ActorFutureExt, WrapFuture};
use actix::{Addr, AsyncContext};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Redis mode's authority: the ledger, and what this replica knows of the user beyond Redis.
pub(in crate::users) struct Shared {
    ledger: Arc<RedisLedger>,
    /// The user's key prefix (shared with every call's future, not copied).
    prefix: Arc<str>,
    /// Requests Redis admitted for this replica, until settled (or adopted by the book when
    /// Redis went away while they ran).
    open: HashMap<String, OpenRequest>,
    /// Requests this replica admitted on its own while Redis was away.
    alone: HashSet<String>,
    /// The user's running figures as Redis last reported them.
    known: Option<Known>,
    /// The day and month whose alerts this actor already claimed.
    alerted: (Option<u64>, Option<u32>),
    /// Requests whose admit call is in flight, and those among them whose caller left
    /// meanwhile (settled as soon as the answer arrives).
    admitting: HashSet<String>,
    cancelled: HashSet<String>,
    /// A refusal only time lifts (minute window, day's requests): until when it holds, for
    /// requests under which limits.
    refused_until: Option<(Instant, UserLimits, ApiError)>,
}

impl Shared {
    pub(super) fn new(ledger: Arc<RedisLedger>, user_id: &str) -> Self {
        Self {
            prefix: ledger.user_prefix(user_id).into(),
            ledger,
            open: HashMap::new(),
            alone: HashSet::new(),
            known: None,
            alerted: (None, None),
            admitting: HashSet::new(),
            cancelled: HashSet::new(),
            refused_until: None,
        }
    }

    /// What a Redis call's future needs: the ledger and the user's key prefix.
    fn handles(&self) -> (Arc<RedisLedger>, Arc<str>) {
        (self.ledger.clone(), self.prefix.clone())
    }

    /// The refusal to repeat without asking Redis, while it holds (and only for a request under
    /// the same limits: another plan may allow more).
    fn cached_refusal(&mut self, limits: &UserLimits) -> Option<ApiError> {
        match &self.refused_until {
            Some((until, cached_for, error)) if Instant::now() < *until && cached_for == limits => {
                let left = until.saturating_duration_since(Instant::now());
                Some(
                    error
                        .clone()
                        .retry_after(left.as_millis().div_ceil(1000).max(1) as u64),
                )
            }
            Some((until, ..)) if Instant::now() >= *until => {
                self.refused_until = None;
                None
            }
            _ => None,
        }
    }

    /// The admit call for `request_id` was answered. If its caller left meanwhile (a settlement
    /// arrived first), the settlement to apply now.
    fn admit_answered(&mut self, request_id: &str) -> Option<Settle> {
        self.admitting.remove(request_id);
        self.cancelled.remove(request_id).then(|| Settle {
            request_id: request_id.to_string(),
            usage: Usage::default(),
            outcome: Outcome::ClientGone,
        })
    }
}

impl Authority for Shared {
    /// Redis holds the user's figures: the book starts empty.
    fn saved_state(&self, _: &str) -> UserState {
        UserState::default()
    }

    fn save(&self, _: &str, _: &Book) {}

    /// What this replica did alone during an outage (its book, and the outage allowance it has
    /// used) must outlive the outage, or a fresh actor would grant the allowance again. Evict
    /// only once Redis answers and holds every settlement.
    fn holds_actor(&self, book: &Book) -> bool {
        let outage_decisions = book.state() != &UserState::default();
        !self.open.is_empty()
            || !self.admitting.is_empty()
            || (outage_decisions && (!self.ledger.ready() || self.ledger.pending_settlements() > 0))
    }

    /// The outage policy's limits.
    fn book_limits(&self, limits: &UserLimits) -> UserLimits {
        self.ledger.policy.local_limits(limits, self.known.as_ref())
    }

    /// None here: alerts come from Redis' figures (see [`alerts`]).
    fn send_alerts(_: &mut UserActor<Self>) {}

    fn admit(
        actor: &mut UserActor<Self>,
        request: AdmitRequest,
    ) -> Reply<Self, Option<Result<Grant, ApiError>>> {
        let now = actor.env.clock.now_ms();
        // The organisation cap is counted per replica (see README: Redis mode).
        let input_cost = request.price.cost_micro_usd(Usage {
            input_tokens: request.estimated_input_tokens,
            output_tokens: 0,
        });
        if let Err(why) = actor.env.org.check(day_key(now), input_cost) {
            return now_reply(Some(Err(why.error(&request.limits, now))));
        }
        let (ledger, prefix) = actor.authority.handles();
        if let Some(refusal) = actor.authority.cached_refusal(&request.limits) {
            return now_reply(Some(Err(refusal)));
        }
        // An admit call for the request is in flight.
        actor.authority.admitting.insert(request.request_id.clone());
        Box::pin(
            async move {
                let reply = ledger.admit(&prefix, &request).await;
                (reply, request)
            }
            .into_actor(actor)
            .map(|(reply, request), actor, ctx| {
                let request_id = request.request_id.clone();
                let answer = actor.admitted(reply, request);
                // The caller left while Redis answered: settle what was just admitted.
                if let Some(cancel) = actor.authority.admit_answered(&request_id) {
                    ctx.spawn(Self::settle(actor, cancel));
                }
                Some(answer)
            }),
        )
    }

    fn meter(
        actor: &mut UserActor<Self>,
        msg: Meter,
        limits: UserLimits,
    ) -> Reply<Self, MeterAnswer> {
        if !actor.authority.open.contains_key(&msg.request_id) {
            // A request this replica's book holds.
            return now_reply(actor.meter_in_book(&msg, &limits));
        }
        let (ledger, prefix) = actor.authority.handles();
        Box::pin(
            async move {
                let reply = ledger
                    .meter(
                        &prefix,
                        &msg.request_id,
                        msg.output_tokens,
                        msg.ask,
                        &limits,
                    )
                    .await;
                (reply, msg)
            }
            .into_actor(actor)
            .map(move |(reply, msg), actor, _| actor.metered(reply, &msg, &limits)),
        )
    }

    /// Re-prices a request this replica admitted: through Redis for those Redis admitted (and
    /// the copy kept here follows, so an adoption or a journaled settlement bills at the new
    /// price), in the book for those admitted alone. A request the book took over from Redis
    /// mid-stream has metered output, which no re-price moves. Fails closed: if Redis cannot
    /// answer, the request keeps its price.
    fn reprice(actor: &mut UserActor<Self>, msg: Reprice) -> Reply<Self, bool> {
        let shared = &actor.authority;
        let Some(open) = shared.open.get(&msg.request_id) else {
            let alone = shared.alone.contains(&msg.request_id);
            return now_reply(alone && actor.reprice_in_book(&msg));
        };
        // The organisation cap is counted here, per replica (as at admission).
        let repriced = OpenRequest {
            price: msg.price,
            ..open.clone()
        };
        if actor
            .env
            .org
            .would_pass_replacing(open.day, open.cost(), repriced.cost())
        {
            return now_reply(false);
        }
        let (ledger, prefix) = shared.handles();
        Box::pin(
            async move {
                let reply = ledger
                    .reprice(&prefix, &msg.request_id, msg.price, &msg.limits)
                    .await;
                (reply, msg)
            }
            .into_actor(actor)
            .map(|(reply, msg), actor, _| actor.repriced(reply, &msg)),
        )
    }

    /// Settles a request this replica admitted (through Redis or on its own).
    fn settle(actor: &mut UserActor<Self>, msg: Settle) -> Reply<Self, ()> {
        let shared = &mut actor.authority;
        let in_book = actor.book.open_request(&msg.request_id).cloned();
        let Some(open) = shared.open.remove(&msg.request_id).or(in_book.clone()) else {
            if shared.admitting.contains(&msg.request_id) {
                // The caller left before its admit call was answered: settle on the answer.
                shared.cancelled.insert(msg.request_id);
            }
            return now_reply(()); // settled already
        };
        let alone = shared.alone.remove(&msg.request_id);
        let (ledger, prefix) = shared.handles();
        let now = actor.env.clock.now_ms();
        if in_book.is_some() {
            let org = &actor.env.org;
            actor
                .book
                .settle(&msg.request_id, msg.usage, msg.outcome, now, org);
        } else {
            let cost = open.price.cost_micro_usd(msg.usage);
            actor
                .env
                .org
                .add(open.day, cost as i64 - open.cost() as i64);
        }
        let cut = msg.outcome != Outcome::Completed;
        let entry = PendingSettle::of(prefix, msg.request_id, &open, msg.usage, cut, alone);
        actor.touched();
        Box::pin(async move { ledger.settle(entry).await }.into_actor(actor))
    }

    fn read_usage(
        actor: &mut UserActor<Self>,
        limits: UserLimits,
    ) -> Reply<Self, Option<Result<UsageReport, ApiError>>> {
        let (ledger, prefix) = actor.authority.handles();
        Box::pin(
            async move {
                Some(match ledger.usage(&prefix).await {
                    Ok((counts, now_ms)) => Ok(counts.report(&limits, now_ms)),
                    Err(_) => Err(ApiError::new(
                        ErrorCode::StateUnavailable,
                        "usage cannot be read right now (shared state unavailable)",
                    )
                    .retry_after(FAIL_CLOSED_RETRY_SECS)),
                })
            }
            .into_actor(actor),
        )
    }

    fn user_addr(addr: Addr<UserActor<Self>>) -> UserAddr {
        UserAddr::Shared(addr)
    }
}

impl UserActor<Shared> {
    /// The admit script's answer (or its failure) turned into the client's answer.
    fn admitted(
        &mut self,
        reply: Result<Admitted, Unavailable>,
        request: AdmitRequest,
    ) -> Result<Grant, ApiError> {
        let limits = request.limits;
        let admitted = match reply {
            Ok(admitted) => admitted,
            Err(error) => return self.admit_during_outage(request, &error),
        };
        let shared = &mut self.authority;
        shared.known = Some(admitted.known);
        if !self.book.has_open_requests() && shared.ledger.pending_settlements() == 0 {
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
                    let until = Instant::now() + Duration::from_millis(wait_ms);
                    shared.refused_until = Some((until, limits, error.clone()));
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
            promised_tokens: admitted.allowance,
        };
        self.env.org.add(open.day, open.cost() as i64);
        shared.open.insert(request.request_id, open);
        self.claim_alerts(admitted.known, admitted.now_ms);
        self.touched();
        Ok(Grant {
            max_tokens: granted,
            allowance: admitted.allowance,
            rate_limits,
        })
    }

    /// The reprice script's answer (or its failure) for a request Redis admitted.
    fn repriced(&mut self, reply: Result<Repriced, Unavailable>, msg: &Reprice) -> bool {
        let repriced = match reply {
            Ok(repriced) => repriced,
            // Fail closed. A call that timed out may still have been applied: Redis then bills
            // the request at the new price (its settlement reads the open entry), a difference
            // of the input estimate's cost between two models at most.
            Err(error) => {
                tracing::debug!(
                    user_id = %self.user_id,
                    request_id = %msg.request_id,
                    error = %error,
                    "re-price refused: Redis cannot check the caps"
                );
                return false;
            }
        };
        if let Err(why) = repriced.decision {
            tracing::debug!(
                user_id = %self.user_id,
                request_id = %msg.request_id,
                ?why,
                "re-price refused"
            );
            return false;
        }
        let known = self.authority.known.get_or_insert_with(Known::default);
        known.spend_today = repriced.known.spend_today;
        known.spend_month = repriced.known.spend_month;
        let known = *known;
        // Settled meanwhile (its caller left): Redis billed it at the price it held when the
        // settlement arrived; nothing here holds the request any more.
        if let Some(open) = self.authority.open.get_mut(&msg.request_id) {
            let before = open.cost();
            open.price = msg.price;
            self.env
                .org
                .add(open.day, open.cost() as i64 - before as i64);
        }
        self.claim_alerts(known, self.env.clock.now_ms());
        self.touched();
        true
    }

    /// The meter script's answer (or its failure) for a request Redis admitted.
    fn metered(
        &mut self,
        reply: Result<Metered, Unavailable>,
        msg: &Meter,
        limits: &UserLimits,
    ) -> MeterAnswer {
        let allowance = match reply {
            Ok(Metered::Allowed(k, allowance)) => {
                let known = self.authority.known.get_or_insert_with(Known::default);
                known.spend_today = k.spend_today;
                known.spend_month = k.spend_month;
                let known = *known;
                self.claim_alerts(known, self.env.clock.now_ms());
                allowance
            }
            // Settled already, or its lease ended: nothing more is relayed unaccounted.
            Ok(Metered::Unknown) => 0,
            Err(_) => return self.take_over(msg, limits),
        };
        let day = day_key(self.env.clock.now_ms());
        if let Some(open) = self.authority.open.get_mut(&msg.request_id) {
            let before = open.cost();
            open.metered_output_tokens += msg.output_tokens;
            open.promised_tokens = allowance;
            self.env.org.add(day, (open.cost() - before) as i64);
        }
        self.touched();
        MeterAnswer { allowance }
    }
}
