//! Overhead of the gateway against the mock provider directly and against nginx, in one run.
//!
//! Starts the release `tollgate mock-provider`, nginx (`load/nginx.conf.template`, plain reverse
//! proxy with `proxy_buffering off` and a keep-alive upstream), `tollgate` (in-memory state,
//! per-user limits lifted, one token per simulated user) and, for the Redis arm, a
//! `redis-server` (tests/common/redis.rs, `appendfsync everysec`) with a second `tollgate` that
//! differs from the first only by `TOLLGATE_REDIS_URL` and a 1 s Redis call timeout (so a loaded
//! box does not send it down the outage path). Then it drives the arms interleaved through the
//! same mock:
//!
//! 1. **one stream at a time**: short unpaced streams (10 tokens, as `benches/ttft.rs`), arms
//!    alternating stream by stream (rotated order);
//!    time to first token (first request byte written → first content delta read) and the paired
//!    difference against the direct stream next to it;
//! 2. **`CONC` open streams** (1,000): paced streams (50 tokens at 20 tokens/s, ≈ 2.5 s), each slot
//!    opening its next stream as soon as one ends; rounds × arms interleaved; time to first token,
//!    gaps between chunks, completed streams/s, chunks/s and the proxy's CPU per chunk in a fixed
//!    window after a warm-up;
//! 3. **saturation**: `SAT_CONC` unpaced streams of 2,000 tokens; chunks relayed per second and
//!    CPU per chunk when the mock sends as fast as it can;
//! 4. **memory**: a fresh proxy, warmed with one stream per user, then N streams held open (the mock
//!    stalls after the first token); (RSS with N open − RSS before) ÷ N, for N in `MEM_STREAMS`.
//!
//! For the Redis arm it also counts Redis commands per request in every phase (`INFO
//! commandstats` deltas ÷ the requests that arm served), charges redis-server's CPU per chunk
//! separately, and checks after every phase that `/readyz` says `"redis":"ok"` and reports
//! `tollgate_redis_errors_total` if it is not zero. In phases 2 and 3 it also reports what else
//! kept the proxy's CPU busy (a disturbed window shows there).
//!
//! Every stream uses a fresh loopback connection (`Connection: close`) and the same request bytes
//! in every arm. With `PIN=1` (default when `taskset` exists and there are ≥ 2 CPUs) the proxy
//! under test runs on CPU 1 and the mock, redis-server and this driver on CPU 0, so nginx (one
//! worker) and either tollgate (`workers = 0` → one per available CPU = 1) each get exactly one
//! core; Redis is part of the Redis arm's cost but not of its gateway's core.
//!
//! Run: `load/bench.sh` (installs nginx and redis-server, raises the fd limit) or
//! `cargo bench --bench overhead`.
//! Knobs: ONE_STREAMS (300), CONC (1000), ROUNDS (2), WINDOW_SECS (10), SAT_CONC (50),
//! SAT_WINDOW_SECS (6), MEM_STREAMS ("1000,10000"), PIN (auto), NGINX (path), ARMS
//! ("direct,nginx,tollgate,tollgate-redis"). Prints figures; asserts nothing (targets are
//! reported, not tested). The Redis arm is skipped, with a line saying so, when `redis-server` or
//! `redis-cli` is not on `PATH` (Debian package `redis-server`).
//!
//! The driver's files: `setup.rs` (knobs, CPU pinning), `arms.rs` (the processes behind each arm),
//! `client.rs` and `sse.rs` (one stream), `load.rs` (many streams, held-open streams),
//! `redis_side.rs` (the Redis arm's redis-server), `measure.rs` (`/proc`), `hist.rs` (latency
//! histograms) and `report.rs` (the table and the targets).

#![allow(clippy::expect_used, clippy::print_stdout)]

// Shared with the integration tests; the only includes by path (from here, for every module).
#[path = "../../tests/common/process.rs"]
mod process;
#[path = "../../tests/common/redis.rs"]
mod redis;

