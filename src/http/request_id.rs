//! The request id: made for every request, kept in its extensions, sent back as `x-request-id`.

use actix_web::HttpMessage;
use actix_web::HttpRequest;

#[derive(Debug, Clone)]
pub(super) struct RequestId(pub String);

pub(super) fn new_request_id() -> String {
    format!("req_{}", uuid::Uuid::new_v4().simple())
}

/// The id the middleware assigned (a fresh one if the middleware did not run).
pub(super) fn request_id(req: &HttpRequest) -> String {
    req.extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_else(new_request_id)
}
