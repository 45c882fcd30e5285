//! Every key expires: a user driven through every path (admit, meter, settlements repeated
//! and local, refusal, alert claim, usage, an expired lease, a settlement for a day long gone)
//! leaves only keys with an expiry, none longer than 400 days.

use super::{
    admit_ok, config_for, ledger, mock_price, request, roomy_limits, settlement, usage, ASK,
};
use crate::calendar::{day_key, DAY_MS};
use crate::users::limits::UserLimits;
use crate::users::refusal::Refusal;
use std::time::Duration;
use tollgate_testkit::redis::RedisServer;

#[actix_rt::test]
async fn every_key_written_has_an_expiry() {
    let server = RedisServer::start();
    let config = config_for(&server);
    let ledger = ledger(&config);
    let mut short = config.clone();
    short.redis.lease_secs = 1;
    let short = self::ledger(&short);
    let limits = UserLimits {
        requests_per_minute: 3,
        ..roomy_limits()
    };
    let price = mock_price();

    // One user through every path: admit, meter, settle twice, refusal, local settlement,
    // alert claim, usage.
    let p = ledger.user_prefix("keys");
    let a = admit_ok(&ledger, &p, &request("a", 50, 100, limits)).await;
    ledger.meter(&p, "a", 20, ASK, &limits).await.unwrap();
    let entry = settlement(&p, "a", price, a.now_ms, (50, 20), false, false);
    ledger.settle(entry.clone()).await;
    ledger.settle(entry).await;
    admit_ok(&ledger, &p, &request("b", 50, 100, limits)).await;
    ledger.meter(&p, "b", 5, ASK, &limits).await.unwrap();
    ledger
        .settle(settlement(&p, "l", price, a.now_ms, (9, 9), true, true))
        .await;
    let refused = ledger
        .admit(&p, &request("c", 50, 100, limits))
        .await
        .unwrap();
    assert!(matches!(refused.decision, Err(Refusal::Minute { .. })));
    assert!(ledger
        .claim_alert(&p, "daily", day_key(a.now_ms))
        .await
        .unwrap());
    assert!(!ledger
        .claim_alert(&p, "daily", day_key(a.now_ms))
        .await
        .unwrap());
    usage(&ledger, &p).await;

    // A second user whose request outlives its lease (charged by expire_leases), plus a
    // settlement for a day long gone.
    let q = short.user_prefix("leased");
    let d = admit_ok(&short, &q, &request("d", 50, 100, limits)).await;
    short.meter(&q, "d", 7, ASK, &limits).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let e = admit_ok(&short, &q, &request("e", 50, 100, limits)).await;
    assert_eq!(e.expired_leases, 1);
    let old = d.now_ms - 5 * DAY_MS;
    short
        .settle(settlement(&q, "old", price, old, (1, 1), false, true))
        .await;
    usage(&short, &q).await;

    let keys = server.cli(&["--scan"]);
    let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
    for suffix in [
        "minute",
        "day:",
        "month:",
        "life",
        "open",
        "leases",
        "done:a",
        "done:l",
        "done:d",
        "alert:daily:",
    ] {
        assert!(
            keys.iter().any(|k| k.contains(&format!("}}:{suffix}"))),
            "no key like *:{suffix}* in {keys:?}"
        );
    }
    let mut ttls = Vec::new();
    for key in &keys {
        let pttl: i64 = server
            .cli(&["PTTL", key])
            .parse()
            .expect("PTTL is a number");
        ttls.push((key.to_string(), pttl));
    }
    let never = ttls.iter().filter(|(_, t)| *t <= 0).collect::<Vec<_>>();
    assert!(never.is_empty(), "keys without an expiry: {never:?}");
    // And no expiry is absurdly long: the longest-lived key (life) keeps 400 days.
    assert!(
        ttls.iter().all(|(_, t)| *t <= 400 * DAY_MS as i64),
        "{ttls:?}"
    );
}
