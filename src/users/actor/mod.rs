//! The per-user actor: owns one user's [`Book`], handles one message at a time, sends alerts off
//! the request path, and evicts itself when idle.
//!
//! Who decides for the user (its [`Authority`]) is chosen once, when the actor is built, and is
//! part of the actor's type:
//! - [`Local`] (embedded mode): the book is the authority, one message at a time is what makes
//!   admission atomic, and the user store keeps the state across evictions.
//! - [`Shared`] (Redis mode): the Redis scripts are the authority (atomic across replicas); the
//!   book then only holds what this replica decided on its own while Redis was away, under the
//!   outage policy's local limits.
//!
//! This module holds what both share: the messages' dispatch (each handler does the common
//! part, then hands over to the authority), metering and re-pricing in the book, and eviction.
//! [`UserAddr`] is the one handle on either kind of actor.

mod handle;
mod local;
mod shared;

pub(super) use handle::{Mode, UserAddr};
pub(super) use local::Local;
pub(super) use shared::Shared;

use super::admin::{AdminOp, UserAdmin};
use super::alerts::AlertSender;
use super::book::{AdmitRequest, Book, Grant, UserState};
use super::limits::UserLimits;
use super::messages::{
    AdminChange, Admit, ChangeAdmin, Inspect, Inspection, LastRefusal, Meter, MeterAnswer,
    ReadUsage, Reprice, Settle,
};
use super::org::OrgLedger;
use super::usage::UsageReport;
use crate::clock::Clock;
use crate::error::{ApiError, ErrorCode};
use crate::telemetry::Metrics;
use actix::fut::{ready, ActorFutureExt};
use actix::{Actor, ActorContext, Addr, AsyncContext, Context, Handler, ResponseActFuture};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What every actor shares, whatever its authority.
#[derive(Debug, Clone)]
pub(super) struct Env {
    pub clock: Arc<dyn Clock>,
    pub org: Arc<OrgLedger>,
    pub alerts: AlertSender,
    pub metrics: Metrics,
    pub directory: Arc<Mutex<HashMap<String, UserAddr>>>,
    pub mailbox_capacity: usize,
    pub idle_evict: Duration,
}

/// One user's actor, deciding through its authority `A` ([`Local`] or [`Shared`]).
pub(super) struct UserActor<A> {
    user_id: String,
    book: Book,
    /// The plan's limits of the user's last admitted request (an operator's overrides are
    /// applied on top at each use: [`UserActor::effective_limits`]).
    limits: Option<UserLimits>,
    /// The last refusal this actor gave (an operator asks "why was I refused?").
    last_refusal: Option<LastRefusal>,
    authority: A,
    env: Env,
    last_active: Instant,
    evicting: bool,
}

/// An answer the actor gives now or once a call (to Redis) returns.
pub(super) type Reply<A, T> = ResponseActFuture<UserActor<A>, T>;

fn now_reply<A: Authority, T: 'static>(value: T) -> Reply<A, T> {
    Box::pin(ready(value))
}

/// Who decides for the user: what each message does past the common part, and what holds the
/// user's state across evictions.
pub(super) trait Authority: Sized + Unpin + 'static {
    /// Whether the actor holds the operator's settings itself (embedded mode), so a block
    /// refuses without asking anyone; in Redis mode the authority checks they are current.
    const HOLDS_ADMIN: bool;

    /// The state a fresh actor's book starts from.
    fn saved_state(&self, user_id: &str) -> UserState;

    /// Keeps the state of an actor that is evicting itself.
    fn save(&self, user_id: &str, book: &Book);

    /// Whether something besides the book's open requests keeps the actor from evicting itself.
    fn holds_actor(&self, book: &Book) -> bool;

    /// The limits the book enforces for requests it holds, under the user's `limits`.
    fn book_limits(&self, limits: &UserLimits) -> UserLimits;

    /// Sends the alerts due after the actor changed something.
    fn send_alerts(actor: &mut UserActor<Self>);

    /// Admits (or refuses) a request; always `Some` (`None` is for an evicting actor).
    fn admit(
        actor: &mut UserActor<Self>,
        request: AdmitRequest,
    ) -> Reply<Self, Option<Result<Grant, ApiError>>>;

    /// Meters a request's relayed output under the user's `limits`.
    fn meter(
        actor: &mut UserActor<Self>,
        msg: Meter,
        limits: UserLimits,
    ) -> Reply<Self, MeterAnswer>;

    /// Re-prices an open request (`true`: re-priced; `false`: refused, nothing changed).
    fn reprice(actor: &mut UserActor<Self>, msg: Reprice) -> Reply<Self, bool>;

    /// Settles a request.
    fn settle(actor: &mut UserActor<Self>, msg: Settle) -> Reply<Self, ()>;

    /// The user's counters and windows; always `Some` (`None` is for an evicting actor).
    fn read_usage(
        actor: &mut UserActor<Self>,
        limits: UserLimits,
    ) -> Reply<Self, Option<Result<UsageReport, ApiError>>>;

    /// The handle on an actor of this kind.
    fn user_addr(addr: Addr<UserActor<Self>>) -> UserAddr;

    /// An operator's settings for the user, as this actor knows them.
    fn admin(actor: &UserActor<Self>) -> &UserAdmin;

    /// Reads the operator's settings again where they live (Redis mode; a no-op when the
    /// actor holds them).
    fn refresh_admin(_: &mut UserActor<Self>) -> Reply<Self, ()> {
        now_reply(())
    }

    /// Applies an operator's change where the user's state lives; the settings before and
    /// after.
    fn change_admin(
        actor: &mut UserActor<Self>,
        op: AdminOp,
    ) -> Reply<Self, Result<AdminChange, ApiError>>;
}

