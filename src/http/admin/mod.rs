//! The operators' API under `/admin/v1`: on when `admin.key_sha256` is set (else every admin
//! route answers `404`), on its own listener when `admin.listen` is set. The caller presents
//! `Authorization: Bearer <admin key>`; the key's SHA-256 is compared with the configured one in
//! constant time, and failures count against the caller's address like any `401`. Every call
//! writes one audit line (who, what, before → after; key names, never values).
//!
//! Routes: `POST /admin/v1/reload` (re-read, validate and swap the config; `400 invalid_config`
//! naming the key when it is refused, the running config unchanged) here; the user routes and
//! the top spenders in [`users`].

mod users;

use super::callers::limited;
use super::errors::error_response;
use super::state::AppState;
use crate::error::{ApiError, ErrorCode};
use crate::reload::Live;
use actix_web::dev::Server;
use actix_web::http::header::AUTHORIZATION;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;

/// Adds the admin routes to a listener's routes.
pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    let scope = web::scope("/admin/v1").route("/reload", web::post().to(reload));
    cfg.service(users::configure(scope).default_service(web::to(not_found)));
}

/// Serves only the admin routes on their own listener (`admin.listen`).
pub fn serve_admin(listener: TcpListener, live: Arc<Live>) -> std::io::Result<Server> {
    let data = web::Data::from(live);
    Ok(HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .configure(configure)
            .default_service(web::to(not_found))
    })
    .workers(1)
    .disable_signals()
    .listen(crate::http::listener::deepen(listener)?)?
    .run())
}

async fn not_found() -> HttpResponse {
    error_response(&ApiError::new(ErrorCode::NotFound, "no such route"))
}

/// Who is calling: the admin key, named by the start of its digest (never the key).
fn authorize(req: &HttpRequest, state: &AppState) -> Result<String, ApiError> {
    let configured = state.config.admin.key_sha256.to_ascii_lowercase();
    if configured.is_empty() {
        // Off: as if there were no such route.
        return Err(ApiError::new(ErrorCode::NotFound, "no such route"));
    }
    limited(req, &state.auth_failures, |_| {
        let presented = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::MissingToken,
                    "the admin API needs Authorization: Bearer <admin key>",
                )
            })?;
        let digest = Sha256::digest(presented);
        let expected = hex::decode(&configured).unwrap_or_default();
        let same_length = expected.len() == digest.len();
        let difference = digest
            .iter()
            .zip(expected.iter().chain(std::iter::repeat(&0)))
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if same_length && difference == 0 {
            Ok(format!("admin-key:{}", &configured[..8]))
        } else {
            Err(ApiError::new(ErrorCode::InvalidToken, "not the admin key"))
        }
    })
}

/// An authorized admin call: the request, and the generation it runs under.
pub(super) struct Admin {
    pub req: HttpRequest,
    pub state: Arc<AppState>,
}

/// Runs an admin route: checks the key (a refusal is answered and audited), runs `route`, and
/// writes one audit line with its status and `detail` (or its error).
pub(super) async fn audited<F, Fut>(
    req: &HttpRequest,
    live: &Live,
    action: &'static str,
    route: F,
) -> HttpResponse
where
    F: FnOnce(Admin) -> Fut,
    Fut: Future<Output = Result<(HttpResponse, Value), ApiError>>,
{
    let state = live.current();
    let who = match authorize(req, &state) {
        Ok(who) => who,
        Err(e) => return refused(req, &state, action, &e),
    };
    let sink = state.log_sink.clone();
    let mut line = json!({
        "action": action,
        "who": who,
        "client": client_address(req),
    });
    let admin = Admin {
        req: req.clone(),
        state,
    };
    let response = match route(admin).await {
        Ok((response, detail)) => {
            line["status"] = response.status().as_u16().into();
            if let (Some(line), Value::Object(detail)) = (line.as_object_mut(), detail) {
                line.extend(detail);
            }
            response
        }
        Err(e) => {
            line["status"] = e.code.status().into();
            line["error"] = e.code.as_str().into();
            line["message"] = e.message.clone().into();
            users::answer(&e)
        }
    };
    sink.audit(line);
    response
}

/// `POST /admin/v1/reload`.
async fn reload(req: HttpRequest, live: web::Data<Live>) -> HttpResponse {
    let reloading = live.clone();
    audited(&req, &live, "reload", |admin: Admin| async move {
        let before = admin.state.generation;
        drop(admin);
        Ok(match reloading.reload() {
            Ok(reloaded) => (
                HttpResponse::Ok().json(json!({
                    "generation": reloaded.generation,
                    "changed": reloaded.changes.applied,
                    "need_restart": reloaded.changes.need_restart,
                })),
                json!({
                    "before": {"generation": before},
                    "after": {
                        "generation": reloaded.generation,
                        "changed": reloaded.changes.applied,
                        "need_restart": reloaded.changes.need_restart,
                    },
                }),
            ),
            Err(e) => {
                let error = ApiError::new(
                    ErrorCode::InvalidConfig,
                    format!("config not reloaded, the running one stays: {e}"),
                );
                (
                    error_response(&error),
                    json!({
                        "error": error.code.as_str(),
                        "message": error.message,
                        "before": {"generation": before},
                        "after": {"generation": before},
                    }),
                )
            }
        })
    })
    .await
}

/// Answers a refused admin call, auditing it (a missing route is not audited).
fn refused(req: &HttpRequest, state: &AppState, action: &str, error: &ApiError) -> HttpResponse {
    if error.code != ErrorCode::NotFound {
        state.log_sink.audit(json!({
            "action": action,
            "who": null,
            "client": client_address(req),
            "status": error.code.status(),
            "error": error.code.as_str(),
        }));
    }
    error_response(error)
}

fn client_address(req: &HttpRequest) -> Option<String> {
    req.peer_addr().map(|peer| peer.ip().to_string())
}
