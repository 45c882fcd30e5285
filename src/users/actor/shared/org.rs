//! Redis mode with an organisation cap: what the organisation's counter in Redis is asked at
//! each step of a request (a call beside the user's: the counter has its own Cluster slot), and
//! what its answers mean for the request. The rule is the book's: a request's cost and its
//! promised allowance count against the cap, so no stream is allowed past it.
//!
//! Far from the organisation's cap it promises a stream up to [`ORG_BATCHES`] of its batches at
//! a time, so most meter reports need no call to it: while its promise covers the next batch,
//! the user's script alone answers (the counter's record of the request's cost lags, and its
//! promise covers the difference).

use super::Shared;
use crate::accounting::Usage;
use crate::pricing::Price;
use crate::users::actor::UserActor;
use crate::users::allowance::{Ask, Batch};
use crate::users::book::{AdmitRequest, OpenRequest};
use crate::users::redis::{OrgAnswer, OrgAsk, OrgDecision, Unavailable};

/// Batches of a stream's output the organisation promises at a time, far from its cap.
pub(super) const ORG_BATCHES: u64 = 4;

/// What the organisation's counter holds for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::users::actor) struct Hold {
    /// The organisation's day the request is counted in.
    pub day: u64,
    /// Output tokens (from the request's first) the organisation's promise covers.
    pub covered: u64,
}

/// What a meter report asks of the organisation's counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// No organisation cap (or the counter does not hold the request).
    Uncapped,
    /// Its promise still covers the next batch: these tokens, from the report on.
    Covered(u64),
    /// Ask it (on `day`).
    Call(u64, OrgAsk),
}

/// What came of a meter report's [`Step`].
pub(super) enum Metered {
    Uncapped,
    Covered(u64),
    Answered(Result<OrgAnswer, Unavailable>),
}

impl Hold {
    /// The hold of a request the counter admitted.
    pub(super) fn admitted(answer: &OrgAnswer, price: Price) -> Self {
        let covered = match answer.decision {
            OrgDecision::Granted(granted) => tokens_for(price, granted),
            _ => 0,
        };
        Self {
            day: answer.day,
            covered,
        }
    }

    /// What a report of `used` more tokens of `open`, asking `ask`, needs of the counter.
    pub(super) fn step(&self, open: &OpenRequest, used: u64, ask: Ask) -> Step {
        let metered = open.metered_output_tokens + used;
        if self.covered >= metered + ask.batch.max.max(ask.needed) {
            Step::Covered(self.covered - metered)
        } else {
            Step::Call(self.day, meter_ask(open, used, ask))
        }
    }
}

/// What `tokens` of output cost at `price`, in micro-USD (rounded up).
fn output_cost(price: Price, tokens: u64) -> u64 {
    price.cost_micro_usd(Usage {
        input_tokens: 0,
        output_tokens: tokens,
    })
}

/// The output tokens `micro_usd` pays for at `price`.
pub(super) fn tokens_for(price: Price, micro_usd: u64) -> u64 {
    let (_, output_nano_usd) = price.nano_usd_per_token();
    micro_usd.saturating_mul(1000) / output_nano_usd.max(1)
}

/// An admission: its input cost; a stream's first allowance in its batches, or a whole
/// reply's grant (at least the smallest one).
pub(super) fn admit_ask(request: &AdmitRequest) -> OrgAsk {
    let cost = request.price.cost_micro_usd(Usage {
        input_tokens: request.estimated_input_tokens,
        output_tokens: 0,
    });
    if request.stream {
        return OrgAsk {
            cost,
            needed: 0,
            min: output_cost(request.price, request.batch.min),
            want: output_cost(request.price, ORG_BATCHES * request.batch.max),
        };
    }
    let choices = request.choices.max(1);
    let floor = u64::from(request.limits.min_granted_tokens.min(request.max_tokens));
    let whole = output_cost(request.price, u64::from(request.max_tokens) * choices);
    OrgAsk {
        cost,
        needed: output_cost(request.price, floor * choices),
        min: whole,
        want: whole,
    }
}

/// The request as the user's script is asked to admit it once the organisation promised it
/// `granted`: a stream's first allowance, or a whole reply's `max_tokens`, within it.
pub(super) fn within_org(request: &AdmitRequest, granted: u64) -> AdmitRequest {
    let tokens = tokens_for(request.price, granted);
    let mut request = request.clone();
    if request.stream {
        request.batch = Batch {
            min: request.batch.min.min(tokens),
            max: request.batch.max.min(tokens),
        };
    } else {
        let per_choice = tokens / request.choices.max(1);
        request.max_tokens = request
            .max_tokens
            .min(u32::try_from(per_choice).unwrap_or(u32::MAX));
    }
    request
}

