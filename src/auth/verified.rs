//! Tokens verified recently, so a client sending the same JWT again is not checked from scratch
//! (signature, base64 and JSON of the header and claims: ~45 k instructions, a fifth of a
//! non-streamed request's work in the gateway).
//!
//! An entry is the token's identity and until when it may be used without a new check: the
//! token's `exp` plus the leeway (checked on every use), and at most [`RECHECK_SECS`] after it
//! was verified, so a key the identity provider withdraws from its JWKS stops its tokens within
//! that time. Only successes are remembered: a refused token is checked (and counted as a
//! failure) every time. Tokens are keyed by a keyed 128-bit hash (two SipHash keys chosen per
//! process): the table holds no token, and a collision needs one of 2^128 values. Each
//! [`Authenticator`](super::Authenticator) has its own table, so a reload with another secret,
//! key or claim mapping starts empty.

use super::Identity;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;

/// Longest a verified token is trusted before it is verified again.
pub const RECHECK_SECS: u64 = 60;

/// Tokens remembered before the table starts over.
const ENTRIES: usize = 8192;

struct Entry {
    identity: Identity,
    /// Unix seconds after which the entry is not used.
    until: u64,
}

/// The table of recently verified tokens.
pub struct Verified {
    keys: (RandomState, RandomState),
    entries: Mutex<HashMap<(u64, u64), Entry>>,
}

impl Verified {
    pub fn new() -> Self {
        Self {
            keys: (RandomState::new(), RandomState::new()),
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn key(&self, token: &str) -> (u64, u64) {
        (self.keys.0.hash_one(token), self.keys.1.hash_one(token))
    }

    /// The identity `token` was verified as, if that was recently enough and it has not
    /// expired by `now`.
    pub fn get(&self, token: &str, now: u64) -> Option<Identity> {
        let key = self.key(token);
        let entries = self.entries.lock().ok()?;
        entries
            .get(&key)
            .filter(|entry| now < entry.until)
            .map(|entry| entry.identity.clone())
    }

    /// Remembers that `token` verified as `identity` at `now`; `expires_after` is the last
    /// second it is valid (its `exp` plus the leeway).
    pub fn put(&self, token: &str, identity: &Identity, now: u64, expires_after: u64) {
        let key = self.key(token);
        let until = expires_after.min(now + RECHECK_SECS);
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= ENTRIES && !entries.contains_key(&key) {
                entries.retain(|_, entry| now < entry.until);
                if entries.len() >= ENTRIES {
                    entries.clear();
                }
            }
            entries.insert(
                key,
                Entry {
                    identity: identity.clone(),
                    until,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Identity {
        Identity {
            user_id: "alice".into(),
            plan: "pro".into(),
            session_id: None,
            max_message_chars: None,
        }
    }

    #[test]
    fn a_remembered_token_is_used_until_it_expires_or_needs_a_recheck() {
        let verified = Verified::new();
        assert_eq!(verified.get("t1", 1000), None);
        verified.put("t1", &alice(), 1000, 1030);
        assert_eq!(verified.get("t1", 1000), Some(alice()));
        assert_eq!(verified.get("t1", 1029), Some(alice()));
        assert_eq!(verified.get("t1", 1030), None, "expired");
        assert_eq!(verified.get("t2", 1000), None, "another token");

        verified.put("t3", &alice(), 1000, 99_999);
        assert_eq!(verified.get("t3", 1000 + RECHECK_SECS - 1), Some(alice()));
        assert_eq!(verified.get("t3", 1000 + RECHECK_SECS), None, "recheck due");
    }

    #[test]
    fn the_table_stays_bounded() {
        let verified = Verified::new();
        for i in 0..ENTRIES + 100 {
            verified.put(&format!("token-{i}"), &alice(), 1000, 2000);
        }
        let len = verified
            .entries
            .lock()
            .map(|e| e.len())
            .unwrap_or(usize::MAX);
        assert!(len <= ENTRIES, "{len}");
        let last = format!("token-{}", ENTRIES + 99);
        assert_eq!(verified.get(&last, 1000), Some(alice()));
    }
}
