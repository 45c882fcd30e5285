//! What a run is given: the env knobs, the executables on `PATH`, and where each process runs
//! (the proxy under test on its own CPU when pinning).

use std::path::PathBuf;
use std::process::Command;

pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
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

/// CPU placement: `Some((driver_and_mock_cpu, proxy_cpu))` when pinning.
#[derive(Clone, Copy)]
pub struct Pinning {
    pub taskset: Option<&'static str>,
}

impl Pinning {
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
}

pub const DRIVER_CPU: u32 = 0;
pub const PROXY_CPU: u32 = 1;
