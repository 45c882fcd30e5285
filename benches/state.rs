//! The Redis path against the in-memory store, side by side in one run: the latency a request's
//! bookkeeping adds (admit, then the meter reports of a 64-token stream, then settle) and the
//! Redis commands it costs.
//!
//! Two user registries in one process, one per store, against a real `redis-server` started
//! here (`tollgate_testkit::redis`). Requests alternate between the arms (memory, Redis,
//! memory, …) so both see the same machine noise; each arm's users are distinct. Sequential
//! requests measure the added latency; a concurrent phase (`CONC` users at once) shows it under
//! load.
//! Redis commands per request come from `INFO commandstats` deltas.
//!
//! Run: `cargo bench --bench state` (REQUESTS=N, CONC=N change the sizes).

#![allow(clippy::expect_used, clippy::print_stdout)]

use tollgate_testkit::redis;

use std::sync::Arc;
use std::time::Instant;
use tollgate::accounting::{Outcome, Usage};
use tollgate::clock::SystemClock;
use tollgate::config::{Config, Secret};
use tollgate::pricing::PriceTable;
use tollgate::telemetry::{LabelSets, Metrics};
use tollgate::users::{AdmitRequest, MemoryStore, RedisLedger, UserLimits, UserRegistry};

/// Output tokens per request, metered in batches of 16 (the relay's default).
const OUTPUT_TOKENS: u64 = 64;
const METER_BATCH: u64 = 16;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((p / 100.0) * (sorted.len() - 1) as f64).round() as usize]
}

/// One request's bookkeeping; returns (admit µs, whole bookkeeping µs).
async fn one_request(
    registry: &UserRegistry,
    user: &str,
    id: &str,
    req: AdmitRequest,
) -> (f64, f64) {
    let started = Instant::now();
    let mut ticket = registry
        .admit(
            user,
            AdmitRequest {
                request_id: id.to_string(),
                ..req
            },
        )
        .await
        .expect("admitted");
    let admitted = started.elapsed();
    for _ in 0..OUTPUT_TOKENS / METER_BATCH {
        ticket.meter(METER_BATCH, METER_BATCH).await;
    }
    let usage = Usage {
        input_tokens: req_input(),
        output_tokens: OUTPUT_TOKENS,
    };
    ticket.settle(usage, Outcome::Completed).await;
    (
        admitted.as_secs_f64() * 1e6,
        started.elapsed().as_secs_f64() * 1e6,
    )
}

fn req_input() -> u64 {
    20
}

fn summary(name: &str, samples: &mut [f64]) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(samples, 50.0), percentile(samples, 99.0));
    println!(
        "  {name:<28} p50 {p50:>8.1} µs   p99 {p99:>8.1} µs   (n = {})",
        samples.len()
    );
    (p50, p99)
}

