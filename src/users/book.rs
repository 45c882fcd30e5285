//! One user's ledger: the windows, open reservations and spend, and the rules that change them.
//! Pure logic (no actor, no I/O, time passed in), owned by the user's actor, unit-tested here.
//!
//! - Requests per minute: a sliding log of admission times, so no rolling 60 s ever holds more
//!   than the limit (no double burst at a boundary).
//! - Requests, tokens and spend per UTC day; spend per UTC month. Open requests count too:
//!   tokens as reserved (input estimate + granted `max_tokens`), spend as metered so far.
//! - Admission checks every window and reserves in one step; settlement replaces the
//!   reservation with what was used, once (a second settle of the same id changes nothing).
//! - Streams relay within allowances ([`super::allowance`]): admission grants a stream its
//!   first, and each meter report adds the output used and grants the next. An allowance is
//!   promised spend, so spend never passes a cap: a stream whose allowance falls short of the
//!   chunk in hand has reached it. A non-streamed request's `max_tokens` is capped by the spend
//!   left at admission, and its whole grant is promised until it settles.
//! - Re-pricing (fallback to another model before the first token) moves an open request to a
//!   new price if the spend checks admission made still pass at it; the reservation stays.

use super::admin::{UserAdmin, Window};
use super::allowance::{share, Ask, Batch};
use super::limits::UserLimits;
use super::org::OrgLedger;
use super::refusal::Refusal;
use super::usage::{Counts, UsageReport};
use crate::accounting::{Outcome, RateLimitHeaders, Usage};
use crate::calendar::{day_key, month_key, MINUTE_MS};
use crate::error::ApiError;
use crate::pricing::Price;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};

/// What survives an actor: kept in the store when the actor is evicted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UserState {
    /// Admission times (ms) in the last minute, oldest first.
    minute: VecDeque<u64>,
    day: u64,
    requests_today: u64,
    tokens_today: u64,
    spend_today_micro_usd: u64,
    month: u32,
    spend_month_micro_usd: u64,
    alerted_day: Option<u64>,
    alerted_month: Option<u32>,
    /// Lifetime totals.
    requests: u64,
    input_tokens: u64,
    output_tokens: u64,
    cut_requests: u64,
    /// An operator's block and overrides (embedded mode; Redis mode keeps them in Redis).
    #[serde(default, skip_serializing_if = "is_default")]
    admin: UserAdmin,
}

fn is_default(admin: &UserAdmin) -> bool {
    *admin == UserAdmin::default()
}

/// An admitted, unsettled request.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenRequest {
    pub stream: bool,
    /// UTC day and month of admission: its usage is charged there.
    pub day: u64,
    pub month: u32,
    pub admitted_ms: u64,
    pub price: Price,
    pub input_tokens: u64,
    pub reserved_tokens: u64,
    pub metered_output_tokens: u64,
    /// Output tokens this request may still relay before it reports again (a stream's
    /// allowance; a non-streamed request's whole grant): promised spend that admission and
    /// other requests' allowances must leave.
    pub promised_tokens: u64,
}

impl OpenRequest {
    /// A request admitted at `now_ms` that used nothing (yet).
    pub fn empty(price: Price, now_ms: u64) -> Self {
        Self {
            stream: false,
            day: day_key(now_ms),
            month: month_key(now_ms),
            admitted_ms: now_ms,
            price,
            input_tokens: 0,
            reserved_tokens: 0,
            metered_output_tokens: 0,
            promised_tokens: 0,
        }
    }

    /// What the outstanding allowance would cost.
    pub fn promised_cost(&self) -> u64 {
        self.price.cost_micro_usd(Usage {
            input_tokens: 0,
            output_tokens: self.promised_tokens,
        })
    }

    /// Cost so far: the input estimate and the output metered.
    pub fn cost(&self) -> u64 {
        self.price.cost_micro_usd(Usage {
            input_tokens: self.input_tokens,
            output_tokens: self.metered_output_tokens,
        })
    }
}

/// A request asking to be admitted.
#[derive(Debug, Clone)]
pub struct AdmitRequest {
    pub request_id: String,
    pub estimated_input_tokens: u64,
    pub max_tokens: u32,
    /// Choices asked for (`n`): each may produce `max_tokens`.
    pub choices: u64,
    pub stream: bool,
    pub price: Price,
    pub limits: UserLimits,
    /// The relay's batch bounds (a stream's first allowance is granted with admission).
    pub batch: Batch,
}

/// What admission granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub max_tokens: u32,
    /// Output tokens the request may relay before it asks again (a stream's first allowance;
    /// a non-streamed request's whole grant, `max_tokens × n`).
    pub allowance: u64,
    pub rate_limits: RateLimitHeaders,
}

/// Why a re-price was refused. Nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoReprice {
    /// No such open request (never admitted, or settled already).
    Unknown,
    /// Output was metered already: what streamed is the first model's, at its price.
    Metered,
    /// At the new price the spend would pass this cap (`DailySpend`, `MonthlySpend`,
    /// `SpendInFlight`, `OrgDaily`).
    Cap(Refusal),
}

/// A cap crossed: a webhook and log line are owed, once per user per window period.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    pub window: &'static str,
    pub spend_micro_usd: u64,
    pub cap_micro_usd: u64,
    pub percent: u8,
}

/// The ledger.
#[derive(Debug, Default)]
pub struct Book {
    state: UserState,
    open: HashMap<String, OpenRequest>,
    /// Entries that left the minute log's front, and joined its back, since the book was built
    /// (a store saves just those: [`UserState::update_saved`]).
    minute_changes: MinuteChanges,
}

/// Entries that left a minute log's front and joined its back, counted from some moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MinuteChanges {
    pub popped: u64,
    pub pushed: u64,
}

impl MinuteChanges {
    /// The changes from `earlier` to `self`.
    pub fn since(self, earlier: MinuteChanges) -> MinuteChanges {
        MinuteChanges {
            popped: self.popped.saturating_sub(earlier.popped),
            pushed: self.pushed.saturating_sub(earlier.pushed),
        }
    }
}

