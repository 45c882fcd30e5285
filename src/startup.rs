//! Assembles a running gateway from a [`Config`] and a bound listener: the shared state, the
//! per-user actors, the HTTP server, and (when no upstream is configured) the built-in mock
//! provider in-process. `main` and the tests both start the gateway through [`start`].

use crate::auth::{Authenticator, FailureLimiter};
use crate::catalog::Catalog;
use crate::clock::{Clock, SystemClock};
use crate::config::{
    Config, ProviderConfig, UpstreamFormat, DEFAULT_UPSTREAM, DEVELOPMENT_JWT_SECRET,
};
use crate::http::{serve, serve_metrics, AppState, ServeOptions};
use crate::mock::{self, MockOptions};
use crate::policy::guardrails::Guardrails;
use crate::relay::health::UpstreamHealth;
use crate::telemetry::{redact_url, LabelSets, LogSink, Metrics, PromptHasher};
use crate::tokenize::TokenCounter;
use crate::users::{MemoryStore, RedisLedger, SnapshotError, Snapshots, UserRegistry, UserStore};
use actix_web::dev::{Server, ServerHandle};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;

/// How to run, beyond the config.
#[derive(Debug, Clone)]
pub struct StartOptions {
    pub log_sink: LogSink,
    pub handle_signals: bool,
    /// Wall clock of the windows and budgets (tests pass a `ManualClock`).
    pub clock: Arc<dyn Clock>,
    /// Use `users.snapshot_path` (off in in-process tests, which share a working directory).
    pub snapshots: bool,
}

impl Default for StartOptions {
    fn default() -> Self {
        Self {
            log_sink: LogSink::Stdout,
            handle_signals: true,
            clock: Arc::new(SystemClock),
            snapshots: true,
        }
    }
}

/// A started gateway. Await (or spawn) `server` to run it.
pub struct Gateway {
    pub addr: SocketAddr,
    pub server: Server,
    /// The in-process mock provider (address and handle), when the config named no upstream.
    pub mock: Option<(SocketAddr, ServerHandle)>,
    pub upstream_url: String,
    /// Where `/metrics` is served when `server.metrics_listen` is set.
    pub metrics_addr: Option<SocketAddr>,
    /// The embedded store's snapshot file (write it once more after the server stops).
    pub snapshots: Option<Snapshots>,
}

/// Starts the gateway on `listener`. Must run inside an actix system.
pub fn start(
    config: Config,
    listener: TcpListener,
    options: StartOptions,
) -> std::io::Result<Gateway> {
    // One TLS backend for awc (ring); ignore the error if a provider is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    TokenCounter::warm_up();
    if config.auth.jwt_secret.expose() == DEVELOPMENT_JWT_SECRET {
        tracing::warn!(
            "auth.jwt_secret is the public development secret: anyone can mint tokens. \
             Set TOLLGATE_JWT_SECRET before exposing this gateway."
        );
    }
    // Providers without a URL are served by the built-in mock (started once, in-process): the
    // default provider at its OpenAI routes, an Anthropic-format one at its `/v1/messages`.
    let providers: Arc<[ProviderConfig]> = config.providers().into();
    let mock = if providers.iter().any(|p| p.url.is_empty()) {
        Some(start_embedded_mock(&config)?)
    } else {
        None
    };
    let provider_urls: Vec<String> = providers
        .iter()
        .map(|p| match (&mock, p.url.is_empty(), p.format) {
            (Some((addr, _)), true, UpstreamFormat::OpenAi) => format!("http://{addr}/v1"),
            (Some((addr, _)), true, UpstreamFormat::Anthropic) => format!("http://{addr}"),
            _ => p.url.clone(),
        })
        .collect();
    for (provider, url) in providers.iter().zip(&provider_urls) {
        if provider.url.is_empty() {
            tracing::info!(
                provider = %provider.name,
                format = provider.format.as_str(),
                mock = %url,
                "no URL for this provider (TOLLGATE_UPSTREAM_URL for the default): the built-in \
                 mock provider serves it"
            );
        } else if provider.name != DEFAULT_UPSTREAM {
            tracing::info!(
                provider = %provider.name,
                format = provider.format.as_str(),
                url = %redact_url(url),
                "provider configured"
            );
        }
    }
    let upstream_url = provider_urls[0].clone();
    let addr = listener.local_addr()?;
    let workers = match config.server.workers {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    let features = config
        .plans
        .values()
        .flat_map(|p| p.features.iter().cloned());
    let metrics = Metrics::install(
        config.metrics.max_user_series,
        LabelSets::new(config.pricing.keys().cloned(), features),
    );
    metrics.declare_known_labels();
    start_upkeep(metrics.clone());
    let metrics_server = match config.server.metrics_listen.as_str() {
        "" => {
            if !addr.ip().is_loopback() && config.metrics.bearer_token.is_empty() {
                tracing::warn!(
                    listen = %addr,
                    "/metrics is served on server.listen without metrics.bearer_token: anyone \
                     who reaches the gateway can read every user's spend"
                );
            }
            None
        }
        addr => {
            let listener = TcpListener::bind(addr).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "server.metrics_listen: cannot listen on {addr}: {e} (another gateway on \
                         this host? give each its own metrics port, or \"\" to serve /metrics \
                         on server.listen)"
                    ),
                )
            })?;
            let bound = listener.local_addr()?;
            tracing::info!(listen = %bound, "serving /metrics on its own listener");
            let token = config.metrics.bearer_token.clone();
            Some((bound, serve_metrics(listener, metrics.clone(), token)?))
        }
    };
    let metrics_addr = metrics_server.as_ref().map(|(addr, _)| *addr);
    if let Some((_, server)) = metrics_server {
        actix_rt::spawn(server);
    }
    let memory = Arc::new(MemoryStore::default());
    let redis = start_redis(&config, &metrics)?;
    let snapshots = match redis {
        // Redis holds the state: no snapshot file.
        Some(_) => None,
        None => open_snapshots(&config, &options, memory.clone())?,
    };
    let store: Arc<dyn UserStore> = memory;
    let state = Arc::new(AppState {
        auth_failures: FailureLimiter::new(&config.auth),
        auth: Authenticator::new(&config.auth)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?,
        users: UserRegistry::new(
            workers,
            &config,
            options.clock,
            metrics.clone(),
            store,
            redis,
        ),
        metrics,
        guardrails: Guardrails::new(&config.guardrails)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
        catalog: Catalog::new(&config),
        hasher: PromptHasher::new(&config.logging.prompt_hash_key),
        log_sink: options.log_sink,
        upstream_health: providers
            .iter()
            .map(|_| UpstreamHealth::default())
            .collect(),
        provider_urls,
        providers,
        config,
    });
    // The identity provider's keys: fetched off the request path, on this actix system (the
    // fetch loop builds its own awc client). Start-up does not wait for the provider: until the
    // keys are loaded, `/readyz` says not ready and tokens that need them are refused.
    if let Some(refresher) = state.auth.jwks_refresher() {
        actix_rt::spawn(refresher.run());
    }
    let server = serve(
        listener,
        state,
        ServeOptions {
            workers,
            handle_signals: options.handle_signals,
        },
    )?;
    tracing::info!(listen = %addr, upstream = %redact_url(&upstream_url), "tollgate is serving");
    Ok(Gateway {
        addr,
        server,
        mock,
        upstream_url,
        metrics_addr,
        snapshots,
    })
}

