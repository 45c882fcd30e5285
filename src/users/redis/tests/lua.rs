//! The Lua helpers of the prelude agree with the Rust ones: `month_of` with the calendar's
//! month key for every day until 2189, and `cost` (rounding up included) with
//! [`Price::cost_micro_usd`](crate::pricing::Price::cost_micro_usd).

use super::{cost, price_of, Rng};
use crate::calendar::{month_key, DAY_MS};
use crate::users::redis::PRELUDE;
use deadpool_redis::redis::{self, cmd};
use tollgate_testkit::redis::RedisServer;

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
