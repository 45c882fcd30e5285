//! SSE framing from the provider: whatever the splits, line endings and comments, the client
//! gets the same events, each payload byte-for-byte as the provider wrote it.

use serde_json::json;
use tollgate_testkit::app::scripted::scripted_upstream;
use tollgate_testkit::app::*;

fn chunk(content: &str) -> String {
    json!({"id":"c9","object":"chat.completion.chunk","created":7,"model":"gpt-4o",
           "choices":[{"index":0,"delta":{"content":content},"finish_reason":null}]})
    .to_string()
}

#[actix_web::test]
async fn awkward_framing_is_reassembled_exactly() {
    let payloads = vec![
        chunk("héllo"),
        chunk(" 🦀 crab"),
        chunk(" \u{65e5}\u{672c}"),
        json!({"id":"c9","object":"chat.completion.chunk","created":7,"model":"gpt-4o",
               "choices":[{"index":0,"delta":{},"finish_reason":"stop"}]})
        .to_string(),
    ];
    let mut wire = Vec::new();
    wire.extend_from_slice(b": keep-alive\r\n\r\n");
    wire.extend_from_slice(format!("data: {}\r\n\r\n", payloads[0]).as_bytes());
    wire.extend_from_slice(format!("data:{}\r\r", payloads[1]).as_bytes());
    wire.extend_from_slice(format!("data: {}\n\n", payloads[2]).as_bytes());
    wire.extend_from_slice(format!(": comment\ndata: {}\r\n\r\n", payloads[3]).as_bytes());
    wire.extend_from_slice(b"data: [DONE]"); // no blank line before the close

    // Split inside the crab emoji, inside a CRLF, inside "data:", and byte by byte at the end.
    let crab = wire.windows(4).position(|w| w == "🦀".as_bytes()).unwrap();
    let crlf = wire.windows(2).position(|w| w == b"\r\n").unwrap();
    let mut cuts = vec![crlf + 1, 20, crab + 2, crab + 3];
    cuts.extend(wire.len() - 12..wire.len());
    cuts.sort_unstable();
    cuts.dedup();
    let mut pieces = Vec::new();
    let mut start = 0;
    for cut in cuts {
        pieces.push(wire[start..cut].to_vec());
        start = cut;
    }
    pieces.push(wire[start..].to_vec());

    let addr = scripted_upstream(pieces).await;
    let app = spawn_gateway(test_config(&format!("http://{addr}")), Default::default()).await;
    let events = app.stream("carol", &chat_body("gpt-4o", true)).await;
    let mut expected = payloads.clone();
    expected.push("[DONE]".into());
    assert_eq!(events, expected);

    let logs = app.wait_for_logs(1).await;
    assert_eq!(logs[0]["outcome"], "completed");
    // gpt-4o's real tokenizer on the three deltas.
    let counter = tollgate::tokenize::TokenCounter::for_model("gpt-4o");
    let tokens: u64 = ["héllo", " 🦀 crab", " \u{65e5}\u{672c}"]
        .iter()
        .map(|t| counter.count(t))
        .sum();
    assert_eq!(logs[0]["output_tokens"], tokens);
    assert_eq!(logs[0]["usage_source"], "counted");
}

#[actix_web::test]
async fn a_stream_that_ends_mid_reply_without_done_is_a_failure() {
    let addr =
        scripted_upstream(vec![format!("data: {}\n\n", chunk(" partial")).into_bytes()]).await;
    let app = spawn_gateway(test_config(&format!("http://{addr}")), Default::default()).await;
    let events = app.stream("carol", &chat_body("gpt-4o", true)).await;
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(
        tollgate_testkit::app::sse::error_event(&events[1])["code"],
        "upstream_failed"
    );
    assert_eq!(events[2], "[DONE]");
}

#[actix_web::test]
async fn an_oversized_upstream_event_is_cut_not_buffered() {
    let huge = format!("data: {}", "x".repeat(4096)).into_bytes();
    // Before anything was relayed: a plain 502.
    let addr = scripted_upstream(vec![huge.clone()]).await;
    let mut config = test_config(&format!("http://{addr}"));
    config.upstream.max_event_bytes = 1024;
    let app = spawn_gateway(config, Default::default()).await;
    let response = app
        .post_chat("carol")
        .send_json(&chat_body("gpt-4o", true))
        .await
        .unwrap();
    assert_eq!(error_code(response).await, (502, "upstream_failed".into()));

    // After a chunk was relayed: an error event, then [DONE].
    let first = format!("data: {}\n\n", chunk(" hi")).into_bytes();
    let addr = scripted_upstream(vec![first, huge]).await;
    let mut config = test_config(&format!("http://{addr}"));
    config.upstream.max_event_bytes = 1024;
    let app = spawn_gateway(config, Default::default()).await;
    let events = app.stream("carol", &chat_body("gpt-4o", true)).await;
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(
        tollgate_testkit::app::sse::error_event(&events[1])["code"],
        "upstream_failed"
    );
    assert_eq!(events[2], "[DONE]");
    let logs = app.wait_for_logs(1).await;
    assert_eq!(logs[0]["outcome"], "upstream_error");
    assert_eq!(logs[0]["status"], 200);
    assert_eq!(logs[0]["output_tokens"], 1);
}
