//! The per-user actor: owns one user's [`Book`], handles one message at a time, sends alerts off
//! the request path, and evicts itself when idle, leaving its state in the store.
//!
//! Embedded mode: the book is the authority, and one message at a time is what makes admission
//! atomic. Redis mode (see [`RemoteUser`]): the Redis scripts are the authority (atomic across
//! replicas); the book then only holds what this replica decided on its own while Redis was
//! away, under the outage policy's local limits. That half lives in [`remote`].

mod remote;

use remote::RemoteUser;

use super::alerts::{AlertSender, UserAlert};
use super::book::{Book, Grant, UsageReport, UserState};
use super::limits::UserLimits;
use super::messages::{Admit, Meter, MeterAnswer, ReadUsage, Settle};
use super::org::OrgLedger;
use super::redis::RedisLedger;
use super::store::UserStore;
use crate::accounting::Usage;
use crate::calendar::day_key;
use crate::clock::Clock;
use crate::error::ApiError;
use crate::telemetry::Metrics;
use actix::fut::{ready, ActorFutureExt, WrapFuture};
use actix::{Actor, ActorContext, AsyncContext, Context, Handler, ResponseActFuture};
use std::collections::HashMap;
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
        let remote = shared
            .remote
            .clone()
            .map(|ledger| RemoteUser::new(ledger, &user_id));
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
        // Redis mode: what this replica did alone during an outage (its book, and the outage
        // allowance it has used) must outlive the outage, or a fresh actor would grant the
        // allowance again. Evict only once Redis answers and holds every settlement.
        let outage_decisions = self.book.state() != &UserState::default();
        let remote_busy = self.remote.as_ref().is_some_and(|r| {
            !r.open.is_empty()
                || !r.admitting.is_empty()
                || (outage_decisions && (!r.ledger.ready() || r.ledger.pending_settlements() > 0))
        });
        if self.evicting
            || self.book.has_open_requests()
            || remote_busy
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

    fn meter_in_book(
        &mut self,
        request_id: &str,
        tokens: u64,
        limits: &UserLimits,
        max_batch: u64,
    ) -> MeterAnswer {
        let local = self.local_limits(limits);
        let now = self.shared.clock.now_ms();
        let within = self
            .book
            .meter(request_id, tokens, &local, now, &self.shared.org);
        // Granted whatever the verdict, as the Redis script does.
        let allowance = self
            .book
            .grant_allowance(request_id, &local, &self.shared.org, max_batch);
        self.touched();
        if within {
            MeterAnswer::Continue { allowance }
        } else {
            MeterAnswer::Stop
        }
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
        // Busy now: no eviction while a Redis call is in flight.
        self.last_active = Instant::now();
        self.limits = Some(request.limits);
        let now = self.shared.clock.now_ms();
        let Some(remote) = &self.remote else {
            let result = self.book.admit(request, now, &self.shared.org);
            self.touched();
            return now_reply(Some(result));
        };
        // The organisation cap is counted per replica (see README: Redis mode).
        let input_cost = request.price.cost_micro_usd(Usage {
            input_tokens: request.estimated_input_tokens,
            output_tokens: 0,
        });
        if self.shared.org.would_pass(day_key(now), input_cost) {
            let error = super::book::Refusal::OrgDaily.error(&request.limits, now);
            return now_reply(Some(Err(error)));
        }
        let (ledger, prefix) = remote.handles();
        if let Some(refusal) = self.cached_refusal(&request.limits) {
            return now_reply(Some(Err(refusal)));
        }
        self.admitting(&request.request_id);
        Box::pin(
            async move {
                let reply = ledger.admit(&prefix, &request).await;
                (reply, request)
            }
            .into_actor(self)
            .map(|(reply, request), actor, ctx| {
                let request_id = request.request_id.clone();
                let answer = actor.admitted(reply, request);
                // The caller left while Redis answered: settle what was just admitted.
                if let Some(cancel) = actor.admitted_cancelled(&request_id) {
                    ctx.spawn(actor.settle_remote(cancel));
                }
                Some(answer)
            }),
        )
    }
}

impl Handler<Meter> for UserActor {
    type Result = Reply<MeterAnswer>;

    fn handle(&mut self, msg: Meter, _: &mut Self::Context) -> Self::Result {
        self.last_active = Instant::now();
        let Some(limits) = self.limits else {
            return now_reply(MeterAnswer::Continue { allowance: 0 });
        };
        let remote_held = self
            .remote
            .as_ref()
            .filter(|r| r.open.contains_key(&msg.request_id));
        let Some(remote) = remote_held else {
            // Embedded mode, or a request this replica's book holds.
            let verdict =
                self.meter_in_book(&msg.request_id, msg.output_tokens, &limits, msg.max_batch);
            return now_reply(verdict);
        };
        let (ledger, prefix) = remote.handles();
        // The organisation cap is counted here, per replica: no allowance (promise) then.
        let max_batch = if self.shared.org.cap().is_some() {
            0
        } else {
            msg.max_batch
        };
        Box::pin(
            async move {
                let reply = ledger
                    .meter(
                        &prefix,
                        &msg.request_id,
                        msg.output_tokens,
                        &limits,
                        max_batch,
                    )
                    .await;
                (reply, msg)
            }
            .into_actor(self)
            .map(move |(reply, msg), actor, _| actor.metered(reply, &msg, &limits)),
        )
    }
}

impl Handler<Settle> for UserActor {
    type Result = Reply<()>;

    fn handle(&mut self, msg: Settle, _: &mut Self::Context) -> Self::Result {
        self.last_active = Instant::now();
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

impl Handler<ReadUsage> for UserActor {
    type Result = Reply<Option<Result<UsageReport, ApiError>>>;

    fn handle(&mut self, ReadUsage(limits): ReadUsage, _: &mut Self::Context) -> Self::Result {
        if self.evicting {
            return now_reply(None);
        }
        self.last_active = Instant::now();
        let Some(remote) = &self.remote else {
            let report = self.book.report(&limits, self.shared.clock.now_ms());
            return now_reply(Some(Ok(report)));
        };
        let (ledger, prefix) = remote.handles();
        Box::pin(
            async move {
                Some(match ledger.usage(&prefix).await {
                    Ok((counts, now_ms)) => Ok(counts.report(&limits, now_ms)),
                    Err(_) => Err(ApiError::new(
                        crate::error::ErrorCode::StateUnavailable,
                        "usage cannot be read right now (shared state unavailable)",
                    )
                    .retry_after(super::outage::FAIL_CLOSED_RETRY_SECS)),
                })
            }
            .into_actor(self),
        )
    }
}
