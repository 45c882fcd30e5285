//! The request log: one JSON line per request, written when the request has truly ended.
//!
//! A [`RequestLog`] is created when a request arrives and filled in from the pipeline's values
//! ([`Caller`], [`Asked`]) as it advances. It is written once, with how the request [`Ended`],
//! by the request's owner (`exchange`); if it is dropped first (the client left while the
//! handler waited), `Drop` writes it with outcome `client_gone`, so no request goes unlogged.
//! Each line carries `timestamp`: when the request arrived (RFC 3339, UTC, milliseconds).

use super::metrics::{GuardrailAction, Metrics, RequestRecord};
use crate::accounting::{Attempt, Outcome, UpstreamFailure, Usage, UsageSource};
use crate::calendar::rfc3339_millis;
use crate::clock::{Clock, SystemClock};
use crate::config::Secret;
use crate::error::ErrorCode;
use crate::guardrails::{Check, RuleHit};
use crate::pricing::{micro_usd_to_usd, Price};
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

    /// Writes one audit line (an operator's action): `{"timestamp", "type":"audit", ...}`
    /// with the fields of `record`, an object. Never give it a secret value.
    pub fn audit(&self, record: serde_json::Value) {
        let mut line = serde_json::Map::new();
        line.insert(
            "timestamp".into(),
            rfc3339_millis(SystemClock.now_ms()).into(),
        );
        line.insert("type".into(), "audit".into());
        if let serde_json::Value::Object(fields) = record {
            line.extend(fields);
        }
        self.write(serde_json::Value::Object(line).to_string());
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
    timestamp: &'a str,
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
    guardrail: Option<String>,
    /// The model asked for (`model` is the one that served).
    requested_model: &'a str,
    /// The models tried, each with its failure; absent when no provider was asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    attempts: Option<&'a [Attempt]>,
}

/// Who is asking, once authenticated.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub user_id: String,
    pub plan: String,
    /// The plan was found in the config (else its metric label is `other`).
    pub plan_known: bool,
    /// The front end's session, when it names one (else the client's `x-session-id`).
    pub session_id: Option<String>,
}

/// What is asked for, once the body is read.
#[derive(Debug, Clone, Default)]
pub struct Asked {
    pub model: String,
    pub stream: bool,
    pub prompt_hash: String,
}

/// How a request ended, as its log line and metrics record it.
#[derive(Debug, Clone)]
pub struct Ended {
    pub outcome: Outcome,
    /// The HTTP status the client got (200 for a stream, whatever ended it; 499 when it left).
    pub status: u16,
    /// The error the client got, as a status or as the stream's last event.
    pub error: Option<ErrorCode>,
    pub usage: Usage,
    pub usage_source: UsageSource,
    pub ttft: Option<Duration>,
    /// The output guardrail rule that cut the reply.
    pub output_blocked: Option<RuleHit>,
    /// A stream scanned by output checks: the characters they held back.
    pub held_back_chars: Option<u64>,
}

impl Ended {
    /// A request refused before it reached the upstream: nothing used.
    pub fn refused(error: ErrorCode) -> Self {
        Self {
            outcome: Outcome::Rejected,
            status: error.status(),
            error: Some(error),
            usage: Usage::default(),
            usage_source: UsageSource::Counted,
            ttft: None,
            output_blocked: None,
            held_back_chars: None,
        }
    }
}

/// One request's log record, filled in from the pipeline's values as the request advances,
/// and written once by [`RequestLog::write`] (or, if dropped unwritten, as `client_gone`).
pub struct RequestLog {
    sink: LogSink,
    metrics: Option<Metrics>,
    started: Instant,
    /// Wall-clock arrival, for the line's `timestamp`.
    arrived: SystemTime,
    written: bool,
    request_id: String,
    feature: String,
    session_id: Option<String>,
    caller: Caller,
    asked: Asked,
    /// The model's price, once the request passed the price table.
    price: Option<Price>,
    input_tokens_estimated: u64,
    /// Input rules that matched a request let through under `flag`.
    input_flagged: Vec<String>,
    /// Whether the user's actor admitted the request (dropped from then on, its input estimate
    /// is billed; before, nothing).
    admitted: bool,
    /// The fallback model that served, when not the one asked for.
    served_by_fallback: Option<String>,
    /// The models tried, once a provider was asked.
    attempts: Option<Vec<Attempt>>,
}

