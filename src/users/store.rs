//! Where a user's state lives while no actor holds it. The actor loads it when it starts and
//! saves it when it is evicted, so an eviction never resets a window or a budget.
//! In-memory here; the Redis store arrives with the shared-state issue.

use super::book::UserState;
use std::collections::HashMap;
use std::sync::Mutex;

pub trait UserStore: Send + Sync + std::fmt::Debug {
    fn load(&self, user_id: &str) -> Option<UserState>;
    fn save(&self, user_id: &str, state: UserState);
}

/// The embedded default: a map in this process.
#[derive(Debug, Default)]
pub struct MemoryStore {
    users: Mutex<HashMap<String, UserState>>,
}

impl UserStore for MemoryStore {
    fn load(&self, user_id: &str) -> Option<UserState> {
        self.users
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(user_id)
            .cloned()
    }

    fn save(&self, user_id: &str, state: UserState) {
        self.users
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(user_id.to_string(), state);
    }
}
