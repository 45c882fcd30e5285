//! An OpenAI-compatible fake chat provider: `tollgate mock-provider`, the in-process upstream
//! when none is configured, and the scriptable upstream of the integration tests.
//!
//! [`serve`] takes a bound listener and returns an unstarted actix [`Server`] with
//! `POST /chat/completions`, `POST /v1/chat/completions` and `GET /healthz`. Replies are
//! deterministic ([`generated_text`]: every word is one token in `o200k_base` and `cl100k_base`),
//! paced and faulted by [`MockOptions`], overridable per request by `x-mock-*` headers or a
//! model-name suffix (syntax in `knobs.rs`). Every request and how its reply ended lands in the
//! instance's [`MockRecorder`]. The mock stands alone: it uses nothing else in the crate, and
//! nothing else should reach into its submodules beyond what is re-exported here.

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

pub use knobs::{Fault, KnobError, MockOptions};
pub use recorder::{MockRecorder, RecordedRequest, StreamEnd};
pub use words::{generated_text, token_text, WORDS};

use recorder::EndRecorder;
use stream::{abrupt_close_error, error_body, token_interval, Interruption, Reply};

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
    let recorder = Arc::new(MockRecorder::default());
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
            .route("/healthz", web::get().to(healthz))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .h1_allow_half_closed(false)
    .tcp_nodelay(true)
    .listen(listener)?
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
            tiktoken_rs::o200k_base_singleton();
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
    let headers = header_pairs(&req);
    let parsed = serde_json::from_slice::<Value>(&body);
    let recorded = match &parsed {
        Ok(value) => value.clone(),
        Err(_) => Value::String(String::from_utf8_lossy(&body).into_owned()),
    };
    let mut guard = state
        .recorder
        .start_from(req.peer_addr(), headers.clone(), recorded);
    match prepare(&state.options, &headers, parsed) {
        Ok(reply) if reply.stream => stream_response(reply, guard),
        Ok(reply) => whole_response(reply, guard).await,
        Err(early) => {
            guard.complete();
            early.response()
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
}

impl Early {
    fn response(self) -> HttpResponse {
        match self {
            Self::InvalidJson(message) => bad_request(&message, "invalid_json", None),
            Self::InvalidRequest(message) => bad_request(&message, "invalid_request", None),
            Self::InvalidKnob(err) => {
                bad_request(&err.to_string(), "invalid_mock_knob", Some(err.knob))
            }
            Self::StatusFault(code) => status_fault(code),
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
    let tokens = match limit {
        Some(limit) if !options.ignore_max_tokens => options.tokens.min(limit),
        _ => options.tokens,
    };
    let finish_reason = if tokens < options.tokens {
        "length"
    } else {
        "stop"
    };
    let include_usage = request
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage);
    Reply {
        id: format!("chatcmpl-mock-{}", uuid::Uuid::new_v4()),
        created: unix_seconds(),
        model: request.model.clone(),
        stream: request.stream.unwrap_or(false),
        include_usage: include_usage.unwrap_or(false),
        tokens,
        finish_reason,
        prompt_tokens: prompt_tokens(&request.messages),
        first_token_delay: std::time::Duration::from_millis(options.first_token_delay_ms),
        token_interval: token_interval(options.tokens_per_second),
        interruption: fault.map(|(kind, after)| (kind, after.min(tokens))),
    }
}

/// Prompt estimate: o200k tokens of each message's string content, plus 3 per message, plus 3.
fn prompt_tokens(messages: &[Value]) -> u32 {
    let bpe = tiktoken_rs::o200k_base_singleton();
    let content: usize = messages
        .iter()
        .filter_map(|message| message.get("content").and_then(Value::as_str))
        .map(|text| bpe.count_ordinary(text))
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
    let response = match reply.interruption {
        None => {
            guard.set_tokens_sent(reply.tokens);
            json_response(StatusCode::OK, &reply.completion())
        }
        Some((Interruption::ErrorEvent, _)) => {
            json_response(StatusCode::INTERNAL_SERVER_ERROR, &reply.fault_error())
        }
        Some((Interruption::AbruptClose, _)) => aborted_response(),
        Some((Interruption::Stall, _)) => std::future::pending().await,
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
    let status = StatusCode::from_u16(code)
        .ok()
        .filter(|s| s.is_client_error() || s.is_server_error())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let message = format!("mock fault: status {}", status.as_u16());
    let (kind, code) = match status {
        StatusCode::TOO_MANY_REQUESTS => ("requests", "rate_limit_exceeded"),
        s if s.is_server_error() => ("server_error", "mock_fault"),
        _ => ("invalid_request_error", "mock_fault"),
    };
    let mut response = json_response(status, &error_body(&message, kind, code));
    if status == StatusCode::TOO_MANY_REQUESTS {
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
}
