//! The typed configuration tree: every key, its default and its unit (in the field name).
//!
//! Sources, lowest first: the defaults in this file, a TOML file, then the environment
//! ([`load`]). The result is validated once ([`validate`]); errors name the key path.
//! Lower modules receive their own section, never the whole tree.

mod load;
mod redis_nodes;
mod secret;
mod validate;

pub(crate) use load::from_tree;
pub use load::{load, ConfigError, ConfigSource};
pub use redis_nodes::RedisNodes;
pub use secret::Secret;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where `/metrics` is served by default: loopback only, on the port Prometheus exporters
/// conventionally use.
pub const DEFAULT_METRICS_LISTEN: &str = "";

/// The signing secret used when none is configured. Start-up warns loudly when it is in use.
pub const DEVELOPMENT_JWT_SECRET: &str = "tollgate-development-secret-change-me";

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    /// More providers by name (`[upstreams.<name>]`); `[upstream]` is the one named `default`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub upstreams: BTreeMap<String, NamedUpstreamConfig>,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub rate: RateConfig,
    pub cost: CostConfig,
    pub plans: BTreeMap<String, PlanConfig>,
    pub pricing: BTreeMap<String, ModelPrice>,
    pub redis: RedisConfig,
    pub relay: RelayConfig,
    pub users: UsersConfig,
    pub logging: LoggingConfig,
    pub metrics: MetricsConfig,
    pub guardrails: GuardrailsConfig,
    pub mock: MockConfig,
    pub admin: AdminConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::default(),
            upstream: UpstreamConfig::default(),
            upstreams: BTreeMap::new(),
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            rate: RateConfig::default(),
            cost: CostConfig::default(),
            plans: default_plans(),
            pricing: default_pricing(),
            redis: RedisConfig::default(),
            relay: RelayConfig::default(),
            users: UsersConfig::default(),
            logging: LoggingConfig::default(),
            metrics: MetricsConfig::default(),
            guardrails: GuardrailsConfig::default(),
            mock: MockConfig::default(),
            admin: AdminConfig::default(),
        }
    }
}

/// `[server]`: the listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to serve on (`TOLLGATE_LISTEN`).
    pub listen: String,
    /// HTTP worker threads; 0 means one per CPU core.
    pub workers: usize,
    /// Seconds a graceful shutdown waits for open streams before cutting them.
    pub shutdown_timeout_secs: u64,
    /// Origins browsers may call from (`https://app.example.com`); `["*"]` = any; empty = none.
    pub cors_allowed_origins: Vec<String>,
    /// Serve the demo chat page at `/chat`.
    pub demo_ui: bool,
    /// Where `/metrics` is served: empty (the default) = on `listen`, like every route; or its
    /// own `IP:PORT` (e.g. `127.0.0.1:9464`), then not on `listen`. The exposition names users and
    /// their spend: on a public `listen`, move it or set `metrics.bearer_token` (start-up warns).
    pub metrics_listen: String,
    /// A request body that makes no progress for this long is answered `408 request_timeout`
    /// and its connection closed (the whole body must also arrive within `limits.deadline_secs`).
    pub client_body_timeout_secs: u64,
    /// A streaming client that takes no data for this long (it stopped reading; its buffer
    /// stays full) is cut as `client_gone`, freeing its concurrency slot before the deadline.
    pub client_write_timeout_secs: u64,
    /// Client connections open at once, over all workers. A connection beyond it is closed as
    /// soon as it is accepted, without an answer (`tollgate_connections_refused_total`).
    pub max_connections: usize,
    /// An idle keep-alive connection (no request in progress) is closed after this long;
    /// 0 = no keep-alive (one request per connection). Above the 60 s that proxies and load
    /// balancers keep idle upstream connections, so none reuses one the gateway just closed.
    pub keep_alive_timeout_secs: u64,
    /// Largest single request header (name and value bytes); larger → `431 headers_too_large`.
    pub max_header_bytes: usize,
    /// Largest sum of every request header (names and values); larger → `431`.
    pub max_headers_total_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            workers: 0,
            shutdown_timeout_secs: 30,
            cors_allowed_origins: Vec::new(),
            demo_ui: true,
            metrics_listen: DEFAULT_METRICS_LISTEN.into(),
            client_body_timeout_secs: 10,
            client_write_timeout_secs: 10,
            max_connections: 10_000,
            keep_alive_timeout_secs: 75,
            max_header_bytes: 8 * 1024,
            max_headers_total_bytes: 32 * 1024,
        }
    }
}

