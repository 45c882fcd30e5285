//! A provider speaking Anthropic's native Messages API behind the OpenAI-compatible gateway: the
//! mock's `/v1/messages` with hostile framing, tool use, a mid-stream error event and an ignored
//! `max_tokens`; exact text and tool-call arguments reach the client, caps cut exactly, billing
//! follows Anthropic's usage, and the provider gets its own key, never the client's.

use serde_json::{json, Value};
use tollgate::config::{Config, ModelPrice, NamedUpstreamConfig, Secret, UpstreamFormat};
use tollgate::mock::{generated_text, TOOL_ARGUMENTS};
use tollgate_testkit::app::sse::SseReader;
use tollgate_testkit::app::{chat_body, fast_mock, spawn_app, TestApp};

const ANTHROPIC_KEY: &str = "sk-ant-test-key";

/// `claude` (3 / 15 USD per million tokens) is served by the mock's Anthropic API as
/// `mock-claude` plus `knobs`.
fn anthropic(config: &mut Config, knobs: &str) {
    let root = config.upstream.url.trim_end_matches("/v1").to_string();
    config.upstreams.insert(
        "anthropic".into(),
        NamedUpstreamConfig {
            url: root,
            api_key: Secret::new(ANTHROPIC_KEY),
            format: UpstreamFormat::Anthropic,
            ..NamedUpstreamConfig::default()
        },
    );
    let upstream_model = if knobs.is_empty() {
        "mock-claude".to_string()
    } else {
        format!("mock-claude:{knobs}")
    };
    config.pricing.insert(
        "claude".into(),
        ModelPrice {
            input_per_million_usd: 3.0,
            output_per_million_usd: 15.0,
            upstream: "anthropic".into(),
            upstream_model,
            ..ModelPrice::default()
        },
    );
}

/// What a client reads from a stream.
#[derive(Debug, Default)]
struct Read {
    text: String,
    /// Tool calls by index: (id, name, concatenated arguments).
    tools: Vec<(String, String, String)>,
    finish: Value,
    usage: Value,
    error: Value,
    done: bool,
    roles: usize,
}

async fn read(app: &TestApp, body: &Value) -> Read {
    let response = app.post_chat("alice").send_json(body).await.unwrap();
    let events = SseReader::new(response).collect().await;
    let mut read = Read {
        done: events.last().map(String::as_str) == Some("[DONE]"),
        ..Read::default()
    };
    for data in events.iter().filter(|d| *d != "[DONE]") {
        let chunk: Value = serde_json::from_str(data).unwrap();
        if !chunk["error"].is_null() {
            read.error = chunk["error"]["code"].clone();
            continue;
        }
        assert_eq!(chunk["object"], "chat.completion.chunk", "{chunk}");
        if !chunk["usage"].is_null() {
            read.usage = chunk["usage"].clone();
        }
        let Some(choice) = chunk["choices"].get(0) else {
            continue;
        };
        let delta = &choice["delta"];
        if delta["role"] == "assistant" {
            read.roles += 1;
        }
        if let Some(text) = delta["content"].as_str() {
            read.text.push_str(text);
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let i = call["index"].as_u64().unwrap() as usize;
            if read.tools.len() <= i {
                read.tools.resize(i + 1, Default::default());
            }
            if let Some(id) = call["id"].as_str() {
                read.tools[i].0 = id.to_string();
            }
            if let Some(name) = call["function"]["name"].as_str() {
                read.tools[i].1 = name.to_string();
            }
            if let Some(args) = call["function"]["arguments"].as_str() {
                read.tools[i].2.push_str(args);
            }
        }
        if !choice["finish_reason"].is_null() {
            read.finish = choice["finish_reason"].clone();
        }
    }
    read
}

fn streamed(max_tokens: Option<u32>) -> Value {
    let mut body = chat_body("claude", true);
    body["stream_options"] = json!({"include_usage": true});
    body["messages"] = json!([
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say something."}
    ]);
    if let Some(max_tokens) = max_tokens {
        body["max_tokens"] = json!(max_tokens);
    }
    body
}

/// Micro-USD of `usage` at claude's 3 / 15 USD per million, rounded up, as USD.
fn claude_cost(input: u64, output: u64) -> f64 {
    (input * 3_000 + output * 15_000).div_ceil(1000) as f64 / 1e6
}

