//! `POST /v1/chat/completions`, read top to bottom as the pipeline:
//! authenticate → read → check → screen → admit → send → relay → finish.
//!
//! Each stage returns a value (or the error that ends the request); the request's log record is
//! filled from those values. The [`Exchange`] owns the request's end: refusals, the relay's
//! summary and a dropped handler all end there, settled and logged once.

use super::callers;
use super::errors::{add_rate_limit_headers, error_response};
use super::request_id::request_id;
use super::state::AppState;
use super::worker_clients::upstreams_for;
use crate::accounting::RateLimitHeaders;
use crate::auth::{authorize_feature, authorize_model, authorize_parameters, Identity};
use crate::catalog::Placement;
use crate::config::{LimitsConfig, PlanConfig};
use crate::error::{ApiError, ErrorCode};
use crate::exchange::{upstream_refused, Admitted, Exchange};
use crate::policy::guardrails::OutputPlan;
use crate::policy::ChatRequest;
use crate::pricing::Price;
use crate::relay::complete::{complete, CompleteJob};
use crate::relay::output_filter::OutputFilter;
use crate::relay::stream::{self, StreamJob};
use crate::relay::{Answer, Attempts, Started};
use crate::reload::Live;
use crate::telemetry::{Asked, Caller, RequestLog};
use crate::tokenize::TokenCounter;
use crate::users::{AdmitRequest, Batch, UserLimits};
use actix_web::http::header::{CONTENT_ENCODING, CONTENT_LENGTH};
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::BytesMut;
use futures::StreamExt;
use std::borrow::Cow;
use std::rc::Rc;
use std::time::Duration;
use tokio::time::Instant;

/// The feature used when a request names none.
const DEFAULT_FEATURE: &str = "chat_support";
/// Longest header value copied into the request log.
const MAX_LOGGED_HEADER_CHARS: usize = 128;

pub(super) async fn chat_completions(
    req: HttpRequest,
    payload: web::Payload,
    live: web::Data<Live>,
) -> HttpResponse {
    let started = Instant::now();
    // This request's config generation, to its end (a reload does not change it).
    let state = live.current();
    let deadline = started + Duration::from_secs(state.config.limits.deadline_secs);
    let mut exchange = Exchange::new(request_log(&req, &state, started));

    let (identity, plan) = match authenticate(&req, &state, &mut exchange) {
        Ok(who) => who,
        Err(e) => return refuse(exchange, &e),
    };
    let mut request = match read(&req, payload, &state, deadline).await {
        Ok(request) => request,
        Err(e) => return refuse(exchange, &e),
    };
    exchange.log().asked(Asked {
        model: request
            .model
            .chars()
            .take(MAX_LOGGED_HEADER_CHARS)
            .collect(),
        stream: request.stream,
        prompt_hash: state.hasher.hash(&request.last_user_text()),
    });
    let mut checked = match check(&mut request, &identity, plan, &state) {
        Ok(checked) => checked,
        Err(e) => return refuse(exchange, &e),
    };
    exchange
        .log()
        .estimated(checked.price, checked.estimated_input_tokens);
    let output = match screen(&mut request, &state, &mut exchange) {
        Ok(output) => output,
        Err(e) => return refuse(exchange, &e),
    };
    // The canary goes upstream as input too: it is admitted and estimated with the rest.
    if let Some(output) = output.as_ref().filter(|o| o.canary_message.is_some()) {
        let counter = TokenCounter::for_model(&request.model);
        checked.estimated_input_tokens += output.canary_tokens(&counter);
        exchange
            .log()
            .estimated(checked.price, checked.estimated_input_tokens);
    }
    let exchange = match admit(&state, &identity, &request, &checked, exchange).await {
        Ok(admitted) => admitted,
        Err((exchange, e)) => return refuse(exchange, &e),
    };
    let request = Rc::new(request);
    let attempts = Attempts::new(
        checked.chain.clone(),
        request.clone(),
        upstreams_for(&state),
        exchange.ticket().max_tokens(),
        deadline,
    );
    let (exchange, started_reply, attempts) = match send(exchange, attempts).await {
        Ok(sent) => sent,
        Err(answered) => return answered,
    };
    let reply = Reply {
        granted: exchange.ticket().max_tokens(),
        rate_limits: exchange.ticket().rate_limits(),
        max_output_tokens: u64::from(exchange.ticket().max_tokens()) * request.choices().max(1),
        filter: output
            .as_ref()
            .map(|plan| OutputFilter::from_template(plan.template.clone())),
        checked,
        started,
        deadline,
    };
    if request.stream {
        relay_streamed(exchange, started_reply, attempts, reply, &request, &state).await
    } else {
        relay_whole(exchange, started_reply, attempts, reply).await
    }
}

/// The request's log record, from what its headers say.
fn request_log(req: &HttpRequest, state: &AppState, started: Instant) -> RequestLog {
    let feature = header_text(req, "x-tollgate-feature").unwrap_or_else(|| DEFAULT_FEATURE.into());
    RequestLog::new(
        state.log_sink.clone(),
        request_id(req),
        feature,
        header_text(req, "x-session-id"),
        started.into_std(),
    )
    .with_metrics(state.metrics.clone())
}