/// `[upstream]`: the provider the gateway relays to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Provider base URL (`TOLLGATE_UPSTREAM_URL`); requests go to `{url}/chat/completions`.
    /// Empty: the built-in mock provider runs in-process.
    pub url: String,
    /// Sent upstream as `Authorization: Bearer …` (`TOLLGATE_UPSTREAM_API_KEY`).
    pub api_key: Secret,
    /// Seconds to establish the TCP (and TLS) connection.
    pub connect_timeout_secs: u64,
    /// Seconds the upstream may stay silent mid-stream before the stream is cut.
    pub idle_timeout_secs: u64,
    /// Connections one worker's client may hold open to the upstream.
    pub max_connections: usize,
    /// Largest single SSE event or non-streamed body accepted from the upstream.
    pub max_event_bytes: usize,
    /// Seconds from sending a request until the provider's response headers and its first
    /// event: past it the attempt failed before its first token (the next fallback is tried).
    pub first_byte_timeout_secs: u64,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            api_key: Secret::default(),
            connect_timeout_secs: 5,
            idle_timeout_secs: 10,
            max_connections: 4096,
            max_event_bytes: 1024 * 1024,
            first_byte_timeout_secs: 10,
        }
    }
}

/// The API a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamFormat {
    /// OpenAI Chat Completions: `POST {url}/chat/completions`, `Authorization: Bearer`.
    #[default]
    OpenAi,
    /// Anthropic Messages: `POST {url}/v1/messages`, `x-api-key`, `anthropic-version`.
    Anthropic,
}

impl UpstreamFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamFormat::OpenAi => "openai",
            UpstreamFormat::Anthropic => "anthropic",
        }
    }
}

/// `[upstreams.<name>]`: one more provider. Timeouts, connection and event limits inherit from
/// `[upstream]` unless set here.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NamedUpstreamConfig {
    /// Base URL (`https://api.anthropic.com`, `https://api.openai.com/v1`); empty = the
    /// built-in mock, in this provider's format (for trying it without a provider).
    pub url: String,
    /// The provider's key (`TOLLGATE__UPSTREAMS__<NAME>__API_KEY`); never logged.
    pub api_key: Secret,
    pub format: UpstreamFormat,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_timeout_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_byte_timeout_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_event_bytes: Option<usize>,
}

/// The name of the provider `[upstream]` configures.
pub const DEFAULT_UPSTREAM: &str = "default";

/// One provider with every setting resolved (its own, else `[upstream]`'s).
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub name: String,
    /// Base URL; empty for the default provider when the built-in mock serves it.
    pub url: String,
    pub api_key: Secret,
    pub format: UpstreamFormat,
    pub connect_timeout_secs: u64,
    pub idle_timeout_secs: u64,
    pub first_byte_timeout_secs: u64,
    pub max_connections: usize,
    pub max_event_bytes: usize,
}

impl Config {
    /// Every provider, `default` first, then `[upstreams.*]` by name.
    pub fn providers(&self) -> Vec<ProviderConfig> {
        let u = &self.upstream;
        let default = ProviderConfig {
            name: DEFAULT_UPSTREAM.into(),
            url: u.url.clone(),
            api_key: u.api_key.clone(),
            format: UpstreamFormat::OpenAi,
            connect_timeout_secs: u.connect_timeout_secs,
            idle_timeout_secs: u.idle_timeout_secs,
            first_byte_timeout_secs: u.first_byte_timeout_secs,
            max_connections: u.max_connections,
            max_event_bytes: u.max_event_bytes,
        };
        let named = self.upstreams.iter().map(|(name, n)| ProviderConfig {
            name: name.clone(),
            url: n.url.clone(),
            api_key: n.api_key.clone(),
            format: n.format,
            connect_timeout_secs: n.connect_timeout_secs.unwrap_or(u.connect_timeout_secs),
            idle_timeout_secs: n.idle_timeout_secs.unwrap_or(u.idle_timeout_secs),
            first_byte_timeout_secs: n
                .first_byte_timeout_secs
                .unwrap_or(u.first_byte_timeout_secs),
            max_connections: n.max_connections.unwrap_or(u.max_connections),
            max_event_bytes: n.max_event_bytes.unwrap_or(u.max_event_bytes),
        });
        std::iter::once(default).chain(named).collect()
    }
}