impl RequestLog {
    pub fn new(
        sink: LogSink,
        request_id: String,
        feature: String,
        session_id: Option<String>,
        started: Instant,
    ) -> Self {
        Self {
            sink,
            metrics: None,
            started,
            arrived: SystemTime::now(),
            written: false,
            request_id,
            feature,
            session_id,
            caller: Caller::default(),
            asked: Asked::default(),
            price: None,
            input_tokens_estimated: 0,
            input_flagged: Vec::new(),
            admitted: false,
            served_by_fallback: None,
            attempts: None,
        }
    }

    /// Also records the request in `metrics` when it is written.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    pub fn feature(&self) -> &str {
        &self.feature
    }

    /// The caller is known.
    pub fn caller(&mut self, mut caller: Caller) {
        if let Some(session) = caller.session_id.take() {
            self.session_id = Some(session);
        }
        self.caller = caller;
    }

    /// The request is known.
    pub fn asked(&mut self, asked: Asked) {
        self.asked = asked;
    }

    /// The request passed its checks: its price and input estimate.
    pub fn estimated(&mut self, price: Price, input_tokens: u64) {
        self.price = Some(price);
        self.input_tokens_estimated = input_tokens;
    }

    /// Providers were asked: these `attempts`, the last one by `model` (a fallback when more
    /// than one was tried) at `price`.
    pub fn routed(&mut self, model: String, price: Price, attempts: Vec<Attempt>) {
        if attempts.len() > 1 {
            self.served_by_fallback = Some(model);
            self.price = Some(price);
        }
        self.attempts = Some(attempts);
    }

    /// The user's actor admitted the request.
    pub fn admitted(&mut self) {
        self.admitted = true;
    }

    /// The input filter flagged these rules (and let the request through).
    pub fn input_flagged(&mut self, rules: Vec<String>) {
        self.input_flagged = rules;
    }

    /// Writes the line and records the metrics, once.
    pub fn write(mut self, ended: &Ended) {
        self.write_once(ended);
    }

    fn write_once(&mut self, ended: &Ended) {
        if self.written {
            return;
        }
        self.written = true;
        let cost = self.price.map_or(0, |p| p.cost_micro_usd(ended.usage));
        let arrived_ms = self
            .arrived
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let guardrail = match (&ended.output_blocked, self.input_flagged.is_empty()) {
            (Some(rule), _) => Some(format!("output_blocked:{}", rule.id)),
            (None, false) => Some(format!("input_flagged:{}", self.input_flagged.join(","))),
            (None, true) => None,
        };
        let line = Line {
            timestamp: &rfc3339_millis(arrived_ms),
            request_id: &self.request_id,
            user_id: &self.caller.user_id,
            feature: &self.feature,
            plan: &self.caller.plan,
            model: self.model(),
            input_tokens_estimated: self.input_tokens_estimated,
            output_tokens: ended.usage.output_tokens,
            total_tokens: ended.usage.total(),
            cost_usd: micro_usd_to_usd(cost),
            latency_ms: self.started.elapsed().as_millis() as u64,
            ttft_ms: ended.ttft.map(|t| t.as_millis() as u64),
            outcome: ended.outcome,
            status: ended.status,
            prompt_hash: &self.asked.prompt_hash,
            session_id: self.session_id.as_deref(),
            stream: self.asked.stream,
            usage_source: ended.usage_source,
            input_tokens: ended.usage.input_tokens,
            error_code: ended.error.map(ErrorCode::as_str),
            guardrail,
            requested_model: &self.asked.model,
            attempts: self.attempts.as_deref(),
        };
        if let Ok(json) = serde_json::to_string(&line) {
            self.sink.write(json);
        }
        if let Some(metrics) = &self.metrics {
            self.record_metrics(metrics, ended, cost);
        }
    }

    /// The model that served (the one asked for unless a fallback did).
    fn model(&self) -> &str {
        self.served_by_fallback
            .as_deref()
            .unwrap_or(&self.asked.model)
    }

    fn record_metrics(&self, metrics: &Metrics, ended: &Ended, cost_micro_usd: u64) {
        let plan = if self.caller.plan_known {
            self.caller.plan.as_str()
        } else if self.caller.plan.is_empty() {
            "none"
        } else {
            "other"
        };
        metrics.record_request(&RequestRecord {
            feature: &self.feature,
            plan,
            model: self.model(),
            user_id: &self.caller.user_id,
            outcome: ended.outcome.as_str(),
            input_tokens: ended.usage.input_tokens,
            output_tokens: ended.usage.output_tokens,
            cost_micro_usd,
            duration: self.started.elapsed(),
            ttft: ended.ttft,
        });
        // A cut is an answer that started and was ended early (or whose client left).
        let started = ended.status == 200 || ended.outcome == Outcome::ClientGone;
        if let Some(reason) = ended.outcome.cut_reason().filter(|_| started) {
            metrics.record_stream_cut(reason);
        }
        for pair in self.attempts.as_deref().unwrap_or_default().windows(2) {
            metrics.record_fallback(&pair[0].model, &pair[1].model);
        }
        if let Some(chars) = ended.held_back_chars {
            metrics.record_held_back(chars);
        }
        if ended.error == Some(ErrorCode::PromptInjection) {
            metrics.record_guardrail(Check::PromptInjection, GuardrailAction::Block);
        } else if let Some(rule) = &ended.output_blocked {
            metrics.record_guardrail(rule.check, GuardrailAction::Block);
        } else if !self.input_flagged.is_empty() {
            metrics.record_guardrail(Check::PromptInjection, GuardrailAction::Flag);
        }
        match (ended.outcome, ended.error) {
            (Outcome::Rejected, Some(code)) => metrics.record_rejection(code),
            (Outcome::UpstreamError, code) => metrics.record_upstream_error(
                code.and_then(UpstreamFailure::of)
                    .unwrap_or(UpstreamFailure::Failed),
            ),
            // The provider did not answer in time (a pre-stream 504): an upstream error too.
            (Outcome::CutDeadline, Some(ErrorCode::UpstreamTimeout)) => {
                metrics.record_upstream_error(UpstreamFailure::Timeout)
            }
            _ => {}
        }
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        let ended = Ended {
            outcome: Outcome::ClientGone,
            status: CLIENT_CLOSED_REQUEST,
            error: None,
            // What the dropped ticket (if any) bills: the estimate once admitted, else nothing.
            usage: Usage {
                input_tokens: if self.admitted {
                    self.input_tokens_estimated
                } else {
                    0
                },
                output_tokens: 0,
            },
            usage_source: UsageSource::Counted,
            ttft: None,
            output_blocked: None,
            held_back_chars: None,
        };
        self.write_once(&ended);
    }
}

