//! Per-user actors at scale: admission latency through the actor (admit → settle round trips)
//! and resident memory after 100,000 distinct users each made one request, then after their
//! actors were evicted (their state stays in the in-memory store).
//!
//! Run: `cargo bench --bench users` (USERS=N changes the number of users).

#![allow(clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate::accounting::{Outcome, Usage};
use tollgate::clock::SystemClock;
use tollgate::config::Config;
use tollgate::pricing::PriceTable;
use tollgate::telemetry::{LabelSets, Metrics};
use tollgate::users::{AdmitRequest, Batch, MemoryStore, UserLimits, UserRegistry};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((p / 100.0) * (sorted.len() - 1) as f64).round() as usize]
}

fn main() {
    let users: usize = std::env::var("USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    actix_rt::System::new().block_on(async move {
        let mut config = Config::default();
        config.users.idle_evict_secs = 2;
        let registry = UserRegistry::new(2, &config, Arc::new(SystemClock), Metrics::install(10, LabelSets::new(Vec::new(), Vec::new())), Arc::new(MemoryStore::default()), None);
        let limits = UserLimits::for_plan(&config, "pro");
        let price = PriceTable::new(&config.pricing)
            .price("mock-gpt")
            .expect("mock-gpt is priced");
        let baseline = rss_kib();
        let mut admit_us = Vec::with_capacity(users);
        let started = Instant::now();
        for i in 0..users {
            let user = format!("user-{i}");
            let id = format!("req-{i}");
            let t = Instant::now();
            let ticket = registry
                .admit(&user, AdmitRequest {
                    request_id: id.clone(),
                    estimated_input_tokens: 20,
                    max_tokens: 100,
                    choices: 1,
                    stream: true,
                    price,
                    limits,
                    batch: Batch { min: 16, max: 256 },
                })
                .await
                .expect("admitted");
            admit_us.push(t.elapsed().as_secs_f64() * 1e6);
            let usage = Usage {
                input_tokens: 20,
                output_tokens: 50,
            };
            ticket.settle(usage, Outcome::Completed).await;
        }
        let elapsed = started.elapsed();
        let with_actors = rss_kib();
        let live = registry.live_actors();
        let deadline = Instant::now() + Duration::from_secs(60);
        while registry.live_actors() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let after_eviction = rss_kib();
        admit_us.sort_by(f64::total_cmp);
        println!("{users} users, one request each, in {elapsed:.2?}");
        println!(
            "admission through the actor (new actor per user): p50 {:.1} µs  p99 {:.1} µs",
            percentile(&admit_us, 50.0),
            percentile(&admit_us, 99.0)
        );
        println!(
            "resident: baseline {} MiB, with {live} live actors {} MiB (+{:.2} KiB/user), after eviction ({} left) {} MiB (+{:.2} KiB/user kept in the store)",
            baseline / 1024,
            with_actors / 1024,
            (with_actors - baseline) as f64 / users as f64,
            registry.live_actors(),
            after_eviction / 1024,
            after_eviction.saturating_sub(baseline) as f64 / users as f64,
        );
        // Warm actors: the same user again (the common case).
        let mut warm = Vec::with_capacity(10_000);
        for i in 0..10_000 {
            let id = format!("warm-{i}");
            let t = Instant::now();
            let ticket = registry
                .admit("warm-user", AdmitRequest {
                    request_id: id.clone(),
                    estimated_input_tokens: 20,
                    max_tokens: 100,
                    choices: 1,
                    stream: true,
                    price,
                    limits: UserLimits {
                        requests_per_minute: u64::MAX,
                        requests_per_day: u64::MAX,
                        tokens_per_day: u64::MAX,
                        daily_cap_micro_usd: u64::MAX / 4,
                        monthly_cap_micro_usd: u64::MAX / 4,
                        ..limits
                    },
                    batch: Batch { min: 16, max: 256 },
                })
                .await
                .expect("admitted");
            warm.push(t.elapsed().as_secs_f64() * 1e6);
            ticket.settle(Usage::default(), Outcome::Completed).await;
        }
        warm.sort_by(f64::total_cmp);
        println!(
            "admission through a live actor: p50 {:.1} µs  p99 {:.1} µs",
            percentile(&warm, 50.0),
            percentile(&warm, 99.0)
        );
    });
}
