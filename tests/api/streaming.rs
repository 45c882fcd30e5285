//! Streams that complete: relayed as generated, unchanged, with the right upstream request.

use serde_json::{json, Value};
use tollgate::mock::{generated_text, MockOptions};
use tollgate_testkit::app::sse::{content_chunks, content_of, SseReader};
use tollgate_testkit::app::*;

#[actix_web::test]
async fn first_chunk_reaches_the_client_while_the_mock_is_still_generating() {
    let app = spawn_app(
        MockOptions {
            tokens: 30,
            tokens_per_second: 20.0,
            ..fast_mock()
        },
        |_| {},
    )
    .await;
    let response = app
        .post_chat("alice")
        .send_json(&chat_body("mock-gpt", true))
        .await
        .unwrap();
    let mut sse = SseReader::new(response);
    let mut first_content = None;
    while first_content.is_none() {
        let data = sse.next_data().await.unwrap();
        first_content = content_of(&[data]).chars().next();
    }
    let request = &app.recorder.requests()[0];
    assert!(
        request.end.is_none(),
        "the mock had already finished its stream when the first token arrived: {:?}",
        request.end
    );
    let rest = sse.collect().await;
    assert_eq!(rest.last().map(String::as_str), Some("[DONE]"));
}

#[actix_web::test]
async fn relays_the_mocks_stream_unchanged_and_bills_its_usage() {
    let app = spawn_app(fast_mock(), |_| {}).await;
    let mut body = chat_body("mock-gpt", true);
    body["stream_options"] = json!({"include_usage": true});
    let response = app.post_chat("alice").send_json(&body).await.unwrap();
    assert_eq!(
        response.headers().get("x-tollgate-max-tokens").unwrap(),
        "1000"
    );
    assert!(response.headers().contains_key("x-request-id"));
    let events = SseReader::new(response).collect().await;

    // role chunk + 20 content chunks + finish chunk + usage chunk + [DONE]
    assert_eq!(events.len(), 24, "{events:#?}");
    assert_eq!(content_of(&events), generated_text(20));
    assert_eq!(content_chunks(&events), 20);
    let finish: Value = serde_json::from_str(&events[21]).unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let usage: Value = serde_json::from_str(&events[22]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 20);
    assert_eq!(events[23], "[DONE]");

    let logs = app.wait_for_logs(1).await;
    assert_eq!(logs[0]["outcome"], "completed");
    assert_eq!(logs[0]["output_tokens"], 20);
    assert_eq!(logs[0]["usage_source"], "upstream");
    assert_eq!(logs[0]["stream"], true);
    let usage = app.settled_usage("alice").await;
    assert_eq!(usage["output_tokens"], 20);
    assert_eq!(usage["requests"], 1);
}

#[actix_web::test]
async fn usage_chunk_is_withheld_from_clients_that_did_not_ask_for_it() {
    let app = spawn_app(fast_mock(), |_| {}).await;
    let events = app.stream("alice", &chat_body("mock-gpt", true)).await;
    assert_eq!(events.len(), 23, "role + 20 + finish + [DONE]: {events:#?}");
    assert!(events.iter().all(|e| !e.contains("\"usage\":{")));
    // The upstream was still asked for usage, so billing has the provider's numbers.
    let sent = &app.recorder.requests()[0].body;
    assert_eq!(sent["stream_options"]["include_usage"], true);
    let logs = app.wait_for_logs(1).await;
    assert_eq!(logs[0]["usage_source"], "upstream");
}

#[actix_web::test]
async fn upstream_gets_its_own_key_an_explicit_cap_and_never_the_client_token() {
    let app = spawn_app(fast_mock(), |c| c.limits.default_max_tokens = 321).await;
    let token = app.token("alice");
    let response = app
        .client
        .post(format!("{}/v1/chat/completions", app.base))
        .bearer_auth(&token)
        .send_json(&chat_body("mock-gpt", true))
        .await
        .unwrap();
    assert_eq!(
        response.headers().get("x-tollgate-max-tokens").unwrap(),
        "321"
    );
    SseReader::new(response).collect().await;
    let request = &app.recorder.requests()[0];
    assert_eq!(
        request.header("authorization"),
        Some(format!("Bearer {UPSTREAM_KEY}").as_str())
    );
    assert!(request.headers.iter().all(|(_, v)| !v.contains(&token)));
    assert_eq!(request.body["max_tokens"], 321);
    // After the default canary's system message, the client's message as it sent it.
    assert_eq!(request.body["messages"][0]["role"], "system");
    assert_eq!(request.body["messages"][1]["content"], "Say something.");

    let mut capped = chat_body("mock-gpt", false);
    capped["max_tokens"] = json!(5);
    let response = app.post_chat("alice").send_json(&capped).await.unwrap();
    assert_eq!(
        response.headers().get("x-tollgate-max-tokens").unwrap(),
        "5"
    );
    assert_eq!(app.recorder.requests()[1].body["max_tokens"], 5);
    assert!(app.recorder.requests()[1]
        .body
        .get("stream_options")
        .is_none());
}

