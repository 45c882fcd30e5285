//! Finds (or starts) a user's actor. Actors are spread over dedicated arbiter threads by a hash
//! of the user id, so one busy user never stalls the HTTP workers or other users' actors.

use super::actor::UserActor;
use super::messages::{Admit, Snapshot, UserUsage};
use super::ticket::Ticket;
use crate::config::UsersConfig;
use crate::error::{ApiError, ErrorCode};
use actix::{Actor, Addr};
use actix_rt::Arbiter;
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

/// What the request path needs to open a request for a user.
#[derive(Debug, Clone)]
pub struct AdmitRequest<'a> {
    pub user_id: &'a str,
    pub request_id: &'a str,
    pub estimated_input_tokens: u64,
    pub max_tokens: u32,
    pub stream: bool,
}

/// The user-id → actor map and the threads the actors run on.
pub struct UserRegistry {
    arbiters: Vec<Arbiter>,
    actors: Mutex<HashMap<String, Addr<UserActor>>>,
    mailbox_capacity: usize,
}

impl UserRegistry {
    /// Starts `threads` arbiter threads for the actors.
    pub fn new(threads: usize, config: &UsersConfig) -> Self {
        Self {
            arbiters: (0..threads.max(1)).map(|_| Arbiter::new()).collect(),
            actors: Mutex::new(HashMap::new()),
            mailbox_capacity: config.mailbox_capacity,
        }
    }

    fn actor(&self, user_id: &str) -> Addr<UserActor> {
        let mut actors = self.actors.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(addr) = actors.get(user_id).filter(|a| a.connected()) {
            return addr.clone();
        }
        let mut hasher = DefaultHasher::new();
        user_id.hash(&mut hasher);
        let arbiter = &self.arbiters[(hasher.finish() as usize) % self.arbiters.len()];
        let capacity = self.mailbox_capacity;
        let addr =
            UserActor::start_in_arbiter(&arbiter.handle(), move |_| UserActor::new(capacity));
        actors.insert(user_id.to_string(), addr.clone());
        addr
    }

    /// Admits a request: the returned ticket meters and settles it.
    pub async fn admit(&self, request: AdmitRequest<'_>) -> Result<Ticket, ApiError> {
        let addr = self.actor(request.user_id);
        let admission = addr
            .send(Admit {
                request_id: request.request_id.to_string(),
                estimated_input_tokens: request.estimated_input_tokens,
                max_tokens: request.max_tokens,
                stream: request.stream,
            })
            .await
            .map_err(|_| unavailable())?
            .map_err(|refusal| refusal.error)?;
        Ok(Ticket::new(
            addr,
            request.request_id.to_string(),
            request.estimated_input_tokens,
            admission.max_tokens,
        ))
    }

    /// The user's counters.
    pub async fn usage(&self, user_id: &str) -> Result<UserUsage, ApiError> {
        self.actor(user_id)
            .send(Snapshot)
            .await
            .map_err(|_| unavailable())
    }
}

impl Drop for UserRegistry {
    fn drop(&mut self) {
        for arbiter in &self.arbiters {
            arbiter.stop();
        }
    }
}

fn unavailable() -> ApiError {
    ApiError::new(ErrorCode::StateUnavailable, "per-user state is unavailable").retry_after(1)
}
