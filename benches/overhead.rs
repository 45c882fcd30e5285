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

#![allow(clippy::expect_used, clippy::print_stdout)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");
const TEMPLATE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/load/nginx.conf.template");
const SECRET: &str = "overhead-bench-secret";
const USERS: usize = 100;
/// Paced streams: the mock's flags, and the knobs in the model name (both, to be explicit).
const PACED_TOKENS: u32 = 50;
const PACED_TPS: u32 = 20;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------------
// A log-linear (HDR-style) histogram of nanoseconds: 2,048 sub-buckets per power of two above
// 4,096 ns, so every recorded value is kept within 1/4096 of its true value (≈ 12 µs at 50 ms:
// fine enough to see a fraction of a millisecond added to a paced first token).

const SUB_BITS: u32 = 12;
const HALF: u64 = 1 << (SUB_BITS - 1);

#[derive(Clone)]
struct Hist {
    counts: Vec<u64>,
    n: u64,
    max: u64,
}

impl Hist {
    fn new() -> Self {
        Self {
            counts: vec![0; (66 - SUB_BITS as usize) * HALF as usize],
            n: 0,
            max: 0,
        }
    }
    fn index(v: u64) -> usize {
        if v < (1 << SUB_BITS) {
            return v as usize;
        }
        let msb = 63 - v.leading_zeros();
        let shift = msb + 1 - SUB_BITS;
        (u64::from(shift) * HALF + (v >> shift)) as usize
    }
    fn value(index: usize) -> u64 {
        let i = index as u64;
        if i < (1 << SUB_BITS) {
            return i;
        }
        let shift = i / HALF - 1;
        let top = i % HALF + HALF;
        (top << shift) + (1 << shift) / 2
    }
    fn record(&mut self, d: Duration) {
        let v = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.counts[Self::index(v)] += 1;
        self.n += 1;
        self.max = self.max.max(v);
    }
    fn merge(&mut self, other: &Self) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.n += other.n;
        self.max = self.max.max(other.max);
    }
    /// Percentile in milliseconds (`None` when empty).
    fn ms(&self, p: f64) -> Option<f64> {
        if self.n == 0 {
            return None;
        }
        let target = ((p / 100.0) * self.n as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= target {
                return Some(Self::value(i).min(self.max) as f64 / 1e6);
            }
        }
        Some(self.max as f64 / 1e6)
    }
    fn max_ms(&self) -> Option<f64> {
        (self.n > 0).then(|| self.max as f64 / 1e6)
    }
}

fn exact_percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    Some(v[rank])
}

// ---------------------------------------------------------------------------------------------
// Processes.

use tollgate_testkit::process;

use process::Running;

use tollgate_testkit::redis;

use redis::RedisServer;

/// The pid of a running proxy (for its CPU and memory).
trait Pid {
    fn pid(&self) -> u32;
}

impl Pid for Running {
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p.is_file().then_some(p);
    }
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin"])
        .map(|dir| PathBuf::from(dir).join(name))
        .find(|p| p.is_file());
    found
}

/// CPU placement: `Some((driver_and_mock_cpu, proxy_cpu))` when pinning.
#[derive(Clone, Copy)]
struct Pinning {
    taskset: Option<&'static str>,
}

impl Pinning {
    /// A command that runs `program` on `cpu` (through `taskset -c`, which execs: same pid).
    fn command(&self, cpu: u32, program: &str) -> Command {
        match self.taskset {
            Some(taskset) => {
                let mut c = Command::new(taskset);
                c.args(["-c", &cpu.to_string(), program]);
                c
            }
            None => Command::new(program),
        }
    }
}

const DRIVER_CPU: u32 = 0;
const PROXY_CPU: u32 = 1;

/// Spawns a tollgate process and returns it with the address it logged as `listen`.
fn spawn_tollgate(
    pin: Pinning,
    cpu: u32,
    args: &[&str],
    env: &[(&str, String)],
    ready: &str,
) -> (Running, SocketAddr) {
    let mut command = pin.command(cpu, BIN);
    command
        .args(args)
        .env_clear()
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    for (k, v) in env {
        command.env(k, v);
    }
    let (running, listen) = process::start(command, ready, Some(&format!("{args:?}")));
    (running, listen.parse().expect("addr"))
}

fn start_mock(pin: Pinning) -> (Running, SocketAddr) {
    spawn_tollgate(
        pin,
        DRIVER_CPU,
        &[
            "mock-provider",
            "--listen",
            "127.0.0.1:0",
            "--tokens",
            &PACED_TOKENS.to_string(),
            "--tokens-per-second",
            &PACED_TPS.to_string(),
            "--first-token-delay-ms",
            "0",
        ],
        &[],
        "mock provider is serving",
    )
}

