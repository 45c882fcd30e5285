//! `promtool`, Prometheus' own checker, run on what tollgate exposes (`/metrics`) and ships
//! (`config/prometheus.yml`): the one runner, with the one policy for when it is missing.
//!
//! The policy: with the `CI` environment variable set (to anything), promtool is required and a
//! missing one fails the test, so a CI run cannot pass without the check (`.ci/run` installs it,
//! Debian package `prometheus`). Without `CI`, a promtool that is not installed skips the check
//! with a message on stderr. Any other failure (it cannot be started, or it rejects the input)
//! fails the test either way.

use std::io::{ErrorKind, Write};
use std::path::Path;
use std::process::{Command, Stdio};

/// The environment variable that makes promtool required (set by CI services).
const REQUIRED_WITH: &str = "CI";

/// Asserts that `promtool check metrics` accepts `exposition` (a `/metrics` body).
pub fn check_metrics(exposition: &str) {
    run(&["check", "metrics"], None, Some(exposition.as_bytes()));
}

/// Asserts that `promtool check config <file>` accepts the Prometheus config `file`, run in
/// `dir` (so the file's relative paths resolve there).
pub fn check_config(dir: &Path, file: &str) {
    run(&["check", "config", file], Some(dir), None);
}

/// Runs `promtool <args>` (in `dir`, with `stdin`) and asserts that it succeeds; skips or fails
/// as the module's policy says when promtool is not installed.
fn run(args: &[&str], dir: Option<&Path>, stdin: Option<&[u8]>) {
    let mut command = Command::new("promtool");
    command
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == ErrorKind::NotFound && std::env::var_os(REQUIRED_WITH).is_none() => {
            eprintln!(
                "promtool not available ({e}): skipping `promtool {}` outside CI \
                 (set {REQUIRED_WITH} to require it)",
                args.join(" ")
            );
            return;
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            panic!("promtool is required in CI ({REQUIRED_WITH} is set): {e}")
        }
        Err(e) => panic!("promtool {}: could not start it: {e}", args.join(" ")),
    };
    // Written from a thread, so a promtool that answers before reading everything cannot
    // deadlock against a full pipe.
    let writer = stdin.map(|input| {
        let mut pipe = child.stdin.take().expect("promtool's stdin");
        let input = input.to_vec();
        std::thread::spawn(move || pipe.write_all(&input))
    });
    let output = child.wait_with_output().expect("wait for promtool");
    let written = writer.map(|w| w.join().expect("the stdin writer"));
    // Its verdict first: a promtool that rejects the input may stop reading it (a broken pipe).
    assert!(
        output.status.success(),
        "promtool {} failed ({}):\n{}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if let Some(written) = written {
        written.expect("write promtool's stdin");
    }
}
