//! Prometheus metrics: the fixed metric names, their descriptions and histogram buckets, the
//! bounding of client-supplied label values, and the text exposition served on `/metrics`.
//!
//! The `metrics` crate's recorder is process-wide: [`Metrics::install`] installs the Prometheus
//! recorder (without its HTTP listener; the gateway serves [`Metrics::render`] from its own
//! route) on the first call and every later call shares it. So, in one process (in-process
//! tests running several gateways), **all instances share every counter, gauge and histogram,
//! including `tollgate_cost_usd_total`**: tests must compare deltas, ideally under label values
//! unique to the test (a plan name, say). Only two things are per instance: the [`LabelSets`]
//! that bound client label values, and the per-user cost table, so each instance renders its own
//! `tollgate_user_cost_usd_total` section.
//!
//! Label cardinality is bounded: `model` and `feature` come from the client and are mapped to
//! `other` unless configured ([`LabelSets`]); `user` is bounded by the per-user table; `plan`,
//! `outcome`, `reason`, `window`, `direction` and `kind` must be server-side values (config or
//! code), never raw client input.
//!
//! Costs are exact: they are kept in integer micro-USD and exposed as USD decimals. Because the
//! `metrics` crate's counters are integers, the two cost families are kept here and appended to
//! the recorder's output rather than going through the recorder.
//!
//! This module reaches into nothing else of the crate; callers hand it plain values.

use rustc_hash::FxBuildHasher;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use arc_swap::ArcSwap;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Histogram, Unit,
};
use metrics_exporter_prometheus::{
    BuildError, Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use super::user_cost::{escape_label_value, format_micro_usd, write_family_header, UserCostTable};
use crate::accounting::{CutReason, UpstreamFailure};
use crate::error::ErrorCode;
use crate::guardrails::Check;

/// Requests that finished, by `feature`, `plan`, `model` and `outcome`.
pub const REQUESTS_TOTAL: &str = "tollgate_requests_total";
/// Tokens, by `direction` (`input`/`output`), `feature`, `plan` and `model`.
pub const TOKENS_TOTAL: &str = "tollgate_tokens_total";
/// Cost in USD, by `feature`, `plan` and `model`.
pub const COST_USD_TOTAL: &str = "tollgate_cost_usd_total";
/// Cost in USD per user (top spenders; the rest under `user="_other"`).
pub const USER_COST_USD_TOTAL: &str = "tollgate_user_cost_usd_total";
/// Requests rejected before reaching upstream, by `reason` (the error code).
pub const REJECTIONS_TOTAL: &str = "tollgate_rejections_total";
/// Streams cut short, by `reason` (`token_cap`, `budget`, `deadline`, `guardrail`,
/// `upstream_failed`, `client_gone`).
pub const STREAM_CUTS_TOTAL: &str = "tollgate_stream_cuts_total";
/// Budget alerts raised, by `window` (`daily`/`monthly`).
pub const BUDGET_ALERTS_TOTAL: &str = "tollgate_budget_alerts_total";
/// Streams currently open.
pub const ACTIVE_STREAMS: &str = "tollgate_active_streams";
/// Request duration, start to last byte (or cut), in seconds.
pub const REQUEST_DURATION_SECONDS: &str = "tollgate_request_duration_seconds";
/// Time from request start to the first token relayed to the client, in seconds.
pub const TIME_TO_FIRST_TOKEN_SECONDS: &str = "tollgate_time_to_first_token_seconds";
/// Upstream failures, by `kind`.
pub const UPSTREAM_ERRORS_TOTAL: &str = "tollgate_upstream_errors_total";
/// Requests moved to a fallback model after a failure before the first token, by `from` and
/// `to` (models of the price table).
pub const UPSTREAM_FALLBACKS_TOTAL: &str = "tollgate_upstream_fallbacks_total";
/// counter {check = prompt_injection | secret | pii | canary, action = block | flag}
pub const GUARDRAIL_EVENTS_TOTAL: &str = "tollgate_guardrail_events_total";
/// histogram: characters an output-scanned stream released later than they arrived (held back
/// because a secret or the canary could have been starting there), one sample per stream.
pub const GUARDRAIL_HELD_BACK_CHARS: &str = "tollgate_guardrail_held_back_chars";
/// Upper bounds of [`GUARDRAIL_HELD_BACK_CHARS`]: 0 (the usual stream) … a few held-back keys.
pub const HELD_BACK_CHARS_BUCKETS: &[f64] = &[
    0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0,
];
/// Redis mode: whether Redis answers (1) or the circuit is open (0).
pub const REDIS_UP: &str = "tollgate_redis_up";
/// Redis mode: failed Redis calls, by operation.
pub const REDIS_ERRORS_TOTAL: &str = "tollgate_redis_errors_total";
/// Redis mode: admissions decided locally while Redis was away, by decision
/// (`admitted`, `refused`, `fail_closed`).
pub const OUTAGE_DECISIONS_TOTAL: &str = "tollgate_outage_decisions_total";
/// Redis mode: settlements waiting to be replayed into Redis.
pub const REDIS_JOURNAL_PENDING: &str = "tollgate_redis_journal_pending";
/// Redis mode: how Redis persists, as a state set: 1 for the current `mode` (`aof`, `rdb`,
/// `none`, `unknown`), 0 for the others.
pub const REDIS_PERSISTENCE: &str = "tollgate_redis_persistence";
/// Redis mode: checks that found tollgate's keys gone from Redis (a restart without
/// persistence, a flush).
pub const REDIS_STATE_LOST_TOTAL: &str = "tollgate_redis_state_lost_total";
/// Client connections open now (`server.max_connections` bounds it).
pub const OPEN_CONNECTIONS: &str = "tollgate_open_connections";
/// Client connections closed at once because `server.max_connections` were open.
pub const CONNECTIONS_REFUSED_TOTAL: &str = "tollgate_connections_refused_total";
/// Config reloads (SIGHUP, `POST /admin/v1/reload`), by `result` (`applied`, `rejected`).
pub const CONFIG_RELOADS_TOTAL: &str = "tollgate_config_reloads_total";
/// The config generation serving new requests: 1 at start-up, +1 per applied reload.
pub const CONFIG_GENERATION: &str = "tollgate_config_generation";

/// Upper bounds (seconds) of both latency histograms: 5 ms … 30 s.
pub const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0,
];

