//! What the link talks to Redis through, in the mode `redis.url` selects
//! ([`RedisNodes`](crate::config::RedisNodes)): one server's multiplexed connection, made by a
//! deadpool-redis pool, or a Redis Cluster connection (the cluster client deadpool-redis'
//! `cluster` feature re-exports). A cluster connection sends each call to the master of its
//! first key's slot, follows `MOVED` and `ASK` redirections and retries `TRYAGAIN` itself, and
//! reloads a script on every node when one answers `NOSCRIPT`. Either pipelines a thread's
//! concurrent calls over its sockets. Commands meant for every master (state checks, loading the
//! scripts) go through [`Connection::on_every_master`].
//!
//! The cluster client is built here rather than by deadpool-redis' cluster pool: that pool's
//! manager takes only the node URLs, so its client would keep the library's retry defaults (the
//! first `TRYAGAIN` retry after at least 1.28 s, far past `redis.op_timeout_ms`); and the link
//! keeps one connection per thread for good, which is all a pool would hand out.

use crate::config::RedisNodes;
use deadpool_redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConnection};
use deadpool_redis::redis::aio::{ConnectionLike, MultiplexedConnection};
use deadpool_redis::redis::cluster_routing::{
    MultipleNodeRoutingInfo, RoutingInfo, SingleNodeRoutingInfo,
};
use deadpool_redis::redis::{
    AsyncConnectionConfig, Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value,
};
use deadpool_redis::{Manager, Pool, Runtime};
use std::time::Duration;

/// Waits between retries of one cluster call (redirections, `TRYAGAIN` while a slot moves):
/// each a random 1 to 20 ms (a slot's keys move in milliseconds). The wait stays flat: the
/// client computes `base^retry`, which overflows (a panic in debug builds) past 63 retries with
/// base 2. A call retries until `redis.op_timeout_ms` ends it (dropping it stops its retries),
/// so it may retry once a millisecond at most.
const CLUSTER_RETRY_WAIT_MS: u64 = 20;

/// Makes connections in the configured mode.
pub enum Connector {
    Single {
        pool: Pool,
        /// `host:port` (or the socket path) for logs: the URL without its credentials.
        node: String,
    },
    Cluster {
        client: Box<ClusterClient>,
        connect_timeout: Duration,
    },
}

/// One connection, cheap to clone (clones share the socket or sockets).
#[derive(Clone)]
pub enum Connection {
    Single {
        conn: MultiplexedConnection,
        node: std::sync::Arc<str>,
    },
    Cluster(ClusterConnection),
}

impl Connector {
    /// Builds the pool or the cluster client; no connection is made yet. Fails only on a URL the
    /// client refuses (config validation has checked them already).
    pub fn new(
        nodes: &RedisNodes,
        connect_timeout: Duration,
        op_timeout: Duration,
    ) -> Result<Self, String> {
        match nodes {
            RedisNodes::Single(url) => {
                let connection = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(Some(op_timeout));
                let manager = Manager::new_with_config(url.as_str(), connection)
                    .map_err(|e| format!("redis.url: {e}"))?;
                let pool = Pool::builder(manager)
                    .max_size(4)
                    .wait_timeout(Some(connect_timeout))
                    .create_timeout(Some(connect_timeout))
                    .recycle_timeout(Some(connect_timeout))
                    .runtime(Runtime::Tokio1)
                    .build()
                    .map_err(|e| format!("redis pool: {e}"))?;
                Ok(Connector::Single {
                    pool,
                    node: node_of(url),
                })
            }
            RedisNodes::Cluster(urls) => {
                // No per-node response timeout: `redis.op_timeout_ms` bounds every call (and a
                // timed-out call is not re-sent behind the caller's back).
                let client = ClusterClientBuilder::new(urls.iter().map(String::as_str))
                    .connection_timeout(connect_timeout)
                    .retries(
                        u32::try_from(op_timeout.as_millis())
                            .unwrap_or(u32::MAX)
                            .max(16),
                    )
                    .min_retry_wait(1)
                    .max_retry_wait(CLUSTER_RETRY_WAIT_MS)
                    .retry_wait_formula(CLUSTER_RETRY_WAIT_MS, 1)
                    .build()
                    .map_err(|e| format!("redis.url: {e}"))?;
                Ok(Connector::Cluster {
                    client: Box::new(client),
                    connect_timeout,
                })
            }
        }
    }

