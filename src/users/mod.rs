//! Per-user state, owned by one actix actor per user.
//!
//! The request path talks to a user's actor in three steps: **admit** (reserve before the
//! upstream call), **meter** (report relayed output tokens in batches and obey the answer) and
//! **settle** (replace the reservation with what was used, exactly once). [`Ticket`] carries a
//! request through these steps and settles on drop if the request path never did.
//!
//! What the actor enforces grows with the per-user limits issue; today it keeps the counts
//! (requests, tokens, open streams) that `/v1/usage` reports.

mod actor;
mod messages;
pub mod registry;
mod ticket;

pub use messages::{Admission, Refusal, UserUsage, Verdict};
pub use registry::UserRegistry;
pub use ticket::Ticket;
