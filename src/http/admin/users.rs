//! The admin API's user routes: inspect a user, set or drop per-user overrides, block and
//! unblock, reset windows, and the top spenders. Each change goes to the user's actor (which
//! writes it where the user's state lives) and is audited with the settings before and after.

use super::{audited, Admin};
use crate::calendar::{parse_rfc3339, rfc3339};
use crate::config::{CostOverrides, RateOverrides};
use crate::error::{ApiError, ErrorCode};
use crate::http::errors::error_response;
use crate::reload::Live;
use crate::users::admin::{AdminOp, Overrides, UserAdmin, Window};
use crate::users::{Inspection, UserLimits};
use actix_web::{web, HttpRequest, HttpResponse, Scope};
use serde::Deserialize;
use serde_json::{json, Value};

/// Longest user id accepted in a path (as the front ends' user headers).
const MAX_USER_BYTES: usize = 256;
/// Most spenders `GET /admin/v1/top` lists.
const MAX_TOP: usize = 1000;

pub(super) fn configure(scope: Scope) -> Scope {
    scope
        .route("/users/{user}", web::get().to(inspect))
        .route("/users/{user}/overrides", web::put().to(set_overrides))
        .route("/users/{user}/overrides", web::delete().to(clear_overrides))
        .route("/users/{user}/block", web::post().to(block))
        .route("/users/{user}/block", web::delete().to(unblock))
        .route("/users/{user}/reset", web::post().to(reset))
        .route("/top", web::get().to(top))
}

/// `PUT …/overrides` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OverridesBody {
    #[serde(default)]
    rate: RateOverrides,
    #[serde(default)]
    cost: CostOverrides,
    /// RFC 3339; absent = until removed.
    #[serde(default)]
    expires_at: Option<String>,
}

/// `POST …/reset` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetBody {
    windows: Vec<Window>,
}

#[derive(Debug, Deserialize)]
struct InspectQuery {
    /// The plan whose limits to report under when the user made no request yet here.
    plan: Option<String>,
}

#[derive(Debug, Deserialize)]
struct TopQuery {
    window: Option<String>,
    n: Option<usize>,
}

fn user_of(req: &HttpRequest) -> Result<String, ApiError> {
    let user = req.match_info().get("user").unwrap_or_default();
    if user.is_empty() || user.len() > MAX_USER_BYTES || user.chars().any(char::is_control) {
        return Err(ApiError::new(
            ErrorCode::InvalidUser,
            format!("a user id is 1 to {MAX_USER_BYTES} bytes of text"),
        ));
    }
    Ok(user.to_string())
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidParameter, message)
}

/// The settings as the API shows them (`expires_at` in RFC 3339).
fn admin_view(admin: &UserAdmin) -> Value {
    json!({
        "blocked": admin.blocked,
        "overrides": admin.overrides.as_ref().map(|o| json!({
            "rate": o.rate,
            "cost": o.cost,
            "expires_at": o.expires_at_ms.map(rfc3339),
        })),
    })
}

fn limits_view(l: &UserLimits) -> Value {
    json!({
        "requests_per_minute": l.requests_per_minute,
        "requests_per_day": l.requests_per_day,
        "tokens_per_day": l.tokens_per_day,
        "max_concurrent_streams": l.max_concurrent_streams,
        "max_daily_usd": l.daily_cap_micro_usd as f64 / 1e6,
        "max_monthly_usd": l.monthly_cap_micro_usd as f64 / 1e6,
        "alert_threshold_percent": l.alert_threshold_percent,
    })
}

/// `GET /admin/v1/users/{user}`: windows, spend, open requests, settings, last refusal.
async fn inspect(
    req: HttpRequest,
    live: web::Data<Live>,
    query: web::Query<InspectQuery>,
) -> HttpResponse {
    audited(&req, &live, "user.inspect", |admin: Admin| async move {
        let user = user_of(&admin.req)?;
        let plan = query.plan.clone().unwrap_or_default();
        let fallback = UserLimits::for_plan(&admin.state.config, &plan);
        let Inspection {
            usage,
            admin: settings,
            last_refusal,
            limits,
        } = admin.state.users.inspect(&user, fallback).await?;
        let body = json!({
            "user_id": user,
            "settings": admin_view(&settings),
            "limits": limits_view(&limits),
            "usage": usage,
            "last_refusal": last_refusal.map(|r| json!({
                "code": r.code.as_str(),
                "at": rfc3339(r.at_ms),
            })),
        });
        Ok((HttpResponse::Ok().json(&body), json!({"user": user})))
    })
    .await
}

