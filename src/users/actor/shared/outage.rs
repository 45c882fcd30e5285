//! Redis mode, Redis away: what this replica decides alone. New requests are admitted by the
//! book under the outage policy's local limits; a request whose meter call failed mid-stream is
//! taken over by the book, which meters the rest of it against the outage allowance.

use super::Shared;
use crate::accounting::Usage;
use crate::error::{ApiError, ErrorCode};
use crate::users::actor::{Authority, UserActor};
use crate::users::book::{Grant, OpenRequest};
use crate::users::limits::UserLimits;
use crate::users::messages::{Meter, MeterAnswer};
use crate::users::outage::outage_refusal;
use crate::users::redis::{PendingSettle, Unavailable};
use crate::users::AdmitRequest;

impl UserActor<Shared> {
    /// The local book decides under the outage policy's limits.
    pub(super) fn admit_during_outage(
        &mut self,
        mut request: AdmitRequest,
        error: &Unavailable,
    ) -> Result<Grant, ApiError> {
        tracing::debug!(user_id = %self.user_id, error = %error, "admitting under the outage policy");
        request.limits = self.authority.book_limits(&request.limits);
        let request_id = request.request_id.clone();
        let price = request.price;
        let now = self.env.clock.now_ms();
        let result = self.book.admit(request, now, &self.env.org);
        let metrics = &self.env.metrics;
        let shared = &mut self.authority;
        match result {
            Ok(grant) => {
                shared.alone.insert(request_id);
                metrics.record_outage_decision("admitted");
                self.touched();
                Ok(grant)
            }
            Err(refusal) => {
                // The organisation's counter holds the request (it admitted it first).
                let org_day = shared.org.get(&request_id).map(|hold| hold.day);
                if error.may_have_applied() || org_day.is_some() {
                    // The admit call may have reached Redis after all: close that record (with
                    // no usage) once Redis answers, so it holds no slot and is charged nothing.
                    shared.ledger.journal(PendingSettle::of(
                        shared.prefix.clone(),
                        request_id,
                        &OpenRequest::empty(price, now),
                        Usage::default(),
                        false,
                        false,
                        org_day,
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

    /// Redis went away mid-stream: the book takes the request over and meters what streams from
    /// now on against the outage allowance.
    pub(super) fn take_over(&mut self, msg: &Meter, limits: &UserLimits) -> MeterAnswer {
        let Some(open) = self.authority.open.remove(&msg.request_id) else {
            return MeterAnswer::allow(0);
        };
        // The book counts what the request uses from here against the outage allowance (and,
        // with an organisation cap, the organisation's outage limit).
        // What its grant still allows stays reserved: the book's allowances keep within it.
        let adopted = OpenRequest {
            input_tokens: 0,
            reserved_tokens: open
                .reserved_tokens
                .saturating_sub(open.input_tokens + open.metered_output_tokens),
            metered_output_tokens: 0,
            promised_tokens: 0,
            ..open
        };
        self.book.adopt(msg.request_id.clone(), adopted);
        self.meter_in_book(msg, limits)
    }
}