/// The label value that replaces any client-supplied value outside the configured sets.
pub const OTHER_LABEL: &str = "other";

const COST_HELP: &str = "Cost of requests in USD, by feature, plan and model.";
const USER_COST_HELP: &str =
    "Cost of requests in USD per user: the biggest spenders, everyone else under user=\"_other\".";

/// Label values allowed from clients: anything else becomes `"other"`.
///
/// `models` are the pricing table's model names; `features` every feature named in any plan.
#[derive(Clone, Debug, Default)]
pub struct LabelSets {
    models: HashSet<String>,
    features: HashSet<String>,
}

impl LabelSets {
    /// Bounds `model` labels to `models` and `feature` labels to `features`.
    pub fn new(
        models: impl IntoIterator<Item = String>,
        features: impl IntoIterator<Item = String>,
    ) -> Self {
        Self {
            models: models.into_iter().collect(),
            features: features.into_iter().collect(),
        }
    }

    /// `m` if it is a configured model (a mock model's knob suffix, `mock-gpt:tokens=5`, is
    /// dropped the way pricing drops it), `"other"` otherwise.
    pub fn model<'a>(&'a self, m: &'a str) -> &'a str {
        if self.models.contains(m) {
            return m;
        }
        match m.split_once(':') {
            Some((base, _)) if base.starts_with("mock-") && self.models.contains(base) => base,
            _ => OTHER_LABEL,
        }
    }

    /// `f` if it is a configured feature, `"other"` otherwise.
    pub fn feature<'a>(&'a self, f: &'a str) -> &'a str {
        if self.features.contains(f) {
            f
        } else {
            OTHER_LABEL
        }
    }
}

/// What a guardrail did to a request (the `action` label of `tollgate_guardrail_events_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardrailAction {
    /// The request or reply was stopped.
    Block,
    /// The request went on, marked in its log line.
    Flag,
}

impl GuardrailAction {
    pub const ALL: [GuardrailAction; 2] = [GuardrailAction::Block, GuardrailAction::Flag];

    pub fn as_str(self) -> &'static str {
        match self {
            GuardrailAction::Block => "block",
            GuardrailAction::Flag => "flag",
        }
    }
}

/// Everything one finished request contributes.
#[derive(Clone, Debug)]
pub struct RequestRecord<'a> {
    /// Feature as sent by the client (bounded by [`LabelSets`] here).
    pub feature: &'a str,
    /// Plan name from config.
    pub plan: &'a str,
    /// Model as requested (bounded by [`LabelSets`] here).
    pub model: &'a str,
    /// User id; feeds the bounded per-user cost table only.
    pub user_id: &'a str,
    /// How the request ended (`completed`, `cut_token_cap`, …, `rejected`).
    pub outcome: &'a str,
    /// Input tokens (estimated).
    pub input_tokens: u64,
    /// Output tokens relayed.
    pub output_tokens: u64,
    /// Cost in micro-USD.
    pub cost_micro_usd: u64,
    /// Start to last byte (or cut).
    pub duration: std::time::Duration,
    /// Start to first token, if any token was relayed.
    pub ttft: Option<std::time::Duration>,
}

/// What is shared by every [`Metrics`] in the process.
#[derive(Debug)]
struct Global {
    handle: PrometheusHandle,
    /// Set only when another global recorder was already installed: then we record into this
    /// private recorder instead, so `/metrics` still works.
    local: Option<PrometheusRecorder>,
    /// micro-USD by (feature, plan, model); bounded because all three labels are.
    cost: Mutex<BTreeMap<(String, String, String), u64>>,
    /// The request counters of each label set seen, by a hash of the labels; bounded because
    /// every label is.
    request_series: Mutex<HashMap<u64, Vec<Arc<RequestSeries>>, FxBuildHasher>>,
    /// The unlabelled latency histograms, resolved once.
    request_duration: Histogram,
    time_to_first_token: Histogram,
}

