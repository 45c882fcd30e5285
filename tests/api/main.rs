//! Integration tests: the real gateway over TCP in front of a real mock provider, through the
//! harness `tollgate_testkit::app`. One test binary (shorter link times); each module covers
//! one area.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin_users;
mod anthropic;
mod cors;
mod cuts;
mod edge;
mod endings;
mod errors;
mod exposure;
mod fallback;
mod flood;
mod framing;
mod front_ends;
mod guardrails;
mod hostile;
mod identity;
mod jwks;
mod limits;
mod non_stream;
mod reload;
mod slow_clients;
mod streaming;
