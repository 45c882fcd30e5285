//! Streams the gateway ends: output cap, deadline, broken or silent upstream, departed client.
//! Every cut must reach the client as a clear ending, drop the upstream request, and bill what
//! was relayed.

use serde_json::{json, Value};
use std::time::Duration;
use tollgate::mock::{generated_text, MockOptions, StreamEnd};
use tollgate_testkit::app::sse::{
    assert_error_ending, content_chunks, content_of, error_event, SseReader,
};
use tollgate_testkit::app::*;

async fn assert_upstream_dropped(app: &TestApp) -> u32 {
    match app.recorder.wait_for_end(0, Duration::from_secs(1)).await {
        Some(StreamEnd::Dropped { tokens_sent, .. }) => tokens_sent,
        other => panic!("the upstream stream was not dropped within 1 s: {other:?}"),
    }
}

#[actix_web::test]
async fn a_mock_that_ignores_max_tokens_is_cut_at_exactly_the_grant() {
    let app = spawn_app(
        MockOptions {
            tokens: 200,
            tokens_per_second: 200.0,
            ignore_max_tokens: true,
            ..fast_mock()
        },
        |_| {},
    )
    .await;
    let mut body = chat_body("mock-gpt", true);
    body["max_tokens"] = json!(7);
    body["stream_options"] = json!({"include_usage": true});
    let events = app.stream("alice", &body).await;

    assert_eq!(content_of(&events), generated_text(7));
    assert_eq!(content_chunks(&events), 7);
    let n = events.len();
    let finish: Value = serde_json::from_str(&events[n - 3]).unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
    assert_eq!(finish["choices"][0]["delta"], json!({}));
    let usage: Value = serde_json::from_str(&events[n - 2]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 7);
    assert_eq!(events[n - 1], "[DONE]");

    assert_eq!(app.recorder.requests()[0].body["max_tokens"], 7);
    let sent = assert_upstream_dropped(&app).await;
    assert!(sent < 200, "the upstream ran to completion ({sent} tokens)");
    let logs = app.wait_for_logs(1).await;
    assert_eq!(logs[0]["outcome"], "cut_token_cap");
    assert_eq!(logs[0]["output_tokens"], 7);
    assert_eq!(logs[0]["usage_source"], "counted");
    assert_eq!(app.settled_usage("alice").await["output_tokens"], 7);
}

#[actix_web::test]
async fn a_chunk_that_crosses_the_cap_is_trimmed_to_it() {
    // One upstream chunk holding 6 tokens against a cap of 4.
    let chunk = |content: &str, finish: Value| {
        format!(
            "data: {}\n\n",
            json!({"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o",
                   "choices":[{"index":0,"delta":{"content":content},"finish_reason":finish}]})
        )
        .into_bytes()
    };
    let addr = tollgate_testkit::app::scripted::scripted_upstream(vec![
        chunk(" the quick brown fox jumps over", Value::Null),
        chunk("", json!("stop")),
        b"data: [DONE]\n\n".to_vec(),
    ])
    .await;
    let config = test_config(&format!("http://{addr}"));
    let app = spawn_gateway(config, Default::default()).await;
    let mut body = chat_body("gpt-4o", true);
    body["max_tokens"] = json!(4);
    let events = app.stream("bob", &body).await;
    assert_eq!(content_of(&events), " the quick brown fox");
    let finish: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
    assert_eq!(finish["id"], "c1");
    assert_eq!(app.wait_for_logs(1).await[0]["output_tokens"], 4);
}

#[actix_web::test]
async fn the_deadline_cuts_a_slow_stream_with_deadline_exceeded() {
    let app = spawn_app(
        MockOptions {
            tokens: 100,
            tokens_per_second: 20.0,
            ..fast_mock()
        },
        |c| c.limits.deadline_secs = 1,
    )
    .await;
    let events = app.stream("alice", &chat_body("mock-gpt", true)).await;
    assert_error_ending(&events, "deadline_exceeded");
    let relayed = content_chunks(&events) as u64;
    assert!(relayed > 0 && relayed < 100);
    assert_upstream_dropped(&app).await;
    let logs = app.wait_for_logs(1).await;
    assert_eq!(logs[0]["outcome"], "cut_deadline");
    assert_eq!(logs[0]["output_tokens"], relayed);
    assert_eq!(app.settled_usage("alice").await["output_tokens"], relayed);
}

async fn assert_upstream_failed(app: &TestApp, model: &str, expected_tokens: u64) {
    let events = app.stream("alice", &chat_body(model, true)).await;
    let n = events.len();
    assert_eq!(events[n - 1], "[DONE]");
    let error = error_event(&events[n - 2]);
    assert_eq!(error["code"], "upstream_failed");
    assert_eq!(error["type"], "upstream_error");
    assert!(
        !events[n - 2].contains("mock"),
        "upstream detail leaked: {}",
        events[n - 2]
    );
    assert_eq!(content_chunks(&events) as u64, expected_tokens);
    let logs = app.wait_for_logs(1).await;
    assert_eq!(logs[0]["outcome"], "upstream_error");
    assert_eq!(logs[0]["output_tokens"], expected_tokens);
    assert_eq!(
        app.settled_usage("alice").await["output_tokens"],
        expected_tokens
    );
}