/// The counters one finished request moves, for one (feature, plan, model, outcome): resolved
/// once, where the `counter!` macro would build three labelled keys (twelve label strings),
/// hash them and search the registry on every request.
#[derive(Debug)]
struct RequestSeries {
    labels: [String; 4],
    requests: Counter,
    input_tokens: Counter,
    output_tokens: Counter,
}

static GLOBAL: OnceLock<Global> = OnceLock::new();

impl Global {
    fn get() -> &'static Global {
        GLOBAL.get_or_init(Global::install)
    }

    fn install() -> Global {
        let builder = match builder_with_buckets() {
            Ok(builder) => builder,
            Err(error) => {
                tracing::warn!(%error, "histogram buckets rejected; latencies export as summaries");
                PrometheusBuilder::new()
            }
        };
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let local = match metrics::set_global_recorder(recorder) {
            Ok(()) => None,
            Err(error) => {
                tracing::warn!(
                    %error,
                    "another metrics recorder is installed; tollgate records into its own"
                );
                Some(error.into_inner())
            }
        };
        let (request_duration, time_to_first_token) = in_recorder(local.as_ref(), || {
            (
                histogram!(REQUEST_DURATION_SECONDS),
                histogram!(TIME_TO_FIRST_TOKEN_SECONDS),
            )
        });
        let global = Global {
            handle,
            local,
            cost: Mutex::new(BTreeMap::new()),
            request_series: Mutex::new(HashMap::default()),
            request_duration,
            time_to_first_token,
        };
        global.with_recorder(|| {
            describe_all();
            // Register the unlabelled series so `/metrics` shows them (at 0) before any event.
            gauge!(ACTIVE_STREAMS).increment(0.0);
            gauge!(OPEN_CONNECTIONS).increment(0.0);
            counter!(CONNECTIONS_REFUSED_TOTAL).increment(0);
            for result in ["applied", "rejected"] {
                counter!(CONFIG_RELOADS_TOTAL, "result" => result).increment(0);
            }
        });
        global
    }

    /// The request counters of `(feature, plan, model, outcome)`, registered on first use.
    fn request_series(&self, labels: [&str; 4]) -> Arc<RequestSeries> {
        let key = FxBuildHasher.hash_one(labels);
        let mut series = self
            .request_series
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let bucket = series.entry(key).or_default();
        if let Some(found) = bucket.iter().find(|s| s.labels == labels) {
            return Arc::clone(found);
        }
        let [feature, plan, model, outcome] = labels.map(str::to_owned);
        let found = Arc::new(self.with_recorder(|| {
            let tokens = |direction: &'static str| {
                counter!(
                    TOKENS_TOTAL,
                    "direction" => direction,
                    "feature" => feature.clone(),
                    "plan" => plan.clone(),
                    "model" => model.clone(),
                )
            };
            RequestSeries {
                requests: counter!(
                    REQUESTS_TOTAL,
                    "feature" => feature.clone(),
                    "plan" => plan.clone(),
                    "model" => model.clone(),
                    "outcome" => outcome.clone(),
                ),
                input_tokens: tokens("input"),
                output_tokens: tokens("output"),
                labels: [
                    feature.clone(),
                    plan.clone(),
                    model.clone(),
                    outcome.clone(),
                ],
            }
        }));
        bucket.push(Arc::clone(&found));
        found
    }

    /// Runs `f` so that the `metrics` macros inside it reach our recorder.
    fn with_recorder<T>(&self, f: impl FnOnce() -> T) -> T {
        in_recorder(self.local.as_ref(), f)
    }
}

/// Runs `f` so that the `metrics` macros inside it reach `local`, or the global recorder.
fn in_recorder<T>(local: Option<&PrometheusRecorder>, f: impl FnOnce() -> T) -> T {
    match local {
        Some(recorder) => metrics::with_local_recorder(recorder, f),
        None => f(),
    }
}

fn builder_with_buckets() -> Result<PrometheusBuilder, BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(REQUEST_DURATION_SECONDS.to_owned()),
            LATENCY_BUCKETS_SECONDS,
        )?
        .set_buckets_for_metric(
            Matcher::Full(TIME_TO_FIRST_TOKEN_SECONDS.to_owned()),
            LATENCY_BUCKETS_SECONDS,
        )?
        .set_buckets_for_metric(
            Matcher::Full(GUARDRAIL_HELD_BACK_CHARS.to_owned()),
            HELD_BACK_CHARS_BUCKETS,
        )
}

