//! Fallback before the first token: a model whose provider fails before any content reaches the
//! client is served by the next model in its `fallback` list (the plan allowing, the budget
//! covering it at that model's price), billed at that price, logged once with every attempt;
//! once content has gone out there is no fallback.

use serde_json::{json, Value};
use tollgate::config::{Config, ModelPrice, NamedUpstreamConfig};
use tollgate_testkit::app::sse::SseReader;
use tollgate_testkit::app::{chat_body, error_code, fast_mock, spawn_app, TestApp};

/// `primary` (priced 2.5 / 10 USD per million) is served as `upstream_model` by `upstream`,
/// falling back to `backup` (the mock's plain `mock-gpt`, priced 1 / 2).
fn route(config: &mut Config, upstream: &str, upstream_model: &str) {
    config.pricing.insert(
        "primary".into(),
        ModelPrice {
            input_per_million_usd: 2.5,
            output_per_million_usd: 10.0,
            upstream: upstream.into(),
            upstream_model: upstream_model.into(),
            fallback: vec!["backup".into()],
        },
    );
    config.pricing.insert(
        "backup".into(),
        ModelPrice {
            input_per_million_usd: 1.0,
            output_per_million_usd: 2.0,
            upstream_model: "mock-gpt".into(),
            ..ModelPrice::default()
        },
    );
}

/// An address nothing listens on.
fn closed_port_url() -> (String, socket2::Socket) {
    // Bound but not listening: connections are refused, and no other test's listener can take
    // the port while the socket is held (a port merely freed could be, and would answer).
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    socket.bind(&any.into()).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    (format!("http://{addr}/v1"), socket)
}

fn streamed(model: &str) -> Value {
    let mut body = chat_body(model, true);
    body["stream_options"] = json!({"include_usage": true});
    body
}

/// Reads a whole stream: (text, finish reason, usage, error code of an error event, [DONE] seen).
async fn read_stream(app: &TestApp, body: &Value) -> (String, Value, Value, Value, bool) {
    let response = app.post_chat("alice").send_json(body).await.unwrap();
    let events = SseReader::new(response).collect().await;
    let mut text = String::new();
    let (mut finish, mut usage, mut error) = (Value::Null, Value::Null, Value::Null);
    let done = events.last().map(String::as_str) == Some("[DONE]");
    for data in events.iter().filter(|d| *d != "[DONE]") {
        let chunk: Value = serde_json::from_str(data).unwrap();
        if let Some(content) = chunk["choices"][0]["delta"]["content"].as_str() {
            text.push_str(content);
        }
        if !chunk["choices"][0]["finish_reason"].is_null() {
            finish = chunk["choices"][0]["finish_reason"].clone();
        }
        if !chunk["usage"].is_null() {
            usage = chunk["usage"].clone();
        }
        if !chunk["error"].is_null() {
            error = chunk["error"]["code"].clone();
        }
    }
    (text, finish, usage, error, done)
}

/// The log line of a request the fallback served, checked against its usage.
async fn assert_served_by_backup(app: &TestApp, first_failure: &str) -> Value {
    let line = app.wait_for_logs(1).await[0].clone();
    assert_eq!(line["model"], "backup", "{line}");
    assert_eq!(line["requested_model"], "primary", "{line}");
    assert_eq!(
        line["attempts"],
        json!([{"model": "primary", "failure": first_failure}, {"model": "backup"}]),
        "{line}"
    );
    assert_eq!(line["outcome"], "completed", "{line}");
    assert_eq!(line["status"], 200, "{line}");
    // Billed at the backup's price (1 and 2 USD per million tokens), rounded up to a micro-USD.
    let (input, output) = (
        line["input_tokens"].as_u64().unwrap(),
        line["output_tokens"].as_u64().unwrap(),
    );
    let micro = (input * 1_000 + output * 2_000).div_ceil(1000);
    assert_eq!(line["cost_usd"], json!(micro as f64 / 1e6), "{line}");
    let usage = app.settled_usage("alice").await;
    assert_eq!(usage["daily_usd"]["used_usd"], line["cost_usd"], "{usage}");
    assert_eq!(
        usage["requests"], 1,
        "one request, however many attempts: {usage}"
    );
    line
}

#[actix_web::test]
async fn a_provider_refusing_connections_is_replaced_by_the_fallback() {
    let (dead, _held) = closed_port_url();
    let app = spawn_app(fast_mock(), |c| {
        c.upstreams.insert(
            "dead".into(),
            NamedUpstreamConfig {
                url: dead,
                ..NamedUpstreamConfig::default()
            },
        );
        route(c, "dead", "");
    })
    .await;
    let (text, finish, usage, error, done) = read_stream(&app, &streamed("primary")).await;
    assert_eq!(text, tollgate::mock::generated_text(20));
    assert_eq!((finish, error, done), (json!("stop"), Value::Null, true));
    let line = assert_served_by_backup(&app, "connect").await;
    assert_eq!(
        usage["cost"], line["cost_usd"],
        "the client sees what was billed"
    );
    let received = app.recorder.requests();
    assert_eq!(received.len(), 1, "only the backup's provider was reached");
    assert_eq!(received[0].body["model"], "mock-gpt");
}