impl UserState {
    /// Makes `saved` (this user's state as saved before the minute log's `changes`) equal to
    /// this state, moving only the minute log's ends: a busy user's log holds an entry per
    /// request of the last minute, too many to copy on every settlement. Copies the whole log
    /// when `saved` does not have the length those changes started from.
    pub fn update_saved(&self, saved: &mut UserState, changes: MinuteChanges) {
        let popped = usize::try_from(changes.popped).unwrap_or(usize::MAX);
        let pushed = usize::try_from(changes.pushed).unwrap_or(usize::MAX);
        let kept = self.minute.len().checked_sub(pushed);
        if kept.is_some() && saved.minute.len().checked_sub(popped) == kept {
            saved.minute.drain(..popped);
            saved.minute.extend(self.minute.range(kept.unwrap_or(0)..));
        } else {
            saved.minute.clone_from(&self.minute);
        }
        debug_assert_eq!(saved.minute, self.minute);
        // Every other field (a new one fails to compile here until it is copied).
        let UserState {
            minute: _,
            day,
            requests_today,
            tokens_today,
            spend_today_micro_usd,
            month,
            spend_month_micro_usd,
            alerted_day,
            alerted_month,
            requests,
            input_tokens,
            output_tokens,
            cut_requests,
            admin,
        } = self;
        saved.day = *day;
        saved.requests_today = *requests_today;
        saved.tokens_today = *tokens_today;
        saved.spend_today_micro_usd = *spend_today_micro_usd;
        saved.month = *month;
        saved.spend_month_micro_usd = *spend_month_micro_usd;
        saved.alerted_day = *alerted_day;
        saved.alerted_month = *alerted_month;
        saved.requests = *requests;
        saved.input_tokens = *input_tokens;
        saved.output_tokens = *output_tokens;
        saved.cut_requests = *cut_requests;
        if saved.admin != *admin {
            saved.admin = admin.clone();
        }
    }
}

impl Book {
    pub fn new(state: UserState) -> Self {
        Self {
            state,
            open: HashMap::new(),
            minute_changes: MinuteChanges::default(),
        }
    }

    pub fn state(&self) -> &UserState {
        &self.state
    }

    /// The minute log's changes since the book was built.
    pub fn minute_changes(&self) -> MinuteChanges {
        self.minute_changes
    }

    /// An operator's settings for the user, as this book keeps them.
    pub fn admin(&self) -> &UserAdmin {
        &self.state.admin
    }

    pub fn set_admin(&mut self, admin: UserAdmin) {
        self.state.admin = admin;
    }

    /// Empties the chosen windows (an operator's reset): the minute's requests; today's
    /// requests, tokens and spend; this month's spend. Open requests keep their reservations.
    pub fn reset(&mut self, windows: &[Window], now_ms: u64) {
        self.roll(now_ms);
        for window in windows {
            match window {
                Window::Minute => {
                    self.minute_changes.popped += self.state.minute.len() as u64;
                    self.state.minute.clear();
                }
                Window::Day => {
                    self.state.requests_today = 0;
                    self.state.tokens_today = 0;
                    self.state.spend_today_micro_usd = 0;
                    self.state.alerted_day = None;
                }
                Window::Month => {
                    self.state.spend_month_micro_usd = 0;
                    self.state.alerted_month = None;
                }
            }
        }
    }

    /// Settled spend today and this month at `now_ms` (for the top spenders).
    pub fn settled_spend(state: &UserState, now_ms: u64) -> (u64, u64) {
        let today = if state.day == day_key(now_ms) {
            state.spend_today_micro_usd
        } else {
            0
        };
        let month = if state.month == month_key(now_ms) {
            state.spend_month_micro_usd
        } else {
            0
        };
        (today, month)
    }

    pub fn has_open_requests(&self) -> bool {
        !self.open.is_empty()
    }

    /// An open request, if this book holds it.
    pub fn open_request(&self, request_id: &str) -> Option<&OpenRequest> {
        self.open.get(request_id)
    }

    /// Takes over a request admitted elsewhere (Redis mode: by Redis, which then went away),
    /// so this book meters and settles it from here on.
    pub fn adopt(&mut self, request_id: String, open: OpenRequest) {
        self.open.entry(request_id).or_insert(open);
    }

    /// Moves the windows to `now`: expires minute entries, starts a new day or month.
    fn roll(&mut self, now_ms: u64) {
        while self
            .state
            .minute
            .front()
            .is_some_and(|t| t + MINUTE_MS <= now_ms)
        {
            self.state.minute.pop_front();
            self.minute_changes.popped += 1;
        }
        let day = day_key(now_ms);
        if day != self.state.day {
            self.state.day = day;
            self.state.requests_today = 0;
            self.state.tokens_today = 0;
            self.state.spend_today_micro_usd = 0;
        }
        let month = month_key(now_ms);
        if month != self.state.month {
            self.state.month = month;
            self.state.spend_month_micro_usd = 0;
        }
    }

    fn tokens_running(&self) -> u64 {
        let day = self.state.day;
        self.state.tokens_today
            + self
                .open
                .values()
                .filter(|o| o.day == day)
                .map(|o| o.reserved_tokens)
                .sum::<u64>()
    }

    fn spend_today_running(&self) -> u64 {
        let day = self.state.day;
        self.state.spend_today_micro_usd
            + self
                .open
                .values()
                .filter(|o| o.day == day)
                .map(OpenRequest::cost)
                .sum::<u64>()
    }

    fn spend_month_running(&self) -> u64 {
        let month = self.state.month;
        self.state.spend_month_micro_usd
            + self
                .open
                .values()
                .filter(|o| o.month == month)
                .map(OpenRequest::cost)
                .sum::<u64>()
    }

    /// Allowances outstanding today and this month (except `except`'s), as spend.
    fn promised(&self, except: Option<&str>) -> (u64, u64) {
        let (day, month) = (self.state.day, self.state.month);
        self.open
            .iter()
            .filter(|(id, _)| Some(id.as_str()) != except)
            .fold((0, 0), |(d, m), (_, o)| {
                let c = o.promised_cost();
                (
                    d + if o.day == day { c } else { 0 },
                    m + if o.month == month { c } else { 0 },
                )
            })
    }

    fn rate_limits(&self, limits: &UserLimits) -> RateLimitHeaders {
        Counts {
            minute_used: self.state.minute.len() as u64,
            tokens_running: self.tokens_running(),
            ..Counts::default()
        }
        .rate_limits(limits)
    }

    /// Spend free for `except` (or a new request): the daily and monthly caps less the running
    /// spend and every other open request's allowance, and the organisation's free spend.
    fn free_spend(&self, limits: &UserLimits, org: &OrgLedger, except: Option<&str>) -> u64 {
        let (others_today, others_month) = self.promised(except);
        let user = limits
            .daily_cap_micro_usd
            .saturating_sub(self.spend_today_running() + others_today)
            .min(
                limits
                    .monthly_cap_micro_usd
                    .saturating_sub(self.spend_month_running() + others_month),
            );
        let own_promise = except
            .and_then(|id| self.open.get(id))
            .filter(|o| o.day == self.state.day)
            .map_or(0, OpenRequest::promised_cost);
        match org.free(self.state.day, own_promise) {
            Some(org_free) => user.min(org_free),
            None => user,
        }
    }

    /// Sets `request_id`'s allowance to `tokens` (promised spend), keeping the organisation's
    /// count of promises in step.
    fn promise(&mut self, request_id: &str, tokens: u64, org: &OrgLedger) {
        if let Some(open) = self.open.get_mut(request_id) {
            let before = open.promised_cost();
            open.promised_tokens = tokens;
            org.promise(open.day, open.promised_cost() as i64 - before as i64);
        }
    }

