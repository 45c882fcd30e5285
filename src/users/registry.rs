//! Finds (or starts) a user's actor. By default actors are spread over dedicated arbiter threads
//! by a hash of the user id. A gateway in embedded mode starts each user's actor on the arbiter
//! of the HTTP worker that first asks for it instead ([`UserRegistry::actors_on_callers`]): an
//! embedded actor's answers take microseconds and never wait on I/O, and its user's requests on
//! that worker (a keep-alive connection's, for one) then reach it without a hop to another
//! thread and back. Requests arriving on other workers reach it across threads, as before.
//! An actor that evicted itself answers `None`; the registry then starts a fresh one, which
//! loads the saved state.

use super::actor::{Env, Mode, UserAddr};
use super::admin::AdminOp;
use super::alerts;
use super::book::{AdmitRequest, Book};
use super::limits::{usd_to_micro, UserLimits};
use super::messages::{AdminChange, Admit, ChangeAdmin, Inspect, Inspection, ReadUsage, Settle};
use super::org::OrgLedger;
use super::redis::RedisLedger;
use super::store::UserStore;
use super::ticket::Ticket;
use super::usage::UsageReport;
use crate::accounting::{Outcome, Usage};
use crate::clock::Clock;
use crate::config::Config;
use crate::error::{ApiError, ErrorCode};
use crate::telemetry::Metrics;
use actix_rt::Arbiter;
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Attempts at reaching a live actor (an evicting one sends the caller to a fresh one).
const ATTEMPTS: usize = 3;

/// The user-id → actor map and the threads the actors run on.
pub struct UserRegistry {
    arbiters: Vec<Arbiter>,
    /// New actors start on the caller's arbiter (when it runs on one), not on `arbiters`.
    on_callers: bool,
    alert_arbiter: Arbiter,
    env: Env,
    mode: Mode,
}

impl UserRegistry {
    /// Starts `threads` arbiter threads for the actors, and one for alert delivery. With a
    /// `redis` ledger (Redis mode), Redis holds users' figures and `store` goes unused.
    pub fn new(
        threads: usize,
        config: &Config,
        clock: Arc<dyn Clock>,
        metrics: Metrics,
        store: Arc<dyn UserStore>,
        redis: Option<Arc<RedisLedger>>,
    ) -> Self {
        let alert_arbiter = Arbiter::new();
        let alerts = alerts::start(
            &alert_arbiter,
            config.cost.alert_webhook_url.clone(),
            metrics.clone(),
        );
        // In Redis mode the organisation's counter is in Redis; this ledger then counts only
        // what the replica decides alone while Redis is away, under the outage policy.
        let org = OrgLedger::new(usd_to_micro(config.cost.max_org_daily_usd));
        if let (Some(ledger), Some(cap)) = (&redis, org.cap()) {
            org.set_outage_limit(ledger.policy.org_limit(cap, None));
        }
        Self {
            arbiters: (0..threads.max(1)).map(|_| Arbiter::new()).collect(),
            on_callers: false,
            alert_arbiter,
            env: Env {
                clock,
                org: Arc::new(org),
                alerts,
                metrics,
                directory: Arc::new(Mutex::new(HashMap::new())),
                mailbox_capacity: config.users.mailbox_capacity,
                idle_evict: Duration::from_secs(config.users.idle_evict_secs),
            },
            mode: match redis {
                Some(ledger) => Mode::Shared(ledger),
                None => Mode::Local(store),
            },
        }
    }

    /// Embedded mode: starts each user's actor on the arbiter of the thread that first asks for
    /// the user (an HTTP worker), falling back to the dedicated threads off an arbiter. In
    /// Redis mode this changes nothing: actors there wait on Redis, and stay on their threads.
    pub fn actors_on_callers(mut self) -> Self {
        self.on_callers = matches!(self.mode, Mode::Local(_));
        self
    }

