//! A real `redis-server` for tests. Each [`RedisServer`] is its own process on a free loopback
//! port, with its own temporary directory and persistence on (append-only file, fsync on every
//! write, no RDB snapshots), so a test can stop, kill, restart or pause it and watch what a real
//! Redis outage does. It needs `redis-server` and `redis-cli` on `PATH` (Debian package
//! `redis-server`, which `.ci/run` installs).
//!
//! Every wait here is bounded and panics with the tail of the server's own log
//! (`redis.log` in the temporary directory); dropping a `RedisServer` kills and reaps the process,
//! so no test leaves a server behind however it ends. This module knows nothing of tollgate, so
//! the `tollgate` crate's unit tests use it too. Its self-tests are `tests/redis_harness.rs`.
//!
//! A Redis Cluster made of such servers is in [`redis_cluster`](crate::redis_cluster); tests
//! that run against either take a [`SharedRedis`].

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How long the server may take to answer PING after a start, or to exit after a stop.
const READY_WITHIN: Duration = Duration::from_secs(10);
/// How long one `redis-cli` call may take before it is killed (a paused server never answers).
const CLI_WITHIN: Duration = Duration::from_secs(10);
/// Fresh ports tried by [`RedisServer::start`] when another process takes the chosen one first.
const PORT_ATTEMPTS: usize = 5;
/// Lines of the server's log quoted in a panic message.
const LOG_TAIL_LINES: usize = 40;

/// What a test needs of the Redis tollgate shares state in, one server or a cluster.
pub trait SharedRedis {
    /// The value of `TOLLGATE_REDIS_URL` (a cluster: every node's URL, comma-separated).
    fn url(&self) -> String;
    /// Runs one `redis-cli` command (a cluster: on the node that serves its key) and returns
    /// its stdout, trimmed; panics on an error reply.
    fn cli(&self, args: &[&str]) -> String;
    /// The keys matching `pattern`, on every master.
    fn keys(&self, pattern: &str) -> Vec<String>;
    /// `INFO commandstats` calls per command, summed over every master.
    fn command_calls(&self) -> std::collections::BTreeMap<String, u64>;
}

impl SharedRedis for RedisServer {
    fn url(&self) -> String {
        RedisServer::url(self)
    }

    fn cli(&self, args: &[&str]) -> String {
        RedisServer::cli(self, args)
    }

    fn keys(&self, pattern: &str) -> Vec<String> {
        let keys = self.cli(&["--scan", "--pattern", pattern]);
        keys.lines().map(String::from).collect()
    }

    fn command_calls(&self) -> std::collections::BTreeMap<String, u64> {
        RedisServer::command_calls(self)
    }
}

/// One `redis-server` process on 127.0.0.1, persisting to its own temporary directory.
pub struct RedisServer {
    port: u16,
    /// Arguments beyond the defaults (a cluster node's), kept for a restart.
    extra_args: Vec<String>,
    /// Holds the append-only file and `redis.log`; removed on drop, after the process is gone.
    dir: tempfile::TempDir,
    /// `None` once the process has been stopped or killed and reaped.
    child: Mutex<Option<Child>>,
}

/// Why one launch did not produce a ready server.
enum LaunchError {
    /// Another process bound the port first (only worth retrying with a fresh port).
    PortTaken,
}

