//! Re-pricing (fallback before the first token): the script moves the open entry to the new
//! price when the caps allow it, and then every way a request ends (settlement, even with a
//! stale price in hand; lease expiry) bills at that price; a refusal leaves the entry as it
//! was; and the script decides as [`Book::reprice`](crate::users::book::Book::reprice) does.

use super::{
    admit_ok, config_for, cost, ledger, mock_price, price_of, request, roomy_limits, settlement,
    usage, Rng, ASK,
};
use crate::accounting::{Outcome, Usage};
use crate::pricing::Price;
use crate::users::book::{Book, NoReprice};
use crate::users::limits::UserLimits;
use crate::users::org::OrgLedger;
use crate::users::outage::Known;
use crate::users::redis::{Metered, RedisLedger, Repriced};
use crate::users::refusal::Refusal;
use crate::users::usage::Counts;
use std::time::Duration;
use tollgate_testkit::redis::RedisServer;

/// The fallback model: three times the mock price (100 input tokens: 750 micro-USD).
fn dearer() -> Price {
    price_of(7_500, 30_000)
}

/// The open entry of `id` as stored (`day,month,in_nano,out_nano,input,reserved,...`).
fn open_entry(server: &RedisServer, prefix: &str, id: &str) -> String {
    server.cli(&["HGET", &format!("{prefix}open"), id])
}

/// Both open entries and the user's figures.
async fn snapshot(
    server: &RedisServer,
    ledger: &RedisLedger,
    prefix: &str,
) -> (String, String, Counts) {
    (
        open_entry(server, prefix, "a"),
        open_entry(server, prefix, "b"),
        usage(ledger, prefix).await,
    )
}

async fn reprice(
    ledger: &RedisLedger,
    prefix: &str,
    id: &str,
    price: Price,
    limits: &UserLimits,
) -> Result<(), NoReprice> {
    let repriced = ledger
        .reprice(prefix, id, price, limits)
        .await
        .expect("Redis answers");
    repriced.decision
}

#[actix_rt::test]
async fn a_repriced_request_is_settled_at_its_new_price() {
    let server = RedisServer::start();
    let config = config_for(&server);
    let ledger = ledger(&config);
    let prefix = ledger.user_prefix("fallback");
    let limits = roomy_limits();

    let admitted = admit_ok(&ledger, &prefix, &request("r1", 100, 200, limits)).await;
    assert_eq!(
        ledger
            .reprice(&prefix, "r1", dearer(), &limits)
            .await
            .unwrap(),
        Repriced {
            decision: Ok(()),
            known: Known {
                tokens_running: 0,
                spend_today: 750,
                spend_month: 750,
            },
        }
    );
    let entry = open_entry(&server, &prefix, "r1");
    let fields: Vec<&str> = entry.trim().split(',').collect();
    assert_eq!(&fields[2..6], ["7500", "30000", "100", "300"], "{entry}");
    let counts = usage(&ledger, &prefix).await;
    assert_eq!(
        (counts.tokens_running, counts.spend_today_running),
        (300, 750),
        "the reservation is unchanged; the spend is at the new price"
    );
    assert!(matches!(
        ledger
            .meter(&prefix, "r1", 30, ASK, &limits)
            .await
            .unwrap(),
        Metered::Allowed(k, _) if k.spend_today == cost(dearer(), 100, 30)
    ));
    // The settlement names the admission's price (a copy that missed the re-price): the open
    // entry's price is the one billed.
    let stale = settlement(
        &prefix,
        "r1",
        mock_price(),
        admitted.now_ms,
        (100, 50),
        false,
        false,
    );
    ledger.settle(stale).await;
    let counts = usage(&ledger, &prefix).await;
    assert_eq!(counts.open_requests, 0);
    assert_eq!(counts.spend_today_running, cost(dearer(), 100, 50));
    assert_eq!(counts.spend_month_running, cost(dearer(), 100, 50));
    assert_eq!(
        reprice(&ledger, &prefix, "r1", mock_price(), &limits).await,
        Err(NoReprice::Unknown),
        "a settled request is not re-priced"
    );
}

