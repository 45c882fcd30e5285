//! Added time to first token: the gateway versus the mock provider directly.
//!
//! Starts the release `tollgate mock-provider` (20 tokens, no pacing, no first-token delay) and
//! a release `tollgate` in front of it, then opens streams one at a time, alternating direct and
//! through the gateway in one run. Time to first token is measured from the first byte of the
//! request written to the arrival of the first content delta, on a fresh loopback connection
//! for both arms. Prints p50/p90/p99 of both arms and of the difference.
//!
//! Run: `cargo bench --bench ttft` (TTFT_STREAMS=N sets the number of streams per arm;
//! TTFT_GUARDRAILS=off turns the default output checks, secrets and canary, off in the gateway,
//! `secrets` or `canary` keeps only that one, to measure what they cost).

#![allow(clippy::expect_used, clippy::print_stdout)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");
const SECRET: &str = "bench-secret";

use tollgate_testkit::process::{self, Running};

/// Spawns the binary and returns it with the address it logged as `listen`.
fn spawn(args: &[&str], env: &[(&str, &str)], ready_message: &str) -> (Running, String) {
    let mut command = Command::new(BIN);
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

/// One stream on a fresh connection; time until the first content token arrives.
fn time_to_first_token(addr: &str, path: &str, token: Option<&str>) -> Duration {
    let body = r#"{"model":"mock-gpt","stream":true,"max_tokens":20,"messages":[{"role":"user","content":"hello there"}]}"#;
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
    let (_mock, mock_addr) = spawn(
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
    let (output_secrets, canary) = match mode.as_str() {
        "off" => ("off", "false"),
        "secrets" => ("block", "false"),
        "canary" => ("off", "true"),
        _ => ("block", "true"),
    };
    println!("output checks: secrets {output_secrets}, canary {canary}");
    let (_gateway, gateway_addr) = spawn(
        &[],
        &[
            ("TOLLGATE_LISTEN", "127.0.0.1:0"),
            ("TOLLGATE__SERVER__METRICS_LISTEN", "127.0.0.1:0"),
            ("TOLLGATE_UPSTREAM_URL", &upstream),
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
    );
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
    // Warm both paths (tokenizer, connection pools, page cache).
    for _ in 0..20 {
        time_to_first_token(&mock_addr, "/v1/chat/completions", None);
        time_to_first_token(&gateway_addr, "/v1/chat/completions", Some(&token));
    }
    let mut direct = Vec::with_capacity(streams);
    let mut via = Vec::with_capacity(streams);
    for i in 0..streams {
        let run_direct =
            || time_to_first_token(&mock_addr, "/v1/chat/completions", None).as_secs_f64() * 1e3;
        let run_gateway = || {
            time_to_first_token(&gateway_addr, "/v1/chat/completions", Some(&token)).as_secs_f64()
                * 1e3
        };
        if i % 2 == 0 {
            direct.push(run_direct());
            via.push(run_gateway());
        } else {
            via.push(run_gateway());
            direct.push(run_direct());
        }
    }
    let added: Vec<f64> = via.iter().zip(&direct).map(|(g, d)| g - d).collect();
    println!("time to first token, {streams} streams per arm, interleaved, one at a time");
    summary("direct to mock", direct.clone());
    summary("through tollgate", via.clone());
    summary("added (paired difference)", added);
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        percentile(&v, 50.0)
    };
    println!(
        "ratio of medians (tollgate / direct): {:.2}",
        median(via) / median(direct)
    );
}
