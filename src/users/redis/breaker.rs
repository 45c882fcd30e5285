//! The circuit breaker in front of Redis: after `threshold` consecutive failed calls it opens
//! and calls skip Redis (taking the outage path at once instead of waiting for a timeout each);
//! the probe task closes it again once Redis answers and the journal is replayed.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    failures: AtomicU32,
    open: AtomicBool,
}

/// What a reported outcome changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    Opened,
}

impl Breaker {
    pub fn new(threshold: u32) -> Self {
        Self {
            threshold: threshold.max(1),
            failures: AtomicU32::new(0),
            open: AtomicBool::new(false),
        }
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    pub fn success(&self) {
        self.failures.store(0, Ordering::Release);
    }

    pub fn failure(&self) -> Transition {
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures >= self.threshold && !self.open.swap(true, Ordering::AcqRel) {
            Transition::Opened
        } else {
            Transition::None
        }
    }

    /// Closes the circuit; `true` if it was open.
    pub fn close(&self) -> bool {
        self.failures.store(0, Ordering::Release);
        self.open.swap(false, Ordering::AcqRel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_only() {
        let b = Breaker::new(3);
        assert_eq!(b.failure(), Transition::None);
        assert_eq!(b.failure(), Transition::None);
        b.success();
        assert_eq!(b.failure(), Transition::None);
        assert_eq!(b.failure(), Transition::None);
        assert!(!b.is_open());
        assert_eq!(b.failure(), Transition::Opened);
        assert!(b.is_open());
        assert_eq!(b.failure(), Transition::None, "opens once");
        assert!(b.close());
        assert!(!b.is_open());
        assert!(!b.close());
    }
}
