//! The one error table: every error a client can receive, with how it is delivered (an HTTP
//! status before the body, or an error event inside a stream that already started), its OpenAI
//! error `type` and `code`, and the OpenAI-shaped body. `http` turns an [`ApiError`] into a
//! response; the relay writes [`ErrorCode::stream_event`] as the event that ends a cut stream.

use serde::Serialize;

/// Every error code of the external contract (plus routing errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidJson,
    InvalidMessages,
    UnknownModel,
    MessageTooLong,
    ContextTooLong,
    PromptInjection,
    /// A known sampling parameter of the wrong type or out of its range.
    InvalidParameter,
    MissingUser,
    InvalidUser,
    MissingToken,
    InvalidToken,
    TokenExpired,
    /// Too many failed authentications from the caller's address (`auth.max_failures_per_minute`).
    AuthRateLimited,
    FeatureNotInPlan,
    UnknownFeature,
    UnknownPlan,
    ModelNotInPlan,
    /// The caller's plan denies a parameter the request sets (`plans.<plan>.denied_parameters`).
    ParameterNotAllowed,
    PayloadTooLarge,
    /// A header, or all of them, over the size bounds (`server.max_header_bytes`, …).
    HeadersTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
    NotFound,
    ModelNotFound,
    MethodNotAllowed,
    RequestsPerMinute,
    RequestsPerDay,
    TokensPerDay,
    ConcurrentStreams,
    DailyBudget,
    MonthlyBudget,
    OrgDailyBudget,
    UpstreamFailed,
    UpstreamUnavailable,
    StateUnavailable,
    UpstreamTimeout,
    Internal,
    /// In-stream: a spend or token limit was crossed while the reply streamed.
    BudgetExceeded,
    /// In-stream: `limits.deadline_secs` passed while the reply streamed.
    DeadlineExceeded,
    /// In-stream: an output guardrail stopped the reply.
    OutputBlocked,
    /// An admin reload found the config invalid: nothing changed.
    InvalidConfig,
    /// An operator blocked the user: refused before any reply, or a stream cut mid-way.
    UserBlocked,
}

/// How a code reaches the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// As the response's status and JSON body, before any reply started.
    Status(u16),
    /// Only as the error event that ends a stream that already started (status 200).
    InStream,
}

