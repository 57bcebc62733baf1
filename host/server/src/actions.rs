//! `/api/actions`: the outbox, as operators see it: every action that
//! passed governance with its delivery status, filtered and paged; failed
//! or dead ones can be retried (admin).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use bsm_platform::outbox::{ActionFilter, ActionState, RetryError};
use bsm_platform::paging;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::jobs::PageQuery;
use crate::state::AppState;

impl From<RetryError> for ApiError {
    fn from(e: RetryError) -> Self {
        match e {
            RetryError::NotFound(_) => ApiError::not_found("ACTION_NOT_FOUND", e.to_string()),
            RetryError::NotRetryable { .. } => {
                ApiError::new(StatusCode::CONFLICT, "ACTION_NOT_RETRYABLE", e.to_string())
            }
            RetryError::Store(e) => e.into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionQuery {
    status: Option<String>,
    job: Option<String>,
    agent: Option<String>,
    name: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// `GET /api/actions?status=&job=&agent=&name=&limit=&cursor=`, newest first.
pub async fn list(
    State(state): State<AppState>,
    Query(q): Query<ActionQuery>,
) -> Result<Json<Value>, ApiError> {
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(ActionState::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "unknown status {s:?} (known: {})",
                ActionState::ALL.map(ActionState::as_str).join(", ")
            ))
        })?),
    };
    let request = PageQuery {
        limit: q.limit,
        cursor: q.cursor,
    }
    .request()?;
    let actions = state
        .platform
        .outbox()
        .list(ActionFilter {
            status,
            job: q.job,
            agent: q.agent,
            name: q.name,
        })
        .await?;
    let page = paging::page(
        actions,
        |a| (a.created_at.as_str(), a.id.as_str()),
        &request,
        |_| true,
    );
    Ok(Json(json!({
        "actions": page.items,
        "nextCursor": page.next.map(|c| c.encode()),
    })))
}

pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let action = state
        .platform
        .outbox()
        .get(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("ACTION_NOT_FOUND", format!("no action {id:?}")))?;
    Ok(Json(json!({ "action": action })))
}

/// `POST /api/actions/{id}/retry` (admin): a failed or dead action is
/// queued again with its attempts reset (and the same idempotency key).
pub async fn retry(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let action = state.platform.retry_action(&id, &caller.name()).await?;
    Ok(Json(json!({ "action": action })))
}
