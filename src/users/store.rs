//! Where users' state is kept. An actor loads its user's state when it starts, saves it after
//! every settlement and when it is evicted, so an eviction never resets a window or a budget.
//! In memory here, written to a snapshot file by [`Snapshots`] so a restart does not either;
//! the Redis store arrives with the shared-state issue.

use super::book::{MinuteChanges, UserState};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub trait UserStore: Send + Sync + std::fmt::Debug {
    fn load(&self, user_id: &str) -> Option<UserState>;
    fn save(&self, user_id: &str, state: UserState);
    /// Saves `state` over the one saved for the user before its minute log's `changes` (a
    /// settlement's save): a store may move just the log's ends. By default, saves it whole.
    fn save_changes(&self, user_id: &str, state: &UserState, changes: MinuteChanges) {
        let _ = changes;
        self.save(user_id, state.clone());
    }
    /// Every user's state (the admin API's top spenders).
    fn all(&self) -> Vec<(String, UserState)>;
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

    fn save_changes(&self, user_id: &str, state: &UserState, changes: MinuteChanges) {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        match users.get_mut(user_id) {
            Some(saved) => state.update_saved(saved, changes),
            None => {
                users.insert(user_id.to_string(), state.clone());
            }
        }
    }

    fn all(&self) -> Vec<(String, UserState)> {
        self.export().into_iter().collect()
    }
}

impl MemoryStore {
    /// Every user's state.
    pub fn export(&self) -> BTreeMap<String, UserState> {
        self.users
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Loads users' state (at start-up, before any actor runs).
    pub fn import(&self, users: BTreeMap<String, UserState>) {
        self.users
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(users);
    }
}

/// Why the snapshot file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("users.snapshot_path {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("users.snapshot_path {path} is not a tollgate snapshot: {message}")]
    Format { path: PathBuf, message: String },
}

/// The embedded store's snapshot file: read at start-up, written at an interval and at a
/// graceful shutdown (atomically: a temporary file renamed over the old one).
#[derive(Debug, Clone)]
pub struct Snapshots {
    path: PathBuf,
    store: Arc<MemoryStore>,
}

impl Snapshots {
    /// Loads `path` into `store` if the file exists.
    pub fn open(path: &Path, store: Arc<MemoryStore>) -> Result<Self, SnapshotError> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let users: BTreeMap<String, UserState> =
                    serde_json::from_slice(&bytes).map_err(|e| SnapshotError::Format {
                        path: path.to_owned(),
                        message: e.to_string(),
                    })?;
                tracing::info!(path = %path.display(), users = users.len(), "restored user state");
                store.import(users);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(SnapshotError::Io {
                    path: path.to_owned(),
                    source,
                })
            }
        }
        Ok(Self {
            path: path.to_owned(),
            store,
        })
    }

    /// Writes the current state.
    pub fn write(&self) -> Result<(), SnapshotError> {
        let io = |source| SnapshotError::Io {
            path: self.path.clone(),
            source,
        };
        let json = serde_json::to_vec(&self.store.export()).map_err(|e| SnapshotError::Format {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, json).map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::admin::{AdminOp, Overrides, UserAdmin};
    use crate::users::book::Book;

    #[test]
    fn an_operators_block_and_overrides_survive_a_snapshot_and_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let store = Arc::new(MemoryStore::default());
        let mut book = Book::new(UserState::default());
        let mut admin = UserAdmin::default();
        admin.apply(&AdminOp::Block);
        admin.apply(&AdminOp::SetOverrides(Overrides {
            expires_at_ms: Some(42),
            ..Overrides::default()
        }));
        book.set_admin(admin.clone());
        store.save("mallory", book.state().clone());
        store.save("alice", UserState::default());
        Snapshots::open(&path, store).unwrap().write().unwrap();
        // A user without settings writes none (older snapshots read the same).
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.matches("\"admin\"").count(), 1, "{text}");

        let restarted = Arc::new(MemoryStore::default());
        Snapshots::open(&path, restarted.clone()).unwrap();
        let state = restarted.load("mallory").unwrap();
        assert_eq!(Book::new(state).admin(), &admin);
        assert_eq!(
            Book::new(restarted.load("alice").unwrap()).admin(),
            &UserAdmin::default()
        );
    }
}
