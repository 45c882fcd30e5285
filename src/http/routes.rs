//! The route table and the small handlers (`/v1/usage`, health, 404/405).

use super::callers;
use super::chat::chat_completions;
use super::demo;
use super::errors::error_response;
use super::models;
use crate::auth::JwksStatus;
use crate::config::Secret;
use crate::error::{ApiError, ErrorCode};
use crate::reload::Live;
use crate::telemetry::Metrics;
use crate::users::UserLimits;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;
use sha2::{Digest, Sha256};

pub(super) fn configure(cfg: &mut web::ServiceConfig, with_metrics: bool, with_admin: bool) {
    if with_metrics {
        cfg.route("/metrics", web::get().to(metrics));
    }
    if with_admin {
        super::admin::configure(cfg);
    }
    cfg.service(
        web::resource("/v1/chat/completions")
            .route(web::post().to(chat_completions))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/models")
            .route(web::get().to(models::list))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/models/{id:.+}")
            .route(web::get().to(models::one))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/usage")
            .route(web::get().to(usage))
            .default_service(web::to(method_not_allowed)),
    )
    .route("/chat", web::get().to(demo::page))
    .route("/chat/app.js", web::get().to(demo::script))
    .route("/chat/app.css", web::get().to(demo::style))
    .route("/chat/icon.svg", web::get().to(demo::icon))
    .route("/healthz", web::get().to(healthz))
    .route("/readyz", web::get().to(readyz))
    .default_service(web::to(not_found));
}

async fn usage(req: HttpRequest, live: web::Data<Live>) -> HttpResponse {
    let state = live.current();
    let identity = match callers::identify(&req, &state) {
        Ok(identity) => identity,
        Err(e) => return error_response(&e),
    };
    let limits = UserLimits::for_plan(&state.config, &identity.plan);
    match state.users.usage(&identity.user_id, limits).await {
        Ok(usage) => HttpResponse::Ok().json(json!({
            "user_id": identity.user_id,
            "plan": identity.plan,
            "usage": usage,
        })),
        Err(e) => error_response(&e),
    }
}

async fn metrics(req: HttpRequest, live: web::Data<Live>) -> HttpResponse {
    let state = live.current();
    render(&req, &state.metrics, &state.config.metrics.bearer_token)
}

/// What the separate metrics listener serves: the metrics and the token that guards them.
pub(super) struct MetricsAccess {
    pub metrics: Metrics,
    pub bearer_token: Secret,
}

/// `/metrics` on the separate metrics listener.
pub(super) async fn metrics_only(
    req: HttpRequest,
    access: web::Data<MetricsAccess>,
) -> HttpResponse {
    render(&req, &access.metrics, &access.bearer_token)
}

/// The exposition, to a caller presenting `token` (when one is configured).
fn render(req: &HttpRequest, metrics: &Metrics, token: &Secret) -> HttpResponse {
    if let Err(e) = check_bearer(req, token) {
        return error_response(&e);
    }
    HttpResponse::Ok()
        .content_type(Metrics::CONTENT_TYPE)
        .body(metrics.render())
}

/// `Authorization: Bearer <token>` must match `token` when it is set (compared as SHA-256
/// digests, in constant time).
fn check_bearer(req: &HttpRequest, token: &Secret) -> Result<(), ApiError> {
    if token.is_empty() {
        return Ok(());
    }
    let presented = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .ok_or_else(|| ApiError::new(ErrorCode::MissingToken, "/metrics needs its bearer token"))?;
    let digest = |bytes: &[u8]| Sha256::digest(bytes);
    let (a, b) = (digest(presented), digest(token.expose().as_bytes()));
    let difference = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    if difference == 0 {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::InvalidToken,
            "not the bearer token of /metrics",
        ))
    }
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Ready when Redis answers (if configured), some provider's circuit is not open and the JWKS
/// keys are loaded (if configured).
async fn readyz(live: web::Data<Live>) -> HttpResponse {
    let state = live.current();
    let redis = match state.users.redis_ledger() {
        None => "not_configured",
        Some(ledger) if ledger.ready() => "ok",
        Some(_) => "unavailable",
    };
    let persistence = state
        .users
        .redis_ledger()
        .map_or("not_configured", |ledger| ledger.persistence().as_str());
    let circuit = |open: bool| if open { "circuit_open" } else { "ok" };
    let providers: serde_json::Map<String, serde_json::Value> = state
        .providers
        .iter()
        .zip(state.upstream_health.iter())
        .map(|(p, health)| (p.name.clone(), circuit(health.circuit_open()).into()))
        .collect();
    // Not ready only when no provider is: a fallback may still serve.
    let upstream = circuit(state.upstream_health.iter().all(|h| h.circuit_open()));
    let jwks = state.auth.jwks_status();
    let ready = redis != "unavailable" && upstream == "ok" && jwks != JwksStatus::Unavailable;
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "redis": redis,
        // Not a readiness condition: a warning (see docs/redis.md).
        "redis_persistence": persistence,
        "upstream": upstream,
        "upstreams": providers,
        "jwks": jwks.as_str(),
    });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

async fn not_found() -> HttpResponse {
    error_response(&ApiError::new(ErrorCode::NotFound, "no such route"))
}

async fn method_not_allowed() -> HttpResponse {
    error_response(&ApiError::new(
        ErrorCode::MethodNotAllowed,
        "method not allowed on this route",
    ))
}
