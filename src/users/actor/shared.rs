//! Redis mode: the shared ledger's scripts are the authority. Turns their answers into the
//! client's answers, repeats refusals only time lifts, and settles through Redis (or its
//! journal). With an organisation cap every step also goes to the organisation's counter in
//! Redis ([`org`]). What a replica decides alone while Redis is away is in [`outage`]; budget
//! alerts, claimed in Redis so one replica sends each, in [`alerts`].

mod alerts;
mod org;
mod outage;

use super::{now_reply, Authority, Reply, UserActor, UserAddr};
use crate::accounting::{Outcome, Usage};
use crate::calendar::{day_key, month_key, next_day_ms};
use crate::error::{ApiError, ErrorCode};
use crate::users::admin::{AdminOp, UserAdmin};
use crate::users::book::{AdmitRequest, Book, Grant, OpenRequest, UserState};
use crate::users::limits::UserLimits;
use crate::users::messages::{AdminChange, Meter, MeterAnswer, Reprice, Settle};
use crate::users::outage::{Known, FAIL_CLOSED_RETRY_SECS};
use crate::users::redis::{
    Admitted, Metered, OrgAnswer, OrgDecision, OrgOp, PendingSettle, RedisLedger, Repriced,
    Unavailable,
};
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
    /// With an organisation cap: what the organisation's counter in Redis holds for each
    /// request, until settled.
    org: HashMap<String, org::Hold>,
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
    /// The operator's settings for the user as Redis last gave them, and their version: every
    /// admit and meter call names the version, and Redis says when a newer one exists.
    admin: UserAdmin,
    admin_version: u64,
}

impl Shared {
    pub(super) fn new(ledger: Arc<RedisLedger>, user_id: &str) -> Self {
        Self {
            prefix: ledger.user_prefix(user_id).into(),
            ledger,
            open: HashMap::new(),
            alone: HashSet::new(),
            org: HashMap::new(),
            known: None,
            alerted: (None, None),
            admitting: HashSet::new(),
            cancelled: HashSet::new(),
            refused_until: None,
            admin: UserAdmin::default(),
            admin_version: 0,
        }
    }

