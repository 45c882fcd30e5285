//! Outages: settlements that cannot reach Redis (stopped, or hung past the call's timeout) wait
//! in the journal, the circuit opens after enough failures, and the probe replays the journal
//! once Redis is back, each settlement exactly once even when the timed-out call did reach it.

use super::{
    admit_ok, config_for, cost, ledger, mock_price, request, roomy_limits, settlement, usage, ASK,
};
use crate::users::redis::Unavailable;
use crate::users::usage::Counts;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_testkit::redis::RedisServer;

/// Polls `done` every 20 ms for at most `within`; panics with `what` if it never holds.
async fn wait_until(within: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix_rt::test]
async fn settlements_made_while_redis_is_down_are_replayed_once_it_is_back() {
    let mut server = RedisServer::start();
    let mut config = config_for(&server);
    config.redis.breaker_failures = 3;
    config.redis.probe_interval_ms = 50;
    config.redis.connect_timeout_ms = 500;
    let ledger = Arc::new(ledger(&config));
    let prefix = ledger.user_prefix("outage");
    let limits = roomy_limits();
    let price = mock_price();

    let admitted = admit_ok(&ledger, &prefix, &request("o1", 100, 200, limits)).await;
    ledger.meter(&prefix, "o1", 20, ASK, &limits).await.unwrap();
    assert!(ledger.ready());

    server.stop();
    let entry = settlement(
        &prefix,
        "o1",
        price,
        admitted.now_ms,
        (100, 60),
        true,
        false,
    );
    ledger.settle(entry.clone()).await; // failure 1: kept in the journal
    assert_eq!(ledger.pending_settlements(), 1);
    assert!(ledger.ready(), "one failure does not open the circuit");
    assert!(ledger.usage(&prefix).await.is_err()); // failure 2
    assert!(ledger.ready());
    assert!(ledger
        .admit(&prefix, &request("o2", 1, 1, limits))
        .await
        .is_err()); // failure 3
    assert!(
        !ledger.ready(),
        "breaker_failures failed calls open the circuit"
    );
    assert!(matches!(
        ledger.usage(&prefix).await,
        Err(Unavailable::CircuitOpen)
    ));
    // A settlement while the circuit is open waits in the journal too.
    ledger.settle(entry.clone()).await;
    assert_eq!(ledger.pending_settlements(), 2);

    server.restart();
    actix_rt::spawn(ledger.clone().probe_forever());
    let probed = ledger.clone();
    wait_until(
        Duration::from_secs(10),
        "the journal is replayed",
        move || probed.pending_settlements() == 0 && probed.ready(),
    )
    .await;

    let counts = usage(&ledger, &prefix).await;
    let spend = cost(price, 100, 60);
    assert_eq!(
        counts,
        Counts {
            requests: 1,
            input_tokens: 100,
            output_tokens: 60,
            cut_requests: 1,
            minute_used: 1,
            minute_oldest_ms: Some(admitted.now_ms),
            requests_today: 1,
            tokens_running: 160,
            spend_today_running: spend,
            spend_month_running: spend,
            ..Counts::default()
        },
        "settled once, from the journal"
    );
    ledger.settle(entry).await;
    assert_eq!(usage(&ledger, &prefix).await, counts);
}

#[actix_rt::test]
async fn a_settlement_that_timed_out_but_reached_redis_is_not_counted_twice() {
    let server = RedisServer::start();
    let mut config = config_for(&server);
    config.redis.op_timeout_ms = 300;
    config.redis.probe_interval_ms = 50;
    let ledger = Arc::new(ledger(&config));
    let prefix = ledger.user_prefix("hung");
    let limits = roomy_limits();
    let price = mock_price();

    // Load the settle script first, so the hung call is a plain EVALSHA.
    let warm = admit_ok(&ledger, &prefix, &request("w", 10, 10, limits)).await;
    ledger
        .settle(settlement(
            &prefix,
            "w",
            price,
            warm.now_ms,
            (10, 10),
            false,
            false,
        ))
        .await;
    let h = admit_ok(&ledger, &prefix, &request("h", 100, 200, limits)).await;

    server.pause();
    ledger
        .settle(settlement(
            &prefix,
            "h",
            price,
            h.now_ms,
            (100, 70),
            false,
            false,
        ))
        .await;
    assert_eq!(
        ledger.pending_settlements(),
        1,
        "timed out: kept for replay"
    );
    server.resume();
    // Redis runs the call it had already received...
    let done_key = format!("{prefix}done:h");
    wait_until(
        Duration::from_secs(5),
        "Redis applies the hung call",
        || server.cli(&["EXISTS", &done_key]) == "1",
    )
    .await;
    // ...and the replay must not apply it again.
    actix_rt::spawn(ledger.clone().probe_forever());
    let probed = ledger.clone();
    wait_until(
        Duration::from_secs(10),
        "the journal is replayed",
        move || probed.pending_settlements() == 0,
    )
    .await;
    let counts = usage(&ledger, &prefix).await;
    assert_eq!(
        (
            counts.requests,
            counts.input_tokens,
            counts.output_tokens,
            counts.open_requests
        ),
        (2, 110, 80, 0)
    );
    assert_eq!(
        counts.spend_today_running,
        cost(price, 10, 10) + cost(price, 100, 70)
    );
    assert_eq!(counts.tokens_running, 20 + 170);
}