#[actix_web::test]
async fn a_stream_split_at_every_byte_with_crlf_and_pings_arrives_whole_and_billed_from_its_usage()
{
    let app = spawn_app(fast_mock(), |c| anthropic(c, "framing=bytes+crlf+pings")).await;
    let read = read(&app, &streamed(None)).await;
    assert_eq!(read.text, generated_text(20));
    assert_eq!(
        (read.finish.clone(), read.error.clone(), read.done),
        (json!("stop"), Value::Null, true)
    );
    assert_eq!(read.roles, 1);
    assert_eq!(read.usage["completion_tokens"], 20, "{:?}", read.usage);
    let line = app.wait_for_logs(1).await[0].clone();
    assert_eq!(line["outcome"], "completed", "{line}");
    assert_eq!(line["usage_source"], "upstream", "{line}");
    assert_eq!(line["model"], "claude");
    let input = read.usage["prompt_tokens"].as_u64().unwrap();
    assert_eq!(
        line["input_tokens"], input,
        "billed Anthropic's count: {line}"
    );
    assert_eq!(line["output_tokens"], 20);
    assert_eq!(line["cost_usd"], json!(claude_cost(input, 20)), "{line}");
    assert_eq!(read.usage["cost"], line["cost_usd"]);
    let usage = app.settled_usage("alice").await;
    assert_eq!(usage["daily_usd"]["used_usd"], line["cost_usd"], "{usage}");

    // What Anthropic received: its own key and version, the system prompt lifted out, the
    // granted cap, no OpenAI-only fields, never the client's token.
    let received = &app.recorder.requests()[0];
    assert_eq!(received.header("x-api-key"), Some(ANTHROPIC_KEY));
    assert_eq!(received.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(received.header("authorization"), None);
    assert_eq!(
        received.body["model"],
        "mock-claude:framing=bytes+crlf+pings"
    );
    // The default canary goes first in the system prompt.
    let system = received.body["system"].as_str().unwrap();
    assert!(system.starts_with("Confidential marker: qzcn-"), "{system}");
    assert!(system.ends_with("\n\nYou are terse."), "{system}");
    assert_eq!(
        received.body["messages"],
        json!([{"role": "user", "content": "Say something."}])
    );
    assert_eq!(
        received.body["max_tokens"], 1000,
        "the default grant, explicit"
    );
    assert_eq!(received.body["stream"], true);
    assert!(
        received.body.get("stream_options").is_none(),
        "{}",
        received.body
    );
}

#[actix_web::test]
async fn tool_calls_reach_the_client_with_their_exact_arguments() {
    let app = spawn_app(fast_mock(), |c| {
        anthropic(c, "tool=get_weather,framing=bytes")
    })
    .await;
    let mut body = streamed(None);
    body["tools"] = json!([{"type": "function", "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}
    }}]);
    body["tool_choice"] = json!("required");
    let read = read(&app, &body).await;
    assert_eq!(read.text, generated_text(20));
    assert_eq!(read.tools.len(), 1, "{:?}", read.tools);
    let (id, name, arguments) = &read.tools[0];
    assert!(id.starts_with("toolu_"), "{id}");
    assert_eq!(name, "get_weather");
    assert_eq!(arguments, TOOL_ARGUMENTS);
    assert_eq!(read.finish, "tool_calls");
    let received = &app.recorder.requests()[0];
    assert_eq!(received.body["tools"][0]["name"], "get_weather");
    assert_eq!(received.body["tools"][0]["input_schema"]["type"], "object");
    assert_eq!(received.body["tool_choice"], json!({"type": "any"}));
    let line = app.wait_for_logs(1).await[0].clone();
    assert_eq!(
        line["output_tokens"], read.usage["completion_tokens"],
        "{line}"
    );
}

#[actix_web::test]
async fn an_ignored_max_tokens_is_cut_exactly_at_the_grant() {
    let app = spawn_app(fast_mock(), |c| anthropic(c, "ignore_max_tokens=true")).await;
    let read = read(&app, &streamed(Some(5))).await;
    assert_eq!(read.text, generated_text(5));
    assert_eq!((read.finish.clone(), read.done), (json!("length"), true));
    let line = app.wait_for_logs(1).await[0].clone();
    assert_eq!(line["outcome"], "cut_token_cap", "{line}");
    assert_eq!(line["output_tokens"], 5);
    assert_eq!(app.recorder.requests()[0].body["max_tokens"], 5);
}

