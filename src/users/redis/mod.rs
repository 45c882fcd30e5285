//! The Redis store (Redis mode): every replica's actor for a user works against the same keys
//! through atomic Lua scripts (admit with reservation, meter, re-price, settle, usage), never
//! read-then-write from Rust. Windows use Redis `TIME`; every key gets its expiry in the script
//! that writes it; a user's keys share one Cluster slot. Concurrent requests hold leases, so a
//! dead replica's slots free themselves (and what they metered is charged).
//!
//! With an organisation cap, every replica also admits, meters, re-prices and settles against
//! one organisation counter (`org.lua`), in its own Cluster slot: a separate call beside the
//! user's, never one script across both.
//!
//! Calls are bounded (`redis.op_timeout_ms`) and guarded by a circuit breaker; when one fails
//! the actor applies the outage policy (`users::outage`). Settlements that cannot reach Redis
//! wait in a journal that the probe task replays, exactly once each, when Redis is back.
//!
//! Redis is one server or a Redis Cluster (`redis.url` lists its nodes, or `redis.cluster`):
//! every script touches one slot, either a user's or the organisation's, and none runs while
//! its slot moves between masters (`link`); a call the cluster client sends again after a broken
//! connection is not counted twice (admit and meter recognise their own copy, the rest are
//! idempotent). The state checks (persistence, eviction policy, the marker) go to every master
//! ([`checks`]).

mod breaker;
mod checks;
mod connection;
mod journal;
mod keys;
mod link;
mod persistence;
#[cfg(test)]
mod tests;
mod topology;

pub use journal::PendingSettle;
pub use link::Unavailable;
pub use persistence::{Persistence, StateCheck};

use super::admin::{UserAdmin, Window};
use super::allowance::Ask;
use super::book::{AdmitRequest, NoReprice};
use super::limits::{usd_to_micro, UserLimits};
use super::outage::{Known, OutagePolicy};
use super::refusal::Refusal;
use super::usage::Counts;
use crate::calendar::DAY_MS;
use crate::config::{Config, RedisNodes};
use crate::pricing::Price;
use crate::telemetry::Metrics;
use deadpool_redis::redis::{cmd, FromRedisValue, Script};
use journal::Journal;
use link::Link;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PRELUDE: &str = include_str!("prelude.lua");
/// How often, while Redis answers, the probe task looks for the marker (`persistence`).
const STATE_CHECK_EVERY: Duration = Duration::from_secs(60);
/// The marker's expiry, renewed by every check (every key tollgate writes expires).
const MARKER_TTL_MS: u64 = 40 * DAY_MS;

struct Scripts {
    admit: Script,
    meter: Script,
    reprice: Script,
    settle: Script,
    usage: Script,
    org: Script,
    admin: Script,
    /// Every script's source, to load on every master at start-up.
    sources: Vec<String>,
}

impl Scripts {
    fn new() -> Self {
        let bodies = [
            include_str!("admit.lua"),
            include_str!("meter.lua"),
            include_str!("reprice.lua"),
            include_str!("settle.lua"),
            include_str!("usage.lua"),
            include_str!("org.lua"),
            include_str!("admin.lua"),
        ];
        let sources: Vec<String> = bodies
            .iter()
            .map(|body| format!("{PRELUDE}\n{body}"))
            .collect();
        let script = |i: usize| Script::new(&sources[i]);
        Self {
            admit: script(0),
            meter: script(1),
            reprice: script(2),
            settle: script(3),
            usage: script(4),
            org: script(5),
            admin: script(6),
            sources,
        }
    }
}

/// What the admit script decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    /// The granted output cap, or why not.
    pub decision: Result<u32, Refusal>,
    /// The request's first allowance (see `Grant::allowance`); 0 when refused.
    pub allowance: u64,
    pub minute_used: u64,
    pub known: Known,
    /// Leases of dead replicas freed on the way.
    pub expired_leases: u64,
    pub now_ms: u64,
}

/// What the meter script said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metered {
    /// Metered: the user's running spend, and the request's next allowance (see
    /// `MeterAnswer`).
    Allowed(Known, u64),
    /// Redis holds no such open request (already settled, or its lease ended).
    Unknown,
    /// The operator's settings for the user changed since the version given: nothing was
    /// done (read them, and ask again under the new limits).
    AdminChanged,
}

