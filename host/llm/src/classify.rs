//! What a failed attempt means for the resilience stack: retry or not, and
//! whether it counts against the provider's health (the breaker).

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;

use bsm_runtime::bindings::llm::{Error as LlmError, ProviderError};

/// One failed attempt at an upstream call.
#[derive(Debug, Clone)]
pub enum AttemptError {
    /// The provider answered with an error status.
    Status {
        status: u16,
        retry_after: Option<Duration>,
        error: ProviderError,
    },
    /// No first token, or no end of answer, in time.
    Timeout,
    /// Could not connect or the connection broke before an answer.
    Connect(String),
    /// The answer was not the OpenAI format.
    Malformed(String),
    /// The stream ended before `[DONE]`.
    StreamCut(String),
}

/// How the stack treats a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The provider is unwell (5xx, timeout, connection, garbage): retried,
    /// and recorded as a failure by the breaker.
    Failure,
    /// Rate-limited (429): retried after the provider's Retry-After, and not
    /// held against the provider's health.
    RateLimited,
    /// The request will never succeed here (other 4xx, `insufficient_quota`):
    /// neither retried nor counted.
    Permanent,
}

impl AttemptError {
    pub fn class(&self) -> Class {
        match self {
            AttemptError::Status { status, error, .. } => match *status {
                _ if is_quota(error) => Class::Permanent,
                429 => Class::RateLimited,
                408 | 500..=599 => Class::Failure,
                _ => Class::Permanent,
            },
            AttemptError::Timeout
            | AttemptError::Connect(_)
            | AttemptError::Malformed(_)
            | AttemptError::StreamCut(_) => Class::Failure,
        }
    }

    /// Whether the provider is pushing back on load (429 that is not a
    /// spent quota, 503, a timeout): what shrinks the concurrency limit.
    pub fn is_overload(&self) -> bool {
        match self {
            AttemptError::Status { status, error, .. } => {
                (*status == 429 && !is_quota(error)) || *status == 503
            }
            AttemptError::Timeout => true,
            AttemptError::Connect(_) | AttemptError::Malformed(_) | AttemptError::StreamCut(_) => {
                false
            }
        }
    }

    /// The typed error handed to the plugin when this was the last attempt.
    pub fn into_llm_error(self, provider: &str) -> LlmError {
        let plain = |message: String| {
            LlmError::Provider(ProviderError {
                status: None,
                message: format!("{provider}: {message}"),
                type_: None,
                code: None,
            })
        };
        match self {
            AttemptError::Status {
                status: 429,
                retry_after,
                error,
            } if !is_quota(&error) => {
                LlmError::RateLimited(retry_after.map(|d| d.as_millis() as u64))
            }
            AttemptError::Status {
                status: 400 | 404 | 413 | 422,
                error,
                ..
            } => LlmError::InvalidRequest(format!("{provider}: {}", error.message)),
            AttemptError::Status { error, .. } => LlmError::Provider(error),
            AttemptError::Timeout => LlmError::Timeout,
            AttemptError::Connect(m) | AttemptError::Malformed(m) | AttemptError::StreamCut(m) => {
                plain(m)
            }
        }
    }
}

/// OpenAI answers an exhausted quota with 429 too, but no retry will help.
fn is_quota(error: &ProviderError) -> bool {
    [error.code.as_deref(), error.type_.as_deref()].contains(&Some("insufficient_quota"))
}

/// The wait a 429 asks for: `retry-after-ms`, or `Retry-After` in seconds
/// or as an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    if let Some(ms) = headers.get("retry-after-ms").and_then(|v| v.to_str().ok())
        && let Ok(ms) = ms.trim().parse::<f64>()
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(Duration::from_millis(ms as u64));
    }
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn status(status: u16, code: Option<&str>) -> AttemptError {
        AttemptError::Status {
            status,
            retry_after: None,
            error: ProviderError {
                status: Some(status),
                message: "m".into(),
                type_: None,
                code: code.map(String::from),
            },
        }
    }

    #[test]
    fn classifies_statuses() {
        assert_eq!(status(500, None).class(), Class::Failure);
        assert!(status(429, None).is_overload());
        assert!(status(503, None).is_overload());
        assert!(AttemptError::Timeout.is_overload());
        assert!(!status(429, Some("insufficient_quota")).is_overload());
        assert!(!status(500, None).is_overload());
        assert_eq!(status(503, None).class(), Class::Failure);
        assert_eq!(status(429, None).class(), Class::RateLimited);
        assert_eq!(
            status(429, Some("insufficient_quota")).class(),
            Class::Permanent
        );
        assert_eq!(status(400, None).class(), Class::Permanent);
        assert_eq!(status(401, None).class(), Class::Permanent);
        assert_eq!(AttemptError::Timeout.class(), Class::Failure);
        assert_eq!(
            AttemptError::Connect("refused".into()).class(),
            Class::Failure
        );
        assert_eq!(
            AttemptError::StreamCut("eof".into()).class(),
            Class::Failure
        );
    }

    #[test]
    fn maps_to_the_plugin_facing_error() {
        assert!(matches!(
            status(400, None).into_llm_error("p"),
            LlmError::InvalidRequest(_)
        ));
        assert!(matches!(
            status(429, None).into_llm_error("p"),
            LlmError::RateLimited(None)
        ));
        match status(429, Some("insufficient_quota")).into_llm_error("p") {
            LlmError::Provider(e) => assert_eq!(e.code.as_deref(), Some("insufficient_quota")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            AttemptError::Timeout.into_llm_error("p"),
            LlmError::Timeout
        ));
    }

    #[test]
    fn reads_retry_after_in_every_form() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", HeaderValue::from_static("150"));
        assert_eq!(
            retry_after(&h),
            Some(Duration::from_millis(150)),
            "retry-after-ms wins"
        );
        let mut h = HeaderMap::new();
        let later = SystemTime::now() + Duration::from_secs(30);
        h.insert(
            "retry-after",
            HeaderValue::from_str(&httpdate::fmt_http_date(later)).unwrap(),
        );
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(25) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }
}
