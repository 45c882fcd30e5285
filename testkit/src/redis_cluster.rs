//! A real Redis Cluster for tests: `masters` `redis-server --cluster-enabled yes` processes,
//! each a [`RedisServer`] (its own free loopback port and temporary directory, persistence on),
//! joined by `redis-cli --cluster create … --cluster-replicas 0` and ready once every node says
//! `cluster_state:ok` (about 1.5 s for three). A test can move a slot from master to master
//! while it runs, key by key as `redis-cli --cluster reshard` does (optionally slowly, to widen
//! the window in which the slot's keys are split between two nodes), add a replica and fail its
//! master over to it, and stop, kill or restart any node. Dropping the cluster ends every node.
//! Needs `redis-server` and `redis-cli` on `PATH`, like [`RedisServer`].

use crate::redis::{RedisServer, SharedRedis};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long the cluster may take to agree on its slots, or a replica to sync, or a failover.
const READY_WITHIN: Duration = Duration::from_secs(30);
/// `cluster-node-timeout`: generous, so a busy CI machine never marks a live node failed.
const NODE_TIMEOUT_MS: &str = "5000";

/// A Redis Cluster on 127.0.0.1 (masters first, then any replicas added).
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    /// How many of `nodes` were started as masters (the seeds in [`SharedRedis::url`]).
    seeds: usize,
}

impl RedisCluster {
    /// Starts `masters` nodes, spreads the 16,384 slots over them, and waits until every node
    /// reports `cluster_state:ok` (panics after 30 s).
    pub fn start(masters: usize) -> Self {
        assert!(
            masters >= 3,
            "redis-cli --cluster create needs 3 masters at least"
        );
        let nodes: Vec<RedisServer> = (0..masters).map(|_| start_node()).collect();
        let mut args = vec!["--cluster".to_string(), "create".to_string()];
        args.extend(nodes.iter().map(address));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"].map(String::from));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        nodes[0].cli(&args);
        let cluster = RedisCluster {
            nodes,
            seeds: masters,
        };
        cluster.wait_until_ok();
        cluster
    }

    /// Every node, masters first, then replicas in the order added.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Node `i`, mutably (to stop, kill or restart it).
    pub fn node_mut(&mut self, i: usize) -> &mut RedisServer {
        &mut self.nodes[i]
    }