    /// Checks every window and, if all allow it, reserves for the request. One atomic step:
    /// the caller (the user's actor) handles one message at a time.
    ///
    /// A stream is granted its first allowance (see [`Book::meter`]). A non-streamed request
    /// is charged only when it ends, so its `max_tokens` is capped by the spend left (its input
    /// cost taken), and its whole grant is promised until then.
    pub fn admit(
        &mut self,
        request: AdmitRequest,
        now_ms: u64,
        org: &OrgLedger,
    ) -> Result<Grant, ApiError> {
        self.roll(now_ms);
        let limits = &request.limits;
        let refuse = |book: &Self, why: Refusal| {
            Err(why
                .error(limits, now_ms)
                .rate_limits(book.rate_limits(limits)))
        };

        if self.open.len() as u64 >= limits.max_concurrent_streams {
            return refuse(self, Refusal::Concurrency);
        }
        if self.state.minute.len() as u64 >= limits.requests_per_minute {
            let frees_at_ms = self
                .state
                .minute
                .front()
                .map_or(now_ms + MINUTE_MS, |t| t + MINUTE_MS);
            return refuse(self, Refusal::Minute { frees_at_ms });
        }
        if self.state.requests_today >= limits.requests_per_day {
            return refuse(self, Refusal::DayRequests);
        }
        let choices = request.choices.max(1);
        let floor = u64::from(limits.min_granted_tokens.min(request.max_tokens));
        let input_cost = request.price.cost_micro_usd(Usage {
            input_tokens: request.estimated_input_tokens,
            output_tokens: 0,
        });
        // What must fit under the caps: the input, and for a request charged at its end the
        // least output it may be granted.
        let needed_cost = if request.stream {
            input_cost
        } else {
            request.price.cost_micro_usd(Usage {
                input_tokens: request.estimated_input_tokens,
                output_tokens: floor * choices,
            })
        };
        if self.spend_today_running() + needed_cost > limits.daily_cap_micro_usd {
            return refuse(self, Refusal::DailySpend);
        }
        if self.spend_month_running() + needed_cost > limits.monthly_cap_micro_usd {
            return refuse(self, Refusal::MonthlySpend);
        }
        // Spend promised to running requests (their allowances) is not free to take either; a
        // refusal for that alone says "soon": promises end within a batch.
        let (promised_today, promised_month) = self.promised(None);
        if self.spend_today_running() + promised_today + needed_cost > limits.daily_cap_micro_usd
            || self.spend_month_running() + promised_month + needed_cost
                > limits.monthly_cap_micro_usd
        {
            return refuse(self, Refusal::SpendInFlight);
        }
        if let Err(why) = org.check(self.state.day, needed_cost) {
            return refuse(self, why);
        }
        let left = limits.tokens_per_day.saturating_sub(self.tokens_running());
        if left < request.estimated_input_tokens + floor * choices {
            return refuse(self, Refusal::DayTokens);
        }
        let mut granted =
            u64::from(request.max_tokens).min((left - request.estimated_input_tokens) / choices);
        if !request.stream {
            // Within the spend left after the input: at least `floor`, by the checks above.
            let free = self
                .free_spend(limits, org, None)
                .saturating_sub(input_cost);
            let (_, output_nano_usd) = request.price.nano_usd_per_token();
            let affordable = free.saturating_mul(1000) / output_nano_usd.max(1) / choices;
            granted = granted.min(affordable);
        }
        let granted = u32::try_from(granted).unwrap_or(u32::MAX);

        self.state.minute.push_back(now_ms);
        self.minute_changes.pushed += 1;
        self.state.requests_today += 1;
        self.state.requests += 1;
        let request_id = request.request_id;
        self.open.insert(
            request_id.clone(),
            OpenRequest {
                stream: request.stream,
                day: self.state.day,
                month: self.state.month,
                admitted_ms: now_ms,
                price: request.price,
                input_tokens: request.estimated_input_tokens,
                reserved_tokens: request.estimated_input_tokens + u64::from(granted) * choices,
                metered_output_tokens: 0,
                promised_tokens: 0,
            },
        );
        org.add(self.state.day, input_cost as i64);
        let allowance = if request.stream {
            let ask = Ask {
                needed: 0,
                batch: request.batch,
            };
            self.allowance(&request_id, ask, limits, org)
        } else {
            let whole = u64::from(granted) * choices;
            self.promise(&request_id, whole, org);
            whole
        };
        Ok(Grant {
            max_tokens: granted,
            allowance,
            rate_limits: self.rate_limits(limits),
        })
    }

    /// Adds `output_tokens` a stream relayed (within its allowance) and grants its next
    /// allowance: the output tokens it may relay from here before it reports again, in place of
    /// the last. At least `needed` (the chunk the relay holds) if the caps leave that much;
    /// less means a cap is reached: the relay relays that many and ends the stream. 0 for a
    /// request this book does not hold.
    pub fn meter(
        &mut self,
        request_id: &str,
        output_tokens: u64,
        ask: Ask,
        limits: &UserLimits,
        now_ms: u64,
        org: &OrgLedger,
    ) -> u64 {
        self.roll(now_ms);
        let Some(open) = self.open.get_mut(request_id) else {
            return 0;
        };
        let before = open.cost();
        open.metered_output_tokens += output_tokens;
        let delta = open.cost() - before;
        org.add(open.day, delta as i64);
        self.allowance(request_id, ask, limits, org)
    }

    /// Grants `request_id` its allowance (see [`share`]): from the spend no one else holds
    /// under the daily, monthly and organisation caps, at the request's output price, and no
    /// more than its grant still allows (a promise it cannot use would only refuse others).
    fn allowance(
        &mut self,
        request_id: &str,
        ask: Ask,
        limits: &UserLimits,
        org: &OrgLedger,
    ) -> u64 {
        let free = self.free_spend(limits, org, Some(request_id));
        let open_requests = self.open.len() as u64;
        let Some(open) = self.open.get(request_id) else {
            return 0;
        };
        let (_, output_nano_usd) = open.price.nano_usd_per_token();
        let tokens = free.saturating_mul(1000) / output_nano_usd.max(1);
        let grant_left = open
            .reserved_tokens
            .saturating_sub(open.input_tokens + open.metered_output_tokens);
        let allowance = share(tokens, open_requests, ask).min(grant_left);
        self.promise(request_id, allowance, org);
        allowance
    }

