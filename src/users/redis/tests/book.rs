//! The scripts decide as the in-memory [`Book`] does: one user kept twice (in Redis through
//! the ledger, and in a book fed Redis' own clock) through random sequences of admissions,
//! meters and settlements, and at every limit's boundary; decisions, Retry-After, rate-limit
//! headers and usage must agree.

use super::{config_for, ledger, mock_price, price_of, roomy_limits, settlement, Rng, BATCH};
use crate::accounting::{Outcome, Usage};
use crate::error::{ApiError, ErrorCode};
use crate::pricing::Price;
use crate::users::allowance::{Ask, Batch};
use crate::users::book::{AdmitRequest, Book};
use crate::users::limits::UserLimits;
use crate::users::org::OrgLedger;
use crate::users::outage::Known;
use crate::users::redis::{Metered, RedisLedger};
use crate::users::refusal::Refusal;
use crate::users::usage::Counts;
use std::collections::HashMap;
use tollgate_testkit::redis::RedisServer;

/// Which refusal the book's error stands for.
fn book_kind(error: &ApiError) -> &'static str {
    match error.code {
        // A spend refusal that is not final: only promised spend stood in the way.
        ErrorCode::DailyBudget if !error.final_answer => "spend-in-flight",
        ErrorCode::ConcurrentStreams => "concurrency",
        ErrorCode::RequestsPerMinute => "minute",
        ErrorCode::RequestsPerDay => "day-requests",
        ErrorCode::DailyBudget => "daily-spend",
        ErrorCode::MonthlyBudget => "monthly-spend",
        ErrorCode::TokensPerDay => "day-tokens",
        other => panic!("the book refused with {other:?}"),
    }
}

fn redis_kind(refusal: Refusal) -> &'static str {
    match refusal {
        Refusal::Concurrency => "concurrency",
        Refusal::Minute { .. } => "minute",
        Refusal::DayRequests => "day-requests",
        Refusal::DailySpend => "daily-spend",
        Refusal::MonthlySpend => "monthly-spend",
        Refusal::DayTokens => "day-tokens",
        Refusal::SpendInFlight => "spend-in-flight",
        Refusal::OrgDaily | Refusal::OrgInFlight => {
            panic!("the user's script has no organisation cap")
        }
        Refusal::AdminChanged => panic!("no operator settings in this test"),
    }
}

/// One user kept twice: in Redis through the ledger and in a [`Book`] fed Redis' own clock.
/// Every call goes to both and asserts they answer alike; [`Twin::check`] compares usage.
struct Twin<'a> {
    ledger: &'a RedisLedger,
    prefix: String,
    book: Book,
    org: OrgLedger,
    limits: UserLimits,
    price: Price,
    /// The relay's batch bounds, for allowances.
    batch: Batch,
    /// Redis' time at the last call that reported it.
    now: u64,
    /// Admission time and grant of each admitted request, as the actor keeps them.
    admitted: Vec<(String, u64, u32)>,
    /// How often each decision came up (admitted, or the refusal's kind).
    seen: HashMap<&'static str, u64>,
}

impl<'a> Twin<'a> {
    fn new(ledger: &'a RedisLedger, user: &str, limits: UserLimits, price: Price) -> Self {
        Self {
            ledger,
            prefix: ledger.user_prefix(user),
            book: Book::default(),
            org: OrgLedger::new(0),
            limits,
            price,
            batch: BATCH,
            now: 0,
            admitted: Vec::new(),
            seen: HashMap::new(),
        }
    }