/// `[auth]`: client JWT verification.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Token algorithms accepted: any of `HS256`, `RS256`, `ES256`. Exactly these.
    pub algorithms: Vec<String>,
    /// HS256 secret (`TOLLGATE_JWT_SECRET`).
    pub jwt_secret: Secret,
    /// PEM file with the RSA (RS256) or EC P-256 (ES256) public key; needed for those unless
    /// `jwks_url` publishes the keys.
    pub public_key_path: String,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway_secs: u64,
    /// Tokens whose `exp - iat` (or `exp - now` without `iat`) exceeds this are refused.
    pub max_token_lifetime_secs: u64,
    /// Required `iss` claim; empty = not checked.
    pub issuer: String,
    /// Required `aud` claim; empty = not checked.
    pub audience: String,
    /// Largest bearer token accepted, checked before any parsing.
    pub max_token_bytes: usize,
    /// An identity provider's JWKS (`https://idp.example.com/.well-known/jwks.json`): RS256 /
    /// ES256 tokens carrying a `kid` are verified with the published key of that id. Empty = off.
    pub jwks_url: String,
    /// Seconds between two fetches of `jwks_url` (an unknown `kid` also triggers one, at most
    /// every 30 s).
    pub jwks_refresh_secs: u64,
    /// The claim naming the user (a string), e.g. `email` or `preferred_username`.
    pub user_claim: String,
    /// The claim naming the user's plan (a string), e.g. `tier`.
    pub plan_claim: String,
    /// The plan of a token without `plan_claim`; empty = such tokens are refused
    /// (`invalid_token`). Must be a plan in `[plans]`.
    pub default_plan: String,
    /// Failed authentications (401s) one client address may cause per minute; past it the
    /// address gets `429 auth_rate_limited` until its minute ends, whatever it sends. 0 = no
    /// limit. IPv6 addresses count by their /64 prefix.
    pub max_failures_per_minute: u32,
    /// Client addresses the failure limit tracks at once (its memory bound); beyond it new
    /// addresses are not tracked until older windows end.
    pub max_tracked_addresses: usize,
    /// Trusted front ends (a chat UI's backend) by name, each calling with its own key and
    /// naming its end users in headers: `[auth.service_keys.<name>]`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub service_keys: BTreeMap<String, ServiceKeyConfig>,
}

/// `[auth.service_keys.<name>]`: one trusted front end. Its users are `<name>:<user>`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceKeyConfig {
    /// SHA-256 (hex) of the caller's key; the key itself is never in the config
    /// (`tollgate key new --name NAME` makes one). Empty = this front end is off (logged).
    pub key_sha256: String,
    /// Header naming the end user (trusted because the key is), e.g. `x-openwebui-user-id`.
    pub user_header: String,
    /// Or a header holding a signed per-user JWT (HS256), e.g. `x-openwebui-user-jwt`; its `sub`
    /// is the user, its `role` claim the role. Takes precedence over `user_header`.
    pub user_jwt_header: String,
    /// The user JWT's HS256 secret (Open WebUI's `FORWARD_USER_INFO_HEADER_JWT_SECRET`).
    pub user_jwt_secret: Secret,
    /// Required `iss` of the user JWT; empty = not checked.
    pub user_jwt_issuer: String,
    /// Header with the user's role, e.g. `x-openwebui-user-role`.
    pub role_header: String,
    /// Role → plan; a role that maps to none gets `plan`.
    pub role_plans: BTreeMap<String, String>,
    /// The plan of users whose role maps to none (and of the key's own `/v1/models` list).
    pub plan: String,
    /// Header logged as the request's `session_id`, e.g. `x-openwebui-chat-id`.
    pub session_header: String,
    /// This front end's `limits.max_message_chars` (unset = the global one). A chat UI's
    /// background tasks (titles, tags, follow-ups) quote the conversation in one user message:
    /// lift the per-message limit for such a front end; `limits.max_context_tokens` still
    /// bounds the whole prompt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_message_chars: Option<usize>,
}

/// Whether `name` may name a service key: letters, digits, `_` and `-` (it prefixes its users'
/// ids, `<name>:<user>`).
pub fn is_service_key_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')
}