    /// A new connection (for a cluster: to the seeds, then the slot map), within
    /// `redis.connect_timeout_ms`.
    pub async fn connect(&self) -> Result<Connection, String> {
        match self {
            Connector::Single { pool, node } => {
                let object = pool.get().await.map_err(|e| e.to_string())?;
                Ok(Connection::Single {
                    conn: deadpool_redis::Connection::take(object),
                    node: node.as_str().into(),
                })
            }
            Connector::Cluster {
                client,
                connect_timeout,
            } => {
                match tokio::time::timeout(*connect_timeout, client.get_async_connection()).await {
                    Ok(Ok(conn)) => Ok(Connection::Cluster(conn)),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no cluster connection within {connect_timeout:?}")),
                }
            }
        }
    }
}

impl Connection {
    /// Runs `cmd` on every master (the one server, in single-node mode): each master's address
    /// and its answer. An error answer (e.g. `CONFIG` refused) is that master's `Err`; a master
    /// that cannot be reached fails the whole call.
    pub async fn on_every_master(
        &mut self,
        cmd: &Cmd,
    ) -> RedisResult<Vec<(String, RedisResult<Value>)>> {
        match self {
            Connection::Single { conn, node } => match conn.req_packed_command(cmd).await {
                Ok(value) => Ok(vec![(node.to_string(), value.extract_error())]),
                Err(e) if is_error_answer(&e) => Ok(vec![(node.to_string(), Err(e))]),
                Err(e) => Err(e),
            },
            Connection::Cluster(conn) => {
                let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
                let reply = conn.route_command(cmd.clone(), routing).await?;
                let Value::Map(per_node) = reply else {
                    return Err(RedisError::from((
                        deadpool_redis::redis::ErrorKind::Client,
                        "a command for every master got no per-node answer",
                    )));
                };
                Ok(per_node
                    .into_iter()
                    .map(|(node, value)| {
                        let node = match node {
                            Value::BulkString(bytes) => String::from_utf8_lossy(&bytes).into(),
                            Value::SimpleString(s) => s,
                            other => format!("{other:?}"),
                        };
                        (node, value.extract_error())
                    })
                    .collect())
            }
        }
    }
}

impl Connection {
    /// Runs `cmd` on the master `node` (`host:port`, as [`Connection::on_every_master`] names
    /// it); the one server in single-node mode. For commands whose state is per node (a
    /// `SCAN` cursor).
    pub async fn on_master(&mut self, node: &str, cmd: &Cmd) -> RedisResult<Value> {
        match self {
            Connection::Single { conn, .. } => conn.req_packed_command(cmd).await,
            Connection::Cluster(conn) => {
                let (host, port) = node
                    .rsplit_once(':')
                    .and_then(|(host, port)| Some((host.to_string(), port.parse().ok()?)))
                    .ok_or_else(|| {
                        RedisError::from((
                            deadpool_redis::redis::ErrorKind::Client,
                            "a master's address is not host:port",
                        ))
                    })?;
                let routing =
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
                conn.route_command(cmd.clone(), routing).await
            }
        }
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single { conn, .. } => conn.req_packed_command(cmd),
            Connection::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single { conn, .. } => conn.req_packed_commands(cmd, offset, count),
            Connection::Cluster(conn) => conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single { conn, .. } => conn.get_db(),
            Connection::Cluster(conn) => conn.get_db(),
        }
    }
}

/// Redis answered with an error that asking again cannot cure (a script error, an unknown or
/// refused command), rather than the call failing on its way or meeting a passing cluster
/// state (a slot moving, a failover, a node loading).
pub fn is_error_answer(e: &RedisError) -> bool {
    use deadpool_redis::redis::{ErrorKind, ServerErrorKind};
    match e.kind() {
        ErrorKind::UnexpectedReturnType | ErrorKind::Parse => true,
        ErrorKind::Server(kind) => !matches!(
            kind,
            ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::BusyLoading
                | ServerErrorKind::Moved
                | ServerErrorKind::Ask
                | ServerErrorKind::ReadOnly
        ),
        _ => false,
    }
}

/// `host:port` of a node URL (or its socket path), never its credentials.
pub fn node_of(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(host), Some(port)) if !host.is_empty() => format!("{host}:{port}"),
            (Some(host), None) if !host.is_empty() => format!("{host}:6379"),
            _ => u.path().to_string(),
        },
        Err(_) => String::from("redis"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_named_without_its_credentials() {
        assert_eq!(node_of("redis://:secret@10.0.0.1:7000/"), "10.0.0.1:7000");
        assert_eq!(node_of("redis://user:secret@cache/"), "cache:6379");
        assert_eq!(node_of("redis+unix:///run/redis.sock"), "/run/redis.sock");
    }
}