/// Redis mode (`redis.url` set): the shared ledger, its probe task, and a start-up check of
/// the server's eviction policy. Start-up does not wait for Redis: until it answers, the outage
/// policy applies.
fn start_redis(config: &Config, metrics: &Metrics) -> std::io::Result<Option<Arc<RedisLedger>>> {
    if config.redis.url.is_empty() {
        return Ok(None);
    }
    let ledger = RedisLedger::new(config, metrics.clone())
        .map(Arc::new)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let (mode, urls) = ledger.mode();
    let redis = config
        .redis
        .url
        .expose()
        .split(',')
        .map(|url| redact_url(url.trim()))
        .collect::<Vec<_>>()
        .join(",");
    let said = match mode {
        "cluster" => format!("Redis Cluster, {urls} seed node(s)"),
        _ => String::from("Redis, single node"),
    };
    tracing::info!(
        %redis,
        redis_mode = mode,
        seed_nodes = urls,
        expected_replicas = config.redis.expected_replicas,
        "shared state in {said}"
    );
    let check = ledger.clone();
    actix_rt::spawn(async move { check.check_server().await });
    actix_rt::spawn(ledger.clone().probe_forever());
    Ok(Some(ledger))
}

/// Opens the snapshot file (embedded mode) and writes it at `users.snapshot_interval_secs`.
fn open_snapshots(
    config: &Config,
    options: &StartOptions,
    memory: Arc<MemoryStore>,
) -> std::io::Result<Option<Snapshots>> {
    if config.users.snapshot_path.is_empty() || !options.snapshots {
        return Ok(None);
    }
    let invalid =
        |e: SnapshotError| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string());
    let snapshots =
        Snapshots::open(Path::new(&config.users.snapshot_path), memory).map_err(invalid)?;
    let every = std::time::Duration::from_secs(config.users.snapshot_interval_secs);
    let writer = snapshots.clone();
    actix_rt::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            if let Err(e) = writer.write() {
                tracing::error!(error = %e, "cannot write the state snapshot");
            }
        }
    });
    Ok(Some(snapshots))
}

/// Runs the exporter's upkeep every few seconds (drains histogram samples between scrapes).
fn start_upkeep(metrics: Metrics) {
    actix_rt::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            every.tick().await;
            metrics.upkeep();
        }
    });
}

fn start_embedded_mock(config: &Config) -> std::io::Result<(SocketAddr, ServerHandle)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let options = MockOptions {
        tokens: config.mock.tokens,
        tokens_per_second: config.mock.tokens_per_second,
        first_token_delay_ms: config.mock.first_token_delay_ms,
        ..MockOptions::default()
    };
    let mock = mock::serve(listener, options)?;
    let handle = mock.server.handle();
    actix_rt::spawn(mock.server);
    Ok((mock.addr, handle))
}