/// Asks the user's actor to admit (reserve for) the request.
async fn admit(
    state: &AppState,
    identity: &Identity,
    request: &ChatRequest,
    checked: &Checked,
    mut exchange: Exchange,
) -> Result<Admitted, (Exchange, ApiError)> {
    let admitted = state
        .users
        .admit(
            &identity.user_id,
            AdmitRequest {
                request_id: exchange.log().request_id().to_string(),
                estimated_input_tokens: checked.estimated_input_tokens,
                max_tokens: checked.wanted_max_tokens,
                choices: request.choices(),
                stream: request.stream,
                price: checked.price,
                limits: UserLimits::for_plan(&state.config, &identity.plan),
                batch: Batch {
                    min: state.config.relay.meter_batch_tokens.into(),
                    max: state.config.relay.meter_batch_max_tokens.into(),
                },
            },
        )
        .await;
    match admitted {
        Ok(ticket) => Ok(exchange.admitted(ticket)),
        Err(e) => Err((exchange, e)),
    }
}

/// Sends the request upstream under the granted cap, down its fallback chain while attempts
/// fail before replying. A request no provider answers ends here (unbilled) with the error
/// answered.
async fn send(
    exchange: Admitted,
    mut attempts: Attempts,
) -> Result<(Admitted, Started, Attempts), HttpResponse> {
    match attempts.open(exchange.ticket()).await {
        Ok(started) => Ok((exchange, started, attempts)),
        Err(e) => {
            let error = e.rate_limits(exchange.ticket().rate_limits());
            exchange
                .finish(upstream_refused(error.clone(), attempts.route()))
                .await;
            Err(error_response(&error))
        }
    }
}

/// What relaying a reply needs beyond the upstream response.
struct Reply {
    checked: Checked,
    granted: u32,
    rate_limits: RateLimitHeaders,
    /// The granted `max_tokens` × `n`.
    max_output_tokens: u64,
    filter: Option<OutputFilter>,
    started: Instant,
    deadline: Instant,
}

/// Streams the reply: the relay task owns the exchange from here and finishes it when the
/// stream ends; the client gets the stream once its first frame is ready (or the error that
/// came first).
async fn relay_streamed(
    exchange: Admitted,
    started_reply: Started,
    attempts: Attempts,
    reply: Reply,
    request: &ChatRequest,
    state: &AppState,
) -> HttpResponse {
    let config = &state.config;
    let (task, opened, body) = stream::prepare(StreamJob {
        reply: started_reply,
        attempts,
        max_output_tokens: reply.max_output_tokens,
        client_wants_usage: request.client_wants_usage,
        estimated_input_tokens: reply.checked.estimated_input_tokens,
        started: reply.started,
        deadline: reply.deadline,
        batch: Batch {
            min: config.relay.meter_batch_tokens.into(),
            max: config.relay.meter_batch_max_tokens.into(),
        },
        buffer_events: config.relay.client_buffer_events,
        client_write_timeout: Duration::from_secs(config.server.client_write_timeout_secs),
        filter: reply.filter,
    });
    exchange.relay_stream(task, &state.metrics);
    match opened.await {
        Ok(Ok(())) => {
            let mut response = HttpResponse::Ok();
            response
                .content_type("text/event-stream")
                .insert_header(("cache-control", "no-cache"))
                .insert_header(("x-accel-buffering", "no"))
                .insert_header(("x-tollgate-max-tokens", reply.granted.to_string()));
            add_rate_limit_headers(&mut response, &reply.rate_limits);
            response.streaming(body)
        }
        Ok(Err(error)) => error_response(&error.rate_limits(reply.rate_limits)),
        Err(_) => error_response(&ApiError::new(
            ErrorCode::Internal,
            "the relay stopped unexpectedly",
        )),
    }
}

/// Reads the whole reply, finishes the request, and answers with the reply (or its error).
async fn relay_whole(
    exchange: Admitted,
    started_reply: Started,
    attempts: Attempts,
    reply: Reply,
) -> HttpResponse {
    let (relayed, body) = complete(
        CompleteJob {
            reply: started_reply,
            attempts,
            max_output_tokens: reply.max_output_tokens,
            estimated_input_tokens: reply.checked.estimated_input_tokens,
            started: reply.started,
            deadline: reply.deadline,
            filter: reply.filter,
        },
        exchange.ticket(),
    )
    .await;
    let answer = relayed.answer.clone();
    exchange.finish(relayed).await;
    match (answer, body) {
        (Answer::Body, Some(body)) => {
            let mut response = HttpResponse::Ok();
            response
                .content_type("application/json")
                .insert_header(("x-tollgate-max-tokens", reply.granted.to_string()));
            add_rate_limit_headers(&mut response, &reply.rate_limits);
            response.body(body)
        }
        (Answer::Error(error), _) => error_response(&error.rate_limits(reply.rate_limits)),
        _ => error_response(&ApiError::new(ErrorCode::Internal, "the reply was lost")),
    }
}