#[actix_rt::test]
async fn an_expired_lease_charges_a_repriced_request_at_its_new_price() {
    let server = RedisServer::start();
    let mut config = config_for(&server);
    config.redis.lease_secs = 1;
    let ledger = ledger(&config);
    let prefix = ledger.user_prefix("fallback-lease");
    let limits = roomy_limits();

    let a = admit_ok(&ledger, &prefix, &request("a", 100, 200, limits)).await;
    assert_eq!(
        reprice(&ledger, &prefix, "a", dearer(), &limits).await,
        Ok(())
    );
    // The replica holding "a" goes silent past its lease; the next admission frees it.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let b = admit_ok(&ledger, &prefix, &request("b", 10, 10, limits)).await;
    assert_eq!(b.expired_leases, 1);
    let a_input = cost(dearer(), 100, 0);
    assert_eq!(
        usage(&ledger, &prefix).await.spend_today_running,
        a_input + cost(mock_price(), 10, 0)
    );
    // Its late settlement (with the replica's re-priced copy) adds its output, at that price.
    let late = settlement(&prefix, "a", dearer(), a.now_ms, (100, 20), true, false);
    ledger.settle(late).await;
    assert_eq!(
        usage(&ledger, &prefix).await.spend_today_running,
        a_input + cost(dearer(), 0, 20) + cost(mock_price(), 10, 0)
    );
}

#[actix_rt::test]
async fn a_refused_reprice_leaves_the_open_entry_unchanged() {
    let server = RedisServer::start();
    let config = config_for(&server);
    let ledger = ledger(&config);
    let prefix = ledger.user_prefix("refused");
    let limits = UserLimits {
        daily_cap_micro_usd: 1_000,
        monthly_cap_micro_usd: 10_000,
        ..roomy_limits()
    };

    // a: 100 input tokens (250); b: 10 (25), then 10 output (100) and an allowance.
    admit_ok(&ledger, &prefix, &request("a", 100, 200, limits)).await;
    admit_ok(&ledger, &prefix, &request("b", 10, 200, limits)).await;
    // Headroom 1,000 − 375 = 625: half of it over two requests, at 10 per token: 15, raised to
    // the small batch, 16 (160).
    assert!(matches!(
        ledger.meter(&prefix, "b", 10, ASK, &limits).await.unwrap(),
        Metered::Allowed(_, 16)
    ));
    let before = snapshot(&server, &ledger, &prefix).await;
    let unchanged = || snapshot(&server, &ledger, &prefix);

    // 125 + 1,200 > 1,000 today.
    let refused = reprice(&ledger, &prefix, "a", price_of(12_000, 1), &limits).await;
    assert_eq!(refused, Err(NoReprice::Cap(Refusal::DailySpend)));
    assert_eq!(unchanged().await, before, "daily cap");
    // The same under a monthly cap of 1,000 and a roomy daily one.
    let monthly = UserLimits {
        daily_cap_micro_usd: 10_000,
        monthly_cap_micro_usd: 1_000,
        ..limits
    };
    let refused = reprice(&ledger, &prefix, "a", price_of(12_000, 1), &monthly).await;
    assert_eq!(refused, Err(NoReprice::Cap(Refusal::MonthlySpend)));
    assert_eq!(unchanged().await, before, "monthly cap");
    // 125 + 800 ≤ 1,000 < + b's promised 160.
    let refused = reprice(&ledger, &prefix, "a", price_of(8_000, 1), &limits).await;
    assert_eq!(refused, Err(NoReprice::Cap(Refusal::SpendInFlight)));
    assert_eq!(unchanged().await, before, "promised spend");
    // b streamed already.
    let refused = reprice(&ledger, &prefix, "b", dearer(), &limits).await;
    assert_eq!(refused, Err(NoReprice::Metered));
    assert_eq!(unchanged().await, before, "metered");
    let refused = reprice(&ledger, &prefix, "nope", dearer(), &limits).await;
    assert_eq!(refused, Err(NoReprice::Unknown));
    assert_eq!(unchanged().await, before, "unknown");

    // 125 + 715 + 160 = 1,000: exactly the cap passes.
    let passed = reprice(&ledger, &prefix, "a", price_of(7_150, 1), &limits).await;
    assert_eq!(passed, Ok(()));
    assert_eq!(usage(&ledger, &prefix).await.spend_today_running, 840);
}