    /// Applies a reloaded config: the organisation cap's value (switching it on or off needs a
    /// restart: start-up decides whether the counter exists) and the alert webhook. Users'
    /// limits need nothing here: each request brings its own.
    pub fn reconfigure(&self, config: &Config) {
        let cap = usd_to_micro(config.cost.max_org_daily_usd);
        if cap > 0 && self.env.org.cap().is_some() {
            self.env.org.set_cap(cap);
            if let Mode::Shared(ledger) = &self.mode {
                // The outage limit follows from Redis' next answer; the lower of it and the
                // new cap binds meanwhile.
                ledger.set_org_cap(cap);
            }
        }
        self.env
            .alerts
            .set_webhook_url(&config.cost.alert_webhook_url);
    }

    fn actor(&self, user_id: &str) -> UserAddr {
        let mut directory = self.env.directory.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(addr) = directory.get(user_id).filter(|a| a.connected()) {
            return addr.clone();
        }
        let arbiter = match Arbiter::try_current().filter(|_| self.on_callers) {
            Some(caller) => caller,
            None => {
                let mut hasher = DefaultHasher::new();
                user_id.hash(&mut hasher);
                self.arbiters[(hasher.finish() as usize) % self.arbiters.len()].handle()
            }
        };
        let addr = UserAddr::start(&arbiter, user_id.to_string(), self.env.clone(), &self.mode);
        directory.insert(user_id.to_string(), addr.clone());
        addr
    }

    /// Admits a request (or refuses it with the window that said no). The returned ticket
    /// meters and settles it.
    pub async fn admit(&self, user_id: &str, request: AdmitRequest) -> Result<Ticket, ApiError> {
        for _ in 0..ATTEMPTS {
            let addr = self.actor(user_id);
            // If this future is dropped while the actor answers (the client left), the request
            // it may have admitted is settled with no usage rather than left open.
            let mut cancel = CancelOnDrop {
                addr: Some(addr.clone()),
                request_id: &request.request_id,
            };
            let answer = addr.send(Admit(request.clone())).await;
            cancel.addr = None;
            drop(cancel);
            if let Ok(Some(answer)) = answer {
                let grant = answer?;
                return Ok(Ticket::new(
                    addr,
                    request.request_id,
                    request.limits,
                    request.estimated_input_tokens,
                    grant,
                ));
            }
        }
        Err(unavailable())
    }

    /// The user's counters and windows.
    pub async fn usage(&self, user_id: &str, limits: UserLimits) -> Result<UsageReport, ApiError> {
        for _ in 0..ATTEMPTS {
            if let Ok(Some(report)) = self.actor(user_id).send(ReadUsage(limits)).await {
                return report;
            }
        }
        Err(unavailable())
    }

    /// The registry's clock, ms since the epoch (tests move it).
    pub fn now_ms(&self) -> u64 {
        self.env.clock.now_ms()
    }

    /// Applies an operator's change to the user (where the user's state lives).
    pub async fn change_admin(&self, user_id: &str, op: AdminOp) -> Result<AdminChange, ApiError> {
        for _ in 0..ATTEMPTS {
            if let Ok(Some(answer)) = self.actor(user_id).send(ChangeAdmin(op.clone())).await {
                return answer;
            }
        }
        Err(unavailable())
    }

    /// What an operator sees of the user; `fallback` are the limits to report under when no
    /// request of the user was seen yet (a plan's).
    pub async fn inspect(
        &self,
        user_id: &str,
        fallback: UserLimits,
    ) -> Result<Inspection, ApiError> {
        for _ in 0..ATTEMPTS {
            if let Ok(Some(answer)) = self.actor(user_id).send(Inspect(fallback)).await {
                return answer;
            }
        }
        Err(unavailable())
    }

