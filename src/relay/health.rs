//! The upstream circuit as readiness sees it: after [`FAILURES_TO_OPEN`] consecutive failed
//! upstream calls (refused, unreachable, 5xx, timed out before answering) the circuit is open
//! and `/readyz` says not ready, so a load balancer sends traffic to other replicas. It
//! half-opens after [`OPEN_FOR`] (ready again) and the next success closes it. Requests are
//! never refused because of it: each still gets the provider's real answer.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const FAILURES_TO_OPEN: u32 = 5;
pub const OPEN_FOR: Duration = Duration::from_secs(10);

/// Every provider's circuit, numbered as the config lists the providers. A reload keeps the
/// circuit of a provider whose address did not change.
pub type Circuits = Arc<[Arc<UpstreamHealth>]>;

#[derive(Debug)]
pub struct UpstreamHealth {
    epoch: Instant,
    failures: AtomicU32,
    last_failure_ms: AtomicU64,
}

impl Default for UpstreamHealth {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            failures: AtomicU32::new(0),
            last_failure_ms: AtomicU64::new(0),
        }
    }
}

impl UpstreamHealth {
    pub fn record(&self, ok: bool) {
        if ok {
            self.failures.store(0, Ordering::Relaxed);
        } else {
            self.last_failure_ms
                .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn circuit_open(&self) -> bool {
        let since = self
            .epoch
            .elapsed()
            .as_millis()
            .saturating_sub(u128::from(self.last_failure_ms.load(Ordering::Relaxed)));
        self.failures.load(Ordering::Relaxed) >= FAILURES_TO_OPEN && since < OPEN_FOR.as_millis()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_a_success_closes_it() {
        let h = UpstreamHealth::default();
        for _ in 0..FAILURES_TO_OPEN - 1 {
            h.record(false);
        }
        assert!(!h.circuit_open());
        h.record(true);
        for _ in 0..FAILURES_TO_OPEN - 1 {
            h.record(false);
        }
        assert!(!h.circuit_open(), "a success in between resets the count");
        h.record(false);
        assert!(h.circuit_open());
        h.record(true);
        assert!(!h.circuit_open());
    }
}
