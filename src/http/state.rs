//! One generation of the gateway's request-facing state: the config and everything compiled
//! from it (providers, authenticator, catalog, guardrails, CORS), beside the parts that outlive
//! a reload ([`Lasting`]: users, metrics, log). A request takes the current generation once, on
//! arrival, and keeps it to its end, so a reload never changes a request already running.

use super::cors::CorsPolicy;
use crate::auth::{Authenticator, FailureLimiter};
use crate::catalog::Catalog;
use crate::config::{Config, ConfigError, ProviderConfig, UpstreamFormat, DEFAULT_UPSTREAM};
use crate::policy::guardrails::Guardrails;
use crate::relay::health::{Circuits, UpstreamHealth};
use crate::telemetry::{LabelSets, LogSink, Metrics, PromptHasher};
use crate::users::UserRegistry;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Numbers every built state, across gateways in one process (per-worker caches key on it).
static NEXT_STATE_ID: AtomicU64 = AtomicU64::new(1);

/// What a reload keeps: built once at start-up.
#[derive(Clone)]
pub struct Lasting {
    pub users: Arc<UserRegistry>,
    pub metrics: Metrics,
    pub log_sink: LogSink,
    pub hasher: PromptHasher,
    /// Failed authentications per client address (`auth.max_failures_per_minute`).
    pub auth_failures: Arc<FailureLimiter>,
    /// The built-in mock provider, when start-up started it (a provider without a URL).
    pub mock: Option<SocketAddr>,
}

/// Read-mostly state shared by every worker: one config generation.
pub struct AppState {
    /// Unique per built state (per-worker caches of upstream clients key on it).
    pub id: u64,
    /// 1 at start-up, +1 per applied reload.
    pub generation: u64,
    pub config: Config,
    /// Every provider (`default` first), and where each is reached (its URL, or the built-in
    /// mock's).
    pub providers: Arc<[ProviderConfig]>,
    pub provider_urls: Vec<String>,
    pub auth: Authenticator,
    pub auth_failures: Arc<FailureLimiter>,
    pub users: Arc<UserRegistry>,
    pub catalog: Catalog,
    pub hasher: PromptHasher,
    pub log_sink: LogSink,
    pub metrics: Metrics,
    pub guardrails: Guardrails,
    /// Each provider's circuit, numbered as `providers`.
    pub upstream_health: Circuits,
    pub cors: CorsPolicy,
}

impl AppState {
    /// Compiles `config` into generation `generation`. With `previous` (a reload), providers
    /// whose address is unchanged keep their circuits and an unchanged JWKS keeps its keys.
    /// Fails, naming the key, when the config cannot be served as it is.
    pub fn build(
        generation: u64,
        config: Config,
        lasting: &Lasting,
        previous: Option<&AppState>,
    ) -> Result<Self, ConfigError> {
        let providers: Arc<[ProviderConfig]> = config.providers().into();
        let provider_urls = provider_urls(&providers, lasting.mock)?;
        let auth = Authenticator::new(&config.auth)
            .map_err(|e| ConfigError::invalid("auth.public_key_path", e.to_string()))?;
        let auth = match previous {
            Some(previous) => auth.keeping_jwks_of(&previous.auth),
            None => auth,
        };
        let guardrails = Guardrails::new(&config.guardrails)
            .map_err(|e| ConfigError::invalid("guardrails", e))?;
        let upstream_health = providers
            .iter()
            .zip(&provider_urls)
            .map(|(provider, url)| {
                previous
                    .and_then(|p| p.circuit_of(provider, url))
                    .unwrap_or_default()
            })
            .collect();
        Ok(Self {
            id: NEXT_STATE_ID.fetch_add(1, Ordering::Relaxed),
            generation,
            catalog: Catalog::new(&config),
            cors: CorsPolicy::new(&config.server.cors_allowed_origins),
            auth,
            auth_failures: lasting.auth_failures.clone(),
            users: lasting.users.clone(),
            hasher: lasting.hasher.clone(),
            log_sink: lasting.log_sink.clone(),
            metrics: lasting.metrics.clone(),
            guardrails,
            upstream_health,
            provider_urls,
            providers,
            config,
        })
    }

    /// The model and feature labels this config allows in metrics.
    pub fn label_sets(&self) -> LabelSets {
        let features = self
            .config
            .plans
            .values()
            .flat_map(|p| p.features.iter().cloned());
        LabelSets::new(self.config.pricing.keys().cloned(), features)
    }

    /// The circuit of the provider named as `provider` and reached at `url` with its format,
    /// if this generation has it.
    fn circuit_of(&self, provider: &ProviderConfig, url: &str) -> Option<Arc<UpstreamHealth>> {
        self.providers
            .iter()
            .zip(&self.provider_urls)
            .zip(self.upstream_health.iter())
            .find(|((p, u), _)| {
                p.name == provider.name && p.format == provider.format && u.as_str() == url
            })
            .map(|(_, health)| health.clone())
    }
}

/// Where each provider is reached: its URL, or the built-in mock's route for its format.
fn provider_urls(
    providers: &[ProviderConfig],
    mock: Option<SocketAddr>,
) -> Result<Vec<String>, ConfigError> {
    providers
        .iter()
        .map(|p| match (p.url.is_empty(), mock, p.format) {
            (false, _, _) => Ok(p.url.clone()),
            (true, Some(addr), UpstreamFormat::OpenAi) => Ok(format!("http://{addr}/v1")),
            (true, Some(addr), UpstreamFormat::Anthropic) => Ok(format!("http://{addr}")),
            (true, None, _) => {
                let key = if p.name == DEFAULT_UPSTREAM {
                    "upstream.url".to_string()
                } else {
                    format!("upstreams.{}.url", p.name)
                };
                Err(ConfigError::invalid(
                    key,
                    "empty: the built-in mock provider serves providers without a URL, and it \
                     starts only at start-up (this gateway started without it); set a URL or \
                     restart",
                ))
            }
        })
        .collect()
}
