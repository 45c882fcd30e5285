//! [`Ticket`]: one admitted request's handle on its user's actor.

use super::actor::UserAddr;
use super::limits::UserLimits;
use super::messages::{Meter, MeterAnswer, Reprice, Settle};
use crate::accounting::{Outcome, RateLimitHeaders, Usage};
use crate::pricing::Price;

/// Meters, re-prices and settles one admitted request. Dropping it unsettled (a handler future
/// dropped because the client left) settles it as `client_gone` with the estimate and what was
/// metered.
#[derive(Debug)]
pub struct Ticket {
    addr: UserAddr,
    request_id: String,
    /// The limits the request was admitted under (a re-price is checked against them).
    limits: UserLimits,
    estimated_input_tokens: u64,
    metered_output_tokens: u64,
    max_tokens: u32,
    rate_limits: RateLimitHeaders,
    settled: bool,
}

impl Ticket {
    pub(super) fn new(
        addr: UserAddr,
        request_id: String,
        limits: UserLimits,
        estimated_input_tokens: u64,
        max_tokens: u32,
        rate_limits: RateLimitHeaders,
    ) -> Self {
        Self {
            addr,
            request_id,
            limits,
            estimated_input_tokens,
            metered_output_tokens: 0,
            max_tokens,
            rate_limits,
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

    /// Output tokens reported so far.
    pub fn metered_output_tokens(&self) -> u64 {
        self.metered_output_tokens
    }

    /// Reports `output_tokens` more relayed tokens; the answer says whether to go on.
    /// `max_batch`: the most the relay will stream before its next report.
    pub async fn meter(&mut self, output_tokens: u64, max_batch: u64) -> MeterAnswer {
        if output_tokens == 0 {
            return MeterAnswer::Continue { allowance: 0 };
        }
        self.metered_output_tokens += output_tokens;
        let message = Meter {
            request_id: self.request_id.clone(),
            output_tokens,
            max_batch,
        };
        match self.addr.send(message).await {
            Ok(verdict) => verdict,
            Err(_) => {
                // The actor cannot hold the limits: fail closed rather than stream unmetered.
                tracing::error!(request_id = %self.request_id, "user actor unreachable while metering");
                MeterAnswer::Stop
            }
        }
    }

    /// Moves the request to `price` (a fallback model's) before any output was metered, if the
    /// user's spend caps (and the organisation's) still allow it at that price: `true` if it
    /// was re-priced, and its settlement then bills at `price`. `false` if it was refused (a
    /// cap, output metered already, the request unknown), or the actor or Redis could not
    /// answer; the request then keeps its price. The grant (`max_tokens`) is unchanged.
    pub async fn reprice(&self, price: Price) -> bool {
        let message = Reprice {
            request_id: self.request_id.clone(),
            price,
            limits: self.limits,
        };
        match self.addr.send(message).await {
            Ok(repriced) => repriced,
            Err(_) => {
                tracing::error!(request_id = %self.request_id, "user actor unreachable while re-pricing");
                false
            }
        }
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
                output_tokens: self.metered_output_tokens,
            },
            outcome: Outcome::ClientGone,
        };
        // Drop cannot await. `do_send` may pass the mailbox bound by this one message, which
        // is bounded by the number of open tickets; unlike spawning it cannot fail or panic.
        self.addr.do_send(message);
    }
}
