//! tollgate: a security and cost gateway for OpenAI-compatible chat endpoints.
//!
//! A request flows one way through the modules:
//!
//! ```text
//! http (routes, errors) → auth (who) → policy (what may be sent) → users (admit: the
//! per-user actor) → relay (upstream call, SSE relay, live metering and cuts) → users (meter,
//! settle) → telemetry (the request log line)
//! ```
//!
//! Lower layers (`config`, `error`, `accounting`, `tokenize`, `pricing`) depend on nothing
//! above them. `mock` is the built-in fake provider; `startup` wires a running gateway from a
//! config and a bound listener, for `main` and the tests alike; `cli` is the command line.

pub mod accounting;
pub mod auth;
pub mod calendar;
pub mod catalog;
pub mod cli;
pub mod clock;
pub mod config;
pub mod error;
pub mod exchange;
pub mod guardrails;
pub mod http;
pub mod mock;
pub mod policy;
pub mod pricing;
pub mod relay;
pub mod reload;
pub mod startup;
pub mod telemetry;
pub mod tokenize;
pub mod users;
