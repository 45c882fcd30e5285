//! The upstream client: one awc client per HTTP worker (awc is `!Send`), `TCP_NODELAY` on every
//! connection, a raised connection limit, and the provider's key on every request. Errors before
//! the response starts map to 502/503/504 here; the provider's own error text is never passed on.

use crate::config::{Secret, UpstreamConfig};
use crate::error::{ApiError, ErrorCode};
use actix_service::ServiceExt;
use actix_tls::connect::{Connection, ConnectorService};
use awc::http::Uri;
use bytes::Bytes;
use std::time::Duration;
use tokio::net::TcpStream;

/// What [`UpstreamClient::send`] yields: the provider's response, body not yet read.
pub type UpstreamResponse = awc::ClientResponse;

/// Sends chat requests to `{upstream.url}/chat/completions`.
pub struct UpstreamClient {
    client: awc::Client,
    endpoint: String,
    api_key: Secret,
}

impl UpstreamClient {
    /// Builds this worker's client. Call once per worker, inside the `HttpServer::new` closure.
    pub fn new(base_url: &str, config: &UpstreamConfig) -> Self {
        let tcp = ConnectorService::default().map(|conn: Connection<Uri, TcpStream>| {
            let _ = conn.io_ref().set_nodelay(true);
            conn
        });
        let connector = awc::Connector::new()
            .connector(tcp)
            .timeout(Duration::from_secs(config.connect_timeout_secs))
            .limit(config.max_connections);
        let client = awc::Client::builder()
            .connector(connector)
            .disable_timeout()
            .finish();
        Self {
            client,
            endpoint: format!("{}/chat/completions", base_url.trim_end_matches('/')),
            api_key: config.api_key.clone(),
        }
    }

    /// POSTs `body` and waits at most `wait` for the response head. A non-2xx answer is an error.
    pub async fn send(&self, body: Bytes, wait: Duration) -> Result<UpstreamResponse, ApiError> {
        let mut request = self
            .client
            .post(&self.endpoint)
            .timeout(wait)
            .insert_header(("content-type", "application/json"))
            .insert_header(("accept", "application/json, text/event-stream"));
        if !self.api_key.is_empty() {
            request = request.bearer_auth(self.api_key.expose());
        }
        let response = request.send_body(body).await.map_err(|e| {
            use awc::error::SendRequestError as E;
            match e {
                E::Timeout => ApiError::new(
                    ErrorCode::UpstreamTimeout,
                    "the upstream provider did not answer in time",
                ),
                E::Connect(awc::error::ConnectError::Timeout) => ApiError::new(
                    ErrorCode::UpstreamTimeout,
                    "connecting to the upstream provider timed out",
                ),
                other => {
                    tracing::warn!(error = %other, "upstream request failed");
                    ApiError::new(
                        ErrorCode::UpstreamUnavailable,
                        "the upstream provider is unreachable",
                    )
                    .retry_after(1)
                }
            }
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        tracing::warn!(status = status.as_u16(), "upstream refused the request");
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        Err(match status.as_u16() {
            429 | 503 => ApiError::new(
                ErrorCode::UpstreamUnavailable,
                format!(
                    "the upstream provider is overloaded (status {})",
                    status.as_u16()
                ),
            )
            .retry_after(retry_after.unwrap_or(1).clamp(1, 60)),
            code if (400..500).contains(&code) => ApiError::new(
                ErrorCode::UpstreamFailed,
                format!("the upstream provider refused the request (status {code})"),
            )
            .no_retry(),
            code => ApiError::new(
                ErrorCode::UpstreamFailed,
                format!("the upstream provider answered with status {code}"),
            ),
        })
    }
}
