//! A fake chat provider speaking OpenAI's Chat Completions and Anthropic's Messages APIs:
//! `tollgate mock-provider`, the in-process upstream when none is configured, and the scriptable
//! upstream of the integration tests.
//!
//! [`serve`] takes a bound listener and returns an unstarted actix [`Server`] with
//! `POST /chat/completions`, `POST /v1/chat/completions` (OpenAI), `POST /v1/messages`
//! (Anthropic) and `GET /healthz`; [`MockOptions::formats`] picks the families served (the other
//! family's routes answer 404 in that family's error shape). Replies are deterministic
//! ([`generated_text`]: every word is one token in `o200k_base` and `cl100k_base`; a tool call
//! carries [`TOOL_ARGUMENTS`]), paced, framed and faulted by [`MockOptions`], overridable per
//! request by `x-mock-*` headers or a model-name suffix (syntax in `knobs.rs`). Every request and
//! how its reply ended lands in the instance's [`MockRecorder`] (the last
//! [`DEFAULT_KEPT_REQUESTS`] of them within [`KEPT_BODY_BYTES`] of bodies, unless
//! [`MockOptions::keep_requests`] says otherwise). The mock stands alone: it uses
//! nothing else in the crate, and nothing else should reach into its submodules beyond what is
//! re-exported here.

mod anthropic;
mod knobs;
mod recorder;
mod stream;
mod words;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use std::{fmt, io};

use actix_web::dev::Server;
use actix_web::http::{header, StatusCode};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde::Deserialize;
use serde_json::Value;

pub use knobs::{Fault, Framing, KnobError, MockFormats, MockOptions, DEFAULT_KEPT_REQUESTS};
pub use recorder::{MockRecorder, RecordedRequest, StreamEnd, KEPT_BODY_BYTES};
pub use words::{generated_text, token_text, TOOL_ARGUMENTS, TOOL_ARGUMENT_FRAGMENTS, WORDS};

use knobs::Api;
use recorder::EndRecorder;
use stream::{abrupt_close_error, error_body, token_interval, Interruption, Reply, ToolCall};

/// Model names the mock advertises; any model name is accepted.
pub const MOCK_MODELS: &[&str] = &["mock-gpt", "mock-gpt-mini"];

/// Largest request body the mock reads; larger bodies get actix's own 413.
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// A mock provider ready to run: spawn or await `server`, stop it with `server.handle()`.
pub struct MockServer {
    pub addr: SocketAddr,
    pub server: Server,
    pub recorder: Arc<MockRecorder>,
}

impl fmt::Debug for MockServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Builds the mock provider on `listener` (bind port 0 in tests). Must be called inside an
/// actix/tokio runtime; returns without running the server: the caller spawns or awaits it.
pub fn serve(listener: TcpListener, options: MockOptions) -> io::Result<MockServer> {
    let addr = listener.local_addr()?;
    let recorder = Arc::new(MockRecorder::keeping(options.keep_requests));
    let state = web::Data::new(MockState {
        options,
        recorder: Arc::clone(&recorder),
    });
    warm_tokenizer();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(web::PayloadConfig::new(MAX_BODY_BYTES))
            .route("/chat/completions", web::post().to(chat_completions))
            .route("/v1/chat/completions", web::post().to(chat_completions))
            .route("/v1/messages", web::post().to(messages))
            .route("/healthz", web::get().to(healthz))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .h1_allow_half_closed(false)
    .tcp_nodelay(true)
    .listen(crate::http::listener::deepen(listener)?)?
    .run();
    Ok(MockServer {
        addr,
        server,
        recorder,
    })
}

/// Builds the o200k tokenizer off the request path (about 0.4 s in debug builds).
fn warm_tokenizer() {
    let spawned = std::thread::Builder::new()
        .name("mock-tokenizer".to_owned())
        .spawn(|| {
            crate::tokenize::TokenCounter::o200k_estimate();
        });
    if let Err(err) = spawned {
        tracing::debug!(%err, "mock: tokenizer warm-up thread not started");
    }
}

struct MockState {
    options: MockOptions,
    recorder: Arc<MockRecorder>,
}

