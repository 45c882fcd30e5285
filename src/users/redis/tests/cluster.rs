//! The ledger against a real three-master Redis Cluster (`tollgate_testkit::redis_cluster`):
//! the scripts are loaded and the state checked on every master (persistence, markers), and no
//! script runs while a user's slot is split between two masters: the call waits (the client
//! retries `TRYAGAIN`) and then reads every key where the move left it.

use super::{admit_ok, ledger, request, roomy_limits, usage};
use crate::config::{Config, Secret};
use crate::users::redis::{keys, Persistence};
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tollgate_testkit::redis::SharedRedis;
use tollgate_testkit::redis_cluster::RedisCluster;

fn config_for_cluster(cluster: &RedisCluster, op_timeout_ms: u64) -> Config {
    let mut config = Config::default();
    config.redis.url = Secret::new(cluster.url());
    config.redis.op_timeout_ms = op_timeout_ms;
    config.redis.connect_timeout_ms = 2000;
    config.redis.lease_secs = 600;
    config
}

#[actix_rt::test]
async fn every_master_gets_the_scripts_and_its_own_checks() {
    let cluster = RedisCluster::start(3);
    let ledger = ledger(&config_for_cluster(&cluster, 2000));
    assert_eq!(ledger.mode(), ("cluster", 3));
    ledger.check_server().await;
    for node in cluster.nodes() {
        let sha = ledger.scripts.admit.get_hash().to_string();
        assert_eq!(node.cli(&["SCRIPT", "EXISTS", &sha]), "1", "{}", node.url());
    }

    let check = ledger.check_state(true).await;
    assert!(check.complete && !check.keys_lost, "{check:?}");
    assert_eq!(check.persistence, Persistence::AppendOnly);
    // One marker per master, each in a slot that master serves.
    let markers = cluster.keys("tollgate:marker:*");
    let owners: BTreeSet<usize> = markers
        .iter()
        .map(|key| cluster.owner_of(keys::slot_of(key.as_bytes())))
        .collect();
    assert_eq!((markers.len(), owners.len()), (3, 3), "{markers:?}");

    // One master stops persisting: the cluster is reported as that master.
    let weak = &cluster.nodes()[1];
    weak.cli(&["CONFIG", "SET", "appendonly", "no"]);
    weak.cli(&["CONFIG", "SET", "save", ""]);
    assert_eq!(
        ledger.check_state(true).await.persistence,
        Persistence::None
    );
    assert_eq!(ledger.persistence(), Persistence::None);

    // One master loses its keys: noticed, once.
    cluster.nodes()[2].cli(&["FLUSHALL"]);
    assert!(ledger.check_state(false).await.keys_lost);
    assert!(!ledger.check_state(false).await.keys_lost);
    assert_eq!(ledger.losses.load(Ordering::Acquire), 1);
    assert_eq!(cluster.keys("tollgate:marker:*").len(), 3);
}

#[actix_rt::test]
async fn no_script_runs_while_a_user_s_slot_is_split_between_two_masters() {
    let cluster = RedisCluster::start(3);
    // A short timeout: a call that meets the split slot gives up rather than wait for the test.
    let ledger = ledger(&config_for_cluster(&cluster, 300));
    // And a patient one for the call that waits for the move to end (which takes longer than
    // the short timeout on a busy machine).
    let patient = super::ledger(&config_for_cluster(&cluster, 5000));
    let prefix = ledger.user_prefix("split");
    let limits = roomy_limits();
    for i in 0..3 {
        admit_ok(
            &ledger,
            &prefix,
            &request(&format!("r{i}"), 100, 50, limits),
        )
        .await;
    }
    let before = usage(&ledger, &prefix).await;
    assert_eq!(before.requests, 3);

    let slot = keys::slot_of(prefix.as_bytes());
    let to = (cluster.owner_of(slot) + 1) % 3;
    let mut moving = cluster.start_move(slot, to).expect("another master");
    assert_eq!(
        moving.migrate(2),
        2,
        "some of the user's keys moved, not all"
    );
    // Neither node holds them all: every script call is refused, none reads half the keys.
    assert!(ledger.usage(&prefix).await.is_err());
    assert!(ledger
        .admit(&prefix, &request("r3", 100, 50, limits))
        .await
        .is_err());
    assert_eq!(
        cluster.nodes()[to].cli(&["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()]),
        "2",
        "a script wrote on the importing master"
    );

    // A call made while the slot is split waits (retrying) until the move finishes, then
    // finds every key where the move left it: nothing lost, nothing counted twice.
    let (waited, moved) = std::thread::scope(|s| {
        let call = s.spawn(|| {
            actix_rt::System::new().block_on(async { patient.usage(&prefix).await.map(|(c, _)| c) })
        });
        std::thread::sleep(Duration::from_millis(100));
        let moved = moving.finish();
        (call.join().expect("the call's thread"), moved)
    });
    assert!(moved >= 4, "{moved} keys");
    assert_eq!(waited.expect("answered once the slot moved"), before);
    assert_eq!(cluster.owner_of(slot), to);
    admit_ok(&ledger, &prefix, &request("r3", 100, 50, limits)).await;
    assert_eq!(usage(&ledger, &prefix).await.requests, 4);
}
