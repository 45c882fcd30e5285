//! The streaming relay loop: one task per stream reads the upstream SSE (an Anthropic stream is
//! translated into OpenAI chunks first), relays each complete event the moment it is complete,
//! counts output tokens, and cuts the stream on the output cap, a spend cap, the deadline, an
//! idle or broken upstream, or a client that left.
//!
//! Output is relayed only within the allowance the request's ticket holds (reserve, then
//! relay): a chunk that needs more first makes the ticket report what was relayed and ask for
//! the next allowance. If the answer falls short of the chunk, a spend cap is reached: the chunk
//! is trimmed to the allowance and the stream ends with `budget_exceeded`, so the client never
//! gets output past a cap, and what it got is what is billed.
//!
//! Until the first content arrives, the frames before it (the role chunk) are held and nothing is
//! committed to the client: a provider that fails by then (no first event within its first-byte
//! timeout, an error event, a broken stream) hands the request to the next model in its
//! fallback chain ([`Attempts::fall_back`]), and the client never sees the failed attempt. Once
//! content has gone out there is no fallback: the stream ends as the endings table says.
//! Whatever the ending, the upstream response is dropped first (closing its connection), the
//! client gets its closing frames, and the task returns a [`Relayed`] summary for its caller to
//! settle and log.

use super::anthropic::StreamTranslator;
use super::attempts::{failed_before_content, Attempts, Started};
use super::chunk::{truncate_chunk, with_cost, Payload, StreamIdentity};
use super::chunk_layout::ChunkReader;
use super::output_filter::{Filtered, OutputFilter};
use super::sse::{encode_data, SseEvent, SseParser, DONE};
use super::upstream::UpstreamResponse;
use super::{failed_before_reply, Answer, Relayed};
use crate::accounting::{AttemptFailure, Outcome, Usage, UsageSource};
use crate::config::UpstreamFormat;
use crate::error::{ApiError, ErrorCode};
use crate::guardrails::RuleHit;
use crate::pricing::{micro_usd_to_usd, Price};
use crate::tokenize::TokenCounter;
use crate::users::{Batch, Ticket};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use std::borrow::Cow;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, Sleep};

/// Longest the closing frames may wait for a slow client.
const TAIL_SEND_TIMEOUT: Duration = Duration::from_secs(1);
/// Once the output cap is reached, how long the upstream may take to send its (token-free)
/// finish, usage and `[DONE]` events before the stream is closed at the cap anyway.
const AFTER_CAP_GRACE: Duration = Duration::from_millis(500);
/// After `[DONE]`, how long and how much the relay reads on to reach the end of the upstream
/// body, so the connection goes back to the pool instead of being closed.
const DRAIN_TIMEOUT: Duration = Duration::from_millis(200);
const DRAIN_MAX_BYTES: usize = 64 * 1024;

/// Everything one stream needs.
pub struct StreamJob {
    /// The reply that started (the first model's, or a fallback's).
    pub reply: Started,
    /// The rest of the request's fallback chain.
    pub attempts: Attempts,
    /// Output tokens this stream may relay (granted `max_tokens` × `n`).
    pub max_output_tokens: u64,
    pub client_wants_usage: bool,
    pub estimated_input_tokens: u64,
    pub started: Instant,
    pub deadline: Instant,
    /// Batch bounds of the allowances the relay asks for.
    pub batch: Batch,
    pub buffer_events: usize,
    /// A client whose buffer stays full this long (it stopped reading) is cut as gone.
    pub client_write_timeout: Duration,
    /// The output guardrails, when any are on.
    pub filter: Option<OutputFilter>,
}

/// Whether the stream opened: `Ok` once its first frame is ready for the client, or the HTTP
/// error to answer instead (it ended before that).
pub type Opened = oneshot::Receiver<Result<(), ApiError>>;

/// A stream's relay, ready to run: the caller drives [`StreamTask::run`] (on the current
/// worker) and ends the request with what it returns.
pub struct StreamTask {
    job: StreamJob,
    tx: mpsc::Sender<Bytes>,
    opened: oneshot::Sender<Result<(), ApiError>>,
    closed_cleanly: Arc<AtomicBool>,
}