/// What the reprice script decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repriced {
    /// Re-priced, or why not (nothing changed then).
    pub decision: Result<(), NoReprice>,
    /// The user's running spend after the call (tokens are not reported: 0). All 0 for an
    /// unknown request.
    pub known: Known,
}

/// A step of a request in the organisation's counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrgOp {
    /// A new request: its input cost, and a stream's first allowance or a whole reply's grant.
    Admit = 1,
    /// A stream's new cost and its next allowance.
    Meter = 2,
    /// A new price: the request's cost and own promise replaced, within the cap.
    Reprice = 3,
    /// The final cost, once.
    Settle = 4,
}

/// What an organisation call asks, in micro-USD: the request's cost now, and the promise it
/// needs at least (the chunk in hand), in batches of `min`, ideally `want` (see
/// `allowance::share`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OrgAsk {
    pub cost: u64,
    pub needed: u64,
    pub min: u64,
    pub want: u64,
}

/// What the organisation's counter decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrgDecision {
    /// Done; the request's promise now (micro-USD).
    Granted(u64),
    /// Past the cap (`OrgDaily`), or only promises stand in the way (`OrgInFlight`). Nothing
    /// changed.
    Refused(Refusal),
    /// No such open request (settled already).
    Unknown,
}

/// The organisation script's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrgAnswer {
    pub decision: OrgDecision,
    /// The organisation's spend and promises after the call.
    pub running: u64,
    /// The organisation's day the request is counted in.
    pub day: u64,
}

pub struct RedisLedger {
    /// One server or a cluster, and the URLs given.
    nodes: RedisNodes,
    link: Link,
    scripts: Scripts,
    journal: Journal,
    key_prefix: String,
    /// The organisation counter's key prefix, and its cap (0: none).
    org_prefix: String,
    /// A reload may change it (not switch it on or off: that needs a restart).
    org_cap_micro_usd: AtomicU64,
    lease_ms: u64,
    probe_interval: Duration,
    pub policy: OutagePolicy,
    metrics: Metrics,
    /// How Redis persists, as last asked ([`Persistence`] as `u8`).
    persistence: AtomicU8,
    /// The marker keys this ledger checks (one per master in a cluster) and the value each held
    /// at the last check.
    markers: Mutex<BTreeMap<String, String>>,
    /// Ids of meter calls (so a call applied twice counts once).
    meter_calls: AtomicU64,
    /// A state check is owed (none succeeded yet, or the connection came back).
    check_due: AtomicBool,
    /// Checks that found tollgate's keys gone.
    losses: AtomicU64,
}

impl std::fmt::Debug for RedisLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLedger")
            .field("key_prefix", &self.key_prefix)
            .field("link", &self.link)
            .finish_non_exhaustive()
    }
}

impl RedisLedger {
    /// Builds the ledger (connects lazily). Fails only on an unusable `redis.url`.
    pub fn new(config: &Config, metrics: Metrics) -> Result<Self, String> {
        let r = &config.redis;
        let nodes = r
            .nodes()
            .map_err(|e| e.to_string())?
            .ok_or_else(|| String::from("redis.url is empty: no Redis to use"))?;
        metrics.set_redis_up(true);
        metrics.declare_redis_state();
        Ok(Self {
            link: Link::new(r, &nodes, metrics.clone())?,
            nodes,
            scripts: Scripts::new(),
            journal: Journal::new(r.journal_max, metrics.clone()),
            key_prefix: r.key_prefix.clone(),
            org_prefix: keys::org_prefix(&r.key_prefix),
            org_cap_micro_usd: AtomicU64::new(usd_to_micro(config.cost.max_org_daily_usd)),
            lease_ms: r.lease_secs * 1000,
            probe_interval: Duration::from_millis(r.probe_interval_ms),
            policy: OutagePolicy::new(r),
            metrics,
            persistence: AtomicU8::new(Persistence::Unknown.to_u8()),
            markers: Mutex::new(BTreeMap::new()),
            meter_calls: AtomicU64::new(0),
            check_due: AtomicBool::new(true),
            losses: AtomicU64::new(0),
        })
    }

    /// How Redis is reached: `single node` or `cluster`, and how many URLs were given (a
    /// cluster's seed nodes).
    pub fn mode(&self) -> (&'static str, usize) {
        (self.nodes.mode(), self.nodes.urls().len())
    }