/// The fields of a chat request the mock looks at.
#[derive(Debug, Deserialize)]
struct ChatRequest {
    model: String,
    messages: Vec<Value>,
    stream: Option<bool>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    stream_options: Option<StreamOptions>,
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok")
}

async fn chat_completions(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<MockState>,
) -> HttpResponse {
    answer(Api::OpenAi, &req, &body, &state).await
}

async fn messages(req: HttpRequest, body: web::Bytes, state: web::Data<MockState>) -> HttpResponse {
    answer(Api::Anthropic, &req, &body, &state).await
}

/// Records the request, then answers it in `api`'s shapes.
async fn answer(api: Api, req: &HttpRequest, body: &[u8], state: &MockState) -> HttpResponse {
    let headers = header_pairs(req);
    let parsed = serde_json::from_slice::<Value>(body);
    let recorded = match &parsed {
        Ok(value) => value.clone(),
        Err(_) => Value::String(String::from_utf8_lossy(body).into_owned()),
    };
    let mut guard =
        state
            .recorder
            .start_from(req.peer_addr(), headers.clone(), recorded, body.len());
    let prepared = match api {
        _ if !state.options.formats.serves(api) => Err(Early::NotServed),
        Api::OpenAi => prepare(&state.options, &headers, parsed),
        Api::Anthropic => prepare_messages(&state.options, &headers, parsed),
    };
    match prepared {
        Ok(reply) if reply.stream => stream_response(reply, guard),
        Ok(reply) => whole_response(reply, guard).await,
        Err(early) => {
            guard.complete();
            early.respond(api)
        }
    }
}

fn header_pairs(req: &HttpRequest) -> Vec<(String, String)> {
    req.headers()
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_ascii_lowercase(), value)
        })
        .collect()
}

/// Why a request is answered at once, without a reply.
#[derive(Debug)]
enum Early {
    /// The body is not JSON.
    InvalidJson(String),
    /// The body is JSON but not a chat completion request.
    InvalidRequest(String),
    /// An `x-mock-*` header or model-suffix knob has a bad value.
    InvalidKnob(KnobError),
    /// A `status@CODE` fault.
    StatusFault(u16),
    /// The route's API family is not served by this instance.
    NotServed,
}

impl Early {
    /// The answer in `api`'s shapes.
    fn respond(self, api: Api) -> HttpResponse {
        match api {
            Api::OpenAi => self.response(),
            Api::Anthropic => self.anthropic_response(),
        }
    }

    /// The answer in Anthropic's shapes: `{"type":"error","error":{"type","message"}}`.
    fn anthropic_response(self) -> HttpResponse {
        let invalid = |message: &str| {
            let body = anthropic::error_body("invalid_request_error", message);
            json_response(StatusCode::BAD_REQUEST, &body)
        };
        match self {
            Self::InvalidJson(message) | Self::InvalidRequest(message) => invalid(&message),
            Self::InvalidKnob(err) => invalid(&err.to_string()),
            Self::StatusFault(code) => anthropic_status_fault(code),
            Self::NotServed => {
                let message = "this mock provider does not serve the Anthropic API (--format)";
                let body = anthropic::error_body("not_found_error", message);
                json_response(StatusCode::NOT_FOUND, &body)
            }
        }
    }

    /// The answer in OpenAI's shapes.
    fn response(self) -> HttpResponse {
        match self {
            Self::InvalidJson(message) => bad_request(&message, "invalid_json", None),
            Self::InvalidRequest(message) => bad_request(&message, "invalid_request", None),
            Self::InvalidKnob(err) => {
                bad_request(&err.to_string(), "invalid_mock_knob", Some(err.knob))
            }
            Self::StatusFault(code) => status_fault(code),
            Self::NotServed => {
                let message = "this mock provider does not serve the OpenAI API (--format)";
                let body = error_body(message, "invalid_request_error", "unknown_url");
                json_response(StatusCode::NOT_FOUND, &body)
            }
        }
    }
}

