//! Per-user limits, held by one actix actor per user.
//!
//! The request path talks to a user's actor in three steps: **admit** (check every window and
//! reserve, atomically, before the upstream call), **meter** (report relayed output tokens and
//! ask for the next [`allowance`]: a stream relays only within one, so no cap is ever passed)
//! and **settle** (replace the reservation with what was used, exactly once). Between admission and the first metered token a request may be
//! **re-priced** (fallback to another model): the spend checks admission made are made again at
//! the new price, and on a pass the request is billed at it. [`Ticket`] carries a request
//! through these steps and settles on drop if the request path never did. The rules live in
//! [`book`]; in Redis mode the same rules run as Lua scripts in [`redis`], and [`outage`] says
//! what a replica may do while Redis is away.

mod actor;
pub mod admin;
mod alerts;
pub mod allowance;
pub mod book;

pub mod limits;
mod messages;
mod org;
pub mod outage;
pub mod redis;
pub mod refusal;
mod registry;
mod store;
mod ticket;
pub mod usage;

pub use allowance::Batch;
pub use book::AdmitRequest;
pub use limits::UserLimits;
pub use messages::{AdminChange, Inspection, LastRefusal, MeterAnswer};
pub use redis::RedisLedger;
pub use registry::UserRegistry;
pub use store::{MemoryStore, SnapshotError, Snapshots, UserStore};
pub use ticket::Ticket;
pub use usage::UsageReport;
