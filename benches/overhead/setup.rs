//! What a run is given: the env knobs, the machine it runs on, and where each process runs (the
//! proxy under test on its own CPU when pinning).

use crate::measure::{clk_tck, nofile_soft_limit};
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The arms run when `ARMS` is not set.
const DEFAULT_ARMS: &str = "direct,nginx,floor,tollgate,tollgate-anthropic,tollgate-redis";

/// The env knobs (listed at the top of `main.rs`), with their defaults.
pub struct Knobs {
    /// Phase 1: streams per arm.
    pub one_streams: usize,
    /// Phase 2: open paced streams.
    pub conc: usize,
    /// Phases 2 and 3: rounds × arms.
    pub rounds: usize,
    pub window_secs: f64,
    /// Phase 3: open unpaced streams.
    pub sat_conc: usize,
    pub sat_window_secs: f64,
    /// Phase 4: the numbers of streams held open.
    pub mem_streams: Vec<usize>,
    /// The arms wanted, comma-separated.
    pub arms: String,
    /// `PIN` is not `0`.
    pub pin: bool,
    /// The nginx binary: a name on `PATH` or a path.
    pub nginx: String,
    /// The phases to run (`PHASES`, e.g. "1,4"; default all four).
    pub phases: Vec<u8>,
    /// Phase 4: streams opening at once (`BURST`; default 1,000).
    pub burst: usize,
}

impl Knobs {
    pub fn from_env() -> Self {
        Self {
            one_streams: env_or("ONE_STREAMS", 300),
            conc: env_or("CONC", 1000),
            rounds: env_or("ROUNDS", 2).max(1),
            window_secs: env_or("WINDOW_SECS", 10.0),
            sat_conc: env_or("SAT_CONC", 50),
            sat_window_secs: env_or("SAT_WINDOW_SECS", 6.0),
            mem_streams: std::env::var("MEM_STREAMS")
                .unwrap_or_else(|_| "1000,10000".into())
                .split(',')
                .filter_map(|v| v.trim().parse().ok())
                .collect(),
            arms: std::env::var("ARMS").unwrap_or_else(|_| DEFAULT_ARMS.into()),
            pin: std::env::var("PIN").map_or(true, |v| v != "0"),
            nginx: std::env::var("NGINX").unwrap_or_else(|_| "nginx".into()),
            phases: std::env::var("PHASES")
                .unwrap_or_else(|_| "1,2,3,4".into())
                .split(',')
                .filter_map(|v| v.trim().parse().ok())
                .collect(),
            burst: env_or("BURST", 1000),
        }
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// The machine, as the report's first line describes it.
pub struct Machine {
    pub nproc: usize,
    cpu_model: String,
    /// Clock ticks per second (CPU times in `/proc` count in them).
    pub tck: f64,
    /// This process's open-file limit (soft).
    pub nofile: u64,
}

impl Machine {
    pub fn read() -> Self {
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
        Self {
            nproc,
            cpu_model,
            tck: clk_tck(),
            nofile: nofile_soft_limit(),
        }
    }

    /// The report's title, the machine and the CPU placement.
    pub fn print_header(&self, pin: Pinning) {
        let Self {
            nproc,
            cpu_model,
            tck,
            nofile,
        } = self;
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
    }
}

pub fn find_in_path(name: &str) -> Option<PathBuf> {
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

/// The CPU of the mock, redis-server and this driver when pinning.
pub const DRIVER_CPU: u32 = 0;
/// The CPU of the proxy under test when pinning.
pub const PROXY_CPU: u32 = 1;

/// CPU placement: the `taskset` to run processes through when pinning.
#[derive(Clone, Copy)]
pub struct Pinning {
    pub taskset: Option<&'static str>,
}

impl Pinning {
    /// Pins when `wanted` (`PIN`), `taskset` exists and there are two CPUs or more.
    pub fn choose(wanted: bool, nproc: usize) -> Self {
        let taskset = find_in_path("taskset").and_then(|p| p.to_str().map(str::to_string));
        Self {
            taskset: match taskset {
                Some(t) if wanted && nproc >= 2 => Some(Box::leak(t.into_boxed_str())),
                _ => None,
            },
        }
    }

    /// A command that runs `program` on `cpu` (through `taskset -c`, which execs: same pid).
    pub fn command(&self, cpu: u32, program: &str) -> Command {
        match self.taskset {
            Some(taskset) => {
                let mut c = Command::new(taskset);
                c.args(["-c", &cpu.to_string(), program]);
                c
            }
            None => Command::new(program),
        }
    }

    /// Moves the running process `pid` (`what`, all its threads) to `DRIVER_CPU` when pinning.
    pub fn move_to_driver_cpu(&self, pid: u32, what: &str) {
        if let Some(taskset) = self.taskset {
            let pinned = Command::new(taskset)
                .args(["-a", "-p", "-c", &DRIVER_CPU.to_string(), &pid.to_string()])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            assert!(pinned, "taskset could not pin {what}");
        }
    }
}
