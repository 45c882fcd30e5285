//! The upstream client: one awc client per provider per HTTP worker (awc is `!Send`),
//! `TCP_NODELAY` on every connection, a raised connection limit, and the provider's key on every
//! request in its format's header. Errors before the response starts map to 502/503/504 here,
//! each with the [`AttemptFailure`] that decides whether a fallback may be tried; the provider's
//! own error text is never passed on.

use super::anthropic::ANTHROPIC_VERSION;
use crate::accounting::AttemptFailure;
use crate::config::{ProviderConfig, Secret, UpstreamFormat};
use crate::error::{ApiError, ErrorCode};
use actix_service::ServiceExt;
use actix_tls::connect::{Connection, ConnectorService};
use awc::http::Uri;
use bytes::Bytes;
use std::time::Duration;
use tokio::net::TcpStream;

/// What [`UpstreamClient::send`] yields: the provider's response, body not yet read.
pub type UpstreamResponse = awc::ClientResponse;

/// A request that failed before the provider's response started: what to answer, and why.
#[derive(Debug, Clone)]
pub struct SendFailure {
    pub error: ApiError,
    pub failure: AttemptFailure,
}

/// Sends chat requests to one provider: `{url}/chat/completions` (OpenAI format) or
/// `{url}/v1/messages` (Anthropic).
pub struct UpstreamClient {
    client: awc::Client,
    endpoint: String,
    api_key: Secret,
    format: UpstreamFormat,
}

impl UpstreamClient {
    /// Builds this worker's client for `provider`, reached at `url` (the provider's own, or the
    /// built-in mock's). Call once per worker, inside the `HttpServer::new` closure.
    pub fn new(provider: &ProviderConfig, url: &str) -> Self {
        let tcp = ConnectorService::default().map(|conn: Connection<Uri, TcpStream>| {
            let _ = conn.io_ref().set_nodelay(true);
            conn
        });
        let connector = awc::Connector::new()
            .connector(tcp)
            .timeout(Duration::from_secs(provider.connect_timeout_secs))
            .limit(provider.max_connections);
        let client = awc::Client::builder()
            .connector(connector)
            .disable_timeout()
            .finish();
        let base = url.trim_end_matches('/');
        let endpoint = match provider.format {
            UpstreamFormat::OpenAi => format!("{base}/chat/completions"),
            UpstreamFormat::Anthropic => format!("{base}/v1/messages"),
        };
        Self {
            client,
            endpoint,
            api_key: provider.api_key.clone(),
            format: provider.format,
        }
    }

    pub fn format(&self) -> UpstreamFormat {
        self.format
    }

    /// POSTs `body` and waits at most `wait` for the response head. A non-2xx answer is a
    /// failure.
    pub async fn send(&self, body: Bytes, wait: Duration) -> Result<UpstreamResponse, SendFailure> {
        let mut request = self
            .client
            .post(&self.endpoint)
            .timeout(wait)
            .insert_header(("content-type", "application/json"))
            .insert_header(("accept", "application/json, text/event-stream"));
        match self.format {
            UpstreamFormat::OpenAi if !self.api_key.is_empty() => {
                request = request.bearer_auth(self.api_key.expose());
            }
            UpstreamFormat::OpenAi => {}
            UpstreamFormat::Anthropic => {
                if !self.api_key.is_empty() {
                    request = request.insert_header(("x-api-key", self.api_key.expose()));
                }
                request = request.insert_header(("anthropic-version", ANTHROPIC_VERSION));
            }
        }
        let response = request.send_body(body).await.map_err(|e| {
            use awc::error::SendRequestError as E;
            match e {
                E::Timeout => SendFailure {
                    error: ApiError::new(
                        ErrorCode::UpstreamTimeout,
                        "the upstream provider did not answer in time",
                    ),
                    failure: AttemptFailure::Timeout,
                },
                E::Connect(awc::error::ConnectError::Timeout) => SendFailure {
                    error: ApiError::new(
                        ErrorCode::UpstreamTimeout,
                        "connecting to the upstream provider timed out",
                    ),
                    failure: AttemptFailure::Connect,
                },
                other => {
                    tracing::warn!(error = %other, "upstream request failed");
                    SendFailure {
                        error: ApiError::new(
                            ErrorCode::UpstreamUnavailable,
                            "the upstream provider is unreachable",
                        )
                        .retry_after(1),
                        failure: AttemptFailure::Connect,
                    }
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
        Err(SendFailure {
            error: refusal(status.as_u16(), retry_after),
            failure: AttemptFailure::Status(status.as_u16()),
        })
    }
}

/// The client's error for a provider's non-2xx status.
fn refusal(status: u16, retry_after: Option<u64>) -> ApiError {
    match status {
        // Overloaded or rate limited (Anthropic's 529 `overloaded_error` included).
        429 | 503 | 529 => ApiError::new(
            ErrorCode::UpstreamUnavailable,
            format!("the upstream provider is overloaded (status {status})"),
        )
        .retry_after(retry_after.unwrap_or(1).clamp(1, 60)),
        408 | 504 => ApiError::new(
            ErrorCode::UpstreamTimeout,
            format!("the upstream provider timed out (status {status})"),
        ),
        code if (400..500).contains(&code) => ApiError::new(
            ErrorCode::UpstreamFailed,
            format!("the upstream provider refused the request (status {code})"),
        )
        .no_retry(),
        code => ApiError::new(
            ErrorCode::UpstreamFailed,
            format!("the upstream provider answered with status {code}"),
        ),
    }
}
