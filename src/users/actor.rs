//! The per-user actor: owns one user's [`Book`], handles one message at a time (which is what
//! makes admission atomic), sends alerts off the request path, and evicts itself when idle,
//! leaving its state in the store.

use super::alerts::{AlertSender, UserAlert};
use super::book::{Book, Grant, UsageReport};
use super::limits::UserLimits;
use super::messages::{Admit, Meter, Settle, Snapshot, Verdict};
use super::org::OrgLedger;
use super::store::UserStore;
use crate::clock::Clock;
use crate::error::ApiError;
use actix::{Actor, ActorContext, AsyncContext, Context, Handler, MessageResult};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What every actor shares.
#[derive(Debug, Clone)]
pub(super) struct Shared {
    pub clock: Arc<dyn Clock>,
    pub org: Arc<OrgLedger>,
    pub store: Arc<dyn UserStore>,
    pub alerts: AlertSender,
    pub directory: Arc<Mutex<HashMap<String, actix::Addr<UserActor>>>>,
    pub mailbox_capacity: usize,
    pub idle_evict: Duration,
}

pub(super) struct UserActor {
    user_id: String,
    book: Book,
    limits: Option<UserLimits>,
    shared: Shared,
    last_active: Instant,
    evicting: bool,
}

impl UserActor {
    pub(super) fn new(user_id: String, shared: Shared) -> Self {
        let state = shared.store.load(&user_id).unwrap_or_default();
        Self {
            user_id,
            book: Book::new(state),
            limits: None,
            shared,
            last_active: Instant::now(),
            evicting: false,
        }
    }

    fn touched(&mut self) {
        self.last_active = Instant::now();
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
        if self.evicting
            || self.book.has_open_requests()
            || self.last_active.elapsed() < self.shared.idle_evict
        {
            return;
        }
        self.evicting = true;
        self.shared
            .store
            .save(&self.user_id, self.book.state().clone());
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
    type Result = MessageResult<Admit>;

    fn handle(&mut self, Admit(request): Admit, _: &mut Self::Context) -> Self::Result {
        if self.evicting {
            return MessageResult(None);
        }
        self.limits = Some(request.limits);
        let now = self.shared.clock.now_ms();
        let result: Result<Grant, ApiError> = self.book.admit(request, now, &self.shared.org);
        self.touched();
        MessageResult(Some(result))
    }
}

impl Handler<Meter> for UserActor {
    type Result = MessageResult<Meter>;

    fn handle(&mut self, msg: Meter, _: &mut Self::Context) -> Self::Result {
        let Some(limits) = self.limits else {
            return MessageResult(Verdict::Continue);
        };
        let now = self.shared.clock.now_ms();
        let within = self.book.meter(
            &msg.request_id,
            msg.output_tokens,
            &limits,
            now,
            &self.shared.org,
        );
        self.touched();
        MessageResult(if within {
            Verdict::Continue
        } else {
            Verdict::StopBudget
        })
    }
}

impl Handler<Settle> for UserActor {
    type Result = ();

    fn handle(&mut self, msg: Settle, _: &mut Self::Context) {
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
    }
}

impl Handler<Snapshot> for UserActor {
    type Result = MessageResult<Snapshot>;

    fn handle(&mut self, Snapshot(limits): Snapshot, _: &mut Self::Context) -> Self::Result {
        if self.evicting {
            return MessageResult(None);
        }
        let report: UsageReport = self.book.report(&limits, self.shared.clock.now_ms());
        MessageResult(Some(report))
    }
}
