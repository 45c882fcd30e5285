//! Each worker's upstream clients (awc clients are not `Send`: one set per worker thread),
//! built for the config generation a request runs under. A reload's first request on a worker
//! builds the new set; requests still running keep the set they started with.

use super::state::AppState;
use crate::relay::Upstreams;
use std::cell::RefCell;
use std::rc::Rc;

thread_local! {
    /// The set of the generation this worker served last, by [`AppState::id`].
    static CLIENTS: RefCell<Option<(u64, Rc<Upstreams>)>> = const { RefCell::new(None) };
}

/// This worker's clients for `state`'s providers.
pub(super) fn upstreams_for(state: &AppState) -> Rc<Upstreams> {
    CLIENTS.with(|slot| {
        let mut slot = slot.borrow_mut();
        match &*slot {
            Some((id, clients)) if *id == state.id => clients.clone(),
            _ => {
                let clients = Rc::new(Upstreams::new(
                    state.providers.clone(),
                    &state.provider_urls,
                    state.upstream_health.clone(),
                ));
                *slot = Some((state.id, clients.clone()));
                clients
            }
        }
    })
}