/// Decides the reply, or why the request is answered at once.
fn prepare(
    options: &MockOptions,
    headers: &[(String, String)],
    parsed: Result<Value, serde_json::Error>,
) -> Result<Reply, Early> {
    let body = parsed
        .map_err(|err| Early::InvalidJson(format!("request body is not valid JSON: {err}")))?;
    let request = serde_json::from_value::<ChatRequest>(body).map_err(|err| {
        Early::InvalidRequest(format!(
            "request body is not a chat completion request: {err}"
        ))
    })?;
    let options = knobs::resolve(options, &request.model, headers).map_err(Early::InvalidKnob)?;
    let fault = split_fault(options.fault)?;
    tracing::debug!(model = %request.model, ?options, "mock: chat completion");
    Ok(plan(&request, &options, fault))
}

/// Decides an Anthropic reply, or why the request is answered at once: the `anthropic-version`
/// header, then the body, then the knobs.
fn prepare_messages(
    options: &MockOptions,
    headers: &[(String, String)],
    parsed: Result<Value, serde_json::Error>,
) -> Result<Reply, Early> {
    if !headers
        .iter()
        .any(|(name, _)| name == anthropic::VERSION_HEADER)
    {
        let message = format!("{}: header is required", anthropic::VERSION_HEADER);
        return Err(Early::InvalidRequest(message));
    }
    let body = parsed
        .map_err(|err| Early::InvalidJson(format!("request body is not valid JSON: {err}")))?;
    let request = anthropic::parse_request(&body).map_err(Early::InvalidRequest)?;
    let options = knobs::resolve(options, &request.model, headers).map_err(Early::InvalidKnob)?;
    let fault = split_fault(options.fault)?;
    tracing::debug!(model = %request.model, ?options, "mock: message");
    Ok(plan_message(&request, &options, fault))
}

/// The mid-reply part of a fault; a status fault ends the request at once.
fn split_fault(fault: Option<Fault>) -> Result<Option<(Interruption, u32)>, Early> {
    Ok(match fault {
        None => None,
        Some(Fault::ErrorEvent { after_tokens }) => Some((Interruption::ErrorEvent, after_tokens)),
        Some(Fault::AbruptClose { after_tokens }) => {
            Some((Interruption::AbruptClose, after_tokens))
        }
        Some(Fault::Stall { after_tokens }) => Some((Interruption::Stall, after_tokens)),
        Some(Fault::Status(code)) => return Err(Early::StatusFault(code)),
    })
}

fn plan(request: &ChatRequest, options: &MockOptions, fault: Option<(Interruption, u32)>) -> Reply {
    let limit = match (request.max_tokens, request.max_completion_tokens) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let include_usage = request
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage);
    let mut reply = base_reply(Api::OpenAi, limit, options, fault);
    reply.id = format!("chatcmpl-mock-{}", uuid::Uuid::new_v4());
    reply.model.clone_from(&request.model);
    reply.stream = request.stream.unwrap_or(false);
    reply.include_usage = include_usage.unwrap_or(false);
    reply.prompt_tokens = prompt_tokens(&request.messages);
    reply
}

fn plan_message(
    request: &anthropic::MessagesRequest,
    options: &MockOptions,
    fault: Option<(Interruption, u32)>,
) -> Reply {
    let mut reply = base_reply(Api::Anthropic, Some(request.max_tokens), options, fault);
    reply.id = format!("msg_mock_{}", uuid::Uuid::new_v4().simple());
    reply.model.clone_from(&request.model);
    reply.stream = request.stream;
    reply.prompt_tokens = request.input_tokens;
    reply
}

