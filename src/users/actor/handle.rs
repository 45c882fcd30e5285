//! [`UserAddr`]: the one handle on a user's actor, whichever its authority, and [`Mode`], what
//! the registry starts actors with.

use super::{Env, Local, Shared, UserActor};
use crate::users::redis::RedisLedger;
use crate::users::store::UserStore;
use actix::{Actor, Addr, Handler, MailboxError, Message};
use actix_rt::ArbiterHandle;
use futures::future::Either;
use std::future::Future;
use std::sync::Arc;

/// The process' mode, chosen once at start: what the actors' authority is built from.
#[derive(Debug, Clone)]
pub(in crate::users) enum Mode {
    /// Embedded mode: each actor's book decides; the store keeps evicted users' state.
    Local(Arc<dyn UserStore>),
    /// Redis mode: the shared ledger decides.
    Shared(Arc<RedisLedger>),
}

/// A user's actor, whichever its authority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::users) enum UserAddr {
    Local(Addr<UserActor<Local>>),
    Shared(Addr<UserActor<Shared>>),
}

impl UserAddr {
    /// Starts `user_id`'s actor on `arbiter`, with the authority `mode` says.
    pub(in crate::users) fn start(
        arbiter: &ArbiterHandle,
        user_id: String,
        env: Env,
        mode: &Mode,
    ) -> Self {
        match mode {
            Mode::Local(store) => {
                let local = Local::new(store.clone());
                Self::Local(UserActor::start_in_arbiter(arbiter, move |_| {
                    UserActor::new(user_id, env, local)
                }))
            }
            Mode::Shared(ledger) => {
                let ledger = ledger.clone();
                Self::Shared(UserActor::start_in_arbiter(arbiter, move |_| {
                    let shared = Shared::new(ledger, &user_id);
                    UserActor::new(user_id, env, shared)
                }))
            }
        }
    }

    /// Whether the actor still runs.
    pub(in crate::users) fn connected(&self) -> bool {
        match self {
            Self::Local(addr) => addr.connected(),
            Self::Shared(addr) => addr.connected(),
        }
    }

    /// Sends `msg` (queued now) and waits for the answer.
    pub(in crate::users) fn send<M>(
        &self,
        msg: M,
    ) -> impl Future<Output = Result<M::Result, MailboxError>>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        UserActor<Local>: Handler<M>,
        UserActor<Shared>: Handler<M>,
    {
        match self {
            Self::Local(addr) => Either::Left(addr.send(msg)),
            Self::Shared(addr) => Either::Right(addr.send(msg)),
        }
    }

    /// Sends `msg` without waiting (past the mailbox bound if need be).
    pub(in crate::users) fn do_send<M>(&self, msg: M)
    where
        M: Message + Send + 'static,
        M::Result: Send,
        UserActor<Local>: Handler<M>,
        UserActor<Shared>: Handler<M>,
    {
        match self {
            Self::Local(addr) => addr.do_send(msg),
            Self::Shared(addr) => addr.do_send(msg),
        }
    }
}
