//! The request's headers as `auth` reads them (actix-web types stay in `http`), and their size
//! bounds.

use crate::auth::Headers;
use crate::error::{ApiError, ErrorCode};
use actix_web::http::header::HeaderMap;

/// Refuses a request whose headers exceed the bounds: one header (name and value bytes) over
/// `max_one`, or all of them over `max_total` (nginx and Envoy bound them likewise).
pub(super) fn check_header_sizes(
    headers: &HeaderMap,
    max_one: usize,
    max_total: usize,
) -> Result<(), ApiError> {
    let mut total = 0usize;
    for (name, value) in headers {
        let size = name.as_str().len() + value.len();
        if size > max_one {
            return Err(ApiError::new(
                ErrorCode::HeadersTooLarge,
                format!("a request header is larger than {max_one} bytes"),
            ));
        }
        total += size;
    }
    if total > max_total {
        return Err(ApiError::new(
            ErrorCode::HeadersTooLarge,
            format!("the request headers are larger than {max_total} bytes in all"),
        ));
    }
    Ok(())
}

/// An actix-web header map behind [`Headers`].
pub(super) struct RequestHeaders<'a>(pub &'a HeaderMap);

impl Headers for RequestHeaders<'_> {
    fn get(&self, name: &str) -> Option<&[u8]> {
        self.0.get(name).map(|value| value.as_bytes())
    }
}
