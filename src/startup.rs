//! Assembles a running gateway from a [`Config`] and a bound listener: the shared state, the
//! per-user actors, the HTTP server, and (when no upstream is configured) the built-in mock
//! provider in-process. `main` and the tests both start the gateway through [`start`].

use crate::auth::FailureLimiter;
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, ProviderConfig, DEFAULT_UPSTREAM, DEVELOPMENT_JWT_SECRET};
use crate::http::{serve, serve_admin, serve_metrics, AppState, Lasting, ServeOptions};
use crate::mock::{self, MockOptions};
use crate::reload::{reload_on_sighup, spawn_jwks_refresher, Live, Source};
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
    /// Where a reload re-reads the config (`SIGHUP`, `POST /admin/v1/reload`).
    pub reload_source: Source,
}

impl Default for StartOptions {
    fn default() -> Self {
        Self {
            log_sink: LogSink::Stdout,
            handle_signals: true,
            clock: Arc::new(SystemClock),
            snapshots: true,
            reload_source: Source::None,
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
    /// The config generation serving new requests; [`Live::reload`] swaps it.
    pub live: Arc<Live>,
    /// Where `/admin/v1` is served when `admin.listen` is set.
    pub admin_addr: Option<SocketAddr>,
}

/// Starts the gateway on `listener`. Must run inside an actix system.
pub fn start(
    config: Config,
    listener: TcpListener,
    options: StartOptions,
) -> std::io::Result<Gateway> {
    // One TLS backend for awc (ring); ignore the error if a provider is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The encodings of the priced models (by their names and the providers' names for them).
    TokenCounter::warm_up(
        config
            .pricing
            .iter()
            .flat_map(|(model, price)| [model.as_str(), price.upstream_model.as_str()]),
    );
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
    let mock_addr = mock.as_ref().map(|(addr, _)| *addr);
    for provider in providers.iter() {
        if provider.url.is_empty() {
            tracing::info!(
                provider = %provider.name,
                format = provider.format.as_str(),
                mock = ?mock_addr,
                "no URL for this provider (TOLLGATE_UPSTREAM_URL for the default): the built-in \
                 mock provider serves it"
            );
        } else if provider.name != DEFAULT_UPSTREAM {
            tracing::info!(
                provider = %provider.name,
                format = provider.format.as_str(),
                url = %redact_url(&provider.url),
                "provider configured"
            );
        }
    }
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
    let lasting = Lasting {
        auth_failures: Arc::new(FailureLimiter::new(&config.auth)),
        // Embedded actors run on the HTTP workers (one dedicated thread left as a fallback);
        // Redis-mode actors on threads of their own.
        users: Arc::new(
            UserRegistry::new(
                if redis.is_some() { workers } else { 1 },
                &config,
                options.clock,
                metrics.clone(),
                store,
                redis,
            )
            .actors_on_callers(),
        ),
        metrics,
        hasher: PromptHasher::new(&config.logging.prompt_hash_key),
        log_sink: options.log_sink,
        mock: mock_addr,
    };
    let state = AppState::build(1, config, &lasting, None)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    let upstream_url = state.provider_urls[0].clone();
    // The identity provider's keys: fetched off the request path, on this actix system (the
    // fetch loop builds its own awc client). Start-up does not wait for the provider: until the
    // keys are loaded, `/readyz` says not ready and tokens that need them are refused.
    spawn_jwks_refresher(&state);
    let live = Arc::new(Live::new(state, lasting, options.reload_source));
    if options.handle_signals {
        reload_on_sighup(live.clone());
    }
    let admin_addr = start_admin_listener(&live)?;
    let server = serve(
        listener,
        live.clone(),
        ServeOptions {
            workers,
            handle_signals: options.handle_signals,
        },
    )?;
    tracing::info!(listen = %addr, upstream = %redact_url(&upstream_url), "tollgate is serving");
    Ok(Gateway {
        addr,
        server,
        live,
        admin_addr,
        mock,
        upstream_url,
        metrics_addr,
        snapshots,
    })
}

/// The admin API's own listener (`admin.listen`), when set.
fn start_admin_listener(live: &Arc<Live>) -> std::io::Result<Option<SocketAddr>> {
    let state = live.current();
    let listen = state.config.admin.listen.as_str();
    if listen.is_empty() {
        return Ok(None);
    }
    let listener = TcpListener::bind(listen).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("admin.listen: cannot listen on {listen}: {e}"),
        )
    })?;
    let bound = listener.local_addr()?;
    tracing::info!(
        listen = %bound,
        enabled = !state.config.admin.key_sha256.is_empty(),
        "serving /admin/v1 on its own listener"
    );
    actix_rt::spawn(serve_admin(listener, live.clone())?);
    Ok(Some(bound))
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
