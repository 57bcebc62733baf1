//! Cross-cutting request handling: correlation ids, request metrics and
//! the request timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, CORRELATION_ID};

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
        .unwrap_or_else(bsm_platform::runtime::api::new_correlation_id);
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

/// Requests by status class, for the JSON summary of `/api/metrics`
/// (Prometheus has them per route).
#[derive(Default)]
pub struct RequestCounters {
    pub total: AtomicU64,
    pub client_errors: AtomicU64,
    pub server_errors: AtomicU64,
}

/// Counts requests and their latency per route and status.
pub async fn metrics(
    State(counters): State<Arc<RequestCounters>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status();
    counters.total.fetch_add(1, Ordering::Relaxed);
    if status.is_client_error() {
        counters.client_errors.fetch_add(1, Ordering::Relaxed);
    } else if status.is_server_error() {
        counters.server_errors.fetch_add(1, Ordering::Relaxed);
    }
    let labels = [
        ("route", route),
        ("method", method),
        ("status", status.as_u16().to_string()),
    ];
    metrics::counter!("bsm_http_requests_total", &labels).increment(1);
    metrics::histogram!("bsm_http_request_duration_seconds", &labels[..2])
        .record(started.elapsed().as_secs_f64());
    response
}

/// Answers 503 `REQUEST_TIMEOUT` when a request takes longer than `limit`.
pub async fn request_timeout(limit: Duration, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "REQUEST_TIMEOUT",
            format!("the request took longer than {} ms", limit.as_millis()),
        )
        .into_response(),
    }
}
