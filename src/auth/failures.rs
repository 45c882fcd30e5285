//! The per-address limit on authentication failures (`auth.max_failures_per_minute`): an
//! address whose requests failed authentication that many times within a minute is refused
//! (`429 auth_rate_limited`, `Retry-After`) until its minute ends, without its credentials being
//! looked at, so a flood of guessed tokens costs one table lookup each and teaches nothing.
//!
//! Addresses are IPv4 addresses or IPv6 /64 prefixes (one host's share of an IPv6 network).
//! Memory is bounded: at most `auth.max_tracked_addresses` are tracked; when the table is full,
//! ended windows are swept, and a new address that still finds no room is not tracked (it gets
//! plain `401`s) rather than evicting one that is blocked.

use crate::config::AuthConfig;
use crate::error::{ApiError, ErrorCode};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// The window failures are counted in.
const WINDOW: Duration = Duration::from_secs(60);

/// Failures per client address, shared by every worker.
#[derive(Debug)]
pub struct FailureLimiter {
    /// Failures allowed per window; 0 = no limit (a reload may change both).
    max_failures: AtomicU32,
    max_addresses: AtomicUsize,
    table: Mutex<HashMap<AddressKey, Window>>,
}

/// An IPv4 address, or the /64 prefix of an IPv6 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum AddressKey {
    V4(u32),
    V6(u64),
}

impl From<IpAddr> for AddressKey {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => AddressKey::V4(v4.into()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddressKey::V4(v4.into()),
                None => AddressKey::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

impl Window {
    fn ended(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.started) >= WINDOW
    }
}

impl FailureLimiter {
    pub fn new(config: &AuthConfig) -> Self {
        Self {
            max_failures: AtomicU32::new(config.max_failures_per_minute),
            max_addresses: AtomicUsize::new(config.max_tracked_addresses),
            table: Mutex::new(HashMap::new()),
        }
    }

    /// Applies a reloaded config's limits; the addresses' windows carry on.
    pub fn reconfigure(&self, config: &AuthConfig) {
        self.max_failures
            .store(config.max_failures_per_minute, Ordering::Relaxed);
        self.max_addresses
            .store(config.max_tracked_addresses, Ordering::Relaxed);
    }

    fn max_failures(&self) -> u32 {
        self.max_failures.load(Ordering::Relaxed)
    }

    fn max_addresses(&self) -> usize {
        self.max_addresses.load(Ordering::Relaxed)
    }

    /// Refuses an address that used up its failures in the current window.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), ApiError> {
        if self.max_failures() == 0 {
            return Ok(());
        }
        let mut table = self.lock();
        let key = AddressKey::from(ip);
        let Some(window) = table.get(&key).copied() else {
            return Ok(());
        };
        if window.ended(now) {
            table.remove(&key);
            return Ok(());
        }
        if window.failures < self.max_failures() {
            return Ok(());
        }
        let left = WINDOW.saturating_sub(now.saturating_duration_since(window.started));
        Err(ApiError::new(
            ErrorCode::AuthRateLimited,
            "too many failed authentications from this address; retry later",
        )
        .retry_after(left.as_secs_f64().ceil().max(1.0) as u64))
    }

    /// Counts one failed authentication from `ip`.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        if self.max_failures() == 0 {
            return;
        }
        let mut table = self.lock();
        let key = AddressKey::from(ip);
        if !table.contains_key(&key) && table.len() >= self.max_addresses() {
            table.retain(|_, window| !window.ended(now));
            if table.len() >= self.max_addresses() {
                return;
            }
        }
        let window = table.entry(key).or_insert(Window {
            started: now,
            failures: 0,
        });
        if window.ended(now) {
            *window = Window {
                started: now,
                failures: 0,
            };
        }
        window.failures = window.failures.saturating_add(1);
    }

    /// Addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.lock().len()
    }

    /// A poisoned lock only means a panic elsewhere mid-update; the counts are still usable.
    fn lock(&self) -> MutexGuard<'_, HashMap<AddressKey, Window>> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(max_failures: u32, max_addresses: usize) -> FailureLimiter {
        FailureLimiter::new(&AuthConfig {
            max_failures_per_minute: max_failures,
            max_tracked_addresses: max_addresses,
            ..AuthConfig::default()
        })
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_address_is_refused_after_its_failures_until_its_minute_ends() {
        let limits = limiter(3, 100);
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            assert!(limits.check(a, t0).is_ok());
            limits.failed(a, t0);
        }
        let refused = limits.check(a, t0 + Duration::from_secs(20)).unwrap_err();
        assert_eq!(refused.code, ErrorCode::AuthRateLimited);
        assert_eq!(refused.retry_after_secs, Some(40));
        // Another address is not affected.
        assert!(limits.check(ip("192.0.2.2"), t0).is_ok());
        // A new minute starts afresh.
        assert!(limits.check(a, t0 + WINDOW).is_ok());
        limits.failed(a, t0 + WINDOW);
        assert!(limits.check(a, t0 + WINDOW).is_ok());
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_prefix() {
        let limits = limiter(2, 100);
        let t0 = Instant::now();
        limits.failed(ip("2001:db8:1:2::1"), t0);
        limits.failed(ip("2001:db8:1:2:ffff::9"), t0);
        assert!(limits.check(ip("2001:db8:1:2::77"), t0).is_err());
        assert!(limits.check(ip("2001:db8:1:3::1"), t0).is_ok());
        // An IPv4-mapped address is its IPv4 address.
        limits.failed(ip("::ffff:192.0.2.9"), t0);
        limits.failed(ip("192.0.2.9"), t0);
        assert!(limits.check(ip("192.0.2.9"), t0).is_err());
    }

    #[test]
    fn memory_is_bounded_and_ended_windows_make_room() {
        let limits = limiter(1, 3);
        let t0 = Instant::now();
        for i in 1..=10 {
            limits.failed(ip(&format!("198.51.100.{i}")), t0);
        }
        assert_eq!(limits.tracked(), 3);
        // The untracked ones are not refused; the tracked ones are, and stay tracked.
        assert!(limits.check(ip("198.51.100.10"), t0).is_ok());
        assert!(limits.check(ip("198.51.100.1"), t0).is_err());
        // Once their windows end, new addresses find room.
        limits.failed(ip("198.51.100.11"), t0 + WINDOW);
        assert_eq!(limits.tracked(), 1);
        assert!(limits.check(ip("198.51.100.11"), t0 + WINDOW).is_err());
    }

    #[test]
    fn zero_turns_the_limit_off() {
        let limits = limiter(0, 100);
        let t0 = Instant::now();
        for _ in 0..1000 {
            limits.failed(ip("192.0.2.1"), t0);
        }
        assert!(limits.check(ip("192.0.2.1"), t0).is_ok());
        assert_eq!(limits.tracked(), 0);
    }
}