#[actix_web::test]
async fn an_overloaded_529_is_replaced_by_the_fallback_streamed_and_whole() {
    let app = spawn_app(fast_mock(), |c| {
        route(c, "default", "mock-gpt:fault=status@529")
    })
    .await;
    let (text, ..) = read_stream(&app, &streamed("primary")).await;
    assert_eq!(text, tollgate::mock::generated_text(20));
    assert_served_by_backup(&app, "status_529").await;
    let models: Vec<Value> = app
        .recorder
        .requests()
        .iter()
        .map(|r| r.body["model"].clone())
        .collect();
    assert_eq!(
        models,
        [json!("mock-gpt:fault=status@529"), json!("mock-gpt")]
    );

    let mut response = app
        .post_chat("alice")
        .send_json(&chat_body("primary", false))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let reply: Value = response.json().await.unwrap();
    assert_eq!(
        reply["choices"][0]["message"]["content"],
        tollgate::mock::generated_text(20)
    );
    let line = app.wait_for_logs(2).await[1].clone();
    assert_eq!(line["model"], "backup", "{line}");
    assert_eq!(line["attempts"][0]["failure"], "status_529", "{line}");
}

#[actix_web::test]
async fn a_provider_silent_past_its_first_byte_timeout_is_replaced() {
    let app = spawn_app(fast_mock(), |c| {
        c.upstream.first_byte_timeout_secs = 1;
        route(c, "default", "mock-gpt:delay_ms=20000");
    })
    .await;
    let (text, ..) = read_stream(&app, &streamed("primary")).await;
    assert_eq!(text, tollgate::mock::generated_text(20));
    assert_served_by_backup(&app, "timeout").await;
}

#[actix_web::test]
async fn an_error_event_before_any_content_is_replaced_and_the_client_never_sees_it() {
    let app = spawn_app(fast_mock(), |c| {
        route(c, "default", "mock-gpt:fault=error@0")
    })
    .await;
    let response = app
        .post_chat("alice")
        .send_json(&streamed("primary"))
        .await
        .unwrap();
    let events = SseReader::new(response).collect().await;
    let roles = events
        .iter()
        .filter(|d| d.contains("\"role\":\"assistant\""))
        .count();
    assert_eq!(
        roles, 1,
        "one role chunk: the failed attempt's was held back: {events:?}"
    );
    assert!(
        events.iter().all(|d| !d.contains("mock_fault")),
        "{events:?}"
    );
    assert_served_by_backup(&app, "error_event").await;
}

#[actix_web::test]
async fn a_failure_after_content_is_never_replaced() {
    let app = spawn_app(fast_mock(), |c| {
        route(c, "default", "mock-gpt:fault=error@3")
    })
    .await;
    let (text, _, _, error, done) = read_stream(&app, &streamed("primary")).await;
    assert_eq!(text, tollgate::mock::generated_text(3));
    assert_eq!((error, done), (json!("upstream_failed"), true));
    let line = app.wait_for_logs(1).await[0].clone();
    assert_eq!(line["model"], "primary", "{line}");
    assert_eq!(line["outcome"], "upstream_error", "{line}");
    assert_eq!(line["output_tokens"], 3, "{line}");
    assert_eq!(
        line["attempts"],
        json!([{"model": "primary", "failure": "error_event"}])
    );
    assert_eq!(app.recorder.requests().len(), 1, "no second attempt");
}

#[actix_web::test]
async fn a_fallback_outside_the_plan_is_skipped() {
    let app = spawn_app(fast_mock(), |c| {
        route(c, "default", "mock-gpt:fault=status@529");
        if let Some(pro) = c.plans.get_mut("pro") {
            pro.models = vec!["primary".into()];
        }
    })
    .await;
    let response = app
        .post_chat("alice")
        .send_json(&streamed("primary"))
        .await
        .unwrap();
    assert_eq!(
        error_code(response).await,
        (503, "upstream_unavailable".into())
    );
    let line = app.wait_for_logs(1).await[0].clone();
    assert_eq!(
        line["attempts"],
        json!([{"model": "primary", "failure": "status_529"}])
    );
    assert_eq!(app.recorder.requests().len(), 1);
    assert_eq!(
        app.settled_usage("alice").await["daily_usd"]["used_usd"],
        0.0
    );
}

#[actix_web::test]
async fn a_fallback_the_budget_cannot_cover_leaves_the_original_error() {
    let app = spawn_app(fast_mock(), |c| {
        route(c, "default", "mock-gpt:fault=status@529");
        // The backup's input alone would cost far more than the $0.50 daily cap.
        if let Some(backup) = c.pricing.get_mut("backup") {
            backup.input_per_million_usd = 1_000_000.0;
        }
    })
    .await;
    let response = app
        .post_chat("alice")
        .send_json(&streamed("primary"))
        .await
        .unwrap();
    assert_eq!(
        error_code(response).await,
        (503, "upstream_unavailable".into())
    );
    let line = app.wait_for_logs(1).await[0].clone();
    assert_eq!(line["model"], "primary", "{line}");
    assert_eq!(
        line["attempts"],
        json!([{"model": "primary", "failure": "status_529"}])
    );
    assert_eq!(
        app.recorder.requests().len(),
        1,
        "the backup was never asked"
    );
    assert_eq!(
        app.settled_usage("alice").await["daily_usd"]["used_usd"],
        0.0
    );
}

#[actix_web::test]
async fn a_bad_request_refused_by_the_provider_is_the_clients_error_not_a_fallback() {
    let app = spawn_app(fast_mock(), |c| {
        route(c, "default", "mock-gpt:fault=status@400")
    })
    .await;
    let response = app
        .post_chat("alice")
        .send_json(&streamed("primary"))
        .await
        .unwrap();
    assert_eq!(error_code(response).await, (502, "upstream_failed".into()));
    let line = app.wait_for_logs(1).await[0].clone();
    assert_eq!(
        line["attempts"],
        json!([{"model": "primary", "failure": "status_400"}])
    );
    assert_eq!(app.recorder.requests().len(), 1);
}