/// The gateway under test; with `redis_url`, the same gateway in Redis mode.
fn start_gateway(pin: Pinning, mock: SocketAddr, redis_url: Option<&str>) -> (Running, SocketAddr) {
    let mut env: Vec<(&str, String)> = vec![
        ("TOLLGATE_LISTEN", "127.0.0.1:0".into()),
        ("TOLLGATE_UPSTREAM_URL", format!("http://{mock}/v1")),
        ("TOLLGATE_JWT_SECRET", SECRET.into()),
        // A throughput benchmark, not a limits test: lift every per-user window and cap.
        ("TOLLGATE__RATE__REQUESTS_PER_MINUTE", "1000000".into()),
        ("TOLLGATE__RATE__REQUESTS_PER_DAY", "1000000000".into()),
        ("TOLLGATE__RATE__TOKENS_PER_DAY", "1000000000000".into()),
        ("TOLLGATE__RATE__MAX_CONCURRENT_STREAMS", "1000000".into()),
        ("TOLLGATE__COST__MAX_DAILY_USD", "1000000.0".into()),
        ("TOLLGATE__COST__MAX_MONTHLY_USD", "1000000.0".into()),
        // 10,000 open streams need 10,000 upstream connections (default 4096 per worker), and
        // the held-open streams of the memory phase stall on purpose (default idle cut 10 s).
        ("TOLLGATE__UPSTREAM__MAX_CONNECTIONS", "30000".into()),
        ("TOLLGATE__UPSTREAM__IDLE_TIMEOUT_SECS", "600".into()),
        ("TOLLGATE__LIMITS__DEADLINE_SECS", "600".into()),
        // A Redis lease must outlive the deadline; start-up validates it in either mode.
        ("TOLLGATE__REDIS__LEASE_SECS", "660".into()),
    ];
    if let Some(url) = redis_url {
        env.extend([
            ("TOLLGATE_REDIS_URL", url.to_string()),
            // The default 50 ms is for production; a Redis sharing a busy core with the mock
            // and the driver must not send the arm down the outage path.
            ("TOLLGATE__REDIS__OP_TIMEOUT_MS", "1000".into()),
        ]);
    }
    spawn_tollgate(pin, PROXY_CPU, &[], &env, "tollgate is serving")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Renders the template into `dir` and starts nginx in the foreground (one process).
fn start_nginx(
    pin: Pinning,
    nginx: &str,
    dir: &std::path::Path,
    mock: SocketAddr,
    nofile: u64,
) -> (Running, SocketAddr) {
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let prefix = dir.to_str().expect("utf8 temp dir");
    let conf = std::fs::read_to_string(TEMPLATE)
        .expect("read load/nginx.conf.template")
        .replace("{{PREFIX}}", prefix)
        .replace("{{LISTEN}}", &listen.to_string())
        .replace("{{UPSTREAM}}", &mock.to_string())
        .replace(
            "{{WORKER_CONNECTIONS}}",
            &nofile.saturating_sub(100).max(1024).to_string(),
        )
        .replace("{{RLIMIT_NOFILE}}", &nofile.to_string());
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).expect("write nginx.conf");
    let error_log = dir.join("error.log");
    #[allow(clippy::zombie_processes)] // wrapped in `Running` (killed and waited on drop) below
    let mut child = pin
        .command(PROXY_CPU, nginx)
        .args(["-p", prefix, "-c"])
        .arg(&conf_path)
        .arg("-e")
        .arg(&error_log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn nginx");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(&error_log).unwrap_or_default();
            panic!("nginx exited during start-up ({status}): {log}");
        }
        if std::net::TcpStream::connect(listen).is_ok() {
            return (Running(child), listen);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nginx did not listen on {listen} within 10 s");
}

// ---------------------------------------------------------------------------------------------
// /proc.

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of the whole process (all threads), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start at its closing ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): utime is field 14, stime field 15.
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(11) + get(12)
}

/// Busy ticks of one CPU, all processes (user, nice, system, irq, softirq, steal).
fn cpu_busy_ticks(cpu: u32) -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let prefix = format!("cpu{cpu} ");
    stat.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |rest| {
            let v: Vec<u64> = rest
                .split_whitespace()
                .map(|f| f.parse().unwrap_or(0))
                .collect();
            // user nice system idle iowait irq softirq steal
            [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| v.get(i)).sum()
        })
}

fn status_kib(pid: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    status_kib(&pid.to_string(), "VmRSS:")
}

fn nofile_soft_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(1024)
}

// ---------------------------------------------------------------------------------------------
// The client: one SSE stream over HTTP/1.1 with chunked decoding and event counting.

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[derive(Default)]
struct Reader {
    head: Vec<u8>,
    headers_done: bool,
    chunked: bool,
    raw: Vec<u8>,
    remaining: usize,
    need_crlf: bool,
    finished: bool,
    body: Vec<u8>,
    done_seen: bool,
    error_event: bool,
}

impl Reader {
    /// Feeds bytes read from the socket; returns the number of content deltas completed.
    fn feed(&mut self, bytes: &[u8]) -> Result<u32, String> {
        if self.headers_done {
            return self.body_bytes(bytes);
        }
        self.head.extend_from_slice(bytes);
        let Some(pos) = find(&self.head, b"\r\n\r\n") else {
            return if self.head.len() > 64 * 1024 {
                Err("no end of headers".into())
            } else {
                Ok(0)
            };
        };
        let head = String::from_utf8_lossy(&self.head[..pos]).to_ascii_lowercase();
        if !head.starts_with("http/1.1 200") {
            let text = String::from_utf8_lossy(&self.head);
            return Err(format!(
                "status: {}",
                text.chars().take(300).collect::<String>()
            ));
        }
        self.chunked = head.contains("transfer-encoding: chunked");
        self.headers_done = true;
        let rest = self.head.split_off(pos + 4);
        self.body_bytes(&rest)
    }