impl ErrorCode {
    /// Every code, for declaring metric labels up front.
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::InvalidJson,
        ErrorCode::InvalidMessages,
        ErrorCode::UnknownModel,
        ErrorCode::MessageTooLong,
        ErrorCode::ContextTooLong,
        ErrorCode::PromptInjection,
        ErrorCode::InvalidParameter,
        ErrorCode::MissingUser,
        ErrorCode::InvalidUser,
        ErrorCode::MissingToken,
        ErrorCode::InvalidToken,
        ErrorCode::TokenExpired,
        ErrorCode::AuthRateLimited,
        ErrorCode::FeatureNotInPlan,
        ErrorCode::UnknownFeature,
        ErrorCode::UnknownPlan,
        ErrorCode::ModelNotInPlan,
        ErrorCode::ParameterNotAllowed,
        ErrorCode::PayloadTooLarge,
        ErrorCode::HeadersTooLarge,
        ErrorCode::RequestTimeout,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::NotFound,
        ErrorCode::ModelNotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::RequestsPerMinute,
        ErrorCode::RequestsPerDay,
        ErrorCode::TokensPerDay,
        ErrorCode::ConcurrentStreams,
        ErrorCode::DailyBudget,
        ErrorCode::MonthlyBudget,
        ErrorCode::OrgDailyBudget,
        ErrorCode::UpstreamFailed,
        ErrorCode::UpstreamUnavailable,
        ErrorCode::StateUnavailable,
        ErrorCode::UpstreamTimeout,
        ErrorCode::Internal,
        ErrorCode::BudgetExceeded,
        ErrorCode::DeadlineExceeded,
        ErrorCode::OutputBlocked,
        ErrorCode::InvalidConfig,
        ErrorCode::UserBlocked,
    ];

    /// How the code is delivered. Exhaustive on purpose: a new code must decide its status here.
    pub fn delivery(self) -> Delivery {
        use ErrorCode::*;
        Delivery::Status(match self {
            InvalidJson | InvalidMessages | UnknownModel | MessageTooLong | ContextTooLong
            | PromptInjection | InvalidParameter | MissingUser | InvalidUser | InvalidConfig => 400,
            MissingToken | InvalidToken | TokenExpired => 401,
            FeatureNotInPlan | UnknownFeature | UnknownPlan | ModelNotInPlan
            | ParameterNotAllowed | UserBlocked => 403,
            NotFound | ModelNotFound => 404,
            MethodNotAllowed => 405,
            RequestTimeout => 408,
            PayloadTooLarge => 413,
            UnsupportedMediaType => 415,
            HeadersTooLarge => 431,
            RequestsPerMinute | RequestsPerDay | TokensPerDay | ConcurrentStreams | DailyBudget
            | MonthlyBudget | OrgDailyBudget | AuthRateLimited => 429,
            Internal => 500,
            UpstreamFailed => 502,
            UpstreamUnavailable | StateUnavailable => 503,
            UpstreamTimeout => 504,
            BudgetExceeded | DeadlineExceeded | OutputBlocked => return Delivery::InStream,
        })
    }

    /// The HTTP status the client got with this code: its own, or 200 for an in-stream code
    /// (the stream had started).
    pub fn status(self) -> u16 {
        match self.delivery() {
            Delivery::Status(status) => status,
            Delivery::InStream => 200,
        }
    }

    /// The `data:` payload that ends a started stream with this code. `UpstreamFailed` and
    /// `UserBlocked` are delivered both ways; mid-stream they say so.
    pub fn stream_event(self) -> String {
        let message = match self {
            ErrorCode::BudgetExceeded => {
                "your spend or token limit was reached during this response"
            }
            ErrorCode::DeadlineExceeded => "the request exceeded the gateway's time limit",
            ErrorCode::OutputBlocked => "the response was stopped by an output guardrail",
            ErrorCode::UserBlocked => "this user was blocked by an operator during the response",
            _ => "the upstream provider failed during the response",
        };
        ErrorBody::new(message, self.kind(), self.as_str()).to_json()
    }

    /// OpenAI's error `type`.
    pub fn kind(self) -> &'static str {
        use ErrorCode::*;
        match self {
            InvalidJson | InvalidMessages | UnknownModel | MessageTooLong | ContextTooLong
            | PromptInjection | InvalidParameter | MissingUser | InvalidUser | PayloadTooLarge
            | HeadersTooLarge | RequestTimeout | UnsupportedMediaType | NotFound
            | ModelNotFound | MethodNotAllowed | InvalidConfig => "invalid_request_error",
            MissingToken | InvalidToken | TokenExpired => "authentication_error",
            FeatureNotInPlan | UnknownFeature | UnknownPlan | ModelNotInPlan
            | ParameterNotAllowed | UserBlocked => "permission_error",
            RequestsPerMinute | RequestsPerDay | TokensPerDay | ConcurrentStreams | DailyBudget
            | MonthlyBudget | OrgDailyBudget | AuthRateLimited => "rate_limit_error",
            UpstreamFailed | UpstreamUnavailable | StateUnavailable | UpstreamTimeout => {
                "upstream_error"
            }
            Internal => "server_error",
            BudgetExceeded => "rate_limit_error",
            DeadlineExceeded => "timeout_error",
            OutputBlocked => "content_filter_error",
        }
    }

    /// The machine-readable `code`.
    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            InvalidJson => "invalid_json",
            InvalidMessages => "invalid_messages",
            UnknownModel => "unknown_model",
            MessageTooLong => "message_too_long",
            ContextTooLong => "context_too_long",
            PromptInjection => "prompt_injection",
            InvalidParameter => "invalid_parameter",
            MissingUser => "missing_user",
            InvalidUser => "invalid_user",
            MissingToken => "missing_token",
            InvalidToken => "invalid_token",
            TokenExpired => "token_expired",
            AuthRateLimited => "auth_rate_limited",
            FeatureNotInPlan => "feature_not_in_plan",
            UnknownFeature => "unknown_feature",
            UnknownPlan => "unknown_plan",
            ModelNotInPlan => "model_not_in_plan",
            ParameterNotAllowed => "parameter_not_allowed",
            PayloadTooLarge => "payload_too_large",
            HeadersTooLarge => "headers_too_large",
            RequestTimeout => "request_timeout",
            UnsupportedMediaType => "unsupported_media_type",
            NotFound => "not_found",
            ModelNotFound => "model_not_found",
            MethodNotAllowed => "method_not_allowed",
            RequestsPerMinute => "requests_per_minute",
            RequestsPerDay => "requests_per_day",
            TokensPerDay => "tokens_per_day",
            ConcurrentStreams => "concurrent_streams",
            DailyBudget => "daily_budget",
            MonthlyBudget => "monthly_budget",
            OrgDailyBudget => "org_daily_budget",
            UpstreamFailed => "upstream_failed",
            UpstreamUnavailable => "upstream_unavailable",
            StateUnavailable => "state_unavailable",
            UpstreamTimeout => "upstream_timeout",
            Internal => "internal_error",
            BudgetExceeded => "budget_exceeded",
            DeadlineExceeded => "deadline_exceeded",
            OutputBlocked => "output_blocked",
            InvalidConfig => "invalid_config",
            UserBlocked => "user_blocked",
        }
    }
}

