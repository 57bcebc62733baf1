//! Health, caches, circuit breakers and metrics.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::middleware::require_admin;
use super::state::AppState;

pub async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

pub async fn api_health(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "uptimeSeconds": state.started_at.elapsed().as_secs(),
    }))
}

fn breakers(state: &AppState) -> Vec<Value> {
    state
        .platform
        .llm
        .iter()
        .flat_map(|c| {
            c.breakers()
                .map(|b| serde_json::to_value(b.snapshot()).unwrap_or(Value::Null))
        })
        .collect()
}

fn caches(state: &AppState) -> Value {
    let mut caches: serde_json::Map<String, Value> = state
        .platform
        .runtime
        .cache_stats()
        .into_iter()
        .map(|(name, s)| {
            (
                name.to_string(),
                serde_json::to_value(s).unwrap_or(Value::Null),
            )
        })
        .collect();
    caches.insert(
        "knowledge".into(),
        serde_json::to_value(state.platform.knowledge.stats()).unwrap_or(Value::Null),
    );
    Value::Object(caches)
}

pub async fn detailed_health(State(state): State<AppState>) -> impl IntoResponse {
    let database = state.platform.store.ping().await;
    let probe = state.platform.reports.dir().join(".health-probe");
    let reports_writable = tokio::fs::write(&probe, b"ok")
        .await
        .and_then(|_| std::fs::remove_file(&probe));
    let plugins = super::agents::plugin_summaries(&state);
    let healthy = database.is_ok() && reports_writable.is_ok();
    let body = json!({
        "status": if healthy { "ok" } else { "degraded" },
        "plugins": { "loaded": plugins.len(), "list": plugins },
        "storage": {
            "database": database.map(|_| "ok".to_string()).unwrap_or_else(|e| e.to_string()),
            "reportsWritable": reports_writable.is_ok(),
        },
        "llm": { "configured": state.platform.llm.is_some() },
        "circuitBreakers": breakers(&state),
        "caches": caches(&state),
        "jobsRunning": state.orchestrator.running(),
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
    Json(json!({ "caches": caches(&state) }))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ClearBody {
    cache: Option<String>,
}

/// Clears one cache (`{"cache": "plugin"}`) or all (no body).
pub async fn clear_cache(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &headers)?;
    let body: ClearBody = if body.iter().all(u8::is_ascii_whitespace) {
        ClearBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "INVALID_JSON", e.to_string()))?
    };
    let name = body.cache;
    let knowledge = matches!(name.as_deref(), None | Some("knowledge"));
    if knowledge {
        state.platform.knowledge.invalidate_all();
    }
    if !state.platform.runtime.clear_cache(name.as_deref()) && !knowledge {
        return Err(ApiError::not_found(
            "CACHE_NOT_FOUND",
            format!(
                "no cache {:?}; known: manifests, components, plugin, knowledge",
                name.unwrap_or_default()
            ),
        ));
    }
    Ok(Json(
        json!({ "cleared": name.unwrap_or_else(|| "all".into()) }),
    ))
}

pub async fn circuit_breakers(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "circuitBreakers": breakers(&state) }))
}

async fn with_breaker(
    state: &AppState,
    headers: &HeaderMap,
    name: &str,
    act: impl Fn(&crate::llm::breaker::CircuitBreaker),
) -> Result<Json<Value>, ApiError> {
    require_admin(state, headers)?;
    let breaker = state
        .platform
        .llm
        .as_ref()
        .and_then(|c| c.breaker(name))
        .ok_or_else(|| {
            ApiError::not_found("BREAKER_NOT_FOUND", format!("no circuit breaker {name:?}"))
        })?;
    act(breaker);
    Ok(Json(json!({ "circuitBreaker": breaker.snapshot() })))
}

pub async fn reset_breaker(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    with_breaker(&state, &headers, &name, |b| b.reset()).await
}

pub async fn isolate_breaker(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    with_breaker(&state, &headers, &name, |b| b.isolate()).await
}

/// Prometheus text format; gauges are refreshed at scrape time.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    for p in state.platform.runtime.registry().list() {
        let id = p.id().to_string();
        metrics::gauge!("bsm_plugin_in_flight", "plugin" => id.clone()).set(p.in_flight() as f64);
        metrics::gauge!("bsm_plugin_queue_depth", "plugin" => id).set(p.queued() as f64);
    }
    if let Some(llm) = &state.platform.llm {
        for b in llm.breakers() {
            let s = b.snapshot();
            let code = match s.state {
                crate::llm::breaker::State::Closed => 0.0,
                crate::llm::breaker::State::Open => 1.0,
                crate::llm::breaker::State::HalfOpen => 2.0,
                crate::llm::breaker::State::ForcedOpen => 3.0,
                crate::llm::breaker::State::Disabled => 4.0,
            };
            metrics::gauge!("bsm_circuit_breaker_state", "breaker" => s.name.clone()).set(code);
            metrics::gauge!("bsm_circuit_breaker_not_permitted_total", "breaker" => s.name)
                .set(s.not_permitted_calls as f64);
        }
    }
    for (name, s) in state.platform.runtime.cache_stats() {
        for (counter, value) in [
            ("hits", s.hits),
            ("misses", s.misses),
            ("loads", s.loads),
            ("coalesced", s.coalesced),
            ("evictions", s.evictions),
        ] {
            metrics::gauge!("bsm_cache_events", "cache" => name, "event" => counter)
                .set(value as f64);
        }
    }
    metrics::gauge!("bsm_jobs_running").set(state.orchestrator.running() as f64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
