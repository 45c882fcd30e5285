//! Reads a streamed response event by event, as a client would.

use super::WAIT;
use futures::StreamExt;
use serde_json::Value;
use std::collections::VecDeque;
use tollgate::relay::sse::SseParser;

pub struct SseReader {
    response: awc::ClientResponse,
    parser: SseParser,
    ready: VecDeque<String>,
    ended: bool,
}

impl SseReader {
    pub fn new(response: awc::ClientResponse) -> Self {
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers().get("content-type").unwrap(),
            "text/event-stream"
        );
        Self {
            response,
            parser: SseParser::new(1 << 20),
            ready: VecDeque::new(),
            ended: false,
        }
    }

    /// The next event's data, or None at the end of the body.
    pub async fn next_data(&mut self) -> Option<String> {
        loop {
            if let Some(data) = self.ready.pop_front() {
                return Some(data);
            }
            if self.ended {
                return None;
            }
            let mut events = Vec::new();
            match tokio::time::timeout(WAIT, self.response.next()).await {
                Err(_) => panic!("no event within {WAIT:?}"),
                Ok(Some(Ok(bytes))) => self.parser.feed(&bytes, &mut events).unwrap(),
                Ok(Some(Err(e))) => panic!("body error: {e}"),
                Ok(None) => {
                    self.parser.finish(&mut events);
                    self.ended = true;
                }
            }
            self.ready.extend(events.into_iter().map(|e| e.data));
        }
    }

    /// Every remaining event's data.
    pub async fn collect(mut self) -> Vec<String> {
        let mut all = Vec::new();
        while let Some(data) = self.next_data().await {
            all.push(data);
        }
        all
    }
}

/// The content deltas of chunk payloads, concatenated.
pub fn content_of(events: &[String]) -> String {
    events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect()
}

/// Number of chunks carrying non-empty content.
pub fn content_chunks(events: &[String]) -> usize {
    events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|c| !c.is_empty())
        })
        .count()
}

/// The parsed error object of an error event.
pub fn error_event(data: &str) -> Value {
    let v: Value = serde_json::from_str(data).unwrap();
    assert!(
        v["error"].is_object(),
        "expected an error event, got {data}"
    );
    v["error"].clone()
}

/// Asserts a stream ended with an error event with `code`, then `[DONE]`.
pub fn assert_error_ending(events: &[String], code: &str) {
    let n = events.len();
    assert!(n >= 2, "{events:?}");
    assert_eq!(events[n - 1], "[DONE]");
    assert_eq!(error_event(&events[n - 2])["code"], code, "{events:?}");
}
