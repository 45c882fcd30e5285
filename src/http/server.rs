//! Builds and starts the HTTP server on a listener the caller bound (port 0 in tests).

use super::connections::ConnectionGate;
use super::cors::{grant, is_preflight, preflight_response};
use super::errors::error_response;
use super::request_headers::check_header_sizes;
use super::request_id::{new_request_id, RequestId};
use super::routes;
use crate::config::Secret;
use crate::reload::Live;
use crate::telemetry::Metrics;
use actix_web::dev::{Server, Service, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::KeepAlive;
use actix_web::{web, App, HttpMessage, HttpServer};
use futures::future::LocalBoxFuture;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

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
    live: Arc<Live>,
    options: ServeOptions,
) -> std::io::Result<Server> {
    // Restart-only settings (reload::RESTART_ONLY) are read once, here.
    let state = live.current();
    let data = web::Data::from(live);
    let shutdown_secs = state.config.server.shutdown_timeout_secs;
    let metrics_here = state.config.server.metrics_listen.is_empty();
    let admin_here = state.config.admin.listen.is_empty();
    let (max_header, max_headers) = (
        state.config.server.max_header_bytes,
        state.config.server.max_headers_total_bytes,
    );
    let gate = ConnectionGate::new(state.config.server.max_connections, state.metrics.clone());
    let server_metrics = state.metrics.clone();
    let keep_alive = match state.config.server.keep_alive_timeout_secs {
        0 => KeepAlive::Disabled,
        secs => KeepAlive::Timeout(Duration::from_secs(secs)),
    };
    let server = HttpServer::new(move || {
        let metrics = server_metrics.clone();
        let live = data.clone();
        App::new()
            .app_data(data.clone())
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
                // CORS reloads: the generation current now decides.
                let origin = live.current().cors.allowed_origin(req.headers());
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
            .configure(|cfg| routes::configure(cfg, metrics_here, admin_here))
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
    Ok(server.listen(super::listener::deepen(listener)?)?.run())
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
    .listen(super::listener::deepen(listener)?)?
    .run())
}