    /// Moves the open, unmetered request `request_id` to `price` (its fallback model's), if the
    /// spend checks admission made pass at it: the request's cost at the new price replacing
    /// its cost at the old one, the running spend must stay within the daily and monthly caps,
    /// also with the spend promised to the other open requests (and, for a non-streamed
    /// request, its own grant at the new price), and the organisation's likewise. On a pass the
    /// organisation ledger follows the difference, and a stream's allowance is dropped (it asks
    /// again, at the new price); the token reservation is unchanged (the grant stands). On a
    /// refusal nothing changes.
    pub fn reprice(
        &mut self,
        request_id: &str,
        price: Price,
        limits: &UserLimits,
        now_ms: u64,
        org: &OrgLedger,
    ) -> Result<(), NoReprice> {
        self.roll(now_ms);
        let Some(open) = self.open.get(request_id) else {
            return Err(NoReprice::Unknown);
        };
        if open.metered_output_tokens > 0 {
            return Err(NoReprice::Metered);
        }
        let repriced = OpenRequest {
            price,
            promised_tokens: if open.stream { 0 } else { open.promised_tokens },
            ..open.clone()
        };
        let (old_cost, new_cost) = (open.cost(), repriced.cost());
        let (old_promise, new_promise) = (open.promised_cost(), repriced.promised_cost());
        let (day, month) = (open.day, open.month);
        // The request counts in the windows it was admitted in; there its cost is replaced.
        let replaced = |running: u64, counted: bool| {
            if counted {
                running - old_cost + new_cost
            } else {
                running
            }
        };
        let today = replaced(self.spend_today_running(), day == self.state.day);
        let month_spend = replaced(self.spend_month_running(), month == self.state.month);
        if today > limits.daily_cap_micro_usd {
            return Err(NoReprice::Cap(Refusal::DailySpend));
        }
        if month_spend > limits.monthly_cap_micro_usd {
            return Err(NoReprice::Cap(Refusal::MonthlySpend));
        }
        let (promised_today, promised_month) = self.promised(Some(request_id));
        if today + promised_today + new_promise > limits.daily_cap_micro_usd
            || month_spend + promised_month + new_promise > limits.monthly_cap_micro_usd
        {
            return Err(NoReprice::Cap(Refusal::SpendInFlight));
        }
        if org.would_pass_replacing(day, old_cost + old_promise, new_cost + new_promise) {
            return Err(NoReprice::Cap(Refusal::OrgDaily));
        }
        org.add(day, new_cost as i64 - old_cost as i64);
        org.promise(day, new_promise as i64 - old_promise as i64);
        self.open.insert(request_id.to_string(), repriced);
        Ok(())
    }

    /// Replaces the reservation with what was used, and releases the request's allowance.
    /// Settling an unknown (or already settled) request changes nothing.
    pub fn settle(
        &mut self,
        request_id: &str,
        usage: Usage,
        outcome: Outcome,
        now_ms: u64,
        org: &OrgLedger,
    ) {
        self.roll(now_ms);
        let Some(open) = self.open.remove(request_id) else {
            return;
        };
        let cost = open.price.cost_micro_usd(usage);
        // Usage is charged to the day and month of admission; once those are over, the
        // current windows are not charged for them.
        if open.day == self.state.day {
            self.state.tokens_today += usage.total();
            self.state.spend_today_micro_usd += cost;
        }
        if open.month == self.state.month {
            self.state.spend_month_micro_usd += cost;
        }
        org.add(open.day, cost as i64 - open.cost() as i64);
        org.promise(open.day, -(open.promised_cost() as i64));
        self.state.input_tokens += usage.input_tokens;
        self.state.output_tokens += usage.output_tokens;
        if outcome != Outcome::Completed {
            self.state.cut_requests += 1;
        }
    }

    /// Alerts owed now: a cap passed the threshold and no alert went out this period yet.
    pub fn due_alerts(&mut self, limits: &UserLimits) -> Vec<Alert> {
        let mut alerts = Vec::new();
        let today = self.spend_today_running();
        if limits.alert_due(today, limits.daily_cap_micro_usd)
            && self.state.alerted_day != Some(self.state.day)
        {
            self.state.alerted_day = Some(self.state.day);
            alerts.push(Alert {
                window: "daily",
                spend_micro_usd: today,
                cap_micro_usd: limits.daily_cap_micro_usd,
                percent: limits.alert_threshold_percent,
            });
        }
        let month = self.spend_month_running();
        if limits.alert_due(month, limits.monthly_cap_micro_usd)
            && self.state.alerted_month != Some(self.state.month)
        {
            self.state.alerted_month = Some(self.state.month);
            alerts.push(Alert {
                window: "monthly",
                spend_micro_usd: month,
                cap_micro_usd: limits.monthly_cap_micro_usd,
                percent: limits.alert_threshold_percent,
            });
        }
        alerts
    }

