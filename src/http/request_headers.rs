//! The request's headers as `auth` reads them (actix-web types stay in `http`).

use crate::auth::Headers;
use actix_web::http::header::HeaderMap;

/// An actix-web header map behind [`Headers`].
pub(super) struct RequestHeaders<'a>(pub &'a HeaderMap);

impl Headers for RequestHeaders<'_> {
    fn get(&self, name: &str) -> Option<&[u8]> {
        self.0.get(name).map(|value| value.as_bytes())
    }
}
