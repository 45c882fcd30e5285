//! The connection to Redis, one node or a cluster ([`connection`](super::connection)): each
//! thread that calls (the actors' arbiter threads) makes one connection and keeps it until it
//! fails. A connection pipelines the concurrent calls of its thread, skips a pool's PING per
//! checkout, and its I/O task runs on the calling thread, so a call costs no cross-thread
//! wake-ups. Making a connection is bounded by `redis.connect_timeout_ms`, every call by
//! `redis.op_timeout_ms`; each reports to the circuit breaker (one for the whole cluster), and
//! calls are skipped while the circuit is open.
//!
//! A script call names two keys of one slot: the prefix its script builds every key from, and a
//! guard key that never exists. Redis Cluster answers `TRYAGAIN` to a call naming a key that
//! does not exist while its slot moves between masters, so no script ever runs while a slot's
//! keys are split between two nodes (it would read the keys not moved yet as empty); the client
//! retries until the move ends.

use super::breaker::{Breaker, Transition};
use super::connection::{is_error_answer, Connection, Connector};
use super::keys;
use crate::config::{RedisConfig, RedisNodes};
use crate::telemetry::Metrics;
use deadpool_redis::redis::{FromRedisValue, RedisError, Script, Value};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::thread::ThreadId;
use std::time::Duration;