    /// The report for `/v1/usage`.
    pub fn report(&mut self, limits: &UserLimits, now_ms: u64) -> UsageReport {
        self.roll(now_ms);
        let counts = Counts {
            requests: self.state.requests,
            input_tokens: self.state.input_tokens,
            output_tokens: self.state.output_tokens,
            cut_requests: self.state.cut_requests,
            open_requests: self.open.len() as u64,
            open_streams: self.open.values().filter(|o| o.stream).count() as u64,
            open_input_tokens: self.open.values().map(|o| o.input_tokens).sum(),
            open_output_tokens: self.open.values().map(|o| o.metered_output_tokens).sum(),
            minute_used: self.state.minute.len() as u64,
            minute_oldest_ms: self.state.minute.front().copied(),
            requests_today: self.state.requests_today,
            tokens_running: self.tokens_running(),
            spend_today_running: self.spend_today_running(),
            spend_month_running: self.spend_month_running(),
        };
        counts.report(limits, now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calendar::next_day_ms;
    use crate::config::{Config, ModelPrice};
    use crate::error::ErrorCode;
    use crate::pricing::PriceTable;

    const T0: u64 = 1_795_608_000_000; // 2026-11-25T12:00:00Z

    /// $2.50 / M input (10 tokens: 25 micro-USD), $10 / M output (10 micro-USD a token).
    fn price() -> Price {
        price_of(2.5, 10.0)
    }

    fn price_of(input_per_million_usd: f64, output_per_million_usd: f64) -> Price {
        let table = PriceTable::new(&std::collections::BTreeMap::from([(
            "m".to_string(),
            ModelPrice {
                input_per_million_usd,
                output_per_million_usd,
                ..ModelPrice::default()
            },
        )]));
        table.price("m").unwrap()
    }

    fn limits() -> UserLimits {
        UserLimits::for_plan(&Config::default(), "pro")
    }

    fn request(id: &str, limits: UserLimits) -> AdmitRequest {
        AdmitRequest {
            request_id: id.into(),
            estimated_input_tokens: 10,
            max_tokens: 100,
            choices: 1,
            stream: true,
            price: price(),
            limits,
            // No allowance beyond the chunk in hand (the rules without promises).
            batch: Batch { min: 0, max: 0 },
        }
    }

    #[test]
    fn n_choices_reserve_n_times_the_grant() {
        let limits = UserLimits {
            tokens_per_day: 410,
            ..limits()
        };
        let org = OrgLedger::new(0);
        let mut book = Book::default();
        let mut r = request("n4", limits);
        r.choices = 4;
        let grant = book.admit(r, T0, &org).unwrap();
        assert_eq!(grant.max_tokens, 100, "(410 - 10) / 4");
        assert_eq!(book.tokens_running(), 410);
        let mut r = request("n2", limits);
        r.choices = 2;
        assert_eq!(
            book.admit(r, T0, &org).unwrap_err().code,
            ErrorCode::TokensPerDay
        );
    }

    /// A store's copy kept current by moving the minute log's ends equals the book's state,
    /// through admissions, expiries, resets and saves skipped (then the whole log is copied).
    #[test]
    fn saving_only_the_minute_logs_changes_keeps_an_equal_copy() {
        let limits = UserLimits {
            requests_per_minute: 1_000_000,
            requests_per_day: 1_000_000,
            max_concurrent_streams: 1_000_000,
            ..limits()
        };
        let org = OrgLedger::new(0);
        let mut book = Book::default();
        let mut saved = book.state().clone();
        let mut saved_at = book.minute_changes();
        let mut now = T0;
        for i in 0..3_000u64 {
            // Bursts and gaps: some steps expire part of the log, some all of it.
            now += match i % 97 {
                0 => 61_000,
                n if n % 7 == 0 => 9_000,
                _ => 40,
            };
            let id = format!("r{i}");
            book.admit(request(&id, limits), now, &org).unwrap();
            book.settle(&id, Usage::default(), Outcome::Completed, now, &org);
            if i % 501 == 0 {
                book.reset(&[Window::Minute], now);
            }
            // Some saves are skipped (the next one moves more), and one copy is stale on
            // purpose (the whole log is copied then).
            if i % 5 == 3 {
                continue;
            }
            if i == 1_234 {
                saved.minute.push_back(1);
            }
            let changes = book.minute_changes();
            book.state()
                .update_saved(&mut saved, changes.since(saved_at));
            saved_at = changes;
            assert_eq!(&saved, book.state(), "step {i}");
        }
    }

    fn code(result: Result<Grant, ApiError>) -> Option<ErrorCode> {
        result.err().map(|e| e.code)
    }

    #[test]
    fn no_double_burst_at_a_minute_boundary() {
        let limits = UserLimits {
            requests_per_minute: 60,
            max_concurrent_streams: 1000,
            ..limits()
        };
        let org = OrgLedger::new(0);
        let mut book = Book::default();
        let at = T0 + 59_900;
        for i in 0..60 {
            assert!(book
                .admit(request(&format!("a{i}"), limits), at, &org)
                .is_ok());
        }
        // 0.2 s later a fixed window would have reset; the rolling one has not.
        for i in 0..60 {
            let refused = book.admit(request(&format!("b{i}"), limits), at + 200, &org);
            assert_eq!(code(refused), Some(ErrorCode::RequestsPerMinute));
        }
        let refused = book
            .admit(request("c", limits), at + 59_999, &org)
            .unwrap_err();
        assert_eq!(refused.retry_after_secs, Some(1));
        assert!(book.admit(request("d", limits), at + 60_000, &org).is_ok());
    }

    #[test]
    fn settlement_replaces_the_reservation_once() {
        let org = OrgLedger::new(0);
        let mut book = Book::default();
        let grant = book.admit(request("r1", limits()), T0, &org).unwrap();
        assert_eq!(grant.max_tokens, 100);
        assert_eq!(book.tokens_running(), 110, "input + max_tokens reserved");
        let usage = Usage {
            input_tokens: 10,
            output_tokens: 7,
        };
        book.settle("r1", usage, Outcome::Completed, T0, &org);
        book.settle("r1", usage, Outcome::Completed, T0, &org);
        assert_eq!(book.tokens_running(), 17);
        assert_eq!(book.state.output_tokens, 7);
        assert_eq!(book.state.spend_today_micro_usd, 25 + 70);
        assert_eq!(
            org.spent(day_key(T0)),
            95,
            "the org ledger follows the final cost"
        );
    }

    /// The relay's default batch bounds.
    const BATCH: Batch = Batch { min: 16, max: 256 };
    /// An ask for one token (the chunk in hand) in the default batches.
    const ASK: Ask = Ask {
        needed: 1,
        batch: BATCH,
    };

    /// A stream of up to 1,000 output tokens asking for allowances in the default batches.
    fn stream(id: &str, limits: UserLimits) -> AdmitRequest {
        AdmitRequest {
            max_tokens: 1000,
            batch: BATCH,
            ..request(id, limits)
        }
    }

    /// Reports `used` tokens and asks for an allowance covering `needed`.
    fn meter(book: &mut Book, id: &str, used: u64, needed: u64, limits: &UserLimits) -> u64 {
        let org = OrgLedger::new(0);
        book.meter(
            id,
            used,
            Ask {
                needed,
                batch: BATCH,
            },
            limits,
            T0,
            &org,
        )
    }

    #[test]
    fn a_stream_relays_within_allowances_up_to_the_daily_cap_exactly() {
        // Input 25 micro-USD, output 10 a token: the cap leaves 100 output tokens.
        let limits = UserLimits {
            daily_cap_micro_usd: 1_025,
            ..limits()
        };
        let org = OrgLedger::new(0);
        let mut book = Book::default();
        let grant = book.admit(stream("a", limits), T0, &org).unwrap();
        // Half the headroom (100 tokens), promised at once.
        assert_eq!(grant.allowance, 50);
        assert_eq!(book.open_request("a").unwrap().promised_tokens, 50);
        // Each report takes what was used and grants half of what is left, down to the small
        // batch, then the rest.
        assert_eq!(meter(&mut book, "a", 50, 1, &limits), 25);
        assert_eq!(meter(&mut book, "a", 25, 1, &limits), 16);
        assert_eq!(meter(&mut book, "a", 16, 1, &limits), 9);
        assert_eq!(meter(&mut book, "a", 9, 1, &limits), 0, "the cap: stop");
        assert_eq!(book.spend_today_running(), 1_025, "exactly the cap");
        // A chunk of 5 tokens with 3 left is granted the 3 (the relay trims it to them).
        let limits = UserLimits {
            daily_cap_micro_usd: 1_055,
            ..limits
        };
        assert_eq!(meter(&mut book, "a", 0, 5, &limits), 3);
        let refused = book.admit(stream("b", limits), T0, &org).unwrap_err();
        assert_eq!(refused.code, ErrorCode::DailyBudget);
        assert!(!refused.final_answer, "only the promise stands in the way");
    }

    #[test]
    fn allowances_are_promised_spend_that_admission_and_other_streams_leave_alone() {
        let limits = UserLimits {
            daily_cap_micro_usd: 4_025,
            ..limits()
        };
        let org = OrgLedger::new(0);
        let mut book = Book::default();
        // (4,025 − 25) ÷ 2 at 10 a token: 200 tokens, 2,000 micro-USD promised.
        assert_eq!(
            book.admit(stream("a", limits), T0, &org).unwrap().allowance,
            200
        );
        // A prompt that fits the spend but not the spend plus a's promise is refused, as
        // "retry soon" (the promise ends within a batch)...
        let big = AdmitRequest {
            estimated_input_tokens: 1_300, // 3,250: 25 + 3,250 ≤ 4,025 < + 2,000
            ..stream("b", limits)
        };
        let refused = book.admit(big, T0, &org).unwrap_err();
        assert_eq!(refused.code, ErrorCode::DailyBudget);
        assert_eq!(refused.retry_after_secs, Some(1));
        assert!(!refused.final_answer);
        // ...a small one is admitted, and its allowance leaves a's promise alone:
        // (4,025 − 50 − 2,000) at 10 a token = 197 tokens, ÷ 2 open ÷ 2 → 49.
        assert_eq!(
            book.admit(stream("c", limits), T0, &org).unwrap().allowance,
            49
        );
        // Both use all they were allowed and ask for more: never past the cap.
        let a = meter(&mut book, "a", 200, 1, &limits);
        let c = meter(&mut book, "c", 49, 1, &limits);
        assert!(a > 0 && c > 0);
        let promised: u64 = ["a", "c"]
            .iter()
            .map(|id| book.open_request(id).unwrap().promised_cost())
            .sum();
        assert!(book.spend_today_running() + promised <= 4_025);
    }

    #[test]
    fn a_non_streamed_request_is_granted_only_the_output_its_budget_covers() {
        let limits = UserLimits {
            daily_cap_micro_usd: 525,
            ..limits()
        };
        let org = OrgLedger::new(0);
        let mut book = Book::default();
        let whole = |id: &str| AdmitRequest {
            stream: false,
            ..request(id, limits)
        };
        // 525 − 25 input leaves 50 output tokens; the whole grant is promised.
        let grant = book.admit(whole("a"), T0, &org).unwrap();
        assert_eq!((grant.max_tokens, grant.allowance), (50, 50));
        // The next one cannot have even the smallest grant (16) beside that promise.
        let refused = book.admit(whole("b"), T0, &org).unwrap_err();
        assert_eq!(refused.code, ErrorCode::DailyBudget);
        assert!(!refused.final_answer);
        let used = Usage {
            input_tokens: 10,
            output_tokens: 30,
        };
        book.settle("a", used, Outcome::Completed, T0, &org);
        // 525 − 325 − 25 = 175: 17 tokens.
        assert_eq!(book.admit(whole("b"), T0, &org).unwrap().max_tokens, 17);
        book.settle("b", used, Outcome::Completed, T0, &org);
        // Nothing left for 16 output tokens: refused for good.
        let refused = book.admit(whole("c"), T0, &org).unwrap_err();
        assert_eq!(refused.code, ErrorCode::DailyBudget);
        assert!(refused.final_answer);
    }

    #[test]
    fn the_org_cap_is_shared_by_every_user_s_allowances() {
        let org = OrgLedger::new(1_000);
        let day = day_key(T0);
        let mut alice = Book::default();
        let mut bob = Book::default();
        // Alice: 25 input, then half the org's 975 (48 tokens).
        assert_eq!(
            alice
                .admit(stream("a", limits()), T0, &org)
                .unwrap()
                .allowance,
            48
        );
        // Bob: what is free beside alice's promise, 1,000 − 50 − 480 = 470, ÷ 2 → 23.
        assert_eq!(
            bob.admit(stream("b", limits()), T0, &org)
                .unwrap()
                .allowance,
            23
        );
        assert_eq!(org.spent(day) + org.promised(day), 50 + 480 + 230);
        // They use it all and ask again until the cap: the sum never passes it.
        let (mut used_a, mut used_b, mut next_a, mut next_b) = (48, 23, 48, 23);
        while next_a + next_b > 0 {
            next_a = alice.meter("a", next_a, ASK, &limits(), T0, &org);
            next_b = bob.meter("b", next_b, ASK, &limits(), T0, &org);
            used_a += next_a;
            used_b += next_b;
            assert!(org.spent(day) + org.promised(day) <= 1_000);
        }
        assert_eq!(
            50 + 10 * (used_a + used_b),
            1_000,
            "every micro-USD, no more"
        );
        let refused = bob.admit(stream("b2", limits()), T0, &org).unwrap_err();
        assert_eq!(refused.code, ErrorCode::OrgDailyBudget);
        // Settling for less than was metered gives the difference back.
        let cut = Usage {
            input_tokens: 10,
            output_tokens: 2,
        };
        alice.settle("a", cut, Outcome::CutBudget, T0, &org);
        assert_eq!(org.spent(day), 1_000 - 10 * (used_a - 2));
        assert_eq!(org.promised(day), 0);
        assert!(bob.admit(stream("b2", limits()), T0, &org).is_ok());
    }

    #[test]
    fn a_stream_that_crosses_midnight_is_charged_to_its_admission_day() {
        let org = OrgLedger::new(0);
        let mut book = Book::default();
        book.admit(request("late", limits()), T0 + 11 * 3_600_000, &org)
            .unwrap();
        let next_day = next_day_ms(T0) + 5_000;
        let usage = Usage {
            input_tokens: 10,
            output_tokens: 50,
        };
        book.settle("late", usage, Outcome::Completed, next_day, &org);
        let report = book.report(&limits(), next_day);
        assert_eq!(report.tokens_per_day.used, 0);
        assert_eq!(report.requests_per_day.used, 0);
        assert_eq!(report.output_tokens, 50);
        assert!(report.monthly_usd.used_usd > 0.0, "same month");
    }

    #[test]
    fn alerts_fire_once_per_window_period() {
        let limits = UserLimits {
            daily_cap_micro_usd: 1000,
            ..limits()
        };
        let org = OrgLedger::new(0);
        let mut book = Book::default();
        book.admit(request("a", limits), T0, &org).unwrap();
        assert!(book.due_alerts(&limits).is_empty());
        book.meter("a", 78, ASK, &limits, T0, &org); // 25 + 780 = 805 ≥ 80 %
        let alerts = book.due_alerts(&limits);
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].window, "daily");
        book.meter("a", 10, ASK, &limits, T0, &org);
        assert!(book.due_alerts(&limits).is_empty(), "once per day");
        book.settle("a", Usage::default(), Outcome::Completed, T0, &org);
        // The next day, spend starts again from zero and may alert again.
        let tomorrow = next_day_ms(T0);
        book.admit(request("b", limits), tomorrow, &org).unwrap();
        book.meter("b", 80, ASK, &limits, tomorrow, &org);
        assert_eq!(book.due_alerts(&limits).len(), 1);
    }

