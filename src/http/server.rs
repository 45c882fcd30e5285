//! Builds and starts the HTTP server on a listener the caller bound (port 0 in tests).

use super::connections::ConnectionGate;
use super::cors::{grant, is_preflight, preflight_response, CorsPolicy};
use super::errors::error_response;
use super::request_headers::check_header_sizes;
use super::request_id::{new_request_id, RequestId};
use super::routes;
use crate::auth::{Authenticator, FailureLimiter};
use crate::catalog::Catalog;
use crate::config::{Config, ProviderConfig, Secret};
use crate::policy::guardrails::Guardrails;
use crate::relay::health::UpstreamHealth;
use crate::relay::Upstreams;
use crate::telemetry::{LogSink, Metrics, PromptHasher};
use crate::users::UserRegistry;
use actix_web::dev::{Server, Service, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::KeepAlive;
use actix_web::{web, App, HttpMessage, HttpServer};
use futures::future::LocalBoxFuture;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

/// Read-mostly state shared by every worker.
pub struct AppState {
    pub config: Config,
    /// Every provider (`default` first), and where each is reached (its URL, or the built-in
    /// mock's).
    pub providers: Arc<[ProviderConfig]>,
    pub provider_urls: Vec<String>,
    pub auth: Authenticator,
    /// Failed authentications per client address (`auth.max_failures_per_minute`).
    pub auth_failures: FailureLimiter,
    pub users: UserRegistry,
    pub catalog: Catalog,
    pub hasher: PromptHasher,
    pub log_sink: LogSink,
    pub metrics: Metrics,
    pub guardrails: Guardrails,
    /// Each provider's circuit, numbered as `providers`.
    pub upstream_health: Arc<[UpstreamHealth]>,
}

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub workers: usize,
    /// Stop gracefully on SIGINT/SIGTERM (the binary); off in tests.
    pub handle_signals: bool,
}

/// Starts serving `state` on `listener`; the returned server runs until stopped.
pub fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    options: ServeOptions,
) -> std::io::Result<Server> {
    let data = web::Data::from(state.clone());
    let cors = CorsPolicy::new(&state.config.server.cors_allowed_origins);
    let shutdown_secs = state.config.server.shutdown_timeout_secs;
    let metrics_here = state.config.server.metrics_listen.is_empty();
    let (max_header, max_headers) = (
        state.config.server.max_header_bytes,
        state.config.server.max_headers_total_bytes,
    );
    let gate = ConnectionGate::new(state.config.server.max_connections, state.metrics.clone());
    let keep_alive = match state.config.server.keep_alive_timeout_secs {
        0 => KeepAlive::Disabled,
        secs => KeepAlive::Timeout(Duration::from_secs(secs)),
    };
    let server = HttpServer::new(move || {
        // awc clients are not Send: one set per worker, built here.
        let upstream = web::Data::new(Upstreams::new(
            data.providers.clone(),
            &data.provider_urls,
            data.upstream_health.clone(),
        ));
        let cors = cors.clone();
        let metrics = data.metrics.clone();
        App::new()
            .app_data(data.clone())
            .app_data(upstream)
            // Innermost: the refusal still gets CORS headers and its request id.
            .wrap_fn(move |req, srv| {
                let answer: LocalBoxFuture<'static, Result<ServiceResponse, actix_web::Error>> =
                    match check_header_sizes(req.headers(), max_header, max_headers) {
                        Ok(()) => Box::pin(srv.call(req)),
                        Err(e) => {
                            metrics.record_rejection(e.code);
                            let response = req.into_response(error_response(&e));
                            Box::pin(async move { Ok(response) })
                        }
                    };
                answer
            })
            .wrap_fn(move |req, srv| {
                let origin = cors.allowed_origin(req.headers());
                let answer: LocalBoxFuture<'static, Result<ServiceResponse, actix_web::Error>> =
                    if is_preflight(&req) {
                        let requested = req
                            .headers()
                            .get(actix_web::http::header::ACCESS_CONTROL_REQUEST_HEADERS)
                            .cloned();
                        let response =
                            req.into_response(preflight_response(origin, requested.as_ref()));
                        Box::pin(async move { Ok(response) })
                    } else {
                        let response = srv.call(req);
                        Box::pin(async move {
                            let mut response = response.await?.map_into_boxed_body();
                            grant(&mut response, origin);
                            Ok(response)
                        })
                    };
                answer
            })
            .wrap_fn(|req, srv| {
                let id = new_request_id();
                req.extensions_mut().insert(RequestId(id.clone()));
                let response = srv.call(req);
                async move {
                    let mut response = response.await?;
                    if let Ok(value) = HeaderValue::from_str(&id) {
                        response
                            .headers_mut()
                            .insert(HeaderName::from_static("x-request-id"), value);
                    }
                    Ok(response)
                }
            })
            .configure(|cfg| routes::configure(cfg, metrics_here))
    })
    .on_connect(move |connection, data| gate.on_connect(connection, data))
    .workers(options.workers.max(1))
    .keep_alive(keep_alive)
    .tcp_nodelay(true)
    .h1_allow_half_closed(false)
    .client_request_timeout(Duration::from_secs(10))
    .shutdown_timeout(shutdown_secs);
    let server = if options.handle_signals {
        server
    } else {
        server.disable_signals()
    };
    Ok(server.listen(listener)?.run())
}

/// Serves only `/metrics` on its own listener (`server.metrics_listen`), to callers presenting
/// `bearer_token` when it is set.
pub fn serve_metrics(
    listener: TcpListener,
    metrics: Metrics,
    bearer_token: Secret,
) -> std::io::Result<Server> {
    let data = web::Data::new(routes::MetricsAccess {
        metrics,
        bearer_token,
    });
    Ok(HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/metrics", web::get().to(routes::metrics_only))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run())
}