    /// `CLUSTER MYID` of node `i`.
    pub fn node_id(&self, i: usize) -> String {
        self.nodes[i].cli(&["CLUSTER", "MYID"])
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT`).
    pub fn slot_of(&self, key: &str) -> u16 {
        self.any_node()
            .cli(&["CLUSTER", "KEYSLOT", key])
            .parse()
            .expect("CLUSTER KEYSLOT answers a number")
    }

    /// The node serving `slot` as master, as node `0`'s view of the cluster has it.
    pub fn owner_of(&self, slot: u16) -> usize {
        for line in self.any_node().cli(&["CLUSTER", "NODES"]).lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 || !fields[2].contains("master") {
                continue;
            }
            let serves = fields[8..].iter().any(|range| {
                let (start, end) = range.split_once('-').unwrap_or((range, range));
                match (start.parse::<u16>(), end.parse::<u16>()) {
                    (Ok(start), Ok(end)) => (start..=end).contains(&slot),
                    _ => false, // a slot being imported or migrated: [n-<-id]
                }
            });
            if serves {
                let port: u16 = fields[1]
                    .split('@')
                    .next()
                    .and_then(|addr| addr.rsplit(':').next())
                    .and_then(|port| port.parse().ok())
                    .expect("a node address in CLUSTER NODES");
                return self
                    .nodes
                    .iter()
                    .position(|n| n.port() == port)
                    .expect("the owner is one of ours");
            }
        }
        panic!("no master serves slot {slot}");
    }

    /// Moves `slot` to node `to` as `redis-cli --cluster reshard` does: `to` imports it, its
    /// owner migrates it, its keys go over one by one (`MIGRATE`), waiting `pause` after each,
    /// then every node is told its new owner. While keys are split, a command naming a key that
    /// is not where it looks gets `ASK` or `TRYAGAIN`. Returns how many keys moved.
    pub fn move_slot(&self, slot: u16, to: usize, pause: Duration) -> usize {
        let Some(mut moving) = self.start_move(slot, to) else {
            return 0;
        };
        while moving.migrate(1) == 1 {
            std::thread::sleep(pause);
        }
        moving.finish()
    }

    /// Starts moving `slot` to node `to` (`None` if it serves it already): `to` imports it,
    /// its owner migrates it; no key has moved yet.
    pub fn start_move(&self, slot: u16, to: usize) -> Option<SlotMove<'_>> {
        let from = self.owner_of(slot);
        if from == to {
            return None;
        }
        let (from_id, to_id) = (self.node_id(from), self.node_id(to));
        let slot_arg = slot.to_string();
        self.nodes[to].cli(&["CLUSTER", "SETSLOT", &slot_arg, "IMPORTING", &from_id]);
        self.nodes[from].cli(&["CLUSTER", "SETSLOT", &slot_arg, "MIGRATING", &to_id]);
        Some(SlotMove {
            cluster: self,
            slot: slot_arg,
            from,
            to,
            to_id,
            moved: 0,
        })
    }

    /// Adds a replica of node `master` and waits until it is in sync; its index.
    pub fn add_replica(&mut self, master: usize) -> usize {
        let replica = start_node();
        let master_id = self.node_id(master);
        let (new, existing) = (address(&replica), address(&self.nodes[master]));
        replica.cli(&[
            "--cluster",
            "add-node",
            &new,
            &existing,
            "--cluster-slave",
            "--cluster-master-id",
            &master_id,
        ]);
        self.nodes.push(replica);
        let i = self.nodes.len() - 1;
        self.wait_for(&format!("node {i} to replicate node {master}"), |c| {
            c.nodes[i]
                .cli(&["INFO", "replication"])
                .contains("master_link_status:up")
        });
        self.wait_until_ok();
        i
    }

    /// Fails node `replica`'s master over to it (`CLUSTER FAILOVER`: the master stops taking
    /// writes, the replica catches up, then takes over) and waits until every node agrees.
    pub fn failover(&self, replica: usize) {
        self.nodes[replica].cli(&["CLUSTER", "FAILOVER"]);
        self.wait_for(&format!("node {replica} to become a master"), |c| {
            c.nodes[replica].cli(&["ROLE"]).starts_with("master")
        });
        self.wait_until_ok();
    }

    /// Whether node `i` is a master right now.
    pub fn is_master(&self, i: usize) -> bool {
        self.nodes[i].cli(&["ROLE"]).starts_with("master")
    }

    /// Waits until every running node reports `cluster_state:ok` and they agree on who serves
    /// every slot.
    pub fn wait_until_ok(&self) {
        self.wait_for("cluster_state:ok on every node", |c| {
            let running: Vec<&RedisServer> = c.nodes.iter().filter(|n| n.is_running()).collect();
            let ok = running
                .iter()
                .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"));
            ok && running
                .iter()
                .map(|n| slot_owners(&n.cli(&["CLUSTER", "NODES"])))
                .collect::<std::collections::BTreeSet<_>>()
                .len()
                == 1
        });
    }

    fn wait_for(&self, what: &str, done: impl Fn(&Self) -> bool) {
        let until = Instant::now() + READY_WITHIN;
        while !done(self) {
            assert!(
                Instant::now() < until,
                "the cluster did not get {what} within {READY_WITHIN:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn any_node(&self) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| n.is_running())
            .expect("a running node")
    }

    fn masters(&self) -> impl Iterator<Item = &RedisServer> {
        self.nodes
            .iter()
            .filter(|n| n.is_running() && n.cli(&["ROLE"]).starts_with("master"))
    }
}

/// A slot on its way from one master to another ([`RedisCluster::start_move`]).
pub struct SlotMove<'a> {
    cluster: &'a RedisCluster,
    slot: String,
    from: usize,
    to: usize,
    to_id: String,
    moved: usize,
}

impl SlotMove<'_> {
    /// Migrates up to `n` more of the slot's keys; how many went.
    pub fn migrate(&mut self, n: usize) -> usize {
        let (source, target) = (&self.cluster.nodes[self.from], &self.cluster.nodes[self.to]);
        let target_port = target.port().to_string();
        let mut moved = 0;
        while moved < n {
            let keys = source.cli(&["CLUSTER", "GETKEYSINSLOT", &self.slot, "1"]);
            let Some(key) = keys.lines().next().filter(|k| !k.is_empty()) else {
                break;
            };
            source.cli(&[
                "MIGRATE",
                "127.0.0.1",
                &target_port,
                "",
                "0",
                "5000",
                "KEYS",
                key,
            ]);
            moved += 1;
        }
        self.moved += moved;
        moved
    }

    /// Migrates the keys left, then tells every node the slot's new owner (the new owner first,
    /// then the old one, then the rest: Redis' documented order). How many keys moved in all.
    pub fn finish(mut self) -> usize {
        self.migrate(usize::MAX);
        let nodes = &self.cluster.nodes;
        let mut order = vec![self.to, self.from];
        order.extend((0..nodes.len()).filter(|i| *i != self.to && *i != self.from));
        for i in order {
            if nodes[i].is_running() {
                nodes[i].cli(&["CLUSTER", "SETSLOT", &self.slot, "NODE", &self.to_id]);
            }
        }
        self.moved
    }
}

impl SharedRedis for RedisCluster {
    /// The seed nodes' URLs, comma-separated (`TOLLGATE_REDIS_URL`).
    fn url(&self) -> String {
        self.nodes[..self.seeds]
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    fn cli(&self, args: &[&str]) -> String {
        self.any_node().cli_following_redirects(args)
    }

    fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys: Vec<String> = self
            .masters()
            .flat_map(|n| {
                let found = n.cli(&["--scan", "--pattern", pattern]);
                found.lines().map(String::from).collect::<Vec<_>>()
            })
            .collect();
        keys.sort();
        keys
    }

    fn command_calls(&self) -> BTreeMap<String, u64> {
        let mut calls = BTreeMap::new();
        for node in self.masters() {
            for (command, n) in node.command_calls() {
                *calls.entry(command).or_insert(0) += n;
            }
        }
        calls
    }
}

/// A cluster node: cluster mode on, its `nodes.conf` in its own directory (so a restart rejoins
/// as the same node).
fn start_node() -> RedisServer {
    RedisServer::start_with(&[
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-node-timeout",
        NODE_TIMEOUT_MS,
    ])
}

fn address(node: &RedisServer) -> String {
    format!("127.0.0.1:{}", node.port())
}

/// Who serves which slots, from a `CLUSTER NODES` answer: master id → its ranges.
fn slot_owners(nodes: &str) -> BTreeMap<String, Vec<String>> {
    nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() > 8 && fields[2].contains("master")).then(|| {
                (
                    fields[0].to_string(),
                    fields[8..].iter().map(|s| s.to_string()).collect(),
                )
            })
        })
        .collect()
}
