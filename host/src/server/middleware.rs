//! Cross-cutting request handling: correlation ids, per-client rate
//! limiting, request metrics, and the admin-token check.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use subtle::ConstantTimeEq;

use super::error::{ApiError, CORRELATION_ID};
use super::state::AppState;

/// The header carrying a request's correlation id, both ways.
pub const CORRELATION_HEADER: &str = "x-correlation-id";

/// Takes the caller's correlation id (if sane) or makes one, makes it
/// visible to handlers, logs and plugins, and returns it in the response.
pub async fn correlation(request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(CORRELATION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.chars().all(|c| c.is_ascii_graphic()))
        .map(String::from)
        .unwrap_or_else(crate::api::new_correlation_id);
    let span = tracing::info_span!("request", correlation_id = %id, method = %request.method(), path = %request.uri().path());
    let mut response = CORRELATION_ID
        .scope(
            id.clone(),
            tracing::Instrument::instrument(next.run(request), span),
        )
        .await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(CORRELATION_HEADER, v);
    }
    response
}

/// Counts requests and their latency per route and status.
pub async fn metrics(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let labels = [("route", route), ("method", method), ("status", status)];
    metrics::counter!("bsm_http_requests_total", &labels).increment(1);
    metrics::histogram!("bsm_http_request_duration_seconds", &labels[..2])
        .record(started.elapsed().as_secs_f64());
    response
}

/// Per-client (IP) token buckets.
pub type ClientLimiter = DefaultKeyedRateLimiter<IpAddr>;

pub fn client_limiter(per_second: u32, burst: u32) -> Option<Arc<ClientLimiter>> {
    let per_second = NonZeroU32::new(per_second)?;
    let burst = NonZeroU32::new(burst.max(1)).unwrap_or(per_second);
    Some(Arc::new(RateLimiter::keyed(
        Quota::per_second(per_second).allow_burst(burst),
    )))
}

/// Answers 429 with a retry hint once a client exceeds its rate.
pub async fn rate_limit(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(limiter) = &state.limiter
        && let Err(not_until) = limiter.check_key(&peer.ip())
    {
        let wait = not_until.wait_time_from(governor::clock::Clock::now(
            &governor::clock::DefaultClock::default(),
        ));
        let mut error = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "RATE_LIMITED",
            "too many requests from this client; slow down",
        );
        error.retry_after_ms = Some(wait.as_millis().max(1) as u64);
        return axum::response::IntoResponse::into_response(error);
    }
    next.run(request).await
}

/// Checks the admin token of a mutating operations request, in constant time.
pub fn require_admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = &state.admin_token else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "ADMIN_DISABLED",
            "admin endpoints are disabled: start the server with BSM_ADMIN_TOKEN set",
        ));
    };
    let given = headers
        .get("x-admin-token")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        })
        .unwrap_or("");
    if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "a valid admin token is required (header `x-admin-token` or `Authorization: Bearer`)",
        ))
    }
}

/// Why an admin token is refused at startup.
pub fn weak_token_reason(token: &str) -> Option<String> {
    const DEFAULTS: &[&str] = &[
        "admin",
        "password",
        "changeme",
        "change-me",
        "secret",
        "token",
        "default",
        "test",
        "bsm",
    ];
    let lower = token.to_ascii_lowercase();
    if DEFAULTS.iter().any(|d| lower.contains(d)) && token.len() < 40 {
        return Some("it is (or contains) a well-known default".into());
    }
    if token.len() < 24 {
        return Some(format!(
            "it is {} characters long; at least 24 are required",
            token.len()
        ));
    }
    let distinct: std::collections::BTreeSet<char> = token.chars().collect();
    if distinct.len() < 8 {
        return Some("it uses fewer than 8 distinct characters".into());
    }
    None
}