    /// The `n` biggest spenders of today (`month` false) or this month, by settled spend in
    /// micro-USD, biggest first.
    pub async fn top_spenders(
        &self,
        month: bool,
        n: usize,
    ) -> Result<Vec<(String, u64)>, ApiError> {
        let now = self.env.clock.now_ms();
        let mut spenders = match &self.mode {
            Mode::Local(store) => store
                .all()
                .into_iter()
                .map(|(user, state)| {
                    let (today, this_month) = Book::settled_spend(&state, now);
                    (user, if month { this_month } else { today })
                })
                .filter(|(_, spend)| *spend > 0)
                .collect(),
            Mode::Shared(ledger) => ledger.spenders(month).await.map_err(|_| {
                ApiError::new(
                    ErrorCode::StateUnavailable,
                    "top spenders cannot be read right now (shared state unavailable)",
                )
                .retry_after(1)
            })?,
        };
        spenders.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        spenders.truncate(n);
        Ok(spenders)
    }

    /// Redis mode: the shared ledger (`None` in embedded mode).
    pub fn redis_ledger(&self) -> Option<&Arc<RedisLedger>> {
        match &self.mode {
            Mode::Shared(ledger) => Some(ledger),
            Mode::Local(_) => None,
        }
    }

    /// Actors currently alive.
    pub fn live_actors(&self) -> usize {
        self.env
            .directory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

impl Drop for UserRegistry {
    fn drop(&mut self) {
        for arbiter in self.arbiters.iter().chain([&self.alert_arbiter]) {
            arbiter.stop();
        }
    }
}

/// Settles (with no usage) the request an abandoned admission may have admitted. Settling a
/// request that was never admitted, or is settled already, changes nothing.
struct CancelOnDrop<'a> {
    addr: Option<UserAddr>,
    request_id: &'a str,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(addr) = self.addr.take() {
            addr.do_send(Settle {
                request_id: self.request_id.to_string(),
                usage: Usage::default(),
                outcome: Outcome::ClientGone,
            });
        }
    }
}

