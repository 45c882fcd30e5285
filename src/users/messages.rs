//! Messages a user's actor answers. `None` answers mean "this actor is being evicted: ask a
//! fresh one" (the registry retries).

use super::book::{AdmitRequest, Grant};
use super::limits::UserLimits;
use super::usage::UsageReport;
use crate::accounting::{Outcome, Usage};
use crate::error::ApiError;
use crate::pricing::Price;
use actix::Message;

/// Check the windows and reserve for a new request.
#[derive(Debug, Message)]
#[rtype(result = "Option<Result<Grant, ApiError>>")]
pub struct Admit(pub AdmitRequest);

/// Output tokens relayed since the last report.
#[derive(Debug, Message)]
#[rtype(result = "MeterAnswer")]
pub struct Meter {
    pub request_id: String,
    pub output_tokens: u64,
    /// The relay's largest batch: no allowance (promise) beyond it.
    pub max_batch: u64,
}

/// The actor's answer to [`Meter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeterAnswer {
    /// Go on. `allowance`: output tokens this request may stream before the user's spend could
    /// reach a cap (half the headroom, split among the user's open requests); the relay reports
    /// again after that many (clamped to its batch bounds). 0 when unknown.
    Continue { allowance: u64 },
    /// Stop relaying: a spend cap was passed.
    Stop,
}

/// Move an open request that metered nothing yet to another model's price (fallback before the
/// first token), if the spend checks admission made pass at it under `limits` (the request's,
/// as admitted). The answer: `true` if re-priced; `false` if refused (nothing changed).
#[derive(Debug, Message)]
#[rtype(result = "bool")]
pub struct Reprice {
    pub request_id: String,
    pub price: Price,
    pub limits: UserLimits,
}

/// Replace the reservation with what was used. Idempotent per request id.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Settle {
    pub request_id: String,
    pub usage: Usage,
    pub outcome: Outcome,
}

/// Read the user's counters and windows under `limits` (an error when Redis cannot answer).
#[derive(Debug, Message)]
#[rtype(result = "Option<Result<UsageReport, ApiError>>")]
pub struct ReadUsage(pub UserLimits);