/// What both APIs decide alike: the text tokens (`options.tokens`, capped by `limit` unless
/// `ignore_max_tokens`), the tool call (sent only when the text was not cut and its argument
/// tokens fit in what `limit` leaves), the ending, pace, framing and fault. The request's own
/// fields (id, model, stream, prompt) are left empty for the caller.
fn base_reply(
    api: Api,
    limit: Option<u32>,
    options: &MockOptions,
    fault: Option<(Interruption, u32)>,
) -> Reply {
    let limit = limit.filter(|_| !options.ignore_max_tokens);
    let tokens = limit.map_or(options.tokens, |limit| options.tokens.min(limit));
    let tool = options
        .tool
        .as_deref()
        .filter(|_| tokens == options.tokens)
        .map(|name| tool_call(api, name))
        .filter(|tool| {
            limit.is_none_or(|limit| tokens.saturating_add(tool.argument_tokens) <= limit)
        });
    let cut = tokens < options.tokens || (options.tool.is_some() && tool.is_none());
    let (finish_reason, stop_reason) = match (cut, &tool) {
        (true, _) => ("length", "max_tokens"),
        (false, Some(_)) => ("tool_calls", "tool_use"),
        (false, None) => ("stop", "end_turn"),
    };
    Reply {
        api,
        id: String::new(),
        created: unix_seconds(),
        model: String::new(),
        stream: false,
        include_usage: false,
        tokens,
        finish_reason,
        stop_reason,
        prompt_tokens: 0,
        first_token_delay: std::time::Duration::from_millis(options.first_token_delay_ms),
        token_interval: token_interval(options.tokens_per_second),
        interruption: fault.map(|(kind, after)| (kind, after.min(tokens))),
        tool,
        framing: options.framing,
    }
}

/// A call of tool `name` in `api`'s id style, with the fixed arguments.
fn tool_call(api: Api, name: &str) -> ToolCall {
    let prefix = match api {
        Api::OpenAi => "call_mock_",
        Api::Anthropic => "toolu_mock_",
    };
    let tokens = crate::tokenize::TokenCounter::o200k_estimate().count(TOOL_ARGUMENTS);
    ToolCall {
        id: format!("{prefix}{}", uuid::Uuid::new_v4().simple()),
        name: name.to_owned(),
        argument_tokens: u32::try_from(tokens).unwrap_or(u32::MAX),
    }
}

/// Prompt estimate: o200k tokens of each message's string content, plus 3 per message, plus 3.
fn prompt_tokens(messages: &[Value]) -> u32 {
    let bpe = crate::tokenize::TokenCounter::o200k_estimate();
    let content: usize = messages
        .iter()
        .filter_map(|message| message.get("content").and_then(Value::as_str))
        .map(|text| bpe.count(text) as usize)
        .sum();
    let total = content.saturating_add(3 * messages.len()).saturating_add(3);
    u32::try_from(total).unwrap_or(u32::MAX)
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

fn stream_response(reply: Reply, guard: EndRecorder) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("x-accel-buffering", "no"))
        .streaming(reply.sse_stream(guard))
}

/// The non-streamed answer; the guard lives in this future, so a client that leaves during the
/// delay or a stall records `Dropped`.
async fn whole_response(reply: Reply, mut guard: EndRecorder) -> HttpResponse {
    if !reply.first_token_delay.is_zero() {
        tokio::time::sleep(reply.first_token_delay).await;
    }
    let response = match (reply.interruption, reply.api) {
        (None, api) => {
            guard.set_tokens_sent(reply.output_tokens());
            let body = match api {
                Api::OpenAi => reply.completion(),
                Api::Anthropic => reply.message(),
            };
            json_response(StatusCode::OK, &body)
        }
        (Some((Interruption::ErrorEvent, _)), Api::OpenAi) => {
            json_response(StatusCode::INTERNAL_SERVER_ERROR, &reply.fault_error())
        }
        (Some((Interruption::ErrorEvent, _)), Api::Anthropic) => {
            json_response(overloaded_status(), &anthropic::overloaded())
        }
        (Some((Interruption::AbruptClose, _)), _) => aborted_response(),
        (Some((Interruption::Stall, _)), _) => std::future::pending().await,
    };
    guard.complete();
    response
}

/// A 200 whose body fails at once, so actix aborts the connection.
fn aborted_response() -> HttpResponse {
    let body = futures::stream::once(async { Err::<web::Bytes, _>(abrupt_close_error(0)) });
    HttpResponse::Ok()
        .content_type("application/json")
        .streaming(body)
}

fn json_response(status: StatusCode, body: &Value) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("application/json")
        .body(body.to_string())
}