/// Describes every recorder-backed metric once (the cost families are described at render).
fn describe_all() {
    describe_counter!(
        REQUESTS_TOTAL,
        Unit::Count,
        "Requests that finished, by feature, plan, model and outcome."
    );
    describe_counter!(
        TOKENS_TOTAL,
        Unit::Count,
        "Tokens by direction (input, output), feature, plan and model."
    );
    describe_counter!(
        REJECTIONS_TOTAL,
        Unit::Count,
        "Requests rejected before reaching upstream, by reason (error code)."
    );
    describe_counter!(
        STREAM_CUTS_TOTAL,
        Unit::Count,
        "Streams cut short, by reason."
    );
    describe_counter!(
        BUDGET_ALERTS_TOTAL,
        Unit::Count,
        "Budget alerts raised, by window (daily, monthly)."
    );
    describe_gauge!(ACTIVE_STREAMS, Unit::Count, "Streams currently open.");
    describe_histogram!(
        REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Request duration from start to last byte or cut, in seconds."
    );
    describe_histogram!(
        TIME_TO_FIRST_TOKEN_SECONDS,
        Unit::Seconds,
        "Time from request start to the first token relayed, in seconds."
    );
    describe_counter!(
        UPSTREAM_ERRORS_TOTAL,
        Unit::Count,
        "Upstream failures, by kind."
    );
    describe_counter!(
        GUARDRAIL_EVENTS_TOTAL,
        Unit::Count,
        "Guardrail hits, by check and action (block or flag)."
    );
    describe_histogram!(
        GUARDRAIL_HELD_BACK_CHARS,
        Unit::Count,
        "Characters an output-scanned stream released later than they arrived, per stream."
    );
    describe_gauge!(
        REDIS_UP,
        Unit::Count,
        "Redis mode: 1 while Redis answers, 0 while its circuit is open."
    );
    describe_counter!(
        REDIS_ERRORS_TOTAL,
        Unit::Count,
        "Redis mode: failed or timed-out Redis calls, by operation."
    );
    describe_counter!(
        OUTAGE_DECISIONS_TOTAL,
        Unit::Count,
        "Redis mode: admissions decided by the outage policy, by decision."
    );
    describe_gauge!(
        REDIS_JOURNAL_PENDING,
        Unit::Count,
        "Redis mode: settlements kept locally, waiting to be replayed into Redis."
    );
    describe_gauge!(
        REDIS_PERSISTENCE,
        Unit::Count,
        "Redis mode: 1 for how Redis persists (mode aof, rdb, none or unknown), 0 for the others."
    );
    describe_counter!(
        REDIS_STATE_LOST_TOTAL,
        Unit::Count,
        "Redis mode: checks that found tollgate's keys gone from Redis (restart without persistence, flush)."
    );
    describe_gauge!(
        OPEN_CONNECTIONS,
        Unit::Count,
        "Client connections open now."
    );
    describe_counter!(
        CONNECTIONS_REFUSED_TOTAL,
        Unit::Count,
        "Client connections closed on arrival because server.max_connections were open."
    );
    describe_counter!(
        CONFIG_RELOADS_TOTAL,
        Unit::Count,
        "Config reloads (SIGHUP or POST /admin/v1/reload), by result: applied or rejected whole."
    );
    describe_gauge!(
        CONFIG_GENERATION,
        Unit::Count,
        "Config generation serving new requests: 1 at start-up, +1 per applied reload."
    );
}

/// Handle to the gateway's metrics; cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    global: &'static Global,
    /// Swapped whole when a reload adds models or features (sets only grow).
    labels: ArcSwap<LabelSets>,
    users: Mutex<UserCostTable>,
}

impl Metrics {
    /// Content type of [`Metrics::render`]'s output.
    pub const CONTENT_TYPE: &'static str = "text/plain; version=0.0.4; charset=utf-8";

    /// Installs the process-wide recorder on first call (describing every metric once, with
    /// units, HELP text and the histogram buckets); later calls return a handle to the same
    /// recorder. `max_user_series` bounds `tollgate_user_cost_usd_total`; `labels` bounds client
    /// label values. Both are per instance; everything else is shared process-wide.
    pub fn install(max_user_series: usize, labels: LabelSets) -> Self {
        Self {
            inner: Arc::new(Inner {
                global: Global::get(),
                labels: ArcSwap::from_pointee(labels),
                users: Mutex::new(UserCostTable::new(max_user_series)),
            }),
        }
    }

    /// Prometheus text exposition: the recorder's output, then the cost families (in USD).
    pub fn render(&self) -> String {
        let mut out = self.inner.global.handle.render();
        if !out.is_empty() && !out.ends_with("\n\n") {
            out.push('\n');
        }
        write_family_header(&mut out, COST_USD_TOTAL, COST_HELP, "counter");
        {
            let cost = self
                .inner
                .global
                .cost
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for ((feature, plan, model), micro_usd) in cost.iter() {
                let _ = writeln!(
                    out,
                    "{COST_USD_TOTAL}{{feature=\"{}\",plan=\"{}\",model=\"{}\"}} {}",
                    escape_label_value(feature),
                    escape_label_value(plan),
                    escape_label_value(model),
                    format_micro_usd(*micro_usd)
                );
            }
        }
        out.push('\n');
        self.inner
            .users
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .render_into(&mut out, USER_COST_USD_TOTAL, USER_COST_HELP);
        out
    }