impl Default for ServiceKeyConfig {
    fn default() -> Self {
        Self {
            key_sha256: String::new(),
            user_header: String::new(),
            user_jwt_header: String::new(),
            user_jwt_secret: Secret::default(),
            user_jwt_issuer: String::new(),
            role_header: String::new(),
            role_plans: BTreeMap::new(),
            plan: "basic".into(),
            session_header: String::new(),
            max_message_chars: None,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            algorithms: vec!["HS256".into()],
            jwt_secret: Secret::new(DEVELOPMENT_JWT_SECRET),
            public_key_path: String::new(),
            leeway_secs: 5,
            max_token_lifetime_secs: 3600,
            issuer: String::new(),
            audience: String::new(),
            max_token_bytes: 8 * 1024,
            jwks_url: String::new(),
            jwks_refresh_secs: 300,
            user_claim: "sub".into(),
            plan_claim: "plan".into(),
            default_plan: String::new(),
            max_failures_per_minute: 30,
            max_tracked_addresses: 10_000,
            service_keys: BTreeMap::new(),
        }
    }
}

/// `[limits]`: per-request input and output limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_message_chars: usize,
    pub max_history_turns: usize,
    pub max_context_tokens: u64,
    /// `max_tokens` granted when the request names none.
    pub default_max_tokens: u32,
    /// Largest `max_tokens` granted (plans may set their own); larger requests are clamped.
    pub max_output_tokens: u32,
    /// Largest request body; larger bodies get 413 without being read.
    pub max_body_bytes: usize,
    /// Total time a request may take, stream included.
    pub deadline_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_message_chars: 4000,
            max_history_turns: 10,
            max_context_tokens: 8000,
            default_max_tokens: 1000,
            max_output_tokens: 4096,
            max_body_bytes: 1024 * 1024,
            deadline_secs: 30,
        }
    }
}

/// `[rate]`: per-user windows (enforced by the per-user actor).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateConfig {
    pub requests_per_minute: u64,
    pub requests_per_day: u64,
    pub tokens_per_day: u64,
    pub max_concurrent_streams: u64,
    /// When the day's tokens cannot cover a request's `max_tokens`, it is granted what is left
    /// down to this floor; below it the request is refused (`tokens_per_day`).
    pub min_granted_tokens: u32,
}

impl Default for RateConfig {
    fn default() -> Self {
        Self {
            requests_per_minute: 10,
            requests_per_day: 100,
            tokens_per_day: 50_000,
            max_concurrent_streams: 3,
            min_granted_tokens: 16,
        }
    }
}

/// `[plans.<plan>.rate]`: per-plan overrides of `[rate]`; absent keys inherit.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RateOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_day: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_per_day: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent_streams: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_granted_tokens: Option<u32>,
}

/// `[plans.<plan>.cost]`: per-plan overrides of `[cost]`; absent keys inherit.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CostOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_daily_usd: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_monthly_usd: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert_threshold_percent: Option<u8>,
}

/// `[cost]`: per-user spend caps in USD.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CostConfig {
    pub max_daily_usd: f64,
    pub max_monthly_usd: f64,
    pub alert_threshold_percent: u8,
    /// POSTed a JSON alert when a user crosses the threshold; empty = no webhook.
    pub alert_webhook_url: String,
    /// Organisation-wide daily cap over all users (a circuit breaker); 0 = none.
    pub max_org_daily_usd: f64,
}

impl Default for CostConfig {
    fn default() -> Self {
        Self {
            max_daily_usd: 0.50,
            max_monthly_usd: 10.00,
            alert_threshold_percent: 80,
            alert_webhook_url: String::new(),
            max_org_daily_usd: 0.0,
        }
    }
}

/// `[plans.<plan>]`: what a plan may use.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct PlanConfig {
    pub features: Vec<String>,
    /// Models this plan may use; empty = every priced model.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// Largest `max_tokens` granted on this plan (default `limits.max_output_tokens`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u32>,
    /// Top-level request fields this plan may not set (e.g. `["n", "logprobs", "logit_bias",
    /// "tools"]`): a request setting one (not `null`) gets `403 parameter_not_allowed`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub denied_parameters: Vec<String>,
    #[serde(skip_serializing_if = "is_default")]
    pub rate: RateOverrides,
    #[serde(skip_serializing_if = "is_default")]
    pub cost: CostOverrides,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// `[pricing.<model>]`: a model clients may ask for: its price (USD per million tokens) and
/// where it is served.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    pub input_per_million_usd: f64,
    pub output_per_million_usd: f64,
    /// The provider serving it (`default` = `[upstream]`, else a name in `[upstreams]`).
    #[serde(
        default = "default_upstream_name",
        skip_serializing_if = "is_default_upstream"
    )]
    pub upstream: String,
    /// The provider's own name for it; empty = the same name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub upstream_model: String,
    /// Models tried in order when this one fails before its first token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback: Vec<String>,
}

fn default_upstream_name() -> String {
    DEFAULT_UPSTREAM.into()
}

