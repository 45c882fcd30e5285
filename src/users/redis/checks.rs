//! The state checks, on the one server or on every master of a cluster. At start-up the scripts
//! are loaded on every master (a call still reloads one on `NOSCRIPT`, e.g. after a failover)
//! and each master's eviction policy is checked. From the probe task ([`persistence`]): how each
//! master persists, and whether tollgate's keys survived on it: one marker key per master, in a
//! slot it serves ([`topology`]). A cluster is reported by its weakest master, and the logs name
//! the masters concerned.

use super::connection::node_of;
use super::persistence::{Persistence, StateCheck};
use super::{keys, topology, RedisLedger, Unavailable, MARKER_TTL_MS};
use crate::config::RedisNodes;
use deadpool_redis::redis::{cmd, FromRedisValue, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::PoisonError;

impl RedisLedger {
    /// How Redis persists, as last asked (`/readyz`): a cluster's weakest master.
    pub fn persistence(&self) -> Persistence {
        Persistence::from_u8(self.persistence.load(Ordering::Acquire))
    }

    /// Checks Redis' state: how every master persists (when `ask_config`), and whether
    /// tollgate's keys survived on each since the last check (the markers). Warns about a
    /// master that does not persist and logs lost keys as an error; a check not fully answered
    /// stays owed.
    pub async fn check_state(&self, ask_config: bool) -> StateCheck {
        let mut complete = true;
        let persistence = if ask_config {
            match self.ask_persistence().await {
                Ok((persistence, nodes)) => {
                    self.note_persistence(persistence, &nodes);
                    persistence
                }
                Err(_) => {
                    complete = false;
                    self.persistence()
                }
            }
        } else {
            self.persistence()
        };
        let lost_on = match self.check_markers().await {
            Ok(lost_on) => lost_on,
            Err(_) => {
                complete = false;
                Vec::new()
            }
        };
        let keys_lost = !lost_on.is_empty();
        if keys_lost {
            self.losses.fetch_add(1, Ordering::AcqRel);
            self.metrics.record_redis_state_lost();
            tracing::error!(
                key_prefix = %self.key_prefix,
                nodes = %lost_on.join(","),
                "tollgate's keys vanished from Redis (it restarted without persistence, or was \
                 flushed): users' windows and spend restarted from zero"
            );
        }
        self.check_due.store(!complete, Ordering::Release);
        StateCheck {
            persistence,
            keys_lost,
            complete,
        }
    }

    /// `CONFIG GET appendonly` and `save` on every master: the weakest mode, and the masters
    /// in it. A master refusing `CONFIG` (managed services do) counts as `Unknown`.
    async fn ask_persistence(&self) -> Result<(Persistence, Vec<String>), Unavailable> {
        let mut answers: BTreeMap<String, Vec<Option<String>>> = BTreeMap::new();
        for parameter in ["appendonly", "save"] {
            let mut c = cmd("CONFIG");
            c.arg("GET").arg(parameter);
            for (node, reply) in self.link.on_every_master("config", true, c).await? {
                let value = reply
                    .ok()
                    .and_then(|v| Vec::<String>::from_redis_value(v).ok())
                    .map(|pair| pair.get(1).cloned().unwrap_or_default());
                answers.entry(node).or_default().push(value);
            }
        }
        let per_node: Vec<(String, Persistence)> = answers
            .into_iter()
            .map(|(node, values)| {
                let mode = match &values[..] {
                    [Some(appendonly), Some(save)] => Persistence::from_config(appendonly, save),
                    _ => Persistence::Unknown,
                };
                (node, mode)
            })
            .collect();
        let weakest = Persistence::weakest(per_node.iter().map(|(_, mode)| *mode));
        let nodes = per_node
            .into_iter()
            .filter(|(_, mode)| *mode == weakest)
            .map(|(node, _)| node)
            .collect();
        Ok((weakest, nodes))
    }

    /// Records how Redis persists; says so loudly when that changed to something weaker.
    fn note_persistence(&self, persistence: Persistence, nodes: &[String]) {
        let before =
            Persistence::from_u8(self.persistence.swap(persistence.to_u8(), Ordering::AcqRel));
        self.metrics.set_redis_persistence(persistence.as_str());
        if before == persistence {
            return;
        }
        let nodes = nodes.join(",");
        match persistence {
            Persistence::None => tracing::warn!(
                redis_persistence = persistence.as_str(),
                %nodes,
                "Redis does not persist its data (appendonly no, no save rules): if it restarts, \
                 every user's windows and spend restart from zero. Turn on appendonly yes."
            ),
            Persistence::Snapshots => tracing::warn!(
                redis_persistence = persistence.as_str(),
                %nodes,
                "Redis persists by snapshots only: a crash loses the usage since the last one. \
                 appendonly yes loses at most a second."
            ),
            Persistence::Unknown => tracing::warn!(
                %nodes,
                "Redis does not say how it persists (CONFIG refused): make sure it does, or a \
                 restart resets every user's windows and spend"
            ),
            Persistence::AppendOnly => {
                tracing::info!(redis_persistence = persistence.as_str(), "Redis persists")
            }
        }
    }

    /// The marker keys to keep, each with the master holding it: the one marker key on a single
    /// server; in a cluster one per master, in a slot it serves.
    async fn marker_keys(&self) -> Result<BTreeMap<String, String>, Unavailable> {
        if let RedisNodes::Single(url) = &self.nodes {
            return Ok(BTreeMap::from([(
                keys::marker_key(&self.key_prefix),
                node_of(url),
            )]));
        }
        let mut c = cmd("CLUSTER");
        c.arg("SLOTS");
        let reply: Value = self.link.command("marker", true, c).await?;
        let masters = topology::masters(&reply).ok_or(Unavailable::Malformed("CLUSTER SLOTS"))?;
        Ok(masters
            .into_iter()
            .filter_map(|m| {
                Some((
                    keys::marker_key_within(&self.key_prefix, &m.ranges)?,
                    m.node,
                ))
            })
            .collect())
    }

    /// Looks for every marker: the masters whose marker (as seen at the last check) is gone or
    /// replaced. Leaves a marker in place (renewed) on every master either way.
    async fn check_markers(&self) -> Result<Vec<String>, Unavailable> {
        let current = self.marker_keys().await?;
        let seen = self
            .markers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        // Markers seen before stay checked (a slot that moved took its marker along).
        let every: BTreeSet<&String> = seen.keys().chain(current.keys()).collect();
        let mut now_seen = BTreeMap::new();
        let mut lost_on = Vec::new();
        for key in every {
            let node = current.get(key).map_or("a master", String::as_str);
            let before = seen.get(key);
            let mut get = cmd("GET");
            get.arg(key);
            let value: Option<String> = self.link.command("marker", true, get).await?;
            match value {
                Some(value) => {
                    let mut renew = cmd("PEXPIRE");
                    renew.arg(key).arg(MARKER_TTL_MS);
                    let _: u64 = self.link.command("marker", true, renew).await?;
                    if before.is_some_and(|before| *before != value) {
                        lost_on.push(node.to_string());
                    }
                    now_seen.insert(key.clone(), value);
                }
                None => {
                    if before.is_some() {
                        lost_on.push(node.to_string());
                    }
                    if current.contains_key(key) {
                        now_seen.insert(key.clone(), self.place_marker(key).await?);
                    }
                }
            }
        }
        *self.markers.lock().unwrap_or_else(PoisonError::into_inner) = now_seen;
        Ok(lost_on)
    }

    /// Writes a new marker at `key` unless another replica just did; the value there.
    async fn place_marker(&self, key: &str) -> Result<String, Unavailable> {
        let mut set = cmd("SET");
        set.arg(key)
            .arg(uuid::Uuid::new_v4().simple().to_string())
            .arg("NX")
            .arg("PX")
            .arg(MARKER_TTL_MS);
        let _: Option<String> = self.link.command("marker", true, set).await?;
        let mut get = cmd("GET");
        get.arg(key);
        let value: Option<String> = self.link.command("marker", true, get).await?;
        Ok(value.unwrap_or_default())
    }

    /// At start-up: says how Redis is reached, loads the scripts on every master and warns
    /// when a master may evict keys (limits would silently reset), or when Redis cannot be
    /// reached; the probe task then checks how it persists ([`RedisLedger::check_state`]).
    pub async fn check_server(&self) {
        // Masters holding every script.
        let mut loaded_on = usize::MAX;
        for source in &self.scripts.sources {
            let mut load = cmd("SCRIPT");
            load.arg("LOAD").arg(source);
            match self.link.on_every_master("script", true, load).await {
                Ok(masters) => {
                    for (node, reply) in &masters {
                        if let Err(e) = reply {
                            tracing::warn!(%node, error = %e, "a Redis master refused a script");
                        }
                    }
                    loaded_on = loaded_on.min(masters.iter().filter(|(_, r)| r.is_ok()).count());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Redis is not reachable at start-up");
                    return;
                }
            }
        }
        let mut c = cmd("CONFIG");
        c.arg("GET").arg("maxmemory-policy");
        let masters = match self.link.on_every_master("config", true, c).await {
            Ok(masters) => masters,
            Err(e) => {
                tracing::warn!(error = %e, "Redis is not reachable at start-up");
                return;
            }
        };
        let count = masters.len();
        for (node, reply) in masters {
            let policy = reply
                .ok()
                .and_then(|v| Vec::<String>::from_redis_value(v).ok())
                .and_then(|pair| pair.get(1).cloned())
                .unwrap_or_else(|| String::from("unknown"));
            if policy.starts_with("allkeys") || policy.starts_with("volatile") {
                tracing::warn!(
                    maxmemory_policy = %policy,
                    %node,
                    "Redis may evict keys under memory pressure: evicted limit keys reset \
                     users' windows and budgets. Use maxmemory-policy noeviction."
                );
            } else {
                tracing::info!(maxmemory_policy = %policy, %node, "Redis does not evict tollgate's keys");
            }
        }
        tracing::info!(
            masters = count,
            scripts_loaded_on = loaded_on,
            "Redis is reachable"
        );
    }
}
