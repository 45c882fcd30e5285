//! Anthropic's native Messages API behind the OpenAI Chat Completions contract: pure translation,
//! no network and no actix.
//!
//! [`request_body`] turns a validated OpenAI chat request into a Messages request body;
//! [`StreamTranslator`] turns the Messages stream's events into the `chat.completion.chunk`
//! payloads an OpenAI provider would have sent, so the relay reads them like any other stream;
//! [`completion`] does the same for a whole (non-streamed) reply. The caller owns the HTTP
//! exchange (headers such as `anthropic-version: ANTHROPIC_VERSION`, the URL, the key).

mod reply;
mod request;
mod stream;

pub use reply::completion;
pub use request::{request_body, DROPPED_PARAMETERS};
pub use stream::StreamTranslator;

/// The `anthropic-version` header value the translation is written against.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// OpenAI's `finish_reason` for an Anthropic `stop_reason`: what an OpenAI model would have
/// reported for the same ending. An unknown or missing reason is a normal `stop`.
fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens" | "model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        // end_turn, stop_sequence, pause_turn, and whatever Anthropic adds next.
        _ => "stop",
    }
}

/// Input tokens as OpenAI counts them (`prompt_tokens`): Anthropic reports the cached parts
/// apart from `input_tokens`; their sum is the prompt.
fn prompt_tokens(input: Option<u64>, cache_creation: Option<u64>, cache_read: Option<u64>) -> u64 {
    input
        .unwrap_or(0)
        .saturating_add(cache_creation.unwrap_or(0))
        .saturating_add(cache_read.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_reasons_map_to_openai_finish_reasons() {
        for (stop, finish) in [
            (Some("end_turn"), "stop"),
            (Some("stop_sequence"), "stop"),
            (Some("pause_turn"), "stop"),
            (Some("max_tokens"), "length"),
            (Some("model_context_window_exceeded"), "length"),
            (Some("tool_use"), "tool_calls"),
            (Some("refusal"), "content_filter"),
            (Some("something_new"), "stop"),
            (None, "stop"),
        ] {
            assert_eq!(finish_reason(stop), finish, "{stop:?}");
        }
    }

    #[test]
    fn prompt_tokens_include_the_cache() {
        assert_eq!(prompt_tokens(Some(3), Some(4), Some(5)), 12);
        assert_eq!(prompt_tokens(None, None, Some(5)), 5);
        assert_eq!(prompt_tokens(Some(u64::MAX), Some(1), None), u64::MAX);
    }
}
