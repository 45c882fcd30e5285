//! Added time to first token: the gateway versus the mock provider directly.
//!
//! Starts the release `tollgate mock-provider` (20 tokens, no pacing, no first-token delay) and
//! a release `tollgate` in front of it, then opens streams one at a time, alternating direct and
//! through the gateway in one run. The direct arm sends the body the gateway sends upstream (the
//! usage option, and a fresh canary's system message when the mode has the canary on), so the
//! mock does the same work on both arms and "added" is the gateway's own. Time to first token is measured from the first byte of the
//! request written to the arrival of the first content delta, on a fresh loopback connection
//! for both arms. Prints p50/p90/p99 of both arms and of the difference, and each gateway's CPU
//! per stream (schedstat). Pinned when `taskset` exists and there are two CPUs or more: the
//! gateways on CPU 1, the mock and this driver on CPU 0 (`TTFT_PIN=0` leaves placement to the
//! scheduler, which moved one process's median by tens of microseconds against another's).
//!
//! Run: `cargo bench --bench ttft` (TTFT_STREAMS=N sets the number of streams per arm;
//! TTFT_GAP_US the pause before each stream, 500 µs by default, so no stream's tail lands in
//! the next one's first token;
//! TTFT_GUARDRAILS=off turns the default output checks, secrets and canary, off in the gateway,
//! `secrets` or `canary` keeps only that one; a comma-separated list such as `off,secrets,default`
//! runs two gateways per mode (started A B … B A) in the same run and prints each mode's paired
//! difference to the first; `compare` is `off,default`).

#![allow(clippy::expect_used, clippy::print_stdout)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");
const SECRET: &str = "bench-secret";

use tollgate::guardrails::new_canary;
use tollgate::policy::guardrails::canary_system_message;
use tollgate_testkit::process::{self, Running};

// The overhead bench's `/proc` readers and CPU pinning; this bench needs a few of them.
#[allow(dead_code)]
#[path = "overhead/measure.rs"]
mod measure;
#[allow(dead_code)]
#[path = "overhead/setup.rs"]
mod setup;

use setup::{Pinning, DRIVER_CPU, PROXY_CPU};

/// Spawns the binary and returns it with the address it logged as `listen`.
fn spawn(
    pin: Pinning,
    cpu: u32,
    args: &[&str],
    env: &[(&str, &str)],
    ready_message: &str,
) -> (Running, String) {
    let mut command = pin.command(cpu, BIN);
    command
        .args(args)
        .env_clear()
        .env("RUST_LOG", "info")
        .env("TOLLGATE__USERS__SNAPSHOT_PATH", "")
        .stdout(Stdio::null());
    for (k, v) in env {
        command.env(k, v);
    }
    process::start(command, ready_message, None)
}

/// What a client sends: the gateway adds the canary (when on) and the usage option upstream.
const CLIENT_BODY: &str = r#"{"model":"mock-gpt","stream":true,"max_tokens":20,"messages":[{"role":"user","content":"hello there"}]}"#;

/// What the gateway sends the provider for [`CLIENT_BODY`], with a fresh canary's system message
/// first when `canary`: the direct arm of a mode sends this, so the mock does the same work for
/// both arms and the difference is the gateway's own.
fn upstream_body(canary: bool) -> String {
    let system = if canary {
        let message = canary_system_message(&new_canary());
        format!(r#"{{"role":"system","content":"{message}"}},"#)
    } else {
        String::new()
    };
    format!(
        r#"{{"model":"mock-gpt","stream":true,"max_tokens":20,"messages":[{system}{{"role":"user","content":"hello there"}}],"stream_options":{{"include_usage":true}}}}"#
    )
}

/// One stream on a fresh connection; time until the first content token arrives.
fn time_to_first_token(addr: &str, path: &str, token: Option<&str>, body: &str) -> Duration {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut socket = TcpStream::connect(addr).expect("connect");
    socket.set_nodelay(true).expect("nodelay");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let started = Instant::now();
    socket.write_all(request.as_bytes()).expect("write");
    let mut seen = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let mut ttft = None;
    loop {
        let n = socket.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
        if ttft.is_none() && seen.windows(12).any(|w| w == b"\"content\":\" ") {
            ttft = Some(started.elapsed());
        }
    }
    assert!(
        seen.starts_with(b"HTTP/1.1 200") && seen.windows(6).any(|w| w == b"[DONE]"),
        "bad response: {}",
        String::from_utf8_lossy(&seen)
    );
    ttft.expect("no content token")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank]
}

