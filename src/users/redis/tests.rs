//! Tests of the Redis ledger against a real `redis-server` (one per test, from the shared
//! harness `tollgate_testkit::redis`): the Lua calendar and cost helpers agree with the Rust
//! ones, the scripts decide exactly as the in-memory [`Book`] does for the same sequence of
//! admissions, meters and settlements, settlement counts once (repeated, replayed, or after its
//! lease ended), limits hold across replicas sharing one Redis, every key written expires, and
//! settlements made while Redis is away are replayed once it is back.
//!
//! These tests only observe the ledger from outside (its public calls, plus `redis-cli` and raw
//! `EVAL` of the prelude); they never write a user's keys behind the scripts' back.

/// The relay's largest meter batch, as the default config has it.
const MAX_BATCH: u64 = 256;

use super::{Admitted, Metered, PendingSettle, RedisLedger, PRELUDE};
use crate::accounting::{Outcome, Usage};
use crate::config::{Config, ModelPrice, Secret};
use crate::error::{ApiError, ErrorCode};
use crate::pricing::{Price, PriceTable};
use crate::telemetry::{LabelSets, Metrics};
use crate::users::book::{AdmitRequest, Book, Counts, Refusal};
use crate::users::calendar::{day_key, month_key, DAY_MS};
use crate::users::limits::UserLimits;
use crate::users::org::OrgLedger;
use crate::users::outage::Known;
use deadpool_redis::redis::{self, cmd};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_testkit::redis::RedisServer;

// ---------------------------------------------------------------------------------------------
// Helpers

/// A small deterministic RNG (SplitMix64), so every run drives the same sequence.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    /// `true` with probability `percent` %.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// A config pointing at `server`, with timeouts generous enough for a loaded machine.
fn config_for(server: &RedisServer) -> Config {
    let mut config = Config::default();
    config.redis.url = Secret::new(server.url());
    config.redis.op_timeout_ms = 2000;
    config.redis.connect_timeout_ms = 2000;
    config.redis.lease_secs = 600;
    config
}

fn ledger(config: &Config) -> RedisLedger {
    RedisLedger::new(
        config,
        Metrics::install(10, LabelSets::new(Vec::new(), Vec::new())),
    )
    .expect("a usable redis.url")
}

/// The configured price of `mock-gpt` ($2.50 / M input, $10 / M output).
fn mock_price() -> Price {
    PriceTable::new(&Config::default().pricing)
        .price("mock-gpt")
        .expect("mock-gpt is priced by default")
}

/// A price of exactly `in_nano` / `out_nano` nano-USD per token.
fn price_of(in_nano: u64, out_nano: u64) -> Price {
    let price = PriceTable::new(&BTreeMap::from([(
        "m".to_string(),
        ModelPrice {
            input_per_million_usd: in_nano as f64 / 1000.0,
            output_per_million_usd: out_nano as f64 / 1000.0,
        },
    )]))
    .price("m")
    .expect("priced");
    assert_eq!(price.nano_usd_per_token(), (in_nano, out_nano));
    price
}

fn cost(price: Price, input_tokens: u64, output_tokens: u64) -> u64 {
    price.cost_micro_usd(Usage {
        input_tokens,
        output_tokens,
    })
}

/// Limits that bind nowhere unless a test lowers one.
fn roomy_limits() -> UserLimits {
    UserLimits {
        requests_per_minute: 1000,
        requests_per_day: 10_000,
        tokens_per_day: 10_000_000,
        max_concurrent_streams: 1000,
        min_granted_tokens: 1,
        daily_cap_micro_usd: 1_000_000_000,
        monthly_cap_micro_usd: 1_000_000_000,
        alert_threshold_percent: 80,
    }
}

fn request(id: &str, input: u64, max_tokens: u32, limits: UserLimits) -> AdmitRequest {
    AdmitRequest {
        request_id: id.into(),
        estimated_input_tokens: input,
        max_tokens,
        choices: 1,
        stream: true,
        price: mock_price(),
        limits,
    }
}

/// The settlement the actor would send for a request the ledger admitted at `admitted`.
fn settlement(
    prefix: &str,
    id: &str,
    price: Price,
    admitted_ms: u64,
    usage: (u64, u64),
    cut: bool,
    local: bool,
) -> PendingSettle {
    let (input_nano_usd, output_nano_usd) = price.nano_usd_per_token();
    PendingSettle {
        prefix: prefix.into(),
        request_id: id.to_string(),
        input_tokens: usage.0,
        output_tokens: usage.1,
        cut,
        local,
        day: day_key(admitted_ms),
        month: month_key(admitted_ms),
        input_nano_usd,
        output_nano_usd,
        admitted_ms,
    }
}

