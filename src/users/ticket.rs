//! [`Ticket`]: one admitted request's handle on its user's actor, and the allowance the request
//! holds (output it may relay before it asks again).

use super::actor::UserAddr;
use super::allowance::{Ask, Batch};
use super::book::Grant;
use super::limits::UserLimits;
use super::messages::{Meter, MeterAnswer, Reprice, Settle};
use crate::accounting::{Outcome, RateLimitHeaders, Usage};
use crate::pricing::Price;
use std::sync::atomic::{AtomicU64, Ordering};

/// Meters, re-prices and settles one admitted request. Dropping it unsettled (a handler future
/// dropped because the client left) settles it as `client_gone` with the estimate and what was
/// relayed.
#[derive(Debug)]
pub struct Ticket {
    addr: UserAddr,
    request_id: String,
    /// The limits the request was admitted under (a re-price is checked against them).
    limits: UserLimits,
    estimated_input_tokens: u64,
    /// Output reported to the actor, and relayed since (within the allowance).
    metered_output_tokens: u64,
    unreported_output_tokens: u64,
    /// Output the request may still relay before it asks again (atomic only so that a re-price,
    /// which needs no exclusive access otherwise, can drop it).
    allowance: AtomicU64,
    max_tokens: u32,
    rate_limits: RateLimitHeaders,
    /// An operator blocked the user (said by the last meter answer).
    blocked: bool,
    settled: bool,
}

impl Ticket {
    pub(super) fn new(
        addr: UserAddr,
        request_id: String,
        limits: UserLimits,
        estimated_input_tokens: u64,
        grant: Grant,
    ) -> Self {
        Self {
            addr,
            request_id,
            limits,
            estimated_input_tokens,
            metered_output_tokens: 0,
            unreported_output_tokens: 0,
            allowance: AtomicU64::new(grant.allowance),
            max_tokens: grant.max_tokens,
            rate_limits: grant.rate_limits,
            blocked: false,
            settled: false,
        }
    }

    /// The output cap admission granted.
    pub fn max_tokens(&self) -> u32 {
        self.max_tokens
    }

    /// The caller's windows right after admission (for the `x-ratelimit-*` headers).
    pub fn rate_limits(&self) -> RateLimitHeaders {
        self.rate_limits
    }

    /// Output tokens relayed so far (reported or not).
    pub fn relayed_output_tokens(&self) -> u64 {
        self.metered_output_tokens + self.unreported_output_tokens
    }

    /// Output tokens the request may relay now without asking.
    pub fn allowance(&self) -> u64 {
        self.allowance.load(Ordering::Relaxed)
    }

    /// Whether the last answer said an operator blocked the user (end with `user_blocked`).
    pub fn blocked(&self) -> bool {
        self.blocked
    }

    /// Records `tokens` relayed within the allowance (reported with the next ask).
    pub fn relayed(&mut self, tokens: u64) {
        let allowance = self.allowance.get_mut();
        debug_assert!(tokens <= *allowance, "relayed past the allowance");
        *allowance = allowance.saturating_sub(tokens);
        self.unreported_output_tokens += tokens;
    }

    /// Reports the output relayed since the last report and asks for the next allowance, at
    /// least `needed` (the chunk in hand), ideally a batch of `batch.max`. The answer replaces
    /// the allowance and is returned: less than `needed` means a spend cap is reached (relay
    /// that many, then end the stream). The actor unreachable: 0 (fail closed).
    pub async fn ask(&mut self, needed: u64, batch: Batch) -> u64 {
        let output_tokens = std::mem::take(&mut self.unreported_output_tokens);
        self.metered_output_tokens += output_tokens;
        let message = Meter {
            request_id: self.request_id.clone(),
            output_tokens,
            ask: Ask { needed, batch },
        };
        let allowance = match self.addr.send(message).await {
            Ok(MeterAnswer { allowance, blocked }) => {
                self.blocked |= blocked;
                allowance
            }
            Err(_) => {
                // The actor cannot hold the limits: fail closed rather than stream unmetered.
                tracing::error!(request_id = %self.request_id, "user actor unreachable while metering");
                0
            }
        };
        *self.allowance.get_mut() = allowance;
        allowance
    }

    /// Moves the request to `price` (a fallback model's) before any output was metered, if the
    /// user's spend caps (and the organisation's) still allow it at that price: `true` if it
    /// was re-priced, and its settlement then bills at `price`. `false` if it was refused (a
    /// cap, output metered already, the request unknown), or the actor or Redis could not
    /// answer; the request then keeps its price. The grant (`max_tokens`) is unchanged; a
    /// stream's allowance is dropped (it asks again, at the new price).
    pub async fn reprice(&self, price: Price) -> bool {
        let message = Reprice {
            request_id: self.request_id.clone(),
            price,
            limits: self.limits,
        };
        let repriced = match self.addr.send(message).await {
            Ok(repriced) => repriced,
            Err(_) => {
                tracing::error!(request_id = %self.request_id, "user actor unreachable while re-pricing");
                false
            }
        };
        if repriced {
            self.allowance.store(0, Ordering::Relaxed);
        }
        repriced
    }

    /// Settles the request with what it used.
    pub async fn settle(mut self, usage: Usage, outcome: Outcome) {
        self.settled = true;
        let message = Settle {
            request_id: std::mem::take(&mut self.request_id),
            usage,
            outcome,
        };
        if self.addr.send(message).await.is_err() {
            tracing::error!("user actor unreachable while settling");
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let message = Settle {
            request_id: std::mem::take(&mut self.request_id),
            usage: Usage {
                input_tokens: self.estimated_input_tokens,
                output_tokens: self.relayed_output_tokens(),
            },
            outcome: Outcome::ClientGone,
        };
        // Drop cannot await. `do_send` may pass the mailbox bound by this one message, which
        // is bounded by the number of open tickets; unlike spawning it cannot fail or panic.
        self.addr.do_send(message);
    }
}