    /// The key prefix of a user's keys.
    pub fn user_prefix(&self, user_id: &str) -> String {
        keys::user_prefix(&self.key_prefix, user_id)
    }

    /// The organisation's daily cap, when one is set.
    pub fn org_cap(&self) -> Option<u64> {
        let cap = self.org_cap_micro_usd.load(Ordering::Relaxed);
        (cap > 0).then_some(cap)
    }

    /// A reloaded organisation cap (both old and new non-zero).
    pub fn set_org_cap(&self, cap_micro_usd: u64) {
        self.org_cap_micro_usd
            .store(cap_micro_usd, Ordering::Relaxed);
    }

    /// One step of `request_id` in the organisation's counter (`day` 0: today, for
    /// [`OrgOp::Admit`]). Only with an organisation cap.
    pub async fn org(
        &self,
        op: OrgOp,
        request_id: &str,
        day: u64,
        ask: OrgAsk,
    ) -> Result<OrgAnswer, Unavailable> {
        let args = [
            op as u64,
            day,
            ask.cost,
            ask.needed,
            ask.min,
            ask.want,
            self.org_cap_micro_usd.load(Ordering::Relaxed),
            self.lease_ms,
        ];
        let reply: Vec<u64> = self
            .link
            .script(
                "org",
                false,
                &self.scripts.org,
                &self.org_prefix,
                &args,
                &[request_id],
            )
            .await?;
        let [code, spend, promised, day, granted] = reply[..] else {
            return Err(malformed("org"));
        };
        let decision = match code {
            0 => OrgDecision::Granted(granted),
            1 => OrgDecision::Refused(Refusal::OrgDaily),
            2 => OrgDecision::Unknown,
            3 => OrgDecision::Refused(Refusal::OrgInFlight),
            _ => return Err(malformed("org")),
        };
        Ok(OrgAnswer {
            decision,
            running: spend + promised,
            day,
        })
    }

    /// Ready: Redis answers (the circuit is closed).
    pub fn ready(&self) -> bool {
        !self.link.circuit_open()
    }

    /// Settlements waiting for Redis.
    pub fn pending_settlements(&self) -> usize {
        self.journal.len()
    }

    pub async fn admit(
        &self,
        prefix: &str,
        request: &AdmitRequest,
    ) -> Result<Admitted, Unavailable> {
        self.admit_at(prefix, request, 0).await
    }

    /// [`RedisLedger::admit`] under the limits computed with version `admin_version` of the
    /// operator's settings for the user; a newer version refuses with
    /// [`Refusal::AdminChanged`], having done nothing.
    pub async fn admit_at(
        &self,
        prefix: &str,
        request: &AdmitRequest,
        admin_version: u64,
    ) -> Result<Admitted, Unavailable> {
        let (in_nano, out_nano) = request.price.nano_usd_per_token();
        let l = &request.limits;
        let args = [
            request.estimated_input_tokens,
            u64::from(request.max_tokens),
            request.choices,
            u64::from(request.stream),
            in_nano,
            out_nano,
            l.requests_per_minute,
            l.requests_per_day,
            l.tokens_per_day,
            l.max_concurrent_streams,
            u64::from(l.min_granted_tokens),
            l.daily_cap_micro_usd,
            l.monthly_cap_micro_usd,
            self.lease_ms,
            request.batch.min,
            request.batch.max,
            admin_version,
        ];
        let reply: Vec<u64> = self
            .link
            .script(
                "admit",
                false,
                &self.scripts.admit,
                prefix,
                &args,
                &[&request.request_id],
            )
            .await?;
        let [code, granted, retry_ms, minute_used, tokens_running, spend_today, spend_month, expired_leases, now_ms, allowance] =
            reply[..]
        else {
            return Err(malformed("admit"));
        };
        let decision = match code {
            0 => Ok(u32::try_from(granted).unwrap_or(u32::MAX)),
            1 => Err(Refusal::Concurrency),
            2 => Err(Refusal::Minute {
                frees_at_ms: now_ms + retry_ms,
            }),
            3 => Err(Refusal::DayRequests),
            4 => Err(Refusal::DailySpend),
            5 => Err(Refusal::MonthlySpend),
            6 => Err(Refusal::DayTokens),
            7 => Err(Refusal::SpendInFlight),
            8 => Err(Refusal::AdminChanged),
            _ => return Err(malformed("admit")),
        };
        Ok(Admitted {
            decision,
            allowance,
            minute_used,
            known: Known {
                tokens_running,
                spend_today,
                spend_month,
            },
            expired_leases,
            now_ms,
        })
    }

