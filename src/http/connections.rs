//! The connection cap (`server.max_connections`): every client connection is counted, over all
//! workers, from the moment it is accepted until it closes. One beyond the cap is closed at once,
//! without reading or answering anything (as Envoy's listener limit does): it costs the gateway a
//! file descriptor for an instant, not for as long as a hostile client likes. Refusals are counted
//! in `tollgate_connections_refused_total`, open connections in `tollgate_open_connections`.

use crate::telemetry::Metrics;
use actix_web::dev::Extensions;
use std::any::Any;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Counts connections and turns away those beyond the cap (shared by every worker).
#[derive(Clone)]
pub(super) struct ConnectionGate {
    open: Arc<AtomicUsize>,
    max: usize,
    metrics: Metrics,
}

/// Held in the connection's data while it is open: dropping it (the connection ended, and
/// every request on it) frees its place.
struct Counted {
    open: Arc<AtomicUsize>,
    metrics: Metrics,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.metrics.connection_closed();
    }
}

impl ConnectionGate {
    pub(super) fn new(max: usize, metrics: Metrics) -> Self {
        Self {
            open: Arc::new(AtomicUsize::new(0)),
            max,
            metrics,
        }
    }

    /// actix-web's `on_connect` hook: counts the connection, or closes it when the cap is reached.
    pub(super) fn on_connect(&self, connection: &dyn Any, data: &mut Extensions) {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            self.metrics.record_connection_refused();
            close(connection);
            return;
        }
        self.metrics.connection_opened();
        data.insert(Counted {
            open: self.open.clone(),
            metrics: self.metrics.clone(),
        });
    }
}

/// Shuts the socket down both ways: the client sees the connection end at once, and the
/// server's reader sees end-of-stream and drops the connection without waiting for a request.
#[cfg(unix)]
fn close(connection: &dyn Any) {
    use std::os::fd::AsFd;
    let Some(tcp) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() else {
        return;
    };
    // A duplicate descriptor of the same socket: shutting it down shuts the socket down.
    if let Ok(fd) = tcp.as_fd().try_clone_to_owned() {
        let _ = std::net::TcpStream::from(fd).shutdown(std::net::Shutdown::Both);
    }
}

/// Elsewhere the connection is only left uncounted; the request-head timeout closes it.
#[cfg(not(unix))]
fn close(_connection: &dyn Any) {}
