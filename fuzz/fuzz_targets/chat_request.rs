//! The request-body policy: any body is either refused with an error or parsed, limited
//! (message length, history, context budget) and written for an OpenAI and an Anthropic
//! provider; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::config::LimitsConfig;
use tollgate::policy::ChatRequest;
use tollgate::relay::anthropic;
use tollgate::tokenize::TokenCounter;

fuzz_target!(|data: &[u8]| {
    let Ok(mut request) = ChatRequest::parse(data) else {
        return;
    };
    let limits = LimitsConfig {
        max_context_tokens: 200,
        max_history_turns: 4,
        max_message_chars: 500,
        ..LimitsConfig::default()
    };
    let counter = TokenCounter::for_model("mock-gpt");
    if request.enforce(&limits, &counter).is_err() {
        return;
    }
    let _ = request.last_user_text();
    let _ = request.message_texts(true);
    if let Ok(body) = request.upstream_body("m", 16) {
        let value: serde_json::Value = serde_json::from_slice(&body).expect("valid JSON upstream");
        assert_eq!(value["model"], "m");
    }
    if let Ok(body) = anthropic::request_body(request.body(), "claude", 16, request.stream) {
        let value: serde_json::Value = serde_json::from_slice(&body).expect("valid JSON upstream");
        assert_eq!(value["max_tokens"], 16);
    }
});