/// Prepares a stream: its task, when-the-stream-opened, and the client's body stream; send the
/// body only after `Opened` says `Ok`.
///
/// The body ends cleanly only after the task queued its closing frames. If the task stops
/// without them (a client too slow to take them, a bug), the body yields an error instead, so
/// the connection is aborted: an OpenAI SDK must never mistake a broken stream for a whole one.
pub fn prepare(
    job: StreamJob,
) -> (
    StreamTask,
    Opened,
    impl Stream<Item = Result<Bytes, std::io::Error>>,
) {
    let (tx, mut rx) = mpsc::channel(job.buffer_events.max(1));
    let (opened_tx, opened_rx) = oneshot::channel();
    let closed_cleanly = Arc::new(AtomicBool::new(false));
    let task = StreamTask {
        job,
        tx,
        opened: opened_tx,
        closed_cleanly: closed_cleanly.clone(),
    };
    let mut aborted = false;
    let body = futures::stream::poll_fn(move |cx| match rx.poll_recv(cx) {
        Poll::Ready(Some(frame)) => Poll::Ready(Some(Ok(frame))),
        Poll::Ready(None) if !aborted && !closed_cleanly.load(Ordering::Acquire) => {
            aborted = true;
            Poll::Ready(Some(Err(std::io::Error::other(
                "the relay ended without closing the stream",
            ))))
        }
        Poll::Ready(None) => Poll::Ready(None),
        Poll::Pending => Poll::Pending,
    });
    (task, opened_rx, body)
}

/// Running state of one stream.
struct Relay<'t> {
    tx: mpsc::Sender<Bytes>,
    /// Taken when the first frame goes out (the response is committed) or the stream ends first.
    opened: Option<oneshot::Sender<Result<(), ApiError>>>,
    committed: bool,
    closed_cleanly: Arc<AtomicBool>,
    ticket: &'t mut Ticket,
    counter: TokenCounter,
    max_output_tokens: u64,
    client_wants_usage: bool,
    estimated_input_tokens: u64,
    deadline: Pin<Box<Sleep>>,
    client_write_timeout: Duration,
    batch: Batch,
    started: Instant,
    identity: StreamIdentity,
    /// Reads the provider's payloads (repeat content chunks without a parse).
    reader: ChunkReader,
    output_tokens: u64,
    upstream_usage: Option<Usage>,
    /// The provider's usage-only chunk, held until the ending is known: it goes out (with the
    /// billed cost) only before a normal `[DONE]`.
    held_usage: Option<String>,
    finish_seen: bool,
    filter: Option<OutputFilter>,
    price: Price,
    /// The rule that blocked the output, if one did.
    blocked_by: Option<RuleHit>,
    /// The upstream body reached its end (polling it again would be a bug).
    upstream_ended: bool,
    first_token_at: Option<Instant>,
    /// The request's chain of models (the fallbacks left).
    attempts: Attempts,
    /// The current attempt's dialect: OpenAI chunks as they come, or Anthropic events to
    /// translate.
    translator: Option<StreamTranslator>,
    /// Output has been counted: from here on there is no fallback, and frames go out at once.
    content_started: bool,
    /// Frames before the first content (the role chunk), held until it arrives.
    held_frames: Vec<Bytes>,
    /// Until the provider's first event: when it must have arrived.
    first_event_by: Option<Instant>,
    idle_timeout: Duration,
    /// Why the current attempt failed, when it failed in a way a fallback can cure.
    failure: Option<AttemptFailure>,
    /// The client's error when the stream ends before its first frame with a failure a
    /// fallback could not cure.
    error_before_reply: Option<ApiError>,
}

