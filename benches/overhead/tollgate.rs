//! The processes run from the tollgate binary: the mock provider (the direct arm, and the provider
//! behind every other arm), one token per simulated user, and the gateway under test in each of
//! its configurations (in memory, in Redis mode, in front of an Anthropic-format provider).

use crate::process::{self, Running};
use crate::setup::{Pinning, DRIVER_CPU, PROXY_CPU};
use crate::{PACED_TOKENS, PACED_TPS};
use std::net::SocketAddr;
use std::process::{Command, Stdio};

/// The tollgate binary built with this bench (the mock provider and the tokens always use it).
const BIN: &str = env!("CARGO_BIN_EXE_tollgate");
const SECRET: &str = "overhead-bench-secret";
const USERS: usize = 100;

/// The model the Anthropic arm asks for, served by `[upstreams.anthropic]` (the mock's
/// `/v1/messages`); priced like `mock-gpt`.
pub const ANTHROPIC_MODEL: &str = "mock-claude";

/// The gateway under test: this build, or the one `TOLLGATE_BIN` names (e.g. the previous
/// commit's, to compare two builds against the same mock and nginx).
fn gateway_bin() -> String {
    std::env::var("TOLLGATE_BIN").unwrap_or_else(|_| BIN.to_string())
}

/// Spawns a tollgate process and returns it with the address it logged as `listen`.
fn spawn_tollgate(
    program: &str,
    pin: Pinning,
    cpu: u32,
    args: &[&str],
    env: &[(String, String)],
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

/// The mock provider (both API families on one port), paced by default (`PACED_TOKENS` at
/// `PACED_TPS`); the direct arm.
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

/// What a gateway arm adds to the configuration they all share.
pub enum Gateway<'a> {
    /// In-memory state, the mock as `[upstream]` (OpenAI format).
    Memory,
    /// The same, with its state in the Redis at this URL.
    Redis(&'a str),
    /// The same as `Memory`, plus the mock's Messages API as `[upstreams.anthropic]` serving
    /// [`ANTHROPIC_MODEL`].
    Anthropic,
}

/// What every gateway arm is set to, besides its address, its provider and its secret.
const SHARED: &[(&str, &str)] = &[
    // A throughput benchmark, not a limits test: lift every per-user window and cap.
    ("TOLLGATE__RATE__REQUESTS_PER_MINUTE", "1000000"),
    ("TOLLGATE__RATE__REQUESTS_PER_DAY", "1000000000"),
    ("TOLLGATE__RATE__TOKENS_PER_DAY", "1000000000000"),
    ("TOLLGATE__RATE__MAX_CONCURRENT_STREAMS", "1000000"),
    ("TOLLGATE__COST__MAX_DAILY_USD", "1000000.0"),
    ("TOLLGATE__COST__MAX_MONTHLY_USD", "1000000.0"),
    // 10,000 open streams need 10,000 upstream connections (default 4096 per worker), and
    // the held-open streams of the memory phase stall on purpose (default idle cut 10 s).
    ("TOLLGATE__UPSTREAM__MAX_CONNECTIONS", "30000"),
    ("TOLLGATE__UPSTREAM__IDLE_TIMEOUT_SECS", "600"),
    ("TOLLGATE__LIMITS__DEADLINE_SECS", "600"),
    // A Redis lease must outlive the deadline; start-up validates it in either mode.
    ("TOLLGATE__REDIS__LEASE_SECS", "660"),
];

/// The gateway under test in front of the mock at `mock`.
pub fn start_gateway(pin: Pinning, mock: SocketAddr, gateway: Gateway) -> (Running, SocketAddr) {
    let mut env: Vec<(String, String)> = SHARED
        .iter()
        .map(|&(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut set = |k: &str, v: String| env.push((k.to_string(), v));
    set("TOLLGATE_LISTEN", "127.0.0.1:0".into());
    set("TOLLGATE_UPSTREAM_URL", format!("http://{mock}/v1"));
    set("TOLLGATE_JWT_SECRET", SECRET.into());
    match gateway {
        Gateway::Memory => {}
        Gateway::Redis(url) => {
            set("TOLLGATE_REDIS_URL", url.to_string());
            // The default 50 ms is for production; a Redis sharing a busy core with the mock
            // and the driver must not send the arm down the outage path.
            set("TOLLGATE__REDIS__OP_TIMEOUT_MS", "1000".into());
        }
        Gateway::Anthropic => {
            // `[upstreams.anthropic]` inherits `[upstream]`'s connection limit and timeouts.
            set(
                "TOLLGATE__UPSTREAMS__ANTHROPIC__URL",
                format!("http://{mock}"),
            );
            set("TOLLGATE__UPSTREAMS__ANTHROPIC__FORMAT", "anthropic".into());
            // `[pricing.mock-claude]` (keys are lower-cased; the dash survives), priced like
            // mock-gpt. No `upstream_model`: the mock's knobs in the model name travel upstream.
            let model = ANTHROPIC_MODEL.to_ascii_uppercase();
            let key = |field: &str| format!("TOLLGATE__PRICING__{model}__{field}");
            set(&key("INPUT_PER_MILLION_USD"), "2.5".into());
            set(&key("OUTPUT_PER_MILLION_USD"), "10.0".into());
            set(&key("UPSTREAM"), "anthropic".into());
        }
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
