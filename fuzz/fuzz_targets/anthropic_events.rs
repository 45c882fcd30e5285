//! The Anthropic translators: any sequence of stream events (lines `event<TAB>data`) becomes
//! OpenAI payloads the relay can read — JSON objects or `[DONE]`, nothing after an ending — and
//! any reply body becomes a chat completion or `None`; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::relay::anthropic::{completion, StreamTranslator};
use tollgate::relay::chunk::Payload;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut translator = StreamTranslator::new(1);
    let mut out = Vec::new();
    let mut ended = false;
    for line in text.split('\n') {
        let (event, data) = match line.split_once('\t') {
            Some((event, data)) => (Some(event), data),
            None => (None, line),
        };
        let before = out.len();
        translator.translate(event, data, &mut out);
        for payload in &out[before..] {
            assert!(!ended, "a payload after the stream's ending: {payload}");
            if payload == "[DONE]" {
                ended = true;
                continue;
            }
            let value: serde_json::Value =
                serde_json::from_str(payload).expect("every payload is JSON");
            assert!(value.is_object(), "{payload}");
            if matches!(Payload::parse(payload), Payload::Error) {
                ended = true;
            }
        }
    }
    if let Some(reply) = completion(data, 1) {
        assert_eq!(reply["object"], "chat.completion");
    }
});
