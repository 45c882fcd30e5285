//! CORS for browser chat UIs: preflights answered before authentication and limits; allowed
//! origins get `Access-Control-Allow-Origin` on every answer (errors included, or the browser
//! hides the reason) and may read the gateway's headers. Other origins get no CORS headers.

use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderMap, HeaderValue};
use actix_web::http::Method;
use actix_web::HttpResponse;

/// Headers a browser script may read from our answers.
const EXPOSED: &str = "x-request-id, retry-after, x-should-retry, x-ratelimit-limit-requests, \
x-ratelimit-remaining-requests, x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, \
x-tollgate-max-tokens";
/// Request headers a browser may always send; a preflight's other requested headers (e.g. the
/// OpenAI JS SDK's `x-stainless-*`) are granted too when they are plain header names.
const ALLOWED_HEADERS: &str = "authorization, content-type, x-tollgate-feature, x-session-id";
const MAX_AGE_SECS: &str = "600";

/// Which origins may call.
#[derive(Debug, Clone)]
pub struct CorsPolicy {
    origins: Vec<String>,
    any: bool,
}

impl CorsPolicy {
    pub fn new(origins: &[String]) -> Self {
        Self {
            any: origins.iter().any(|o| o == "*"),
            origins: origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
        }
    }

    /// The request's `Origin`, if it is allowed.
    pub fn allowed_origin(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let origin = headers.get(header::ORIGIN)?;
        let text = origin.to_str().ok()?.to_ascii_lowercase();
        (self.any || self.origins.contains(&text)).then(|| origin.clone())
    }
}

/// A CORS preflight: `OPTIONS` with `Origin` and `Access-Control-Request-Method`.
pub fn is_preflight(req: &ServiceRequest) -> bool {
    req.method() == Method::OPTIONS
        && req.headers().contains_key(header::ORIGIN)
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The answer to a preflight: 204, with the CORS grant only for an allowed origin.
pub fn preflight_response(
    origin: Option<HeaderValue>,
    requested: Option<&HeaderValue>,
) -> HttpResponse {
    let mut response = HttpResponse::NoContent();
    if let Some(origin) = origin {
        let mut allowed = ALLOWED_HEADERS.to_string();
        let extra = requested
            .and_then(|v| v.to_str().ok())
            .into_iter()
            .flat_map(|v| v.split(','))
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| {
                !h.is_empty()
                    && h.len() <= 64
                    && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !ALLOWED_HEADERS.split(", ").any(|a| a == h)
            })
            .take(32);
        for name in extra {
            allowed.push_str(", ");
            allowed.push_str(&name);
        }
        response
            .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin))
            .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, "GET, POST, OPTIONS"))
            .insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, allowed))
            .insert_header((header::ACCESS_CONTROL_MAX_AGE, MAX_AGE_SECS));
    }
    response.insert_header((header::VARY, "Origin"));
    response.finish()
}

/// Adds the CORS grant to an answer for an allowed origin.
pub fn grant<B>(response: &mut ServiceResponse<B>, origin: Option<HeaderValue>) {
    let headers = response.headers_mut();
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    if let Some(origin) = origin {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSED),
        );
    }
}
