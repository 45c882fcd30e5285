//! The Redis path against the in-memory store, side by side in one run: the latency a request's
//! bookkeeping adds (admit, the allowances a 2,000-token stream asks for, settle) and the Redis
//! calls and commands it costs, for a stream far from every cap and for one that runs into the
//! daily cap.
//!
//! Two user registries in one process, one per store, against a real `redis-server` started
//! here (`tollgate_testkit::redis`). Requests alternate between the arms (memory, Redis,
//! memory, …) so both see the same machine noise; each arm's users are distinct. A stream is
//! simulated as the relay runs one: chunks of one token, relayed within the ticket's allowance,
//! asking for the next (in the default batches, 16 … 256) when it runs out, and ending at the
//! cap when the answer falls short. Sequential requests measure the added latency; a
//! concurrent phase (`CONC` users at once) shows it under load. A last phase runs the Redis arm
//! with an organisation cap set (far from it): every step then also calls the organisation's
//! counter (a meter report asks both at once). Redis calls and commands per
//! request come from `INFO commandstats` deltas (`evalsha`: one call per script run).
//! A cluster arm then runs the far, near and organisation phases against a local three-master
//! Redis Cluster (`tollgate_testkit::redis_cluster`; calls summed over the masters).
//!
//! Run: `cargo bench --bench state` (REQUESTS=N, CONC=N change the sizes; CLUSTER=0 skips the
//! cluster arm).

#![allow(clippy::expect_used, clippy::print_stdout)]

use tollgate_testkit::redis::{self, SharedRedis};
use tollgate_testkit::redis_cluster::RedisCluster;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;
use tollgate::accounting::{Outcome, Usage};
use tollgate::clock::SystemClock;
use tollgate::config::{Config, Secret};
use tollgate::pricing::PriceTable;
use tollgate::telemetry::{LabelSets, Metrics};
use tollgate::users::{AdmitRequest, Batch, MemoryStore, RedisLedger, UserLimits, UserRegistry};

/// Output tokens a stream wants, and the relay's default batch bounds.
const OUTPUT_TOKENS: u64 = 2000;
const BATCH: Batch = Batch { min: 16, max: 256 };
/// Near a cap: the daily cap leaves this many output tokens (mock-gpt: 10 micro-USD each).
const NEAR_CAP_TOKENS: u64 = 300;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((p / 100.0) * (sorted.len() - 1) as f64).round() as usize]
}

/// What one request's bookkeeping took.
struct Sample {
    admit_us: f64,
    total_us: f64,
    relayed: u64,
}

/// One request's bookkeeping: admit, relay up to `OUTPUT_TOKENS` within allowances, settle.
async fn one_request(registry: &UserRegistry, user: &str, id: &str, req: AdmitRequest) -> Sample {
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
    let mut relayed = 0;
    while relayed < OUTPUT_TOKENS {
        if ticket.allowance() == 0 && ticket.ask(1, BATCH).await == 0 {
            break; // the cap
        }
        let n = ticket.allowance().min(OUTPUT_TOKENS - relayed);
        ticket.relayed(n);
        relayed += n;
    }
    let usage = Usage {
        input_tokens: req_input(),
        output_tokens: relayed,
    };
    let outcome = if relayed < OUTPUT_TOKENS {
        Outcome::CutBudget
    } else {
        Outcome::Completed
    };
    ticket.settle(usage, outcome).await;
    Sample {
        admit_us: admitted.as_secs_f64() * 1e6,
        total_us: started.elapsed().as_secs_f64() * 1e6,
        relayed,
    }
}

fn req_input() -> u64 {
    20
}

fn summary(name: &str, samples: &mut [f64]) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(samples, 50.0), percentile(samples, 99.0));
    println!(
        "  {name:<34} p50 {p50:>8.1} µs   p99 {p99:>8.1} µs   (n = {})",
        samples.len()
    );
    (p50, p99)
}

/// Redis calls (script runs) and commands per request between two `INFO commandstats`.
fn per_request(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, requests: usize) {
    let mut total = 0;
    let mut per_command = Vec::new();
    for (name, calls) in after {
        let delta = calls - before.get(name).copied().unwrap_or(0);
        // `info` and `role` are the harness' own questions.
        if delta > 0 && name != "info" && name != "role" {
            total += delta;
            per_command.push(format!("{name} {:.2}", delta as f64 / requests as f64));
        }
    }
    let scripts =
        after.get("evalsha").copied().unwrap_or(0) - before.get("evalsha").copied().unwrap_or(0);
    println!(
        "  Redis calls per request: {:.2} script runs; commands {:.2} ({})",
        scripts as f64 / requests as f64,
        total as f64 / requests as f64,
        per_command.join(", "),
    );
}