fn unavailable() -> ApiError {
    ApiError::new(ErrorCode::StateUnavailable, "per-user state is unavailable").retry_after(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounting::{Outcome, Usage};
    use crate::clock::ManualClock;
    use crate::pricing::PriceTable;
    use crate::users::allowance::Batch;

    const BATCH: Batch = Batch { min: 16, max: 256 };

    #[actix_rt::test]
    async fn an_evicted_actor_comes_back_with_its_counts() {
        let mut config = Config::default();
        config.users.idle_evict_secs = 1;
        let clock = ManualClock::new(1_795_608_000_000);
        let registry = UserRegistry::new(
            1,
            &config,
            Arc::new(clock),
            Metrics::install(10, crate::telemetry::LabelSets::new(Vec::new(), Vec::new())),
            Arc::new(super::super::store::MemoryStore::default()),
            None,
        );
        let limits = UserLimits::for_plan(&config, "pro");
        let price = PriceTable::new(&config.pricing).price("mock-gpt").unwrap();
        let ticket = registry
            .admit(
                "ivy",
                AdmitRequest {
                    request_id: "r1".into(),
                    estimated_input_tokens: 10,
                    max_tokens: 50,
                    choices: 1,
                    stream: false,
                    price,
                    limits,
                    batch: BATCH,
                },
            )
            .await
            .unwrap();
        let usage = Usage {
            input_tokens: 10,
            output_tokens: 5,
        };
        ticket.settle(usage, Outcome::Completed).await;
        assert_eq!(registry.live_actors(), 1);

        // Wait for the eviction (bounded), then ask again: a fresh actor, the same counts.
        wait_for_eviction(&registry, Duration::from_secs(10)).await;
        let report = registry.usage("ivy", limits).await.unwrap();
        assert_eq!(registry.live_actors(), 1);
        assert_eq!(report.requests, 1);
        assert_eq!(report.output_tokens, 5);
        assert_eq!(report.requests_per_minute.used, 1, "the window survived");
        assert_eq!(report.tokens_per_day.used, 15);
    }

    /// Waits (polling: eviction has no event to wait on) until every actor was evicted.
    async fn wait_for_eviction(registry: &UserRegistry, within: Duration) {
        let deadline = std::time::Instant::now() + within;
        while registry.live_actors() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "no eviction within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    use tollgate_testkit::redis::RedisServer;

    /// A Redis-mode registry (one actor thread, system clock) and its ledger.
    fn redis_registry(config: &Config) -> (UserRegistry, Arc<RedisLedger>) {
        let metrics =
            Metrics::install(10, crate::telemetry::LabelSets::new(Vec::new(), Vec::new()));
        let ledger = Arc::new(RedisLedger::new(config, metrics.clone()).unwrap());
        let registry = UserRegistry::new(
            1,
            config,
            Arc::new(crate::clock::SystemClock),
            metrics,
            Arc::new(super::super::store::MemoryStore::default()),
            Some(ledger.clone()),
        );
        (registry, ledger)
    }

    /// Redis mode: a client that leaves while its admit call is in flight (or before the actor
    /// took the message) leaves no request open, whichever happened.
    #[actix_rt::test]
    async fn admissions_abandoned_at_any_moment_leave_nothing_open_in_redis() {
        let redis = RedisServer::start();
        let mut config = Config::default();
        config.redis.url = crate::config::Secret::new(redis.url());
        config.redis.op_timeout_ms = 2000;
        config.rate.requests_per_minute = 1000;
        config.rate.max_concurrent_streams = 1000;
        let (registry, _ledger) = redis_registry(&config);
        let limits = UserLimits::for_plan(&config, "pro");
        let price = PriceTable::new(&config.pricing).price("mock-gpt").unwrap();
        let request = |id: usize| AdmitRequest {
            request_id: format!("gone-{id}"),
            estimated_input_tokens: 10,
            max_tokens: 50,
            choices: 1,
            stream: true,
            price,
            limits,
            batch: BATCH,
        };
        // Warm the connection and the script cache.
        registry
            .admit("una", request(1000))
            .await
            .unwrap()
            .settle(Usage::default(), Outcome::Completed)
            .await;
        let mut abandoned = 0;
        for id in 0..40 {
            let mut admitting = Box::pin(registry.admit("una", request(id)));
            // On a loaded machine the test thread can be preempted between sending the message
            // and polling for the answer, long enough for the whole admission to finish: then
            // the ticket is dropped unsettled (the same path as a client leaving after admission).
            if futures::poll!(admitting.as_mut()).is_pending() {
                abandoned += 1;
            }
            // Leave at a different moment each time: before, during or after the Redis call.
            std::thread::sleep(Duration::from_micros(25 * id as u64));
            drop(admitting);
        }
        assert!(abandoned > 0, "no admission was abandoned while in flight");
        let until = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let report = registry.usage("una", limits).await.unwrap();
            if report.open_requests == 0 {
                assert!(report.requests > 1, "no abandoned admission reached Redis");
                break;
            }
            assert!(std::time::Instant::now() < until, "left open: {report:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Redis mode: an actor that admitted on its own during an outage outlives its idle time
    /// until Redis holds its settlements (a fresh actor would grant the outage allowance again).
    #[actix_rt::test]
    async fn no_eviction_while_redis_is_away() {
        let mut redis = RedisServer::start();
        let mut config = Config::default();
        config.redis.url = crate::config::Secret::new(redis.url());
        config.redis.op_timeout_ms = 2000;
        config.redis.probe_interval_ms = 100;
        config.redis.breaker_failures = 1;
        config.users.idle_evict_secs = 1;
        let (registry, ledger) = redis_registry(&config);
        actix_rt::spawn(ledger.clone().probe_forever());
        let limits = UserLimits::for_plan(&config, "pro");
        let price = PriceTable::new(&config.pricing).price("mock-gpt").unwrap();
        let request = AdmitRequest {
            request_id: "during".into(),
            estimated_input_tokens: 10,
            max_tokens: 50,
            choices: 1,
            stream: false,
            price,
            limits,
            batch: BATCH,
        };
        redis.stop();
        let ticket = registry.admit("vic", request).await.unwrap();
        assert!(!ledger.ready(), "admitted under the outage policy");
        let usage = Usage {
            input_tokens: 10,
            output_tokens: 50,
        };
        ticket.settle(usage, Outcome::Completed).await;
        // Idle for three eviction periods: the actor stays while Redis is away.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(registry.live_actors(), 1);
        redis.restart();
        wait_for_eviction(&registry, Duration::from_secs(15)).await;
        assert!(ledger.ready());
        let report = registry.usage("vic", limits).await.unwrap();
        assert_eq!((report.requests, report.output_tokens), (1, 50));
    }

    /// The price of `model` in the default table, or a made-up one at `usd_per_million` for both
    /// input and output.
    fn price_of(config: &Config, model: &str) -> crate::pricing::Price {
        PriceTable::new(&config.pricing).price(model).unwrap()
    }

    fn price_at(usd_per_million: f64) -> crate::pricing::Price {
        let pricing = std::collections::BTreeMap::from([(
            "m".to_string(),
            crate::config::ModelPrice {
                input_per_million_usd: usd_per_million,
                output_per_million_usd: usd_per_million,
                ..crate::config::ModelPrice::default()
            },
        )]);
        PriceTable::new(&pricing).price("m").unwrap()
    }

    fn usd(price: crate::pricing::Price, input_tokens: u64, output_tokens: u64) -> u64 {
        price.cost_micro_usd(Usage {
            input_tokens,
            output_tokens,
        })
    }

    fn fallback_request(
        id: &str,
        price: crate::pricing::Price,
        limits: UserLimits,
    ) -> AdmitRequest {
        AdmitRequest {
            request_id: id.into(),
            estimated_input_tokens: 1000,
            max_tokens: 50,
            choices: 1,
            stream: true,
            price,
            limits,
            batch: BATCH,
        }
    }

    /// Embedded mode: a ticket moves its request to the fallback model's price, unless that
    /// price would pass the daily cap or output was metered already; the settlement bills it.
    #[actix_rt::test]
    async fn a_ticket_reprices_its_request_and_the_settlement_bills_at_the_new_price() {
        let config = Config::default();
        let registry = UserRegistry::new(
            1,
            &config,
            Arc::new(ManualClock::new(1_795_608_000_000)),
            Metrics::install(10, crate::telemetry::LabelSets::new(Vec::new(), Vec::new())),
            Arc::new(super::super::store::MemoryStore::default()),
            None,
        );
        let limits = UserLimits::for_plan(&config, "pro");
        let (mini, gpt) = (
            price_of(&config, "mock-gpt-mini"),
            price_of(&config, "mock-gpt"),
        );
        let ticket = registry
            .admit("wes", fallback_request("r1", mini, limits))
            .await
            .unwrap();
        // 1000 input tokens at $1000 / M: $1, past the daily cap ($0.50).
        assert!(!ticket.reprice(price_at(1000.0)).await);
        assert!(ticket.reprice(gpt).await);
        let usage = Usage {
            input_tokens: 1000,
            output_tokens: 20,
        };
        ticket.settle(usage, Outcome::Completed).await;
        let report = registry.usage("wes", limits).await.unwrap();
        assert_eq!(
            report.daily_usd.used_usd,
            crate::pricing::micro_usd_to_usd(usd(gpt, 1000, 20))
        );

        let mut streaming = registry
            .admit("wes", fallback_request("r2", mini, limits))
            .await
            .unwrap();
        streaming.relayed(5);
        assert!(streaming.ask(1, BATCH).await > 0);
        assert!(
            !streaming.reprice(gpt).await,
            "output streamed already: its price stands"
        );
        streaming
            .settle(Usage::default(), Outcome::ClientGone)
            .await;
    }

    /// Redis mode: the re-price goes through Redis, and the actor's copy of the request follows:
    /// after its lease ended (Redis charged its input at the new price), its late settlement
    /// adds the output at the new price too.
    #[actix_rt::test]
    async fn redis_mode_reprices_through_redis_and_the_late_settlement_bills_the_new_price() {
        let redis = RedisServer::start();
        let mut config = Config::default();
        config.redis.url = crate::config::Secret::new(redis.url());
        config.redis.op_timeout_ms = 2000;
        config.redis.lease_secs = 1;
        let (registry, _ledger) = redis_registry(&config);
        let limits = UserLimits::for_plan(&config, "pro");
        let (mini, gpt) = (
            price_of(&config, "mock-gpt-mini"),
            price_of(&config, "mock-gpt"),
        );
        let first = registry
            .admit("xia", fallback_request("r1", mini, limits))
            .await
            .unwrap();
        assert!(!first.reprice(price_at(1000.0)).await, "past the daily cap");
        assert!(first.reprice(gpt).await);
        // r1's replica goes silent past its lease: the next admission frees it, charging its
        // input at the price Redis holds.
        tokio::time::sleep(Duration::from_millis(1300)).await;
        let second = registry
            .admit("xia", fallback_request("r2", mini, limits))
            .await
            .unwrap();
        second.settle(Usage::default(), Outcome::ClientGone).await;
        let report = registry.usage("xia", limits).await.unwrap();
        assert_eq!(
            report.daily_usd.used_usd,
            crate::pricing::micro_usd_to_usd(usd(gpt, 1000, 0))
        );
        // The settlement carries the actor's copy of the price.
        let usage = Usage {
            input_tokens: 1000,
            output_tokens: 20,
        };
        first.settle(usage, Outcome::Completed).await;
        let report = registry.usage("xia", limits).await.unwrap();
        assert_eq!(
            report.daily_usd.used_usd,
            crate::pricing::micro_usd_to_usd(usd(gpt, 1000, 0) + usd(gpt, 0, 20))
        );
    }

    /// Redis mode, Redis away: a request Redis admitted keeps its price (the caps cannot be
    /// checked); one the book admitted alone is re-priced by the book, and its journaled
    /// settlement reaches Redis at the new price.
    #[actix_rt::test]
    async fn during_an_outage_only_requests_admitted_alone_are_repriced() {
        let mut redis = RedisServer::start();
        let mut config = Config::default();
        config.redis.url = crate::config::Secret::new(redis.url());
        config.redis.op_timeout_ms = 2000;
        config.redis.probe_interval_ms = 100;
        config.redis.breaker_failures = 1;
        let (registry, ledger) = redis_registry(&config);
        actix_rt::spawn(ledger.clone().probe_forever());
        let limits = UserLimits::for_plan(&config, "pro");
        let (mini, gpt) = (
            price_of(&config, "mock-gpt-mini"),
            price_of(&config, "mock-gpt"),
        );
        let shared = registry
            .admit("yan", fallback_request("r1", mini, limits))
            .await
            .unwrap();
        redis.stop();
        assert!(!shared.reprice(gpt).await, "Redis cannot check the caps");
        let alone = registry
            .admit("yan", fallback_request("r2", mini, limits))
            .await
            .unwrap();
        assert!(!ledger.ready(), "admitted under the outage policy");
        assert!(
            alone.reprice(gpt).await,
            "the book decides for what it admitted"
        );
        let input_only = Usage {
            input_tokens: 1000,
            output_tokens: 0,
        };
        shared.settle(input_only, Outcome::Completed).await;
        let with_output = Usage {
            input_tokens: 1000,
            output_tokens: 10,
        };
        alone.settle(with_output, Outcome::Completed).await;
        assert_eq!(ledger.pending_settlements(), 2);

        redis.restart();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while !(ledger.ready() && ledger.pending_settlements() == 0) {
            assert!(std::time::Instant::now() < deadline, "no replay");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // A pooled connection from before the restart may fail once more (and, with a breaker of
        // one failure, reopen the circuit for a probe interval): read until Redis answers.
        let report = loop {
            match registry.usage("yan", limits).await {
                Ok(report) => break report,
                Err(e) => {
                    assert!(std::time::Instant::now() < deadline, "no usage: {e:?}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        assert_eq!(report.requests, 2);
        assert_eq!(
            report.daily_usd.used_usd,
            crate::pricing::micro_usd_to_usd(usd(mini, 1000, 0) + usd(gpt, 1000, 10))
        );
    }
}