    fn body_bytes(&mut self, bytes: &[u8]) -> Result<u32, String> {
        if self.chunked {
            self.raw.extend_from_slice(bytes);
            self.dechunk()?;
        } else {
            self.body.extend_from_slice(bytes);
        }
        Ok(self.events())
    }

    fn dechunk(&mut self) -> Result<(), String> {
        let mut at = 0;
        while !self.finished {
            if self.remaining > 0 {
                let take = self.remaining.min(self.raw.len() - at);
                if take == 0 {
                    break;
                }
                self.body.extend_from_slice(&self.raw[at..at + take]);
                at += take;
                self.remaining -= take;
                self.need_crlf = self.remaining == 0;
            } else if self.need_crlf {
                if self.raw.len() - at < 2 {
                    break;
                }
                at += 2;
                self.need_crlf = false;
            } else {
                let Some(p) = find(&self.raw[at..], b"\r\n") else {
                    break;
                };
                let line = String::from_utf8_lossy(&self.raw[at..at + p]);
                let hex = line.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(hex, 16)
                    .map_err(|_| format!("bad chunk size line {line:?}"))?;
                at += p + 2;
                if size == 0 {
                    self.finished = true;
                } else {
                    self.remaining = size;
                }
            }
        }
        self.raw.drain(..at);
        Ok(())
    }

    fn events(&mut self) -> u32 {
        let mut count = 0;
        let mut start = 0;
        while let Some(p) = find(&self.body[start..], b"\n\n") {
            let event = &self.body[start..start + p];
            if find(event, b"[DONE]").is_some() {
                self.done_seen = true;
            } else if let Some(c) = find(event, b"\"content\":\"") {
                if event.get(c + 11) != Some(&b'"') {
                    count += 1;
                }
            }
            if find(event, b"\"error\"").is_some() {
                self.error_event = true;
            }
            start += p + 2;
        }
        self.body.drain(..start);
        count
    }
}

#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

impl Window {
    fn contains(&self, t: Instant) -> bool {
        t >= self.start && t < self.end
    }
}

struct Stats {
    ttft: Hist,
    gap: Hist,
    chunks_in_window: u64,
    completed_in_window: u64,
    started_in_window: u64,
    /// Requests written and streams ended with `[DONE]`, window or not (Redis commands per
    /// request count the whole run).
    sent: u64,
    completed: u64,
    errors: u64,
    error_samples: Vec<String>,
}

impl Stats {
    fn new() -> Self {
        Self {
            ttft: Hist::new(),
            gap: Hist::new(),
            chunks_in_window: 0,
            completed_in_window: 0,
            started_in_window: 0,
            sent: 0,
            completed: 0,
            errors: 0,
            error_samples: Vec::new(),
        }
    }
    fn merge(&mut self, o: &Self) {
        self.ttft.merge(&o.ttft);
        self.gap.merge(&o.gap);
        self.chunks_in_window += o.chunks_in_window;
        self.completed_in_window += o.completed_in_window;
        self.started_in_window += o.started_in_window;
        self.sent += o.sent;
        self.completed += o.completed;
        self.errors += o.errors;
        for e in &o.error_samples {
            if self.error_samples.len() < 3 {
                self.error_samples.push(e.clone());
            }
        }
    }
    fn error(&mut self, e: String) {
        self.errors += 1;
        if self.error_samples.len() < 3 {
            self.error_samples.push(e);
        }
    }
}

/// One stream on a fresh connection. Records TTFT and gaps for streams started in the window,
/// chunks and completions by the time they happen. Returns the time to first token.
async fn one_stream(
    addr: SocketAddr,
    request: &[u8],
    stats: &RefCell<Stats>,
    window: Window,
    limit: Duration,
) -> Result<Duration, String> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut socket = tokio::time::timeout_at(deadline, TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timeout".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    socket.set_nodelay(true).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let in_window = window.contains(started);
    if in_window {
        stats.borrow_mut().started_in_window += 1;
    }
    socket
        .write_all(request)
        .await
        .map_err(|e| format!("write: {e}"))?;
    stats.borrow_mut().sent += 1;
    let mut reader = Reader::default();
    let mut buf = vec![0u8; 32 * 1024];
    let mut ttft = None;
    let mut last: Option<Instant> = None;
    loop {
        let n = tokio::time::timeout_at(deadline, socket.read(&mut buf))
            .await
            .map_err(|_| "stream timeout".to_string())?
            .map_err(|e| format!("read: {e}"))?;
        let now = Instant::now();
        if n == 0 {
            break;
        }
        let k = reader.feed(&buf[..n])?;
        if k > 0 {
            let mut st = stats.borrow_mut();
            if window.contains(now) {
                st.chunks_in_window += u64::from(k);
            }
            match last {
                None => {
                    ttft = Some(now - started);
                    if in_window {
                        st.ttft.record(now - started);
                    }
                }
                Some(prev) if in_window => st.gap.record(now - prev),
                Some(_) => {}
            }
            if in_window {
                for _ in 1..k {
                    st.gap.record(Duration::ZERO);
                }
            }
            last = Some(now);
        }
        if reader.finished {
            break;
        }
    }
    if reader.error_event {
        return Err("error event in the stream".into());
    }
    if !reader.done_seen {
        return Err("stream ended without [DONE]".into());
    }
    let mut st = stats.borrow_mut();
    st.completed += 1;
    if window.contains(Instant::now()) {
        st.completed_in_window += 1;
    }
    ttft.ok_or_else(|| "no content delta".into())
}

