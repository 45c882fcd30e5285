//! Messages a user's actor answers. `None` answers mean "this actor is being evicted: ask a
//! fresh one" (the registry retries).

use super::admin::{AdminOp, UserAdmin};
use super::allowance::Ask;
use super::book::{AdmitRequest, Grant};
use super::limits::UserLimits;
use super::usage::UsageReport;
use crate::accounting::{Outcome, Usage};
use crate::error::{ApiError, ErrorCode};
use crate::pricing::Price;
use actix::Message;

/// Check the windows and reserve for a new request.
#[derive(Debug, Message)]
#[rtype(result = "Option<Result<Grant, ApiError>>")]
pub struct Admit(pub AdmitRequest);

/// Output tokens a stream relayed since its last report (within its allowance), and a request
/// for its next allowance.
#[derive(Debug, Message)]
#[rtype(result = "MeterAnswer")]
pub struct Meter {
    pub request_id: String,
    pub output_tokens: u64,
    /// The next allowance it asks for.
    pub ask: Ask,
}

/// The actor's answer to [`Meter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeterAnswer {
    /// Output tokens the stream may relay from here before it reports again (in place of its
    /// last allowance). Less than it `needed`: a spend cap is reached; relay that many (the
    /// chunk trimmed to them), then end the stream with `budget_exceeded`.
    pub allowance: u64,
    /// An operator blocked the user: relay nothing more, end with `user_blocked`.
    pub blocked: bool,
}

impl MeterAnswer {
    pub fn allow(allowance: u64) -> Self {
        Self {
            allowance,
            blocked: false,
        }
    }

    pub const BLOCKED: MeterAnswer = MeterAnswer {
        allowance: 0,
        blocked: true,
    };
}

/// Move an open request that metered nothing yet to another model's price (fallback before the
/// first token), if the spend checks admission made pass at it under `limits` (the request's,
/// as admitted). The answer: `true` if re-priced (a stream then holds no allowance: it asks
/// again, at the new price); `false` if refused (nothing changed).
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

/// Apply an operator's change to the user.
#[derive(Debug, Message)]
#[rtype(result = "Option<Result<AdminChange, ApiError>>")]
pub struct ChangeAdmin(pub AdminOp);

/// An operator's settings before and after a change.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminChange {
    pub before: UserAdmin,
    pub after: UserAdmin,
}

/// Everything an operator sees of a user; the limits are the plan's of the user's last
/// request (else the ones given) with the overrides applied.
#[derive(Debug, Message)]
#[rtype(result = "Option<Result<Inspection, ApiError>>")]
pub struct Inspect(pub UserLimits);

/// The answer to [`Inspect`].
#[derive(Debug, Clone)]
pub struct Inspection {
    pub usage: UsageReport,
    pub admin: UserAdmin,
    pub last_refusal: Option<LastRefusal>,
    pub limits: UserLimits,
}

/// A refusal an actor gave: its code and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastRefusal {
    pub code: ErrorCode,
    pub at_ms: u64,
}