    /// Adds the output a stream relayed and grants its next allowance (the meter script's rule,
    /// as `Book::meter`).
    pub async fn meter(
        &self,
        prefix: &str,
        request_id: &str,
        output_tokens: u64,
        ask: Ask,
        limits: &UserLimits,
    ) -> Result<Metered, Unavailable> {
        self.meter_at(prefix, request_id, output_tokens, ask, limits, 0)
            .await
    }

    /// [`RedisLedger::meter`] under limits computed with version `admin_version` of the
    /// operator's settings ([`Metered::AdminChanged`] when they are newer).
    pub async fn meter_at(
        &self,
        prefix: &str,
        request_id: &str,
        output_tokens: u64,
        ask: Ask,
        limits: &UserLimits,
        admin_version: u64,
    ) -> Result<Metered, Unavailable> {
        let args = [
            output_tokens,
            ask.needed,
            ask.batch.min,
            ask.batch.max,
            limits.daily_cap_micro_usd,
            limits.monthly_cap_micro_usd,
            self.meter_calls.fetch_add(1, Ordering::Relaxed),
            admin_version,
        ];
        let reply: Vec<u64> = self
            .link
            .script(
                "meter",
                false,
                &self.scripts.meter,
                prefix,
                &args,
                &[request_id],
            )
            .await?;
        let [code, spend_today, spend_month, _now, allowance] = reply[..] else {
            return Err(malformed("meter"));
        };
        // Only spend is reported here; the token window stays as last admitted.
        let known = Known {
            tokens_running: 0,
            spend_today,
            spend_month,
        };
        Ok(match code {
            0 => Metered::Allowed(known, allowance),
            3 => Metered::AdminChanged,
            _ => Metered::Unknown,
        })
    }