    #[test]
    fn the_concurrency_cap_counts_open_requests() {
        let limits = UserLimits {
            max_concurrent_streams: 2,
            ..limits()
        };
        let org = OrgLedger::new(0);
        let mut book = Book::default();
        book.admit(request("a", limits), T0, &org).unwrap();
        book.admit(request("b", limits), T0, &org).unwrap();
        let refused = book.admit(request("c", limits), T0, &org).unwrap_err();
        assert_eq!(refused.code, ErrorCode::ConcurrentStreams);
        assert_eq!(refused.retry_after_secs, Some(1));
        book.settle("a", Usage::default(), Outcome::ClientGone, T0, &org);
        assert!(book.admit(request("c", limits), T0, &org).is_ok());
    }

    /// The fallback model of the re-price tests: three times the price (10 tokens: 75).
    fn dearer() -> Price {
        price_of(7.5, 30.0)
    }

    #[test]
    fn a_reprice_moves_the_request_to_the_new_price_and_its_settlement_bills_there() {
        let org = OrgLedger::new(0);
        let mut book = Book::default();
        book.admit(request("r1", limits()), T0, &org).unwrap();
        assert_eq!(org.spent(day_key(T0)), 25);

        assert_eq!(book.reprice("r1", dearer(), &limits(), T0, &org), Ok(()));
        let open = book.open_request("r1").unwrap();
        assert_eq!(open.price, dearer());
        assert_eq!(open.reserved_tokens, 110, "the reservation is unchanged");
        assert_eq!(book.tokens_running(), 110);
        assert_eq!(book.spend_today_running(), 75, "75 replaces 25");
        assert_eq!(book.spend_month_running(), 75);
        assert_eq!(org.spent(day_key(T0)), 75, "the org ledger follows");

        let usage = Usage {
            input_tokens: 10,
            output_tokens: 7,
        };
        book.settle("r1", usage, Outcome::Completed, T0, &org);
        assert_eq!(book.state.spend_today_micro_usd, 75 + 210);
        assert_eq!(book.state.spend_month_micro_usd, 75 + 210);
        assert_eq!(org.spent(day_key(T0)), 285);

        // A cheaper fallback gives the difference back.
        book.admit(request("r2", limits()), T0, &org).unwrap();
        book.reprice("r2", dearer(), &limits(), T0, &org).unwrap();
        assert_eq!(book.reprice("r2", price(), &limits(), T0, &org), Ok(()));
        assert_eq!(book.spend_today_running(), 285 + 25);
        assert_eq!(org.spent(day_key(T0)), 285 + 25);
    }

