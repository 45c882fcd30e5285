//! Non-streamed requests get the same limits as streams.

use serde_json::{json, Value};
use tollgate::mock::{generated_text, MockOptions};
use tollgate_testkit::app::*;

#[actix_web::test]
async fn a_plain_completion_is_relayed_and_billed_from_the_providers_usage() {
    let app = spawn_app(fast_mock(), |_| {}).await;
    let mut response = app
        .post_chat("alice")
        .send_json(&chat_body("mock-gpt", false))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["content"], generated_text(20));
    let logs = app.wait_for_logs(1).await;
    assert_eq!(logs[0]["outcome"], "completed");
    assert_eq!(logs[0]["output_tokens"], 20);
    assert_eq!(logs[0]["usage_source"], "upstream");
    assert_eq!(logs[0]["stream"], false);
}

#[actix_web::test]
async fn a_reply_longer_than_the_grant_is_trimmed_to_it() {
    let app = spawn_app(
        MockOptions {
            ignore_max_tokens: true,
            ..fast_mock()
        },
        |_| {},
    )
    .await;
    let mut body = chat_body("mock-gpt", false);
    body["max_tokens"] = json!(6);
    let mut response = app.post_chat("alice").send_json(&body).await.unwrap();
    let reply: Value = response.json().await.unwrap();
    assert_eq!(reply["choices"][0]["message"]["content"], generated_text(6));
    assert_eq!(reply["choices"][0]["finish_reason"], "length");
    assert_eq!(reply["usage"]["completion_tokens"], 6);
    let logs = app.wait_for_logs(1).await;
    assert_eq!(logs[0]["outcome"], "cut_token_cap");
    assert_eq!(logs[0]["output_tokens"], 6);
    assert_eq!(app.settled_usage("alice").await["output_tokens"], 6);
}

#[actix_web::test]
async fn a_reply_past_the_deadline_is_504() {
    let app = spawn_app(fast_mock(), |c| c.limits.deadline_secs = 1).await;
    let response = app
        .post_chat("alice")
        .send_json(&chat_body("mock-gpt:fault=stall@3", false))
        .await
        .unwrap();
    assert_eq!(error_code(response).await, (504, "upstream_timeout".into()));
    let logs = app.wait_for_logs(1).await;
    assert_eq!(logs[0]["outcome"], "cut_deadline");
}