    async fn admit(
        &mut self,
        id: &str,
        input: u64,
        max_tokens: u32,
        choices: u64,
        stream: bool,
    ) -> Result<u32, Refusal> {
        let req = AdmitRequest {
            request_id: id.to_string(),
            estimated_input_tokens: input,
            max_tokens,
            choices,
            stream,
            price: self.price,
            limits: self.limits,
            batch: self.batch,
        };
        let ours = self
            .ledger
            .admit(&self.prefix, &req)
            .await
            .expect("Redis answers");
        self.now = ours.now_ms;
        let (now, limits) = (self.now, self.limits);
        let theirs = self.book.admit(req, now, &self.org);
        let context = format!(
            "{}: admit {id} ({input}, {max_tokens} x {choices})",
            self.prefix
        );
        match (ours.decision, &theirs) {
            (Ok(granted), Ok(grant)) => {
                assert_eq!(granted, grant.max_tokens, "{context}: granted");
                assert_eq!(ours.allowance, grant.allowance, "{context}: allowance");
                let counts = Counts {
                    minute_used: ours.minute_used,
                    tokens_running: ours.known.tokens_running,
                    ..Counts::default()
                };
                assert_eq!(
                    counts.rate_limits(&limits),
                    grant.rate_limits,
                    "{context}: rate-limit headers"
                );
                self.admitted.push((id.to_string(), now, granted));
                *self.seen.entry("admitted").or_default() += 1;
            }
            (Err(refusal), Err(error)) => {
                assert_eq!(redis_kind(refusal), book_kind(error), "{context}");
                let ours = refusal.error(&limits, now);
                assert_eq!(
                    ours.retry_after_secs, error.retry_after_secs,
                    "{context}: Retry-After"
                );
                *self.seen.entry(redis_kind(refusal)).or_default() += 1;
            }
            (ours, theirs) => panic!(
                "{context}: Redis decided {ours:?}, the book {:?}",
                theirs.as_ref().map(|g| g.max_tokens).map_err(|e| e.code)
            ),
        }
        // The figures the admit script reports are the book's after its decision.
        let report = self.book.report(&limits, now);
        assert_eq!(
            (
                ours.minute_used,
                ours.known.tokens_running,
                ours.known.spend_today as f64 / 1e6,
                ours.known.spend_month as f64 / 1e6,
                ours.expired_leases,
            ),
            (
                report.requests_per_minute.used,
                report.tokens_per_day.used,
                report.daily_usd.used_usd,
                report.monthly_usd.used_usd,
                0,
            ),
            "{context}: (minute, tokens, spend today, spend month, expired leases)"
        );
        ours.decision
    }

    /// Meters both, asking for an allowance of at least `needed`: `Some(allowance)` for an
    /// open request, `None` for an unknown one.
    async fn meter(&mut self, id: &str, tokens: u64, needed: u64) -> Option<u64> {
        let context = format!("{}: meter {id} +{tokens} (needs {needed})", self.prefix);
        let open_in_book = self.book.open_request(id).is_some();
        let ask = Ask {
            needed,
            batch: self.batch,
        };
        let ours = self
            .ledger
            .meter(&self.prefix, id, tokens, ask, &self.limits)
            .await
            .expect("Redis answers");
        let (now, limits) = (self.now, self.limits);
        let theirs = self.book.meter(id, tokens, ask, &limits, now, &self.org);
        let report = self.book.report(&limits, now);
        let book_spend = (report.daily_usd.used_usd, report.monthly_usd.used_usd);
        let spend = |k: Known| (k.spend_today as f64 / 1e6, k.spend_month as f64 / 1e6);
        let ours = match ours {
            Metered::Allowed(known, allowance) => {
                assert_eq!(spend(known), book_spend, "{context}: spend");
                Some(allowance)
            }
            Metered::Unknown => None,
            Metered::AdminChanged => panic!("{context}: no operator settings in this test"),
        };
        let expected = if open_in_book { Some(theirs) } else { None };
        assert_eq!(ours, expected, "{context}: Redis vs the book");
        ours
    }