impl StreamTask {
    /// Relays the stream to its end (moving down the fallback chain while no content has been
    /// relayed), metering through `ticket`; returns how it ended and what it used (the caller
    /// settles).
    pub async fn run(self, ticket: &mut Ticket) -> Relayed {
        let StreamTask {
            job,
            tx,
            opened,
            closed_cleanly,
        } = self;
        let mut relay = Relay {
            tx,
            opened: Some(opened),
            committed: false,
            closed_cleanly,
            ticket,
            counter: job.reply.counter,
            max_output_tokens: job.max_output_tokens,
            client_wants_usage: job.client_wants_usage,
            estimated_input_tokens: job.estimated_input_tokens,
            deadline: Box::pin(tokio::time::sleep_until(job.deadline)),
            client_write_timeout: job.client_write_timeout,
            batch: job.batch,
            started: job.started,
            identity: StreamIdentity::default(),
            reader: ChunkReader::default(),
            output_tokens: 0,
            upstream_usage: None,
            held_usage: None,
            finish_seen: false,
            filter: job.filter,
            price: job.reply.price,
            blocked_by: None,
            upstream_ended: false,
            first_token_at: None,
            attempts: job.attempts,
            translator: None,
            content_started: false,
            held_frames: Vec::new(),
            first_event_by: None,
            idle_timeout: job.reply.idle_timeout,
            failure: None,
            error_before_reply: None,
        };
        let mut reply = job.reply;
        let (end, upstream) = loop {
            relay.begin(&reply);
            let mut upstream = reply.response;
            let end = relay.pump(&mut upstream, reply.max_event_bytes).await;
            let failure = match relay.failure {
                Some(failure) if end == Outcome::UpstreamError && !relay.content_started => failure,
                Some(failure) if end == Outcome::UpstreamError => {
                    relay.attempts.failed_after_content(failure);
                    break (end, Some(upstream));
                }
                _ => break (end, Some(upstream)),
            };
            // Failed before any content: the client has seen nothing; try the next model.
            drop(upstream);
            let error = failed_before_content(failure);
            let next = tokio::select! {
                biased;
                _ = relay.tx.closed() => None,
                next = relay.attempts.fall_back(failure, error, relay.ticket) => Some(next),
            };
            match next {
                Some(Ok(next)) => reply = next,
                Some(Err(error)) => {
                    let end = if error.code == ErrorCode::UpstreamTimeout {
                        Outcome::CutDeadline
                    } else {
                        Outcome::UpstreamError
                    };
                    relay.error_before_reply = Some(error);
                    break (end, None);
                }
                None => break (Outcome::ClientGone, None),
            }
        };
        // A cut drops the upstream response, closing its connection, before anything else; a
        // completed one is read to its end after the client has its last frame, for reuse.
        let finished_upstream = match upstream {
            Some(upstream) if end == Outcome::Completed && !relay.upstream_ended => Some(upstream),
            other => {
                drop(other);
                None
            }
        };
        let end = relay.send_tail(end).await;
        if let Some(upstream) = finished_upstream {
            drain(upstream).await;
        }
        let (usage, usage_source) = match (end, relay.upstream_usage) {
            (Outcome::Completed, Some(reported)) => {
                reconcile(reported.output_tokens, relay.output_tokens, relay.counter);
                (reported, UsageSource::Upstream)
            }
            _ => (
                Usage {
                    input_tokens: job.estimated_input_tokens,
                    output_tokens: relay.output_tokens,
                },
                UsageSource::Counted,
            ),
        };
        let answer = match (end, relay.committed) {
            (Outcome::ClientGone, _) => Answer::Nothing,
            (_, true) => Answer::Stream,
            (_, false) => Answer::Error(
                relay
                    .error_before_reply
                    .take()
                    .unwrap_or_else(|| failed_before_reply(end)),
            ),
        };
        Relayed {
            outcome: end,
            usage,
            usage_source,
            ttft: relay.first_token_at.map(|t| t - relay.started),
            answer,
            blocked_by: relay.blocked_by.take(),
            held_back_chars: relay.filter.as_ref().map(|f| f.delayed_chars() as u64),
            route: relay.attempts.route(),
        }
    }
}

/// Compares the provider's output count with the live count. A gap beyond 2 % (and a couple
/// of tokens) means the tokenizer guess for this model family is off, or the provider counts
/// differently: worth a warning, since live limits act on the live count.
fn reconcile(reported: u64, counted: u64, counter: TokenCounter) {
    let gap = reported.abs_diff(counted);
    if gap > 2 && gap.saturating_mul(50) > reported {
        tracing::warn!(
            reported,
            counted,
            exact_tokenizer = counter.is_exact(),
            "provider's output token count differs from the live count"
        );
    }
}