    /// Records one finished request: its outcome, tokens, cost (also per user) and latencies.
    pub fn record_request(&self, r: &RequestRecord<'_>) {
        let labels = self.inner.labels.load();
        let feature = labels.feature(r.feature);
        let model = labels.model(r.model);
        let global = &self.inner.global;
        let series = global.request_series([feature, r.plan, model, r.outcome]);
        series.requests.increment(1);
        series.input_tokens.increment(r.input_tokens);
        series.output_tokens.increment(r.output_tokens);
        global.request_duration.record(r.duration.as_secs_f64());
        if let Some(ttft) = r.ttft {
            global.time_to_first_token.record(ttft.as_secs_f64());
        }
        {
            let mut cost = self
                .inner
                .global
                .cost
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let total = cost
                .entry((feature.to_owned(), r.plan.to_owned(), model.to_owned()))
                .or_insert(0);
            *total = total.saturating_add(r.cost_micro_usd);
        }
        // Only spenders get a per-user series (refusals before authentication have no user).
        if r.cost_micro_usd > 0 && !r.user_id.is_empty() {
            self.inner
                .users
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .add(r.user_id, r.cost_micro_usd);
        }
    }

    /// Creates the labelled counters whose values are known in advance at zero, so the first
    /// event shows in `rate()` / `increase()` (a series that appears with 1 counts as 0): every
    /// refusal code (the 4xx rows of the error table), cut reason and upstream failure kind.
    pub fn declare_known_labels(&self) {
        let refusals = ErrorCode::ALL
            .iter()
            .filter(|code| (400..500).contains(&code.status()));
        self.inner.global.with_recorder(|| {
            for code in refusals {
                counter!(REJECTIONS_TOTAL, "reason" => code.as_str()).increment(0);
            }
            for reason in CutReason::ALL {
                counter!(STREAM_CUTS_TOTAL, "reason" => reason.as_str()).increment(0);
            }
            for kind in UpstreamFailure::ALL {
                counter!(UPSTREAM_ERRORS_TOTAL, "kind" => kind.as_str()).increment(0);
            }
            for window in ["daily", "monthly"] {
                counter!(BUDGET_ALERTS_TOTAL, "window" => window).increment(0);
            }
        });
    }

    /// Adds a reloaded config's models and features to the label sets (series already
    /// exported keep their labels: the sets never shrink).
    pub fn extend_labels(&self, more: LabelSets) {
        let mut sets = LabelSets::clone(&self.inner.labels.load());
        sets.models.extend(more.models);
        sets.features.extend(more.features);
        self.inner.labels.store(Arc::new(sets));
    }

    /// The config generation serving new requests.
    pub fn record_generation(&self, generation: u64) {
        self.inner
            .global
            .with_recorder(|| gauge!(CONFIG_GENERATION).set(generation as f64));
    }

    /// Counts a config reload; `applied` false = rejected whole.
    pub fn record_reload(&self, applied: bool, generation: u64) {
        let result = if applied { "applied" } else { "rejected" };
        self.inner.global.with_recorder(|| {
            counter!(CONFIG_RELOADS_TOTAL, "result" => result).increment(1);
            gauge!(CONFIG_GENERATION).set(generation as f64);
        });
    }

    /// Counts a refusal by its error code (e.g. `requests_per_minute`).
    pub fn record_rejection(&self, code: ErrorCode) {
        self.inner
            .global
            .with_recorder(|| counter!(REJECTIONS_TOTAL, "reason" => code.as_str()).increment(1));
    }

    /// Counts a stream cut.
    pub fn record_stream_cut(&self, reason: CutReason) {
        self.inner.global.with_recorder(|| {
            counter!(STREAM_CUTS_TOTAL, "reason" => reason.as_str()).increment(1)
        });
    }

    /// Counts a budget alert; `window` is `daily` or `monthly`.
    pub fn record_budget_alert(&self, window: &str) {
        self.inner.global.with_recorder(|| {
            counter!(BUDGET_ALERTS_TOTAL, "window" => window.to_owned()).increment(1);
        });
    }

    /// A stream opened (active streams gauge +1). Pair every call with [`Metrics::stream_closed`].
    pub fn stream_opened(&self) {
        self.inner
            .global
            .with_recorder(|| gauge!(ACTIVE_STREAMS).increment(1.0));
    }

    /// A stream closed, however it ended (active streams gauge −1).
    pub fn stream_closed(&self) {
        self.inner
            .global
            .with_recorder(|| gauge!(ACTIVE_STREAMS).decrement(1.0));
    }