    /// Settles an admitted request in both (as the actor would: with its admission facts).
    async fn settle(&mut self, id: &str, input: u64, output: u64, outcome: Outcome) {
        let &(_, admitted_ms, _) = self
            .admitted
            .iter()
            .find(|(i, _, _)| i == id)
            .expect("settle only what was admitted");
        self.ledger
            .settle(settlement(
                &self.prefix,
                id,
                self.price,
                admitted_ms,
                (input, output),
                outcome != Outcome::Completed,
                false,
            ))
            .await;
        assert_eq!(
            self.ledger.pending_settlements(),
            0,
            "the settle reached Redis"
        );
        let usage = Usage {
            input_tokens: input,
            output_tokens: output,
        };
        let now = self.now;
        self.book.settle(id, usage, outcome, now, &self.org);
    }

    /// Asserts the book and Redis report the same usage; returns Redis' counts.
    async fn check(&mut self, context: &str) -> Counts {
        let (counts, now) = self
            .ledger
            .usage(&self.prefix)
            .await
            .expect("Redis answers");
        self.now = now;
        let limits = self.limits;
        assert_eq!(
            counts.report(&limits, now),
            self.book.report(&limits, now),
            "{}: usage differs after {context}",
            self.prefix
        );
        counts
    }

    /// One of the admitted requests: an open one (if any) five times in six, else any.
    fn pick(&self, rng: &mut Rng) -> (String, u32) {
        let open: Vec<&(String, u64, u32)> = self
            .admitted
            .iter()
            .filter(|(id, _, _)| self.book.open_request(id).is_some())
            .collect();
        let (id, _, granted) = if open.is_empty() || rng.chance(17) {
            &self.admitted[rng.range(0, self.admitted.len() as u64 - 1) as usize]
        } else {
            open[rng.range(0, open.len() as u64 - 1) as usize]
        };
        (id.clone(), *granted)
    }
}

/// Limits where each window is, by the toss of a coin, small enough to refuse now and then.
fn random_limits(rng: &mut Rng) -> UserLimits {
    let mut tight = |small: (u64, u64), roomy: u64| {
        if rng.chance(50) {
            rng.range(small.0, small.1)
        } else {
            roomy
        }
    };
    let requests_per_minute = tight((3, 8), 1000);
    let requests_per_day = tight((3, 8), 1000);
    let tokens_per_day = tight((600, 2500), 10_000_000);
    let daily_cap_micro_usd = tight((300, 20_000), 1_000_000_000);
    let monthly_cap_micro_usd = tight((200, 15_000), 1_000_000_000);
    UserLimits {
        requests_per_minute,
        requests_per_day,
        tokens_per_day,
        max_concurrent_streams: rng.range(1, 4),
        min_granted_tokens: rng.range(1, 300) as u32,
        daily_cap_micro_usd,
        monthly_cap_micro_usd,
        alert_threshold_percent: 80,
    }
}

