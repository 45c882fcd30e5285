//! Driving many streams at once: `CONC` slots each opening its next stream when the last ended,
//! with the CPU each process spent in a window ([`run_load`], phases 2 and 3); and `n` streams held
//! open with the proxy's resident memory before and after ([`hold_open`], phase 4).

use crate::arms::Target;
use crate::client::{one_stream, Stats, Window};
use crate::measure::{cpu_busy_ticks, cpu_ticks, rss_kib};
use crate::setup::PROXY_CPU;
use crate::sse::Reader;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What one arm did in one window of a load phase (or, merged, in all its rounds).
pub struct LoadResult {
    pub stats: Stats,
    pub secs: f64,
    pub proxy_ticks: u64,
    pub mock_ticks: u64,
    pub redis_ticks: u64,
    /// Everything that ran on the proxy's CPU (pinned runs): the proxy and any intruder.
    pub proxy_cpu_ticks: u64,
}

impl LoadResult {
    pub fn empty() -> Self {
        Self {
            stats: Stats::new(),
            secs: 0.0,
            proxy_ticks: 0,
            mock_ticks: 0,
            redis_ticks: 0,
            proxy_cpu_ticks: 0,
        }
    }
    pub fn merge(&mut self, o: &Self) {
        self.stats.merge(&o.stats);
        self.secs += o.secs;
        self.proxy_ticks += o.proxy_ticks;
        self.mock_ticks += o.mock_ticks;
        self.redis_ticks += o.redis_ticks;
        self.proxy_cpu_ticks += o.proxy_cpu_ticks;
    }

    /// The proxy's (with `mock`, the mock's) CPU per chunk relayed in the windows, in µs, with
    /// `tck` clock ticks per second.
    pub fn cpu_per_chunk_us(&self, tck: f64, mock: bool) -> Option<f64> {
        let ticks = if mock {
            self.mock_ticks
        } else {
            self.proxy_ticks
        };
        let chunks = self.stats.chunks_in_window;
        (chunks > 0).then(|| ticks as f64 / tck * 1e6 / chunks as f64)
    }

    /// What else kept the proxy's CPU busy in the windows (the idle proxies, other processes on
    /// the machine), in % of that CPU: a check on figures that assume the proxy had it to itself
    /// (pinned runs only).
    pub fn others_busy_pct(&self, tck: f64) -> Option<f64> {
        let other = self.proxy_cpu_ticks.saturating_sub(self.proxy_ticks);
        (self.secs > 0.0).then(|| other as f64 / tck / self.secs * 100.0)
    }
}

/// How a load phase drives an arm: `conc` slots started over `ramp`, measured in a `window`
/// after `warm`, then up to `drain` for the streams in flight; `limit` for any one stream.
pub struct LoadPlan {
    pub conc: usize,
    pub ramp: Duration,
    pub warm: Duration,
    pub window: Duration,
    pub drain: Duration,
    pub limit: Duration,
}

