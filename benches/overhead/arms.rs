//! The arms and the processes behind them: the mock provider (the direct arm), nginx, tollgate
//! in memory and tollgate in Redis mode; one token per simulated user; which arms can run here;
//! and the start of each proxy, for phases 1–3 together and fresh for each memory measurement.

use crate::process::{self, Running};
use crate::redis_side::RedisSide;
use crate::setup::{Pinning, DRIVER_CPU, PROXY_CPU};
use crate::{PACED_TOKENS, PACED_TPS};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The tollgate binary built with this bench (the mock provider and the tokens always use it).
const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

/// The gateway under test: this build, or the one `TOLLGATE_BIN` names (e.g. the previous
/// commit's, to compare two builds against the same mock and nginx).
fn gateway_bin() -> String {
    std::env::var("TOLLGATE_BIN").unwrap_or_else(|_| BIN.to_string())
}
const TEMPLATE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/load/nginx.conf.template");
const SECRET: &str = "overhead-bench-secret";
const USERS: usize = 100;

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
    program: &str,
    pin: Pinning,
    cpu: u32,
    args: &[&str],
    env: &[(&str, String)],
    ready: &str,
) -> (Running, SocketAddr) {
    let mut command = pin.command(cpu, program);
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

/// The mock provider, paced by default (`PACED_TOKENS` at `PACED_TPS`); the direct arm.
pub fn start_mock(pin: Pinning) -> (Running, SocketAddr) {
    spawn_tollgate(
        BIN,
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
        // `/metrics` on the (loopback) main listener, where the Redis arm reads it.
        ("TOLLGATE__SERVER__METRICS_LISTEN", String::new()),
        // The memory phase holds 10,000 streams open (the default connection cap).
        ("TOLLGATE__SERVER__MAX_CONNECTIONS", "1000000".into()),
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
    spawn_tollgate(
        &gateway_bin(),
        pin,
        PROXY_CPU,
        &[],
        &env,
        "tollgate is serving",
    )
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

/// One `tollgate token` per simulated user (plan `pro`, valid for an hour).
pub fn mint_tokens() -> Vec<String> {
    (0..USERS)
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
        .collect()
}

/// The arms in `wanted` (comma-separated names) that can run here, in the fixed order, with a
/// line for each one skipped; starts the Redis arm's redis-server.
pub fn choose_arms(wanted: &str, have_nginx: bool, pin: Pinning) -> (Vec<Arm>, Option<RedisSide>) {
    let mut arms = Vec::new();
    let mut redis_side = None;
    for arm in [Arm::Direct, Arm::Nginx, Arm::Tollgate, Arm::TollgateRedis] {
        if !wanted.split(',').any(|a| a.trim() == arm.name()) {
            continue;
        }
        if arm == Arm::Nginx && !have_nginx {
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
    (arms, redis_side)
}

/// Starts the proxies under test, all in front of the one mock.
pub struct Launcher {
    pin: Pinning,
    pub mock: SocketAddr,
    nginx_bin: Option<String>,
    /// nginx's open-file limit.
    nginx_nofile: u64,
    /// One directory per nginx started (its config and logs).
    tmp: tempfile::TempDir,
}

impl Launcher {
    pub fn new(pin: Pinning, mock: SocketAddr, nginx_bin: Option<String>, nofile: u64) -> Self {
        Self {
            pin,
            mock,
            nginx_bin,
            // Open files: the driver holds N client sockets, a proxy N + N upstream, the mock N.
            nginx_nofile: nofile.clamp(4096, 1_048_576),
            tmp: tempfile::Builder::new()
                .prefix("tollgate-overhead.")
                .tempdir()
                .expect("temp dir"),
        }
    }

    /// nginx with its config in a fresh directory `dir_name` of the temp dir.
    fn nginx(&self, dir_name: &str) -> (Running, SocketAddr) {
        let dir = self.tmp.path().join(dir_name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let bin = self.nginx_bin.as_deref().expect("nginx");
        start_nginx(self.pin, bin, &dir, self.mock, self.nginx_nofile)
    }

    /// The gateway; with `redis`, the Redis arm's gateway: the same env plus
    /// TOLLGATE_REDIS_URL and a 1 s call timeout.
    fn gateway(&self, redis: Option<&RedisSide>) -> (Running, SocketAddr) {
        start_gateway(
            self.pin,
            self.mock,
            redis.map(|side| side.server.url()).as_deref(),
        )
    }

    /// The proxies of `arms`, which run through phases 1–3.
    pub fn start_all(&self, arms: &[Arm], redis_side: Option<&RedisSide>) -> Proxies {
        let gateway = arms.contains(&Arm::Tollgate).then(|| self.gateway(None));
        let redis_gateway = redis_side.map(|side| self.gateway(Some(side)));
        let nginx = (self.nginx_bin.is_some() && arms.contains(&Arm::Nginx))
            .then(|| self.nginx("nginx-load"));
        Proxies {
            nginx,
            gateway,
            redis_gateway,
        }
    }

    /// A fresh proxy for `arm` (none for the direct arm) before holding `n` streams open
    /// through it; the Redis arm's gateway on an emptied Redis (the last one's leases and
    /// windows gone).
    pub fn start_fresh(
        &self,
        arm: Arm,
        n: usize,
        redis_side: Option<&RedisSide>,
    ) -> Option<(Running, SocketAddr)> {
        match arm {
            Arm::Direct => None,
            Arm::Nginx => Some(self.nginx(&format!("nginx-mem-{n}"))),
            Arm::Tollgate => Some(self.gateway(None)),
            Arm::TollgateRedis => {
                let side = redis_side.expect("redis arm without redis-server");
                side.server.cli(&["FLUSHALL"]);
                Some(self.gateway(Some(side)))
            }
        }
    }
}

/// The proxies of phases 1–3.
pub struct Proxies {
    nginx: Option<(Running, SocketAddr)>,
    gateway: Option<(Running, SocketAddr)>,
    redis_gateway: Option<(Running, SocketAddr)>,
}

impl Proxies {
    /// One target per arm, in the order of `arms`.
    pub fn targets(&self, arms: &[Arm], mock: SocketAddr, redis_pid: Option<u32>) -> Vec<Target> {
        let proxy = |running: &Option<(Running, SocketAddr)>, what: &str| {
            let (process, addr) = running.as_ref().expect(what);
            (*addr, Some(process.pid()))
        };
        arms.iter()
            .map(|&arm| {
                let ((addr, pid), redis_pid) = match arm {
                    Arm::Direct => ((mock, None), None),
                    Arm::Nginx => (proxy(&self.nginx, "nginx"), None),
                    Arm::Tollgate => (proxy(&self.gateway, "gateway"), None),
                    Arm::TollgateRedis => (proxy(&self.redis_gateway, "redis gateway"), redis_pid),
                };
                Target {
                    arm,
                    addr,
                    pid,
                    redis_pid,
                }
            })
            .collect()
    }

    /// Stops nginx, then the gateway, then the Redis arm's gateway.
    pub fn stop(self) {
        let Self {
            nginx,
            gateway,
            redis_gateway,
        } = self;
        drop(nginx);
        drop(gateway);
        drop(redis_gateway);
    }
}