#[actix_rt::test]
async fn the_scripts_decide_exactly_as_the_book_does() {
    let server = RedisServer::start();
    let ledger = ledger(&config_for(&server));
    let mut seen: HashMap<&'static str, u64> = HashMap::new();
    let mut meters: HashMap<&'static str, u64> = HashMap::new();

    for seed in 1..=12u64 {
        let mut rng = Rng(seed * 7919);
        let limits = random_limits(&mut rng);
        // Prices that are not whole micro-USD per token, so costs round up.
        let price = price_of(rng.range(1, 20_000), rng.range(1, 20_000));
        let mut twin = Twin::new(&ledger, &format!("equiv-{seed}"), limits, price);
        // Allowances from a token at a time to the default batches.
        let min = rng.range(0, 16);
        twin.batch = Batch {
            min,
            max: rng.range(min, 256),
        };
        twin.check("nothing").await;

        for op in 0..40 {
            let dice = rng.range(0, 99);
            if dice < 45 || twin.admitted.is_empty() {
                let input = rng.range(0, 400);
                let max_tokens = rng.range(0, 500) as u32;
                let (choices, stream) = (rng.range(0, 3), rng.chance(50));
                let _decision = twin
                    .admit(&format!("r{op}"), input, max_tokens, choices, stream)
                    .await;
            } else if dice < 75 {
                let (id, _) = twin.pick(&mut rng);
                let needed = rng.range(0, 20);
                let answer = match twin.meter(&id, rng.range(0, 60), needed).await {
                    None => "unknown",
                    Some(a) if a < needed => "short",
                    Some(_) => "allowed",
                };
                *meters.entry(answer).or_default() += 1;
            } else {
                let (id, granted) = twin.pick(&mut rng);
                let input = rng.range(0, 450);
                let output = rng.range(0, u64::from(granted) + 20);
                let outcome = if rng.chance(70) {
                    Outcome::Completed
                } else {
                    Outcome::CutBudget
                };
                twin.settle(&id, input, output, outcome).await;
            }
            twin.check(&format!("op {op}")).await;
        }

        // Settle whatever is still open; the end state must match too.
        let still_open: Vec<String> = twin
            .admitted
            .iter()
            .filter(|(id, _, _)| twin.book.open_request(id).is_some())
            .map(|(id, _, _)| id.clone())
            .collect();
        for id in still_open {
            twin.settle(&id, 7, 11, Outcome::Completed).await;
        }
        let counts = twin.check("the end").await;
        assert_eq!(counts.open_requests, 0);
        assert!(counts.requests > 0, "seed {seed} admitted nothing");
        for (kind, n) in twin.seen {
            *seen.entry(kind).or_default() += n;
        }
    }

    // The sequences must have exercised every rule, or the comparison proves little.
    for kind in [
        "admitted",
        "concurrency",
        "minute",
        "day-requests",
        "daily-spend",
        "monthly-spend",
        "day-tokens",
    ] {
        assert!(
            seen.get(kind).copied().unwrap_or(0) >= 3,
            "too few {kind} decisions in the sequences: {seen:?}"
        );
    }
    for answer in ["allowed", "short", "unknown"] {
        assert!(
            meters.get(&answer).copied().unwrap_or(0) >= 3,
            "too few meter answers {answer:?}: {meters:?}"
        );
    }
}