fn is_default_upstream(name: &str) -> bool {
    name == DEFAULT_UPSTREAM
}

impl Default for ModelPrice {
    /// Free, served by the default provider under its own name, no fallback.
    fn default() -> Self {
        Self {
            input_per_million_usd: 0.0,
            output_per_million_usd: 0.0,
            upstream: default_upstream_name(),
            upstream_model: String::new(),
            fallback: Vec::new(),
        }
    }
}

/// `[redis]`: shared state across replicas, and what happens while Redis is away.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `TOLLGATE_REDIS_URL`; empty = in-process memory. One `redis://` URL, or a
    /// comma-separated list of a Redis Cluster's node URLs.
    pub url: Secret,
    /// Speak Redis Cluster even when `url` names one node (a seed); a list always does.
    pub cluster: bool,
    /// Prefix of every key tollgate writes (`<prefix>:{<user>}:…`).
    pub key_prefix: String,
    /// Longest wait for one Redis call (connection checkout + script); past it the call
    /// counts as failed and the request takes the outage path.
    pub op_timeout_ms: u64,
    /// Longest wait for a new connection.
    pub connect_timeout_ms: u64,
    /// Consecutive failed calls that open the circuit (calls then skip Redis).
    pub breaker_failures: u32,
    /// While the circuit is open, Redis is probed (and the journal replayed) this often.
    pub probe_interval_ms: u64,
    /// Replicas sharing this Redis. While Redis is away each replica allows
    /// `limit / expected_replicas` of the request-rate windows (minute, day, concurrency).
    pub expected_replicas: u64,
    /// A concurrent-stream slot's lease. A replica that dies holding it frees it (and its
    /// metered usage is charged) once the lease ends. Must exceed `limits.deadline_secs`.
    pub lease_secs: u64,
    /// While Redis is away a user may spend at most this much per replica (tokens and USD)
    /// beyond what Redis last reported; past it token and spend limits fail closed (503).
    pub outage_allowance_tokens: u64,
    pub outage_allowance_usd: f64,
    /// Settlements kept while Redis is away, replayed when it returns. Past this bound the
    /// oldest are dropped with an error log (a very long outage).
    pub journal_max: usize,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: Secret::default(),
            cluster: false,
            key_prefix: "tollgate".into(),
            op_timeout_ms: 50,
            connect_timeout_ms: 250,
            breaker_failures: 5,
            probe_interval_ms: 1000,
            expected_replicas: 1,
            lease_secs: 35,
            outage_allowance_tokens: 4000,
            outage_allowance_usd: 0.05,
            journal_max: 1_000_000,
        }
    }
}

/// `[relay]`: the streaming loop.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// Smallest allowance a stream is granted near a spend cap (unless less is left): output
    /// tokens it relays before it reports to the user's actor and asks again.
    pub meter_batch_tokens: u32,
    /// Largest allowance, far from every cap: half the headroom, split among the user's open
    /// requests, picks between the two (fewer reports far from a cap; never past one).
    pub meter_batch_max_tokens: u32,
    /// Events buffered between the upstream reader and a slow client.
    pub client_buffer_events: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            meter_batch_tokens: 16,
            meter_batch_max_tokens: 256,
            client_buffer_events: 64,
        }
    }
}

/// `[users]`: the per-user actors.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UsersConfig {
    /// Messages an actor's mailbox holds before senders wait.
    pub mailbox_capacity: usize,
    /// An actor with no open request stops after this long idle; its state stays in the store.
    pub idle_evict_secs: u64,
    /// Embedded mode: users' windows and spend are saved here (and loaded at start), so a
    /// restart never hands out fresh budgets. Empty = not saved (state lives only in memory).
    pub snapshot_path: String,
    /// Seconds between snapshots; a crash loses at most this much settled usage.
    pub snapshot_interval_secs: u64,
}

impl Default for UsersConfig {
    fn default() -> Self {
        Self {
            mailbox_capacity: 256,
            idle_evict_secs: 300,
            snapshot_path: "tollgate-state.json".into(),
            snapshot_interval_secs: 10,
        }
    }
}

/// `[logging]`: the request log.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct LoggingConfig {
    /// HMAC key for `prompt_hash`. Empty: a random key per process (hashes then only
    /// correlate within one run).
    pub prompt_hash_key: Secret,
}

