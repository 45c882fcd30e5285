//! `POST /v1/chat/completions`: authenticate → check input → admit → relay → settle → log.

use super::errors::{add_rate_limit_headers, error_response};
use super::request_id::request_id;
use super::server::AppState;
use crate::accounting::{Outcome, Usage, UsageSource};
use crate::auth::{authorize_feature, authorize_model};
use crate::error::{ApiError, ErrorCode};
use crate::policy::guard::OutputPlan;
use crate::policy::ChatRequest;
use crate::pricing::Price;
use crate::relay::complete::{complete, CompleteJob};
use crate::relay::guard::OutputGuard;
use crate::relay::stream::{self, StreamJob};
use crate::relay::{Finished, StreamEnd, UpstreamClient};
use crate::telemetry::{Metrics, RequestLog};
use crate::tokenize::TokenCounter;
use crate::users::{AdmitRequest, UserLimits};
use actix_web::http::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_LENGTH};
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::BytesMut;
use futures::StreamExt;
use std::time::Duration;
use tokio::time::Instant;

/// The feature used when a request names none.
const DEFAULT_FEATURE: &str = "chat_support";
/// The status logged for a client that left before its answer was complete (nginx's 499).
const CLIENT_CLOSED_REQUEST: u16 = 499;
/// Longest header value copied into the request log.
const MAX_LOGGED_HEADER_CHARS: usize = 128;

pub(super) async fn chat_completions(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    upstream: web::Data<UpstreamClient>,
) -> HttpResponse {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(state.config.limits.deadline_secs);
    let mut log = RequestLog::new(state.log_sink.clone(), request_id(&req), started.into_std())
        .with_metrics(state.metrics.clone());
    log.feature = header_text(&req, "x-tollgate-feature").unwrap_or_else(|| DEFAULT_FEATURE.into());
    log.session_id = header_text(&req, "x-session-id");

    let Checked {
        request,
        output,
        counter,
        price,
        wanted,
    } = match check_request(&req, payload, &state, &mut log).await {
        Ok(checked) => checked,
        Err(e) => return reject(log, &e),
    };
    let admitted = state
        .users
        .admit(
            &log.user_id,
            AdmitRequest {
                request_id: log.request_id.clone(),
                estimated_input_tokens: log.input_tokens_estimated,
                max_tokens: wanted,
                choices: request.choices(),
                stream: request.stream,
                price,
                limits: UserLimits::for_plan(&state.config, &log.plan),
            },
        )
        .await;
    let ticket = match admitted {
        Ok(ticket) => ticket,
        Err(e) => return reject(log, &e),
    };
    let granted = ticket.max_tokens();
    let rate_limits = ticket.rate_limits();
    let body = match request.upstream_body(granted) {
        Ok(body) => body,
        Err(e) => {
            ticket.settle(Usage::default(), Outcome::Rejected).await;
            return reject(log, &e);
        }
    };
    let wait = deadline.saturating_duration_since(Instant::now());
    let sent = upstream.send(body, wait).await;
    // A 4xx refusal (final) still shows a live provider; the rest count against the circuit.
    state
        .upstream_health
        .record(sent.as_ref().map_or_else(|e| e.final_answer, |_| true));
    let response = match sent {
        Ok(response) => response,
        Err(e) => {
            // Refused or unreachable before any output: nothing is billed.
            let outcome = if e.code == ErrorCode::UpstreamTimeout {
                Outcome::CutDeadline
            } else {
                Outcome::UpstreamError
            };
            ticket.settle(Usage::default(), outcome).await;
            log.finish(
                outcome,
                e.code.status(),
                Usage::default(),
                UsageSource::Counted,
                None,
                Some(e.code.as_str()),
            );
            return error_response(&e.rate_limits(rate_limits));
        }
    };
    let choices = request_choices(&request);
    let max_output_tokens = u64::from(granted) * choices;
    let estimated_input_tokens = log.input_tokens_estimated;
    let limits = &state.config;

    if request.stream {
        let (opened, body) = stream::start(StreamJob {
            upstream: response,
            ticket,
            counter,
            max_output_tokens,
            client_wants_usage: request.client_wants_usage,
            estimated_input_tokens,
            started,
            deadline,
            idle_timeout: Duration::from_secs(limits.upstream.idle_timeout_secs),
            max_event_bytes: limits.upstream.max_event_bytes,
            meter_batch_tokens: limits.relay.meter_batch_tokens.into(),
            meter_batch_max_tokens: limits.relay.meter_batch_max_tokens.into(),
            buffer_events: limits.relay.client_buffer_events,
            guard: output_guard(&output),
            on_finish: {
                // Dropped with the closure: when the stream ends, however it ends.
                let open = OpenStream::new(&state.metrics);
                Box::new(move |finished: Finished| {
                    log_stream_end(log, finished);
                    drop(open);
                })
            },
        });
        return match opened.await {
            Ok(Ok(())) => {
                let mut response = HttpResponse::Ok();
                response
                    .content_type("text/event-stream")
                    .insert_header(("cache-control", "no-cache"))
                    .insert_header(("x-accel-buffering", "no"))
                    .insert_header(("x-tollgate-max-tokens", granted.to_string()));
                add_rate_limit_headers(&mut response, &rate_limits);
                response.streaming(body)
            }
            Ok(Err(end)) => error_response(&end.pre_stream_error().rate_limits(rate_limits)),
            Err(_) => error_response(&ApiError::new(
                ErrorCode::Internal,
                "the relay stopped unexpectedly",
            )),
        };
    }

    let result = complete(CompleteJob {
        upstream: response,
        counter,
        max_output_tokens,
        estimated_input_tokens,
        started,
        deadline,
        max_body_bytes: limits.upstream.max_event_bytes,
        guard: output_guard(&output),
    })
    .await;
    match result {
        Ok((body, finished)) => {
            ticket.settle(finished.usage, finished.end.outcome()).await;
            if let Some(rule) = &finished.blocked_by {
                log.guardrail = Some(format!("output_blocked:{rule}"));
            }
            log.finish(
                finished.end.outcome(),
                200,
                finished.usage,
                finished.usage_source,
                finished.ttft,
                None,
            );
            let mut response = HttpResponse::Ok();
            response
                .content_type("application/json")
                .insert_header(("x-tollgate-max-tokens", granted.to_string()));
            add_rate_limit_headers(&mut response, &rate_limits);
            response.body(body)
        }
        Err((error, finished)) => {
            ticket.settle(finished.usage, finished.end.outcome()).await;
            log.finish(
                finished.end.outcome(),
                error.code.status(),
                finished.usage,
                finished.usage_source,
                None,
                Some(error.code.as_str()),
            );
            error_response(&error.rate_limits(rate_limits))
        }
    }
}

