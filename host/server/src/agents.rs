//! `/api/agents` and `/api/plugins`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use bsm_platform::governed::ActionOutcome;
use bsm_platform::runtime::Plugin;
use bsm_platform::runtime::api::{AgentRequest, RunContext};
use bsm_platform::runtime::capabilities::llm::LlmUsage;

use crate::auth::Caller;
use crate::error::{ApiError, ApiJson, correlation_id};
use crate::state::AppState;

/// Served agents and quarantined ones (`status`, with their violations).
pub async fn list_agents(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "agents": state.platform.agents() }))
}

pub async fn get_agent(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let agent = state
        .platform
        .agent(&id)
        .ok_or_else(|| ApiError::not_found("AGENT_NOT_FOUND", format!("no agent {id:?}")))?;
    Ok(Json(json!(agent)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunBody {
    agent_id: String,
    #[serde(default)]
    input: String,
    #[serde(default)]
    payload: Option<Value>,
    /// A context name (`ci`...) or an object with `callingContext`/`event`;
    /// it narrows the caller's contexts, never widens them.
    #[serde(default)]
    context: Option<Value>,
}

pub async fn run_agent(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<RunBody>,
) -> Result<Response, ApiError> {
    if body.agent_id.trim().is_empty() {
        return Err(ApiError::bad_request("agentId is required"));
    }
    let (requested, event) = match &body.context {
        None | Some(Value::Null) => (None, None),
        Some(Value::String(s)) => (Some(s.as_str()), None),
        Some(Value::Object(o)) => (
            o.get("callingContext")
                .or_else(|| o.get("context"))
                .and_then(Value::as_str),
            o.get("event").and_then(Value::as_str).map(String::from),
        ),
        Some(_) => {
            return Err(ApiError::bad_request(
                "context must be a string or an object",
            ));
        }
    };
    let calling_context = caller.context(requested)?;
    let request = AgentRequest {
        input: body.input,
        payload: body.payload.unwrap_or_else(|| json!({})),
        context: RunContext {
            correlation_id: correlation_id(),
            event,
            calling_context,
        },
    };
    let governed = state.platform.run_agent(&body.agent_id, request).await?;
    let run = &governed.run;
    Ok(Json(RunAnswer {
        agent_id: &run.plugin_id,
        version: &run.plugin_version,
        output: &run.output.text,
        actions: &governed.actions,
        metadata: &run.output.metadata,
        usage: &run.usage,
        duration_ms: run.duration_ms,
        correlation_id: &run.correlation_id,
    })
    .into_response())
}

/// The answer of `POST /api/agents/run`, serialised straight from the run
/// (building a `Value` first copied every string of it on the busiest
/// route).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RunAnswer<'a> {
    agent_id: &'a str,
    version: &'a str,
    output: &'a str,
    actions: &'a [ActionOutcome],
    metadata: &'a Value,
    usage: &'a LlmUsage,
    duration_ms: f64,
    correlation_id: &'a str,
}

fn plugin_json(p: &Plugin) -> Value {
    serde_json::to_value(p.summary()).unwrap_or(Value::Null)
}

/// Every loaded plugin as listings show it (also used by the detailed health).
pub fn plugin_summaries(state: &AppState) -> Vec<Value> {
    state
        .platform
        .plugins()
        .iter()
        .map(|p| plugin_json(p))
        .collect()
}

pub async fn list_plugins(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "plugins": plugin_summaries(&state) }))
}

pub async fn get_plugin(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let p = state.platform.plugin(&id).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "PLUGIN_NOT_FOUND",
            format!("no plugin {id:?}"),
        )
    })?;
    Ok(Json(plugin_json(&p)))
}
