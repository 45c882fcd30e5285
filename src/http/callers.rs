//! Authentication as the routes run it: the caller's address is checked against the
//! per-address failure limit first ([`FailureLimiter`]), and every `401` counts against it.

use super::request_headers::RequestHeaders;
use super::state::AppState;
use crate::auth::{Caller, FailureLimiter, Identity};
use crate::error::ApiError;
use actix_web::HttpRequest;
use std::time::Instant;

/// The caller as a user (a front end naming no user is refused).
pub(super) fn identify(req: &HttpRequest, state: &AppState) -> Result<Identity, ApiError> {
    limited(req, &state.auth_failures, |headers| {
        state.auth.authenticate(headers)
    })
}

/// The caller, or a trusted front end naming no user (for `/v1/models`).
pub(super) fn identify_caller(req: &HttpRequest, state: &AppState) -> Result<Caller, ApiError> {
    limited(req, &state.auth_failures, |headers| {
        state.auth.authenticate_caller(headers)
    })
}

/// Runs `verify` unless the caller's address is refused; counts its authentication failures.
pub(super) fn limited<T>(
    req: &HttpRequest,
    failures: &FailureLimiter,
    verify: impl FnOnce(&RequestHeaders<'_>) -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    let address = req.peer_addr().map(|peer| peer.ip());
    if let Some(ip) = address {
        failures.check(ip, Instant::now())?;
    }
    let verified = verify(&RequestHeaders(req.headers()));
    if let (Err(e), Some(ip)) = (&verified, address) {
        if e.code.status() == 401 {
            failures.failed(ip, Instant::now());
        }
    }
    verified
}