/// Anthropic's 529 "overloaded" status.
fn overloaded_status() -> StatusCode {
    StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
}

/// A 400 with an `invalid_request_error` body; `param` names the offending knob, if any.
fn bad_request(message: &str, code: &str, param: Option<String>) -> HttpResponse {
    let mut body = error_body(message, "invalid_request_error", code);
    if let Some(param) = param {
        body["error"]["param"] = Value::String(param);
    }
    json_response(StatusCode::BAD_REQUEST, &body)
}

/// The answer to a `status@CODE` fault; codes outside 400..=599 are answered as 500.
fn status_fault(code: u16) -> HttpResponse {
    let status = fault_status(code);
    let message = format!("mock fault: status {}", status.as_u16());
    let (kind, code) = match status {
        StatusCode::TOO_MANY_REQUESTS => ("requests", "rate_limit_exceeded"),
        s if s.is_server_error() => ("server_error", "mock_fault"),
        _ => ("invalid_request_error", "mock_fault"),
    };
    with_retry_after(json_response(status, &error_body(&message, kind, code)))
}

/// The Anthropic answer to a `status@CODE` fault: the error type the API uses for that status
/// (`anthropic::error_type`).
fn anthropic_status_fault(code: u16) -> HttpResponse {
    let status = fault_status(code);
    let message = format!("mock fault: status {}", status.as_u16());
    let kind = anthropic::error_type(status.as_u16());
    with_retry_after(json_response(
        status,
        &anthropic::error_body(kind, &message),
    ))
}

