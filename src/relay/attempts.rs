//! The models a request may be served by, tried in order until one starts its reply.
//!
//! [`Attempts`] holds the request's chain (the model asked for, then the fallbacks its plan may
//! use; see [`crate::catalog`]) and sends to the current one. A failure before the first token
//! that [`AttemptFailure::allows_fallback`] moves the request to the next model, within the
//! request's deadline, once the user's actor re-priced its admission for that model (through the
//! ticket); when the budget cannot cover it, or no model is left, the failure stands. The
//! stream relay and the whole-reply reader call [`Attempts::fall_back`] when a started reply
//! fails before its first content; [`Attempts::route`] is what the log line records.

use super::anthropic;
use super::health::Circuits;
use super::upstream::{SendFailure, UpstreamClient, UpstreamResponse};
use crate::accounting::{Attempt, AttemptFailure};
use crate::catalog::Placement;
use crate::config::{ProviderConfig, UpstreamFormat};
use crate::error::{ApiError, ErrorCode};
use crate::policy::ChatRequest;
use crate::pricing::Price;
use crate::tokenize::TokenCounter;
use crate::users::Ticket;
use bytes::Bytes;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The providers one HTTP worker sends to: a client per provider, numbered as
/// [`crate::config::Config::providers`] lists them, with their health as readiness sees it.
pub struct Upstreams {
    clients: Vec<UpstreamClient>,
    settings: Arc<[ProviderConfig]>,
    health: Circuits,
}

impl Upstreams {
    /// This worker's clients. `urls[i]` is where provider `i` is reached (its own URL, or the
    /// built-in mock's).
    pub fn new(settings: Arc<[ProviderConfig]>, urls: &[String], health: Circuits) -> Self {
        let clients = settings
            .iter()
            .zip(urls)
            .map(|(provider, url)| UpstreamClient::new(provider, url))
            .collect();
        Self {
            clients,
            settings,
            health,
        }
    }
}

/// A reply that started: the provider's response (headers in, body unread) and what reading it
/// needs.
pub struct Started {
    pub response: UpstreamResponse,
    pub format: UpstreamFormat,
    /// The serving model's price.
    pub price: Price,
    pub counter: TokenCounter,
    /// The provider's first event must arrive by then (its first-byte timeout).
    pub first_event_by: Instant,
    pub idle_timeout: Duration,
    pub max_event_bytes: usize,
}

/// Which models a request tried, and which one served it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteTaken {
    pub requested_model: String,
    /// The model that served (or was tried last).
    pub model: String,
    pub price: Price,
    /// Every model tried, in order, each with its failure (none for the last one when it
    /// served).
    pub attempts: Vec<Attempt>,
}

/// The request's chain of models and where it stands.
pub struct Attempts {
    chain: Vec<Placement>,
    current: usize,
    failures: Vec<AttemptFailure>,
    requested_model: String,
    stream: bool,
    /// The request, to write it for the next model; dropped once no model can take over (the
    /// last one is serving, or content started), so an open stream does not hold the prompt.
    request: Option<Rc<ChatRequest>>,
    upstreams: Rc<Upstreams>,
    max_tokens: u32,
    deadline: Instant,
}

impl Attempts {
    /// `chain` is never empty (the model asked for comes first).
    pub fn new(
        chain: Vec<Placement>,
        request: Rc<ChatRequest>,
        upstreams: Rc<Upstreams>,
        max_tokens: u32,
        deadline: Instant,
    ) -> Self {
        Self {
            requested_model: request.model.clone(),
            stream: request.stream,
            chain,
            current: 0,
            failures: Vec::new(),
            request: Some(request),
            upstreams,
            max_tokens,
            deadline,
        }
    }

    /// Sends to the current model, moving down the chain on failures that allow it.
    pub async fn open(&mut self, ticket: &Ticket) -> Result<Started, ApiError> {
        loop {
            let failed = match self.send_current().await {
                Ok(started) => {
                    if self.current + 1 == self.chain.len() {
                        self.commit();
                    }
                    return Ok(started);
                }
                Err(failed) => failed,
            };
            self.next(failed.failure, failed.error, ticket).await?;
        }
    }

    /// The current model's reply failed before its first content (`failure`, answered to the
    /// client as `error` if nothing can take over): moves to the next model and opens it.
    pub async fn fall_back(
        &mut self,
        failure: AttemptFailure,
        error: ApiError,
        ticket: &Ticket,
    ) -> Result<Started, ApiError> {
        self.next(failure, error, ticket).await?;
        self.open(ticket).await
    }

