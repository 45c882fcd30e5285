//! The streaming relay loop: one task per stream reads the upstream SSE, relays each complete
//! event the moment it is complete, counts output tokens, meters them to the user's actor, and
//! cuts the stream on the output cap, a stop from the actor, the deadline, an idle or broken
//! upstream, or a client that left. Whatever the ending, the upstream response is dropped first
//! (closing its connection), the client gets its closing frames, and the request is settled and
//! logged exactly once.

use super::chunk::{error_payload, truncate_chunk, Payload, StreamIdentity};
use super::sse::{encode_data, SseEvent, SseParser, DONE};
use super::upstream::UpstreamResponse;
use super::{Finished, StreamEnd};
use crate::accounting::{Usage, UsageSource};
use crate::tokenize::TokenCounter;
use crate::users::{Ticket, Verdict};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use std::borrow::Cow;
use std::convert::Infallible;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, Sleep};

/// Longest the closing frames may wait for a slow client.
const TAIL_SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// Everything one stream needs.
pub struct StreamJob {
    pub upstream: UpstreamResponse,
    pub ticket: Ticket,
    pub counter: TokenCounter,
    /// Output tokens this stream may relay (granted `max_tokens` × `n`).
    pub max_output_tokens: u64,
    pub client_wants_usage: bool,
    pub estimated_input_tokens: u64,
    pub started: Instant,
    pub deadline: Instant,
    pub idle_timeout: Duration,
    pub max_event_bytes: usize,
    pub meter_batch_tokens: u64,
    pub buffer_events: usize,
    /// Called once when the stream has ended, with how it ended and what it used.
    pub on_finish: Box<dyn FnOnce(Finished)>,
}

/// Whether the stream opened: `Ok` once its first frame is ready for the client, or how it
/// ended before that (the client then gets a plain HTTP error instead of a stream).
pub type Opened = oneshot::Receiver<Result<(), StreamEnd>>;

/// Starts the relay task on the current worker. Returns when-the-stream-opened and the client's
/// body stream; send the body only after `Opened` says `Ok`.
pub fn start(job: StreamJob) -> (Opened, impl Stream<Item = Result<Bytes, Infallible>>) {
    let (tx, mut rx) = mpsc::channel(job.buffer_events.max(1));
    let (opened_tx, opened_rx) = oneshot::channel();
    actix_rt::spawn(job.run(tx, opened_tx));
    let body = futures::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|frame| frame.map(Ok)));
    (opened_rx, body)
}

/// Running state of one stream.
struct Relay {
    tx: mpsc::Sender<Bytes>,
    /// Taken when the first frame goes out (the response is committed) or the stream ends first.
    opened: Option<oneshot::Sender<Result<(), StreamEnd>>>,
    committed: bool,
    ticket: Ticket,
    counter: TokenCounter,
    max_output_tokens: u64,
    client_wants_usage: bool,
    estimated_input_tokens: u64,
    deadline: Pin<Box<Sleep>>,
    idle_timeout: Duration,
    meter_batch_tokens: u64,
    started: Instant,
    identity: StreamIdentity,
    output_tokens: u64,
    unreported_tokens: u64,
    upstream_usage: Option<Usage>,
    finish_seen: bool,
    first_token_at: Option<Instant>,
}

impl StreamJob {
    async fn run(self, tx: mpsc::Sender<Bytes>, opened: oneshot::Sender<Result<(), StreamEnd>>) {
        let mut relay = Relay {
            tx,
            opened: Some(opened),
            committed: false,
            ticket: self.ticket,
            counter: self.counter,
            max_output_tokens: self.max_output_tokens,
            client_wants_usage: self.client_wants_usage,
            estimated_input_tokens: self.estimated_input_tokens,
            deadline: Box::pin(tokio::time::sleep_until(self.deadline)),
            idle_timeout: self.idle_timeout,
            meter_batch_tokens: self.meter_batch_tokens,
            started: self.started,
            identity: StreamIdentity::default(),
            output_tokens: 0,
            unreported_tokens: 0,
            upstream_usage: None,
            finish_seen: false,
            first_token_at: None,
        };
        // `pump` owns the upstream response: it is dropped (connection closed) when pump returns.
        let end = relay.pump(self.upstream, self.max_event_bytes).await;
        relay.send_tail(end).await;
        let (usage, usage_source) = match (end, relay.upstream_usage) {
            (StreamEnd::Completed, Some(reported)) => {
                reconcile(reported.output_tokens, relay.output_tokens, relay.counter);
                (reported, UsageSource::Upstream)
            }
            _ => (
                Usage {
                    input_tokens: self.estimated_input_tokens,
                    output_tokens: relay.output_tokens,
                },
                UsageSource::Counted,
            ),
        };
        let ttft = relay.first_token_at.map(|t| t - relay.started);
        let committed = relay.committed;
        relay.ticket.settle(usage, end.outcome()).await;
        (self.on_finish)(Finished {
            end,
            usage,
            usage_source,
            ttft,
            committed,
        });
    }
}

/// Compares the provider's output count with the live count. A gap beyond 2 % (and a couple
/// of tokens) means the tokenizer guess for this model family is off, or the provider counts
/// differently: worth a warning, since live limits act on the live count.
fn reconcile(reported: u64, counted: u64, counter: TokenCounter) {
    let gap = reported.abs_diff(counted);
    if gap > 2 && gap * 50 > reported {
        tracing::warn!(
            reported,
            counted,
            exact_tokenizer = counter.is_exact(),
            "provider's output token count differs from the live count"
        );
    }
}