impl<A: Authority> UserActor<A> {
    fn new(user_id: String, env: Env, authority: A) -> Self {
        let state = authority.saved_state(&user_id);
        Self {
            user_id,
            book: Book::new(state),
            limits: None,
            last_refusal: None,
            authority,
            env,
            last_active: Instant::now(),
            evicting: false,
        }
    }

    /// The limits in force for the user: the last request's plan limits with an operator's
    /// overrides applied.
    fn effective_limits(&self) -> Option<UserLimits> {
        let now = self.env.clock.now_ms();
        self.limits.map(|plan| A::admin(self).limits(plan, now))
    }

    fn touched(&mut self) {
        self.last_active = Instant::now();
        A::send_alerts(self);
    }

    fn evict_if_idle(&mut self, ctx: &mut Context<Self>) {
        if self.evicting
            || self.book.has_open_requests()
            || self.authority.holds_actor(&self.book)
            || self.last_active.elapsed() < self.env.idle_evict
        {
            return;
        }
        self.evicting = true;
        self.authority.save(&self.user_id, &self.book);
        let me = A::user_addr(ctx.address());
        let mut directory = self.env.directory.lock().unwrap_or_else(|p| p.into_inner());
        if directory.get(&self.user_id) == Some(&me) {
            directory.remove(&self.user_id);
        }
        drop(directory);
        ctx.stop();
    }

    /// Meters a request the book holds (every request in embedded mode; in Redis mode, those
    /// this replica decided alone), and grants its next allowance under the authority's limits.
    fn meter_in_book(&mut self, msg: &Meter, limits: &UserLimits) -> MeterAnswer {
        let local = self.authority.book_limits(limits);
        let now = self.env.clock.now_ms();
        let allowance = self.book.meter(
            &msg.request_id,
            msg.output_tokens,
            msg.ask,
            &local,
            now,
            &self.env.org,
        );
        self.touched();
        MeterAnswer::allow(allowance)
    }

    /// Re-prices a request the book holds (every request in embedded mode; in Redis mode, those
    /// this replica admitted alone), under the authority's limits for the book.
    fn reprice_in_book(&mut self, msg: &Reprice) -> bool {
        let local = self.authority.book_limits(&msg.limits);
        let now = self.env.clock.now_ms();
        let result = self
            .book
            .reprice(&msg.request_id, msg.price, &local, now, &self.env.org);
        self.touched();
        match result {
            Ok(()) => true,
            Err(why) => {
                tracing::debug!(
                    user_id = %self.user_id,
                    request_id = %msg.request_id,
                    ?why,
                    "re-price refused"
                );
                false
            }
        }
    }
}

impl<A: Authority> Actor for UserActor<A> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.env.mailbox_capacity);
        let every =
            (self.env.idle_evict / 4).clamp(Duration::from_millis(50), Duration::from_secs(10));
        ctx.run_interval(every, |actor, ctx| actor.evict_if_idle(ctx));
    }
}

impl<A: Authority> Handler<Admit> for UserActor<A> {
    type Result = Reply<A, Option<Result<Grant, ApiError>>>;

