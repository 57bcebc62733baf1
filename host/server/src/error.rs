//! The API's one error type: every failure leaves as
//! `{"error": {"code", "message", "correlationId"}}` with the right status.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use bsm_platform::PlatformError;
use bsm_platform::runtime::RunError;
use bsm_platform::store::{DecideError, StoreError};

tokio::task_local! {
    /// The correlation id of the request being served.
    pub static CORRELATION_ID: String;
}

/// The current request's correlation id ("" outside a request).
pub fn correlation_id() -> String {
    CORRELATION_ID.try_with(Clone::clone).unwrap_or_default()
}

/// A failed request.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after_ms: Option<u64>,
    pub details: Option<serde_json::Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after_ms: None,
            details: None,
        }
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", message)
    }

    fn retry_after(mut self, ms: u64) -> Self {
        self.retry_after_ms = Some(ms);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({ "code": self.code, "message": self.message, "correlationId": correlation_id() });
        if let Some(ms) = self.retry_after_ms {
            error["retryAfterMs"] = ms.into();
        }
        if let Some(details) = self.details {
            error["details"] = details;
        }
        let mut response = (self.status, Json(json!({ "error": error }))).into_response();
        if let Some(ms) = self.retry_after_ms
            && let Ok(v) = HeaderValue::from_str(&ms.div_ceil(1000).max(1).to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        response
    }
}

impl From<RunError> for ApiError {
    fn from(e: RunError) -> Self {
        let message = e.to_string();
        let code = e.code();
        match e {
            RunError::PluginNotFound { .. } => ApiError::not_found("AGENT_NOT_FOUND", message),
            RunError::WrongPluginKind { .. } | RunError::InvalidRequest { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, code, message)
            }
            RunError::PluginBusy { retry_after_ms, .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
                    .retry_after(retry_after_ms)
            }
            RunError::PluginTimeout { .. } => {
                ApiError::new(StatusCode::GATEWAY_TIMEOUT, code, message)
            }
            RunError::ActionNotAllowed { .. } => {
                ApiError::new(StatusCode::FORBIDDEN, code, message)
            }
            RunError::PluginFailed {
                llm_error: Some(llm),
                ..
            } => {
                let (status, code) = match llm.kind {
                    "circuit-open" => (StatusCode::SERVICE_UNAVAILABLE, "LLM_CIRCUIT_OPEN"),
                    "rate-limited" => (StatusCode::SERVICE_UNAVAILABLE, "LLM_RATE_LIMITED"),
                    "timeout" => (StatusCode::GATEWAY_TIMEOUT, "LLM_TIMEOUT"),
                    "budget-exceeded" => (StatusCode::TOO_MANY_REQUESTS, "LLM_BUDGET_EXCEEDED"),
                    "unavailable" => (StatusCode::SERVICE_UNAVAILABLE, "LLM_NOT_CONFIGURED"),
                    "not-permitted" => (StatusCode::FORBIDDEN, "LLM_NOT_PERMITTED"),
                    _ => (StatusCode::BAD_GATEWAY, "LLM_ERROR"),
                };
                let mut error = ApiError::new(status, code, format!("{message} ({})", llm.message));
                error.retry_after_ms = llm.retry_after_ms;
                error
            }
            RunError::PluginFailed { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
            }
            RunError::PluginMemoryLimit { .. }
            | RunError::PluginCpuLimit { .. }
            | RunError::PluginTrap { .. }
            | RunError::PluginOutputTooLarge { .. }
            | RunError::PluginInvalidOutput { .. } => {
                ApiError::new(StatusCode::BAD_GATEWAY, code, message)
            }
            RunError::PluginStartFailed { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
            }
        }
    }
}

impl From<PlatformError> for ApiError {
    fn from(e: PlatformError) -> Self {
        match e {
            PlatformError::ContextNotAllowed { .. } => {
                ApiError::new(StatusCode::FORBIDDEN, "CONTEXT_NOT_ALLOWED", e.to_string())
            }
            PlatformError::UnknownContext { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "UNKNOWN_CONTEXT", e.to_string())
            }
            PlatformError::Overloaded { retry_after_ms, .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "JOBS_OVERLOADED",
                e.to_string(),
            )
            .retry_after(retry_after_ms),
            PlatformError::Quarantined { ref violations, .. } => {
                let mut error =
                    ApiError::new(StatusCode::CONFLICT, "AGENT_QUARANTINED", e.to_string());
                error.details = serde_json::to_value(violations).ok();
                error
            }
            PlatformError::Run(r) => r.into(),
            PlatformError::Store(s) => s.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "STORAGE_ERROR",
            e.to_string(),
        )
    }
}

impl From<DecideError> for ApiError {
    fn from(e: DecideError) -> Self {
        match e {
            DecideError::NotFound(_) => ApiError::not_found("APPROVAL_NOT_FOUND", e.to_string()),
            DecideError::AlreadyDecided { .. } => ApiError::new(
                StatusCode::CONFLICT,
                "APPROVAL_ALREADY_DECIDED",
                e.to_string(),
            ),
            DecideError::Store(s) => s.into(),
        }
    }
}

/// A JSON body whose rejections (bad JSON, wrong content type, too large)
/// become [`ApiError`]s in the API's shape.
pub struct ApiJson<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        use axum::extract::rejection::JsonRejection;
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(match &rejection {
                JsonRejection::BytesRejection(b) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "PAYLOAD_TOO_LARGE",
                        "the request body is larger than the server accepts",
                    )
                }
                JsonRejection::MissingJsonContentType(_) => ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UNSUPPORTED_MEDIA_TYPE",
                    "send the body as JSON with `content-type: application/json`",
                ),
                JsonRejection::JsonSyntaxError(_) => ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "INVALID_JSON",
                    rejection.body_text(),
                ),
                JsonRejection::JsonDataError(_) => ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "VALIDATION_ERROR",
                    rejection.body_text(),
                ),
                _ => ApiError::new(rejection.status(), "BAD_REQUEST", rejection.body_text()),
            }),
        }
    }
}
