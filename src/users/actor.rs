//! The per-user actor: owns one user's counters and open reservations.

use super::messages::{Admission, Admit, Meter, Refusal, Settle, Snapshot, UserUsage, Verdict};
use crate::accounting::Outcome;
use actix::{Actor, Context, Handler};
use std::collections::HashMap;

/// One admitted, not yet settled request.
#[derive(Debug)]
struct OpenRequest {
    stream: bool,
    estimated_input_tokens: u64,
    metered_output_tokens: u64,
}

/// The actor. All mutation of a user's state happens in its handlers, one message at a time.
pub(super) struct UserActor {
    mailbox_capacity: usize,
    requests: u64,
    input_tokens: u64,
    output_tokens: u64,
    cut_requests: u64,
    open: HashMap<String, OpenRequest>,
}

impl UserActor {
    pub(super) fn new(mailbox_capacity: usize) -> Self {
        Self {
            mailbox_capacity,
            requests: 0,
            input_tokens: 0,
            output_tokens: 0,
            cut_requests: 0,
            open: HashMap::new(),
        }
    }
}

impl Actor for UserActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.mailbox_capacity);
    }
}

impl Handler<Admit> for UserActor {
    type Result = Result<Admission, Refusal>;

    fn handle(&mut self, msg: Admit, _: &mut Self::Context) -> Self::Result {
        self.requests += 1;
        self.open.insert(
            msg.request_id,
            OpenRequest {
                stream: msg.stream,
                estimated_input_tokens: msg.estimated_input_tokens,
                metered_output_tokens: 0,
            },
        );
        Ok(Admission {
            max_tokens: msg.max_tokens,
        })
    }
}

impl Handler<Meter> for UserActor {
    type Result = actix::MessageResult<Meter>;

    fn handle(&mut self, msg: Meter, _: &mut Self::Context) -> Self::Result {
        if let Some(open) = self.open.get_mut(&msg.request_id) {
            open.metered_output_tokens += msg.output_tokens;
        }
        actix::MessageResult(Verdict::Continue)
    }
}

impl Handler<Settle> for UserActor {
    type Result = ();

    fn handle(&mut self, msg: Settle, _: &mut Self::Context) {
        // Settling twice (or an unknown id) changes nothing: settlement is exactly once.
        if self.open.remove(&msg.request_id).is_some() {
            self.input_tokens += msg.usage.input_tokens;
            self.output_tokens += msg.usage.output_tokens;
            if !matches!(msg.outcome, Outcome::Completed) {
                self.cut_requests += 1;
            }
        }
    }
}

impl Handler<Snapshot> for UserActor {
    type Result = actix::MessageResult<Snapshot>;

    fn handle(&mut self, _: Snapshot, _: &mut Self::Context) -> Self::Result {
        actix::MessageResult(UserUsage {
            requests: self.requests,
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            open_input_tokens: self.open.values().map(|o| o.estimated_input_tokens).sum(),
            open_output_tokens: self.open.values().map(|o| o.metered_output_tokens).sum(),
            cut_requests: self.cut_requests,
            open_requests: self.open.len() as u64,
            open_streams: self.open.values().filter(|o| o.stream).count() as u64,
        })
    }
}
