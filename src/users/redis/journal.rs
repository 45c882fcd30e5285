//! Settlements that could not reach Redis, kept in order until the probe task replays them.
//! Replay is safe to repeat: the settle script applies a request id once, so a settlement that
//! did reach Redis before its call timed out is not counted twice.

use crate::accounting::Usage;
use crate::telemetry::Metrics;
use crate::users::book::OpenRequest;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// One settlement, with everything the settle script needs (its open record may be gone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingSettle {
    pub prefix: Arc<str>,
    pub request_id: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cut: bool,
    /// Admitted by this replica while Redis was away: Redis has not counted the request yet.
    pub local: bool,
    pub day: u64,
    pub month: u32,
    pub input_nano_usd: u64,
    pub output_nano_usd: u64,
    pub admitted_ms: u64,
    /// The organisation's day the request is counted in, when an organisation cap is set:
    /// the final cost goes to the organisation's counter too.
    pub org_day: Option<u64>,
}

impl PendingSettle {
    /// The settlement of `open` (admitted as `request_id` under `prefix`) with `usage`, also
    /// in the organisation's counter on `org_day`.
    pub fn of(
        prefix: Arc<str>,
        request_id: String,
        open: &OpenRequest,
        usage: Usage,
        cut: bool,
        local: bool,
        org_day: Option<u64>,
    ) -> Self {
        let (input_nano_usd, output_nano_usd) = open.price.nano_usd_per_token();
        Self {
            prefix,
            request_id,
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            cut,
            local,
            day: open.day,
            month: open.month,
            input_nano_usd,
            output_nano_usd,
            admitted_ms: open.admitted_ms,
            org_day,
        }
    }

    /// The final cost in micro-USD, rounded up (as `Price::cost_micro_usd` and the scripts).
    pub fn cost(&self) -> u64 {
        self.input_tokens
            .saturating_mul(self.input_nano_usd)
            .saturating_add(self.output_tokens.saturating_mul(self.output_nano_usd))
            .div_ceil(1000)
    }

    /// The settle script's numeric arguments, in its ARGV order (after the request id).
    pub fn script_args(&self) -> [u64; 9] {
        [
            self.input_tokens,
            self.output_tokens,
            u64::from(self.cut),
            u64::from(self.local),
            self.day,
            u64::from(self.month),
            self.input_nano_usd,
            self.output_nano_usd,
            self.admitted_ms,
        ]
    }
}

#[derive(Debug)]
pub struct Journal {
    entries: Mutex<VecDeque<PendingSettle>>,
    max: usize,
    metrics: Metrics,
}

impl Journal {
    pub fn new(max: usize, metrics: Metrics) -> Self {
        Self {
            entries: Mutex::new(VecDeque::new()),
            max: max.max(1),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<PendingSettle>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, entry: PendingSettle) {
        let mut entries = self.lock();
        if entries.len() >= self.max {
            entries.pop_front();
            tracing::error!(
                max = self.max,
                "redis.journal_max reached: the oldest unreplayed settlement was dropped"
            );
        }
        entries.push_back(entry);
        self.metrics.set_journal_pending(entries.len());
    }

    /// The oldest entry, taken out (put it back with [`Journal::put_back`] if replay fails).
    pub fn take(&self) -> Option<PendingSettle> {
        let mut entries = self.lock();
        let entry = entries.pop_front();
        self.metrics.set_journal_pending(entries.len());
        entry
    }

    pub fn put_back(&self, entry: PendingSettle) {
        let mut entries = self.lock();
        entries.push_front(entry);
        self.metrics.set_journal_pending(entries.len());
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