/// Who is asking, and may their plan use the feature they name. The caller goes into the log
/// as soon as it is known (a feature refusal is logged under its user).
fn authenticate<'s>(
    req: &HttpRequest,
    state: &'s AppState,
    exchange: &mut Exchange,
) -> Result<(Identity, &'s PlanConfig), ApiError> {
    let identity = callers::identify(req, state)?;
    exchange.log().caller(Caller {
        user_id: identity.user_id.clone(),
        plan: identity.plan.clone(),
        plan_known: state.config.plans.contains_key(&identity.plan),
        session_id: identity.session_id.clone(),
    });
    let plan = authorize_feature(&state.config.plans, &identity, exchange.log().feature())?;
    Ok((identity, plan))
}

/// Reads and parses the body (bounded in size and time; compressed bodies refused).
async fn read(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    deadline: Instant,
) -> Result<ChatRequest, ApiError> {
    if req.headers().contains_key(CONTENT_ENCODING) {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "compressed request bodies are not accepted",
        ));
    }
    let stall = Duration::from_secs(state.config.server.client_body_timeout_secs);
    let limit = state.config.limits.max_body_bytes;
    let body = read_body(req, payload, limit, stall, deadline).await?;
    ChatRequest::parse(&body)
}

/// A request that passed its checks.
struct Checked {
    price: Price,
    /// The models that may serve it, in order: the one asked for, then the fallbacks the plan
    /// allows.
    chain: Vec<Placement>,
    estimated_input_tokens: u64,
    /// The output cap asked for, clamped to the plan's.
    wanted_max_tokens: u32,
}

/// The model is priced and in the plan; the input fits the limits (history trimmed).
fn check(
    request: &mut ChatRequest,
    identity: &Identity,
    plan: &PlanConfig,
    state: &AppState,
) -> Result<Checked, ApiError> {
    let config = &state.config;
    let chain = state.catalog.chain(&request.model).ok_or_else(|| {
        ApiError::new(
            ErrorCode::UnknownModel,
            "this model is not in the gateway's price table",
        )
    })?;
    authorize_model(&identity.plan, plan, &request.model)?;
    authorize_parameters(&identity.plan, plan, |name| request.sets(name))?;
    let price = chain[0].price;
    // Fallbacks outside the plan are skipped.
    let chain: Vec<Placement> = chain
        .into_iter()
        .enumerate()
        .filter(|(i, p)| *i == 0 || authorize_model(&identity.plan, plan, &p.model).is_ok())
        .map(|(_, p)| p)
        .collect();
    let counter = TokenCounter::for_model(&request.model);
    let limits = match identity.max_message_chars {
        Some(max_message_chars) => Cow::Owned(LimitsConfig {
            max_message_chars,
            ..config.limits.clone()
        }),
        None => Cow::Borrowed(&config.limits),
    };
    let (estimated_input_tokens, _trimmed) = request.enforce(&limits, &counter)?;
    let plan_cap = plan
        .max_output_tokens
        .unwrap_or(config.limits.max_output_tokens);
    let wanted_max_tokens = request
        .requested_max_tokens
        .unwrap_or(config.limits.default_max_tokens)
        .min(plan_cap);
    Ok(Checked {
        price,
        chain,
        estimated_input_tokens,
        wanted_max_tokens,
    })
}

/// The guardrails: the input filter (block, or flag into the log), and the reply's output
/// rules (with the canary put first in the request when one is on).
fn screen(
    request: &mut ChatRequest,
    state: &AppState,
    exchange: &mut Exchange,
) -> Result<Option<OutputPlan>, ApiError> {
    let flags = state
        .guardrails
        .check_input(request, exchange.log().feature())?;
    if !flags.flagged.is_empty() {
        exchange.log().input_flagged(flags.flagged);
    }
    let output = state.guardrails.output_plan();
    if let Some(canary) = output.as_ref().and_then(|o| o.canary_message.as_deref()) {
        request.prepend_system_message(canary);
    }
    Ok(output)
}

/// Reads the body, refusing (without reading on) once it exceeds `limit` bytes, and giving up
/// with `408 request_timeout` when no bytes come for `stall` or the request's `deadline` passes.
async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
    stall: Duration,
    deadline: Instant,
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
    loop {
        let wait_until = (Instant::now() + stall).min(deadline);
        let Ok(next) = tokio::time::timeout_at(wait_until, payload.next()).await else {
            return Err(ApiError::new(
                ErrorCode::RequestTimeout,
                "the request body stopped arriving",
            ));
        };
        let Some(chunk) = next else { break };
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

fn header_text(req: &HttpRequest, name: &str) -> Option<String> {
    let value = req.headers().get(name)?.to_str().ok()?.trim();
    (!value.is_empty()).then(|| value.chars().take(MAX_LOGGED_HEADER_CHARS).collect())
}

/// Ends a request refused before admission.
fn refuse(exchange: Exchange, error: &ApiError) -> HttpResponse {
    exchange.refuse(error);
    error_response(error)
}
