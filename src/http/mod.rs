//! The HTTP surface: routes, the request id on every response, error → response mapping, and
//! the server itself. Only this module (and start-up) uses actix-web types.

mod admin;
mod callers;
mod chat;
mod connections;
mod cors;
mod demo;
mod errors;
pub(crate) mod listener;
mod models;
mod request_headers;
mod request_id;
mod routes;
mod server;
mod state;
mod worker_clients;

pub use admin::serve_admin;
pub use server::{serve, serve_metrics, ServeOptions};
pub use state::{AppState, Lasting};
