//! Tests of the Redis ledger against a real `redis-server` (one per test, from the shared
//! harness `tollgate_testkit::redis`), one theme per file:
//!
//! - [`lua`]: the Lua calendar and cost helpers agree with the Rust ones;
//! - [`book`]: the scripts decide exactly as the in-memory [`Book`](crate::users::book::Book)
//!   does for the same sequence of admissions, meters and settlements;
//! - [`settle`]: settlement counts once, repeated or made by a replica alone;
//! - [`leases`]: a request whose lease ended is charged what it metered, and its late
//!   settlement adds the rest once;
//! - [`reprice`]: a re-priced request is billed at its new price however it ends, a refused
//!   re-price changes nothing, and the script decides as the book does;
//! - [`org`]: the organisation's counter keeps within its cap and counts settlements once;
//! - [`replicas`]: limits hold across replicas sharing one Redis;
//! - [`expiry`]: every key written expires;
//! - [`replay`]: settlements made while Redis is away are replayed once it is back;
//! - [`persistence`]: how Redis persists is reported, and lost keys are detected;
//! - [`resend`]: a call applied twice (a cluster client sends one again after a broken
//!   connection) counts once;
//! - [`cluster`]: against a Redis Cluster, every master is loaded and checked, and no script
//!   runs while a user's slot is split between two masters.
//!
//! This file holds their shared setup: a deterministic RNG, the config and ledger for a server,
//! prices, limits, requests and settlements. These tests only observe the ledger from outside
//! (its public calls, plus `redis-cli` and raw `EVAL` of the prelude); they never write a
//! user's keys behind the scripts' back.

mod book;
mod cluster;
mod expiry;
mod leases;
mod lua;
mod org;
mod persistence;
mod replay;
mod replicas;
mod reprice;
mod resend;
mod settle;

use super::{Admitted, PendingSettle, RedisLedger};
use crate::accounting::Usage;
use crate::calendar::{day_key, month_key};
use crate::config::{Config, ModelPrice, Secret};
use crate::pricing::{Price, PriceTable};
use crate::telemetry::{LabelSets, Metrics};
use crate::users::allowance::{Ask, Batch};
use crate::users::book::AdmitRequest;
use crate::users::limits::UserLimits;
use crate::users::usage::Counts;
use std::collections::BTreeMap;
use tollgate_testkit::redis::RedisServer;

/// The relay's batch bounds, as the default config has them.
const BATCH: Batch = Batch { min: 16, max: 256 };
/// A report that holds no chunk, in those batches.
const ASK: Ask = Ask {
    needed: 0,
    batch: BATCH,
};

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
            ..ModelPrice::default()
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
        // No first allowance: the tests that want one meter for it.
        batch: Batch { min: 0, max: 0 },
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
        org_day: None,
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