    /// The current model's content started: no fallback from here, and the request is no longer
    /// needed.
    pub fn commit(&mut self) {
        self.request = None;
    }

    /// Records how the current model's reply failed after its content started (no fallback
    /// then, but the log says how it ended).
    pub fn failed_after_content(&mut self, failure: AttemptFailure) {
        if self.failures.len() == self.current {
            self.failures.push(failure);
        }
    }

    /// Records the current model's failure and moves to the next one the budget covers; the
    /// failure's `error` when there is none (or no time left).
    async fn next(
        &mut self,
        failure: AttemptFailure,
        error: ApiError,
        ticket: &Ticket,
    ) -> Result<(), ApiError> {
        self.failures.push(failure);
        let Some(next) = self.chain.get(self.current + 1) else {
            return Err(error);
        };
        if !failure.allows_fallback() || Instant::now() >= self.deadline {
            return Err(error);
        }
        if !ticket.reprice(next.price).await {
            tracing::info!(
                from = %self.chain[self.current].model,
                to = %next.model,
                "fallback skipped: the user's budget does not cover it"
            );
            return Err(error);
        }
        tracing::info!(
            from = %self.chain[self.current].model,
            to = %next.model,
            failure = %failure,
            "falling back to the next model"
        );
        self.current += 1;
        Ok(())
    }

    async fn send_current(&self) -> Result<Started, SendFailure> {
        let placement = &self.chain[self.current];
        let client = &self.upstreams.clients[placement.provider];
        let settings = &self.upstreams.settings[placement.provider];
        let health = &self.upstreams.health[placement.provider];
        let body = self
            .body(placement, client.format())
            .map_err(|error| SendFailure {
                error,
                failure: AttemptFailure::Untranslatable,
            })?;
        let sent_at = Instant::now();
        let first_event_by =
            (sent_at + Duration::from_secs(settings.first_byte_timeout_secs)).min(self.deadline);
        // A whole reply's headers come once it is written: only a stream has a first byte to
        // wait for.
        let answer_by = if self.stream {
            first_event_by
        } else {
            self.deadline
        };
        let sent = client
            .send(body, answer_by.saturating_duration_since(sent_at))
            .await;
        // A 4xx refusal (final) still shows a live provider; the rest count against the circuit.
        health.record(
            sent.as_ref()
                .map_or_else(|f| f.error.final_answer, |_| true),
        );
        let response = sent?;
        Ok(Started {
            response,
            format: client.format(),
            price: placement.price,
            counter: TokenCounter::for_model(&placement.upstream_model),
            first_event_by,
            idle_timeout: Duration::from_secs(settings.idle_timeout_secs),
            max_event_bytes: settings.max_event_bytes,
        })
    }

    fn body(&self, placement: &Placement, format: UpstreamFormat) -> Result<Bytes, ApiError> {
        let Some(request) = &self.request else {
            return Err(ApiError::new(
                ErrorCode::Internal,
                "the request was released before its last attempt",
            ));
        };
        let model = &placement.upstream_model;
        match format {
            UpstreamFormat::OpenAi => request.upstream_body(model, self.max_tokens),
            UpstreamFormat::Anthropic => {
                anthropic::request_body(request.body(), model, self.max_tokens, request.stream)
            }
        }
    }

    /// The route as the log records it.
    pub fn route(&self) -> RouteTaken {
        let serving = &self.chain[self.current];
        let attempts = self.chain[..=self.current]
            .iter()
            .enumerate()
            .map(|(i, p)| Attempt {
                model: p.model.clone(),
                failure: self.failures.get(i).copied(),
            })
            .collect();
        RouteTaken {
            requested_model: self.requested_model.clone(),
            model: serving.model.clone(),
            price: serving.price,
            attempts,
        }
    }
}

/// The client's error for a reply that failed before its first content.
pub fn failed_before_content(failure: AttemptFailure) -> ApiError {
    match failure {
        AttemptFailure::Timeout => ApiError::new(
            ErrorCode::UpstreamTimeout,
            "the upstream provider did not start its reply in time",
        ),
        _ => ApiError::new(
            ErrorCode::UpstreamFailed,
            "the upstream provider failed before its reply started",
        ),
    }
}