impl Relay {
    async fn pump(&mut self, mut upstream: UpstreamResponse, max_event_bytes: usize) -> StreamEnd {
        let mut parser = SseParser::new(max_event_bytes);
        let mut events: Vec<SseEvent> = Vec::new();
        loop {
            let read = tokio::select! {
                biased;
                _ = self.tx.closed() => return StreamEnd::ClientGone,
                _ = &mut self.deadline => return StreamEnd::Deadline,
                read = tokio::time::timeout(self.idle_timeout, upstream.next()) => read,
            };
            let at_eof = match read {
                Err(_) => {
                    tracing::warn!(
                        idle_secs = self.idle_timeout.as_secs(),
                        "upstream went silent"
                    );
                    return StreamEnd::UpstreamFailed;
                }
                Ok(Some(Ok(bytes))) => {
                    if let Err(e) = parser.feed(&bytes, &mut events) {
                        tracing::warn!(error = %e, "upstream stream is not usable SSE");
                        return StreamEnd::UpstreamFailed;
                    }
                    false
                }
                Ok(Some(Err(e))) => {
                    tracing::warn!(error = %e, "upstream stream broke");
                    return StreamEnd::UpstreamFailed;
                }
                Ok(None) => {
                    parser.finish(&mut events);
                    true
                }
            };
            for event in events.drain(..) {
                if let Some(end) = self.on_event(&event).await {
                    return end;
                }
            }
            if at_eof {
                // A provider that ends without `[DONE]` after finishing every choice is done;
                // one that ends mid-reply broke.
                return if self.finish_seen {
                    StreamEnd::Completed
                } else {
                    tracing::warn!("upstream stream ended before the reply finished");
                    StreamEnd::UpstreamFailed
                };
            }
        }
    }

    /// Handles one upstream event; `Some` ends the stream.
    async fn on_event(&mut self, event: &SseEvent) -> Option<StreamEnd> {
        let view = match Payload::parse(&event.data) {
            Payload::Done => return Some(StreamEnd::Completed),
            Payload::Chunk(view) => view,
            Payload::Error => {
                tracing::warn!("upstream sent an error event mid-stream");
                return Some(StreamEnd::UpstreamFailed);
            }
            Payload::Malformed => {
                tracing::warn!("upstream sent a malformed chunk");
                return Some(StreamEnd::UpstreamFailed);
            }
        };
        self.identity.learn(&view);
        if let Some(usage) = view.usage() {
            self.upstream_usage = Some(usage);
        }
        if view.is_usage_only() && !self.client_wants_usage {
            return None;
        }
        self.finish_seen |= view.has_finish_reason();
        let tokens = view.output_tokens(&self.counter);
        let budget = self.max_output_tokens - self.output_tokens;
        let (payload, tokens, capped) = if tokens > budget {
            let (rewritten, kept) = truncate_chunk(&event.data, &self.counter, budget);
            (Cow::Owned(rewritten), kept, true)
        } else {
            (Cow::Borrowed(event.data.as_str()), tokens, false)
        };
        if !capped || tokens > 0 {
            if let Err(end) = self.emit(encode_data(&payload)).await {
                return Some(end);
            }
        }
        if tokens > 0 {
            self.first_token_at.get_or_insert_with(Instant::now);
            self.output_tokens += tokens;
            self.unreported_tokens += tokens;
        }
        if self.unreported_tokens >= self.meter_batch_tokens {
            let batch = std::mem::take(&mut self.unreported_tokens);
            if self.ticket.meter(batch).await == Verdict::StopBudget {
                return Some(StreamEnd::BudgetExceeded);
            }
        }
        capped.then_some(StreamEnd::TokenCap)
    }

    /// Queues a frame for the client, waiting (bounded by the deadline) while it is slow.
    async fn emit(&mut self, frame: Bytes) -> Result<(), StreamEnd> {
        self.commit();
        tokio::select! {
            sent = self.tx.send(frame) => sent.map_err(|_| StreamEnd::ClientGone),
            _ = &mut self.deadline => Err(StreamEnd::Deadline),
        }
    }

    /// Tells the handler the stream is open: from here on, endings go into the stream.
    fn commit(&mut self) {
        if let Some(opened) = self.opened.take() {
            let _ = opened.send(Ok(()));
            self.committed = true;
        }
    }

    /// The frames that close the stream for the client. An error before anything was sent is
    /// handed to the handler instead, which answers it with a plain HTTP error.
    async fn send_tail(&mut self, end: StreamEnd) {
        let mut frames: Vec<String> = Vec::new();
        if end.is_error() {
            if let Some(opened) = self.opened.take() {
                let _ = opened.send(Err(end));
                return;
            }
        }
        self.commit();
        match end {
            StreamEnd::ClientGone => return,
            StreamEnd::Completed => {}
            StreamEnd::TokenCap => {
                frames.push(self.identity.length_finish_chunk());
                if self.client_wants_usage {
                    frames.push(self.identity.usage_chunk(Usage {
                        input_tokens: self.estimated_input_tokens,
                        output_tokens: self.output_tokens,
                    }));
                }
            }
            StreamEnd::Deadline | StreamEnd::UpstreamFailed | StreamEnd::BudgetExceeded => {
                let (message, kind, code) = end.client_error();
                frames.push(error_payload(message, kind, code));
            }
        }
        frames.push(DONE.to_string());
        for frame in frames {
            let sent = tokio::time::timeout(TAIL_SEND_TIMEOUT, self.tx.send(encode_data(&frame)));
            if !matches!(sent.await, Ok(Ok(()))) {
                return;
            }
        }
    }
}