#[actix_web::test]
async fn an_upstream_error_event_becomes_upstream_failed() {
    let app = spawn_app(fast_mock(), |_| {}).await;
    assert_upstream_failed(&app, "mock-gpt:fault=error@3", 3).await;
}

#[actix_web::test]
async fn an_abrupt_upstream_close_becomes_upstream_failed() {
    let app = spawn_app(fast_mock(), |_| {}).await;
    assert_upstream_failed(&app, "mock-gpt:fault=close@4", 4).await;
}

#[actix_web::test]
async fn a_silent_upstream_is_cut_after_the_idle_timeout() {
    let app = spawn_app(fast_mock(), |c| c.upstream.idle_timeout_secs = 1).await;
    assert_upstream_failed(&app, "mock-gpt:fault=stall@2", 2).await;
    assert_upstream_dropped(&app).await;
}

#[actix_web::test]
async fn a_client_that_leaves_drops_the_upstream_within_a_second_and_is_billed_what_it_got() {
    let app = spawn_app(fast_mock(), |_| {}).await;
    let response = app
        .post_chat("alice")
        .send_json(&chat_body("mock-gpt:fault=stall@5", true))
        .await
        .unwrap();
    let mut sse = SseReader::new(response);
    let mut received = Vec::new();
    while content_chunks(&received) < 5 {
        received.push(sse.next_data().await.unwrap());
    }
    drop(sse); // the client disconnects while the upstream is silent

    let sent = assert_upstream_dropped(&app).await;
    assert_eq!(sent, 5);
    let usage = app.settled_usage("alice").await;
    assert_eq!(
        usage["output_tokens"], 5,
        "the actor was told what was streamed"
    );
    assert_eq!(usage["open_streams"], 0);
    let logs = app.wait_for_logs(1).await;
    assert_eq!(logs[0]["outcome"], "client_gone");
    assert_eq!(logs[0]["status"], 499);
    assert_eq!(logs[0]["output_tokens"], 5);
    assert_eq!(app.log_lines().len(), 1, "exactly one log line");
}

#[actix_web::test]
async fn reaching_the_cap_exactly_then_losing_the_upstream_still_ends_at_the_cap() {
    let chunk = json!({"id":"c2","object":"chat.completion.chunk","created":1,"model":"gpt-4o",
        "choices":[{"index":0,"delta":{"content":" the quick brown fox"},"finish_reason":null}]});
    // Exactly 4 tokens against a cap of 4, then the upstream ends without finishing.
    let addr =
        tollgate_testkit::app::scripted::scripted_upstream(vec![
            format!("data: {chunk}\n\n").into_bytes()
        ])
        .await;
    let app = spawn_gateway(test_config(&format!("http://{addr}")), Default::default()).await;
    let mut body = chat_body("gpt-4o", true);
    body["max_tokens"] = json!(4);
    let events = app.stream("bob", &body).await;
    assert_eq!(events.len(), 3, "{events:?}");
    let finish: Value = serde_json::from_str(&events[1]).unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
    assert_eq!(events[2], "[DONE]");
    let logs = app.wait_for_logs(1).await;
    assert_eq!(logs[0]["outcome"], "cut_token_cap");
    assert_eq!(logs[0]["output_tokens"], 4);
}

#[actix_web::test]
async fn a_stalling_upstream_at_the_cap_is_closed_without_waiting_for_the_idle_timeout() {
    // The mock honours max_tokens=3, then stalls instead of finishing; idle timeout is 10 s.
    let app = spawn_app(fast_mock(), |_| {}).await;
    let mut body = chat_body("mock-gpt:ignore_max_tokens=true,fault=stall@3", true);
    body["max_tokens"] = json!(3);
    let events = app.stream("alice", &body).await;
    assert_eq!(content_chunks(&events), 3);
    let finish: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
    assert_upstream_dropped(&app).await;
    assert_eq!(app.wait_for_logs(1).await[0]["outcome"], "cut_token_cap");
}

#[actix_web::test]
async fn an_sse_error_event_of_any_shape_is_an_upstream_failure() {
    let chunk = json!({"id":"c3","object":"chat.completion.chunk","created":1,"model":"gpt-4o",
        "choices":[{"index":0,"delta":{"content":" hi"},"finish_reason":null}]});
    let addr = tollgate_testkit::app::scripted::scripted_upstream(vec![format!(
        "data: {chunk}\n\nevent: error\ndata: {{\"type\":\"overloaded\",\"message\":\"boom\"}}\n\n"
    )
    .into_bytes()])
    .await;
    let app = spawn_gateway(test_config(&format!("http://{addr}")), Default::default()).await;
    let events = app.stream("bob", &chat_body("gpt-4o", true)).await;
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(error_event(&events[1])["code"], "upstream_failed");
    assert!(!events[1].contains("boom"));
    assert_eq!(app.wait_for_logs(1).await[0]["outcome"], "upstream_error");
}
