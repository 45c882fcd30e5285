//! What one mock provider instance received and how each reply ended, for tests to assert on.
//!
//! The recorder is per [`super::MockServer`], never global. Requests are kept in arrival order in
//! a `std::sync::Mutex` (never held across an await); a `tokio::sync::watch` counter wakes waiters
//! whenever anything changes. Memory is bounded: a recorder keeps the most recent `limit`
//! requests (a ring; the mock's default is [`super::DEFAULT_KEPT_REQUESTS`]) whose bodies hold at
//! most [`KEPT_BODY_BYTES`] together (so a few huge bodies cannot fill it either), and a request
//! keeps its arrival number for good, so a test may ask for request `i` whatever was dropped
//! before it.
//! Tests that assert on everything they sent keep every request (`limit` = `None`). [`EndRecorder`] is how a reply reports its end: it must live inside the
//! response body stream's state, so that dropping the body (the peer went away) records
//! [`StreamEnd::Dropped`].

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// How a reply ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// The mock produced the reply's last item: `[DONE]`, a fault's error event or abort, a
    /// non-streamed body, or an early error response.
    Completed { at: Instant, tokens_sent: u32 },
    /// The reply was dropped before its end, because the peer closed the connection.
    Dropped { at: Instant, tokens_sent: u32 },
}

impl StreamEnd {
    /// When the reply ended.
    pub fn at(&self) -> Instant {
        match self {
            Self::Completed { at, .. } | Self::Dropped { at, .. } => *at,
        }
    }

    /// Output tokens sent before the end (for non-streamed replies: tokens in the body): one per
    /// text token, plus a tool call's argument tokens once all its arguments are out.
    pub fn tokens_sent(&self) -> u32 {
        match self {
            Self::Completed { tokens_sent, .. } | Self::Dropped { tokens_sent, .. } => *tokens_sent,
        }
    }
}

/// One request as the mock received it.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedRequest {
    /// Header names lower-cased, values lossily decoded as UTF-8 (order not significant).
    pub headers: Vec<(String, String)>,
    /// The parsed JSON body, or the raw body as a JSON string when it was not JSON.
    pub body: serde_json::Value,
    /// How the reply ended; `None` while it is still running.
    pub end: Option<StreamEnd>,
    /// The client's address: equal ports on two requests mean one reused connection.
    pub peer: Option<std::net::SocketAddr>,
    /// When each streamed text token was handed to the connection (the first
    /// [`MAX_TOKEN_TIMES`] of them): what latency tests measure the gateway against.
    pub token_times: Vec<Instant>,
}

/// Token send times kept per request (bounds the recorder's memory in long load runs).
pub const MAX_TOKEN_TIMES: usize = 4096;

/// Request body bytes (as received) a bounded recorder keeps at most, over all the requests it
/// keeps: older requests are dropped to stay within it (the newest is always kept). Bodies are
/// kept parsed, which takes up to about 16 times their size (a body of `[0,0,…]`), so a
/// bounded recorder holds at most about 64 MiB of them, however large the bodies it is sent.
pub const KEPT_BODY_BYTES: usize = 4 << 20;

impl RecordedRequest {
    /// The first value of header `name` (give it lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Requests received by one mock instance, in arrival order.
#[derive(Debug)]
pub struct MockRecorder {
    kept: Mutex<Kept>,
    changes: watch::Sender<u64>,
}

/// The requests kept, and how many older ones were dropped to keep within the limit.
#[derive(Debug)]
struct Kept {
    requests: VecDeque<RecordedRequest>,
    /// The size of each kept request's body as received, in the same order.
    body_sizes: VecDeque<usize>,
    /// Their sum.
    body_bytes: usize,
    /// Requests dropped from the front: the first kept one is request number `dropped`.
    dropped: usize,
    /// Most requests kept (and [`KEPT_BODY_BYTES`] of their bodies); `None` = every one.
    limit: Option<usize>,
}

impl Kept {
    /// Requests received so far, dropped ones included.
    fn received(&self) -> usize {
        self.dropped + self.requests.len()
    }

    /// Request number `index`, unless it was dropped (or has not arrived).
    fn get(&self, index: usize) -> Option<&RecordedRequest> {
        self.requests.get(index.checked_sub(self.dropped)?)
    }

    fn get_mut(&mut self, index: usize) -> Option<&mut RecordedRequest> {
        self.requests.get_mut(index.checked_sub(self.dropped)?)
    }