/// Why a call did not reach an answer. The caller takes the outage path either way.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error("the Redis circuit is open")]
    CircuitOpen,
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("no Redis connection: {0}")]
    Connect(String),
    #[error("Redis call failed: {0}")]
    Call(#[from] RedisError),
    #[error("unexpected reply from the {0} script")]
    Malformed(&'static str),
}

pub struct Link {
    connector: Connector,
    per_thread: Mutex<HashMap<ThreadId, Connection>>,
    op_timeout: Duration,
    breaker: Breaker,
    metrics: Metrics,
    /// A connection broke since the last [`Link::take_reconnected`]: the next one may reach a
    /// Redis that restarted.
    reconnected: AtomicBool,
}

impl Unavailable {
    /// The call may have been applied by Redis (it was sent; no answer came back in time).
    pub fn may_have_applied(&self) -> bool {
        match self {
            Unavailable::Timeout(_) => true,
            Unavailable::Call(e) => e.is_timeout() || e.is_io_error() || e.is_connection_dropped(),
            _ => false,
        }
    }

    /// Redis answered (with an error or an unexpected reply): retrying the same call cannot
    /// help, unlike a timeout or a lost connection.
    pub fn is_answer(&self) -> bool {
        match self {
            Unavailable::Call(e) => is_error_answer(e),
            Unavailable::Malformed(_) => true,
            _ => false,
        }
    }
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("op_timeout", &self.op_timeout)
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl Link {
    /// Builds the pool or the cluster client for `nodes` (no connection is made yet). Fails
    /// only on a URL the client refuses.
    pub fn new(config: &RedisConfig, nodes: &RedisNodes, metrics: Metrics) -> Result<Self, String> {
        let op_timeout = Duration::from_millis(config.op_timeout_ms);
        let connect_timeout = Duration::from_millis(config.connect_timeout_ms);
        Ok(Self {
            connector: Connector::new(nodes, connect_timeout, op_timeout)?,
            per_thread: Mutex::new(HashMap::new()),
            op_timeout,
            breaker: Breaker::new(config.breaker_failures),
            metrics,
            reconnected: AtomicBool::new(false),
        })
    }

    /// Whether a connection broke since the last call (and so Redis may have restarted).
    pub fn take_reconnected(&self) -> bool {
        self.reconnected.swap(false, Ordering::AcqRel)
    }

    pub fn circuit_open(&self) -> bool {
        self.breaker.is_open()
    }

    /// Closes the circuit after a successful probe; `true` if it was open.
    pub fn close_circuit(&self) -> bool {
        let closed = self.breaker.close();
        if closed {
            self.metrics.set_redis_up(true);
            tracing::warn!("Redis is back: circuit closed, shared limits apply again");
        }
        closed
    }

    /// Runs a script on the keys under `prefix` (a user's, or the organisation's: one slot),
    /// naming the prefix and its guard key (see the module doc). `probe` calls go through an
    /// open circuit (the probe task's journal replay).
    #[allow(clippy::too_many_arguments)]
    pub async fn script<T: FromRedisValue>(
        &self,
        op: &'static str,
        probe: bool,
        script: &Script,
        prefix: &str,
        args: &[u64],
        text_args: &[&str],
    ) -> Result<T, Unavailable> {
        self.guarded(op, probe, |mut conn| async move {
            let mut invocation = script.key(prefix);
            invocation.key(keys::guard_key(prefix));
            for a in text_args {
                invocation.arg(*a);
            }
            for a in args {
                invocation.arg(*a);
            }
            invocation.invoke_async(&mut conn).await
        })
        .await
    }

    /// Runs one command. `probe` calls go through an open circuit (the probe task's).
    pub async fn command<T: FromRedisValue>(
        &self,
        op: &'static str,
        probe: bool,
        cmd: deadpool_redis::redis::Cmd,
    ) -> Result<T, Unavailable> {
        self.guarded(op, probe, |mut conn| async move {
            cmd.query_async(&mut conn).await
        })
        .await
    }

    /// Runs `cmd` on every master (the one server, in single-node mode): each master's address
    /// and its answer, an error answer (e.g. `CONFIG` refused) as that master's `Err`. `probe`
    /// calls go through an open circuit.
    pub async fn on_every_master(
        &self,
        op: &'static str,
        probe: bool,
        cmd: deadpool_redis::redis::Cmd,
    ) -> Result<Vec<(String, Result<Value, RedisError>)>, Unavailable> {
        self.guarded(op, probe, |mut conn| async move {
            conn.on_every_master(&cmd).await
        })
        .await
    }

    /// Runs `cmd` on the master `node` (as [`Link::on_every_master`] names it).
    pub async fn on_master(
        &self,
        op: &'static str,
        node: &str,
        cmd: deadpool_redis::redis::Cmd,
    ) -> Result<Value, Unavailable> {
        self.guarded(op, false, |mut conn| async move {
            conn.on_master(node, &cmd).await
        })
        .await
    }

    async fn guarded<T, F, Fut>(
        &self,
        op: &'static str,
        probe: bool,
        call: F,
    ) -> Result<T, Unavailable>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        if !probe && self.breaker.is_open() {
            return Err(Unavailable::CircuitOpen);
        }
        // A new connection is bounded by `redis.connect_timeout_ms`; the call on it by
        // `redis.op_timeout_ms`.
        let result = match self.connection().await {
            Ok(conn) => match tokio::time::timeout(self.op_timeout, call(conn)).await {
                Ok(result) => result.map_err(Unavailable::Call),
                Err(_) => Err(Unavailable::Timeout(self.op_timeout)),
            },
            Err(e) => Err(e),
        };
        match &result {
            Ok(_) => self.breaker.success(),
            Err(e) => self.failed(op, e),
        }
        result
    }

    async fn connection(&self) -> Result<Connection, Unavailable> {
        let thread = std::thread::current().id();
        if let Some(conn) = self.lock().get(&thread) {
            return Ok(conn.clone());
        }
        let conn = self
            .connector
            .connect()
            .await
            .map_err(Unavailable::Connect)?;
        self.lock().insert(thread, conn.clone());
        Ok(conn)
    }

    fn failed(&self, op: &'static str, error: &Unavailable) {
        self.metrics.record_redis_error(op);
        let broken = match error {
            Unavailable::Call(e) => e.is_io_error() || e.is_connection_dropped() || e.is_timeout(),
            Unavailable::Connect(_) | Unavailable::Timeout(_) => true,
            Unavailable::CircuitOpen | Unavailable::Malformed(_) => false,
        };
        if broken {
            // A fresh connection next time (a timed-out one may be stuck behind a hung server).
            self.lock().remove(&std::thread::current().id());
            self.reconnected.store(true, Ordering::Release);
        }
        if self.breaker.failure() == Transition::Opened {
            self.metrics.set_redis_up(false);
            tracing::error!(
                error = %error,
                "Redis is unavailable: circuit open, limits follow the outage policy"
            );
        } else {
            tracing::debug!(op, error = %error, "Redis call failed");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ThreadId, Connection>> {
        self.per_thread.lock().unwrap_or_else(|p| p.into_inner())
    }
}