impl Relay<'_> {
    /// Starts reading a (new) attempt's reply: its dialect, price and timeouts; nothing of a
    /// failed attempt before it is kept.
    fn begin(&mut self, reply: &Started) {
        self.translator = match reply.format {
            UpstreamFormat::OpenAi => None,
            UpstreamFormat::Anthropic => Some(StreamTranslator::new(super::unix_seconds())),
        };
        self.price = reply.price;
        self.counter = reply.counter;
        self.first_event_by = Some(reply.first_event_by);
        self.idle_timeout = reply.idle_timeout;
        self.identity = StreamIdentity::default();
        self.held_frames.clear();
        self.held_usage = None;
        self.upstream_usage = None;
        self.finish_seen = false;
        self.upstream_ended = false;
        self.failure = None;
    }

    /// The current attempt failed in a way a fallback may cure (before any content).
    fn failed(&mut self, failure: AttemptFailure) -> Outcome {
        self.failure = Some(failure);
        Outcome::UpstreamError
    }

    /// What `usage` costs, in USD.
    fn cost_usd(&self, usage: Usage) -> f64 {
        micro_usd_to_usd(self.price.cost_micro_usd(usage))
    }

    async fn pump(&mut self, upstream: &mut UpstreamResponse, max_event_bytes: usize) -> Outcome {
        let end = self.read_upstream(upstream, max_event_bytes).await;
        if end == Outcome::UpstreamError && self.at_cap() {
            // The client already has every token it was granted; however the upstream stops
            // now (ends, stalls, breaks), the stream ended at the cap.
            return Outcome::CutTokenCap;
        }
        end
    }

    fn at_cap(&self) -> bool {
        self.output_tokens >= self.max_output_tokens
    }

    /// Until when the upstream may stay silent now: its first-byte time before its first
    /// event, a short grace once the cap is reached, else the idle timeout.
    fn quiet_until(&self) -> Instant {
        if let Some(by) = self.first_event_by {
            by
        } else if self.at_cap() {
            Instant::now() + AFTER_CAP_GRACE
        } else {
            Instant::now() + self.idle_timeout
        }
    }

    async fn read_upstream(
        &mut self,
        upstream: &mut UpstreamResponse,
        max_event_bytes: usize,
    ) -> Outcome {
        let mut parser = SseParser::new(max_event_bytes);
        let mut events: Vec<SseEvent> = Vec::new();
        let mut translated: Vec<String> = Vec::new();
        // One timer and one watch on the client for the whole stream, re-armed per read
        // (a timer pushed later is not moved in tokio's wheel until it would fire).
        let client = self.tx.clone();
        let client_gone = client.closed();
        tokio::pin!(client_gone);
        let quiet = tokio::time::sleep_until(self.quiet_until());
        tokio::pin!(quiet);
        loop {
            let read = tokio::select! {
                biased;
                _ = &mut client_gone => return Outcome::ClientGone,
                _ = &mut self.deadline => return Outcome::CutDeadline,
                read = upstream.next() => Some(read),
                _ = &mut quiet => None,
            };
            let at_eof = match read {
                None if self.first_event_by.is_some() => {
                    tracing::warn!("upstream sent no first event within its first-byte timeout");
                    return self.failed(AttemptFailure::Timeout);
                }
                None => {
                    if !self.at_cap() {
                        tracing::warn!(
                            idle_ms = self.idle_timeout.as_millis() as u64,
                            "upstream went silent"
                        );
                    }
                    return self.failed(AttemptFailure::Broken);
                }
                Some(Some(Ok(bytes))) => {
                    if let Err(e) = parser.feed(&bytes, &mut events) {
                        tracing::warn!(error = %e, "upstream stream is not usable SSE");
                        return self.failed(AttemptFailure::Unusable);
                    }
                    false
                }
                Some(Some(Err(e))) => {
                    tracing::warn!(error = %e, "upstream stream broke");
                    return self.failed(AttemptFailure::Broken);
                }
                Some(None) => {
                    self.upstream_ended = true;
                    parser.finish(&mut events);
                    true
                }
            };
            if !events.is_empty() {
                self.first_event_by = None;
            }
            for event in events.drain(..) {
                let end = match self.translator.as_mut() {
                    None => self.on_event(event.event.as_deref(), &event.data).await,
                    Some(translator) => {
                        translator.translate(event.event.as_deref(), &event.data, &mut translated);
                        let mut end = None;
                        for data in translated.drain(..) {
                            end = self.on_event(None, &data).await;
                            if end.is_some() {
                                break;
                            }
                        }
                        translated.clear();
                        end
                    }
                };
                if let Some(end) = end {
                    return end;
                }
            }
            let until = self.quiet_until();
            quiet.as_mut().reset(until);
            if at_eof {
                // A provider that ends without `[DONE]` after finishing the reply is done; one
                // that ends mid-reply broke.
                if self.finish_seen {
                    return Outcome::Completed;
                }
                if !self.at_cap() {
                    tracing::warn!("upstream stream ended before the reply finished");
                }
                return self.failed(AttemptFailure::Broken);
            }
        }
    }

    /// Handles one upstream event (OpenAI's shape: `name` is its `event:` field); `Some` ends
    /// the stream.
    async fn on_event(&mut self, name: Option<&str>, data: &str) -> Option<Outcome> {
        let payload = if name == Some("error") {
            Payload::Error
        } else {
            self.reader.parse(data)
        };
        let view = match payload {
            Payload::Done => return Some(Outcome::Completed),
            Payload::Chunk(view) => view,
            Payload::Error => {
                tracing::warn!("upstream sent an error event mid-stream");
                return Some(self.failed(AttemptFailure::ErrorEvent));
            }
            Payload::Malformed => {
                tracing::warn!("upstream sent a malformed chunk");
                return Some(self.failed(AttemptFailure::Unusable));
            }
        };
        self.identity.learn(&view);
        let reported = view.usage();
        if reported.is_some() {
            self.upstream_usage = reported;
        }
        if view.is_usage_only() {
            if self.client_wants_usage {
                self.held_usage = Some(data.to_string());
            }
            return None;
        }
        self.finish_seen |= view.has_finish_reason();
        let tokens = view.output_tokens(&self.counter);
        // The most this chunk may carry: what the output cap leaves, and what the allowance
        // covers, asked for before relaying past it. An allowance short of the chunk means a
        // spend cap is reached: the chunk is trimmed to it and the stream ends there.
        let mut budget = self.max_output_tokens - self.output_tokens;
        let mut cut = Outcome::CutTokenCap;
        let needed = tokens.min(budget);
        if needed > self.ticket.allowance() {
            let allowance = self.ticket.ask(needed, self.batch).await;
            if self.ticket.blocked() {
                budget = 0;
                cut = Outcome::CutBlocked;
            } else if allowance < needed {
                budget = allowance;
                cut = Outcome::CutBudget;
            }
        }
        let (payload, tokens, capped) = if tokens > budget {
            let (rewritten, kept) = truncate_chunk(data, &self.counter, budget);
            (Cow::Owned(rewritten), kept, true)
        } else {
            (Cow::Borrowed(data), tokens, false)
        };
        // From the first content on, the reply belongs to this attempt: no fallback.
        if tokens > 0 && !self.content_started {
            self.content_started = true;
            self.attempts.commit();
        }
        // A usage report inside a content chunk goes out with what it costs (the figure billed).
        let payload = match reported {
            Some(usage) => with_cost(&payload, self.cost_usd(usage)).map_or(payload, Cow::Owned),
            None => payload,
        };
        if !capped || tokens > 0 {
            // Without output guardrails the provider's payload goes out as it came. A payload
            // as the provider wrote it is filtered from the view already read.
            let filtered = self.filter.as_mut().map(|filter| match &payload {
                Cow::Borrowed(data) => filter.filter_view(data, &view),
                Cow::Owned(rewritten) => filter.filter_chunk(rewritten),
            });
            let (send, blocked) = match filtered {
                None => (Some(payload), None),
                Some(Filtered::Unchanged) => (Some(payload), None),
                Some(Filtered::Send(p)) => (Some(Cow::Owned(p)), None),
                Some(Filtered::Skip) => (None, None),
                Some(Filtered::Blocked { payload, rule }) => (payload.map(Cow::Owned), Some(rule)),
            };
            if let Some(p) = send {
                if let Err(end) = self.emit(encode_data(&p)).await {
                    return Some(end);
                }
            }
            if let Some(rule) = blocked {
                self.blocked_by = Some(rule);
                self.count(tokens);
                return Some(Outcome::CutGuardrail);
            }
        }
        if tokens > 0 {
            self.first_token_at.get_or_insert_with(Instant::now);
            self.count(tokens);
        }
        capped.then_some(cut)
    }

    /// Counts `tokens` relayed (within the allowance: they are billed).
    fn count(&mut self, tokens: u64) {
        self.output_tokens += tokens;
        self.ticket.relayed(tokens);
    }

    /// Queues a frame for the client, waiting (bounded by the deadline) while it is slow.
    /// Before the first content the frame is held instead (see the module doc).
    async fn emit(&mut self, frame: Bytes) -> Result<(), Outcome> {
        if !self.content_started {
            self.held_frames.push(frame);
            return Ok(());
        }
        self.commit();
        for held in std::mem::take(&mut self.held_frames) {
            self.send_frame(held).await?;
        }
        self.send_frame(frame).await
    }

    /// Queues one frame. With room in the client's buffer it goes at once (no timer); a full
    /// buffer waits for the client, bounded by the deadline and by the write timeout: a client
    /// that takes nothing for that long stopped reading and is cut as gone.
    async fn send_frame(&mut self, frame: Bytes) -> Result<(), Outcome> {
        let frame = match self.tx.try_send(frame) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(Outcome::ClientGone),
            Err(mpsc::error::TrySendError::Full(frame)) => frame,
        };
        tokio::select! {
            sent = self.tx.send(frame) => sent.map_err(|_| Outcome::ClientGone),
            _ = &mut self.deadline => Err(Outcome::CutDeadline),
            _ = tokio::time::sleep(self.client_write_timeout) => {
                tracing::warn!(
                    write_timeout_secs = self.client_write_timeout.as_secs(),
                    "the client stopped reading its stream: cut as gone"
                );
                Err(Outcome::ClientGone)
            }
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
    async fn send_tail(&mut self, mut end: Outcome) -> Outcome {
        let mut frames: Vec<String> = Vec::new();
        // Text the filter still holds goes out before a normal ending (or blocks it).
        if matches!(end, Outcome::Completed | Outcome::CutTokenCap) {
            if let Some(filter) = self.filter.as_mut() {
                let (tails, blocked) = match filter.finish() {
                    Ok(tails) => (tails, None),
                    Err((tails, rule)) => (tails, Some(rule)),
                };
                for (index, delta) in tails {
                    frames.push(self.identity.delta_chunk(index, delta));
                }
                if let Some(rule) = blocked {
                    self.blocked_by = Some(rule);
                    end = Outcome::CutGuardrail;
                }
            }
        }
        // An error before anything was sent becomes a plain HTTP error (a guardrail block
        // has sent its safe prefix: it always ends inside the stream).
        // A budget stop, too: metering may run before the first frame (an output filter holding
        // text back), and the client must hear `budget_exceeded`, not a provider failure.
        let ends_in_error = end == Outcome::ClientGone || end.stream_error().is_some();
        if ends_in_error && !matches!(end, Outcome::CutGuardrail | Outcome::CutBudget) {
            if let Some(opened) = self.opened.take() {
                let error = self
                    .error_before_reply
                    .clone()
                    .unwrap_or_else(|| failed_before_reply(end));
                let _ = opened.send(Err(error));
                return end;
            }
        }
        self.commit();
        match end {
            Outcome::ClientGone => return end,
            Outcome::Completed => {
                if let Some(data) = self.held_usage.take() {
                    // What is billed: the provider's report when whole, else the live count.
                    let billed = self.upstream_usage.unwrap_or(Usage {
                        input_tokens: self.estimated_input_tokens,
                        output_tokens: self.output_tokens,
                    });
                    let cost = self.cost_usd(billed);
                    frames.push(with_cost(&data, cost).unwrap_or(data));
                }
            }
            Outcome::CutTokenCap => {
                frames.push(self.identity.length_finish_chunk());
                if self.client_wants_usage {
                    let usage = Usage {
                        input_tokens: self.estimated_input_tokens,
                        output_tokens: self.output_tokens,
                    };
                    frames.push(self.identity.usage_chunk(usage, self.cost_usd(usage)));
                }
            }
            _ => frames.extend(end.stream_error().map(|code| code.stream_event())),
        }
        frames.push(DONE.to_string());
        // Frames held before the first content (a reply with none) go out first.
        let held = std::mem::take(&mut self.held_frames);
        for frame in held
            .into_iter()
            .chain(frames.iter().map(|f| encode_data(f)))
        {
            let sent = tokio::time::timeout(TAIL_SEND_TIMEOUT, self.tx.send(frame));
            if !matches!(sent.await, Ok(Ok(()))) {
                return end;
            }
        }
        self.closed_cleanly.store(true, Ordering::Release);
        end
    }
}

/// Reads a completed upstream response to its end (bounded), so its connection is reused.
async fn drain(mut upstream: UpstreamResponse) {
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        let mut read = 0;
        while let Some(Ok(bytes)) = upstream.next().await {
            read += bytes.len();
            if read > DRAIN_MAX_BYTES {
                break;
            }
        }
    })
    .await;
}
