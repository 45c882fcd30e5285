//! The arms and the processes behind them: the mock provider (the direct arm), nginx, and
//! tollgate (in memory, or in Redis mode for the Redis arm).

use crate::process::{self, Running};
use crate::setup::{Pinning, DRIVER_CPU, PROXY_CPU};
use crate::{PACED_TOKENS, PACED_TPS};
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_tollgate");
const TEMPLATE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/load/nginx.conf.template");
pub const SECRET: &str = "overhead-bench-secret";
pub const USERS: usize = 100;

/// The pid of a running proxy (for its CPU and memory).
pub trait Pid {
    fn pid(&self) -> u32;
}

impl Pid for Running {
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

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

pub fn start_mock(pin: Pinning) -> (Running, SocketAddr) {
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
pub fn start_gateway(
    pin: Pinning,
    mock: SocketAddr,
    redis_url: Option<&str>,
) -> (Running, SocketAddr) {
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
pub fn start_nginx(
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

/// The ways to the mock that are compared.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Arm {
    Direct,
    Nginx,
    Tollgate,
    /// The same gateway in Redis mode (`TOLLGATE_REDIS_URL`).
    TollgateRedis,
}

impl Arm {
    pub fn name(self) -> &'static str {
        match self {
            Arm::Direct => "direct",
            Arm::Nginx => "nginx",
            Arm::Tollgate => "tollgate",
            Arm::TollgateRedis => "tollgate-redis",
        }
    }
}

/// Where the driver sends an arm's streams, and whose CPU it charges to the arm.
pub struct Target {
    pub arm: Arm,
    pub addr: SocketAddr,
    /// The proxy process whose CPU is charged (none for the direct arm).
    pub pid: Option<u32>,
    /// redis-server, whose CPU is charged separately (the Redis arm only).
    pub redis_pid: Option<u32>,
}