async fn admit_ok(ledger: &RedisLedger, prefix: &str, req: &AdmitRequest) -> Admitted {
    let admitted = ledger.admit(prefix, req).await.expect("Redis answers");
    assert!(
        admitted.decision.is_ok(),
        "{} was refused: {admitted:?}",
        req.request_id
    );
    admitted
}

async fn usage(ledger: &RedisLedger, prefix: &str) -> Counts {
    ledger.usage(prefix).await.expect("Redis answers").0
}

/// Polls `done` every 20 ms for at most `within`; panics with `what` if it never holds.
async fn wait_until(within: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Evaluates the prelude followed by `body` on the user prefix `t:{lua}:`, with `args`.
fn eval_prelude(server: &RedisServer, body: &str, args: &[u64]) -> Vec<u64> {
    let client = redis::Client::open(server.url()).expect("a redis URL");
    let mut conn = client.get_connection().expect("connect to redis-server");
    cmd("EVAL")
        .arg(format!("{PRELUDE}\n{body}"))
        .arg(1)
        .arg("t:{lua}:")
        .arg(args)
        .query(&mut conn)
        .expect("the script runs")
}

// ---------------------------------------------------------------------------------------------
// 1. The Lua helpers agree with the Rust ones.

#[test]
fn lua_month_of_matches_the_rust_calendar_for_every_day_until_2189() {
    let server = RedisServer::start();
    let body = "local out = {}\n\
                for i = 1, #ARGV do out[i] = month_of(tonumber(ARGV[i])) end\n\
                return out";
    let days: Vec<u64> = (0..=80_000).collect();
    let mut lua = Vec::with_capacity(days.len());
    for batch in days.chunks(10_000) {
        lua.extend(eval_prelude(&server, body, batch));
    }
    assert_eq!(lua.len(), days.len());
    for (&day, &month) in days.iter().zip(&lua) {
        assert_eq!(
            month,
            u64::from(month_key(day * DAY_MS)),
            "month_of({day}) in Lua vs calendar::month_key"
        );
    }
    // Anchors computed independently (Python's datetime), as year * 12 + month - 1.
    let anchors = [
        (0, 1970 * 12),           // 1970-01-01
        (11_016, 2000 * 12 + 1),  // 2000-02-29, a leap day of a 400-year leap year
        (11_017, 2000 * 12 + 2),  // 2000-03-01
        (20_088, 2024 * 12 + 11), // 2024-12-31
        (20_089, 2025 * 12),      // 2025-01-01
        (47_540, 2100 * 12 + 1),  // 2100-02-28: 2100 is not a leap year
        (47_541, 2100 * 12 + 2),  // 2100-03-01
        (79_989, 2189 * 12),      // 2189-01-01
    ];
    for (day, month) in anchors {
        assert_eq!(lua[day as usize], month, "month_of({day})");
    }
}

#[test]
fn lua_cost_matches_price_cost_micro_usd() {
    let server = RedisServer::start();
    let body = "local out = {}\n\
                for i = 1, #ARGV, 4 do\n\
                  out[#out + 1] = cost(tonumber(ARGV[i]), tonumber(ARGV[i + 1]),\n\
                    tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]))\n\
                end\n\
                return out";
    let mut rng = Rng(0x5EED_C057);
    let mut triples: Vec<[u64; 4]> = vec![
        [0, 0, 2500, 10_000],
        [1, 0, 2500, 10_000],    // 2.5 micro-USD rounds up to 3
        [0, 1, 1, 1],            // 1 nano-USD rounds up to 1 micro-USD
        [2, 1, 2500, 10_000],    // 15
        [1, 1, 499, 500],        // exactly 999 nano: 1
        [1, 1, 500, 500],        // exactly 1000 nano: 1
        [1, 1, 500, 501],        // 1001 nano: 2
        [1_000_000, 0, 2500, 0], // 2.5 USD
        [128_000, 16_384, 75_000, 150_000],
    ];
    for i in 0..6000 {
        let t = match i % 3 {
            // Small counts and prices, where the round-up decides the answer.
            0 => [
                rng.range(0, 20),
                rng.range(0, 20),
                rng.range(0, 3000),
                rng.range(0, 3000),
            ],
            // Realistic requests at realistic prices ($0.01 .. $200 per million tokens).
            1 => [
                rng.range(0, 200_000),
                rng.range(0, 100_000),
                rng.range(10, 200_000),
                rng.range(10, 200_000),
            ],
            // Large lifetimes of tokens at up to $1000 per million.
            _ => [
                rng.range(0, 100_000_000),
                rng.range(0, 100_000_000),
                rng.range(0, 1_000_000),
                rng.range(0, 1_000_000),
            ],
        };
        triples.push(t);
    }
    let mut lua = Vec::new();
    for batch in triples.chunks(1000) {
        let args: Vec<u64> = batch.iter().flatten().copied().collect();
        lua.extend(eval_prelude(&server, body, &args));
    }
    assert_eq!(lua.len(), triples.len());
    for (&[input, output, in_nano, out_nano], &got) in triples.iter().zip(&lua) {
        let want = cost(price_of(in_nano, out_nano), input, output);
        assert_eq!(
            got, want,
            "cost({input}, {output}, {in_nano}, {out_nano}) in Lua vs Price::cost_micro_usd"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 2. The scripts decide as the book does.

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
        Refusal::OrgDaily => panic!("Redis has no organisation cap"),
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

    /// Meters both; `Some(within)` for an open request, `None` for an unknown one.
    async fn meter(&mut self, id: &str, tokens: u64) -> Option<bool> {
        let context = format!("{}: meter {id} +{tokens}", self.prefix);
        let open_in_book = self.book.open_request(id).is_some();
        let ours = self
            .ledger
            .meter(&self.prefix, id, tokens, &self.limits, MAX_BATCH)
            .await
            .expect("Redis answers");
        let (now, limits) = (self.now, self.limits);
        let theirs = self.book.meter(id, tokens, &limits, now, &self.org);
        // The script grants the next allowance whatever the verdict; so does the book here.
        let granted = self.book.grant_allowance(id, &limits, &self.org, MAX_BATCH);
        let report = self.book.report(&limits, now);
        let book_spend = (report.daily_usd.used_usd, report.monthly_usd.used_usd);
        let spend = |k: Known| (k.spend_today as f64 / 1e6, k.spend_month as f64 / 1e6);
        let ours = match ours {
            Metered::Within(known, allowance) => {
                assert_eq!(spend(known), book_spend, "{context}: spend");
                assert_eq!(allowance, granted, "{context}: allowance");
                Some(true)
            }
            Metered::Over(known) => {
                assert_eq!(spend(known), book_spend, "{context}: spend");
                Some(false)
            }
            Metered::Unknown => None,
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
    let daily_cap_micro_usd = tight((300, 3000), 1_000_000_000);
    let monthly_cap_micro_usd = tight((200, 2500), 1_000_000_000);
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
    let mut meters: HashMap<Option<bool>, u64> = HashMap::new();

    for seed in 1..=12u64 {
        let mut rng = Rng(seed * 7919);
        let limits = random_limits(&mut rng);
        // Prices that are not whole micro-USD per token, so costs round up.
        let price = price_of(rng.range(1, 20_000), rng.range(1, 20_000));
        let mut twin = Twin::new(&ledger, &format!("equiv-{seed}"), limits, price);
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
                let answer = twin.meter(&id, rng.range(0, 60)).await;
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
    for answer in [Some(true), Some(false), None] {
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
    assert_eq!(t.admit("a", 100, 200, 1, true).await, Ok(200));
    assert_eq!(
        t.meter("a", 90).await,
        Some(true),
        "100 + 900 = 1000, the cap"
    );
    assert_eq!(
        t.admit("b", 0, 10, 1, true).await,
        Ok(10),
        "1000 + 0: not past"
    );
    assert_eq!(t.admit("c", 1, 10, 1, true).await, Err(Refusal::DailySpend));
    assert_eq!(t.meter("a", 0).await, Some(true));
    assert_eq!(t.meter("b", 1).await, Some(false), "1010 > 1000");
    t.settle("b", 0, 0, done).await;
    assert_eq!(t.meter("a", 0).await, Some(true), "back to 1000");
    t.settle("a", 100, 90, done).await;
    assert_eq!(t.check("daily").await.spend_today_running, 1000);
    assert_eq!(t.admit("d", 1, 10, 1, true).await, Err(Refusal::DailySpend));

    // Monthly spend, likewise (the daily cap is far away).
    let limits = UserLimits {
        monthly_cap_micro_usd: 600,
        ..roomy_limits()
    };
    let mut t = Twin::new(&ledger, "monthly", limits, micro);
    assert_eq!(t.admit("a", 600, 1, 1, false).await, Ok(1), "at the cap");
    assert_eq!(t.admit("b", 0, 1, 1, false).await, Ok(1));
    assert_eq!(
        t.admit("c", 1, 1, 1, false).await,
        Err(Refusal::MonthlySpend)
    );
    assert_eq!(t.meter("b", 0).await, Some(true));
    assert_eq!(t.meter("b", 1).await, Some(false), "610 > 600");
    assert_eq!(t.check("monthly").await.spend_month_running, 610);

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
    assert_eq!(t.meter("a", 1_000_000).await, Some(true));
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

// ---------------------------------------------------------------------------------------------
// 3. Settlement counts once.

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
        ledger
            .meter(&prefix, "r1", 30, &limits, MAX_BATCH)
            .await
            .unwrap(),
        Metered::Within(
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
        ledger
            .meter(&prefix, "r1", 5, &limits, MAX_BATCH)
            .await
            .unwrap(),
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
        ledger
            .meter(&prefix, "a", 40, &limits, MAX_BATCH)
            .await
            .unwrap(),
        Metered::Within(..)
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
        ledger
            .meter(&prefix, "a", 500, &limits, MAX_BATCH)
            .await
            .unwrap(),
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
    ledger
        .meter(&prefix, "a", 40, &limits, MAX_BATCH)
        .await
        .unwrap();
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

// ---------------------------------------------------------------------------------------------
// 4. Limits hold across replicas.

/// Runs `n` admits of fresh ids split between two ledgers (two "replicas", each on its own OS
/// thread and runtime, released together) and returns every decision.
fn admit_from_two_replicas(
    server: &RedisServer,
    user: &str,
    n: usize,
    limits: UserLimits,
) -> Vec<Result<u32, Refusal>> {
    let config = config_for(server);
    let barrier = Arc::new(std::sync::Barrier::new(2));
    let threads: Vec<_> = (0..2)
        .map(|replica| {
            let (config, barrier, user) = (config.clone(), barrier.clone(), user.to_string());
            std::thread::spawn(move || {
                actix_rt::System::new().block_on(async move {
                    let ledger = ledger(&config);
                    let prefix = ledger.user_prefix(&user);
                    // Connect (and load the script) before the race starts.
                    ledger.usage(&prefix).await.expect("Redis answers");
                    let requests: Vec<AdmitRequest> = (0..n)
                        .filter(|i| i % 2 == replica)
                        .map(|i| request(&format!("c{i}"), 10, 10, limits))
                        .collect();
                    barrier.wait();
                    futures::future::join_all(requests.iter().map(|r| ledger.admit(&prefix, r)))
                        .await
                        .into_iter()
                        .map(|a| a.expect("Redis answers").decision)
                        .collect::<Vec<_>>()
                })
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().expect("a replica thread"))
        .collect()
}

#[actix_rt::test]
async fn two_replicas_admit_exactly_the_requests_per_minute_between_them() {
    let server = RedisServer::start();
    let limits = UserLimits {
        requests_per_minute: 10,
        ..roomy_limits()
    };
    let decisions = admit_from_two_replicas(&server, "race", 50, limits);
    assert_eq!(decisions.len(), 50);
    let admitted = decisions.iter().filter(|d| d.is_ok()).count();
    assert_eq!(admitted, 10, "{decisions:?}");
    assert!(decisions
        .iter()
        .all(|d| matches!(d, Ok(10) | Err(Refusal::Minute { .. }))));
    let ledger = ledger(&config_for(&server));
    let counts = usage(&ledger, &ledger.user_prefix("race")).await;
    assert_eq!(
        (counts.requests, counts.minute_used, counts.open_requests),
        (10, 10, 10)
    );
}

#[actix_rt::test]
async fn two_replicas_share_the_concurrency_cap() {
    let server = RedisServer::start();
    let limits = UserLimits {
        max_concurrent_streams: 3,
        ..roomy_limits()
    };
    let decisions = admit_from_two_replicas(&server, "streams", 50, limits);
    let admitted = decisions.iter().filter(|d| d.is_ok()).count();
    assert_eq!(admitted, 3, "{decisions:?}");
    assert!(decisions
        .iter()
        .all(|d| matches!(d, Ok(10) | Err(Refusal::Concurrency))));
}

// ---------------------------------------------------------------------------------------------
// 5. Every key expires.

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
    ledger.meter(&p, "a", 20, &limits, MAX_BATCH).await.unwrap();
    let entry = settlement(&p, "a", price, a.now_ms, (50, 20), false, false);
    ledger.settle(entry.clone()).await;
    ledger.settle(entry).await;
    admit_ok(&ledger, &p, &request("b", 50, 100, limits)).await;
    ledger.meter(&p, "b", 5, &limits, MAX_BATCH).await.unwrap();
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
    short.meter(&q, "d", 7, &limits, MAX_BATCH).await.unwrap();
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

// ---------------------------------------------------------------------------------------------
// 6. Outages: the journal and the probe.

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
    ledger
        .meter(&prefix, "o1", 20, &limits, MAX_BATCH)
        .await
        .unwrap();
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
        Err(super::Unavailable::CircuitOpen)
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
