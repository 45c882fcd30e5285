//! The arms and the proxies behind them: nginx, the stack's floor (`floor.rs`) and the gateway
//! in each configuration (`tollgate.rs` starts those), the model each arm asks for, which arms can run here, and the
//! start of each proxy, for phases 1–3 together and fresh for each memory measurement.

use crate::floor::start_floor;
use crate::process::Running;
use crate::redis_side::RedisSide;
use crate::setup::{Pinning, PROXY_CPU};
use crate::tollgate::{start_gateway, Gateway, ANTHROPIC_MODEL};
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

const TEMPLATE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/load/nginx.conf.template");

/// The pid of a running proxy (for its CPU and memory).
pub trait Pid {
    fn pid(&self) -> u32;
}

impl Pid for Running {
    fn pid(&self) -> u32 {
        self.0.id()
    }
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
    /// The stack's floor: a bare actix-web + awc proxy (`floor.rs`).
    Floor,
    Tollgate,
    /// The same gateway in Redis mode (`TOLLGATE_REDIS_URL`).
    TollgateRedis,
    /// The same gateway relaying [`ANTHROPIC_MODEL`] from the mock's Messages API
    /// (`format = "anthropic"`): every event translated into an OpenAI chunk.
    TollgateAnthropic,
}

impl Arm {
    /// Every arm, in the order of the table.
    pub const ALL: [Arm; 6] = [
        Arm::Direct,
        Arm::Nginx,
        Arm::Floor,
        Arm::Tollgate,
        Arm::TollgateAnthropic,
        Arm::TollgateRedis,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Arm::Direct => "direct",
            Arm::Nginx => "nginx",
            Arm::Floor => "floor",
            Arm::Tollgate => "tollgate",
            Arm::TollgateRedis => "tollgate-redis",
            Arm::TollgateAnthropic => "tollgate-anthropic",
        }
    }

    /// The model its requests name (the mock's knobs follow it after a `:`).
    pub fn model(self) -> &'static str {
        match self {
            Arm::TollgateAnthropic => ANTHROPIC_MODEL,
            Arm::Direct | Arm::Nginx | Arm::Floor | Arm::Tollgate | Arm::TollgateRedis => {
                "mock-gpt"
            }
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

/// The arms in `wanted` (comma-separated names) that can run here, in the fixed order, with a
/// line for each one skipped; starts the Redis arm's redis-server.
pub fn choose_arms(wanted: &str, have_nginx: bool, pin: Pinning) -> (Vec<Arm>, Option<RedisSide>) {
    let mut arms = Vec::new();
    let mut redis_side = None;
    for arm in Arm::ALL {
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

    /// A proxy for `arm` (none for the direct arm); `tag` names nginx's directory.
    fn start(
        &self,
        arm: Arm,
        tag: &str,
        redis_side: Option<&RedisSide>,
    ) -> Option<(Running, SocketAddr)> {
        let gateway = |kind| start_gateway(self.pin, self.mock, kind);
        match arm {
            Arm::Direct => None,
            Arm::Nginx => Some(self.nginx(&format!("nginx-{tag}"))),
            Arm::Floor => Some(start_floor(self.pin, self.mock)),
            Arm::Tollgate => Some(gateway(Gateway::Memory)),
            Arm::TollgateRedis => {
                let side = redis_side.expect("redis arm without redis-server");
                Some(gateway(Gateway::Redis(&side.server.url())))
            }
            Arm::TollgateAnthropic => Some(gateway(Gateway::Anthropic)),
        }
    }

    /// The proxies of `arms`, which run through phases 1–3.
    pub fn start_all(&self, arms: &[Arm], redis_side: Option<&RedisSide>) -> Proxies {
        Proxies(
            arms.iter()
                .filter_map(|&arm| Some((arm, self.start(arm, "load", redis_side)?)))
                .collect(),
        )
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
        if arm == Arm::TollgateRedis {
            let side = redis_side.expect("redis arm without redis-server");
            side.server.cli(&["FLUSHALL"]);
        }
        self.start(arm, &format!("mem-{n}"), redis_side)
    }
}

/// The proxies of phases 1–3, one per arm but the direct one.
pub struct Proxies(Vec<(Arm, (Running, SocketAddr))>);

impl Proxies {
    /// One target per arm, in the order of `arms`.
    pub fn targets(&self, arms: &[Arm], mock: SocketAddr, redis_pid: Option<u32>) -> Vec<Target> {
        arms.iter()
            .map(|&arm| {
                let (addr, pid) = match self.0.iter().find(|(a, _)| *a == arm) {
                    Some((_, (process, addr))) => (*addr, Some(process.pid())),
                    None if arm == Arm::Direct => (mock, None),
                    None => panic!("no proxy for the {} arm", arm.name()),
                };
                Target {
                    arm,
                    addr,
                    pid,
                    redis_pid: redis_pid.filter(|_| arm == Arm::TollgateRedis),
                }
            })
            .collect()
    }

    /// Stops them, in the order they started.
    pub fn stop(self) {
        for proxy in self.0 {
            drop(proxy);
        }
    }
}
