//! A call applied twice counts once. A Redis Cluster client sends a call again when its
//! connection broke before the answer came (it cannot know whether Redis applied it): an
//! admission sent twice is one admission with one answer, a meter report sent twice adds its
//! tokens once, and (as before) a settlement sent twice is one settlement.

use super::{admit_ok, config_for, ledger, request, roomy_limits, usage, ASK};
use crate::users::redis::keys;
use tollgate_testkit::redis::RedisServer;

#[actix_rt::test]
async fn an_admission_sent_twice_is_one_admission_with_the_same_answer() {
    let server = RedisServer::start();
    let ledger = ledger(&config_for(&server));
    let prefix = ledger.user_prefix("twice");
    let mut req = request("r1", 100, 200, roomy_limits());
    req.batch = super::BATCH;
    let first = admit_ok(&ledger, &prefix, &req).await;
    let again = admit_ok(&ledger, &prefix, &req).await;
    assert_eq!(again.decision, first.decision);
    assert_eq!(again.allowance, first.allowance);
    assert!(first.allowance > 0);
    assert_eq!(
        (again.minute_used, again.known),
        (first.minute_used, first.known)
    );
    let counts = usage(&ledger, &prefix).await;
    assert_eq!((counts.requests, counts.requests_today), (1, 1));
    assert_eq!((counts.open_requests, counts.minute_used), (1, 1));
}

#[actix_rt::test]
async fn a_meter_report_sent_twice_adds_its_tokens_once() {
    let server = RedisServer::start();
    let ledger = ledger(&config_for(&server));
    let prefix = ledger.user_prefix("twice");
    let limits = roomy_limits();
    admit_ok(&ledger, &prefix, &request("r1", 100, 500, limits)).await;
    // The meter script as `RedisLedger::meter` calls it, with one call id, twice.
    let meter = |call: u64| {
        let args = [
            30,
            ASK.needed,
            ASK.batch.min,
            ASK.batch.max,
            limits.daily_cap_micro_usd,
            limits.monthly_cap_micro_usd,
            call,
        ];
        let (ledger, prefix) = (&ledger, &prefix);
        async move {
            ledger
                .link
                .script::<Vec<u64>>(
                    "meter",
                    false,
                    &ledger.scripts.meter,
                    prefix,
                    &args,
                    &["r1"],
                )
                .await
                .expect("Redis answers")
        }
    };
    let first = meter(7).await;
    let again = meter(7).await;
    assert_eq!(again, [first[0], first[1], first[2], again[3], first[4]]);
    assert_eq!(usage(&ledger, &prefix).await.open_output_tokens, 30);
    // Another report (another id) adds its own.
    meter(8).await;
    assert_eq!(usage(&ledger, &prefix).await.open_output_tokens, 60);
    // And the ledger's own calls never reuse an id.
    ledger.meter(&prefix, "r1", 5, ASK, &limits).await.unwrap();
    ledger.meter(&prefix, "r1", 5, ASK, &limits).await.unwrap();
    assert_eq!(usage(&ledger, &prefix).await.open_output_tokens, 70);
    // Nothing was written under the guard key.
    assert_eq!(server.cli(&["EXISTS", &keys::guard_key(&prefix)]), "0");
}
