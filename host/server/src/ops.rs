//! Health, caches, circuit breakers and metrics.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::state::AppState;

pub async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

pub async fn api_health(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "uptimeSeconds": state.platform.uptime().as_secs(),
    }))
}

pub async fn detailed_health(State(state): State<AppState>) -> impl IntoResponse {
    let storage = state.platform.storage_health().await;
    let plugins = crate::agents::plugin_summaries(&state);
    let healthy = storage.healthy();
    let quarantined: Vec<Value> = state
        .platform
        .quarantined()
        .iter()
        .map(|a| json!({ "id": a.id, "violations": a.violations }))
        .collect();
    let body = json!({
        "status": if healthy { "ok" } else { "degraded" },
        "plugins": { "loaded": plugins.len(), "list": plugins },
        "agents": { "quarantined": quarantined },
        "storage": storage,
        "llm": { "configured": state.platform.llm_configured() },
        "circuitBreakers": state.platform.breakers(),
        "caches": state.platform.cache_stats(),
        "jobsRunning": state.platform.jobs_running(),
    });
    (
        if healthy {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(body),
    )
}

pub async fn cache_stats(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "caches": state.platform.cache_stats() }))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ClearBody {
    cache: Option<String>,
}

/// Clears one cache (`{"cache": "plugin"}`) or all (no body).
pub async fn clear_cache(
    State(state): State<AppState>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let body: ClearBody = if body.iter().all(u8::is_ascii_whitespace) {
        ClearBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "INVALID_JSON", e.to_string()))?
    };
    let name = body.cache;
    if !state.platform.clear_cache(name.as_deref()) {
        return Err(ApiError::not_found(
            "CACHE_NOT_FOUND",
            format!(
                "no cache {:?}; known: {}",
                name.unwrap_or_default(),
                state.platform.cache_names().join(", ")
            ),
        ));
    }
    Ok(Json(
        json!({ "cleared": name.unwrap_or_else(|| "all".into()) }),
    ))
}

pub async fn circuit_breakers(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "circuitBreakers": state.platform.breakers() }))
}

fn breaker_answer(
    name: &str,
    snapshot: Option<bsm_platform::llm::breaker::Snapshot>,
) -> Result<Json<Value>, ApiError> {
    let snapshot = snapshot.ok_or_else(|| {
        ApiError::not_found("BREAKER_NOT_FOUND", format!("no circuit breaker {name:?}"))
    })?;
    Ok(Json(json!({ "circuitBreaker": snapshot })))
}

pub async fn reset_breaker(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    breaker_answer(&name, state.platform.reset_breaker(&name))
}

pub async fn isolate_breaker(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    breaker_answer(&name, state.platform.isolate_breaker(&name))
}

/// Prometheus text format; gauges are refreshed at scrape time.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    state.platform.publish_gauges();
    state.platform.publish_action_gauges().await;
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// `GET /api/metrics`: the JSON summary the original BSM's monitoring
/// path served (requests, runs, jobs, agents, memory, caches, breakers).
pub async fn metrics_summary(State(state): State<AppState>) -> Json<Value> {
    let mut summary = state.platform.summary();
    let requests = &state.requests;
    summary["requests"] = json!({
        "total": requests.total.load(Ordering::Relaxed),
        "clientErrors": requests.client_errors.load(Ordering::Relaxed),
        "serverErrors": requests.server_errors.load(Ordering::Relaxed),
    });
    summary["timestamp"] = json!(bsm_platform::store::now());
    Json(summary)
}