    /// Keeps `request`, whose body was `body_bytes` long, dropping the oldest ones beyond the
    /// bounds.
    fn push(&mut self, request: RecordedRequest, body_bytes: usize) {
        self.requests.push_back(request);
        self.body_sizes.push_back(body_bytes);
        self.body_bytes = self.body_bytes.saturating_add(body_bytes);
        let Some(limit) = self.limit else {
            return;
        };
        while self.requests.len() > limit
            || (self.body_bytes > KEPT_BODY_BYTES && self.requests.len() > 1)
        {
            self.requests.pop_front();
            let size = self.body_sizes.pop_front().unwrap_or(0);
            self.body_bytes = self.body_bytes.saturating_sub(size);
            self.dropped += 1;
        }
    }
}

/// Keeps every request (the recorder of tests that assert on all they sent).
impl Default for MockRecorder {
    fn default() -> Self {
        Self::keeping(None)
    }
}

impl MockRecorder {
    /// A recorder keeping the most recent `limit` requests (`None`: every one).
    pub fn keeping(limit: Option<usize>) -> Self {
        Self {
            kept: Mutex::new(Kept {
                requests: VecDeque::new(),
                body_sizes: VecDeque::new(),
                body_bytes: 0,
                dropped: 0,
                limit,
            }),
            changes: watch::Sender::new(0),
        }
    }

    /// A snapshot of the requests kept (every one, unless the recorder is bounded), in arrival
    /// order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.iter().cloned().collect()
    }

    /// Requests received so far, including any no longer kept.
    pub fn received(&self) -> usize {
        self.lock().received()
    }

    /// Waits until at least `n` requests have arrived; false on timeout.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |kept| (kept.received() >= n).then_some(()))
            .await
            .is_some()
    }

    /// Waits until request number `index` (0-based, in arrival order) has ended and returns
    /// how; `None` on timeout (including when that request never arrives, or is no longer kept).
    pub async fn wait_for_end(&self, index: usize, timeout: Duration) -> Option<StreamEnd> {
        self.wait_until(timeout, |kept| kept.get(index).and_then(|r| r.end))
            .await
    }

    fn token_sent(&self, index: usize, at: Instant) {
        if let Some(request) = self.lock().get_mut(index) {
            if request.token_times.len() < MAX_TOKEN_TIMES {
                request.token_times.push(at);
            }
        }
    }

    /// Records a new request and returns the guard that will record its end.
    #[cfg(test)]
    pub(crate) fn start(
        self: &Arc<Self>,
        headers: Vec<(String, String)>,
        body: serde_json::Value,
    ) -> EndRecorder {
        let size = body.to_string().len();
        self.start_from(None, headers, body, size)
    }

    /// Records a new request from `peer`, whose body was `body_bytes` long as received, and
    /// returns the guard that will record its end.
    pub(crate) fn start_from(
        self: &Arc<Self>,
        peer: Option<std::net::SocketAddr>,
        headers: Vec<(String, String)>,
        body: serde_json::Value,
        body_bytes: usize,
    ) -> EndRecorder {
        let index = {
            let mut kept = self.lock();
            kept.push(
                RecordedRequest {
                    headers,
                    body,
                    end: None,
                    peer,
                    token_times: Vec::new(),
                },
                body_bytes,
            );
            kept.received() - 1
        };
        self.changed();
        EndRecorder {
            recorder: Arc::clone(self),
            index,
            tokens_sent: 0,
            ended: false,
        }
    }

    fn finish(&self, index: usize, end: StreamEnd) {
        if let Some(request) = self.lock().get_mut(index) {
            request.end.get_or_insert(end);
        }
        self.changed();
    }

    fn changed(&self) {
        self.changes
            .send_modify(|version| *version = version.wrapping_add(1));
    }

    /// Polls `check` on every change until it returns `Some`, or `timeout` passes.
    async fn wait_until<T>(
        &self,
        timeout: Duration,
        check: impl Fn(&Kept) -> Option<T>,
    ) -> Option<T> {
        let mut changes = self.changes.subscribe();
        let wait = async {
            loop {
                if let Some(found) = check(&self.lock()) {
                    return Some(found);
                }
                // The sender lives in `self`, so this only fails if `self` is gone.
                changes.changed().await.ok()?;
            }
        };
        tokio::time::timeout(timeout, wait).await.ok().flatten()
    }

    /// A poisoned lock only means a panic elsewhere mid-push; the data is still usable.
    fn lock(&self) -> MutexGuard<'_, Kept> {
        self.kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Records the end of one reply: [`StreamEnd::Completed`] via [`EndRecorder::complete`], or
/// [`StreamEnd::Dropped`] when dropped before that.
#[derive(Debug)]
pub(crate) struct EndRecorder {
    recorder: Arc<MockRecorder>,
    index: usize,
    tokens_sent: u32,
    ended: bool,
}

