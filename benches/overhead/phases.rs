//! The phases: each drives every arm in turn and files what it measured in the arms' reports;
//! for the Redis arm also the Redis commands the phase cost and the gateway's health after it.

use crate::arms::{Arm, Launcher, Pid, Target};
use crate::client::{one_stream, Stats, Window, Workload};
use crate::hist::exact_percentile;
use crate::load::{hold_open, run_load, LoadPlan, LoadResult, MemResult};
use crate::measure::cpu_ns;
use crate::redis_side::RedisSide;
use crate::report::{fmt, ArmReport};
use crate::setup::{Knobs, Machine, Pinning};
use crate::{PACED_TOKENS, PACED_TPS};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// What the phases share, and the reports they fill.
pub struct Run<'a> {
    knobs: &'a Knobs,
    /// The driver's open-file limit (caps phase 4).
    nofile: u64,
    /// Clock ticks per second (the CPU figures of each round).
    tck: f64,
    /// Whether the proxy has a CPU of its own (else nothing is said of what else ran on it).
    pinned: bool,
    mock_pid: u32,
    /// One per simulated user.
    tokens: &'a [String],
    /// The arms of phases 1–3, in the order of `reports`.
    targets: Vec<Target>,
    pub reports: Vec<(Arm, ArmReport)>,
    redis_side: Option<&'a mut RedisSide>,
    /// The Redis arm's place in `targets` and `reports`.
    redis_index: Option<usize>,
    /// One short unpaced stream per user: the warm-ups.
    short: Workload,
    /// A window that never closes: every stream counts.
    forever: Window,
}

/// Phase 2 or 3: the same driver with its own workload.
struct LoadPhase {
    /// "phase N" in the Redis gateway's health line.
    number: usize,
    /// Its name in the Redis tallies.
    name: String,
    requests: Workload,
    plan: LoadPlan,
    /// Where an arm's results go.
    result: fn(&mut ArmReport) -> &mut Option<LoadResult>,
}

impl<'a> Run<'a> {
    pub fn new(
        knobs: &'a Knobs,
        machine: &Machine,
        pin: Pinning,
        mock_pid: u32,
        tokens: &'a [String],
        targets: Vec<Target>,
        redis_side: Option<&'a mut RedisSide>,
    ) -> Self {
        let started = Instant::now();
        let reports = targets
            .iter()
            .map(|t| (t.arm, ArmReport::default()))
            .collect();
        let redis_index = targets.iter().position(|t| t.arm == Arm::TollgateRedis);
        Self {
            knobs,
            nofile: machine.nofile,
            tck: machine.tck,
            pinned: pin.taskset.is_some(),
            mock_pid,
            tokens,
            targets,
            reports,
            redis_side,
            redis_index,
            short: Workload::new("tokens=5,tps=0,delay_ms=0", 64, tokens),
            forever: Window {
                start: started,
                end: started + Duration::from_secs(86_400),
            },
        }
    }