/// The reply's scanners, cloned from the rules compiled at start-up.
fn output_guard(plan: &Option<OutputPlan>) -> Option<OutputGuard> {
    plan.as_ref()
        .map(|plan| OutputGuard::from_template(plan.template.clone()))
}

/// Counts a stream in `tollgate_active_streams` while it lives.
struct OpenStream(Metrics);

impl OpenStream {
    fn new(metrics: &Metrics) -> Self {
        metrics.stream_opened();
        Self(metrics.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.stream_closed();
    }
}

/// Logs a finished stream: an error status if it ended before the client got a stream.
fn log_stream_end(mut log: RequestLog, finished: Finished) {
    if let Some(rule) = &finished.blocked_by {
        log.guardrail = Some(format!("output_blocked:{rule}"));
    }
    let (status, error_code) = if finished.end == StreamEnd::ClientGone {
        (CLIENT_CLOSED_REQUEST, None)
    } else if finished.committed {
        let code = finished
            .end
            .is_error()
            .then(|| finished.end.client_error().2);
        (200, code)
    } else {
        let error = finished.end.pre_stream_error();
        (error.code.status(), Some(error.code.as_str()))
    };
    log.finish(
        finished.end.outcome(),
        status,
        finished.usage,
        finished.usage_source,
        finished.ttft,
        error_code,
    );
}

/// A request that passed every check before admission.
struct Checked {
    request: ChatRequest,
    /// The reply's output guardrails.
    output: Option<OutputPlan>,
    counter: TokenCounter,
    price: Price,
    /// The output cap asked for, clamped to the plan's.
    wanted: u32,
}

/// Identity, authorization and input policy, in that order, all before the upstream. Fills
/// the log with who is asking for what.
async fn check_request(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    log: &mut RequestLog,
) -> Result<Checked, ApiError> {
    let config = &state.config;
    let authorization = req.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
    let identity = state.auth.authenticate(authorization)?;
    log.user_id = identity.user_id.clone();
    log.plan = identity.plan.clone();
    log.plan_known = config.plans.contains_key(&identity.plan);
    let plan = authorize_feature(&config.plans, &identity, &log.feature)?;
    if req.headers().contains_key(CONTENT_ENCODING) {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "compressed request bodies are not accepted",
        ));
    }
    let body = read_body(req, payload, config.limits.max_body_bytes).await?;
    let mut request = ChatRequest::parse(&body)?;
    log.model = request
        .model
        .chars()
        .take(MAX_LOGGED_HEADER_CHARS)
        .collect();
    log.stream = request.stream;
    log.prompt_hash = state.hasher.hash(&request.last_user_text());
    let price = state.prices.price(&request.model).ok_or_else(|| {
        ApiError::new(
            ErrorCode::UnknownModel,
            "this model is not in the gateway's price table",
        )
    })?;
    log.price = Some(price);
    authorize_model(&identity.plan, plan, &request.model)?;
    let counter = TokenCounter::for_model(&request.model);
    let (estimate, _trimmed) = request.enforce(&config.limits, &counter)?;
    log.input_tokens_estimated = estimate;
    let verdict = state.guardrails.check_input(&request, &log.feature)?;
    if !verdict.flagged.is_empty() {
        log.guardrail = Some(format!("input_flagged:{}", verdict.flagged.join(",")));
    }
    let output = state.guardrails.output_plan();
    if let Some(canary) = output.as_ref().and_then(|o| o.canary_message.as_deref()) {
        request.prepend_system_message(canary);
    }
    let plan_cap = plan
        .max_output_tokens
        .unwrap_or(config.limits.max_output_tokens);
    let wanted = request
        .requested_max_tokens
        .unwrap_or(config.limits.default_max_tokens)
        .min(plan_cap);
    Ok(Checked {
        request,
        output,
        counter,
        price,
        wanted,
    })
}

/// Reads the body, refusing (without reading on) once it exceeds `limit` bytes.
async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<BytesMut, ApiError> {
    let too_large = || {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("the request body exceeds {limit} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(4096).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| {
            ApiError::new(ErrorCode::InvalidJson, "the request body could not be read")
        })?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `n` choices multiply the output the request may produce (validated: 1 ..= 8).
fn request_choices(request: &ChatRequest) -> u64 {
    request.choices().max(1)
}

fn header_text(req: &HttpRequest, name: &str) -> Option<String> {
    let value = req.headers().get(name)?.to_str().ok()?.trim();
    (!value.is_empty()).then(|| value.chars().take(MAX_LOGGED_HEADER_CHARS).collect())
}

fn reject(log: RequestLog, error: &ApiError) -> HttpResponse {
    log.reject(error.code.status(), error.code.as_str());
    error_response(error)
}
