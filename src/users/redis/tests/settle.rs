//! Settlement counts once: a settlement sent twice changes nothing the second time, a settled
//! request meters nothing, and a replica's local settlement (made while Redis was away) counts
//! its request once.

use super::{
    admit_ok, config_for, cost, ledger, mock_price, request, roomy_limits, settlement, usage, ASK,
};
use crate::users::outage::Known;
use crate::users::redis::Metered;
use crate::users::usage::Counts;
use tollgate_testkit::redis::RedisServer;

#[actix_rt::test]
async fn a_repeated_settlement_is_counted_once() {
    let server = RedisServer::start();
    let config = config_for(&server);
    let ledger = ledger(&config);
    let prefix = ledger.user_prefix("once");
    let limits = roomy_limits();
    let price = mock_price();

    let admitted = admit_ok(&ledger, &prefix, &request("r1", 100, 200, limits)).await;
    assert_eq!(admitted.decision, Ok(200));
    assert_eq!(
        ledger.meter(&prefix, "r1", 30, ASK, &limits).await.unwrap(),
        Metered::Allowed(
            Known {
                tokens_running: 0,
                spend_today: cost(price, 100, 30),
                spend_month: cost(price, 100, 30),
            },
            // Half the headroom is far more; the request's grant (200) leaves 170.
            170
        )
    );
    let entry = settlement(
        &prefix,
        "r1",
        price,
        admitted.now_ms,
        (100, 50),
        false,
        false,
    );
    ledger.settle(entry.clone()).await;
    let once = usage(&ledger, &prefix).await;
    ledger.settle(entry).await;
    assert_eq!(
        usage(&ledger, &prefix).await,
        once,
        "a second settle changes nothing"
    );
    let spend = cost(price, 100, 50); // 250 + 500 micro-USD
    assert_eq!(spend, 750);
    assert_eq!(
        once,
        Counts {
            requests: 1,
            input_tokens: 100,
            output_tokens: 50,
            cut_requests: 0,
            open_requests: 0,
            open_streams: 0,
            open_input_tokens: 0,
            open_output_tokens: 0,
            minute_used: 1,
            minute_oldest_ms: Some(admitted.now_ms),
            requests_today: 1,
            tokens_running: 150,
            spend_today_running: spend,
            spend_month_running: spend,
        }
    );
    assert_eq!(
        ledger.meter(&prefix, "r1", 5, ASK, &limits).await.unwrap(),
        Metered::Unknown,
        "a settled request meters nothing"
    );

    // A request admitted by a replica alone (Redis away): the settlement counts it, once.
    let (_, now) = ledger.usage(&prefix).await.unwrap();
    let local = settlement(&prefix, "l1", price, now, (40, 60), true, true);
    ledger.settle(local.clone()).await;
    let after_local = usage(&ledger, &prefix).await;
    ledger.settle(local).await;
    assert_eq!(usage(&ledger, &prefix).await, after_local);
    let local_spend = cost(price, 40, 60);
    assert_eq!(
        after_local,
        Counts {
            requests: 2,
            input_tokens: 140,
            output_tokens: 110,
            cut_requests: 1,
            minute_used: 2,
            minute_oldest_ms: Some(admitted.now_ms),
            requests_today: 2,
            tokens_running: 150 + 100,
            spend_today_running: spend + local_spend,
            spend_month_running: spend + local_spend,
            ..Counts::default()
        }
    );
    assert_eq!(ledger.pending_settlements(), 0);
}
