//! The request log: one JSON line per request, written when the request has truly ended.
//!
//! A [`RequestLog`] is created when a request arrives and filled in as it advances. It is
//! written by [`RequestLog::finish`]; if the request is dropped first (the client left while
//! the handler waited), `Drop` writes it with outcome `client_gone`, so no request goes unlogged.

use super::metrics::{Metrics, RequestRecord};
use crate::accounting::{Outcome, Usage, UsageSource};
use crate::config::Secret;
use crate::pricing::{micro_usd_to_usd, Price};
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where request log lines go.
#[derive(Clone, Debug)]
pub enum LogSink {
    /// One line per request on stdout (production).
    Stdout,
    /// Kept in memory (tests read what was logged).
    Memory(Arc<MemoryLog>),
}

/// Request log lines kept in memory, with a way to wait for them.
#[derive(Debug, Default)]
pub struct MemoryLog {
    lines: Mutex<Vec<String>>,
    written: tokio::sync::Notify,
}

impl MemoryLog {
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until at least `n` lines were written (at most `timeout`); returns all lines.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let written = self.written.notified();
            let lines = self.lines();
            if lines.len() >= n || tokio::time::Instant::now() >= deadline {
                return lines;
            }
            let _ = tokio::time::timeout_at(deadline, written).await;
        }
    }

    fn push(&self, line: String) {
        self.lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(line);
        self.written.notify_waiters();
    }
}

impl LogSink {
    pub fn memory() -> (Self, Arc<MemoryLog>) {
        let log = Arc::new(MemoryLog::default());
        (LogSink::Memory(log.clone()), log)
    }

    fn write(&self, line: String) {
        match self {
            LogSink::Stdout => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(line.as_bytes());
                let _ = out.write_all(b"\n");
                let _ = out.flush();
            }
            LogSink::Memory(log) => log.push(line),
        }
    }
}

/// HMAC-SHA256 of prompt text under the configured key.
#[derive(Clone)]
pub struct PromptHasher {
    key: Secret,
}

impl PromptHasher {
    /// Uses `key`, or a random per-process key when it is empty.
    pub fn new(key: &Secret) -> Self {
        let key = if key.is_empty() {
            Secret::new(format!("{}{}", uuid::Uuid::new_v4(), uuid::Uuid::new_v4()))
        } else {
            key.clone()
        };
        Self { key }
    }

    pub fn hash(&self, text: &str) -> String {
        match Hmac::<Sha256>::new_from_slice(self.key.expose().as_bytes()) {
            Ok(mut mac) => {
                mac.update(text.as_bytes());
                hex::encode(mac.finalize().into_bytes())
            }
            Err(_) => String::new(),
        }
    }
}

/// The fields of one request's log line.
#[derive(Debug, Serialize)]
struct Line<'a> {
    request_id: &'a str,
    user_id: &'a str,
    feature: &'a str,
    plan: &'a str,
    model: &'a str,
    input_tokens_estimated: u64,
    output_tokens: u64,
    total_tokens: u64,
    cost_usd: f64,
    latency_ms: u64,
    ttft_ms: Option<u64>,
    outcome: Outcome,
    status: u16,
    prompt_hash: &'a str,
    session_id: Option<&'a str>,
    stream: bool,
    usage_source: UsageSource,
    input_tokens: u64,
    error_code: Option<&'a str>,
    guardrail: Option<&'a str>,
}

/// One request's log record, filled in as the request advances.
pub struct RequestLog {
    sink: LogSink,
    metrics: Option<Metrics>,
    started: Instant,
    written: bool,
    /// The plan was found in the config (else its metric label is `other`, or `none`).
    pub plan_known: bool,
    pub request_id: String,
    pub user_id: String,
    pub feature: String,
    pub plan: String,
    pub model: String,
    pub input_tokens_estimated: u64,
    pub prompt_hash: String,
    pub session_id: Option<String>,
    pub stream: bool,
    pub price: Option<Price>,
    /// What a guardrail did (`input_flagged:<rules>`, `output_blocked:<rule>`), if anything.
    pub guardrail: Option<String>,
}

impl RequestLog {
    pub fn new(sink: LogSink, request_id: String, started: Instant) -> Self {
        Self {
            sink,
            metrics: None,
            started,
            written: false,
            plan_known: false,
            request_id,
            user_id: String::new(),
            feature: String::new(),
            plan: String::new(),
            model: String::new(),
            input_tokens_estimated: 0,
            prompt_hash: String::new(),
            session_id: None,
            stream: false,
            price: None,
            guardrail: None,
        }
    }

    /// Also records the request in `metrics` when it is written.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Writes the line for a request that ended with `outcome`.
    pub fn finish(
        mut self,
        outcome: Outcome,
        status: u16,
        usage: Usage,
        usage_source: UsageSource,
        ttft: Option<Duration>,
        error_code: Option<&str>,
    ) {
        self.write(outcome, status, usage, usage_source, ttft, error_code);
    }

    /// Writes the line for a request refused before it reached the upstream.
    pub fn reject(self, status: u16, error_code: &str) {
        self.finish(
            Outcome::Rejected,
            status,
            Usage::default(),
            UsageSource::Counted,
            None,
            Some(error_code),
        );
    }