/// The status of a `status@CODE` fault: `code` (529 included), or 500 outside 400..=599.
fn fault_status(code: u16) -> StatusCode {
    StatusCode::from_u16(code)
        .ok()
        .filter(|s| s.is_client_error() || s.is_server_error())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// A 429 says `retry-after: 1`; other responses are left alone.
fn with_retry_after(mut response: HttpResponse) -> HttpResponse {
    if response.status() == StatusCode::TOO_MANY_REQUESTS {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(body: Value) -> ChatRequest {
        match serde_json::from_value(body) {
            Ok(request) => request,
            Err(err) => panic!("bad test request: {err}"),
        }
    }

    fn chat(extra: Value) -> ChatRequest {
        let mut body =
            json!({"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}]});
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        request(body)
    }

    fn options(tokens: u32, ignore_max_tokens: bool) -> MockOptions {
        MockOptions {
            tokens,
            ignore_max_tokens,
            ..MockOptions::default()
        }
    }

    #[test]
    fn max_tokens_cuts_with_length_unless_ignored() {
        let cut = plan(&chat(json!({"max_tokens": 5})), &options(40, false), None);
        assert_eq!((cut.tokens, cut.finish_reason), (5, "length"));
        let newer = json!({"max_tokens": 9, "max_completion_tokens": 7});
        let both = plan(&chat(newer), &options(40, false), None);
        assert_eq!(both.tokens, 7);
        let ignored = plan(&chat(json!({"max_tokens": 5})), &options(40, true), None);
        assert_eq!((ignored.tokens, ignored.finish_reason), (40, "stop"));
        let roomy = plan(&chat(json!({"max_tokens": 40})), &options(40, false), None);
        assert_eq!((roomy.tokens, roomy.finish_reason), (40, "stop"));
    }

    #[test]
    fn fault_fires_no_later_than_the_last_token() {
        let fault = Some((Interruption::Stall, 99));
        let reply = plan(&chat(json!({"max_tokens": 3})), &options(40, false), fault);
        assert_eq!(reply.interruption, Some((Interruption::Stall, 3)));
    }

    #[test]
    fn stream_flags_default_to_off() {
        let reply = plan(&chat(json!({})), &MockOptions::default(), None);
        assert!(!reply.stream && !reply.include_usage);
        let usage = json!({"stream": true, "stream_options": {"include_usage": true}});
        let reply = plan(&chat(usage), &MockOptions::default(), None);
        assert!(reply.stream && reply.include_usage);
    }

    #[test]
    fn prompt_estimate_counts_string_content_plus_overhead() {
        let messages = [
            json!({"role": "system", "content": " the quick brown fox"}),
            json!({"role": "user", "content": [{"type": "text", "text": "ignored"}]}),
        ];
        assert_eq!(prompt_tokens(&messages), 4 + 3 * 2 + 3);
        assert_eq!(prompt_tokens(&[]), 3);
    }

    #[test]
    fn status_fault_shapes() {
        let limited = status_fault(429);
        assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry = limited.headers().get(header::RETRY_AFTER);
        assert_eq!(retry.and_then(|v| v.to_str().ok()), Some("1"));
        assert_eq!(status_fault(503).status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(status_fault(503)
            .headers()
            .get(header::RETRY_AFTER)
            .is_none());
        assert_eq!(
            status_fault(200).status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn bad_bodies_and_knobs_are_400() {
        let no_json = prepare(&MockOptions::default(), &[], serde_json::from_str("{"));
        assert!(matches!(no_json, Err(Early::InvalidJson(_))));
        let no_model = prepare(&MockOptions::default(), &[], Ok(json!({"messages": []})));
        assert!(matches!(no_model, Err(Early::InvalidRequest(_))));
        let knob = vec![("x-mock-tokens".to_owned(), "many".to_owned())];
        let body = json!({"model": "mock-gpt", "messages": []});
        let bad_knob = prepare(&MockOptions::default(), &knob, Ok(body));
        let Err(Early::InvalidKnob(err)) = bad_knob else {
            panic!("expected a knob error, got {bad_knob:?}");
        };
        assert_eq!(err.knob, "x-mock-tokens");
        let response = Early::InvalidKnob(err).response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let status = json!({"model": "mock-gpt:fault=status@503", "messages": []});
        let early = prepare(&MockOptions::default(), &[], Ok(status));
        assert!(matches!(early, Err(Early::StatusFault(503))));
    }

    fn messages_body(extra: Value) -> Value {
        let mut body = json!({
            "model": "mock-claude",
            "max_tokens": 1024,
            "messages": [{"role": "user", "content": "hi"}],
        });
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        body
    }

    fn versioned() -> Vec<(String, String)> {
        vec![("anthropic-version".to_owned(), "2023-06-01".to_owned())]
    }

    fn message_plan(body: Value, options: &MockOptions) -> Reply {
        match prepare_messages(options, &versioned(), Ok(body)) {
            Ok(reply) => reply,
            Err(early) => panic!("unexpected early answer {early:?}"),
        }
    }

    async fn body_json(response: HttpResponse) -> Value {
        let bytes = actix_web::body::to_bytes(response.into_body()).await;
        bytes
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null)
    }

    #[test]
    fn anthropic_max_tokens_cut_is_max_tokens() {
        let cut = message_plan(messages_body(json!({"max_tokens": 5})), &options(40, false));
        assert_eq!((cut.tokens, cut.stop_reason), (5, "max_tokens"));
        assert_eq!(cut.api, Api::Anthropic);
        assert!(cut.id.starts_with("msg_mock_") && !cut.stream);
        let roomy = message_plan(messages_body(json!({"stream": true})), &options(40, false));
        assert_eq!((roomy.tokens, roomy.stop_reason), (40, "end_turn"));
        assert!(roomy.stream);
        assert_eq!(roomy.model, "mock-claude");
        assert_eq!(roomy.prompt_tokens, 1 + 3 + 3);
        let ignored = message_plan(messages_body(json!({"max_tokens": 5})), &options(40, true));
        assert_eq!((ignored.tokens, ignored.stop_reason), (40, "end_turn"));
    }

    #[test]
    fn tool_knob_ends_with_a_tool_call_that_must_fit() {
        let tool = |max_tokens: u32| {
            let body =
                messages_body(json!({"model": "m:tool=get_weather", "max_tokens": max_tokens}));
            message_plan(body, &options(10, false))
        };
        let fits = tool(1000);
        assert_eq!(fits.stop_reason, "tool_use");
        let call = fits.tool.clone().unwrap_or_else(|| panic!("no tool call"));
        assert!(call.id.starts_with("toolu_mock_"));
        assert_eq!(call.name, "get_weather");
        let arguments = crate::tokenize::TokenCounter::o200k_estimate().count(TOOL_ARGUMENTS);
        assert_eq!(u64::from(call.argument_tokens), arguments);
        assert_eq!(fits.output_tokens(), 10 + call.argument_tokens);
        let tight = tool(10 + call.argument_tokens);
        assert_eq!(tight.stop_reason, "tool_use");
        let short = tool(10 + call.argument_tokens - 1);
        assert_eq!((short.tokens, short.stop_reason), (10, "max_tokens"));
        assert!(short.tool.is_none());
        let cut = tool(4);
        assert_eq!(
            (cut.tokens, cut.stop_reason, cut.tool),
            (4, "max_tokens", None)
        );
        let lookup = MockOptions {
            tool: Some("lookup".to_owned()),
            ..options(3, false)
        };
        let openai = plan(&chat(json!({})), &lookup, None);
        assert_eq!(openai.finish_reason, "tool_calls");
        assert!(openai
            .tool
            .is_some_and(|t| t.id.starts_with("call_mock_") && t.name == "lookup"));
    }

    #[tokio::test]
    async fn missing_anthropic_version_is_400() {
        let early = prepare_messages(&MockOptions::default(), &[], Ok(messages_body(json!({}))));
        let Err(early) = early else {
            panic!("expected an early answer, got {early:?}");
        };
        let response = early.respond(Api::Anthropic);
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body = body_json(response).await;
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert!(body["error"]["message"].is_string());
        let no_tokens = json!({"model": "m", "messages": []});
        let early = prepare_messages(&MockOptions::default(), &versioned(), Ok(no_tokens));
        assert!(matches!(early, Err(Early::InvalidRequest(_))));
        let bad_knob = messages_body(json!({"model": "m:framing=zigzag"}));
        let early = prepare_messages(&MockOptions::default(), &versioned(), Ok(bad_knob));
        let Err(early) = early else {
            panic!("expected a knob error, got {early:?}");
        };
        let body = body_json(early.respond(Api::Anthropic)).await;
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }

    #[tokio::test]
    async fn status_529_on_both_formats() {
        let body = messages_body(json!({"model": "m:fault=status@529"}));
        let early = prepare_messages(&MockOptions::default(), &versioned(), Ok(body));
        let Err(early) = early else {
            panic!("expected a status fault, got {early:?}");
        };
        let response = early.respond(Api::Anthropic);
        assert_eq!(response.status().as_u16(), 529);
        assert_eq!(
            body_json(response).await,
            json!({"type": "error", "error": {"type": "overloaded_error",
                                               "message": "mock fault: status 529"}})
        );
        let limited = anthropic_status_fault(429);
        let retry = limited.headers().get(header::RETRY_AFTER);
        assert_eq!(retry.and_then(|v| v.to_str().ok()), Some("1"));
        assert_eq!(
            body_json(limited).await["error"]["type"],
            "rate_limit_error"
        );
        let openai = status_fault(529);
        assert_eq!(openai.status().as_u16(), 529);
        assert_eq!(body_json(openai).await["error"]["type"], "server_error");
    }

    #[tokio::test]
    async fn a_family_not_served_is_404_in_its_own_shape() {
        let anthropic = Early::NotServed.respond(Api::Anthropic);
        assert_eq!(anthropic.status(), StatusCode::NOT_FOUND);
        let body = body_json(anthropic).await;
        assert_eq!(
            (&body["type"], &body["error"]["type"]),
            (&json!("error"), &json!("not_found_error"))
        );
        let openai = Early::NotServed.respond(Api::OpenAi);
        assert_eq!(openai.status(), StatusCode::NOT_FOUND);
        let body = body_json(openai).await;
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["code"], "unknown_url");
    }

    /// The routes over real HTTP: a framed Anthropic stream re-parses to the API's sequence, is
    /// recorded with its end, and an instance serving only OpenAI refuses `/v1/messages`.
    #[actix_web::test]
    async fn serves_messages_over_http() {
        let listener = TcpListener::bind("127.0.0.1:0");
        let Ok(mock) = listener.and_then(|l| serve(l, options(3, false))) else {
            panic!("mock did not start");
        };
        let handle = mock.server.handle();
        actix_rt::spawn(mock.server);
        let client = awc::Client::default();
        let url = format!("http://{}/v1/messages", mock.addr);
        let body = messages_body(json!({"model": "m:framing=bytes+crlf+pings", "stream": true}));
        let sent = client
            .post(&url)
            .insert_header(("anthropic-version", "2023-06-01"))
            .send_json(&body)
            .await;
        let Ok(mut response) = sent else {
            panic!("request failed: {sent:?}");
        };
        assert_eq!(response.status(), StatusCode::OK);
        let bytes = response.body().await.unwrap_or_default();
        let mut parser = crate::relay::sse::SseParser::new(1 << 20);
        let mut events = Vec::new();
        let _ = parser.feed(&bytes, &mut events);
        let names: Vec<_> = events.iter().filter_map(|e| e.event.clone()).collect();
        let deltas = names.iter().filter(|n| *n == "content_block_delta").count();
        assert_eq!(deltas, 3);
        assert_eq!(names.first().map(String::as_str), Some("message_start"));
        assert_eq!(names.last().map(String::as_str), Some("message_stop"));
        let end = mock
            .recorder
            .wait_for_end(0, std::time::Duration::from_secs(5))
            .await;
        assert!(matches!(
            end,
            Some(StreamEnd::Completed { tokens_sent: 3, .. })
        ));
        let recorded = mock.recorder.requests();
        assert_eq!(recorded[0].header("anthropic-version"), Some("2023-06-01"));
        assert_eq!(recorded[0].body, body);
        handle.stop(false).await;

        let only_openai = MockOptions {
            formats: MockFormats::OpenAi,
            ..options(3, false)
        };
        let listener = TcpListener::bind("127.0.0.1:0");
        let Ok(mock) = listener.and_then(|l| serve(l, only_openai)) else {
            panic!("mock did not start");
        };
        let handle = mock.server.handle();
        actix_rt::spawn(mock.server);
        let url = format!("http://{}/v1/messages", mock.addr);
        let refused = client
            .post(&url)
            .insert_header(("anthropic-version", "2023-06-01"))
            .send_json(&body)
            .await;
        assert_eq!(
            refused.map(|r| r.status()).ok(),
            Some(StatusCode::NOT_FOUND)
        );
        handle.stop(false).await;
    }

    /// A mock left running (the embedded default, compose, k6) keeps a bounded ring of the
    /// requests it served: bounded in bytes too, so huge bodies (a gateway forwards up to 1 MiB,
    /// the mock reads up to 16) cannot fill it either. It kept all of a thousand before: about
    /// 11 MB per 1 MiB body of `[]`.
    #[actix_web::test]
    async fn a_left_running_mock_keeps_a_bounded_number_of_body_bytes() {
        let listener = TcpListener::bind("127.0.0.1:0");
        let Ok(mock) = listener.and_then(|l| serve(l, options(1, false))) else {
            panic!("mock did not start");
        };
        let handle = mock.server.handle();
        actix_rt::spawn(mock.server);
        let client = awc::Client::default();
        let url = format!("http://{}/v1/chat/completions", mock.addr);
        // Each body is a little over KEPT_BODY_BYTES / 5: four fit, five do not.
        let pad = "x".repeat(KEPT_BODY_BYTES / 5);
        for n in 0..12 {
            let body = json!({"model": "m", "n": n, "pad": pad, "messages": []});
            let sent = client.post(&url).send_json(&body).await;
            assert_eq!(sent.map(|r| r.status()).ok(), Some(StatusCode::OK));
        }
        let kept: Vec<_> = mock
            .recorder
            .requests()
            .iter()
            .map(|r| r.body["n"].clone())
            .collect();
        assert_eq!(kept, [json!(8), json!(9), json!(10), json!(11)]);
        assert_eq!(mock.recorder.received(), 12);
        handle.stop(false).await;
    }
}