/// An error answered before a response body started.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: ErrorCode,
    /// Human-readable; never echoes tokens, prompt text or upstream secrets.
    pub message: String,
    /// `Retry-After` seconds, when waiting helps.
    pub retry_after_secs: Option<u64>,
    /// True when retrying the same request cannot help (`x-should-retry: false`).
    pub final_answer: bool,
    /// The caller's windows, for the `x-ratelimit-*` headers.
    pub rate_limits: Option<crate::accounting::RateLimitHeaders>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_secs: None,
            final_answer: false,
            rate_limits: None,
        }
    }

    /// Attaches the caller's windows.
    pub fn rate_limits(mut self, headers: crate::accounting::RateLimitHeaders) -> Self {
        self.rate_limits = Some(headers);
        self
    }

    /// Marks the error as one that retrying cannot cure.
    pub fn no_retry(mut self) -> Self {
        self.final_answer = true;
        self
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    pub fn body(&self) -> ErrorBody<'_> {
        ErrorBody::new(&self.message, self.code.kind(), self.code.as_str())
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for ApiError {}

/// `{"error":{"message":…,"type":…,"param":null,"code":…}}`
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    pub error: ErrorDetail<'a>,
}

#[derive(Debug, Serialize)]
pub struct ErrorDetail<'a> {
    pub message: &'a str,
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub param: Option<&'a str>,
    pub code: &'a str,
}

impl<'a> ErrorBody<'a> {
    pub fn new(message: &'a str, kind: &'a str, code: &'a str) -> Self {
        Self {
            error: ErrorDetail {
                message,
                kind,
                param: None,
                code,
            },
        }
    }

    pub fn to_json(&self) -> String {
        // Serialising a struct of strings cannot fail; fall back to a fixed body regardless.
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"error":{"message":"internal error","type":"server_error","param":null,"code":"internal_error"}}"#.into()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_code_once() {
        let mut codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        let n = codes.len();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), n);
        // A new variant must be added to ALL: the exhaustive match in `as_str` lists them all.
        assert_eq!(n, 42);
    }

    #[test]
    fn body_has_the_openai_shape() {
        let e = ApiError::new(ErrorCode::MissingToken, "no token");
        let v: serde_json::Value = serde_json::from_str(&e.body().to_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error":{"message":"no token","type":"authentication_error","param":null,"code":"missing_token"}})
        );
        assert_eq!(e.code.status(), 401);
    }
}
