//! Tokens verified recently, so a client sending the same JWT again is not checked from scratch
//! (signature, base64 and JSON of the header and claims: ~45 k instructions, a fifth of a
//! non-streamed request's work in the gateway).
//!
//! An entry is the token's identity and until when it may be used without a new check: the
//! token's `exp` plus the leeway (checked on every use), and at most [`RECHECK_SECS`] after it
//! was verified, so a key the identity provider withdraws from its JWKS stops its tokens within
//! that time. A token verified with a JWKS key names the key set it was verified with, and is
//! checked again as soon as another set replaces it (a rotation that drops a key refuses its
//! tokens at once). Only successes are remembered: a refused token is checked (and counted as a
//! failure) every time. Tokens are keyed by a keyed 128-bit hash (two SipHash keys chosen per
//! process): the table holds no token, and a collision needs one of 2^128 values. Each
//! [`Authenticator`](super::Authenticator) has its own table, so a reload with another secret,
//! key or claim mapping starts empty.

use super::jwks::KeySet;
use super::Identity;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};

/// Longest a verified token is trusted before it is verified again.
pub const RECHECK_SECS: u64 = 60;

/// Tokens remembered before the table starts over.
const ENTRIES: usize = 8192;

struct Entry {
    identity: Identity,
    /// Unix seconds after which the entry is not used.
    until: u64,
    /// The JWKS key set that verified it (kept alive here, so it cannot be mistaken for a later
    /// set); `None` for a key from the configuration.
    key_set: Option<Arc<KeySet>>,
}

/// Whether an entry verified with `verified_by` still holds while `current` is the JWKS set.
fn same_keys(verified_by: Option<&Arc<KeySet>>, current: Option<&Arc<KeySet>>) -> bool {
    match (verified_by, current) {
        (None, _) => true,
        (Some(then), Some(now)) => Arc::ptr_eq(then, now),
        (Some(_), None) => false,
    }
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

    /// The identity `token` was verified as, if that was recently enough, it has not expired
    /// by `now`, and the JWKS set it was verified with (if any) is still `current`.
    pub fn get(&self, token: &str, now: u64, current: Option<&Arc<KeySet>>) -> Option<Identity> {
        let key = self.key(token);
        let entries = self.entries.lock().ok()?;
        entries
            .get(&key)
            .filter(|entry| now < entry.until && same_keys(entry.key_set.as_ref(), current))
            .map(|entry| entry.identity.clone())
    }

    /// Remembers that `token` verified as `identity` at `now` (with a key of `key_set`, when
    /// it came from the JWKS); `expires_after` is the last second it is valid (its `exp` plus
    /// the leeway).
    pub fn put(
        &self,
        token: &str,
        identity: &Identity,
        now: u64,
        expires_after: u64,
        key_set: Option<Arc<KeySet>>,
    ) {
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
                    key_set,
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
        assert_eq!(verified.get("t1", 1000, None), None);
        verified.put("t1", &alice(), 1000, 1030, None);
        assert_eq!(verified.get("t1", 1000, None), Some(alice()));
        assert_eq!(verified.get("t1", 1029, None), Some(alice()));
        assert_eq!(verified.get("t1", 1030, None), None, "expired");
        assert_eq!(verified.get("t2", 1000, None), None, "another token");

        verified.put("t3", &alice(), 1000, 99_999, None);
        assert_eq!(
            verified.get("t3", 1000 + RECHECK_SECS - 1, None),
            Some(alice())
        );
        assert_eq!(
            verified.get("t3", 1000 + RECHECK_SECS, None),
            None,
            "recheck due"
        );
    }

    #[test]
    fn a_token_of_a_replaced_key_set_is_checked_again() {
        let verified = Verified::new();
        let (first, second) = (Arc::new(KeySet::default()), Arc::new(KeySet::default()));
        verified.put("t", &alice(), 1000, 2000, Some(first.clone()));
        assert_eq!(verified.get("t", 1001, Some(&first)), Some(alice()));
        assert_eq!(verified.get("t", 1001, Some(&second)), None, "a new set");
        assert_eq!(verified.get("t", 1001, None), None, "no set at all");
        // A configured key's token does not depend on the JWKS.
        verified.put("c", &alice(), 1000, 2000, None);
        assert_eq!(verified.get("c", 1001, Some(&second)), Some(alice()));
    }

    #[test]
    fn the_table_stays_bounded() {
        let verified = Verified::new();
        for i in 0..ENTRIES + 100 {
            verified.put(&format!("token-{i}"), &alice(), 1000, 2000, None);
        }
        let len = verified
            .entries
            .lock()
            .map(|e| e.len())
            .unwrap_or(usize::MAX);
        assert!(len <= ENTRIES, "{len}");
        let last = format!("token-{}", ENTRIES + 99);
        assert_eq!(verified.get(&last, 1000, None), Some(alice()));
    }
}