fn main() {
    let requests = env_or("REQUESTS", 4000);
    let conc = env_or("CONC", 64);
    let server = redis::RedisServer::start();
    // The harness fsyncs every write (crash tests); production runs fsync once a second.
    server.cli(&["CONFIG", "SET", "appendfsync", "everysec"]);
    actix_rt::System::new().block_on(async move {
        let mut config = Config::default();
        // Lift the windows: this measures bookkeeping, not refusals.
        config.rate.requests_per_minute = u64::MAX / 4;
        config.rate.requests_per_day = u64::MAX / 4;
        config.rate.tokens_per_day = u64::MAX / 4;
        config.rate.max_concurrent_streams = 1_000_000;
        config.cost.max_daily_usd = 1e9;
        config.cost.max_monthly_usd = 1e9;
        config.redis.url = Secret::new(server.url());
        config.redis.op_timeout_ms = 1000;
        let metrics = Metrics::install(10, LabelSets::new(Vec::new(), Vec::new()));
        let ledger = Arc::new(RedisLedger::new(&config, metrics.clone()).expect("redis ledger"));
        let memory = Arc::new(UserRegistry::new(2, &config, Arc::new(SystemClock), metrics.clone(), Arc::new(MemoryStore::default()), None));
        let redis = Arc::new(UserRegistry::new(2, &config, Arc::new(SystemClock), metrics, Arc::new(MemoryStore::default()), Some(ledger.clone())));
        let limits = UserLimits::for_plan(&config, "pro");
        let price = PriceTable::new(&config.pricing).price("mock-gpt").expect("priced");
        let request = AdmitRequest {
            request_id: String::new(),
            estimated_input_tokens: req_input(),
            max_tokens: 100,
            choices: 1,
            stream: true,
            price,
            limits,
        };
        // Warm up both (actors, the connection, script loading).
        for i in 0..200 {
            one_request(&memory, &format!("m{}", i % 50), &format!("wm{i}"), request.clone()).await;
            one_request(&redis, &format!("r{}", i % 50), &format!("wr{i}"), request.clone()).await;
        }

        println!("Per-request bookkeeping, sequential ({requests} requests per arm, interleaved, 100 users each):");
        let (mut m_admit, mut m_all, mut r_admit, mut r_all) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let before = server.command_calls();
        for i in 0..requests {
            let (a, t) = one_request(&memory, &format!("m{}", i % 100), &format!("m{i}"), request.clone()).await;
            m_admit.push(a);
            m_all.push(t);
            let (a, t) = one_request(&redis, &format!("r{}", i % 100), &format!("r{i}"), request.clone()).await;
            r_admit.push(a);
            r_all.push(t);
        }
        let after = server.command_calls();
        let (ma50, ma99) = summary("memory: admit", &mut m_admit);
        let (ra50, ra99) = summary("redis:  admit", &mut r_admit);
        let (mt50, mt99) = summary("memory: admit+4 meters+settle", &mut m_all);
        let (rt50, rt99) = summary("redis:  admit+4 meters+settle", &mut r_all);
        println!("  added by Redis, admit:       p50 {:>8.1} µs   p99 {:>8.1} µs", ra50 - ma50, ra99 - ma99);
        println!("  added by Redis, bookkeeping: p50 {:>8.1} µs   p99 {:>8.1} µs", rt50 - mt50, rt99 - mt99);
        println!("  ratio redis ÷ memory, bookkeeping: p50 {:.1}×  p99 {:.1}×", rt50 / mt50, rt99 / mt99);

        let mut total = 0;
        let mut per_command = Vec::new();
        for (name, calls) in &after {
            let delta = calls - before.get(name).copied().unwrap_or(0);
            if delta > 0 && name != "info" {
                total += delta;
                per_command.push(format!("{name} {:.2}", delta as f64 / requests as f64));
            }
        }
        println!(
            "  Redis commands per request: {:.2} ({}); a request = 1 admit + {} meter + 1 settle script",
            total as f64 / requests as f64,
            per_command.join(", "),
            OUTPUT_TOKENS / METER_BATCH
        );

        println!("Concurrent: {conc} users at once, {requests} requests per arm (arms one after the other):");
        for (name, registry, prefix) in [("memory", memory.clone(), "cm"), ("redis", redis.clone(), "cr")] {
            let started = Instant::now();
            let per_task = requests / conc;
            let tasks: Vec<_> = (0..conc)
                .map(|t| {
                    let registry = registry.clone();
                    let request = request.clone();
                    actix_rt::spawn(async move {
                        let mut samples = Vec::with_capacity(per_task);
                        for i in 0..per_task {
                            let (_, total) = one_request(&registry, &format!("{prefix}{t}"), &format!("{prefix}{t}-{i}"), request.clone()).await;
                            samples.push(total);
                        }
                        samples
                    })
                })
                .collect();
            let mut samples = Vec::new();
            for task in tasks {
                samples.extend(task.await.expect("task"));
            }
            let rate = samples.len() as f64 / started.elapsed().as_secs_f64();
            summary(&format!("{name}: bookkeeping"), &mut samples);
            println!("  {name}: {rate:.0} requests/s");
        }
        println!("Redis circuit closed all along: {}", ledger.ready());
    });
}
