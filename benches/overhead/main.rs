//! Overhead of the gateway against the mock provider directly and against nginx, in one run.
//!
//! Starts the release `tollgate mock-provider`, nginx (`load/nginx.conf.template`, plain reverse
//! proxy with `proxy_buffering off` and a keep-alive upstream), `tollgate` (in-memory state,
//! per-user limits lifted, one token per simulated user) and, for the Redis arm, a
//! `redis-server` (`tollgate_testkit::redis`, `appendfsync everysec`) with a second `tollgate` that
//! differs from the first only by `TOLLGATE_REDIS_URL` and a 1 s Redis call timeout (so a loaded
//! box does not send it down the outage path), and, for the Anthropic arm, a third `tollgate`: the
//! first one's settings plus `[upstreams.anthropic]` (the mock's own root, `format =
//! "anthropic"`) serving a priced `mock-claude`, which that arm's requests name, so every token
//! comes from the mock's `/v1/messages` and goes through `StreamTranslator`. Then it drives the
//! arms interleaved through the same mock:
//!
//! 1. **one stream at a time**: short unpaced streams (20 tokens), arms alternating stream by
//!    stream (rotated order); time to first token (first request byte written → first content
//!    delta read) and the paired difference against the direct stream next to it; each proxy's
//!    CPU time per stream (it serves only its arm's streams; `/proc/<pid>/task/*/schedstat`);
//! 2. **`CONC` open streams** (1,000): paced streams (50 tokens at 20 tokens/s, ≈ 2.5 s), each slot
//!    opening its next stream as soon as one ends; rounds × arms interleaved; time to first token,
//!    gaps between chunks, completed streams/s, chunks/s and the proxy's CPU per chunk in a fixed
//!    window after a warm-up;
//! 3. **saturation**: `SAT_CONC` unpaced streams of 2,000 tokens; chunks relayed per second and
//!    CPU per chunk when the mock sends as fast as it can;
//! 4. **memory and bursts**: a fresh proxy, warmed with one stream per user, then N streams
//!    opened at once (`BURST` at a time) and held open (the mock stalls after the first token);
//!    the idle RSS, (RSS with N open − RSS before) ÷ N, and the burst's time to first token
//!    (connect → first content delta), for N in `MEM_STREAMS`.
//!
//! For the Redis arm it also counts Redis commands per request in every phase (`INFO
//! commandstats` deltas ÷ the requests that arm served), charges redis-server's CPU per chunk
//! separately, and checks after every phase that `/readyz` says `"redis":"ok"` and reports
//! `tollgate_redis_errors_total` if it is not zero. In phases 2 and 3 it also reports what else
//! kept the proxy's CPU busy (a disturbed window shows there).
//!
//! The floor arm (`floor.rs`) is a bare actix-web + awc proxy served by this same binary: what the
//! chosen stack costs before tollgate does anything.
//!
//! Every stream uses a fresh loopback connection (`Connection: close`) and the same request bytes
//! in every arm but the model name (`mock-claude` instead of `mock-gpt` in the Anthropic arm).
//! With `PIN=1` (default when `taskset` exists and there are ≥ 2 CPUs) the proxy under test runs
//! on CPU 1 and the mock, redis-server and this driver on CPU 0, so nginx (one worker) and each
//! tollgate (`workers = 0` → one per available CPU = 1) get exactly one core; Redis is part of the
//! Redis arm's cost but not of its gateway's core.
//!
//! Run: `load/bench.sh` (installs nginx and redis-server, raises the fd limit) or
//! `cargo bench --bench overhead`.
//! Knobs: ONE_STREAMS (300), CONC (1000), ROUNDS (2), WINDOW_SECS (10), SAT_CONC (50),
//! SAT_WINDOW_SECS (6), MEM_STREAMS ("1000,10000"), BURST (1000: phase 4's streams opening at
//! once, between connect and first token), PHASES ("1,2,3,4": the phases to run),
//! PIN (auto), NGINX (path), ARMS
//! ("direct,nginx,floor,tollgate,tollgate-anthropic,tollgate-redis"), TOLLGATE_BIN (the gateway binary
//! under test; default the one built with this bench — set it to another build to compare builds
//! against nginx). Prints figures; asserts nothing (targets are reported, not tested), among them
//! the Anthropic arm's proxy CPU per chunk at saturation over the `tollgate` arm's (target
//! ≤ 1.20: translation may not cost more than 20 % CPU per relayed token). The Redis arm is
//! skipped, with a line saying so, when `redis-server` or `redis-cli` is not on `PATH` (Debian
//! package `redis-server`).
//!
//! The driver's files: `setup.rs` (knobs, machine, CPU pinning), `tollgate.rs` (the mock, the
//! tokens and each gateway's configuration), `floor.rs` (the floor arm's proxy), `arms.rs` (the arms and the proxies behind them),
//! `client.rs` and `sse.rs` (one stream), `load.rs` (many streams, held-open streams),
//! `phases.rs` (the four phases), `redis_side.rs` (the Redis arm's redis-server), `measure.rs`
//! (`/proc`), `hist.rs` (latency histograms) and `report.rs` (the table and the targets).