impl RedisServer {
    /// Starts `redis-server` on a free loopback port in its own temporary directory, with
    /// persistence on (`appendonly yes`, `appendfsync always`, `save ""`), and waits until it
    /// answers PING (at most 10 s; panics with the server's log if it does not).
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// As [`start`](Self::start), with more `redis-server` arguments (they come after the
    /// defaults, so they may override them). A restart keeps them.
    pub fn start_with(extra_args: &[&str]) -> Self {
        let extra_args: Vec<String> = extra_args.iter().map(|a| a.to_string()).collect();
        let dir = tempfile::Builder::new()
            .prefix("tollgate-redis-")
            .tempdir()
            .expect("create a temporary directory for redis-server");
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            match launch(port, dir.path(), &extra_args) {
                Ok(child) => {
                    return RedisServer {
                        port,
                        extra_args,
                        dir,
                        child: Mutex::new(Some(child)),
                    }
                }
                Err(LaunchError::PortTaken) => continue,
            }
        }
        panic!(
            "redis-server found no free port in {PORT_ATTEMPTS} attempts; its log:\n{}",
            log_tail(dir.path())
        );
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The temporary directory that holds the append-only file and `redis.log`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the server gracefully (SIGTERM, then SIGCONT in case it is paused) and waits for it
    /// to exit; Redis fsyncs the append-only file on the way out, so the data stays on disk for
    /// [`restart`](Self::restart). Does nothing if the server is not running.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child_mut().take() else {
            return;
        };
        let pid = child.id();
        signal(pid, "TERM");
        signal(pid, "CONT");
        match wait_within(&mut child, READY_WITHIN) {
            Some(status) if status.success() => {}
            Some(status) => panic!(
                "redis-server exited with {status} on SIGTERM; its log:\n{}",
                self.log_tail()
            ),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "redis-server did not exit within {READY_WITHIN:?} of SIGTERM; its log:\n{}",
                    self.log_tail()
                );
            }
        }
    }

    /// Kills the server outright (SIGKILL, as a crash or an OOM kill would) and waits for it.
    /// Writes it acknowledged are on disk already (`appendfsync always`). Does nothing if the
    /// server is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child_mut().take() {
            let _ = child.kill();
            child.wait().expect("wait for the killed redis-server");
        }
    }

    /// Starts the server again on the same port and directory, so it reloads its data from the
    /// append-only file, and waits until it answers PING. Panics if it is still running (call
    /// [`stop`](Self::stop) or [`kill`](Self::kill) first, whichever the test means).
    pub fn restart(&mut self) {
        assert!(
            !self.is_running(),
            "restart of a redis-server that is still running: stop() or kill() it first"
        );
        match launch(self.port, self.dir.path(), &self.extra_args) {
            Ok(child) => *self.child_mut() = Some(child),
            Err(LaunchError::PortTaken) => panic!(
                "redis-server could not restart: another process took port {}; its log:\n{}",
                self.port,
                self.log_tail()
            ),
        }
    }

    /// Freezes the server process (SIGSTOP): connections are still accepted by the kernel, but
    /// nothing is answered until [`resume`](Self::resume). A hung Redis, as a test sees it.
    pub fn pause(&self) {
        signal(self.pid(), "STOP");
    }

    /// Lets a paused server run again (SIGCONT); it then answers what was sent meanwhile.
    pub fn resume(&self) {
        signal(self.pid(), "CONT");
    }

    /// `INFO commandstats` as command → calls so far (commands run inside scripts included).
    pub fn command_calls(&self) -> std::collections::BTreeMap<String, u64> {
        self.cli(&["INFO", "commandstats"])
            .lines()
            .filter_map(|l| {
                let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
                let calls = rest.split(',').next()?.strip_prefix("calls=")?;
                Some((name.to_string(), calls.parse().ok()?))
            })
            .collect()
    }

    /// Runs `redis-cli -h 127.0.0.1 -p PORT -e --raw <args>` and returns its stdout, trimmed.
    /// Panics, quoting stdout and stderr, if the command fails or Redis answers with an error
    /// (`-e`), and kills `redis-cli` after 10 s (never call it on a paused server).
    pub fn cli(&self, args: &[&str]) -> String {
        cli_on(self.port, &[], args)
    }

    /// As [`cli`](Self::cli) in cluster mode (`redis-cli -c`): a keyed command follows the
    /// cluster's redirections to the node that serves its key.
    pub fn cli_following_redirects(&self, args: &[&str]) -> String {
        cli_on(self.port, &["-c"], args)
    }

    /// Whether the server process exists (a paused one counts as running).
    pub fn is_running(&self) -> bool {
        let mut child = self.lock_child();
        match child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                // It exited on its own (and is reaped now): forget it.
                *child = None;
                false
            }
            None => false,
        }
    }

    fn pid(&self) -> u32 {
        self.lock_child()
            .as_ref()
            .map(Child::id)
            .expect("the redis-server is not running")
    }

    fn child_mut(&mut self) -> &mut Option<Child> {
        self.child.get_mut().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn log_tail(&self) -> String {
        log_tail(self.dir.path())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Some(mut child) = child.take() {
            // SIGKILL ends a paused process too.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `redis-cli -h 127.0.0.1 -p PORT -e --raw <flags> <args>` (see [`RedisServer::cli`]).
fn cli_on(port: u16, flags: &[&str], args: &[&str]) -> String {
    let port = port.to_string();
    let child = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port, "-e", "--raw"])
        .args(flags)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("spawn redis-cli ({e}); install the Debian package redis-server")
        });
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output: Output = match rx.recv_timeout(CLI_WITHIN) {
        Ok(output) => output.expect("wait for redis-cli"),
        Err(_) => {
            // Still unreaped, so the pid is still redis-cli's; the thread reaps it.
            signal(pid, "KILL");
            let _ = rx.recv();
            panic!("redis-cli {args:?} got no answer within {CLI_WITHIN:?} (a paused server?)");
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "redis-cli {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        stdout.trim(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    stdout.trim().to_string()
}

/// A port that was free a moment ago: the kernel picks it for a throwaway listener.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("bind a throwaway listener on 127.0.0.1:0")
        .port()
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join("redis.log")
}