#[actix_web::test]
async fn an_error_event_mid_stream_ends_as_upstream_failed_and_bills_what_was_relayed() {
    let app = spawn_app(fast_mock(), |c| anthropic(c, "fault=error@4")).await;
    let read = read(&app, &streamed(None)).await;
    assert_eq!(read.text, generated_text(4));
    assert_eq!(
        (read.error.clone(), read.done),
        (json!("upstream_failed"), true)
    );
    assert_eq!(
        read.usage,
        Value::Null,
        "no usage figures on a broken stream"
    );
    let line = app.wait_for_logs(1).await[0].clone();
    assert_eq!(line["outcome"], "upstream_error", "{line}");
    assert_eq!(
        (line["output_tokens"].clone(), line["usage_source"].clone()),
        (json!(4), json!("counted"))
    );
    assert_eq!(
        line["attempts"],
        json!([{"model": "claude", "failure": "error_event"}])
    );
}

#[actix_web::test]
async fn a_whole_reply_is_translated_with_its_tool_call_and_usage() {
    let app = spawn_app(fast_mock(), |c| anthropic(c, "tool=lookup")).await;
    let mut body = chat_body("claude", false);
    body["max_tokens"] = json!(100);
    let mut response = app.post_chat("alice").send_json(&body).await.unwrap();
    assert_eq!(response.status(), 200);
    let reply: Value = response.json().await.unwrap();
    assert_eq!(reply["object"], "chat.completion");
    let message = &reply["choices"][0]["message"];
    assert_eq!(message["content"], generated_text(20));
    assert_eq!(message["tool_calls"][0]["function"]["name"], "lookup");
    assert_eq!(
        message["tool_calls"][0]["function"]["arguments"],
        TOOL_ARGUMENTS
    );
    assert_eq!(reply["choices"][0]["finish_reason"], "tool_calls");
    let line = app.wait_for_logs(1).await[0].clone();
    assert_eq!(line["usage_source"], "upstream", "{line}");
    assert_eq!(reply["usage"]["completion_tokens"], line["output_tokens"]);
    assert_eq!(reply["usage"]["cost"], line["cost_usd"]);
    assert_eq!(app.recorder.requests()[0].body["stream"], json!(false));
}

#[actix_web::test]
async fn an_overloaded_anthropic_falls_back_to_an_openai_model_before_its_first_token() {
    let app = spawn_app(fast_mock(), |c| {
        anthropic(c, "fault=status@529");
        if let Some(claude) = c.pricing.get_mut("claude") {
            claude.fallback = vec!["mock-gpt".into()];
        }
    })
    .await;
    let read = read(&app, &streamed(None)).await;
    assert_eq!(read.text, generated_text(20));
    assert_eq!(read.roles, 1);
    let line = app.wait_for_logs(1).await[0].clone();
    assert_eq!(line["model"], "mock-gpt", "{line}");
    assert_eq!(
        line["attempts"],
        json!([{"model": "claude", "failure": "status_529"}, {"model": "mock-gpt"}])
    );
    let received = app.recorder.requests();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(received[1].header("anthropic-version"), None);
    assert!(received[1]
        .header("authorization")
        .is_some_and(|v| v.ends_with(tollgate_testkit::app::UPSTREAM_KEY)));
}

#[actix_web::test]
async fn an_anthropic_error_event_before_content_falls_back_too() {
    let app = spawn_app(fast_mock(), |c| {
        anthropic(c, "fault=error@0");
        if let Some(claude) = c.pricing.get_mut("claude") {
            claude.fallback = vec!["mock-gpt".into()];
        }
    })
    .await;
    let read = read(&app, &streamed(None)).await;
    assert_eq!(
        (read.text, read.error, read.roles),
        (generated_text(20), Value::Null, 1)
    );
    let line = app.wait_for_logs(1).await[0].clone();
    assert_eq!(line["attempts"][0]["failure"], "error_event", "{line}");
    assert_eq!(line["model"], "mock-gpt");
}

