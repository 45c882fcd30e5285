//! Every way a request ends is finished in one place: one settlement and one log line whose
//! status, outcome and error code say how it ended, and a `timestamp` of its arrival.

use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};
use tollgate_testkit::app::sse::SseReader;
use tollgate_testkit::app::{
    assert_upstream_untouched, chat_body, fast_mock, spawn_app, spawn_gateway, test_config, TestApp,
};

/// What one ending must leave behind.
struct Expected {
    outcome: &'static str,
    status: u16,
    error_code: Option<&'static str>,
    /// Requests the user's actor counted (a refusal before admission counts none).
    requests: u64,
}

fn expect(
    outcome: &'static str,
    status: u16,
    error_code: Option<&'static str>,
    requests: u64,
) -> Expected {
    Expected {
        outcome,
        status,
        error_code,
        requests,
    }
}

/// Waits for the request's one log line and its settlement, and checks both.
async fn assert_ended_once(app: &TestApp, expected: &Expected) -> Value {
    let logs = app.wait_for_logs(1).await;
    let usage = app.settled_usage("alice").await;
    assert_eq!(app.log_lines().len(), 1, "exactly one log line: {logs:?}");
    let line = &logs[0];
    assert_eq!(line["outcome"], expected.outcome, "{line}");
    assert_eq!(line["status"], expected.status, "{line}");
    assert_eq!(line["error_code"], json!(expected.error_code), "{line}");
    assert_eq!(usage["requests"], expected.requests, "{usage}");
    assert_eq!(usage["open_streams"], 0, "{usage}");
    assert_eq!(
        usage["output_tokens"], line["output_tokens"],
        "billed what was logged: {usage} / {line}"
    );
    line.clone()
}

fn stream_body(model: &str, max_tokens: u32) -> Value {
    let mut body = chat_body(model, true);
    body["max_tokens"] = json!(max_tokens);
    body
}