    #[test]
    fn a_reprice_past_the_daily_cap_is_refused_and_changes_nothing() {
        let limits = UserLimits {
            daily_cap_micro_usd: 100,
            ..limits()
        };
        let org = OrgLedger::new(0);
        let mut book = Book::default();
        book.admit(request("a", limits), T0, &org).unwrap();
        book.admit(request("b", limits), T0, &org).unwrap();
        let before = book.open_request("b").cloned();
        // 25 + 100 > 100.
        assert_eq!(
            book.reprice("b", price_of(10.0, 10.0), &limits, T0, &org),
            Err(NoReprice::Cap(Refusal::DailySpend))
        );
        assert_eq!(book.open_request("b").cloned(), before);
        assert_eq!(book.spend_today_running(), 50);
        assert_eq!(org.spent(day_key(T0)), 50);
        // 25 + 75 = 100: exactly the cap passes.
        assert_eq!(book.reprice("b", dearer(), &limits, T0, &org), Ok(()));
        assert_eq!(book.spend_today_running(), 100);
    }

    #[test]
    fn a_reprice_past_the_monthly_cap_is_refused() {
        let limits = UserLimits {
            daily_cap_micro_usd: 10_000,
            monthly_cap_micro_usd: 90,
            ..limits()
        };
        let org = OrgLedger::new(0);
        let mut book = Book::default();
        // Two days ago, this month: 25 settled.
        let earlier = T0 - 2 * 86_400_000;
        book.admit(request("old", limits), earlier, &org).unwrap();
        let input_only = Usage {
            input_tokens: 10,
            output_tokens: 0,
        };
        book.settle("old", input_only, Outcome::Completed, earlier, &org);
        book.admit(request("r", limits), T0, &org).unwrap();
        let before = book.open_request("r").cloned();
        // Today 75 ≤ 10,000; this month 25 + 75 > 90.
        assert_eq!(
            book.reprice("r", dearer(), &limits, T0, &org),
            Err(NoReprice::Cap(Refusal::MonthlySpend))
        );
        assert_eq!(book.open_request("r").cloned(), before);
        assert_eq!(book.spend_month_running(), 50);
    }

    #[test]
    fn a_reprice_leaves_the_spend_promised_to_another_stream_alone() {
        let limits = UserLimits {
            daily_cap_micro_usd: 4_025,
            ..limits()
        };
        let org = OrgLedger::new(0);
        let mut book = Book::default();
        book.admit(stream("a", limits), T0, &org).unwrap();
        // a used 16 tokens (185 spent) and is promised half of the other 3,840: 192 tokens.
        assert_eq!(meter(&mut book, "a", 16, 1, &limits), 192);
        book.admit(request("c", limits), T0, &org).unwrap();
        let before = book.open_request("c").cloned();
        // 10 tokens at $350 / M: 3,500. 185 + 3,500 ≤ 4,025 < + 1,920.
        let pricey = price_of(350.0, 10.0);
        assert_eq!(
            book.reprice("c", pricey, &limits, T0, &org),
            Err(NoReprice::Cap(Refusal::SpendInFlight))
        );
        assert_eq!(book.open_request("c").cloned(), before);
        // 185 + 1,920 + 1,920 = 4,025: within.
        assert_eq!(
            book.reprice("c", price_of(192.0, 10.0), &limits, T0, &org),
            Ok(())
        );
        // a streamed already: what it relayed is the first model's, at its price.
        assert_eq!(
            book.reprice("a", dearer(), &limits, T0, &org),
            Err(NoReprice::Metered)
        );
    }

    #[test]
    fn a_reprice_drops_a_stream_s_allowance_and_keeps_a_whole_reply_s_grant_at_the_new_price() {
        let limits = UserLimits {
            daily_cap_micro_usd: 2_000,
            ..limits()
        };
        let org = OrgLedger::new(0);
        let mut book = Book::default();
        book.admit(stream("s", limits), T0, &org).unwrap();
        assert!(book.open_request("s").unwrap().promised_tokens > 0);
        assert_eq!(book.reprice("s", dearer(), &limits, T0, &org), Ok(()));
        assert_eq!(
            book.open_request("s").unwrap().promised_tokens,
            0,
            "asks again"
        );
        let whole = AdmitRequest {
            stream: false,
            ..request("w", limits)
        };
        // 2,000 − 75 − 25: 190 output tokens at 10, but max_tokens 100: 1,000 promised.
        assert_eq!(book.admit(whole, T0, &org).unwrap().allowance, 100);
        // At $30 / M output the grant would cost 3,000: refused.
        assert_eq!(
            book.reprice("w", dearer(), &limits, T0, &org),
            Err(NoReprice::Cap(Refusal::SpendInFlight))
        );
        // At $15 / M: 75 + 25 + 1,500 ≤ 2,000.
        assert_eq!(
            book.reprice("w", price_of(2.5, 15.0), &limits, T0, &org),
            Ok(())
        );
        assert_eq!(book.open_request("w").unwrap().promised_cost(), 1_500);
    }