/// A meter report of `open` with `used` more tokens: its cost then, and the allowance asked.
fn meter_ask(open: &OpenRequest, used: u64, ask: Ask) -> OrgAsk {
    OrgAsk {
        cost: open.price.cost_micro_usd(Usage {
            input_tokens: open.input_tokens,
            output_tokens: open.metered_output_tokens + used,
        }),
        needed: output_cost(open.price, ask.needed),
        min: output_cost(open.price, ask.batch.min),
        want: output_cost(open.price, ORG_BATCHES * ask.batch.max),
    }
}

/// A re-price of `open` to `price`: its cost there, and its own promise (a stream's is
/// dropped; a whole reply's grant is kept, at the new price).
pub(super) fn reprice_ask(open: &OpenRequest, price: Price) -> OrgAsk {
    let promise = if open.stream {
        0
    } else {
        output_cost(price, open.promised_tokens)
    };
    OrgAsk {
        cost: price.cost_micro_usd(Usage {
            input_tokens: open.input_tokens,
            output_tokens: open.metered_output_tokens,
        }),
        needed: promise,
        min: promise,
        want: promise,
    }
}

impl UserActor<Shared> {
    /// Keeps the outage limit of the organisation's local ledger current with the figures
    /// Redis just reported.
    pub(super) fn org_answered(&self, answer: &OrgAnswer) {
        if let Some(cap) = self.env.org.cap() {
            let limit = self
                .authority
                .ledger
                .policy
                .org_limit(cap, Some(answer.running));
            self.env.org.set_outage_limit(limit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::pricing::PriceTable;
    use crate::users::limits::UserLimits;

    fn request(stream: bool) -> AdmitRequest {
        let config = Config::default();
        AdmitRequest {
            request_id: "r".into(),
            estimated_input_tokens: 100,
            max_tokens: 500,
            choices: 2,
            stream,
            // $2.50 / M input, $10 / M output: 10 micro-USD an output token.
            price: PriceTable::new(&config.pricing).price("mock-gpt").unwrap(),
            limits: UserLimits::for_plan(&config, "pro"),
            batch: Batch { min: 16, max: 256 },
        }
    }

    #[test]
    fn a_stream_asks_for_its_first_allowance_and_a_whole_reply_for_its_grant() {
        let ask = admit_ask(&request(true));
        assert_eq!(
            (ask.cost, ask.needed, ask.min, ask.want),
            (250, 0, 160, 10_240)
        );
        let ask = admit_ask(&request(false));
        // The smallest grant: 16 tokens × 2 choices; the whole one: 500 × 2.
        assert_eq!(
            (ask.cost, ask.needed, ask.min, ask.want),
            (250, 320, 10_000, 10_000)
        );
    }

    #[test]
    fn a_report_calls_the_organisation_only_once_its_promise_no_longer_covers_a_batch() {
        let admitted = OrgAnswer {
            decision: crate::users::redis::OrgDecision::Granted(10_240),
            running: 0,
            day: 7,
        };
        let mut hold = Hold::admitted(&admitted, request(true).price);
        assert_eq!(
            hold,
            Hold {
                day: 7,
                covered: 1_024
            }
        );
        let open = OpenRequest {
            metered_output_tokens: 512,
            ..OpenRequest::empty(request(true).price, 0)
        };
        let ask = Ask {
            needed: 1,
            batch: Batch { min: 16, max: 256 },
        };
        assert_eq!(hold.step(&open, 256, ask), Step::Covered(256));
        assert!(matches!(hold.step(&open, 300, ask), Step::Call(7, _)));
        hold.covered = 0; // re-priced: the promise was dropped
        assert!(matches!(hold.step(&open, 0, ask), Step::Call(7, _)));
    }

    #[test]
    fn the_user_s_script_is_asked_for_no_more_than_the_organisation_promised() {
        let stream = within_org(&request(true), 1_000);
        assert_eq!(stream.batch, Batch { min: 16, max: 100 });
        let whole = within_org(&request(false), 1_000);
        assert_eq!(whole.max_tokens, 50, "100 tokens over 2 choices");
        assert_eq!(within_org(&request(false), 1_000_000).max_tokens, 500);
    }
}