#[actix_rt::test]
async fn the_scripts_and_the_book_agree_at_every_boundary() {
    let server = RedisServer::start();
    let ledger = ledger(&config_for(&server));
    let price = mock_price(); // 2500 nano-USD per input token, 10 000 per output token
    let done = Outcome::Completed;

    // Daily spend: exactly at the cap is within; one micro-USD past it is not. (At 1 micro-USD
    // per input token and 10 per output token every step is one exact micro-USD.)
    let micro = price_of(1000, 10_000);
    let limits = UserLimits {
        daily_cap_micro_usd: 1000,
        ..roomy_limits()
    };
    let mut t = Twin::new(&ledger, "daily", limits, micro);
    // A stream is promised half the headroom at admission: 900 → 45 tokens.
    assert_eq!(t.admit("a", 100, 200, 1, true).await, Ok(200));
    // Each report: half of what is left, down to the small batch, then the rest.
    assert_eq!(t.meter("a", 45, 1).await, Some(22));
    assert_eq!(t.meter("a", 22, 1).await, Some(16));
    assert_eq!(t.meter("a", 16, 1).await, Some(7));
    assert_eq!(
        t.meter("a", 7, 1).await,
        Some(0),
        "100 + 900 = 1000, the cap"
    );
    assert_eq!(
        t.admit("b", 0, 10, 1, true).await,
        Ok(10),
        "1000 + 0: not past"
    );
    assert_eq!(t.admit("c", 1, 10, 1, true).await, Err(Refusal::DailySpend));
    assert_eq!(t.meter("b", 0, 1).await, Some(0), "nothing left");
    // A report past the allowance (only a settlement can do that) is counted all the same.
    assert_eq!(t.meter("b", 1, 0).await, Some(0), "1010 > 1000");
    t.settle("b", 0, 0, done).await;
    assert_eq!(t.meter("a", 0, 0).await, Some(0), "back to 1000");
    t.settle("a", 100, 90, done).await;
    assert_eq!(t.check("daily").await.spend_today_running, 1000);
    assert_eq!(t.admit("d", 1, 10, 1, true).await, Err(Refusal::DailySpend));

    // Monthly spend, likewise (the daily cap is far away).
    let limits = UserLimits {
        monthly_cap_micro_usd: 600,
        ..roomy_limits()
    };
    let mut t = Twin::new(&ledger, "monthly", limits, micro);
    assert_eq!(t.admit("a", 600, 1, 1, true).await, Ok(1), "at the cap");
    assert_eq!(t.admit("b", 0, 1, 1, true).await, Ok(1));
    assert_eq!(
        t.admit("c", 1, 1, 1, true).await,
        Err(Refusal::MonthlySpend)
    );
    assert_eq!(t.meter("b", 0, 1).await, Some(0));
    assert_eq!(t.meter("b", 1, 0).await, Some(0), "610 > 600");
    assert_eq!(t.check("monthly").await.spend_month_running, 610);

    // A whole (non-streamed) reply: its max_tokens capped by the spend left, at least the
    // smallest grant; the grant promised until it settles.
    let limits = UserLimits {
        daily_cap_micro_usd: 1000,
        ..roomy_limits()
    };
    let mut t = Twin::new(&ledger, "whole", limits, micro);
    assert_eq!(
        t.admit("a", 100, 500, 1, false).await,
        Ok(90),
        "(1000 − 100) ÷ 10"
    );
    assert_eq!(
        t.admit("b", 0, 10, 1, false).await,
        Err(Refusal::SpendInFlight)
    );
    t.settle("a", 100, 40, done).await;
    assert_eq!(
        t.admit("b", 0, 100, 2, false).await,
        Ok(25),
        "(1000 − 500) ÷ 10 ÷ 2"
    );
    assert_eq!(
        t.admit("c", 0, 100, 1, false).await,
        Err(Refusal::SpendInFlight)
    );
    t.settle("b", 0, 50, done).await;
    assert_eq!(
        t.admit("c", 1, 100, 1, false).await,
        Err(Refusal::DailySpend)
    );

    // Each open request's cost rounds up on its own: 2 × ⌈2.5⌉ = 6, not ⌈5⌉.
    let mut t = Twin::new(&ledger, "rounding", roomy_limits(), price);
    t.admit("a", 1, 1, 1, false).await.unwrap();
    t.admit("b", 1, 1, 1, false).await.unwrap();
    assert_eq!(t.check("two open").await.spend_today_running, 6);
    t.settle("a", 1, 0, done).await;
    t.settle("b", 1, 0, done).await;
    assert_eq!(t.check("two settled").await.spend_today_running, 6);

    // Tokens per day: the grant shrinks to what is left, down to the minimum grant.
    let limits = UserLimits {
        tokens_per_day: 1000,
        min_granted_tokens: 50,
        ..roomy_limits()
    };
    let mut t = Twin::new(&ledger, "tokens", limits, price);
    assert_eq!(
        t.admit("a", 100, 400, 2, true).await,
        Ok(400),
        "900 reserved"
    );
    assert_eq!(
        t.admit("b", 0, 100, 2, true).await,
        Ok(50),
        "(1000 - 900) / 2"
    );
    assert_eq!(
        t.admit("c", 0, 0, 1, true).await,
        Ok(0),
        "nothing asked, none left"
    );
    assert_eq!(t.admit("d", 0, 1, 1, true).await, Err(Refusal::DayTokens));
    assert_eq!(t.admit("e", 0, 1, 0, true).await, Err(Refusal::DayTokens));
    t.settle("a", 100, 10, done).await; // 110 used instead of 900 reserved
    assert_eq!(
        t.admit("f", 90, 1000, 3, true).await,
        Ok(233),
        "(790 - 90) / 3"
    );
    assert_eq!(
        t.admit("g", 0, 60, 1, true).await,
        Err(Refusal::DayTokens),
        "1 left, min(50, 60) = 50 needed"
    );
    assert_eq!(t.check("tokens").await.tokens_running, 999);
    assert_eq!(
        t.admit("h", 0, 1, 1, true).await,
        Ok(1),
        "min(50, 1) = 1 fits"
    );
    assert_eq!(t.check("tokens").await.tokens_running, 1000);

    // Requests per minute: the refusal says when the oldest admission leaves the window.
    let limits = UserLimits {
        requests_per_minute: 3,
        ..roomy_limits()
    };
    let mut t = Twin::new(&ledger, "minute", limits, price);
    t.admit("a", 1, 1, 1, true).await.unwrap();
    let first = t.now;
    t.admit("b", 1, 1, 1, true).await.unwrap();
    t.admit("c", 1, 1, 1, true).await.unwrap();
    assert_eq!(
        t.admit("d", 1, 1, 1, true).await,
        Err(Refusal::Minute {
            frees_at_ms: first + 60_000
        })
    );
    t.settle("a", 1, 1, done).await;
    assert!(matches!(
        t.admit("e", 1, 1, 1, true).await,
        Err(Refusal::Minute { .. })
    ));
    t.check("minute").await;

    // No requests per minute at all.
    let limits = UserLimits {
        requests_per_minute: 0,
        ..roomy_limits()
    };
    let mut t = Twin::new(&ledger, "no-minute", limits, price);
    let refused = t.admit("a", 1, 1, 1, true).await;
    assert_eq!(
        refused,
        Err(Refusal::Minute {
            frees_at_ms: t.now + 60_000
        })
    );

    // Limits lifted as the load scripts lift them (counts far past 2^53, where Lua's doubles
    // round; a $1M cap, whose headroom in nano-USD stays below 2^53 for the meter allowance).
    let lifted = UserLimits {
        requests_per_minute: u64::MAX,
        requests_per_day: u64::MAX / 4,
        tokens_per_day: u64::MAX,
        max_concurrent_streams: u64::MAX,
        min_granted_tokens: u32::MAX,
        daily_cap_micro_usd: u64::MAX,
        monthly_cap_micro_usd: 1_000_000_000_000,
        alert_threshold_percent: 80,
    };
    let mut t = Twin::new(&ledger, "lifted", lifted, price);
    assert_eq!(t.admit("a", 100_000, u32::MAX, 1, true).await, Ok(u32::MAX));
    assert_eq!(t.admit("b", 0, 1, 4, false).await, Ok(1));
    assert!(t.meter("a", 1_000_000, 0).await.is_some());
    t.settle("a", 100_000, 1_000_000, done).await;
    t.check("lifted").await;

    // Requests per day, and concurrency freed by a settlement.
    let limits = UserLimits {
        requests_per_day: 3,
        max_concurrent_streams: 2,
        ..roomy_limits()
    };
    let mut t = Twin::new(&ledger, "day-and-slots", limits, price);
    t.admit("a", 1, 1, 1, true).await.unwrap();
    t.admit("b", 1, 1, 1, false).await.unwrap();
    assert_eq!(t.admit("c", 1, 1, 1, true).await, Err(Refusal::Concurrency));
    t.settle("b", 1, 1, Outcome::ClientGone).await;
    t.admit("c", 1, 1, 1, true).await.unwrap();
    t.settle("a", 1, 1, done).await;
    assert_eq!(t.admit("d", 1, 1, 1, true).await, Err(Refusal::DayRequests));
    let counts = t.check("day").await;
    assert_eq!(
        (
            counts.requests_today,
            counts.cut_requests,
            counts.open_streams
        ),
        (3, 1, 1)
    );
}