#[actix_web::test]
async fn log_line_matches_the_response_and_holds_no_prompt_text() {
    let app = spawn_app(fast_mock(), |_| {}).await;
    let mut body = chat_body("mock-gpt", true);
    body["messages"][0]["content"] = json!("secret-sentinel-7731 please");
    let response = app
        .post_chat("alice")
        .insert_header(("x-session-id", "sess-1"))
        .insert_header(("x-tollgate-feature", "code_review"))
        .send_json(&body)
        .await
        .unwrap();
    let request_id = response
        .headers()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    SseReader::new(response).collect().await;
    let logs = app.wait_for_logs(1).await;
    let line = &logs[0];
    assert_eq!(line["request_id"], request_id.as_str());
    assert_eq!(line["user_id"], "alice");
    assert_eq!(line["plan"], "pro");
    assert_eq!(line["feature"], "code_review");
    assert_eq!(line["session_id"], "sess-1");
    assert_eq!(line["model"], "mock-gpt");
    assert_eq!(line["status"], 200);
    assert_eq!(line["prompt_hash"].as_str().unwrap().len(), 64);
    for field in [
        "input_tokens_estimated",
        "output_tokens",
        "total_tokens",
        "cost_usd",
        "latency_ms",
        "ttft_ms",
    ] {
        assert!(line[field].is_number(), "{field} in {line}");
    }
    // mock-gpt costs $2.50 / $10.00 per million tokens.
    let input = line["input_tokens"].as_u64().unwrap();
    let expected_micro = (input * 2500 + 20 * 10_000).div_ceil(1000);
    assert_eq!(
        line["cost_usd"].as_f64().unwrap(),
        expected_micro as f64 / 1e6
    );
    assert!(!app.logs.lines()[0].contains("secret-sentinel"));
}

#[actix_web::test]
async fn completed_streams_hand_their_upstream_connection_back_for_reuse() {
    let app = spawn_app(fast_mock(), |_| {}).await;
    for _ in 0..3 {
        let response = app
            .post_chat("alice")
            .send_json(&chat_body("mock-gpt", true))
            .await
            .unwrap();
        SseReader::new(response).collect().await;
        app.recorder
            .wait_for_end(app.recorder.requests().len() - 1, WAIT)
            .await
            .unwrap();
    }
    let peers: Vec<_> = app.recorder.requests().iter().map(|r| r.peer).collect();
    assert!(peers[0].is_some());
    assert!(
        peers.iter().all(|p| *p == peers[0]),
        "each stream opened a new upstream connection: {peers:?}"
    );
}

#[actix_web::test]
async fn a_slow_first_token_is_not_mistaken_for_an_idle_upstream() {
    let app = spawn_app(
        MockOptions {
            first_token_delay_ms: 1_500,
            ..fast_mock()
        },
        |c| c.upstream.idle_timeout_secs = 1,
    )
    .await;
    let events = app.stream("alice", &chat_body("mock-gpt", true)).await;
    assert_eq!(content_chunks(&events), 20);
    assert_eq!(app.wait_for_logs(1).await[0]["outcome"], "completed");
}

#[actix_web::test]
async fn non_streamed_requests_do_not_carry_stream_options_upstream() {
    let app = spawn_app(fast_mock(), |_| {}).await;
    let mut body = chat_body("mock-gpt", false);
    body["stream_options"] = json!({"include_usage": true});
    let response = app.post_chat("alice").send_json(&body).await.unwrap();
    assert_eq!(response.status(), 200);
    let sent = &app.recorder.requests()[0].body;
    assert!(sent.get("stream_options").is_none(), "{sent}");
}