/// The script and the book, fed the same admissions, meters and clock, take the same decision
/// on every re-price to random prices across the caps, and keep the same spend after it.
#[actix_rt::test]
async fn the_script_reprices_as_the_book_does() {
    let server = RedisServer::start();
    let config = config_for(&server);
    let ledger = ledger(&config);
    let prefix = ledger.user_prefix("twin");
    let limits = UserLimits {
        daily_cap_micro_usd: 3_000,
        monthly_cap_micro_usd: 4_000,
        ..roomy_limits()
    };
    let org = OrgLedger::new(0);
    let mut book = Book::default();

    let mut now = 0;
    for (id, input) in [("a", 100), ("b", 40), ("c", 10)] {
        let req = request(id, input, 200, limits);
        now = admit_ok(&ledger, &prefix, &req).await.now_ms;
        book.admit(req, now, &org).expect("the book admits too");
    }
    // c streams and is promised an allowance, in both.
    let Metered::Allowed(_, allowance) =
        ledger.meter(&prefix, "c", 20, ASK, &limits).await.unwrap()
    else {
        panic!("c is within the caps");
    };
    assert_eq!(book.meter("c", 20, ASK, &limits, now, &org), allowance);
    assert!(allowance > 0);

    let mut rng = Rng(0x0FA1_1BAC);
    let mut seen = std::collections::HashMap::new();
    for step in 0..120 {
        // Input prices from free to $50 / M, for a and b in turn, under either binding cap.
        let in_nano = rng.range(0, 50_000);
        let id = if rng.chance(70) { "a" } else { "b" };
        let caps = if rng.chance(50) {
            UserLimits {
                daily_cap_micro_usd: 10_000,
                ..limits
            }
        } else {
            limits
        };
        let price = price_of(in_nano, 10_000);
        let ours = ledger
            .reprice(&prefix, id, price, &caps)
            .await
            .expect("Redis answers");
        let theirs = book.reprice(id, price, &caps, now, &org);
        assert_eq!(
            ours.decision, theirs,
            "step {step}: re-price {id} to {in_nano}"
        );
        let report = book.report(&caps, now);
        assert_eq!(
            (
                ours.known.spend_today as f64 / 1e6,
                ours.known.spend_month as f64 / 1e6
            ),
            (report.daily_usd.used_usd, report.monthly_usd.used_usd),
            "step {step}: spend after re-pricing {id} to {in_nano}"
        );
        *seen.entry(format!("{:?}", ours.decision)).or_insert(0) += 1;
    }
    for decision in [
        "Ok(())",
        "Err(Cap(DailySpend))",
        "Err(Cap(MonthlySpend))",
        "Err(Cap(SpendInFlight))",
    ] {
        assert!(
            seen.contains_key(decision),
            "{decision} never came up: {seen:?}"
        );
    }
    let c = ledger
        .reprice(&prefix, "c", mock_price(), &limits)
        .await
        .unwrap();
    assert_eq!(c.decision, Err(NoReprice::Metered));
    assert_eq!(
        book.reprice("c", mock_price(), &limits, now, &org),
        c.decision
    );
    // Settled in both at whatever price a ended on: the same spend.
    let usage_a = Usage {
        input_tokens: 100,
        output_tokens: 40,
    };
    let a_price = book.open_request("a").expect("a is open").price;
    ledger
        .settle(settlement(
            &prefix,
            "a",
            a_price,
            now,
            (100, 40),
            false,
            false,
        ))
        .await;
    book.settle("a", usage_a, Outcome::Completed, now, &org);
    assert_eq!(
        usage(&ledger, &prefix).await.spend_today_running as f64 / 1e6,
        book.report(&limits, now).daily_usd.used_usd
    );
}