/// Runs `requests` interleaved requests per arm (user names from `name(arm, i)`), and prints
/// latency, tokens relayed and Redis calls.
async fn phase(
    title: &str,
    server: &dyn SharedRedis,
    arms: [&UserRegistry; 2],
    requests: usize,
    request: &AdmitRequest,
    user: impl Fn(&str, usize) -> String,
) {
    println!("{title} ({requests} requests per arm, interleaved):");
    let (mut m_admit, mut m_all, mut r_admit, mut r_all) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut m_tokens, mut r_tokens) = (0, 0);
    let before = server.command_calls();
    for i in 0..requests {
        let s = one_request(
            arms[0],
            &user("m", i),
            &format!("{title}-m{i}"),
            request.clone(),
        )
        .await;
        m_admit.push(s.admit_us);
        m_all.push(s.total_us);
        m_tokens += s.relayed;
        let s = one_request(
            arms[1],
            &user("r", i),
            &format!("{title}-r{i}"),
            request.clone(),
        )
        .await;
        r_admit.push(s.admit_us);
        r_all.push(s.total_us);
        r_tokens += s.relayed;
    }
    let after = server.command_calls();
    let (ma50, ma99) = summary("memory: admit", &mut m_admit);
    let (ra50, ra99) = summary("redis:  admit", &mut r_admit);
    let (mt50, mt99) = summary("memory: admit+allowances+settle", &mut m_all);
    let (rt50, rt99) = summary("redis:  admit+allowances+settle", &mut r_all);
    println!(
        "  added by Redis, admit:       p50 {:>8.1} µs   p99 {:>8.1} µs",
        ra50 - ma50,
        ra99 - ma99
    );
    println!(
        "  added by Redis, bookkeeping: p50 {:>8.1} µs   p99 {:>8.1} µs",
        rt50 - mt50,
        rt99 - mt99
    );
    println!(
        "  output relayed per request: memory {:.0}, redis {:.0} tokens",
        m_tokens as f64 / requests as f64,
        r_tokens as f64 / requests as f64
    );
    per_request(&before, &after, requests);
}

