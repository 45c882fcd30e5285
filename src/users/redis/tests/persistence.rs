//! The state check: how Redis persists (append-only file, snapshots, neither), and the marker
//! that shows when Redis lost tollgate's keys: flushed, replaced by another replica's marker,
//! or gone after a restart without persistence, as the probe task finds on reconnecting.

use super::{config_for, ledger};
use crate::users::redis::{keys, Persistence, RedisLedger};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_testkit::redis::RedisServer;

/// Checks until a check is answered whole (the first call after a restart meets the broken
/// connection), at most 10 s.
async fn answered_check(ledger: &RedisLedger, ask_config: bool) -> super::super::StateCheck {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let check = ledger.check_state(ask_config).await;
        if check.complete {
            return check;
        }
        assert!(Instant::now() < until, "no state check was answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[actix_rt::test]
async fn the_check_reports_how_redis_persists() {
    let server = RedisServer::start();
    let ledger = ledger(&config_for(&server));
    assert_eq!(ledger.persistence(), Persistence::Unknown);
    let check = answered_check(&ledger, true).await;
    assert_eq!(check.persistence, Persistence::AppendOnly);
    assert!(!check.keys_lost);
    assert_eq!(ledger.persistence(), Persistence::AppendOnly);

    server.cli(&["CONFIG", "SET", "appendonly", "no"]);
    server.cli(&["CONFIG", "SET", "save", "3600 1"]);
    assert_eq!(
        answered_check(&ledger, true).await.persistence,
        Persistence::Snapshots
    );
    server.cli(&["CONFIG", "SET", "save", ""]);
    let check = answered_check(&ledger, true).await;
    assert_eq!(check.persistence, Persistence::None);
    assert_eq!(ledger.persistence(), Persistence::None);
    // Without asking CONFIG, the last answer stands.
    assert_eq!(
        answered_check(&ledger, false).await.persistence,
        Persistence::None
    );
}

#[actix_rt::test]
async fn flushed_or_replaced_keys_are_detected_and_a_persistent_restart_keeps_them() {
    let mut server = RedisServer::start();
    let ledger = ledger(&config_for(&server));
    let marker = keys::marker_key("tollgate");
    assert!(
        !answered_check(&ledger, true).await.keys_lost,
        "first check"
    );
    assert!(!answered_check(&ledger, false).await.keys_lost);
    // The marker expires like every key tollgate writes.
    let ttl: u64 = server.cli(&["PTTL", &marker]).parse().unwrap();
    assert!(ttl > 0, "marker TTL {ttl}");

    // Restarted with its append-only file: nothing lost.
    server.stop();
    server.restart();
    assert!(!answered_check(&ledger, true).await.keys_lost);

    // Flushed: lost, once; the next check finds the new marker.
    server.cli(&["FLUSHALL"]);
    assert!(answered_check(&ledger, false).await.keys_lost);
    assert!(!answered_check(&ledger, false).await.keys_lost);
    // Re-created by another replica after a loss (another value): lost too.
    server.cli(&["SET", &marker, "another-replicas-marker"]);
    assert!(answered_check(&ledger, false).await.keys_lost);
    assert_eq!(ledger.losses.load(Ordering::Acquire), 2);
}

#[actix_rt::test]
async fn the_probe_task_finds_keys_lost_in_a_restart_without_persistence() {
    let mut server = RedisServer::start();
    let mut config = config_for(&server);
    config.redis.probe_interval_ms = 50;
    config.redis.op_timeout_ms = 500;
    config.redis.connect_timeout_ms = 500;
    // From here on nothing more reaches the append-only file: a restart loses what follows.
    server.cli(&["CONFIG", "SET", "appendonly", "no"]);
    let ledger = Arc::new(ledger(&config));
    actix_rt::spawn(ledger.clone().probe_forever());
    let until = Instant::now() + Duration::from_secs(10);
    while ledger.persistence() != Persistence::None {
        assert!(Instant::now() < until, "the probe task never checked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill();
    server.restart();
    // A call meets the broken connection; the probe task then checks again and finds the
    // marker gone.
    let _ = ledger.usage(&ledger.user_prefix("someone")).await;
    let until = Instant::now() + Duration::from_secs(10);
    while ledger.losses.load(Ordering::Acquire) == 0 {
        assert!(Instant::now() < until, "the lost keys were never detected");
        let _ = ledger.usage(&ledger.user_prefix("someone")).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Restarted from its file, whose appendonly was on: Redis says so again.
    assert_eq!(ledger.persistence(), Persistence::AppendOnly);
}