fn summary(name: &str, mut values: Vec<f64>) {
    values.sort_by(f64::total_cmp);
    println!(
        "{name:<28} p50 {:>8.3} ms   p90 {:>8.3} ms   p99 {:>8.3} ms",
        percentile(&values, 50.0),
        percentile(&values, 90.0),
        percentile(&values, 99.0)
    );
}

fn main() {
    let streams: usize = std::env::var("TTFT_STREAMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    // Pinned (`TTFT_PIN=0` turns it off): every gateway on one CPU, the mock and this driver on
    // the other, so all gateways run where the others do; left to the scheduler, where a
    // process lands moved its median by tens of microseconds.
    let wanted = std::env::var("TTFT_PIN").map_or(true, |v| v != "0");
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let pin = Pinning::choose(wanted, cpus);
    pin.move_to_driver_cpu(std::process::id(), "the bench driver");
    println!(
        "pinned: {}",
        if pin.taskset.is_some() {
            "gateways on CPU 1, mock and driver on CPU 0"
        } else {
            "no"
        }
    );
    let (_mock, mock_addr) = spawn(
        pin,
        DRIVER_CPU,
        &[
            "mock-provider",
            "--listen",
            "127.0.0.1:0",
            "--tokens",
            "20",
            "--tokens-per-second",
            "0",
            "--first-token-delay-ms",
            "0",
        ],
        &[],
        "mock provider is serving",
    );
    let upstream = format!("http://{mock_addr}/v1");
    let mode = std::env::var("TTFT_GUARDRAILS").unwrap_or_default();
    // `compare` runs a gateway with the output checks off next to one with the defaults, in one
    // run, so their difference is measured side by side on the same machine state.
    let modes: Vec<&str> = match mode.as_str() {
        "compare" => vec!["off", "default"],
        "" => vec!["default"],
        _ => mode.split(',').collect(),
    };
    // With several modes each runs as two gateways, started in the order A B … B A, so neither
    // mode gains from where its process landed (the first one started measured slower).
    let order: Vec<usize> = if modes.len() > 1 {
        (0..modes.len()).chain((0..modes.len()).rev()).collect()
    } else {
        vec![0]
    };
    let gateways: Vec<(usize, Running, String)> = order
        .iter()
        .map(|&mode| {
            let (output_secrets, canary) = output_checks(modes[mode]);
            let (running, addr) = spawn_gateway(pin, &upstream, output_secrets, canary);
            (mode, running, addr)
        })
        .collect();
    let token = {
        let out = Command::new(BIN)
            .args(["token", "--sub", "bench", "--plan", "pro", "--ttl", "3600"])
            .env_clear()
            .env("TOLLGATE_JWT_SECRET", SECRET)
            .output()
            .expect("mint token");
        String::from_utf8(out.stdout)
            .expect("utf8")
            .trim()
            .to_string()
    };
    // One direct arm per upstream body the modes send: without and with a canary message.
    let canary_of = |name: &str| output_checks(name).1 == "true";
    let mut direct_kinds: Vec<bool> = modes.iter().map(|m| canary_of(m)).collect();
    direct_kinds.sort_unstable();
    direct_kinds.dedup();
    let direct_of = |name: &str| {
        direct_kinds
            .iter()
            .position(|&c| c == canary_of(name))
            .expect("every mode has its direct arm")
    };
    let path = "/v1/chat/completions";
    let run_arm = |arm: usize| -> Duration {
        match arm.checked_sub(direct_kinds.len()) {
            None => time_to_first_token(&mock_addr, path, None, &upstream_body(direct_kinds[arm])),
            Some(g) => time_to_first_token(&gateways[g].2, path, Some(&token), CLIENT_BODY),
        }
    };
    let arms = direct_kinds.len() + gateways.len();
    // A pause between streams: the previous stream's tail (the mock closing, the gateway's log
    // and metering) would otherwise land in the next arm's first token, and more in some arms
    // than others (a direct arm after a gateway's stream measured 0.18 ms slower at p50 than
    // one after a direct stream).
    let gap = Duration::from_micros(
        std::env::var("TTFT_GAP_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(500),
    );
    // Warm every path (tokenizer, connection pools, page cache).
    for _ in 0..20 {
        for arm in 0..arms {
            run_arm(arm);
        }
    }
    let cpu_before: Vec<u64> = gateways
        .iter()
        .map(|(_, running, _)| measure::cpu_ns(running.0.id()))
        .collect();
    // direct[k]: direct arm k; via[m]: mode m, one value per round (the mean of its gateways).
    let mut direct: Vec<Vec<f64>> = vec![Vec::with_capacity(streams); direct_kinds.len()];
    let mut via: Vec<Vec<f64>> = vec![Vec::with_capacity(streams); modes.len()];
    let per_mode = gateways.len() / modes.len();
    for i in 0..streams {
        let mut round_direct = vec![0.0; direct_kinds.len()];
        let mut round_via = vec![0.0; modes.len()];
        // Rotate the order each round so no arm always follows another.
        for k in 0..arms {
            let arm = (i + k) % arms;
            std::thread::sleep(gap);
            let ms = run_arm(arm).as_secs_f64() * 1e3;
            match arm.checked_sub(direct_kinds.len()) {
                None => round_direct[arm] = ms,
                Some(g) => round_via[gateways[g].0] += ms / per_mode as f64,
            }
        }
        for (samples, value) in direct.iter_mut().zip(round_direct) {
            samples.push(value);
        }
        for (samples, value) in via.iter_mut().zip(round_via) {
            samples.push(value);
        }
    }
    let mut cpu_per_mode = vec![0u64; modes.len()];
    for ((mode, running, _), before) in gateways.iter().zip(cpu_before) {
        cpu_per_mode[*mode] += measure::cpu_ns(running.0.id()).saturating_sub(before);
    }
    let streams_per_mode = (streams * per_mode) as f64;
    println!("time to first token, {streams} rounds, interleaved, one stream at a time");
    for (k, canary) in direct_kinds.iter().enumerate() {
        let name = if *canary {
            "direct, canary message"
        } else {
            "direct to mock"
        };
        summary(name, direct[k].clone());
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        percentile(&v, 50.0)
    };
    // What each mode adds over the mock asked directly with the same upstream body.
    let added: Vec<Vec<f64>> = modes
        .iter()
        .enumerate()
        .map(|(m, name)| paired(&via[m], &direct[direct_of(name)]))
        .collect();
    for (mode, name) in modes.iter().enumerate() {
        let (output_secrets, canary) = output_checks(name);
        let instances = if modes.len() > 1 {
            ", mean of 2 gateways"
        } else {
            ""
        };
        println!("tollgate {name} (secrets {output_secrets}, canary {canary}{instances})");
        summary("  through tollgate", via[mode].clone());
        summary("  added (paired difference)", added[mode].clone());
        println!(
            "  gateway CPU per stream: {:.1} us",
            cpu_per_mode[mode] as f64 / streams_per_mode / 1e3
        );
        println!(
            "  ratio of medians (tollgate / direct): {:.2}",
            median(via[mode].clone()) / median(direct[direct_of(name)].clone())
        );
    }
    for (mode, name) in modes.iter().enumerate().skip(1) {
        println!("{name} against {}:", modes[0]);
        summary("  through tollgate", paired(&via[mode], &via[0]));
        summary("  added by the gateway", paired(&added[mode], &added[0]));
    }
}

/// Output checks `(output_secrets, canary)` for a `TTFT_GUARDRAILS` mode; anything else is the
/// shipped default (secrets blocked, canary on).
fn output_checks(mode: &str) -> (&'static str, &'static str) {
    match mode {
        "off" => ("off", "false"),
        "secrets" => ("block", "false"),
        "canary" => ("off", "true"),
        _ => ("block", "true"),
    }
}

/// Per-round differences `a[i] - b[i]` of two arms measured in the same rounds.
fn paired(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x - y).collect()
}

/// A release gateway in front of `upstream` with the given output checks.
fn spawn_gateway(
    pin: Pinning,
    upstream: &str,
    output_secrets: &str,
    canary: &str,
) -> (Running, String) {
    spawn(
        pin,
        PROXY_CPU,
        &[],
        &[
            ("TOLLGATE_LISTEN", "127.0.0.1:0"),
            ("TOLLGATE__SERVER__METRICS_LISTEN", "127.0.0.1:0"),
            ("TOLLGATE_UPSTREAM_URL", upstream),
            ("TOLLGATE_JWT_SECRET", SECRET),
            // One user sends every stream: lift the per-user windows and caps.
            ("TOLLGATE__RATE__REQUESTS_PER_MINUTE", "100000000"),
            ("TOLLGATE__RATE__REQUESTS_PER_DAY", "100000000"),
            ("TOLLGATE__RATE__TOKENS_PER_DAY", "100000000000"),
            ("TOLLGATE__COST__MAX_DAILY_USD", "1000000"),
            ("TOLLGATE__COST__MAX_MONTHLY_USD", "1000000"),
            ("TOLLGATE__GUARDRAILS__OUTPUT_SECRETS", output_secrets),
            ("TOLLGATE__GUARDRAILS__CANARY", canary),
        ],
        "tollgate is serving",
    )
}
