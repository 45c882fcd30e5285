//! `GET /v1/models` and `GET /v1/models/{id}`: the priced models the caller's plan may use, in
//! OpenAI's shape. Authenticated like chat, except that a trusted front end naming no user (a
//! chat UI fetching its list at start-up) gets the list of its key's plan.

use super::callers;
use super::errors::error_response;
use super::state::AppState;
use crate::auth::{models_in_plan, Caller};
use crate::error::{ApiError, ErrorCode};
use crate::reload::Live;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

/// `GET /v1/models`.
pub(super) async fn list(req: HttpRequest, live: web::Data<Live>) -> HttpResponse {
    match visible_models(&req, &live.current()) {
        Ok(models) => HttpResponse::Ok().json(json!({
            "object": "list",
            "data": models.iter().map(|id| model_object(id)).collect::<Vec<_>>(),
        })),
        Err(e) => error_response(&e),
    }
}

/// `GET /v1/models/{id}`: the model, or `404 model_not_found` when the caller may not use it.
pub(super) async fn one(
    req: HttpRequest,
    id: web::Path<String>,
    live: web::Data<Live>,
) -> HttpResponse {
    match visible_models(&req, &live.current()) {
        Ok(models) if models.contains(&id.as_str()) => HttpResponse::Ok().json(model_object(&id)),
        Ok(_) => error_response(&ApiError::new(
            ErrorCode::ModelNotFound,
            "no such model for this caller",
        )),
        Err(e) => error_response(&e),
    }
}

/// The models the caller's plan may use.
fn visible_models<'s>(req: &HttpRequest, state: &'s AppState) -> Result<Vec<&'s str>, ApiError> {
    let plan_name = match callers::identify_caller(req, state)? {
        Caller::User(identity) => identity.plan,
        Caller::FrontEnd { plan, .. } => plan,
    };
    let plan = state.config.plans.get(&plan_name).ok_or_else(|| {
        ApiError::new(
            ErrorCode::UnknownPlan,
            "the token's plan is not known to this gateway",
        )
    })?;
    Ok(models_in_plan(plan, state.config.pricing.keys()))
}

fn model_object(id: &str) -> Value {
    json!({"id": id, "object": "model", "created": 0, "owned_by": "tollgate"})
}
