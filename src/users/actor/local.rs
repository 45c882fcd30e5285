//! Embedded mode: the user's book is the authority. Its answers are immediate, it sends the
//! alerts it says are due, and the [`UserStore`] keeps its state across evictions (and is kept
//! current on every settlement, so a snapshot holds settled usage).

use super::{now_reply, Authority, Reply, UserActor, UserAddr};
use crate::error::ApiError;
use crate::users::admin::{AdminOp, UserAdmin};
use crate::users::alerts::UserAlert;
use crate::users::book::{AdmitRequest, Book, Grant, MinuteChanges, UserState};
use crate::users::limits::UserLimits;
use crate::users::messages::{AdminChange, Meter, MeterAnswer, Reprice, Settle};
use crate::users::store::UserStore;
use crate::users::usage::UsageReport;
use actix::Addr;
use std::cell::Cell;
use std::sync::Arc;

/// Embedded mode's authority: the book, backed by the store.
pub(in crate::users) struct Local {
    store: Arc<dyn UserStore>,
    /// The book's minute-log changes when its state was last saved: a settlement saves only
    /// the changes since.
    saved_at: Cell<MinuteChanges>,
}

impl Local {
    pub(super) fn new(store: Arc<dyn UserStore>) -> Self {
        Self {
            store,
            saved_at: Cell::new(MinuteChanges::default()),
        }
    }

    /// Saves the book's state over the last one saved, moving only what changed.
    fn save_changes(&self, user_id: &str, book: &Book) {
        let now = book.minute_changes();
        self.store
            .save_changes(user_id, book.state(), now.since(self.saved_at.get()));
        self.saved_at.set(now);
    }
}

impl Authority for Local {
    const HOLDS_ADMIN: bool = true;

    fn saved_state(&self, user_id: &str) -> UserState {
        self.store.load(user_id).unwrap_or_default()
    }

    fn save(&self, user_id: &str, book: &Book) {
        self.store.save(user_id, book.state().clone());
        self.saved_at.set(book.minute_changes());
    }

    fn holds_actor(&self, _: &Book) -> bool {
        false
    }

    fn book_limits(&self, limits: &UserLimits) -> UserLimits {
        *limits
    }

    fn send_alerts(actor: &mut UserActor<Self>) {
        let Some(limits) = actor.effective_limits() else {
            return;
        };
        for alert in actor.book.due_alerts(&limits) {
            actor.env.alerts.send(UserAlert {
                user_id: actor.user_id.clone(),
                alert,
            });
        }
    }

    fn admit(
        actor: &mut UserActor<Self>,
        request: AdmitRequest,
    ) -> Reply<Self, Option<Result<Grant, ApiError>>> {
        let now = actor.env.clock.now_ms();
        let result = actor.book.admit(request, now, &actor.env.org);
        actor.touched();
        now_reply(Some(result))
    }

    fn meter(
        actor: &mut UserActor<Self>,
        msg: Meter,
        limits: UserLimits,
    ) -> Reply<Self, MeterAnswer> {
        now_reply(actor.meter_in_book(&msg, &limits))
    }

    fn reprice(actor: &mut UserActor<Self>, msg: Reprice) -> Reply<Self, bool> {
        now_reply(actor.reprice_in_book(&msg))
    }

    fn settle(actor: &mut UserActor<Self>, msg: Settle) -> Reply<Self, ()> {
        let now = actor.env.clock.now_ms();
        actor
            .book
            .settle(&msg.request_id, msg.usage, msg.outcome, now, &actor.env.org);
        // Keep the store current, so a snapshot holds settled usage.
        actor.authority.save_changes(&actor.user_id, &actor.book);
        actor.touched();
        now_reply(())
    }

    fn read_usage(
        actor: &mut UserActor<Self>,
        limits: UserLimits,
    ) -> Reply<Self, Option<Result<UsageReport, ApiError>>> {
        let report = actor.book.report(&limits, actor.env.clock.now_ms());
        now_reply(Some(Ok(report)))
    }

    fn user_addr(addr: Addr<UserActor<Self>>) -> UserAddr {
        UserAddr::Local(addr)
    }

    fn admin(actor: &UserActor<Self>) -> &UserAdmin {
        actor.book.admin()
    }

    fn change_admin(
        actor: &mut UserActor<Self>,
        op: AdminOp,
    ) -> Reply<Self, Result<AdminChange, ApiError>> {
        let now = actor.env.clock.now_ms();
        let before = actor.book.admin().clone();
        let mut after = before.clone();
        after.forget_expired(now);
        after.apply(&op);
        if let AdminOp::Reset(windows) = &op {
            actor.book.reset(windows, now);
        }
        actor.book.set_admin(after.clone());
        // Kept with the user's state (and so in the snapshot) at once.
        actor.authority.save(&actor.user_id, &actor.book);
        now_reply(Ok(AdminChange { before, after }))
    }
}