    #[test]
    fn a_reprice_past_the_org_cap_is_refused() {
        let org = OrgLedger::new(100);
        let mut alice = Book::default();
        let mut bob = Book::default();
        alice.admit(request("a", limits()), T0, &org).unwrap();
        bob.admit(request("b", limits()), T0, &org).unwrap();
        let before = alice.open_request("a").cloned();
        // 50 − 25 + 100 > 100.
        assert_eq!(
            alice.reprice("a", price_of(10.0, 10.0), &limits(), T0, &org),
            Err(NoReprice::Cap(Refusal::OrgDaily))
        );
        assert_eq!(alice.open_request("a").cloned(), before);
        assert_eq!(org.spent(day_key(T0)), 50);
        // 50 − 25 + 75 = 100: at the cap, which refuses the next admission.
        assert_eq!(alice.reprice("a", dearer(), &limits(), T0, &org), Ok(()));
        assert_eq!(org.spent(day_key(T0)), 100);
        let refused = bob.admit(request("b2", limits()), T0, &org).unwrap_err();
        assert_eq!(refused.code, ErrorCode::OrgDailyBudget);
    }

    #[test]
    fn an_unknown_or_settled_request_is_not_repriced() {
        let org = OrgLedger::new(0);
        let mut book = Book::default();
        assert_eq!(
            book.reprice("nope", dearer(), &limits(), T0, &org),
            Err(NoReprice::Unknown)
        );
        book.admit(request("r", limits()), T0, &org).unwrap();
        book.settle("r", Usage::default(), Outcome::ClientGone, T0, &org);
        assert_eq!(
            book.reprice("r", dearer(), &limits(), T0, &org),
            Err(NoReprice::Unknown)
        );
        assert_eq!(book.spend_today_running(), 0);
        assert_eq!(org.spent(day_key(T0)), 0);
    }

    /// One simulated request of the property test, as the relay would run it.
    struct Sim {
        user: usize,
        id: String,
        stream: bool,
        /// Output the grant allows (`max_tokens × n`), relayed so far, and the allowance held.
        cap: u64,
        relayed: u64,
        unreported: u64,
        allowance: u64,
        input: u64,
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        /// Random mixes of streams and whole replies from three users under random daily,
        /// monthly and organisation caps, relaying chunks of random sizes within their
        /// allowances (asking before relaying past them, trimming a chunk to a short answer and
        /// stopping there): at every step, spend plus promises stays within every cap, and what
        /// is billed is what was relayed.
        #[test]
        fn streams_relaying_within_allowances_never_pass_a_cap(
            daily in 0u64..30_000,
            monthly in 0u64..40_000,
            org_cap in 0u64..60_000,
            out_nano in 1u64..30_000,
            in_nano in 0u64..5_000,
            min in 0u64..32,
            extra in 0u64..256,
            requests in proptest::collection::vec(
                (0usize..3, 0u64..300, 1u32..600, 1u64..4, proptest::bool::weighted(0.8)),
                1..16,
            ),
            seed in 1u64..u64::MAX,
        ) {
            let price = price_of(in_nano as f64 / 1000.0, out_nano as f64 / 1000.0);
            let limits = UserLimits {
                daily_cap_micro_usd: daily,
                monthly_cap_micro_usd: monthly,
                max_concurrent_streams: 100,
                tokens_per_day: 10_000_000,
                min_granted_tokens: 1,
                ..limits()
            };
            let batch = Batch { min, max: min + extra };
            let org = OrgLedger::new(org_cap);
            let mut books: Vec<Book> = (0..3).map(|_| Book::default()).collect();
            let mut open: Vec<Sim> = Vec::new();
            let mut rng = seed;
            let mut next = |bound: u64| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng % bound.max(1)
            };
            let check = |books: &[Book]| {
                for book in books {
                    let (promised_today, promised_month) = book.promised(None);
                    assert!(book.spend_today_running() + promised_today <= daily);
                    assert!(book.spend_month_running() + promised_month <= monthly);
                }
                let day = day_key(T0);
                assert!(org.spent(day) + org.promised(day) <= org_cap);
            };
            let mut pending = requests.into_iter().enumerate();
            loop {
                // Admit the next request now and then, and always when nothing runs.
                if open.is_empty() || next(4) == 0 {
                    let Some((i, (user, input, max_tokens, choices, stream))) = pending.next()
                    else {
                        if open.is_empty() {
                            break;
                        }
                        continue;
                    };
                    let request = AdmitRequest {
                        request_id: format!("r{i}"),
                        estimated_input_tokens: input,
                        max_tokens,
                        choices,
                        stream,
                        price,
                        limits,
                        batch,
                    };
                    if let Ok(grant) = books[user].admit(request, T0, &org) {
                        open.push(Sim {
                            user,
                            id: format!("r{i}"),
                            stream,
                            cap: u64::from(grant.max_tokens) * choices,
                            relayed: 0,
                            unreported: 0,
                            allowance: grant.allowance,
                            input,
                        });
                    }
                    check(&books);
                    continue;
                }
                let at = next(open.len() as u64) as usize;
                let sim = &mut open[at];
                let book = &mut books[sim.user];
                let chunk = (1 + next(6)).min(sim.cap - sim.relayed);
                let ends = if !sim.stream {
                    // A whole reply: any output within its grant, charged at its end.
                    sim.relayed = next(sim.cap + 1);
                    true
                } else if chunk == 0 || next(20) == 0 {
                    true // the reply finished, or the client left
                } else if chunk <= sim.allowance {
                    sim.allowance -= chunk;
                    sim.unreported += chunk;
                    sim.relayed += chunk;
                    false
                } else {
                    let used = std::mem::take(&mut sim.unreported);
                    let ask = Ask {
                        needed: chunk,
                        batch,
                    };
                    let allowance = book.meter(&sim.id, used, ask, &limits, T0, &org);
                    let relayed = allowance.min(chunk);
                    sim.allowance = allowance - relayed;
                    sim.unreported = relayed;
                    sim.relayed += relayed;
                    allowance < chunk // a cap: the chunk trimmed, the stream cut
                };
                if ends {
                    let sim = open.swap_remove(at);
                    let usage = Usage {
                        input_tokens: sim.input,
                        output_tokens: sim.relayed,
                    };
                    books[sim.user].settle(&sim.id, usage, Outcome::Completed, T0, &org);
                }
                check(&books);
            }
            // Everything settled: billed = relayed, within every cap.
            for book in &books {
                assert!(book.state.spend_today_micro_usd <= daily);
                assert!(book.state.spend_month_micro_usd <= monthly);
            }
            assert!(org.spent(day_key(T0)) <= org_cap);
            assert_eq!(org.promised(day_key(T0)), 0);
        }
    }
}
