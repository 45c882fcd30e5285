//! The demo chat page (`server.demo_ui`): one static page, its script and its style, compiled
//! into the binary and served under a strict Content-Security-Policy (no inline code, no other
//! origins). The page only talks to this gateway's own API with the token the user pastes.

use super::state::AppState;
use crate::error::{ApiError, ErrorCode};
use crate::reload::Live;
use actix_web::{web, HttpResponse};

const PAGE: &str = include_str!("demo/chat.html");
const SCRIPT: &str = include_str!("demo/app.js");
const STYLE: &str = include_str!("demo/app.css");
const ICON: &str = include_str!("demo/icon.svg");
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(state: &AppState, content_type: &str, body: &'static str) -> HttpResponse {
    if !state.config.server.demo_ui {
        return super::errors::error_response(&ApiError::new(ErrorCode::NotFound, "no such route"));
    }
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header(("content-security-policy", CSP))
        .insert_header(("x-content-type-options", "nosniff"))
        .insert_header(("referrer-policy", "no-referrer"))
        .insert_header(("cache-control", "no-cache"))
        .body(body)
}

pub(super) async fn page(live: web::Data<Live>) -> HttpResponse {
    asset(&live.current(), "text/html; charset=utf-8", PAGE)
}

pub(super) async fn script(live: web::Data<Live>) -> HttpResponse {
    asset(&live.current(), "text/javascript; charset=utf-8", SCRIPT)
}

pub(super) async fn icon(live: web::Data<Live>) -> HttpResponse {
    asset(&live.current(), "image/svg+xml", ICON)
}

pub(super) async fn style(live: web::Data<Live>) -> HttpResponse {
    asset(&live.current(), "text/css; charset=utf-8", STYLE)
}
