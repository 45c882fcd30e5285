//! The Redis arm's redis-server: started on the driver's CPU with an fsync per second, the Redis
//! commands each phase cost the arm (`INFO commandstats` deltas), the Redis gateway's health after
//! each phase, and the summary printed at the end.

use crate::client::http_get;
use crate::redis::RedisServer;
use crate::report::fmt;
use crate::setup::{find_in_path, Pinning};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// Redis commands a phase cost the Redis arm.
struct Tally {
    phase: String,
    /// Requests served while the phase was counted: streams that ended with `[DONE]`, and in
    /// the memory phase the streams held open too (the denominator).
    served: u64,
    /// Requests sent, including streams abandoned at the end of a load phase (their admit and
    /// settle are in the calls, so "per request sent" is the lower bound).
    sent: u64,
    calls: BTreeMap<String, u64>,
}

/// The Redis behind the `tollgate-redis` arm and what the bench learnt about it.
pub struct RedisSide {
    pub server: RedisServer,
    pub pid: u32,
    version: String,
    tallies: Vec<Tally>,
    /// One line per check of a Redis gateway (`/readyz`, `tollgate_redis_errors_total`).
    checks: Vec<String>,
}

impl RedisSide {
    /// Starts redis-server (on `DRIVER_CPU` when pinning) with an fsync per second: the
    /// harness fsyncs every write for its crash tests, production Redis does not.
    pub fn start(pin: Pinning) -> Result<Self, String> {
        for tool in ["redis-server", "redis-cli"] {
            if find_in_path(tool).is_none() {
                return Err(format!("{tool} not found (Debian package redis-server)"));
            }
        }
        let server = std::panic::catch_unwind(RedisServer::start)
            .map_err(|_| "redis-server did not start (see the message above)".to_string())?;
        server.cli(&["CONFIG", "SET", "appendfsync", "everysec"]);
        let info = server.cli(&["INFO", "server"]);
        let field = |key: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        let pid: u32 = field("process_id:")
            .parse()
            .map_err(|_| "no process_id in INFO")?;
        pin.move_to_driver_cpu(pid, "redis-server");
        Ok(Self {
            server,
            pid,
            version: field("redis_version:"),
            tallies: Vec::new(),
            checks: Vec::new(),
        })
    }

    /// `INFO commandstats` as command → calls.
    pub fn calls(&self) -> BTreeMap<String, u64> {
        self.server.command_calls()
    }

    /// Adds the calls since `before` (less the bench's own INFO) to the phase's tally.
    pub fn count(&mut self, phase: &str, before: &BTreeMap<String, u64>, served: u64, sent: u64) {
        let after = self.calls();
        let index = match self.tallies.iter().position(|t| t.phase == phase) {
            Some(i) => i,
            None => {
                self.tallies.push(Tally {
                    phase: phase.to_string(),
                    served: 0,
                    sent: 0,
                    calls: BTreeMap::new(),
                });
                self.tallies.len() - 1
            }
        };
        let tally = &mut self.tallies[index];
        tally.served += served;
        tally.sent += sent;
        for (name, &n) in &after {
            let delta = n.saturating_sub(before.get(name).copied().unwrap_or(0));
            if name != "info" && delta > 0 {
                *tally.calls.entry(name.clone()).or_default() += delta;
            }
        }
    }

    /// Asks a Redis gateway whether it is ready with Redis ok, and for its Redis errors.
    pub async fn check(&mut self, gateway: SocketAddr, after: &str) {
        let ready = match http_get(gateway, "/readyz").await {
            Ok((status, body)) => {
                let redis = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["redis"].as_str().map(str::to_string))
                    .unwrap_or_else(|| "?".into());
                if status == 200 && redis == "ok" {
                    "ready, redis ok".to_string()
                } else {
                    format!("NOT OK: /readyz {status} {}", body.trim())
                }
            }
            Err(e) => format!("NOT OK: /readyz {e}"),
        };
        let errors = match http_get(gateway, "/metrics").await {
            Ok((_, body)) => {
                let lines: Vec<(String, f64)> = body
                    .lines()
                    .filter(|l| l.starts_with("tollgate_redis_errors_total"))
                    .filter_map(|l| {
                        let (series, value) = l.rsplit_once(' ')?;
                        Some((series.to_string(), value.trim().parse().ok()?))
                    })
                    .filter(|(_, v)| *v > 0.0)
                    .collect();
                if lines.is_empty() {
                    "tollgate_redis_errors_total 0".to_string()
                } else {
                    lines
                        .iter()
                        .map(|(series, v)| format!("{series} {v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            }
            Err(e) => format!("/metrics {e}"),
        };
        let line = format!("after {after}: {ready}; {errors}");
        println!("  tollgate-redis {line}");
        self.checks.push(line);
    }

    pub fn print(&self) {
        println!();
        println!(
            "Redis (tollgate-redis arm): redis-server {} (pid {}), appendonly yes, appendfsync everysec",
            self.version, self.pid
        );
        println!(
            "  Redis commands per request: INFO commandstats deltas (less the bench's own INFO) ÷ \
             requests served (completed; phase 4: warm-up + held open) [÷ requests sent]; \
             commandstats counts the commands a script runs as well as the script call"
        );
        let per = |n: u64, d: u64| fmt((d > 0).then(|| n as f64 / d as f64), 2);
        for t in &self.tallies {
            let total: u64 = t.calls.values().sum();
            println!(
                "  {:<34} {:>7} per request [{}]  ({total} commands, {} served, {} sent)",
                t.phase,
                per(total, t.served),
                per(total, t.sent),
                t.served,
                t.sent,
            );
            let mut by_calls: Vec<(&String, &u64)> = t.calls.iter().collect();
            by_calls.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            for sent in [true, false] {
                let group: Vec<(&String, &u64)> = by_calls
                    .iter()
                    .copied()
                    .filter(|(name, _)| sent_by_client(name) == sent)
                    .collect();
                let sum: u64 = group.iter().map(|(_, &n)| n).sum();
                let items: Vec<String> = group
                    .iter()
                    .map(|(name, &n)| {
                        if n * 200 < t.served {
                            format!("{name} ({n} in all)")
                        } else {
                            format!("{name} {}", per(n, t.served))
                        }
                    })
                    .collect();
                let what = if sent {
                    "sent by the gateway"
                } else {
                    "run inside its scripts"
                };
                println!(
                    "  {:>34} {:>7} {what}: {}",
                    "",
                    per(sum, t.served),
                    items.join(", ")
                );
            }
        }
        println!("  health of the Redis gateway:");
        for line in &self.checks {
            println!("    {line}");
        }
    }
}

/// Whether a command is one a client sends (a script call, a probe, connection set-up) rather
/// than one a Lua script runs. tollgate's only plain data command, SET for a budget alert's
/// claim, cannot fire here (the budgets are lifted), so every data command is a script's.
fn sent_by_client(name: &str) -> bool {
    ["eval", "fcall", "script|", "client|", "config|"]
        .iter()
        .any(|p| name.starts_with(p))
        || matches!(name, "ping" | "hello" | "select" | "auth")
}
