//! The organisation's counter (`org.lua`): admission within the cap (refused past it, or "soon"
//! when only promises stand in the way), allowances that never pass it, re-prices checked
//! against it, and settlements counted once, also those of requests it never saw (admitted by
//! a replica alone) and those replayed from a journal.

use super::{config_for, ledger, mock_price, settlement};
use crate::calendar::day_key;
use crate::users::redis::{OrgAsk, OrgDecision, OrgOp, RedisLedger};
use crate::users::refusal::Refusal;
use tollgate_testkit::redis::RedisServer;

/// A ledger with an organisation cap of `cap_micro_usd`.
fn org_ledger(server: &RedisServer, cap_micro_usd: u64) -> RedisLedger {
    let mut config = config_for(server);
    config.cost.max_org_daily_usd = cap_micro_usd as f64 / 1e6;
    ledger(&config)
}

fn ask(cost: u64, needed: u64, min: u64, want: u64) -> OrgAsk {
    OrgAsk {
        cost,
        needed,
        min,
        want,
    }
}

/// The counter's figures: (spend, promised, open).
fn figures(server: &RedisServer, day: u64) -> (u64, u64, u64) {
    let key = format!("tollgate:org:{{org}}:day:{day}");
    let field = |f: &str| server.cli(&["HGET", &key, f]).parse().unwrap_or(0);
    (field("spend"), field("promised"), field("open"))
}

#[actix_rt::test]
async fn the_organisation_s_counter_never_promises_past_its_cap() {
    let server = RedisServer::start();
    let ledger = org_ledger(&server, 1_000);
    assert_eq!(ledger.org_cap(), Some(1_000));
    let org = |op, id: &'static str, day, a| {
        let ledger = &ledger;
        async move { ledger.org(op, id, day, a).await.expect("Redis answers") }
    };

    // A stream: its input (100), then half the free 900 (within its batches of 10 … 2,560).
    let a = org(OrgOp::Admit, "a", 0, ask(100, 0, 10, 2_560)).await;
    assert_eq!(a.decision, OrgDecision::Granted(450));
    let day = a.day;
    assert_eq!(figures(&server, day), (100, 450, 1));
    // A whole reply that needs 300 beside a's promise (100 + 450 + 50 + 300 ≤ 1,000) is given
    // what it wants, up to what is free.
    let b = org(OrgOp::Admit, "b", 0, ask(50, 300, 1_000, 1_000)).await;
    assert_eq!(b.decision, OrgDecision::Granted(400));
    assert_eq!(b.running, 1_000);
    // Nothing is free: a third is refused "soon" (only promises stand in the way), or for good
    // if the spend itself leaves no room.
    let c = org(OrgOp::Admit, "c", 0, ask(10, 0, 10, 100)).await;
    assert_eq!(c.decision, OrgDecision::Refused(Refusal::OrgInFlight));
    let d = org(OrgOp::Admit, "d", 0, ask(900, 0, 10, 100)).await;
    assert_eq!(d.decision, OrgDecision::Refused(Refusal::OrgDaily));
    assert_eq!(figures(&server, day), (150, 850, 2));

    // a used 300 of its 450 (cost now 400) and asks for more: 150 is free beside b's promise,
    // and half of it over two open requests, 37, is granted.
    let a2 = org(OrgOp::Meter, "a", day, ask(400, 10, 10, 2_560)).await;
    assert_eq!(a2.decision, OrgDecision::Granted(37));
    // A re-price of b that would need more than is free is refused, changing nothing.
    let r = org(OrgOp::Reprice, "b", day, ask(60, 600, 600, 600)).await;
    assert_eq!(r.decision, OrgDecision::Refused(Refusal::OrgDaily));
    assert_eq!(figures(&server, day), (450, 437, 2));

    // b settles for less than it was promised; a settlement sent twice counts once.
    let price = mock_price();
    let mut b_done = settlement("p:", "b", price, 0, (20, 10), false, false); // 50 + 100
    b_done.org_day = Some(day);
    ledger.settle(b_done.clone()).await;
    ledger.settle(b_done).await;
    assert_eq!(figures(&server, day), (400 + 150, 37, 1));
    // A request the counter never saw (admitted by a replica alone) is added, once.
    let mut alone = settlement("p:", "alone", price, 0, (0, 5), false, true); // 50
    alone.org_day = Some(day);
    ledger.settle(alone.clone()).await;
    ledger.settle(alone).await;
    assert_eq!(figures(&server, day), (600, 37, 1));
    // A late copy of a settled request's admission is not admitted again.
    let late = org(OrgOp::Admit, "b", day, ask(1, 0, 1, 1)).await;
    assert_eq!(late.decision, OrgDecision::Unknown);
    let gone = org(OrgOp::Meter, "b", day, ask(1, 0, 1, 1)).await;
    assert_eq!(gone.decision, OrgDecision::Unknown);

    // The counter's key expires the day after next.
    let key = format!("tollgate:org:{{org}}:day:{day}");
    let expires_at: u64 = server.cli(&["PEXPIRETIME", &key]).parse().unwrap();
    assert_eq!(day_key(expires_at), day + 2);
}

/// A replica that dies holding a request leaves its cost in the organisation's counter but not
/// its promise, once the lease ends; its late (journaled) settlement adds the rest, once.
#[actix_rt::test]
async fn a_dead_replica_s_promise_frees_itself_after_the_lease() {
    let server = RedisServer::start();
    let mut config = config_for(&server);
    config.cost.max_org_daily_usd = 0.001;
    config.redis.lease_secs = 1;
    let ledger = ledger(&config);
    let a = ledger
        .org(OrgOp::Admit, "a", 0, ask(100, 0, 10, 2_560))
        .await
        .unwrap();
    assert_eq!(a.decision, OrgDecision::Granted(450));
    let day = a.day;
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    // The next call frees a's promise (a's cost stays): b gets half of the 900 free.
    let b = ledger
        .org(OrgOp::Admit, "b", 0, ask(0, 0, 10, 2_560))
        .await
        .unwrap();
    assert_eq!(b.decision, OrgDecision::Granted(450));
    assert_eq!(figures(&server, day), (100, 450, 1));
    // a's replica is gone: no more allowances for it.
    let gone = ledger
        .org(OrgOp::Meter, "a", day, ask(300, 10, 10, 100))
        .await
        .unwrap();
    assert_eq!(gone.decision, OrgDecision::Unknown);
    // Its late settlement (cost 250) adds what it used beyond the 100 charged, once.
    let mut late = settlement("p:", "a", mock_price(), 0, (40, 15), true, false); // 100 + 150
    late.org_day = Some(day);
    ledger.settle(late.clone()).await;
    ledger.settle(late).await;
    assert_eq!(figures(&server, day), (250, 450, 1));
}