/// Applies `op` to the user named in the path, answering and auditing the settings.
async fn change(
    req: HttpRequest,
    live: web::Data<Live>,
    action: &'static str,
    op: Result<AdminOp, ApiError>,
) -> HttpResponse {
    audited(&req, &live, action, |admin: Admin| async move {
        let user = user_of(&admin.req)?;
        let op = op?;
        let change = admin.state.users.change_admin(&user, op.clone()).await?;
        let (before, after) = (admin_view(&change.before), admin_view(&change.after));
        let mut detail = json!({"user": user, "before": before, "after": after});
        if let AdminOp::Reset(windows) = &op {
            detail["reset"] = json!(windows);
        }
        let body = json!({"user_id": user, "settings": after});
        Ok((HttpResponse::Ok().json(&body), detail))
    })
    .await
}

/// `PUT /admin/v1/users/{user}/overrides`.
async fn set_overrides(req: HttpRequest, live: web::Data<Live>, body: web::Bytes) -> HttpResponse {
    let now = live.current().users.now_ms();
    let op = parse_overrides(&body, now).map(AdminOp::SetOverrides);
    change(req, live, "user.overrides.set", op).await
}

fn parse_overrides(body: &[u8], now_ms: u64) -> Result<Overrides, ApiError> {
    let body: OverridesBody = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidJson,
            format!(
                "expected {{\"rate\": {{…}}, \"cost\": {{…}}, \"expires_at\": \"RFC 3339\"}}: {e}"
            ),
        )
    })?;
    let expires_at_ms = match &body.expires_at {
        None => None,
        Some(text) => Some(parse_rfc3339(text).ok_or_else(|| {
            invalid("expires_at must be an RFC 3339 time such as 2026-12-31T00:00:00Z")
        })?),
    };
    let overrides = Overrides {
        rate: body.rate,
        cost: body.cost,
        expires_at_ms,
    };
    if overrides.rate == RateOverrides::default() && overrides.cost == CostOverrides::default() {
        return Err(invalid(
            "name at least one rate.* or cost.* key to override",
        ));
    }
    match overrides.invalid(now_ms) {
        Some(why) => Err(invalid(why)),
        None => Ok(overrides),
    }
}

/// `DELETE /admin/v1/users/{user}/overrides`.
async fn clear_overrides(req: HttpRequest, live: web::Data<Live>) -> HttpResponse {
    change(
        req,
        live,
        "user.overrides.clear",
        Ok(AdminOp::ClearOverrides),
    )
    .await
}

/// `POST /admin/v1/users/{user}/block`: refused from now on, open streams cut at their next
/// report.
async fn block(req: HttpRequest, live: web::Data<Live>) -> HttpResponse {
    change(req, live, "user.block", Ok(AdminOp::Block)).await
}

/// `DELETE /admin/v1/users/{user}/block`.
async fn unblock(req: HttpRequest, live: web::Data<Live>) -> HttpResponse {
    change(req, live, "user.unblock", Ok(AdminOp::Unblock)).await
}

/// `POST /admin/v1/users/{user}/reset` with `{"windows": ["minute", "day", "month"]}`.
async fn reset(req: HttpRequest, live: web::Data<Live>, body: web::Bytes) -> HttpResponse {
    let op = serde_json::from_slice::<ResetBody>(&body)
        .map_err(|e| {
            ApiError::new(
                ErrorCode::InvalidJson,
                format!("expected {{\"windows\": [\"minute\" | \"day\" | \"month\", …]}}: {e}"),
            )
        })
        .and_then(|b| {
            if b.windows.is_empty() {
                Err(invalid("name at least one window: minute, day or month"))
            } else {
                Ok(AdminOp::Reset(b.windows))
            }
        });
    change(req, live, "user.reset", op).await
}

/// `GET /admin/v1/top?window=day|month&n=20`: the biggest spenders by settled spend.
async fn top(req: HttpRequest, live: web::Data<Live>, query: web::Query<TopQuery>) -> HttpResponse {
    audited(&req, &live, "top", |admin: Admin| async move {
        let month = match query.window.as_deref().unwrap_or("day") {
            "day" => false,
            "month" => true,
            _ => return Err(invalid("window must be day or month")),
        };
        let n = query.n.unwrap_or(20);
        if n == 0 || n > MAX_TOP {
            return Err(invalid(format!("n must be from 1 to {MAX_TOP}")));
        }
        let spenders = admin.state.users.top_spenders(month, n).await?;
        let rows: Vec<Value> = spenders
            .iter()
            .map(|(user, micro)| json!({"user_id": user, "spend_usd": *micro as f64 / 1e6}))
            .collect();
        let window = if month { "month" } else { "day" };
        let body = json!({"window": window, "users": rows});
        Ok((
            HttpResponse::Ok().json(&body),
            json!({"window": window, "n": n}),
        ))
    })
    .await
}

/// Turns a route's error into its response (for the audit helper).
pub(super) fn answer(error: &ApiError) -> HttpResponse {
    error_response(error)
}
