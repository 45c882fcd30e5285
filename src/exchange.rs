//! One request's life after it arrived, and the one place it ends.
//!
//! An [`Exchange`] holds the request's log record from the moment it arrives; admission turns
//! it into an [`Admitted`] exchange that also holds the user's [`Ticket`]. Every ending goes
//! through one of three doors, each consuming the exchange so it cannot end twice:
//! [`Exchange::refuse`] / [`Admitted::refuse`] (refused before the upstream was asked),
//! [`Admitted::finish`] (the relay's [`Relayed`] summary, streamed or whole), and `Drop` (the
//! handler was dropped because the client left while it waited). Each settles the ticket, then
//! writes the log line and records the metrics, in that order, exactly once. An admitted
//! request ends in a task of its own, so a client leaving meanwhile cannot cut the ending
//! short. Lower layers (the relay, the actor) only return values; nothing calls back up into
//! this module or `http`.

use crate::accounting::{Outcome, Usage, UsageSource};
use crate::error::{ApiError, ErrorCode};
use crate::relay::stream::StreamTask;
use crate::relay::{Answer, Relayed, RouteTaken};
use crate::telemetry::{Ended, Metrics, RequestLog};
use crate::users::Ticket;

/// A request that arrived and has not been admitted (or refused) yet.
pub struct Exchange {
    log: RequestLog,
}

/// A request its user's actor admitted: it holds a reservation until it ends.
pub struct Admitted {
    /// Declared first: dropped unfinished, the ticket settles before the log line is written.
    ticket: Ticket,
    log: RequestLog,
}

impl Exchange {
    pub fn new(log: RequestLog) -> Self {
        Self { log }
    }

    /// The log record, to fill in from the pipeline's values as they become known.
    pub fn log(&mut self) -> &mut RequestLog {
        &mut self.log
    }

    /// Ends a request refused before admission: nothing was reserved, nothing is billed.
    pub fn refuse(self, error: &ApiError) {
        self.log.write(&Ended::refused(error.code));
    }

    /// The request was admitted under `ticket`.
    pub fn admitted(mut self, ticket: Ticket) -> Admitted {
        // Dropped from here on, the ticket bills its input estimate: so does the log line.
        self.log.admitted();
        Admitted {
            ticket,
            log: self.log,
        }
    }
}

impl Admitted {
    pub fn ticket(&self) -> &Ticket {
        &self.ticket
    }

    /// Ends an admitted request refused before the upstream was asked: its reservation is
    /// released, nothing is billed. Returns once it has ended (see [`Admitted::finish`]).
    pub async fn refuse(self, error: &ApiError) {
        let code = error.code;
        let ending = actix_rt::spawn(async move {
            self.ticket
                .settle(Usage::default(), Outcome::Rejected)
                .await;
            self.log.write(&Ended::refused(code));
        });
        let _ = ending.await;
    }

    /// Ends the request as the relay summarised it: settles what it used, then logs it. The
    /// ending runs as its own task, awaited here: the caller answers the client after the
    /// settlement (so `/v1/usage` right after a reply shows it), and a client that leaves
    /// meanwhile (dropping the caller) cannot cut the ending short.
    pub async fn finish(self, relayed: Relayed) {
        let _ = actix_rt::spawn(self.end(relayed)).await;
    }

    async fn end(mut self, mut relayed: Relayed) {
        self.ticket.settle(relayed.usage, relayed.outcome).await;
        let route = std::mem::take(&mut relayed.route);
        self.log.routed(route.model, route.price, route.attempts);
        self.log.write(&ended(relayed));
    }

    /// Runs a stream's relay on this worker, metering through the ticket, and finishes the
    /// request when the stream ends, however it ends. The stream counts in
    /// `tollgate_active_streams` until then.
    pub fn relay_stream(mut self, task: StreamTask, metrics: &Metrics) {
        let open = OpenStream::new(metrics);
        actix_rt::spawn(async move {
            let relayed = task.run(&mut self.ticket).await;
            self.end(relayed).await;
            drop(open);
        });
    }
}

/// The summary of a request the upstream refused (or never answered) before any output, after
/// trying `route` (or that could not be written for its provider: the client's error, logged
/// as rejected): nothing is billed.
pub fn upstream_refused(error: ApiError, route: RouteTaken) -> Relayed {
    let outcome = match error.code {
        ErrorCode::UpstreamTimeout => Outcome::CutDeadline,
        ErrorCode::UpstreamFailed | ErrorCode::UpstreamUnavailable => Outcome::UpstreamError,
        // The client's own error, found while writing the request for the provider.
        _ => Outcome::Rejected,
    };
    Relayed {
        outcome,
        usage: Usage::default(),
        usage_source: UsageSource::Counted,
        ttft: None,
        answer: Answer::Error(error),
        blocked_by: None,
        held_back_chars: None,
        route,
    }
}

/// What the log line and the metrics record of a relayed request: the status the client got
/// and the error it was told, derived once from how it was answered.
fn ended(relayed: Relayed) -> Ended {
    let error = match &relayed.answer {
        Answer::Stream => relayed.outcome.stream_error(),
        Answer::Error(error) => Some(error.code),
        Answer::Body | Answer::Nothing => None,
    };
    Ended {
        outcome: relayed.outcome,
        status: relayed.answer.status(),
        error,
        usage: relayed.usage,
        usage_source: relayed.usage_source,
        ttft: relayed.ttft,
        output_blocked: relayed.blocked_by,
        held_back_chars: relayed.held_back_chars,
    }
}

/// Counts a stream in `tollgate_active_streams` while it lives.
struct OpenStream(Metrics);

impl OpenStream {
    fn new(metrics: &Metrics) -> Self {
        metrics.stream_opened();
        Self(metrics.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.stream_closed();
    }
}