/// Spawns `redis-server` on `port` with its data and log in `dir`, and waits until it answers
/// PING. Panics (after killing it) on anything but a lost race for the port.
fn launch(port: u16, dir: &Path, extra_args: &[String]) -> Result<Child, LaunchError> {
    let log = log_path(dir);
    // Redis appends its own log there; its stdout and stderr (start-up errors from before it
    // opens the log) go to the same file.
    let out = File::options()
        .create(true)
        .append(true)
        .open(&log)
        .expect("open redis.log");
    let log_start = out.metadata().map(|m| m.len()).unwrap_or(0);
    let port_arg = port.to_string();
    let log_arg = log.to_str().expect("a UTF-8 temporary directory");
    let dir_arg = dir.to_str().expect("a UTF-8 temporary directory");
    let mut child = Command::new("redis-server")
        .args(["--port", &port_arg, "--bind", "127.0.0.1", "--dir", dir_arg])
        .args(["--logfile", log_arg, "--daemonize", "no"])
        .args(["--appendonly", "yes"])
        .args(["--appendfsync", "always"])
        .args(["--save", ""])
        .args(extra_args)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("clone the redis.log handle"))
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("spawn redis-server ({e}); install the Debian package redis-server")
        });
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        if let Some(status) = child.try_wait().expect("poll redis-server") {
            let log_now = read_log_from(dir, log_start);
            if log_now.contains("Address already in use") {
                return Err(LaunchError::PortTaken);
            }
            panic!(
                "redis-server exited with {status} while starting on port {port}; its log:\n{}",
                log_tail(dir)
            );
        }
        // Ours is ready once a PING gets +PONG (not -LOADING) from a server with our pid: a
        // process that won the race for the port might answer too.
        if answering_pid(port).is_some_and(|pid| pid == child.id()) {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "redis-server did not answer PING on port {port} within {READY_WITHIN:?}; \
                 its log:\n{}",
                log_tail(dir)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The `process_id` of the Redis on `port` if it answers PING with +PONG right now.
fn answering_pid(port: u16) -> Option<u32> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    let mut reader = BufReader::new(stream);
    reader
        .get_mut()
        .write_all(b"*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")
        .ok()?;
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    if line != "+PONG\r\n" {
        return None;
    }
    line.clear();
    reader.read_line(&mut line).ok()?;
    let len: usize = line.strip_prefix('$')?.trim_end().parse().ok()?;
    let mut info = vec![0; len];
    reader.read_exact(&mut info).ok()?;
    String::from_utf8_lossy(&info)
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))?
        .trim()
        .parse()
        .ok()
}

/// Polls `child` until it exits or `within` has passed.
fn wait_within(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("poll redis-server") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends SIG`name` to `pid` with kill(1), as tollgate's tests/cli.rs does (no libc here).
fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid}: {status}");
}

/// What the log gained since byte `from` (this launch's part).
fn read_log_from(dir: &Path, from: u64) -> String {
    let log = std::fs::read(log_path(dir)).unwrap_or_default();
    let from = usize::try_from(from).unwrap_or(usize::MAX).min(log.len());
    String::from_utf8_lossy(&log[from..]).into_owned()
}

/// The last lines of the server's log, for panic messages.
fn log_tail(dir: &Path) -> String {
    let log = read_log_from(dir, 0);
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}