    /// Takes the operator's settings Redis holds (version `version`). A refusal cached under
    /// the old ones is dropped: a reset or an override may lift it.
    fn set_admin(&mut self, version: u64, admin: UserAdmin) {
        if version != self.admin_version {
            self.refused_until = None;
        }
        self.admin_version = version;
        self.admin = admin;
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

    /// The day to settle `request_id` on in the organisation's counter (with an organisation
    /// cap): where its record is, or the day of a request the counter never saw (admitted
    /// alone), whose cost is added there.
    fn org_day(&mut self, request_id: &str, open: &OpenRequest) -> Option<u64> {
        self.ledger.org_cap()?;
        Some(
            self.org
                .remove(request_id)
                .map_or(open.day, |hold| hold.day),
        )
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
    const HOLDS_ADMIN: bool = false;

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
        let (ledger, prefix) = actor.authority.handles();
        let cached = if actor.authority.admin.blocked {
            Some(super::blocked())
        } else {
            actor.authority.cached_refusal(&request.limits)
        };
        if let Some(refusal) = cached {
            // A block, or a refusal only time lifts: repeated without running the admit script,
            // unless an operator changed the user's settings since (an unblock, an override or
            // a reset may lift it): then ask again.
            let known = actor.authority.admin_version;
            return Box::pin(
                async move { ledger.read_admin(&prefix).await }
                    .into_actor(actor)
                    .map(move |fresh, actor, _| match fresh {
                        Ok((version, admin)) if version != known => {
                            actor.authority.set_admin(version, admin);
                            None
                        }
                        _ => Some(Err(refusal)),
                    }),
            );
        }
        // An admit call for the request is in flight.
        actor.authority.admitting.insert(request.request_id.clone());
        let admin_version = actor.authority.admin_version;
        Box::pin(
            async move {
                let mut org = None;
                let mut asked = request.clone();
                if ledger.org_cap().is_some() {
                    // The organisation first: its reservation is the one that is simple to undo.
                    let ask = org::admit_ask(&request);
                    match ledger.org(OrgOp::Admit, &request.request_id, 0, ask).await {
                        Ok(answer) => {
                            if let OrgDecision::Granted(granted) = answer.decision {
                                asked = org::within_org(&request, granted);
                            } else {
                                return (AdmitReply::Org(answer), request);
                            }
                            org = Some(answer);
                        }
                        // Redis is away: the whole request takes the outage path.
                        Err(e) => return (AdmitReply::User(Err(e), None), request),
                    }
                }
                let reply = ledger.admit_at(&prefix, &asked, admin_version).await;
                if let (
                    Some(answer),
                    Ok(Admitted {
                        decision: Err(_), ..
                    }),
                ) = (&org, &reply)
                {
                    // The user's limits refused it: the organisation forgets it.
                    let now = reply.as_ref().map_or(0, |a| a.now_ms);
                    ledger
                        .settle(release(&prefix, &request, now, answer.day))
                        .await;
                }
                if let Ok(Admitted {
                    decision: Err(Refusal::AdminChanged),
                    ..
                }) = reply
                {
                    // Nothing was admitted: read the operator's new settings, then ask again.
                    return (
                        AdmitReply::AdminChanged(ledger.read_admin(&prefix).await),
                        asked,
                    );
                }
                (AdmitReply::User(reply, org), asked)
            }
            .into_actor(actor)
            .map(|(reply, request), actor, ctx| {
                let request_id = request.request_id.clone();
                if let AdmitReply::AdminChanged(fresh) = reply {
                    if let Ok((version, admin)) = fresh {
                        actor.authority.set_admin(version, admin);
                    }
                    if let Some(cancel) = actor.authority.admit_answered(&request_id) {
                        ctx.spawn(Self::settle(actor, cancel));
                    }
                    // `None`: the registry asks again, under the new settings.
                    return None;
                }
                let answer = match reply {
                    AdmitReply::Org(answer) => {
                        actor.org_answered(&answer);
                        let now = actor.env.clock.now_ms();
                        let why = match answer.decision {
                            OrgDecision::Refused(why) => why,
                            // Settled already: a late copy of an admission.
                            _ => Refusal::OrgDaily,
                        };
                        Err(why.error(&request.limits, now))
                    }
                    AdmitReply::User(reply, org) => {
                        if let Some(org) = &org {
                            actor.org_answered(org);
                            let hold = org::Hold::admitted(org, request.price);
                            actor.authority.org.insert(request_id.clone(), hold);
                        }
                        let answer = actor.admitted(reply, request);
                        if answer.is_err() {
                            actor.authority.org.remove(&request_id);
                        }
                        answer
                    }
                    // Answered above; kept so the match stays exhaustive.
                    AdmitReply::AdminChanged(_) => {
                        Err(Refusal::AdminChanged.error(&request.limits, 0))
                    }
                };
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
        let shared = &actor.authority;
        let (ledger, prefix) = shared.handles();
        let (admin_version, plan) = (shared.admin_version, actor.limits);
        let clock = actor.env.clock.clone();
        let org_step = match (
            shared.org.get(&msg.request_id),
            shared.open.get(&msg.request_id),
        ) {
            (Some(hold), Some(open)) => hold.step(open, msg.output_tokens, msg.ask),
            _ => org::Step::Uncapped,
        };
        Box::pin(
            async move {
                // The user's allowance and the organisation's, asked at once (one round trip):
                // the stream gets the smaller.
                let user = async {
                    let mut limits = limits;
                    let mut version = admin_version;
                    let mut fresh = None;
                    // The operator's settings may change meanwhile: read them and ask again
                    // under the new limits (a blocked user asks nothing more).
                    for _ in 0..3 {
                        let reply = ledger
                            .meter_at(
                                &prefix,
                                &msg.request_id,
                                msg.output_tokens,
                                msg.ask,
                                &limits,
                                version,
                            )
                            .await;
                        if !matches!(reply, Ok(Metered::AdminChanged)) {
                            return (reply, fresh);
                        }
                        match ledger.read_admin(&prefix).await {
                            Ok((v, admin)) => {
                                if let Some(plan) = plan {
                                    limits = admin.limits(plan, clock.now_ms());
                                }
                                version = v;
                                let blocked = admin.blocked;
                                fresh = Some((v, admin));
                                if blocked {
                                    return (Ok(Metered::AdminChanged), fresh);
                                }
                            }
                            Err(e) => return (Err(e), fresh),
                        }
                    }
                    (Ok(Metered::AdminChanged), fresh)
                };
                let org = async {
                    match org_step {
                        org::Step::Call(day, ask) => org::Metered::Answered(
                            ledger.org(OrgOp::Meter, &msg.request_id, day, ask).await,
                        ),
                        org::Step::Covered(tokens) => org::Metered::Covered(tokens),
                        org::Step::Uncapped => org::Metered::Uncapped,
                    }
                };
                let ((reply, fresh), org) = futures::join!(user, org);
                (reply, fresh, org, msg)
            }
            .into_actor(actor)
            .map(move |(reply, fresh, org, msg), actor, _| {
                if let Some((version, admin)) = fresh {
                    actor.authority.set_admin(version, admin);
                }
                if actor.authority.admin.blocked {
                    // Redis has not counted this report: the settlement bills what was relayed.
                    return MeterAnswer::BLOCKED;
                }
                let limits = actor.effective_limits().unwrap_or(limits);
                actor.metered(reply, org, &msg, &limits)
            }),
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
        let org_call = shared
            .org
            .get(&msg.request_id)
            .map(|hold| (hold.day, org::reprice_ask(open, msg.price)));
        let (ledger, prefix) = shared.handles();
        Box::pin(
            async move {
                // The organisation first. If the user's caps then refuse, the request keeps its
                // price and ends (no fallback): its settlement corrects the organisation's count.
                if let Some((day, ask)) = org_call {
                    match ledger.org(OrgOp::Reprice, &msg.request_id, day, ask).await {
                        Ok(OrgAnswer {
                            decision: OrgDecision::Granted(_),
                            ..
                        }) => {}
                        _ => return (None, msg),
                    }
                }
                let reply = ledger
                    .reprice(&prefix, &msg.request_id, msg.price, &msg.limits)
                    .await;
                (Some(reply), msg)
            }
            .into_actor(actor)
            .map(|(reply, msg), actor, _| match reply {
                Some(reply) => actor.repriced(reply, &msg),
                None => false,
            }),
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
        let org_day = shared.org_day(&msg.request_id, &open);
        let (ledger, prefix) = shared.handles();
        let now = actor.env.clock.now_ms();
        if in_book.is_some() {
            let org = &actor.env.org;
            actor
                .book
                .settle(&msg.request_id, msg.usage, msg.outcome, now, org);
        }
        let cut = msg.outcome != Outcome::Completed;
        let entry = PendingSettle::of(
            prefix,
            msg.request_id,
            &open,
            msg.usage,
            cut,
            alone,
            org_day,
        );
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

    fn admin(actor: &UserActor<Self>) -> &UserAdmin {
        &actor.authority.admin
    }

    /// Read-modify-write on the settings' version in Redis (another replica's change in
    /// between makes it read again), window resets in the same step.
    fn change_admin(
        actor: &mut UserActor<Self>,
        op: AdminOp,
    ) -> Reply<Self, Result<AdminChange, ApiError>> {
        let (ledger, prefix) = actor.authority.handles();
        let clock = actor.env.clock.clone();
        Box::pin(
            async move {
                let resets = match &op {
                    AdminOp::Reset(windows) => windows.clone(),
                    _ => Vec::new(),
                };
                for _ in 0..5 {
                    let (version, before) = ledger.read_admin(&prefix).await?;
                    let mut after = before.clone();
                    after.forget_expired(clock.now_ms());
                    after.apply(&op);
                    if let Some(new) = ledger
                        .write_admin(&prefix, version, &after, &resets)
                        .await?
                    {
                        return Ok((new, AdminChange { before, after }));
                    }
                }
                Err(Unavailable::Malformed("admin: the settings kept changing"))
            }
            .into_actor(actor)
            .map(|result, actor, _| match result {
                Ok((version, change)) => {
                    actor.authority.set_admin(version, change.after.clone());
                    Ok(change)
                }
                Err(_) => Err(ApiError::new(
                    ErrorCode::StateUnavailable,
                    "the user's settings cannot be changed right now (shared state unavailable)",
                )
                .retry_after(FAIL_CLOSED_RETRY_SECS)),
            }),
        )
    }

    fn refresh_admin(actor: &mut UserActor<Self>) -> Reply<Self, ()> {
        let (ledger, prefix) = actor.authority.handles();
        Box::pin(
            async move { ledger.read_admin(&prefix).await }
                .into_actor(actor)
                .map(|fresh, actor, _| {
                    if let Ok((version, admin)) = fresh {
                        actor.authority.set_admin(version, admin);
                    }
                }),
        )
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
            open.price = msg.price;
            if open.stream {
                open.promised_tokens = 0;
                // The organisation dropped its promise too.
                if let Some(hold) = self.authority.org.get_mut(&msg.request_id) {
                    hold.covered = 0;
                }
            }
        }
        self.claim_alerts(known, self.env.clock.now_ms());
        self.touched();
        true
    }

    /// The meter script's answer (or its failure) for a request Redis admitted, and the
    /// organisation's (with an organisation cap): the stream gets the smaller allowance. If
    /// either call failed, the book takes the request over.
    fn metered(
        &mut self,
        reply: Result<Metered, Unavailable>,
        org: org::Metered,
        msg: &Meter,
        limits: &UserLimits,
    ) -> MeterAnswer {
        let Some(open) = self.authority.open.get(&msg.request_id) else {
            return MeterAnswer::allow(0); // settled meanwhile
        };
        let (price, metered) = (open.price, open.metered_output_tokens + msg.output_tokens);
        let org_allowance = match org {
            org::Metered::Uncapped => u64::MAX,
            org::Metered::Covered(tokens) => tokens,
            org::Metered::Answered(Ok(answer)) => {
                self.org_answered(&answer);
                let tokens = match answer.decision {
                    OrgDecision::Granted(granted) => org::tokens_for(price, granted),
                    _ => 0,
                };
                if let Some(hold) = self.authority.org.get_mut(&msg.request_id) {
                    hold.covered = metered + tokens;
                }
                tokens
            }
            org::Metered::Answered(Err(_)) => return self.take_over(msg, limits),
        };
        let allowance = match reply {
            Ok(Metered::Allowed(k, allowance)) => {
                let known = self.authority.known.get_or_insert_with(Known::default);
                known.spend_today = k.spend_today;
                known.spend_month = k.spend_month;
                let known = *known;
                self.claim_alerts(known, self.env.clock.now_ms());
                allowance.min(org_allowance)
            }
            // Settled already, or its lease ended: nothing more is relayed unaccounted.
            Ok(Metered::Unknown) => 0,
            // The settings kept changing under three calls in a row: relay nothing more now
            // rather than unmetered (the stream ends as at a cap).
            Ok(Metered::AdminChanged) => {
                tracing::warn!(user_id = %self.user_id, "operator settings changed during three meter calls in a row");
                0
            }
            Err(_) => return self.take_over(msg, limits),
        };
        if let Some(open) = self.authority.open.get_mut(&msg.request_id) {
            open.metered_output_tokens += msg.output_tokens;
            open.promised_tokens = allowance;
        }
        self.touched();
        MeterAnswer::allow(allowance)
    }
}

/// What the admit calls answered.
enum AdmitReply {
    /// The operator's settings changed: nothing was admitted; their new version, read.
    AdminChanged(Result<(u64, UserAdmin), Unavailable>),
    /// The organisation's counter refused (nothing was asked of the user's script).
    Org(OrgAnswer),
    /// The user's script answered, or Redis could not be asked; and the organisation's
    /// counter, when it admitted the request first.
    User(Result<Admitted, Unavailable>, Option<OrgAnswer>),
}

/// The settlement that takes a request the user's limits refused out of the organisation's
/// counter (for the user's keys it only marks the request settled).
fn release(prefix: &Arc<str>, request: &AdmitRequest, now_ms: u64, org_day: u64) -> PendingSettle {
    PendingSettle::of(
        prefix.clone(),
        request.request_id.clone(),
        &OpenRequest::empty(request.price, now_ms),
        Usage::default(),
        false,
        false,
        Some(org_day),
    )
}