fn request_bytes(model: &str, max_tokens: u32, token: &str) -> Vec<u8> {
    let body = format!(
        r#"{{"model":"{model}","stream":true,"max_tokens":{max_tokens},"messages":[{{"role":"user","content":"hello there"}}]}}"#
    );
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// One request per simulated user (round robin over the tokens).
fn requests(model: &str, max_tokens: u32, tokens: &[String]) -> Rc<Vec<Vec<u8>>> {
    Rc::new(
        tokens
            .iter()
            .map(|t| request_bytes(model, max_tokens, t))
            .collect(),
    )
}

// ---------------------------------------------------------------------------------------------
// The Redis arm's redis-server: commands per request and health after each phase.

/// `GET path` on a fresh connection; the status code and the body (at most 5 s).
async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let exchange = async {
        let mut socket = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        socket
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut bytes = Vec::new();
        socket
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").ok_or("no end of headers")?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or("no status code")?;
        Ok((status, body.to_string()))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| format!("GET {path}: no answer within 5 s"))?
}

/// Redis commands a phase cost the Redis arm.
struct Tally {
    phase: String,
    /// Requests served while the phase was counted: streams that ended with `[DONE]`, and in
    /// the memory phase the streams held open too (the denominator).
    served: u64,
    /// Requests sent, including streams abandoned at the end of a load phase (their admit and
    /// settle are in the calls, so "per request sent" is the lower bound).
    sent: u64,
    calls: BTreeMap<String, u64>,
}

/// The Redis behind the `tollgate-redis` arm and what the bench learnt about it.
struct RedisSide {
    server: RedisServer,
    pid: u32,
    version: String,
    tallies: Vec<Tally>,
    /// One line per check of a Redis gateway (`/readyz`, `tollgate_redis_errors_total`).
    checks: Vec<String>,
}

impl RedisSide {
    /// Starts redis-server (on `DRIVER_CPU` when pinning) with an fsync per second: the
    /// harness fsyncs every write for its crash tests, production Redis does not.
    fn start(pin: Pinning) -> Result<Self, String> {
        for tool in ["redis-server", "redis-cli"] {
            if find_in_path(tool).is_none() {
                return Err(format!("{tool} not found (Debian package redis-server)"));
            }
        }
        let server = std::panic::catch_unwind(RedisServer::start)
            .map_err(|_| "redis-server did not start (see the message above)".to_string())?;
        server.cli(&["CONFIG", "SET", "appendfsync", "everysec"]);
        let info = server.cli(&["INFO", "server"]);
        let field = |key: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        let pid: u32 = field("process_id:")
            .parse()
            .map_err(|_| "no process_id in INFO")?;
        if let Some(taskset) = pin.taskset {
            let pinned = Command::new(taskset)
                .args(["-a", "-p", "-c", &DRIVER_CPU.to_string(), &pid.to_string()])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            assert!(pinned, "taskset could not pin redis-server");
        }
        Ok(Self {
            server,
            pid,
            version: field("redis_version:"),
            tallies: Vec::new(),
            checks: Vec::new(),
        })
    }

    /// `INFO commandstats` as command → calls.
    fn calls(&self) -> BTreeMap<String, u64> {
        self.server.command_calls()
    }

    /// Adds `after − before` (less the bench's own INFO) to the phase's tally.
    fn count(
        &mut self,
        phase: &str,
        before: &BTreeMap<String, u64>,
        after: &BTreeMap<String, u64>,
        served: u64,
        sent: u64,
    ) {
        let index = match self.tallies.iter().position(|t| t.phase == phase) {
            Some(i) => i,
            None => {
                self.tallies.push(Tally {
                    phase: phase.to_string(),
                    served: 0,
                    sent: 0,
                    calls: BTreeMap::new(),
                });
                self.tallies.len() - 1
            }
        };
        let tally = &mut self.tallies[index];
        tally.served += served;
        tally.sent += sent;
        for (name, &n) in after {
            let delta = n.saturating_sub(before.get(name).copied().unwrap_or(0));
            if name != "info" && delta > 0 {
                *tally.calls.entry(name.clone()).or_default() += delta;
            }
        }
    }