#![allow(clippy::expect_used, clippy::print_stdout)]

// Shared with the integration tests: the process and redis-server harnesses (testkit).
use tollgate_testkit::{process, redis};

mod arms;
mod client;
mod floor;
mod hist;
mod load;
mod measure;
mod phases;
mod redis_side;
mod report;
mod setup;
mod sse;
mod tollgate;

use arms::{choose_arms, Launcher, Pid};
use phases::Run;
use report::print_table;
use setup::{find_in_path, Knobs, Machine, Pinning};
use std::time::Instant;
use tollgate::{mint_tokens, start_mock};

/// Paced streams: the mock's flags, and the knobs in the model name (both, to be explicit).
const PACED_TOKENS: u32 = 50;
const PACED_TPS: u32 = 20;

/// tollgate's allocator (src/main.rs): the floor arm, served by this binary, runs on it too.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // Started again as the floor arm's proxy (floor.rs): serve, never return.
    floor::serve_if_asked();
    let knobs = Knobs::from_env();
    let machine = Machine::read();
    // Pinning: the proxy under test on CPU 1, the mock and this driver on CPU 0.
    let pin = Pinning::choose(knobs.pin, machine.nproc);
    pin.move_to_driver_cpu(std::process::id(), "the driver");
    machine.print_header(pin);

    let (mock, mock_addr) = start_mock(pin);
    let mock_pid = mock.pid();
    let tokens = mint_tokens();
    let nginx_bin = find_in_path(&knobs.nginx).and_then(|p| p.to_str().map(str::to_string));
    let (arms, mut redis_side) = choose_arms(&knobs.arms, nginx_bin.is_some(), pin);
    let launcher = Launcher::new(pin, mock_addr, nginx_bin, machine.nofile);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    let started = Instant::now();
    let reports = local.block_on(&rt, async {
        let proxies = launcher.start_all(&arms, redis_side.as_ref());
        let redis_pid = redis_side.as_ref().map(|side| side.pid);
        let targets = proxies.targets(&arms, mock_addr, redis_pid);
        let mut run = Run::new(
            &knobs,
            &machine,
            pin,
            mock_pid,
            &tokens,
            targets,
            redis_side.as_mut(),
        );
        run.print_addresses(mock_addr);
        run.warm_up().await;
        let wanted = |phase: u8| knobs.phases.contains(&phase);
        if wanted(1) {
            run.one_stream_at_a_time().await;
        }
        if wanted(2) {
            run.paced_streams().await;
        }
        if wanted(3) {
            run.saturation().await;
        }
        proxies.stop();
        if wanted(4) {
            run.memory(&launcher).await;
        }
        run.reports
    });
    drop(mock);
    print_table(&reports, &knobs, machine.tck, pin.taskset.is_some());
    if let Some(side) = &redis_side {
        side.print();
    }
    println!("total time {:.0} s", started.elapsed().as_secs_f64());
}