    fn handle(&mut self, Admit(mut request): Admit, _: &mut Self::Context) -> Self::Result {
        if self.evicting {
            return now_reply(None);
        }
        // Busy now: no eviction while a Redis call is in flight.
        self.last_active = Instant::now();
        let now = self.env.clock.now_ms();
        if A::HOLDS_ADMIN && A::admin(self).blocked {
            self.last_refusal = Some(LastRefusal {
                code: ErrorCode::UserBlocked,
                at_ms: now,
            });
            return now_reply(Some(Err(blocked())));
        }
        self.limits = Some(request.limits);
        request.limits = A::admin(self).limits(request.limits, now);
        Box::pin(A::admit(self, request).map(move |answer, actor, _| {
            if let Some(Err(e)) = &answer {
                actor.last_refusal = Some(LastRefusal {
                    code: e.code,
                    at_ms: now,
                });
            }
            answer
        }))
    }
}

impl<A: Authority> Handler<Meter> for UserActor<A> {
    type Result = Reply<A, MeterAnswer>;

    fn handle(&mut self, msg: Meter, _: &mut Self::Context) -> Self::Result {
        self.last_active = Instant::now();
        if A::admin(self).blocked {
            return now_reply(MeterAnswer::BLOCKED);
        }
        let Some(limits) = self.effective_limits() else {
            return now_reply(MeterAnswer::allow(0));
        };
        A::meter(self, msg, limits)
    }
}

impl<A: Authority> Handler<Reprice> for UserActor<A> {
    type Result = Reply<A, bool>;

    fn handle(&mut self, mut msg: Reprice, _: &mut Self::Context) -> Self::Result {
        self.last_active = Instant::now();
        if A::admin(self).blocked {
            return now_reply(false);
        }
        msg.limits = A::admin(self).limits(msg.limits, self.env.clock.now_ms());
        A::reprice(self, msg)
    }
}

impl<A: Authority> Handler<Settle> for UserActor<A> {
    type Result = Reply<A, ()>;

    fn handle(&mut self, msg: Settle, _: &mut Self::Context) -> Self::Result {
        self.last_active = Instant::now();
        A::settle(self, msg)
    }
}

impl<A: Authority> Handler<ReadUsage> for UserActor<A> {
    type Result = Reply<A, Option<Result<UsageReport, ApiError>>>;

    fn handle(&mut self, ReadUsage(limits): ReadUsage, _: &mut Self::Context) -> Self::Result {
        if self.evicting {
            return now_reply(None);
        }
        self.last_active = Instant::now();
        let limits = A::admin(self).limits(limits, self.env.clock.now_ms());
        A::read_usage(self, limits)
    }
}

impl<A: Authority> Handler<ChangeAdmin> for UserActor<A> {
    type Result = Reply<A, Option<Result<AdminChange, ApiError>>>;

    fn handle(&mut self, ChangeAdmin(op): ChangeAdmin, _: &mut Self::Context) -> Self::Result {
        if self.evicting {
            return now_reply(None);
        }
        self.last_active = Instant::now();
        Box::pin(A::change_admin(self, op).map(|answer, actor, _| {
            actor.touched();
            Some(answer)
        }))
    }
}

impl<A: Authority> Handler<Inspect> for UserActor<A> {
    type Result = Reply<A, Option<Result<Inspection, ApiError>>>;

    fn handle(&mut self, Inspect(fallback): Inspect, _: &mut Self::Context) -> Self::Result {
        if self.evicting {
            return now_reply(None);
        }
        self.last_active = Instant::now();
        // Under the limits of the user's last request, else the caller's guess (a plan's), with
        // the operator's settings as they are now.
        let plan = self.limits.unwrap_or(fallback);
        Box::pin(A::refresh_admin(self).then(move |(), actor, _| {
            let limits = A::admin(actor).limits(plan, actor.env.clock.now_ms());
            A::read_usage(actor, limits).map(move |report, actor, _| {
                report.map(|report| {
                    report.map(|usage| Inspection {
                        usage,
                        admin: A::admin(actor).clone(),
                        last_refusal: actor.last_refusal,
                        limits,
                    })
                })
            })
        }))
    }
}

pub(super) fn blocked() -> ApiError {
    ApiError::new(
        ErrorCode::UserBlocked,
        "this user is blocked by an operator of this gateway",
    )
    .no_retry()
}