/// The status logged for a client that left before its answer was complete (nginx's 499).
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

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
    fn a_request_dropped_before_admission_is_logged_unbilled() {
        let (sink, lines) = LogSink::memory();
        let mut log = RequestLog::new(sink, "r2".into(), "chat".into(), None, Instant::now());
        log.estimated(crate::pricing::Price::default(), 7);
        drop(log);
        let v: serde_json::Value = serde_json::from_str(&lines.lines()[0]).unwrap();
        assert_eq!(
            (v["outcome"].clone(), v["input_tokens"].clone()),
            ("client_gone".into(), 0.into())
        );
    }

    #[test]
    fn dropped_log_is_written_once_as_client_gone() {
        let (sink, lines) = LogSink::memory();
        let mut log = RequestLog::new(sink, "r1".into(), "chat".into(), None, Instant::now());
        log.estimated(crate::pricing::Price::default(), 7);
        log.admitted();
        drop(log);
        let lines = lines.lines();
        assert_eq!(lines.len(), 1);
        let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(v["outcome"], "client_gone");
        assert_eq!(v["request_id"], "r1");
        assert_eq!(v["input_tokens"], 7);
        assert_eq!(v["status"], 499);
        let timestamp = v["timestamp"].as_str().unwrap();
        assert_eq!(
            timestamp.len(),
            "2026-12-04T21:25:27.123Z".len(),
            "{timestamp}"
        );
        assert!(timestamp.ends_with('Z') && timestamp.as_bytes()[10] == b'T');
    }
}