mod arms;
mod client;
mod hist;
mod load;
mod measure;
mod redis_side;
mod report;
mod setup;
mod sse;

use arms::{start_gateway, start_mock, start_nginx, Arm, Pid, Target, BIN, SECRET, USERS};
use client::{one_stream, requests, Stats, Window};
use load::{hold_open, run_load, LoadPlan, LoadResult};
use measure::{clk_tck, nofile_soft_limit};
use process::Running;
use redis_side::RedisSide;
use report::{fmt, print_table, ArmReport};
use setup::{env_or, find_in_path, Pinning, DRIVER_CPU};
use std::cell::RefCell;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Paced streams: the mock's flags, and the knobs in the model name (both, to be explicit).
const PACED_TOKENS: u32 = 50;
const PACED_TPS: u32 = 20;

fn main() {
    let one_streams: usize = env_or("ONE_STREAMS", 300);
    let conc: usize = env_or("CONC", 1000);
    let rounds: usize = env_or("ROUNDS", 2).max(1);
    let window_secs: f64 = env_or("WINDOW_SECS", 10.0);
    let sat_conc: usize = env_or("SAT_CONC", 50);
    let sat_window_secs: f64 = env_or("SAT_WINDOW_SECS", 6.0);
    let mem_streams: Vec<usize> = std::env::var("MEM_STREAMS")
        .unwrap_or_else(|_| "1000,10000".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let arms_wanted =
        std::env::var("ARMS").unwrap_or_else(|_| "direct,nginx,tollgate,tollgate-redis".into());
    let nproc = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let tck = clk_tck();
    let nofile = nofile_soft_limit();

    // Pinning: the proxy under test on CPU 1, the mock and this driver on CPU 0.
    let taskset = find_in_path("taskset").and_then(|p| p.to_str().map(str::to_string));
    let pin_wanted = std::env::var("PIN").map_or(true, |v| v != "0");
    let pin = Pinning {
        taskset: match taskset {
            Some(t) if pin_wanted && nproc >= 2 => Some(Box::leak(t.into_boxed_str())),
            _ => None,
        },
    };
    if let Some(t) = pin.taskset {
        let ok = Command::new(t)
            .args([
                "-a",
                "-p",
                "-c",
                &DRIVER_CPU.to_string(),
                &std::process::id().to_string(),
            ])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "taskset could not pin the driver");
    }

    println!("== tollgate overhead benchmark ==");
    println!(
        "machine: {nproc} CPUs, {cpu_model}; kernel {}; open-file limit {nofile}; CLK_TCK {tck}",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    println!(
        "placement: {}",
        if pin.taskset.is_some() {
            "proxy under test on CPU 1; mock + redis-server + driver on CPU 0 (PIN=0 to turn off)"
        } else {
            "not pinned"
        }
    );

    let (mock, mock_addr) = start_mock(pin);
    let mock_pid = mock.pid();
    let tokens: Vec<String> = (0..USERS)
        .map(|i| {
            let out = Command::new(BIN)
                .args([
                    "token",
                    "--sub",
                    &format!("bench-user-{i}"),
                    "--plan",
                    "pro",
                    "--ttl",
                    "3600",
                ])
                .env_clear()
                .env("TOLLGATE_JWT_SECRET", SECRET)
                .output()
                .expect("mint token");
            assert!(out.status.success(), "tollgate token failed");
            String::from_utf8(out.stdout)
                .expect("utf8")
                .trim()
                .to_string()
        })
        .collect();

    let nginx_bin = find_in_path(&std::env::var("NGINX").unwrap_or_else(|_| "nginx".into()))
        .and_then(|p| p.to_str().map(str::to_string));
    let mut arms = Vec::new();
    let mut redis_side = None;
    for arm in [Arm::Direct, Arm::Nginx, Arm::Tollgate, Arm::TollgateRedis] {
        if !arms_wanted.split(',').any(|a| a.trim() == arm.name()) {
            continue;
        }
        if arm == Arm::Nginx && nginx_bin.is_none() {
            println!("nginx not found (load/bench.sh installs it): the nginx arm is skipped");
            continue;
        }
        if arm == Arm::TollgateRedis {
            match RedisSide::start(pin) {
                Ok(side) => redis_side = Some(side),
                Err(e) => {
                    println!("{e} (load/bench.sh installs it): the tollgate-redis arm is skipped");
                    continue;
                }
            }
        }
        arms.push(arm);
    }
    // Open files: the driver holds N client sockets, a proxy N + N upstream, the mock N.
    let nginx_nofile = nofile.clamp(4096, 1_048_576);
    let tmp = tempfile::Builder::new()
        .prefix("tollgate-overhead.")
        .tempdir()
        .expect("temp dir");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    let started = Instant::now();
    let reports = local.block_on(&rt, async {
        let mut reports: Vec<(Arm, ArmReport)> =
            arms.iter().map(|a| (*a, ArmReport::default())).collect();
        let gateway = arms
            .contains(&Arm::Tollgate)
            .then(|| start_gateway(pin, mock_addr, None));
        // The Redis arm's gateway: the same env plus TOLLGATE_REDIS_URL and a 1 s call timeout.
        let redis_gateway = redis_side
            .as_ref()
            .map(|side| start_gateway(pin, mock_addr, Some(&side.server.url())));
        let nginx_dir = tmp.path().join("nginx-load");
        std::fs::create_dir_all(&nginx_dir).expect("mkdir");
        let nginx = nginx_bin
            .as_deref()
            .filter(|_| arms.contains(&Arm::Nginx))
            .map(|bin| start_nginx(pin, bin, &nginx_dir, mock_addr, nginx_nofile));
        let targets: Vec<Target> = arms
            .iter()
            .map(|arm| match arm {
                Arm::Direct => Target { arm: *arm, addr: mock_addr, pid: None, redis_pid: None },
                Arm::Nginx => {
                    let (n, a) = nginx.as_ref().expect("nginx");
                    Target { arm: *arm, addr: *a, pid: Some(n.pid()), redis_pid: None }
                }
                Arm::Tollgate => {
                    let (g, a) = gateway.as_ref().expect("gateway");
                    Target { arm: *arm, addr: *a, pid: Some(g.pid()), redis_pid: None }
                }
                Arm::TollgateRedis => {
                    let (g, a) = redis_gateway.as_ref().expect("redis gateway");
                    let redis_pid = redis_side.as_ref().map(|side| side.pid);
                    Target { arm: *arm, addr: *a, pid: Some(g.pid()), redis_pid }
                }
            })
            .collect();
        let redis_index = targets.iter().position(|t| t.arm == Arm::TollgateRedis);
        println!(
            "mock {mock_addr}, {}",
            targets
                .iter()
                .map(|t| format!("{} {}", t.arm.name(), t.addr))
                .collect::<Vec<_>>()
                .join(", ")
        );

        // Warm-up: every arm, every user once (tokenizer, actors, pools, page cache).
        let short = requests("mock-gpt:tokens=5,tps=0,delay_ms=0", 64, &tokens);
        let forever = Window { start: started, end: started + Duration::from_secs(86_400) };
        for t in &targets {
            let scratch = RefCell::new(Stats::new());
            for r in short.iter() {
                if let Err(e) = one_stream(t.addr, r, &scratch, forever, Duration::from_secs(10)).await {
                    panic!("warm-up through {} failed: {e}", t.arm.name());
                }
            }
        }

        // 1. One stream at a time, arms alternating stream by stream.
        println!("phase 1: {one_streams} streams per arm, one at a time (10 tokens, unpaced)");
        let one = requests("mock-gpt:tokens=10,tps=0,delay_ms=0", 64, &tokens);
        let one_stats: Vec<RefCell<Stats>> = targets.iter().map(|_| RefCell::new(Stats::new())).collect();
        let direct_index = targets.iter().position(|t| t.arm == Arm::Direct);
        let redis_before = redis_side.as_ref().map(RedisSide::calls);
        for i in 0..one_streams {
            let mut ttft = vec![None; targets.len()];
            for j in 0..targets.len() {
                let k = (i + j) % targets.len();
                let t = &targets[k];
                match one_stream(t.addr, &one[i % one.len()], &one_stats[k], forever, Duration::from_secs(10)).await {
                    Ok(d) => ttft[k] = Some(d.as_secs_f64() * 1e3),
                    Err(e) => one_stats[k].borrow_mut().error(e),
                }
            }
            for (k, (_, report)) in reports.iter_mut().enumerate() {
                if let Some(v) = ttft[k] {
                    report.one_ttft_ms.push(v);
                    if let Some(d) = direct_index.and_then(|d| ttft[d]) {
                        report.one_added_ms.push(v - d);
                    }
                }
            }
        }
        for (k, s) in one_stats.into_iter().enumerate() {
            reports[k].1.one = Some(s.into_inner());
        }
        if let (Some(side), Some(before), Some(k)) =
            (redis_side.as_mut(), redis_before, redis_index)
        {
            let after = side.calls();
            let s = reports[k].1.one.as_ref().expect("phase 1 stats");
            let (served, sent) = (s.completed, s.sent);
            side.count("phase 1: one stream at a time", &before, &after, served, sent);
            side.check(targets[k].addr, "phase 1").await;
        }

        // 2. CONC open paced streams; rounds × arms, order rotated each round.
        println!(
            "phase 2: {conc} open streams ({PACED_TOKENS} tokens at {PACED_TPS}/s), {rounds} rounds × {} arms, {window_secs} s window each",
            targets.len()
        );
        let paced = requests(
            &format!("mock-gpt:tokens={PACED_TOKENS},tps={PACED_TPS},delay_ms=0"),
            PACED_TOKENS + 16,
            &tokens,
        );
        let stream_secs = f64::from(PACED_TOKENS) / f64::from(PACED_TPS);
        let plan = LoadPlan {
            conc,
            ramp: Duration::from_secs_f64(stream_secs),
            warm: Duration::from_secs_f64(stream_secs + 1.0),
            window: Duration::from_secs_f64(window_secs),
            drain: Duration::from_secs_f64(stream_secs + 2.0),
            limit: Duration::from_secs(60),
        };
        let sat = requests("mock-gpt:tokens=2000,tps=0,delay_ms=0", 4096, &tokens);
        let sat_plan = LoadPlan {
            conc: sat_conc,
            ramp: Duration::from_millis(200),
            warm: Duration::from_millis(1500),
            window: Duration::from_secs_f64(sat_window_secs),
            drain: Duration::ZERO,
            limit: Duration::from_secs(60),
        };
        let phase_names = [
            format!("phase 2: {conc} paced streams"),
            "phase 3: saturation".to_string(),
        ];
        for (phase, reqs, plan) in [(2, &paced, &plan), (3, &sat, &sat_plan)] {
            let phase_name = &phase_names[phase - 2];
            if phase == 3 {
                println!(
                    "phase 3: saturation, {sat_conc} open unpaced streams of 2000 tokens, {rounds} rounds × {} arms, {sat_window_secs} s window each",
                    targets.len()
                );
            }
            for round in 0..rounds {
                for j in 0..targets.len() {
                    let k = (round + j) % targets.len();
                    let t = &targets[k];
                    let counted = t.arm == Arm::TollgateRedis;
                    let redis_before = redis_side.as_ref().filter(|_| counted).map(RedisSide::calls);
                    let r = run_load(t, mock_pid, reqs, plan).await;
                    if let (Some(side), Some(before)) = (redis_side.as_mut(), redis_before) {
                        let after = side.calls();
                        side.count(phase_name, &before, &after, r.stats.completed, r.stats.sent);
                    }
                    println!(
                        "  round {} {:<14} {:>9.0} chunks/s {:>7.1} streams/s  ttft p99 {} ms  errors {}",
                        round + 1,
                        t.arm.name(),
                        r.stats.chunks_in_window as f64 / r.secs,
                        r.stats.completed_in_window as f64 / r.secs,
                        fmt(r.stats.ttft.ms(99.0), 3),
                        r.stats.errors
                    );
                    let slot = if phase == 2 { &mut reports[k].1.many } else { &mut reports[k].1.sat };
                    slot.get_or_insert_with(LoadResult::empty).merge(&r);
                }
            }
            if let (Some(side), Some(k)) = (redis_side.as_mut(), redis_index) {
                side.check(targets[k].addr, &format!("phase {phase}")).await;
            }
        }
        drop(nginx);
        drop(gateway);
        drop(redis_gateway);

        // 4. Memory: fresh proxies, one user-wide warm-up, then N streams held open.
        let stall = requests("mock-gpt:tokens=100,tps=0,delay_ms=0,fault=stall@1", 128, &tokens);
        for &n_wanted in &mem_streams {
            // The gateway needs 2 sockets per stream, the driver 1, plus slack.
            let n = n_wanted.min(usize::try_from(nofile.saturating_sub(500) / 2).unwrap_or(usize::MAX));
            if n < n_wanted {
                println!("  open-file limit {nofile}: {n_wanted} open streams capped to {n} (raise `ulimit -n`)");
            }
            for (arm, report) in &mut reports {
                let (proxy, addr): (Running, SocketAddr) = match arm {
                    Arm::Direct => continue,
                    Arm::Nginx => {
                        let dir = tmp.path().join(format!("nginx-mem-{n}"));
                        std::fs::create_dir_all(&dir).expect("mkdir");
                        let bin = nginx_bin.as_deref().expect("nginx");
                        start_nginx(pin, bin, &dir, mock_addr, nginx_nofile)
                    }
                    Arm::Tollgate => start_gateway(pin, mock_addr, None),
                    Arm::TollgateRedis => {
                        // A fresh gateway on an empty Redis (the last one's leases and windows
                        // gone).
                        let side = redis_side.as_ref().expect("redis arm without redis-server");
                        side.server.cli(&["FLUSHALL"]);
                        start_gateway(pin, mock_addr, Some(&side.server.url()))
                    }
                };
                let counted = *arm == Arm::TollgateRedis;
                let redis_before = redis_side.as_ref().filter(|_| counted).map(RedisSide::calls);
                let scratch = RefCell::new(Stats::new());
                for r in short.iter() {
                    let _ = one_stream(addr, r, &scratch, forever, Duration::from_secs(10)).await;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                println!("phase 4: {} with {n} open streams", arm.name());
                let m = hold_open(addr, proxy.pid(), &stall, n).await;
                println!(
                    "    open {} of {} in {:.1} s (errors {}, closed early {}); RSS {} → {} KiB: {} KiB per open stream",
                    m.open,
                    m.requested,
                    m.open_secs,
                    m.errors,
                    m.closed_early,
                    m.idle_kib,
                    m.loaded_kib,
                    fmt(m.kib_per_stream(), 1)
                );
                if let (Some(side), Some(before)) = (redis_side.as_mut(), redis_before) {
                    // Let the gateway settle the streams the driver just abandoned.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let after = side.calls();
                    let (warm_completed, warm_sent) = {
                        let s = scratch.borrow();
                        (s.completed, s.sent)
                    };
                    // Held-open streams never complete: they count as served once open.
                    let served = warm_completed + m.open as u64;
                    let sent = warm_sent + m.requested as u64;
                    let phase = format!("phase 4: memory, {n} held open");
                    side.count(&phase, &before, &after, served, sent);
                    side.check(addr, &format!("phase 4 @{n}")).await;
                }
                report.mem.push(m);
                drop(proxy);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        reports
    });
    drop(mock);
    let pinned = pin.taskset.is_some();
    print_table(
        &reports,
        conc,
        sat_conc,
        tck,
        &mem_streams,
        one_streams,
        pinned,
    );
    if let Some(side) = &redis_side {
        side.print();
    }
    println!("total time {:.0} s", started.elapsed().as_secs_f64());
}