    /// Asks a Redis gateway whether it is ready with Redis ok, and for its Redis errors.
    async fn check(&mut self, gateway: SocketAddr, after: &str) {
        let ready = match http_get(gateway, "/readyz").await {
            Ok((status, body)) => {
                let redis = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["redis"].as_str().map(str::to_string))
                    .unwrap_or_else(|| "?".into());
                if status == 200 && redis == "ok" {
                    "ready, redis ok".to_string()
                } else {
                    format!("NOT OK: /readyz {status} {}", body.trim())
                }
            }
            Err(e) => format!("NOT OK: /readyz {e}"),
        };
        let errors = match http_get(gateway, "/metrics").await {
            Ok((_, body)) => {
                let lines: Vec<(String, f64)> = body
                    .lines()
                    .filter(|l| l.starts_with("tollgate_redis_errors_total"))
                    .filter_map(|l| {
                        let (series, value) = l.rsplit_once(' ')?;
                        Some((series.to_string(), value.trim().parse().ok()?))
                    })
                    .filter(|(_, v)| *v > 0.0)
                    .collect();
                if lines.is_empty() {
                    "tollgate_redis_errors_total 0".to_string()
                } else {
                    lines
                        .iter()
                        .map(|(series, v)| format!("{series} {v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            }
            Err(e) => format!("/metrics {e}"),
        };
        let line = format!("after {after}: {ready}; {errors}");
        println!("  tollgate-redis {line}");
        self.checks.push(line);
    }

    fn print(&self) {
        println!();
        println!(
            "Redis (tollgate-redis arm): redis-server {} (pid {}), appendonly yes, appendfsync everysec",
            self.version, self.pid
        );
        println!(
            "  Redis commands per request: INFO commandstats deltas (less the bench's own INFO) ÷ \
             requests served (completed; phase 4: warm-up + held open) [÷ requests sent]; \
             commandstats counts the commands a script runs as well as the script call"
        );
        let per = |n: u64, d: u64| fmt((d > 0).then(|| n as f64 / d as f64), 2);
        for t in &self.tallies {
            let total: u64 = t.calls.values().sum();
            println!(
                "  {:<34} {:>7} per request [{}]  ({total} commands, {} served, {} sent)",
                t.phase,
                per(total, t.served),
                per(total, t.sent),
                t.served,
                t.sent,
            );
            let mut by_calls: Vec<(&String, &u64)> = t.calls.iter().collect();
            by_calls.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            for sent in [true, false] {
                let group: Vec<(&String, &u64)> = by_calls
                    .iter()
                    .copied()
                    .filter(|(name, _)| sent_by_client(name) == sent)
                    .collect();
                let sum: u64 = group.iter().map(|(_, &n)| n).sum();
                let items: Vec<String> = group
                    .iter()
                    .map(|(name, &n)| {
                        if n * 200 < t.served {
                            format!("{name} ({n} in all)")
                        } else {
                            format!("{name} {}", per(n, t.served))
                        }
                    })
                    .collect();
                let what = if sent {
                    "sent by the gateway"
                } else {
                    "run inside its scripts"
                };
                println!(
                    "  {:>34} {:>7} {what}: {}",
                    "",
                    per(sum, t.served),
                    items.join(", ")
                );
            }
        }
        println!("  health of the Redis gateway:");
        for line in &self.checks {
            println!("    {line}");
        }
    }
}

/// Whether a command is one a client sends (a script call, a probe, connection set-up) rather
/// than one a Lua script runs. tollgate's only plain data command, SET for a budget alert's
/// claim, cannot fire here (the budgets are lifted), so every data command is a script's.
fn sent_by_client(name: &str) -> bool {
    ["eval", "fcall", "script|", "client|", "config|"]
        .iter()
        .any(|p| name.starts_with(p))
        || matches!(name, "ping" | "hello" | "select" | "auth")
}

// ---------------------------------------------------------------------------------------------
// Phases.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Arm {
    Direct,
    Nginx,
    Tollgate,
    /// The same gateway in Redis mode (`TOLLGATE_REDIS_URL`).
    TollgateRedis,
}

impl Arm {
    fn name(self) -> &'static str {
        match self {
            Arm::Direct => "direct",
            Arm::Nginx => "nginx",
            Arm::Tollgate => "tollgate",
            Arm::TollgateRedis => "tollgate-redis",
        }
    }
}

struct Target {
    arm: Arm,
    addr: SocketAddr,
    /// The proxy process whose CPU is charged (none for the direct arm).
    pid: Option<u32>,
    /// redis-server, whose CPU is charged separately (the Redis arm only).
    redis_pid: Option<u32>,
}

struct LoadResult {
    stats: Stats,
    secs: f64,
    proxy_ticks: u64,
    mock_ticks: u64,
    redis_ticks: u64,
    /// Everything that ran on the proxy's CPU (pinned runs): the proxy and any intruder.
    proxy_cpu_ticks: u64,
}

impl LoadResult {
    fn empty() -> Self {
        Self {
            stats: Stats::new(),
            secs: 0.0,
            proxy_ticks: 0,
            mock_ticks: 0,
            redis_ticks: 0,
            proxy_cpu_ticks: 0,
        }
    }
    fn merge(&mut self, o: &Self) {
        self.stats.merge(&o.stats);
        self.secs += o.secs;
        self.proxy_ticks += o.proxy_ticks;
        self.mock_ticks += o.mock_ticks;
        self.redis_ticks += o.redis_ticks;
        self.proxy_cpu_ticks += o.proxy_cpu_ticks;
    }
}

struct LoadPlan {
    conc: usize,
    ramp: Duration,
    warm: Duration,
    window: Duration,
    drain: Duration,
    limit: Duration,
}

/// `plan.conc` slots, each opening its next stream as soon as the last ended, until the window
/// closes; then waits up to `drain` for streams in flight and aborts the rest.
async fn run_load(
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

struct MemResult {
    requested: usize,
    open: usize,
    errors: usize,
    closed_early: usize,
    idle_kib: u64,
    loaded_kib: u64,
    open_secs: f64,
}

impl MemResult {
    fn kib_per_stream(&self) -> Option<f64> {
        (self.open > 0).then(|| (self.loaded_kib as f64 - self.idle_kib as f64) / self.open as f64)
    }
}

/// Holds `n` streams open through `addr` (the mock stalls after the first token), at most
/// `pending` of them between connect and first token; measures the proxy's RSS with all open.
async fn hold_open(
    addr: SocketAddr,
    proxy_pid: u32,
    reqs: &Rc<Vec<Vec<u8>>>,
    n: usize,
) -> MemResult {
    #[derive(Default)]
    struct Counts {
        open: usize,
        errors: usize,
        closed_early: usize,
        sample: Option<String>,
    }
    let idle_kib = rss_kib(proxy_pid);
    let counts = Rc::new(RefCell::new(Counts::default()));
    let gate = Rc::new(tokio::sync::Semaphore::new(256));
    let started = Instant::now();
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let (reqs, counts, gate) = (reqs.clone(), counts.clone(), gate.clone());
        handles.push(tokio::task::spawn_local(async move {
            let permit = gate.acquire().await;
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
                        counts.borrow_mut().open += 1;
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
    let (open, errors, closed_early, sample) = {
        let c = counts.borrow();
        (
            c.open - c.closed_early.min(c.open),
            c.errors,
            c.closed_early,
            c.sample.clone(),
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
    }
}

// ---------------------------------------------------------------------------------------------
// Report.

#[derive(Default)]
struct ArmReport {
    one: Option<Stats>,
    one_ttft_ms: Vec<f64>,
    one_added_ms: Vec<f64>,
    many: Option<LoadResult>,
    sat: Option<LoadResult>,
    mem: Vec<MemResult>,
}

/// The memory result for a wanted N (also when the fd limit capped it).
fn mem_for(r: &ArmReport, n: usize) -> Option<&MemResult> {
    r.mem
        .iter()
        .find(|m| m.requested == n || (m.requested < n && m.requested * 2 > n))
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "—".to_string(), |v| format!("{v:.digits$}"))
}

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

fn print_table(
    reports: &[(Arm, ArmReport)],
    conc: usize,
    sat_conc: usize,
    tck: f64,
    mem_streams: &[usize],
    one_streams: usize,
    pinned: bool,
) {
    let get = |arm: Arm| reports.iter().find(|(a, _)| *a == arm).map(|(_, r)| r);
    let direct = get(Arm::Direct);
    let q = |s: &Option<Stats>, p: f64, gap: bool| {
        s.as_ref()
            .and_then(|s| if gap { s.gap.ms(p) } else { s.ttft.ms(p) })
    };
    let ql = |s: &Option<LoadResult>, p: f64, gap: bool| {
        s.as_ref().and_then(|r| {
            if gap {
                r.stats.gap.ms(p)
            } else {
                r.stats.ttft.ms(p)
            }
        })
    };
    let minus = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a - b);
    let per_s = |r: &Option<LoadResult>, chunks: bool| {
        r.as_ref().filter(|r| r.secs > 0.0).map(|r| {
            (if chunks {
                r.stats.chunks_in_window
            } else {
                r.stats.completed_in_window
            }) as f64
                / r.secs
        })
    };
    let cpu_per_chunk_us = |r: &Option<LoadResult>, mock: bool| {
        r.as_ref()
            .filter(|r| r.stats.chunks_in_window > 0)
            .map(|r| {
                let ticks = if mock { r.mock_ticks } else { r.proxy_ticks };
                ticks as f64 / tck * 1e6 / r.stats.chunks_in_window as f64
            })
    };
    let busy = |r: &Option<LoadResult>, mock: bool| {
        r.as_ref().filter(|r| r.secs > 0.0).map(|r| {
            (if mock { r.mock_ticks } else { r.proxy_ticks }) as f64 / tck / r.secs * 100.0
        })
    };
    // What else ran on the proxy's CPU (the idle proxies, other processes on the machine):
    // a check on the figures above, which assume the proxy had that core to itself.
    let intruders = move |r: &Option<LoadResult>| {
        r.as_ref().filter(|r| pinned && r.secs > 0.0).map(|r| {
            let other = r.proxy_cpu_ticks.saturating_sub(r.proxy_ticks);
            other as f64 / tck / r.secs * 100.0
        })
    };
    // redis-server's CPU, charged to the Redis arm only (it sits on the mock's CPU).
    let redis_cpu = |arm: Arm, r: &Option<LoadResult>, per_chunk: bool| {
        r.as_ref()
            .filter(|r| arm == Arm::TollgateRedis && r.stats.chunks_in_window > 0 && r.secs > 0.0)
            .map(|r| {
                let secs = r.redis_ticks as f64 / tck;
                if per_chunk {
                    secs * 1e6 / r.stats.chunks_in_window as f64
                } else {
                    secs / r.secs * 100.0
                }
            })
    };

    type Row<'a> = (
        String,
        Box<dyn Fn(Arm, &ArmReport) -> Option<f64> + 'a>,
        usize,
        bool,
    );
    let d_one = |p: f64| direct.and_then(|d| q(&d.one, p, false));
    let d_many = |p: f64| direct.and_then(|d| ql(&d.many, p, false));
    let mut rows: Vec<Row> = vec![
        (
            format!("TTFT, 1 stream, p50 (ms) [n={one_streams}]"),
            Box::new(|_, r| q(&r.one, 50.0, false)),
            3,
            true,
        ),
        (
            "TTFT, 1 stream, p99 (ms)".into(),
            Box::new(|_, r| q(&r.one, 99.0, false)),
            3,
            true,
        ),
        (
            "added TTFT, 1 stream, p50 (ms, Δ quantiles)".into(),
            Box::new(move |a, r| {
                (a != Arm::Direct)
                    .then(|| minus(q(&r.one, 50.0, false), d_one(50.0)))
                    .flatten()
            }),
            3,
            false,
        ),
        (
            "added TTFT, 1 stream, p99 (ms, Δ quantiles)".into(),
            Box::new(move |a, r| {
                (a != Arm::Direct)
                    .then(|| minus(q(&r.one, 99.0, false), d_one(99.0)))
                    .flatten()
            }),
            3,
            false,
        ),
        (
            "added TTFT, 1 stream, p50 (ms, paired)".into(),
            Box::new(|a, r| {
                (a != Arm::Direct)
                    .then(|| exact_percentile(&r.one_added_ms, 50.0))
                    .flatten()
            }),
            3,
            false,
        ),
        (
            "added TTFT, 1 stream, p99 (ms, paired)".into(),
            Box::new(|a, r| {
                (a != Arm::Direct)
                    .then(|| exact_percentile(&r.one_added_ms, 99.0))
                    .flatten()
            }),
            3,
            false,
        ),
        (
            format!("TTFT, {conc} streams, p50 (ms)"),
            Box::new(|_, r| ql(&r.many, 50.0, false)),
            3,
            true,
        ),
        (
            format!("TTFT, {conc} streams, p99 (ms)"),
            Box::new(|_, r| ql(&r.many, 99.0, false)),
            3,
            true,
        ),
        (
            format!("added TTFT, {conc} streams, p50 (ms, Δ quantiles)"),
            Box::new(move |a, r| {
                (a != Arm::Direct)
                    .then(|| minus(ql(&r.many, 50.0, false), d_many(50.0)))
                    .flatten()
            }),
            3,
            false,
        ),
        (
            format!("added TTFT, {conc} streams, p99 (ms, Δ quantiles)"),
            Box::new(move |a, r| {
                (a != Arm::Direct)
                    .then(|| minus(ql(&r.many, 99.0, false), d_many(99.0)))
                    .flatten()
            }),
            3,
            false,
        ),
        (
            format!("chunk gap, {conc} streams, p50 (ms; paced 50 ms)"),
            Box::new(|_, r| ql(&r.many, 50.0, true)),
            2,
            true,
        ),
        (
            format!("chunk gap, {conc} streams, p99 (ms)"),
            Box::new(|_, r| ql(&r.many, 99.0, true)),
            2,
            true,
        ),
        (
            format!("chunk gap, {conc} streams, max (ms)"),
            Box::new(|_, r| r.many.as_ref().and_then(|m| m.stats.gap.max_ms())),
            2,
            true,
        ),
        (
            format!("completed streams/s, {conc} streams"),
            Box::new(|_, r| per_s(&r.many, false)),
            1,
            true,
        ),
        (
            format!("chunks/s relayed, {conc} paced streams"),
            Box::new(|_, r| per_s(&r.many, true)),
            0,
            true,
        ),
        (
            format!("proxy CPU per chunk, {conc} paced (µs)"),
            Box::new(|_, r| cpu_per_chunk_us(&r.many, false).filter(|v| *v > 0.0)),
            2,
            true,
        ),
        (
            format!("proxy CPU busy, {conc} paced (% of a core)"),
            Box::new(|_, r| busy(&r.many, false).filter(|v| *v > 0.0)),
            0,
            true,
        ),
        (
            format!("CPU 1 busy besides the proxy, {conc} paced (%)"),
            Box::new(move |_, r| intruders(&r.many)),
            0,
            false,
        ),
        (
            format!("redis-server CPU per chunk, {conc} paced (µs)"),
            Box::new(move |a, r| redis_cpu(a, &r.many, true)),
            2,
            false,
        ),
        (
            format!("redis-server CPU busy, {conc} paced (% of a core)"),
            Box::new(move |a, r| redis_cpu(a, &r.many, false)),
            0,
            false,
        ),
        (
            format!("chunks/s relayed, saturation ({sat_conc} unpaced)"),
            Box::new(|_, r| per_s(&r.sat, true)),
            0,
            true,
        ),
        (
            "proxy CPU per chunk, saturation (µs)".into(),
            Box::new(|_, r| cpu_per_chunk_us(&r.sat, false).filter(|v| *v > 0.0)),
            2,
            true,
        ),
        (
            "proxy CPU busy, saturation (% of a core)".into(),
            Box::new(|_, r| busy(&r.sat, false).filter(|v| *v > 0.0)),
            0,
            true,
        ),
        (
            "CPU 1 busy besides the proxy, saturation (%)".into(),
            Box::new(move |_, r| intruders(&r.sat)),
            0,
            false,
        ),
        (
            "redis-server CPU per chunk, saturation (µs)".into(),
            Box::new(move |a, r| redis_cpu(a, &r.sat, true)),
            2,
            false,
        ),
        (
            "redis-server CPU busy, saturation (% of a core)".into(),
            Box::new(move |a, r| redis_cpu(a, &r.sat, false)),
            0,
            false,
        ),
        (
            "mock CPU busy, saturation (% of a core)".into(),
            Box::new(|_, r| busy(&r.sat, true)),
            0,
            true,
        ),
        (
            "mock CPU per chunk, saturation (µs)".into(),
            Box::new(|_, r| cpu_per_chunk_us(&r.sat, true)),
            2,
            true,
        ),
        (
            "errors (all phases)".into(),
            Box::new(|_, r| {
                Some(
                    (r.one.as_ref().map_or(0, |s| s.errors)
                        + r.many.as_ref().map_or(0, |m| m.stats.errors)
                        + r.sat.as_ref().map_or(0, |m| m.stats.errors)) as f64,
                )
            }),
            0,
            false,
        ),
    ];
    for &n in mem_streams {
        rows.push((
            format!("open streams held (of {n})"),
            Box::new(move |_, r| mem_for(r, n).map(|m| m.open as f64)),
            0,
            false,
        ));
        rows.push((
            format!("KiB resident per open stream @{n}"),
            Box::new(move |_, r| mem_for(r, n).and_then(MemResult::kib_per_stream)),
            1,
            true,
        ));
        rows.push((
            format!("proxy RSS with {n} open (MiB)"),
            Box::new(move |_, r| mem_for(r, n).map(|m| m.loaded_kib as f64 / 1024.0)),
            1,
            false,
        ));
    }

    // (arm, against, header): the ratio columns.
    let ratios = [
        (Arm::Tollgate, Arm::Direct, "tg÷direct"),
        (Arm::Tollgate, Arm::Nginx, "tg÷nginx"),
        (Arm::TollgateRedis, Arm::Direct, "tgR÷direct"),
        (Arm::TollgateRedis, Arm::Nginx, "tgR÷nginx"),
        (Arm::TollgateRedis, Arm::Tollgate, "tgR÷tg"),
    ];
    println!();
    println!("tg = tollgate (in-memory state), tgR = tollgate-redis (TOLLGATE_REDIS_URL)");
    let mut header = format!("{:<50}", "figure");
    for (arm, _) in reports {
        header.push_str(&format!("{:>15}", arm.name()));
    }
    for (_, _, name) in ratios {
        header.push_str(&format!("{name:>12}"));
    }
    println!("{header}");
    println!("{}", "-".repeat(header.chars().count()));
    for (label, f, digits, ratio) in &rows {
        let mut line = format!("{label:<50}");
        let mut values = Vec::new();
        for (arm, r) in reports {
            let v = f(*arm, r);
            values.push((*arm, v));
            line.push_str(&format!("{:>15}", fmt(v, *digits)));
        }
        let value = |arm: Arm| values.iter().find(|(a, _)| *a == arm).and_then(|(_, v)| *v);
        // Ratios of added TTFT against another proxy's added TTFT are meaningful; against
        // direct (added = 0 by definition) not, nor when either is negative (noise).
        let is_added = label.starts_with("added");
        for (arm, against, _) in ratios {
            let wanted = if against == Arm::Direct {
                *ratio && !is_added
            } else {
                *ratio || is_added
            };
            let r = value(arm)
                .zip(value(against))
                .filter(|(v, o)| wanted && *v >= 0.0 && *o > 1e-9)
                .map(|(a, o)| a / o);
            line.push_str(&format!("{:>12}", fmt(r, 2)));
        }
        println!("{line}");
    }
    println!();
    println!("targets (issue 7; reported, not asserted):");
    let ng = get(Arm::Nginx);
    for arm in [Arm::Tollgate, Arm::TollgateRedis] {
        let Some(tg) = get(arm) else { continue };
        println!("  {}:", arm.name());
        let paired99 = exact_percentile(&tg.one_added_ms, 99.0);
        println!(
            "    added TTFT p99, 1 stream ≤ 0.4 ms: {} ms (paired)",
            fmt(paired99, 3)
        );
        let many99 = minus(ql(&tg.many, 99.0, false), d_many(99.0));
        println!(
            "    added TTFT p99, {conc} streams ≤ 2 ms: {} ms (Δ of p99s)",
            fmt(many99, 3)
        );
        let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a / b);
        let sat_ratio = ratio(per_s(&tg.sat, true), ng.and_then(|n| per_s(&n.sat, true)));
        let paced_ratio = ratio(per_s(&tg.many, true), ng.and_then(|n| per_s(&n.many, true)));
        println!(
            "    chunks/s ≥ 0.8 × nginx: {} × at saturation, {} × with {conc} paced streams",
            fmt(sat_ratio, 2),
            fmt(paced_ratio, 2)
        );
        for m in &tg.mem {
            println!(
                "    ≤ 48 KiB per open stream: {} KiB at {} open",
                fmt(m.kib_per_stream(), 1),
                m.open
            );
        }
    }
}