fn main() {
    let requests = env_or("REQUESTS", 2000);
    let conc = env_or("CONC", 64);
    let server = redis::RedisServer::start();
    // The harness fsyncs every write (crash tests); production runs fsync once a second.
    server.cli(&["CONFIG", "SET", "appendfsync", "everysec"]);
    let cluster = (env_or("CLUSTER", 1) != 0).then(|| {
        let cluster = RedisCluster::start(3);
        for node in cluster.nodes() {
            node.cli(&["CONFIG", "SET", "appendfsync", "everysec"]);
        }
        cluster
    });
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
        let redis = Arc::new(UserRegistry::new(2, &config, Arc::new(SystemClock), metrics.clone(), Arc::new(MemoryStore::default()), Some(ledger.clone())));
        let limits = UserLimits::for_plan(&config, "pro");
        let price = PriceTable::new(&config.pricing).price("mock-gpt").expect("priced");
        let far = AdmitRequest {
            request_id: String::new(),
            estimated_input_tokens: req_input(),
            max_tokens: OUTPUT_TOKENS as u32,
            choices: 1,
            stream: true,
            price,
            limits,
            batch: BATCH,
        };
        // Near a cap: a fresh user per request, whose daily cap leaves NEAR_CAP_TOKENS of output
        // after the input: the stream is cut there, exactly.
        let input_cost = price.cost_micro_usd(Usage {
            input_tokens: req_input(),
            output_tokens: 0,
        });
        let near = AdmitRequest {
            limits: UserLimits {
                daily_cap_micro_usd: input_cost
                    + price.cost_micro_usd(Usage {
                        input_tokens: 0,
                        output_tokens: NEAR_CAP_TOKENS,
                    }),
                ..limits
            },
            ..far.clone()
        };
        // Warm up both (actors, the connection, script loading).
        for i in 0..200 {
            one_request(&memory, &format!("m{}", i % 50), &format!("wm{i}"), far.clone()).await;
            one_request(&redis, &format!("r{}", i % 50), &format!("wr{i}"), far.clone()).await;
        }

        // The same, with an organisation cap (far from it): the organisation's counter in Redis.
        let mut with_org = config.clone();
        with_org.cost.max_org_daily_usd = 1e6;
        let org_ledger = Arc::new(RedisLedger::new(&with_org, metrics.clone()).expect("redis ledger"));
        let metrics_for_cluster = metrics.clone();
        let redis_org = Arc::new(UserRegistry::new(2, &with_org, Arc::new(SystemClock), metrics, Arc::new(MemoryStore::default()), Some(org_ledger)));
        for i in 0..50 {
            one_request(&redis_org, &format!("o{i}"), &format!("wo{i}"), far.clone()).await;
        }

        let arms = [memory.as_ref(), redis.as_ref()];
        phase(
            &format!("Far from a cap: a {OUTPUT_TOKENS}-token stream, 100 users per arm"),
            &server,
            arms,
            requests,
            &far,
            |arm, i| format!("{arm}{}", i % 100),
        )
        .await;
        phase(
            &format!("Near a cap: the daily cap leaves {NEAR_CAP_TOKENS} output tokens, a fresh user each"),
            &server,
            arms,
            requests / 4,
            &near,
            |arm, i| format!("near-{arm}{i}"),
        )
        .await;

        phase(
            &format!("Far from every cap, with an organisation cap set: a {OUTPUT_TOKENS}-token stream (memory; Redis with the organisation's counter)"),
            &server,
            [memory.as_ref(), redis_org.as_ref()],
            requests / 4,
            &far,
            |arm, i| format!("org-{arm}{}", i % 100),
        )
        .await;

        if let Some(cluster) = &cluster {
            let mut on_cluster = config.clone();
            on_cluster.redis.url = Secret::new(cluster.url());
            let mut org_on_cluster = with_org.clone();
            org_on_cluster.redis.url = Secret::new(cluster.url());
            let registry = |config: &Config| {
                let ledger = Arc::new(RedisLedger::new(config, metrics_for_cluster.clone()).expect("cluster ledger"));
                Arc::new(UserRegistry::new(2, config, Arc::new(SystemClock), metrics_for_cluster.clone(), Arc::new(MemoryStore::default()), Some(ledger)))
            };
            let (on_cluster, org_on_cluster) = (registry(&on_cluster), registry(&org_on_cluster));
            // Warm up: connections to every master, scripts loaded on each (NOSCRIPT, once).
            for i in 0..200 {
                one_request(&on_cluster, &format!("c{}", i % 100), &format!("wc{i}"), far.clone()).await;
                one_request(&org_on_cluster, &format!("co{}", i % 100), &format!("wco{i}"), far.clone()).await;
            }
            let arms = [memory.as_ref(), on_cluster.as_ref()];
            phase(
                &format!("Redis Cluster (3 masters), far from a cap: a {OUTPUT_TOKENS}-token stream, 100 users per arm"),
                cluster,
                arms,
                requests,
                &far,
                |arm, i| format!("c{arm}{}", i % 100),
            )
            .await;
            phase(
                &format!("Redis Cluster, near a cap: the daily cap leaves {NEAR_CAP_TOKENS} output tokens, a fresh user each"),
                cluster,
                arms,
                requests / 4,
                &near,
                |arm, i| format!("c-near-{arm}{i}"),
            )
            .await;
            phase(
                &format!("Redis Cluster, far from every cap, with an organisation cap set: a {OUTPUT_TOKENS}-token stream"),
                cluster,
                [memory.as_ref(), org_on_cluster.as_ref()],
                requests / 4,
                &far,
                |arm, i| format!("c-org-{arm}{}", i % 100),
            )
            .await;
        }

        println!("Concurrent, far from a cap: {conc} users at once, {requests} requests per arm (arms one after the other):");
        for (name, registry, prefix) in [("memory", memory.clone(), "cm"), ("redis", redis.clone(), "cr")] {
            let started = Instant::now();
            let per_task = requests / conc;
            let tasks: Vec<_> = (0..conc)
                .map(|t| {
                    let registry = registry.clone();
                    let request = far.clone();
                    actix_rt::spawn(async move {
                        let mut samples = Vec::with_capacity(per_task);
                        for i in 0..per_task {
                            let s = one_request(&registry, &format!("{prefix}{t}"), &format!("{prefix}{t}-{i}"), request.clone()).await;
                            samples.push(s.total_us);
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