/// `plan.conc` slots, each opening its next stream as soon as the last ended, until the window
/// closes; then waits up to `drain` for streams in flight and aborts the rest.
pub async fn run_load(
    target: &Target,
    mock_pid: u32,
    reqs: &Rc<Vec<Vec<u8>>>,
    plan: &LoadPlan,
) -> LoadResult {
    let t0 = Instant::now();
    let window = Window {
        start: t0 + plan.warm,
        end: t0 + plan.warm + plan.window,
    };
    let stats = Rc::new(RefCell::new(Stats::new()));
    let mut handles = Vec::with_capacity(plan.conc);
    for i in 0..plan.conc {
        let delay = plan.ramp.mul_f64(i as f64 / plan.conc as f64);
        let (addr, reqs, stats, limit) = (target.addr, reqs.clone(), stats.clone(), plan.limit);
        handles.push(tokio::task::spawn_local(async move {
            tokio::time::sleep(delay).await;
            let mut k = i;
            while Instant::now() < window.end {
                let started = Instant::now();
                let result = one_stream(addr, &reqs[k % reqs.len()], &stats, window, limit).await;
                k += 1;
                if let Err(e) = result {
                    if window.contains(started) {
                        stats.borrow_mut().error(e);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    tokio::time::sleep_until(window.start.into()).await;
    let ticks = || {
        (
            target.pid.map_or(0, cpu_ticks),
            cpu_ticks(mock_pid),
            target.redis_pid.map_or(0, cpu_ticks),
            cpu_busy_ticks(PROXY_CPU),
        )
    };
    let (p0, m0, r0, c0) = ticks();
    let measured_from = Instant::now();
    tokio::time::sleep_until(window.end.into()).await;
    let (p1, m1, r1, c1) = ticks();
    let secs = measured_from.elapsed().as_secs_f64();
    let drain_until = tokio::time::Instant::from(window.end + plan.drain);
    let mut unfinished = Vec::new();
    for mut h in handles {
        if tokio::time::timeout_at(drain_until, &mut h).await.is_err() {
            h.abort();
            unfinished.push(h);
        }
    }
    for h in unfinished {
        let _ = h.await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = Rc::try_unwrap(stats)
        .ok()
        .expect("all slots ended")
        .into_inner();
    LoadResult {
        stats,
        secs,
        proxy_ticks: p1.saturating_sub(p0),
        mock_ticks: m1.saturating_sub(m0),
        redis_ticks: r1.saturating_sub(r0),
        proxy_cpu_ticks: c1.saturating_sub(c0),
    }
}

/// What holding streams open through a proxy cost it.
pub struct MemResult {
    pub requested: usize,
    pub open: usize,
    pub errors: usize,
    pub closed_early: usize,
    pub idle_kib: u64,
    pub loaded_kib: u64,
    pub open_secs: f64,
    /// Each opened stream's time to first token (connect to first content delta), in ms.
    pub ttft_ms: Vec<f64>,
}

impl MemResult {
    pub fn kib_per_stream(&self) -> Option<f64> {
        (self.open > 0).then(|| (self.loaded_kib as f64 - self.idle_kib as f64) / self.open as f64)
    }
}

/// Holds `n` streams open through `addr` (the mock stalls after the first token), at most
/// `pending` of them between connect and first token; measures the proxy's RSS with all open
/// and each stream's time to first token.
pub async fn hold_open(
    addr: SocketAddr,
    proxy_pid: u32,
    reqs: &Rc<Vec<Vec<u8>>>,
    n: usize,
    pending: usize,
) -> MemResult {
    #[derive(Default)]
    struct Counts {
        open: usize,
        errors: usize,
        closed_early: usize,
        sample: Option<String>,
        ttft_ms: Vec<f64>,
    }
    let idle_kib = rss_kib(proxy_pid);
    let counts = Rc::new(RefCell::new(Counts::default()));
    let gate = Rc::new(tokio::sync::Semaphore::new(pending.max(1)));
    let started = Instant::now();
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let (reqs, counts, gate) = (reqs.clone(), counts.clone(), gate.clone());
        handles.push(tokio::task::spawn_local(async move {
            let permit = gate.acquire().await;
            let connecting = Instant::now();
            let result: Result<(), String> = async {
                let mut socket =
                    tokio::time::timeout(Duration::from_secs(20), TcpStream::connect(addr))
                        .await
                        .map_err(|_| "connect timeout".to_string())?
                        .map_err(|e| format!("connect: {e}"))?;
                socket.set_nodelay(true).map_err(|e| e.to_string())?;
                socket
                    .write_all(&reqs[i % reqs.len()])
                    .await
                    .map_err(|e| format!("write: {e}"))?;
                let mut reader = Reader::default();
                let mut buf = vec![0u8; 4096];
                let mut opened = false;
                let mut permit = Some(permit);
                loop {
                    let read = socket.read(&mut buf);
                    let n = if opened {
                        read.await
                    } else {
                        tokio::time::timeout(Duration::from_secs(30), read)
                            .await
                            .map_err(|_| "no first token within 30 s".to_string())?
                    }
                    .map_err(|e| format!("read: {e}"))?;
                    if n == 0 {
                        return Err(if opened {
                            "closed early".into()
                        } else {
                            "eof".into()
                        });
                    }
                    if reader.feed(&buf[..n])? > 0 && !opened {
                        opened = true;
                        permit.take();
                        let mut c = counts.borrow_mut();
                        c.open += 1;
                        c.ttft_ms.push(connecting.elapsed().as_secs_f64() * 1e3);
                    }
                }
            }
            .await;
            if let Err(e) = result {
                let mut c = counts.borrow_mut();
                if e == "closed early" {
                    c.closed_early += 1;
                } else {
                    c.errors += 1;
                }
                c.sample.get_or_insert(e);
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        let settled = {
            let c = counts.borrow();
            c.open + c.errors + c.closed_early >= n
        };
        if settled {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let open_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let loaded_kib = rss_kib(proxy_pid);
    let (open, errors, closed_early, sample, ttft_ms) = {
        let c = counts.borrow();
        (
            c.open - c.closed_early.min(c.open),
            c.errors,
            c.closed_early,
            c.sample.clone(),
            c.ttft_ms.clone(),
        )
    };
    for h in &handles {
        h.abort();
    }
    for h in handles {
        let _ = h.await;
    }
    if let Some(e) = sample {
        println!("    first problem: {e}");
    }
    MemResult {
        requested: n,
        open,
        errors,
        closed_early,
        idle_kib,
        loaded_kib,
        open_secs,
        ttft_ms,
    }
}