    /// Counts an upstream failure.
    pub fn record_upstream_error(&self, kind: UpstreamFailure) {
        self.inner.global.with_recorder(|| {
            counter!(UPSTREAM_ERRORS_TOTAL, "kind" => kind.as_str()).increment(1)
        });
    }

    /// Counts a move from model `from` to model `to` (both price-table names).
    pub fn record_fallback(&self, from: &str, to: &str) {
        let labels = self.inner.labels.load();
        let (from, to) = (labels.model(from), labels.model(to));
        self.inner.global.with_recorder(|| {
            counter!(UPSTREAM_FALLBACKS_TOTAL, "from" => from.to_owned(), "to" => to.to_owned())
                .increment(1)
        });
    }

    /// Records how many characters one output-scanned stream held back.
    pub fn record_held_back(&self, chars: u64) {
        self.inner.global.with_recorder(|| {
            histogram!(GUARDRAIL_HELD_BACK_CHARS).record(chars as f64);
        });
    }

    /// Counts a guardrail hit.
    pub fn record_guardrail(&self, check: Check, action: GuardrailAction) {
        self.inner.global.with_recorder(|| {
            counter!(GUARDRAIL_EVENTS_TOTAL, "check" => check.as_str(), "action" => action.as_str())
                .increment(1)
        });
    }

    /// Redis mode: whether Redis answers.
    pub fn set_redis_up(&self, up: bool) {
        self.inner
            .global
            .with_recorder(|| gauge!(REDIS_UP).set(if up { 1.0 } else { 0.0 }));
    }

    /// Redis mode: a failed Redis call; `op` is a fixed operation name.
    pub fn record_redis_error(&self, op: &'static str) {
        self.inner
            .global
            .with_recorder(|| counter!(REDIS_ERRORS_TOTAL, "op" => op).increment(1));
    }

    /// Redis mode: an admission decided locally while Redis was away.
    pub fn record_outage_decision(&self, decision: &'static str) {
        self.inner.global.with_recorder(|| {
            counter!(OUTAGE_DECISIONS_TOTAL, "decision" => decision).increment(1)
        });
    }

    /// Redis mode: settlements waiting in the journal.
    pub fn set_journal_pending(&self, pending: usize) {
        self.inner
            .global
            .with_recorder(|| gauge!(REDIS_JOURNAL_PENDING).set(pending as f64));
    }

    /// Redis mode: how Redis persists (`aof`, `rdb`, `none` or `unknown`).
    pub fn set_redis_persistence(&self, mode: &str) {
        self.inner.global.with_recorder(|| {
            for each in ["aof", "rdb", "none", "unknown"] {
                let value = if each == mode { 1.0 } else { 0.0 };
                gauge!(REDIS_PERSISTENCE, "mode" => each).set(value);
            }
        });
    }

    /// Redis mode: shows the state series before the first check (persistence `unknown`, no
    /// loss counted), so the first change shows in `rate()`.
    pub fn declare_redis_state(&self) {
        self.set_redis_persistence("unknown");
        self.inner
            .global
            .with_recorder(|| counter!(REDIS_STATE_LOST_TOTAL).increment(0));
    }

    /// Redis mode: tollgate's keys were found gone from Redis.
    pub fn record_redis_state_lost(&self) {
        self.inner
            .global
            .with_recorder(|| counter!(REDIS_STATE_LOST_TOTAL).increment(1));
    }

    /// A client connection opened.
    pub fn connection_opened(&self) {
        self.inner
            .global
            .with_recorder(|| gauge!(OPEN_CONNECTIONS).increment(1.0));
    }

    /// A client connection closed. Pair every [`Metrics::connection_opened`] with one.
    pub fn connection_closed(&self) {
        self.inner
            .global
            .with_recorder(|| gauge!(OPEN_CONNECTIONS).decrement(1.0));
    }

    /// A client connection closed on arrival (`server.max_connections`).
    pub fn record_connection_refused(&self) {
        self.inner
            .global
            .with_recorder(|| counter!(CONNECTIONS_REFUSED_TOTAL).increment(1));
    }

    /// Exporter maintenance (drains histogram samples into buckets); call every few seconds,
    /// e.g. from a `tokio::time::interval` task started with the server. Without it histogram
    /// samples accumulate in memory between scrapes.
    pub fn upkeep(&self) {
        self.inner.global.handle.run_upkeep();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;

    /// Parses one sample line into (name, labels, value).
    fn parse_sample(line: &str) -> Option<(String, BTreeMap<String, String>, f64)> {
        let (series, value) = line.rsplit_once(' ')?;
        let value = value.parse().ok()?;
        let Some((name, labels)) = series.split_once('{') else {
            return Some((series.to_owned(), BTreeMap::new(), value));
        };
        let labels = labels.strip_suffix('}')?;
        let mut map = BTreeMap::new();
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once("=\"")?;
            map.insert(k.to_owned(), v.trim_end_matches('"').to_owned());
        }
        Some((name.to_owned(), map, value))
    }