#[actix_web::test]
async fn a_request_anthropic_cannot_express_is_the_clients_error_and_never_sent() {
    let app = spawn_app(fast_mock(), |c| {
        anthropic(c, "");
        if let Some(claude) = c.pricing.get_mut("claude") {
            claude.fallback = vec!["mock-gpt".into()];
        }
    })
    .await;
    let mut body = streamed(None);
    body["n"] = json!(2);
    let response = app.post_chat("alice").send_json(&body).await.unwrap();
    assert_eq!(
        tollgate_testkit::app::error_code(response).await,
        (400, "invalid_json".into())
    );
    tollgate_testkit::app::assert_upstream_untouched(&app).await;
    let line = app.wait_for_logs(1).await[0].clone();
    assert_eq!(line["outcome"], "rejected", "{line}");
    assert_eq!(
        line["attempts"],
        json!([{"model": "claude", "failure": "untranslatable"}]),
        "no fallback for the client's own error"
    );
    assert_eq!(
        app.settled_usage("alice").await["daily_usd"]["used_usd"],
        0.0
    );
}

#[actix_web::test]
async fn the_spend_cap_cuts_an_anthropic_stream_live() {
    let app = spawn_app(fast_mock(), |c| {
        anthropic(c, "tokens=400,tps=200");
        c.cost.max_daily_usd = 0.001; // 1000 micro-USD; claude output: 15 micro-USD a token
        c.relay.meter_batch_tokens = 4;
    })
    .await;
    let read = read(&app, &streamed(None)).await;
    assert_eq!(
        (read.error.clone(), read.done),
        (json!("budget_exceeded"), true)
    );
    let line = app.wait_for_logs(1).await[0].clone();
    assert_eq!(line["outcome"], "cut_budget", "{line}");
    let relayed = read.text.split_whitespace().count() as u64;
    assert_eq!(
        line["output_tokens"], relayed,
        "billed what the client got: {line}"
    );
    assert!(
        relayed < 400,
        "cut long before the provider's end: {relayed}"
    );
    let spent = app.settled_usage("alice").await["daily_usd"]["used_usd"]
        .as_f64()
        .unwrap();
    // The bound: none. Cut at the token that would cross the cap, less than a token below it.
    let spent = (spent * 1e6).round() as u64;
    assert!(spent <= 1000 && spent > 1000 - 15, "{spent}");
}

/// What a raw upstream that answers every request with `307 Temporary Redirect` saw: the
/// requests it read; its `location` is set once the mock it points at is up.
#[derive(Default)]
struct Redirector {
    location: std::sync::Mutex<String>,
    asked: std::sync::atomic::AtomicUsize,
}

/// Starts a [`Redirector`] on a free loopback port.
async fn redirecting_upstream() -> (std::net::SocketAddr, std::sync::Arc<Redirector>) {
    use std::sync::atomic::Ordering;
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let redirector = std::sync::Arc::new(Redirector::default());
    let seen = redirector.clone();
    actix_rt::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tollgate_testkit::app::scripted::read_request(&mut socket).await;
            seen.asked.fetch_add(1, Ordering::SeqCst);
            let location = seen.location.lock().unwrap().clone();
            let head = format!(
                "HTTP/1.1 307 Temporary Redirect\r\nlocation: {location}\r\n\
                 content-length: 0\r\nconnection: close\r\n\r\n"
            );
            let _ = socket.write_all(head.as_bytes()).await;
            let _ = socket.shutdown().await;
        }
    });
    (addr, redirector)
}

#[actix_web::test]
async fn a_providers_redirect_is_not_followed_and_its_key_goes_nowhere_else() {
    // The provider's URL answers 307 to the mock's own Messages API on another port: another
    // origin, to which awc's redirect handling drops `authorization` but still sends
    // `x-api-key`.
    let (redirector_addr, redirector) = redirecting_upstream().await;
    let app = spawn_app(fast_mock(), |c| {
        anthropic(c, "");
        *redirector.location.lock().unwrap() =
            format!("{}/v1/messages", c.upstream.url.trim_end_matches("/v1"));
        if let Some(provider) = c.upstreams.get_mut("anthropic") {
            provider.url = format!("http://{redirector_addr}");
        }
    })
    .await;
    let response = app
        .post_chat("alice")
        .send_json(&streamed(None))
        .await
        .unwrap();
    assert_eq!(
        tollgate_testkit::app::error_code(response).await,
        (502, "upstream_failed".into())
    );
    assert_eq!(
        redirector.asked.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    tollgate_testkit::app::assert_upstream_untouched(&app).await;
    let line = app.wait_for_logs(1).await[0].clone();
    assert_eq!(line["outcome"], "upstream_error", "{line}");
    assert_eq!(
        line["attempts"],
        json!([{"model": "claude", "failure": "status_307"}])
    );
    assert_eq!(line["output_tokens"], 0);
}