/// `[metrics]`: the Prometheus exposition.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Users with their own `tollgate_user_cost_usd_total` series (the biggest spenders); the
    /// rest are summed as `user="_other"`.
    pub max_user_series: usize,
    /// When set, `/metrics` answers only `Authorization: Bearer <this>` (Prometheus'
    /// `authorization` setting), on whichever listener serves it. Empty = no token asked.
    pub bearer_token: Secret,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            max_user_series: 1000,
            bearer_token: Secret::default(),
        }
    }
}

/// What a guardrail does when it fires.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum GuardAction {
    /// Refuse the request (input) or cut the stream (output).
    Block,
    /// Let it through; log and count it.
    Flag,
    /// Replace the match in the stream (output only).
    Redact,
    /// Do not check.
    Off,
}

/// `[guardrails]`: the prompt-injection filter and output validation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GuardrailsConfig {
    /// Prompt-injection filter on user messages: `block` (400 prompt_injection), `flag` or `off`.
    pub input_action: GuardAction,
    /// Per-feature overrides of `input_action`, e.g. `{ bulk_processing = "flag" }`.
    pub input_action_by_feature: BTreeMap<String, GuardAction>,
    /// Score at which a message counts as an injection attempt.
    pub input_threshold: u32,
    /// Scan every role's messages, not only the user's.
    pub input_all_roles: bool,
    /// Secrets in the output (API keys, private keys, cloud credentials, tokens): `block` or `off`.
    pub output_secrets: GuardAction,
    /// Payment card numbers, e-mail addresses and phone numbers in the output: `redact`, `block`
    /// or `off` (off by default: redaction rewrites the reply, and addresses or numbers are often
    /// what the user asked for).
    pub output_pii: GuardAction,
    /// Inject a per-request canary into the system prompt and cut the stream if it appears.
    pub canary: bool,
}

impl Default for GuardrailsConfig {
    fn default() -> Self {
        Self {
            input_action: GuardAction::Block,
            input_action_by_feature: BTreeMap::new(),
            input_threshold: 10,
            input_all_roles: false,
            output_secrets: GuardAction::Block,
            output_pii: GuardAction::Off,
            canary: true,
        }
    }
}

/// `[mock]`: the built-in provider started when `upstream.url` is empty.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MockConfig {
    pub tokens: u32,
    pub tokens_per_second: f64,
    pub first_token_delay_ms: u64,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            tokens: 40,
            tokens_per_second: 50.0,
            first_token_delay_ms: 100,
        }
    }
}

/// `[admin]`: the operators' API under `/admin/v1` (users, overrides, blocks, reload).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Hex SHA-256 of the admin bearer key; empty = the admin API is off.
    pub key_sha256: String,
    /// Its own listener (`127.0.0.1:9091`, say); empty = served on `server.listen`.
    pub listen: String,
}

fn default_plans() -> BTreeMap<String, PlanConfig> {
    let plan = |features: &[&str]| PlanConfig {
        features: features.iter().map(|f| f.to_string()).collect(),
        ..PlanConfig::default()
    };
    BTreeMap::from([
        ("basic".into(), plan(&["chat_support"])),
        (
            "pro".into(),
            plan(&["chat_support", "document_analysis", "code_review"]),
        ),
        (
            "enterprise".into(),
            plan(&[
                "chat_support",
                "document_analysis",
                "code_review",
                "bulk_processing",
            ]),
        ),
    ])
}

/// List prices (USD per million tokens) of common OpenAI models, and of the mock's models
/// (priced like their namesakes so budget behaviour can be tried without a provider).
fn default_pricing() -> BTreeMap<String, ModelPrice> {
    let price = |input, output| ModelPrice {
        input_per_million_usd: input,
        output_per_million_usd: output,
        ..ModelPrice::default()
    };
    BTreeMap::from([
        ("gpt-4o".into(), price(2.50, 10.00)),
        ("gpt-4o-mini".into(), price(0.15, 0.60)),
        ("gpt-4.1".into(), price(2.00, 8.00)),
        ("gpt-4.1-mini".into(), price(0.40, 1.60)),
        ("gpt-4.1-nano".into(), price(0.10, 0.40)),
        ("gpt-4-turbo".into(), price(10.00, 30.00)),
        ("gpt-3.5-turbo".into(), price(0.50, 1.50)),
        ("gpt-5".into(), price(1.25, 10.00)),
        ("gpt-5-mini".into(), price(0.25, 2.00)),
        ("o3-mini".into(), price(1.10, 4.40)),
        ("o4-mini".into(), price(1.10, 4.40)),
        ("mock-gpt".into(), price(2.50, 10.00)),
        ("mock-gpt-mini".into(), price(0.15, 0.60)),
    ])
}
