//! Telemetry: the process's structured logs (tracing, JSON, `RUST_LOG` filtering), the one
//! request log line per request ([`RequestLog`], which also records the request's metrics when
//! it is written), and the Prometheus metrics ([`metrics`]). Prompt and completion text never
//! reach any of them; the prompt is represented by a keyed hash.

pub mod metrics;
mod request_log;
mod user_cost;

pub use self::metrics::{GuardrailAction, LabelSets, Metrics, RequestRecord};
pub use request_log::{
    Asked, Caller, Ended, LogSink, MemoryLog, PromptHasher, RequestLog, CLIENT_CLOSED_REQUEST,
};

use tracing_subscriber::EnvFilter;

/// Installs the JSON log subscriber (stderr; stdout carries the request log). Safe to call
/// more than once: later calls do nothing.
pub fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        // A closed stderr must not take the gateway down (the default eprintln!s, which panics).
        .log_internal_errors(false)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// `raw` without credentials or query, for logs (`(unparsable)` when it is not a URL).
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) => {
            let _ = u.set_password(None);
            let _ = u.set_username("");
            u.set_query(None);
            u.to_string()
        }
        Err(_) => "(unparsable)".into(),
    }
}
