//! [`ApiError`] → HTTP response: status, OpenAI error body and `Retry-After`.

use crate::accounting::RateLimitHeaders;
use crate::error::{ApiError, ErrorCode};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, HttpResponseBuilder};

/// The `x-ratelimit-*` headers (OpenAI's names).
pub(super) fn add_rate_limit_headers(
    response: &mut HttpResponseBuilder,
    limits: &RateLimitHeaders,
) {
    // Static names and numbers formatted into the values: no name is parsed per response.
    for (name, value) in [
        ("x-ratelimit-limit-requests", limits.limit_requests),
        ("x-ratelimit-remaining-requests", limits.remaining_requests),
        ("x-ratelimit-limit-tokens", limits.limit_tokens),
        ("x-ratelimit-remaining-tokens", limits.remaining_tokens),
    ] {
        response.insert_header((HeaderName::from_static(name), HeaderValue::from(value)));
    }
}

pub(super) fn error_response(error: &ApiError) -> HttpResponse {
    let status =
        StatusCode::from_u16(error.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = HttpResponse::build(status);
    response.content_type("application/json");
    if let Some(secs) = error.retry_after_secs {
        response.insert_header(("retry-after", secs.to_string()));
    }
    if let Some(limits) = &error.rate_limits {
        add_rate_limit_headers(&mut response, limits);
    }
    if error.final_answer {
        response.insert_header(("x-should-retry", "false"));
    }
    if error.code == ErrorCode::RequestTimeout {
        // The rest of a stalled body may never come: do not wait for it on this connection.
        response.force_close();
    }
    if error.code == ErrorCode::InvalidToken || error.code == ErrorCode::TokenExpired {
        response.insert_header(("www-authenticate", "Bearer error=\"invalid_token\""));
    } else if error.code == ErrorCode::MissingToken {
        response.insert_header(("www-authenticate", "Bearer"));
    }
    response.body(error.body().to_json())
}