/// Milliseconds since the epoch of an RFC 3339 UTC timestamp with milliseconds
/// (`2026-11-25T12:00:00.042Z`), by the civil-date algorithm.
fn epoch_ms(timestamp: &str) -> u64 {
    let number = |range: std::ops::Range<usize>| timestamp[range].parse::<i64>().unwrap();
    assert_eq!(timestamp.len(), 24, "{timestamp}");
    assert!(timestamp.ends_with('Z'), "UTC: {timestamp}");
    let (y, m, d) = (number(0..4), number(5..7), number(8..10));
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let secs = days * 86_400 + number(11..13) * 3600 + number(14..16) * 60 + number(17..19);
    (secs * 1000 + number(20..23)) as u64
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[actix_web::test]
async fn a_completed_stream_is_settled_and_logged_once_with_its_arrival_time() {
    let app = spawn_app(fast_mock(), |_| {}).await;
    let before = now_ms();
    let events = app.stream("alice", &stream_body("mock-gpt", 100)).await;
    let after = now_ms();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let line = assert_ended_once(&app, &expect("completed", 200, None, 1)).await;
    let arrived = epoch_ms(line["timestamp"].as_str().unwrap());
    assert!(
        (before..=after).contains(&arrived),
        "arrival {arrived} within the request ({before}..={after})"
    );
}

#[actix_web::test]
async fn a_stream_cut_at_the_output_cap_ends_once() {
    let app = spawn_app(fast_mock(), |_| {}).await;
    app.stream("alice", &stream_body("mock-gpt:ignore_max_tokens=true", 5))
        .await;
    let line = assert_ended_once(&app, &expect("cut_token_cap", 200, None, 1)).await;
    assert_eq!(line["output_tokens"], 5);
}

#[actix_web::test]
async fn a_stream_the_upstream_breaks_ends_once_with_the_in_stream_code() {
    let app = spawn_app(fast_mock(), |_| {}).await;
    app.stream("alice", &stream_body("mock-gpt:fault=error@3", 100))
        .await;
    let line = assert_ended_once(
        &app,
        &expect("upstream_error", 200, Some("upstream_failed"), 1),
    )
    .await;
    assert_eq!(line["output_tokens"], 3);
}

#[actix_web::test]
async fn a_stream_past_the_deadline_ends_once_with_deadline_exceeded() {
    let app = spawn_app(fast_mock(), |c| {
        c.limits.deadline_secs = 1;
        c.upstream.idle_timeout_secs = 10;
    })
    .await;
    app.stream("alice", &stream_body("mock-gpt:fault=stall@2", 100))
        .await;
    assert_ended_once(
        &app,
        &expect("cut_deadline", 200, Some("deadline_exceeded"), 1),
    )
    .await;
}

#[actix_web::test]
async fn an_upstream_refusal_before_the_stream_ends_once_unbilled() {
    let app = spawn_app(fast_mock(), |_| {}).await;
    let response = app
        .post_chat("alice")
        .send_json(&stream_body("mock-gpt:fault=status@500", 100))
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let line = assert_ended_once(
        &app,
        &expect("upstream_error", 502, Some("upstream_failed"), 1),
    )
    .await;
    assert_eq!(line["output_tokens"], 0);
}

#[actix_web::test]
async fn a_whole_reply_ends_once() {
    let app = spawn_app(fast_mock(), |_| {}).await;
    let response = app
        .post_chat("alice")
        .send_json(&chat_body("mock-gpt", false))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_ended_once(&app, &expect("completed", 200, None, 1)).await;
}

#[actix_web::test]
async fn a_refusal_before_admission_is_logged_once_and_never_counted() {
    let app = spawn_app(fast_mock(), |_| {}).await;
    let response = app
        .post_chat("alice")
        .send_json(&chat_body("no-such-model", true))
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_ended_once(&app, &expect("rejected", 400, Some("unknown_model"), 0)).await;
    assert_upstream_untouched(&app).await;
}

#[actix_web::test]
async fn a_client_that_leaves_mid_stream_ends_once() {
    let app = spawn_app(fast_mock(), |_| {}).await;
    let response = app
        .post_chat("alice")
        .send_json(&stream_body("mock-gpt:fault=stall@4", 100))
        .await
        .unwrap();
    let mut sse = SseReader::new(response);
    sse.next_data().await.unwrap();
    drop(sse);
    assert_ended_once(&app, &expect("client_gone", 499, None, 1)).await;
}

#[actix_web::test]
async fn a_usage_report_is_shown_only_when_it_is_what_gets_billed() {
    use tollgate_testkit::app::scripted::scripted_upstream;
    let chunk = |delta: serde_json::Value, finish: Option<&str>| {
        json!({"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o",
               "choices":[{"index":0,"delta":delta,"finish_reason":finish}]})
        .to_string()
    };
    let usage = json!({"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o",
        "choices":[],"usage":{"prompt_tokens":11,"completion_tokens":3,"total_tokens":14}})
    .to_string();
    // The provider reports its usage, then breaks instead of sending [DONE].
    let wire = format!(
        "data: {}\n\ndata: {}\n\ndata: {usage}\n\ndata: {{\"error\":{{\"message\":\"boom\"}}}}\n\n",
        chunk(json!({"content":"one two three"}), None),
        chunk(json!({}), Some("stop")),
    );
    let addr = scripted_upstream(vec![wire.into_bytes()]).await;
    let app = spawn_gateway(test_config(&format!("http://{addr}")), Default::default()).await;
    let mut body = chat_body("gpt-4o", true);
    body["stream_options"] = json!({"include_usage": true});
    let events = app.stream("una", &body).await;
    // The ending is an upstream failure, billed from the live count: the provider's report
    // (with figures that are not the ones billed) never reaches the client.
    assert!(
        events.iter().all(|e| !e.contains("\"usage\":{")),
        "{events:?}"
    );
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let line = &app.wait_for_logs(1).await[0];
    assert_eq!(line["outcome"], "upstream_error");
    assert_eq!(line["usage_source"], "counted");
}