    /// Every user's settled spend today (`month` false) or this month, in micro-USD: a SCAN of
    /// the day (or month) keys on every master, then their `spend` fields. Admin-only; O(users).
    pub async fn spenders(&self, month: bool) -> Result<Vec<(String, u64)>, Unavailable> {
        let now: Vec<u64> = self.link.command("top", false, cmd("TIME")).await?;
        let day = now.first().copied().unwrap_or(0) / 86_400;
        let suffix = if month {
            format!("month:{}", crate::calendar::month_key(day * DAY_MS))
        } else {
            format!("day:{day}")
        };
        let pattern = format!("{}:{{*}}:{suffix}", glob_escape(&self.key_prefix));
        let masters = self.link.on_every_master("top", false, cmd("PING")).await?;
        let mut found = Vec::new();
        for (node, _) in masters {
            let mut cursor: u64 = 0;
            loop {
                let mut scan = cmd("SCAN");
                scan.arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000);
                let reply = self.link.on_master("top", &node, scan).await?;
                let (next, keys): (u64, Vec<String>) =
                    FromRedisValue::from_redis_value(reply).map_err(|_| malformed("top"))?;
                for key in keys {
                    let mut get = cmd("HGET");
                    get.arg(&key).arg("spend");
                    let spend: Option<u64> = self.link.command("top", false, get).await?;
                    if let (Some(user), Some(spend)) =
                        (keys::user_of(&self.key_prefix, &key), spend)
                    {
                        if spend > 0 {
                            found.push((user, spend));
                        }
                    }
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(found)
    }

    /// The operator's settings for the user at `prefix`, and their version (0: never set).
    pub async fn read_admin(&self, prefix: &str) -> Result<(u64, UserAdmin), Unavailable> {
        let mut cmd = cmd("HMGET");
        cmd.arg(format!("{prefix}admin")).arg("v").arg("state");
        let (version, state): (Option<u64>, Option<String>) =
            self.link.command("read_admin", false, cmd).await?;
        let admin = match state.as_deref().map(serde_json::from_str::<UserAdmin>) {
            None => UserAdmin::default(),
            Some(Ok(admin)) => admin,
            Some(Err(e)) => {
                // Written by a newer or broken replica: safest is what the fields say so far.
                tracing::error!(error = %e, "unreadable operator settings in Redis; ignoring them");
                UserAdmin::default()
            }
        };
        Ok((version.unwrap_or(0), admin))
    }

    /// Writes the user's new settings if their version is still `expected` (and resets the
    /// chosen windows in the same step): the new version, or `None` when another change came
    /// first (read again and retry).
    pub async fn write_admin(
        &self,
        prefix: &str,
        expected: u64,
        admin: &UserAdmin,
        resets: &[Window],
    ) -> Result<Option<u64>, Unavailable> {
        let state = serde_json::to_string(admin).map_err(|_| malformed("admin"))?;
        let bits = resets.iter().fold(0u64, |bits, w| {
            bits | match w {
                Window::Minute => 1,
                Window::Day => 2,
                Window::Month => 4,
            }
        });
        let reply: Vec<u64> = self
            .link
            .script(
                "admin",
                false,
                &self.scripts.admin,
                prefix,
                &[expected, bits],
                &[&state],
            )
            .await?;
        match reply[..] {
            [1, version] => Ok(Some(version)),
            [0, _] => Ok(None),
            _ => Err(malformed("admin")),
        }
    }

    /// Moves the open request `request_id` to `price` if the caps under `limits` allow it (the
    /// reprice script's rule, as `Book::reprice`).
    pub async fn reprice(
        &self,
        prefix: &str,
        request_id: &str,
        price: Price,
        limits: &UserLimits,
    ) -> Result<Repriced, Unavailable> {
        let (in_nano, out_nano) = price.nano_usd_per_token();
        let args = [
            in_nano,
            out_nano,
            limits.daily_cap_micro_usd,
            limits.monthly_cap_micro_usd,
        ];
        let reply: Vec<u64> = self
            .link
            .script(
                "reprice",
                false,
                &self.scripts.reprice,
                prefix,
                &args,
                &[request_id],
            )
            .await?;
        let [code, spend_today, spend_month, _now] = reply[..] else {
            return Err(malformed("reprice"));
        };
        let decision = match code {
            0 => Ok(()),
            1 => Err(NoReprice::Unknown),
            2 => Err(NoReprice::Metered),
            3 => Err(NoReprice::Cap(Refusal::DailySpend)),
            4 => Err(NoReprice::Cap(Refusal::MonthlySpend)),
            5 => Err(NoReprice::Cap(Refusal::SpendInFlight)),
            _ => return Err(malformed("reprice")),
        };
        Ok(Repriced {
            decision,
            known: Known {
                tokens_running: 0,
                spend_today,
                spend_month,
            },
        })
    }

    /// Settles in Redis, or keeps the settlement in the journal for the probe to replay.
    pub async fn settle(&self, entry: PendingSettle) {
        if let Err(e) = self.apply(&entry, false).await {
            tracing::debug!(
                request_id = %entry.request_id,
                error = %e,
                "settlement kept in the journal until Redis answers"
            );
            self.journal.push(entry);
        }
    }

    /// Keeps a settlement for the probe to apply (the caller knows Redis is failing).
    pub fn journal(&self, entry: PendingSettle) {
        self.journal.push(entry);
    }

    /// Applies a settlement: the user's, then the organisation's (each once per request id,
    /// so a replayed entry whose first part was applied already is safe to apply whole).
    async fn apply(&self, entry: &PendingSettle, probe: bool) -> Result<(), Unavailable> {
        let reply: Vec<u64> = self
            .link
            .script(
                "settle",
                probe,
                &self.scripts.settle,
                &entry.prefix,
                &entry.script_args(),
                &[&entry.request_id],
            )
            .await?;
        if !matches!(reply[..], [_applied, _cost]) {
            return Err(malformed("settle"));
        }
        let Some(day) = entry.org_day else {
            return Ok(());
        };
        let ask = OrgAsk {
            cost: entry.cost(),
            ..OrgAsk::default()
        };
        let args = [
            OrgOp::Settle as u64,
            day,
            ask.cost,
            0,
            0,
            0,
            self.org_cap_micro_usd.load(Ordering::Relaxed),
            self.lease_ms,
        ];
        let reply: Vec<u64> = self
            .link
            .script(
                "org",
                probe,
                &self.scripts.org,
                &self.org_prefix,
                &args,
                &[&entry.request_id],
            )
            .await?;
        match reply[..] {
            [0, ..] => Ok(()),
            _ => Err(malformed("org")),
        }
    }

    /// The user's figures for `/v1/usage`, and Redis' time.
    pub async fn usage(&self, prefix: &str) -> Result<(Counts, u64), Unavailable> {
        let reply: Vec<u64> = self
            .link
            .script("usage", false, &self.scripts.usage, prefix, &[], &[])
            .await?;
        let [minute_used, oldest, requests_today, tokens_running, spend_today, spend_month, requests, input, output, cut, open, streams, open_input, open_output, now_ms] =
            reply[..]
        else {
            return Err(malformed("usage"));
        };
        let counts = Counts {
            requests,
            input_tokens: input,
            output_tokens: output,
            cut_requests: cut,
            open_requests: open,
            open_streams: streams,
            open_input_tokens: open_input,
            open_output_tokens: open_output,
            minute_used,
            minute_oldest_ms: (minute_used > 0).then_some(oldest),
            requests_today,
            tokens_running,
            spend_today_running: spend_today,
            spend_month_running: spend_month,
        };
        Ok((counts, now_ms))
    }

    /// Claims the alert for `window` in `period` across replicas: `true` for exactly one caller.
    /// The claim holds a value of this call's own, so a claim the cluster client sent again
    /// (after a broken connection) still finds it was this caller's.
    pub async fn claim_alert(
        &self,
        prefix: &str,
        window: &str,
        period: u64,
    ) -> Result<bool, Unavailable> {
        let key = format!("{prefix}alert:{window}:{period}");
        let mine = uuid::Uuid::new_v4().simple().to_string();
        let mut c = cmd("SET");
        c.arg(&key).arg(&mine).arg("NX").arg("PX").arg(40 * DAY_MS);
        let reply: Option<String> = self.link.command("alert", false, c).await?;
        if reply.is_some() {
            return Ok(true);
        }
        let mut get = cmd("GET");
        get.arg(&key);
        let holder: Option<String> = self.link.command("alert", false, get).await?;
        Ok(holder.as_deref() == Some(mine.as_str()))
    }

    /// Runs until the process ends: while the circuit is open or settlements wait, probes Redis
    /// every `redis.probe_interval_ms`, replays the journal, and closes the circuit once the
    /// journal is empty. While Redis answers, checks its state ([`RedisLedger::check_state`])
    /// when a check is owed (start-up, a connection that came back) and every minute. Spawn it
    /// once, at start-up.
    pub async fn probe_forever(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(self.probe_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_check = Instant::now();
        loop {
            ticks.tick().await;
            if self.ready() && self.journal.is_empty() {
                let reconnected = self.link.take_reconnected();
                let owed = self.check_due.load(Ordering::Acquire) || reconnected;
                if owed || last_check.elapsed() >= STATE_CHECK_EVERY {
                    self.check_state(owed).await;
                    last_check = Instant::now();
                }
                continue;
            }
            if self
                .link
                .command::<String>("ping", true, cmd("PING"))
                .await
                .is_err()
            {
                continue;
            }
            let replayed = self.replay().await;
            if replayed > 0 {
                tracing::info!(replayed, "settlements replayed into Redis");
            }
            if self.journal.is_empty() && self.link.close_circuit() {
                // Redis is back: did it keep its data? (Checked at the next tick.)
                self.check_due.store(true, Ordering::Release);
            }
        }
    }

    async fn replay(&self) -> usize {
        let mut replayed = 0;
        while let Some(entry) = self.journal.take() {
            match self.apply(&entry, true).await {
                Ok(()) => replayed += 1,
                // Redis answered, but with an error: this entry can never apply (e.g. a
                // script error); dropping it keeps the rest of the journal moving.
                Err(e) if e.is_answer() => tracing::error!(
                    request_id = %entry.request_id,
                    error = %e,
                    "a journaled settlement was refused by Redis and dropped"
                ),
                Err(_) => {
                    self.journal.put_back(entry);
                    break;
                }
            }
        }
        replayed
    }
}

/// `text` with the SCAN glob's special characters escaped.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn malformed(op: &'static str) -> Unavailable {
    Unavailable::Malformed(op)
}