    fn write(
        &mut self,
        outcome: Outcome,
        status: u16,
        usage: Usage,
        usage_source: UsageSource,
        ttft: Option<Duration>,
        error_code: Option<&str>,
    ) {
        if self.written {
            return;
        }
        self.written = true;
        let cost = self.price.map_or(0, |p| p.cost_micro_usd(usage));
        let line = Line {
            request_id: &self.request_id,
            user_id: &self.user_id,
            feature: &self.feature,
            plan: &self.plan,
            model: &self.model,
            input_tokens_estimated: self.input_tokens_estimated,
            output_tokens: usage.output_tokens,
            total_tokens: usage.total(),
            cost_usd: micro_usd_to_usd(cost),
            latency_ms: self.started.elapsed().as_millis() as u64,
            ttft_ms: ttft.map(|t| t.as_millis() as u64),
            outcome,
            status,
            prompt_hash: &self.prompt_hash,
            session_id: self.session_id.as_deref(),
            stream: self.stream,
            usage_source,
            input_tokens: usage.input_tokens,
            error_code,
            guardrail: self.guardrail.as_deref(),
        };
        if let Ok(json) = serde_json::to_string(&line) {
            self.sink.write(json);
        }
        if let Some(metrics) = &self.metrics {
            self.record_metrics(metrics, outcome, status, usage, cost, ttft, error_code);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn record_metrics(
        &self,
        metrics: &Metrics,
        outcome: Outcome,
        status: u16,
        usage: Usage,
        cost_micro_usd: u64,
        ttft: Option<Duration>,
        error_code: Option<&str>,
    ) {
        let plan = if self.plan_known {
            self.plan.as_str()
        } else if self.plan.is_empty() {
            "none"
        } else {
            "other"
        };
        metrics.record_request(&RequestRecord {
            feature: &self.feature,
            plan,
            model: &self.model,
            user_id: &self.user_id,
            outcome: outcome.as_str(),
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            cost_micro_usd,
            duration: self.started.elapsed(),
            ttft,
        });
        let cut = match outcome {
            Outcome::Completed | Outcome::Rejected => None,
            Outcome::CutTokenCap => Some("token_cap"),
            Outcome::CutBudget => Some("budget"),
            Outcome::CutDeadline => Some("deadline"),
            Outcome::CutGuardrail => Some("guardrail"),
            Outcome::UpstreamError => Some("upstream_failed"),
            Outcome::ClientGone => Some("client_gone"),
        };
        // A cut is an answer that started and was ended early (or whose client left).
        if let Some(reason) = cut.filter(|_| status == 200 || outcome == Outcome::ClientGone) {
            metrics.record_stream_cut(reason);
        }
        if let Some((check, action)) = guardrail_event(self.guardrail.as_deref(), error_code) {
            metrics.record_guardrail(check, action);
        }
        match outcome {
            Outcome::Rejected => metrics.record_rejection(error_code.unwrap_or("unknown")),
            Outcome::UpstreamError => {
                metrics.record_upstream_error(error_code.unwrap_or("upstream_failed"))
            }
            // The provider did not answer in time (a pre-stream 504): an upstream error too.
            Outcome::CutDeadline if error_code == Some("upstream_timeout") => {
                metrics.record_upstream_error("upstream_timeout")
            }
            _ => {}
        }
    }
}

/// The (check, action) labels of what a guardrail did to this request, if anything.
fn guardrail_event(
    guardrail: Option<&str>,
    error_code: Option<&str>,
) -> Option<(&'static str, &'static str)> {
    if error_code == Some("prompt_injection") {
        return Some(("prompt_injection", "block"));
    }
    let (what, detail) = guardrail?.split_once(':')?;
    match what {
        "input_flagged" => Some(("prompt_injection", "flag")),
        "output_blocked" => Some((
            match detail {
                "canary" => "canary",
                "email" | "phone" => "pii",
                _ => "secret",
            },
            "block",
        )),
        _ => None,
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        let usage = Usage {
            input_tokens: self.input_tokens_estimated,
            output_tokens: 0,
        };
        self.write(
            Outcome::ClientGone,
            499,
            usage,
            UsageSource::Counted,
            None,
            None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_hash_is_keyed() {
        let a = PromptHasher::new(&Secret::new("k1"));
        let b = PromptHasher::new(&Secret::new("k2"));
        assert_eq!(a.hash("hello"), a.hash("hello"));
        assert_ne!(a.hash("hello"), b.hash("hello"));
        assert_eq!(a.hash("hello").len(), 64);
    }

    #[test]
    fn dropped_log_is_written_once_as_client_gone() {
        let (sink, lines) = LogSink::memory();
        let mut log = RequestLog::new(sink, "r1".into(), Instant::now());
        log.input_tokens_estimated = 7;
        drop(log);
        let lines = lines.lines();
        assert_eq!(lines.len(), 1);
        let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(v["outcome"], "client_gone");
        assert_eq!(v["request_id"], "r1");
    }
}