    /// The value of the sample named `name` whose labels include all of `labels`.
    fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(parse_sample)
            .find_map(|(n, map, v)| {
                (n == name
                    && labels
                        .iter()
                        .all(|(k, val)| map.get(*k).map(String::as_str) == Some(*val)))
                .then_some(v)
            })
    }

    fn labels() -> LabelSets {
        LabelSets::new(
            ["gpt-4o-mini".to_owned(), "gpt-4o".to_owned()],
            ["chat".to_owned(), "summarize".to_owned()],
        )
    }

    fn record<'a>(
        plan: &'a str,
        user: &'a str,
        model: &'a str,
        feature: &'a str,
    ) -> RequestRecord<'a> {
        RequestRecord {
            feature,
            plan,
            model,
            user_id: user,
            outcome: "completed",
            input_tokens: 12,
            output_tokens: 34,
            cost_micro_usd: 1_500_000,
            duration: Duration::from_millis(120),
            ttft: Some(Duration::from_millis(40)),
        }
    }

    const ALL_NAMES: [&str; 12] = [
        REQUESTS_TOTAL,
        TOKENS_TOTAL,
        COST_USD_TOTAL,
        USER_COST_USD_TOTAL,
        REJECTIONS_TOTAL,
        STREAM_CUTS_TOTAL,
        BUDGET_ALERTS_TOTAL,
        ACTIVE_STREAMS,
        REQUEST_DURATION_SECONDS,
        TIME_TO_FIRST_TOKEN_SECONDS,
        UPSTREAM_ERRORS_TOTAL,
        GUARDRAIL_EVENTS_TOTAL,
    ];

    fn record_one_of_each(metrics: &Metrics, plan: &str) {
        metrics.record_request(&record(plan, "alice", "gpt-4o", "chat"));
        metrics.record_rejection(ErrorCode::RequestsPerMinute);
        metrics.record_stream_cut(CutReason::TokenCap);
        metrics.record_budget_alert("daily");
        metrics.record_guardrail(Check::Secret, GuardrailAction::Block);
        metrics.stream_opened();
        metrics.stream_closed();
        metrics.record_upstream_error(UpstreamFailure::Unavailable);
        metrics.upkeep();
    }

    #[test]
    fn label_sets_map_unknown_values_to_other() {
        let sets = labels();
        assert_eq!(sets.model("gpt-4o"), "gpt-4o");
        assert_eq!(sets.model("made-up-model"), "other");
        assert_eq!(sets.feature("chat"), "chat");
        assert_eq!(sets.feature(""), "other");
        assert_eq!(LabelSets::default().model("gpt-4o"), "other");
    }

    #[test]
    fn render_describes_every_metric() {
        let metrics = Metrics::install(10, labels());
        record_one_of_each(&metrics, "plan_describe");
        let text = metrics.render();
        for name in ALL_NAMES {
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "no HELP for {name}:\n{text}"
            );
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "no TYPE for {name}:\n{text}"
            );
        }
        for counter in ALL_NAMES.iter().filter(|n| n.ends_with("_total")) {
            assert!(
                text.contains(&format!("# TYPE {counter} counter\n")),
                "{counter}"
            );
        }
        assert!(text.contains(&format!("# TYPE {ACTIVE_STREAMS} gauge\n")));
        assert!(text.contains(&format!("# TYPE {REQUEST_DURATION_SECONDS} histogram\n")));
        assert!(text.contains(&format!("# TYPE {TIME_TO_FIRST_TOKEN_SECONDS} histogram\n")));
        // Each family's header appears once, however many instances exist.
        let again = Metrics::install(10, labels()).render();
        for name in ALL_NAMES {
            assert_eq!(
                again.matches(&format!("# TYPE {name} ")).count(),
                1,
                "{name}"
            );
        }
    }

    #[test]
    fn histograms_have_the_documented_buckets() {
        let metrics = Metrics::install(10, labels());
        metrics.record_request(&record("plan_buckets", "bob", "gpt-4o", "chat"));
        metrics.upkeep();
        let text = metrics.render();
        for name in [REQUEST_DURATION_SECONDS, TIME_TO_FIRST_TOKEN_SECONDS] {
            let bucket = format!("{name}_bucket");
            let les: Vec<String> = text
                .lines()
                .filter_map(parse_sample)
                .filter(|(n, _, _)| *n == bucket)
                .filter_map(|(_, l, _)| l.get("le").cloned())
                .collect();
            let mut expected: Vec<String> = LATENCY_BUCKETS_SECONDS
                .iter()
                .map(|b| b.to_string())
                .collect();
            expected.push("+Inf".to_owned());
            assert_eq!(les, expected, "{name}");
            assert!(value(&text, &format!("{name}_count"), &[]).is_some_and(|c| c >= 1.0));
            assert!(value(&text, &format!("{name}_sum"), &[]).is_some());
        }
        assert_eq!(LATENCY_BUCKETS_SECONDS.first(), Some(&0.005));
        assert_eq!(LATENCY_BUCKETS_SECONDS.last(), Some(&30.0));
    }

    #[test]
    fn client_labels_outside_the_sets_become_other() {
        let metrics = Metrics::install(10, labels());
        let plan = "plan_other_labels";
        metrics.record_request(&record(plan, "carol", "secret-model-x", "exfiltrate"));
        let text = metrics.render();
        let want = [("plan", plan), ("feature", "other"), ("model", "other")];
        assert_eq!(value(&text, REQUESTS_TOTAL, &want), Some(1.0));
        assert_eq!(value(&text, COST_USD_TOTAL, &want), Some(1.5));
        assert!(!text.contains("secret-model-x"));
        assert!(!text.contains("exfiltrate"));
    }

    #[test]
    fn tokens_and_cost_are_attributed_and_cost_is_usd() {
        let metrics = Metrics::install(10, labels());
        let plan = "plan_cost";
        let base = [
            ("plan", plan),
            ("feature", "summarize"),
            ("model", "gpt-4o-mini"),
        ];
        metrics.record_request(&record(plan, "dave", "gpt-4o-mini", "summarize"));
        let mut second = record(plan, "erin", "gpt-4o-mini", "summarize");
        second.cost_micro_usd = 250_001;
        second.outcome = "cut_budget";
        metrics.record_request(&second);
        let text = metrics.render();
        assert_eq!(value(&text, COST_USD_TOTAL, &base), Some(1.750001));
        let input = [base[0], base[1], base[2], ("direction", "input")];
        let output = [base[0], base[1], base[2], ("direction", "output")];
        assert_eq!(value(&text, TOKENS_TOTAL, &input), Some(24.0));
        assert_eq!(value(&text, TOKENS_TOTAL, &output), Some(68.0));
        let completed = [base[0], base[1], base[2], ("outcome", "completed")];
        let cut = [base[0], base[1], base[2], ("outcome", "cut_budget")];
        assert_eq!(value(&text, REQUESTS_TOTAL, &completed), Some(1.0));
        assert_eq!(value(&text, REQUESTS_TOTAL, &cut), Some(1.0));
        assert_eq!(
            value(&text, USER_COST_USD_TOTAL, &[("user", "dave")]),
            Some(1.5)
        );
        assert_eq!(
            value(&text, USER_COST_USD_TOTAL, &[("user", "erin")]),
            Some(0.250001)
        );
    }

    #[test]
    fn counters_are_shared_and_user_cost_is_per_instance() {
        let a = Metrics::install(2, labels());
        let b = Metrics::install(2, labels());
        // A code no other test records as a refusal (a 500 is never one).
        let code = ErrorCode::Internal;
        let reason = code.as_str();
        let before = value(&a.render(), REJECTIONS_TOTAL, &[("reason", reason)]).unwrap_or(0.0);
        a.record_rejection(code);
        b.record_rejection(code);
        assert_eq!(
            value(&a.render(), REJECTIONS_TOTAL, &[("reason", reason)]),
            Some(before + 2.0)
        );

        for (i, user) in ["u1", "u2", "u3", "u4"].iter().enumerate() {
            let mut r = record("plan_users", user, "gpt-4o", "chat");
            r.cost_micro_usd = (i as u64 + 1) * 1_000_000;
            a.record_request(&r);
        }
        let text = a.render();
        let users: Vec<String> = text
            .lines()
            .filter_map(parse_sample)
            .filter(|(n, _, _)| n == USER_COST_USD_TOTAL)
            .filter_map(|(_, l, _)| l.get("user").cloned())
            .collect();
        assert_eq!(users, vec!["u4", "u3", "_other"]);
        assert_eq!(
            value(&text, USER_COST_USD_TOTAL, &[("user", "_other")]),
            Some(3.0)
        );
        assert_eq!(
            value(&b.render(), USER_COST_USD_TOTAL, &[("user", "_other")]),
            Some(0.0)
        );
        assert_eq!(
            value(&b.render(), USER_COST_USD_TOTAL, &[("user", "u4")]),
            None
        );
    }

    #[test]
    fn promtool_accepts_the_exposition() {
        let metrics = Metrics::install(3, labels());
        record_one_of_each(&metrics, "plan_promtool");
        metrics.record_request(&record(
            "plan_promtool",
            "we\"ird\\user\nname",
            "gpt-4o",
            "chat",
        ));
        let text = metrics.render();
        let child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("promtool not installed; skipping `promtool check metrics`");
                return;
            }
            Err(e) => panic!("spawning promtool: {e}"),
        };
        {
            use std::io::Write as _;
            let mut stdin = child.stdin.take().expect("stdin");
            stdin.write_all(text.as_bytes()).expect("write to promtool");
        }
        let out = child.wait_with_output().expect("promtool output");
        assert!(
            out.status.success(),
            "promtool check metrics failed ({}):\n{}{}\n--- input ---\n{text}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
    }
}