    /// The mock's address and each arm's.
    pub fn print_addresses(&self, mock: SocketAddr) {
        println!(
            "mock {mock}, {}",
            self.targets
                .iter()
                .map(|t| format!("{} {}", t.arm.name(), t.addr))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }

    /// Every arm, every user once (tokenizer, actors, pools, page cache); panics on an error.
    pub async fn warm_up(&self) {
        for t in &self.targets {
            let scratch = RefCell::new(Stats::new());
            for r in self.short.of(t.arm).iter() {
                let limit = Duration::from_secs(10);
                if let Err(e) = one_stream(t.addr, r, &scratch, self.forever, limit).await {
                    panic!("warm-up through {} failed: {e}", t.arm.name());
                }
            }
        }
    }

    /// `INFO commandstats` at the start of a stretch counted for the Redis arm, when `arm` is it.
    fn redis_calls(&self, arm: Arm) -> Option<BTreeMap<String, u64>> {
        self.redis_side
            .as_deref()
            .filter(|_| arm == Arm::TollgateRedis)
            .map(RedisSide::calls)
    }

    /// Phase 1: short unpaced streams, one at a time, the arms alternating stream by stream
    /// (order rotated); each stream's TTFT and its difference from the direct stream next to it.
    pub async fn one_stream_at_a_time(&mut self) {
        let one_streams = self.knobs.one_streams;
        println!("phase 1: {one_streams} streams per arm, one at a time (20 tokens, unpaced)");
        let one = Workload::new("tokens=20,tps=0,delay_ms=0", 64, self.tokens);
        let targets = &self.targets;
        let one_stats: Vec<RefCell<Stats>> =
            targets.iter().map(|_| RefCell::new(Stats::new())).collect();
        let direct_index = targets.iter().position(|t| t.arm == Arm::Direct);
        let redis_before = self.redis_calls(Arm::TollgateRedis);
        // Each proxy serves only its own arm's streams, so its CPU time over the phase is theirs.
        let cpu_before: Vec<Option<u64>> = targets.iter().map(|t| t.pid.map(cpu_ns)).collect();
        for i in 0..one_streams {
            let mut ttft = vec![None; targets.len()];
            for j in 0..targets.len() {
                let k = (i + j) % targets.len();
                let t = &targets[k];
                let requests = one.of(t.arm);
                let (request, limit) = (&requests[i % requests.len()], Duration::from_secs(10));
                match one_stream(t.addr, request, &one_stats[k], self.forever, limit).await {
                    Ok(d) => ttft[k] = Some(d.as_secs_f64() * 1e3),
                    Err(e) => one_stats[k].borrow_mut().error(e),
                }
            }
            for (k, (_, report)) in self.reports.iter_mut().enumerate() {
                if let Some(v) = ttft[k] {
                    report.one_ttft_ms.push(v);
                    if let Some(d) = direct_index.and_then(|d| ttft[d]) {
                        report.one_added_ms.push(v - d);
                    }
                }
            }
        }
        for (k, s) in one_stats.into_iter().enumerate() {
            let s = s.into_inner();
            let cpu = cpu_before[k].zip(targets[k].pid.map(cpu_ns));
            self.reports[k].1.one_cpu_us =
                cpu.filter(|_| s.completed > 0).map(|(before, after)| {
                    after.saturating_sub(before) as f64 / 1e3 / s.completed as f64
                });
            self.reports[k].1.one = Some(s);
        }
        if let (Some(side), Some(before), Some(k)) = (
            self.redis_side.as_deref_mut(),
            redis_before,
            self.redis_index,
        ) {
            let s = self.reports[k].1.one.as_ref().expect("phase 1 stats");
            let (served, sent) = (s.completed, s.sent);
            side.count("phase 1: one stream at a time", &before, served, sent);
            side.check(self.targets[k].addr, "phase 1").await;
        }
    }

    /// Phase 2: `CONC` open paced streams, each slot opening its next stream when one ends.
    pub async fn paced_streams(&mut self) {
        let Knobs {
            conc,
            rounds,
            window_secs,
            ..
        } = *self.knobs;
        println!(
            "phase 2: {conc} open streams ({PACED_TOKENS} tokens at {PACED_TPS}/s), {rounds} rounds × {} arms, {window_secs} s window each",
            self.targets.len()
        );
        let stream_secs = f64::from(PACED_TOKENS) / f64::from(PACED_TPS);
        let phase = LoadPhase {
            number: 2,
            name: format!("phase 2: {conc} paced streams"),
            requests: Workload::new(
                &format!("tokens={PACED_TOKENS},tps={PACED_TPS},delay_ms=0"),
                PACED_TOKENS + 16,
                self.tokens,
            ),
            plan: LoadPlan {
                conc,
                ramp: Duration::from_secs_f64(stream_secs),
                warm: Duration::from_secs_f64(stream_secs + 1.0),
                window: Duration::from_secs_f64(window_secs),
                drain: Duration::from_secs_f64(stream_secs + 2.0),
                limit: Duration::from_secs(60),
            },
            result: |report| &mut report.many,
        };
        self.load_phase(&phase).await;
    }

    /// Phase 3: `SAT_CONC` open unpaced streams of 2,000 tokens: the most chunks an arm relays.
    pub async fn saturation(&mut self) {
        let Knobs {
            sat_conc,
            rounds,
            sat_window_secs,
            ..
        } = *self.knobs;
        println!(
            "phase 3: saturation, {sat_conc} open unpaced streams of 2000 tokens, {rounds} rounds × {} arms, {sat_window_secs} s window each",
            self.targets.len()
        );
        let phase = LoadPhase {
            number: 3,
            name: "phase 3: saturation".to_string(),
            requests: Workload::new("tokens=2000,tps=0,delay_ms=0", 4096, self.tokens),
            plan: LoadPlan {
                conc: sat_conc,
                ramp: Duration::from_millis(200),
                warm: Duration::from_millis(1500),
                window: Duration::from_secs_f64(sat_window_secs),
                drain: Duration::ZERO,
                limit: Duration::from_secs(60),
            },
            result: |report| &mut report.sat,
        };
        self.load_phase(&phase).await;
    }

    /// `ROUNDS` × arms of one load phase, the order rotated each round; a line per round.
    async fn load_phase(&mut self, phase: &LoadPhase) {
        for round in 0..self.knobs.rounds {
            for j in 0..self.targets.len() {
                let k = (round + j) % self.targets.len();
                let t = &self.targets[k];
                let redis_before = self.redis_calls(t.arm);
                let requests = phase.requests.of(t.arm);
                let r = run_load(t, self.mock_pid, requests, &phase.plan).await;
                if let (Some(side), Some(before)) = (self.redis_side.as_deref_mut(), redis_before) {
                    side.count(&phase.name, &before, r.stats.completed, r.stats.sent);
                }
                let proxied = |v: Option<f64>| v.filter(|_| t.pid.is_some());
                println!(
                    "  round {} {:<18} {:>9.0} chunks/s {:>7.1} streams/s  ttft p99 {} ms  \
                     proxy CPU {} µs/chunk ({} % of its CPU busy besides)  errors {}",
                    round + 1,
                    t.arm.name(),
                    r.stats.chunks_in_window as f64 / r.secs,
                    r.stats.completed_in_window as f64 / r.secs,
                    fmt(r.stats.ttft.ms(99.0), 3),
                    fmt(proxied(r.cpu_per_chunk_us(self.tck, false)), 2),
                    fmt(
                        proxied(r.others_busy_pct(self.tck)).filter(|_| self.pinned),
                        0
                    ),
                    r.stats.errors
                );
                (phase.result)(&mut self.reports[k].1)
                    .get_or_insert_with(LoadResult::empty)
                    .merge(&r);
            }
        }
        if let (Some(side), Some(k)) = (self.redis_side.as_deref_mut(), self.redis_index) {
            side.check(self.targets[k].addr, &format!("phase {}", phase.number))
                .await;
        }
    }

    /// Phase 4: for each N in `MEM_STREAMS` and each proxy, a fresh proxy holding N streams open
    /// (the mock stalls after the first token); its RSS per open stream.
    pub async fn memory(&mut self, launcher: &Launcher) {
        let stall = Workload::new(
            "tokens=100,tps=0,delay_ms=0,fault=stall@1",
            128,
            self.tokens,
        );
        let (knobs, nofile) = (self.knobs, self.nofile);
        for &n_wanted in &knobs.mem_streams {
            // The gateway needs 2 sockets per stream, the driver 1, plus slack.
            let n =
                n_wanted.min(usize::try_from(nofile.saturating_sub(500) / 2).unwrap_or(usize::MAX));
            if n < n_wanted {
                println!("  open-file limit {nofile}: {n_wanted} open streams capped to {n} (raise `ulimit -n`)");
            }
            for k in 0..self.reports.len() {
                let arm = self.reports[k].0;
                if let Some(m) = self.hold_open_through(launcher, arm, &stall, n).await {
                    self.reports[k].1.mem.push(m);
                }
            }
        }
    }

    /// One measurement of phase 4: a fresh proxy for `arm` (none for the direct arm), one short
    /// stream per user, then `n` streams held open through it.
    async fn hold_open_through(
        &mut self,
        launcher: &Launcher,
        arm: Arm,
        stall: &Workload,
        n: usize,
    ) -> Option<MemResult> {
        let (proxy, addr) = launcher.start_fresh(arm, n, self.redis_side.as_deref())?;
        let redis_before = self.redis_calls(arm);
        let scratch = RefCell::new(Stats::new());
        for r in self.short.of(arm).iter() {
            let _ = one_stream(addr, r, &scratch, self.forever, Duration::from_secs(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        println!("phase 4: {} with {n} open streams", arm.name());
        let m = hold_open(addr, proxy.pid(), stall.of(arm), n, self.knobs.burst).await;
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
        println!(
            "    time to first token of the {} opened (at most {} at once): p50 {} ms, p99 {} ms",
            m.open,
            self.knobs.burst.min(n),
            fmt(exact_percentile(&m.ttft_ms, 50.0), 3),
            fmt(exact_percentile(&m.ttft_ms, 99.0), 3)
        );
        if let (Some(side), Some(before)) = (self.redis_side.as_deref_mut(), redis_before) {
            // Let the gateway settle the streams the driver just abandoned.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let (warm_completed, warm_sent) = {
                let s = scratch.borrow();
                (s.completed, s.sent)
            };
            // Held-open streams never complete: they count as served once open.
            let served = warm_completed + m.open as u64;
            let sent = warm_sent + m.requested as u64;
            let phase = format!("phase 4: memory, {n} held open");
            side.count(&phase, &before, served, sent);
            side.check(addr, &format!("phase 4 @{n}")).await;
        }
        drop(proxy);
        tokio::time::sleep(Duration::from_millis(500)).await;
        Some(m)
    }
}
