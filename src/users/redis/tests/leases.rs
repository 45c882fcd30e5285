//! Leases: a request whose replica went silent past its lease frees its slot and is charged,
//! as cut, what it metered; the replica's late meter changes nothing, its late settlement adds
//! the rest once; and the open record waits for the user however late they come back.

use super::{
    admit_ok, config_for, cost, ledger, mock_price, request, roomy_limits, settlement, usage, ASK,
};
use crate::calendar::DAY_MS;
use crate::users::limits::UserLimits;
use crate::users::redis::Metered;
use crate::users::refusal::Refusal;
use crate::users::usage::Counts;
use std::time::Duration;
use tollgate_testkit::redis::RedisServer;

#[actix_rt::test]
async fn an_expired_lease_charges_what_was_metered_and_a_late_settle_adds_the_rest_once() {
    let server = RedisServer::start();
    let mut config = config_for(&server);
    config.redis.lease_secs = 1;
    let ledger = ledger(&config);
    let prefix = ledger.user_prefix("lease");
    let limits = UserLimits {
        max_concurrent_streams: 1,
        ..roomy_limits()
    };
    let price = mock_price();

    let a = admit_ok(&ledger, &prefix, &request("a", 100, 200, limits)).await;
    assert!(matches!(
        ledger.meter(&prefix, "a", 40, ASK, &limits).await.unwrap(),
        Metered::Allowed(..)
    ));
    let refused = ledger
        .admit(&prefix, &request("b0", 10, 10, limits))
        .await
        .unwrap();
    assert_eq!(
        refused.decision,
        Err(Refusal::Concurrency),
        "the slot is held"
    );
    assert_eq!(refused.expired_leases, 0);

    // The replica holding "a" goes silent past its lease.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let b = admit_ok(&ledger, &prefix, &request("b", 10, 10, limits)).await;
    assert_eq!(b.expired_leases, 1, "a's slot was freed");
    let freed = usage(&ledger, &prefix).await;
    let a_cost = cost(price, 100, 40);
    let b_cost = cost(price, 10, 0);
    assert_eq!(
        freed,
        Counts {
            requests: 2,
            input_tokens: 100,
            output_tokens: 40,
            cut_requests: 1,
            open_requests: 1,
            open_streams: 1,
            open_input_tokens: 10,
            open_output_tokens: 0,
            minute_used: 2,
            minute_oldest_ms: Some(a.now_ms),
            requests_today: 2,
            tokens_running: 140 + 20,
            spend_today_running: a_cost + b_cost,
            spend_month_running: a_cost + b_cost,
        },
        "a was charged its input and the 40 tokens metered, as cut"
    );
    // An open record outlives its lease by far more than the minute the user may take to come
    // back (the slow test below waits it out): it stays until a script charges it.
    for key in ["open", "leases"] {
        let pttl: u64 = server
            .cli(&["PTTL", &format!("{prefix}{key}")])
            .parse()
            .expect("a key with an expiry");
        assert!(pttl > 30 * DAY_MS, "{key} expires in {pttl} ms");
    }

    // The replica was only cut off: its late meter changes nothing, its late settlement adds
    // what it used beyond what the lease expiry charged (140 more output tokens), once, and
    // the request, which completed after all, is no longer counted as cut.
    assert_eq!(
        ledger.meter(&prefix, "a", 500, ASK, &limits).await.unwrap(),
        Metered::Unknown
    );
    let late = settlement(&prefix, "a", price, a.now_ms, (100, 180), false, false);
    ledger.settle(late.clone()).await;
    let extra = cost(price, 0, 140);
    let settled = Counts {
        output_tokens: 180,
        cut_requests: 0,
        tokens_running: freed.tokens_running + 140,
        spend_today_running: freed.spend_today_running + extra,
        spend_month_running: freed.spend_month_running + extra,
        ..freed.clone()
    };
    assert_eq!(usage(&ledger, &prefix).await, settled);
    ledger.settle(late).await;
    assert_eq!(usage(&ledger, &prefix).await, settled, "applied once");
    assert_eq!(ledger.pending_settlements(), 0);
}

/// A dead replica's request is charged when the user is next seen, however much later: the
/// open record must outlive the minute after its lease (until admit.lua at 27fc8a1 it expired
/// `lease + 60 s` after the user's last admit, and what was metered was never charged).
#[ignore = "slow: waits 62 s (a 1 s lease plus the minute the open record once outlived it by)"]
#[actix_rt::test]
async fn an_expired_lease_is_charged_even_if_the_user_comes_back_later() {
    let server = RedisServer::start();
    let mut config = config_for(&server);
    config.redis.lease_secs = 1;
    let ledger = ledger(&config);
    let prefix = ledger.user_prefix("late-user");
    let limits = roomy_limits();
    let price = mock_price();

    admit_ok(&ledger, &prefix, &request("a", 100, 200, limits)).await;
    ledger.meter(&prefix, "a", 40, ASK, &limits).await.unwrap();
    // The replica dies; the user comes back after the open record's expiry.
    tokio::time::sleep(Duration::from_millis(62_000)).await;
    let counts = usage(&ledger, &prefix).await;
    assert_eq!(counts.open_requests, 0);
    assert_eq!(counts.requests, 1);
    assert_eq!(
        (
            counts.input_tokens,
            counts.output_tokens,
            counts.cut_requests
        ),
        (100, 40, 1),
        "what the dead replica metered is charged"
    );
    assert_eq!(counts.spend_today_running, cost(price, 100, 40));
}
