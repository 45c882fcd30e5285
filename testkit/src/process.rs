//! Running the compiled `tollgate` binary from tests and benchmarks: start it, wait for the log
//! line that says it serves, keep draining its stderr, and kill it when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process, killed and waited for on drop however the caller ends.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `command` with stderr piped and waits (up to 30 s) for the JSON log line whose
/// `message` is `ready`; returns the process and that line's `listen` address. Stderr is drained
/// for the child's whole life (a closed pipe would fail its writes). With `echo` set, error lines
/// and non-JSON lines seen before `ready` are printed with that prefix.
pub fn start(command: Command, ready: &str, echo: Option<&str>) -> (Running, String) {
    let (running, listen, _log) = start_reading_log(command, ready, echo);
    (running, listen)
}

/// [`start`], and the child's later stderr lines (its JSON log), for tests that read them.
pub fn start_reading_log(
    mut command: Command,
    ready: &str,
    echo: Option<&str>,
) -> (Running, String, std::sync::mpsc::Receiver<String>) {
    command.stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn tollgate");
    let stderr = child.stderr.take().expect("stderr");
    let running = Running(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            // Once nobody listens, keep draining so the child never blocks on stderr.
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if v["message"] == ready {
            let listen = v["listen"].as_str().expect("listen").to_string();
            return (running, listen, rx);
        }
        if let Some(prefix) = echo {
            if v["level"] == "ERROR" || !line.starts_with('{') {
                eprintln!("  [{prefix}] {line}");
            }
        }
    }
    panic!("the process never logged {ready:?}");
}
