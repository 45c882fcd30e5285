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
use awc::http::header::{HeaderName, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use awc::http::{Method, Uri};
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
    /// `endpoint`, parsed once (`None` if it does not parse: each request then fails as
    /// unreachable, as awc answers an unparsable URL).
    uri: Option<Uri>,
    /// The headers every request carries (the key's, the format's), built once; `None` when
    /// the key cannot be sent as a header value (each request then fails as unreachable).
    headers: Option<Vec<(HeaderName, HeaderValue)>>,
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
        // Redirects are not followed: awc would re-send the request (body and all) wherever a
        // `Location` points, and across origins it drops `authorization` but not Anthropic's
        // `x-api-key`. A 3xx is the provider's failure, named in the operator's log.
        let client = awc::Client::builder()
            .connector(connector)
            .disable_timeout()
            .disable_redirects()
            .finish();
        let base = url.trim_end_matches('/');
        let endpoint = match provider.format {
            UpstreamFormat::OpenAi => format!("{base}/chat/completions"),
            UpstreamFormat::Anthropic => format!("{base}/v1/messages"),
        };
        Self {
            client,
            uri: Uri::try_from(endpoint.as_str()).ok(),
            endpoint,
            headers: request_headers(provider.format, &provider.api_key),
            format: provider.format,
        }
    }

    pub fn format(&self) -> UpstreamFormat {
        self.format
    }

    /// POSTs `body` and waits at most `wait` for the response head. A non-2xx answer is a
    /// failure, a redirect included (never followed).
    pub async fn send(&self, body: Bytes, wait: Duration) -> Result<UpstreamResponse, SendFailure> {
        let Some(headers) = &self.headers else {
            tracing::warn!("the provider's API key cannot be sent as a header value");
            return Err(not_reached());
        };
        let request = match &self.uri {
            Some(uri) => self.client.request(Method::POST, uri.clone()),
            None => self.client.post(&self.endpoint),
        };
        let mut request = request.timeout(wait);
        for header in headers {
            request = request.insert_header(header.clone());
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
                    not_reached()
                }
            }
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        if status.is_redirection() {
            tracing::warn!(
                status = status.as_u16(),
                "the provider answered with a redirect, which is not followed: \
                 point the provider's url at the address it redirects to"
            );
        } else {
            tracing::warn!(status = status.as_u16(), "upstream refused the request");
        }
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

/// The headers of every request to a provider in `format` holding `api_key` (none when it is
/// empty): the body's type, what is accepted, the key (marked sensitive) and, for Anthropic,
/// the API version.
fn request_headers(
    format: UpstreamFormat,
    api_key: &Secret,
) -> Option<Vec<(HeaderName, HeaderValue)>> {
    let mut headers = vec![
        (CONTENT_TYPE, HeaderValue::from_static("application/json")),
        (
            ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        ),
    ];
    let key = |value: String| {
        let mut value = HeaderValue::from_str(&value).ok()?;
        value.set_sensitive(true);
        Some(value)
    };
    match format {
        UpstreamFormat::OpenAi if !api_key.is_empty() => {
            headers.push((AUTHORIZATION, key(format!("Bearer {}", api_key.expose()))?));
        }
        UpstreamFormat::OpenAi => {}
        UpstreamFormat::Anthropic => {
            if !api_key.is_empty() {
                let value = key(api_key.expose().to_string())?;
                headers.push((HeaderName::from_static("x-api-key"), value));
            }
            headers.push((
                HeaderName::from_static("anthropic-version"),
                HeaderValue::from_static(ANTHROPIC_VERSION),
            ));
        }
    }
    Some(headers)
}

/// A request that never reached the provider.
fn not_reached() -> SendFailure {
    SendFailure {
        error: ApiError::new(
            ErrorCode::UpstreamUnavailable,
            "the upstream provider is unreachable",
        )
        .retry_after(1),
        failure: AttemptFailure::Connect,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn names_and_values(headers: &[(HeaderName, HeaderValue)]) -> Vec<(String, String, bool)> {
        headers
            .iter()
            .map(|(n, v)| {
                (
                    n.to_string(),
                    v.to_str().unwrap().to_string(),
                    v.is_sensitive(),
                )
            })
            .collect()
    }

    #[test]
    fn each_format_carries_its_key_marked_sensitive() {
        let shared = |extra: &[(&str, &str, bool)]| {
            let mut all = vec![
                ("content-type".into(), "application/json".into(), false),
                (
                    "accept".into(),
                    "application/json, text/event-stream".into(),
                    false,
                ),
            ];
            all.extend(
                extra
                    .iter()
                    .map(|(n, v, s)| (n.to_string(), v.to_string(), *s)),
            );
            all
        };
        let openai = request_headers(UpstreamFormat::OpenAi, &Secret::new("sk-1")).unwrap();
        assert_eq!(
            names_and_values(&openai),
            shared(&[("authorization", "Bearer sk-1", true)])
        );
        let keyless = request_headers(UpstreamFormat::OpenAi, &Secret::default()).unwrap();
        assert_eq!(names_and_values(&keyless), shared(&[]));
        let anthropic = request_headers(UpstreamFormat::Anthropic, &Secret::new("sk-ant")).unwrap();
        assert_eq!(
            names_and_values(&anthropic),
            shared(&[
                ("x-api-key", "sk-ant", true),
                ("anthropic-version", ANTHROPIC_VERSION, false)
            ])
        );
    }

    #[test]
    fn a_key_that_cannot_be_a_header_value_leaves_the_provider_unreachable() {
        for format in [UpstreamFormat::OpenAi, UpstreamFormat::Anthropic] {
            assert!(request_headers(format, &Secret::new("sk-1\n")).is_none());
        }
    }
}