impl EndRecorder {
    /// Counts one more content token sent, and when.
    pub(crate) fn token_sent(&mut self) {
        self.tokens_sent = self.tokens_sent.saturating_add(1);
        self.recorder.token_sent(self.index, Instant::now());
    }

    /// Counts `tokens` more output tokens sent (a tool call's arguments).
    pub(crate) fn add_tokens_sent(&mut self, tokens: u32) {
        self.tokens_sent = self.tokens_sent.saturating_add(tokens);
    }

    /// Output tokens sent so far.
    pub(crate) fn tokens_sent(&self) -> u32 {
        self.tokens_sent
    }

    /// Sets the token count directly (a non-streamed reply sends them all at once).
    pub(crate) fn set_tokens_sent(&mut self, tokens: u32) {
        self.tokens_sent = tokens;
    }

    /// Records that the reply reached its end.
    pub(crate) fn complete(&mut self) {
        self.end(|at, tokens_sent| StreamEnd::Completed { at, tokens_sent });
    }

    fn end(&mut self, make: impl FnOnce(Instant, u32) -> StreamEnd) {
        if !self.ended {
            self.ended = true;
            let end = make(Instant::now(), self.tokens_sent);
            self.recorder.finish(self.index, end);
        }
    }
}

impl Drop for EndRecorder {
    fn drop(&mut self) {
        self.end(|at, tokens_sent| StreamEnd::Dropped { at, tokens_sent });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SHORT: Duration = Duration::from_millis(50);

    #[tokio::test]
    async fn records_in_order_and_completes() {
        let recorder = Arc::new(MockRecorder::default());
        let headers = vec![("x-a".to_owned(), "1".to_owned())];
        let mut first = recorder.start(headers, json!({"n": 1}));
        let _second = recorder.start(Vec::new(), json!("not json"));
        assert!(recorder.wait_for_requests(2, SHORT).await);
        assert!(!recorder.wait_for_requests(3, SHORT).await);
        assert_eq!(recorder.wait_for_end(0, SHORT).await, None);

        first.token_sent();
        first.token_sent();
        first.complete();
        drop(first);
        let end = recorder.wait_for_end(0, SHORT).await;
        assert!(matches!(
            end,
            Some(StreamEnd::Completed { tokens_sent: 2, .. })
        ));
        let requests = recorder.requests();
        assert_eq!(requests[0].header("x-a"), Some("1"));
        assert_eq!(requests[1].body, json!("not json"));
        assert_eq!(requests[1].end, None);
    }

    #[tokio::test]
    async fn dropping_an_unfinished_guard_records_dropped_and_wakes_waiters() {
        let recorder = Arc::new(MockRecorder::default());
        let mut guard = recorder.start(Vec::new(), json!({}));
        guard.token_sent();
        let waiter = {
            let recorder = Arc::clone(&recorder);
            tokio::spawn(async move { recorder.wait_for_end(0, Duration::from_secs(5)).await })
        };
        tokio::task::yield_now().await;
        drop(guard);
        let end = waiter.await.ok().flatten();
        assert!(matches!(
            end,
            Some(StreamEnd::Dropped { tokens_sent: 1, .. })
        ));
    }

    #[tokio::test]
    async fn a_bounded_recorder_keeps_the_most_recent_requests_by_their_arrival_numbers() {
        let recorder = Arc::new(MockRecorder::keeping(Some(3)));
        let mut guards: Vec<EndRecorder> = (0..5)
            .map(|i| recorder.start(Vec::new(), json!({ "n": i })))
            .collect();
        let kept: Vec<_> = recorder
            .requests()
            .iter()
            .map(|r| r.body["n"].clone())
            .collect();
        assert_eq!(kept, [json!(2), json!(3), json!(4)]);
        assert_eq!(recorder.received(), 5);
        assert!(recorder.wait_for_requests(5, SHORT).await);
        // A dropped request's end goes nowhere; a kept one's is recorded under its number.
        guards[0].complete();
        guards[4].token_sent();
        guards[4].complete();
        assert_eq!(recorder.wait_for_end(0, SHORT).await, None);
        assert!(matches!(
            recorder.wait_for_end(4, SHORT).await,
            Some(StreamEnd::Completed { tokens_sent: 1, .. })
        ));
        // Thousands more stay within the bound.
        for i in 0..5000 {
            guards.push(recorder.start(Vec::new(), json!({ "n": i })));
        }
        assert_eq!(recorder.requests().len(), 3);
        assert_eq!(recorder.received(), 5005);
    }

    #[tokio::test]
    async fn waiting_for_a_request_that_never_comes_times_out() {
        let recorder = MockRecorder::default();
        assert_eq!(recorder.wait_for_end(3, SHORT).await, None);
    }
}
