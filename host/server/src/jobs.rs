//! `/api/orchestrator`, `/api/reports` and `/api/approvals`.

use std::convert::Infallible;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use bsm_platform::orchestration::SharedEvent;
use bsm_platform::paging::{PageError, PageRequest};
use bsm_platform::store::{ApprovalStatus, JobRecord, JobStatus, StoreError};

use crate::auth::Caller;
use crate::error::{ApiError, ApiJson};
use crate::state::AppState;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobBody {
    event: String,
    #[serde(default)]
    payload: Option<Value>,
    /// The calling context every agent of the job runs in: one of the
    /// caller's key's (its first by default), `api` without a key.
    #[serde(default)]
    context: Option<String>,
}

#[derive(Deserialize)]
pub struct WaitQuery {
    #[serde(default)]
    wait: bool,
}

pub async fn run_job(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<WaitQuery>,
    ApiJson(body): ApiJson<JobBody>,
) -> Result<Response, ApiError> {
    if body.event.trim().is_empty() {
        return Err(ApiError::bad_request("event is required"));
    }
    let context = caller.context(body.context.as_deref())?;
    // The job's channel is opened (with its event history) before the job
    // starts, so a caller that subscribes afterwards cannot miss the end.
    let payload = body.payload.unwrap_or_else(|| json!({}));
    if !q.wait {
        let job = state
            .platform
            .submit_job(body.event, payload, context)
            .await?;
        return Ok((StatusCode::ACCEPTED, Json(JobAnswer::of(&job))).into_response());
    }
    let (job, stored) = state.platform.start_job(body.event, payload, context)?;
    let (job, finished) = state.platform.wait_for_job(job, state.wait_timeout).await?;
    // Committed before the job's end was (writes commit in order): a job
    // whose record failed to store is not reported as if it were kept.
    stored.await.map_err(StoreError)?;
    if !finished {
        let answer = JobAnswer {
            note: Some("still running; poll the job or follow its events"),
            ..JobAnswer::of(&job)
        };
        return Ok((StatusCode::ACCEPTED, Json(answer)).into_response());
    }
    Ok(Json(JobAnswer::of(&job)).into_response())
}

/// A job as the API answers it. Borrowed and serialised as it is: the
/// job's result is JSON text already, written out without being parsed.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JobAnswer<'a> {
    job_id: &'a str,
    status: JobStatus,
    job: &'a JobRecord,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    agent_runs: Option<Vec<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    step_runs: Option<Vec<Value>>,
}

impl<'a> JobAnswer<'a> {
    fn of(job: &'a JobRecord) -> Self {
        Self {
            job_id: &job.id,
            status: job.status,
            job,
            note: None,
            agent_runs: None,
            step_runs: None,
        }
    }
}

pub async fn get_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let job = state
        .platform
        .job(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("JOB_NOT_FOUND", format!("no job {id:?}")))?;
    let runs = state.platform.job_runs(&id).await?;
    let rows = |rows: Vec<bsm_platform::RunRow>, key: &str| -> Vec<Value> {
        rows.into_iter()
            .map(|r| json!({ key: r.plugin_id, "ok": r.ok, "durationMs": r.duration_ms }))
            .collect()
    };
    let answer = JobAnswer {
        agent_runs: Some(rows(runs.agent_runs, "agentId")),
        step_runs: Some(rows(runs.step_runs, "stepId")),
        ..JobAnswer::of(&job)
    };
    Ok(Json(answer).into_response())
}

/// Server-sent events of a job: its history, then live events until it ends.
pub async fn job_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let to_sse = |e: SharedEvent| {
        Ok(Event::default()
            .event(e.kind)
            .id(e.seq.to_string())
            .json_data(&*e)
            .unwrap_or_default())
    };
    let stream: std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>> =
        match state.platform.subscribe_job(&id) {
            Some((history, rx)) => {
                let ended = history.iter().any(|e| e.is_terminal());
                let past = stream::iter(history.into_iter().map(to_sse));
                match rx {
                    Some(rx) if !ended => {
                        let live = stream::unfold((rx, false), |(mut rx, done)| async move {
                            if done {
                                return None;
                            }
                            loop {
                                match rx.recv().await {
                                    Ok(e) => {
                                        let end = e.is_terminal();
                                        return Some((e, (rx, end)));
                                    }
                                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                                        continue;
                                    }
                                    Err(_) => return None,
                                }
                            }
                        })
                        .map(to_sse);
                        Box::pin(past.chain(live))
                    }
                    _ => Box::pin(past),
                }
            }
            None => {
                // Not in memory (e.g. after a restart): one snapshot from the database.
                let job = state.platform.job(&id).await?.ok_or_else(|| {
                    ApiError::not_found("JOB_NOT_FOUND", format!("no job {id:?}"))
                })?;
                let event = Event::default()
                    .event("job.snapshot")
                    .json_data(&job)
                    .unwrap_or_default();
                Box::pin(stream::iter([Ok(event)]))
            }
        };
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

pub async fn pipelines(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "pipelines": state.platform.pipelines() }))
}

/// `limit` and `cursor` of a list endpoint.
#[derive(Deserialize)]
pub struct PageQuery {
    pub(crate) limit: Option<usize>,
    pub(crate) cursor: Option<String>,
}

impl PageQuery {
    pub(crate) fn request(&self) -> Result<PageRequest, ApiError> {
        PageRequest::parse(self.limit, self.cursor.as_deref()).map_err(|e| match e {
            PageError::Limit => ApiError::bad_request(e.to_string()),
            PageError::Cursor => {
                ApiError::new(StatusCode::BAD_REQUEST, "INVALID_CURSOR", e.to_string())
            }
        })
    }
}

/// `GET /api/reports?limit=&cursor=`: newest first, `nextCursor` while more remain.
pub async fn list_reports(
    State(state): State<AppState>,
    Query(q): Query<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    let page = state.platform.reports_page(&q.request()?).await;
    Ok(Json(json!({
        "reports": page.items,
        "nextCursor": page.next.map(|c| c.encode()),
    })))
}

pub async fn get_report(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (record, content) = state
        .platform
        .report(&id)
        .await
        .ok_or_else(|| ApiError::not_found("REPORT_NOT_FOUND", format!("no report {id:?}")))?;
    Ok(Json(json!({ "report": record, "content": content })))
}

#[derive(Deserialize)]
pub struct ApprovalQuery {
    status: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

pub async fn list_approvals(
    State(state): State<AppState>,
    Query(q): Query<ApprovalQuery>,
) -> Result<Json<Value>, ApiError> {
    let status = match q.status.as_deref() {
        None => None,
        Some("pending") => Some(ApprovalStatus::Pending),
        Some("approved") => Some(ApprovalStatus::Approved),
        Some("rejected") => Some(ApprovalStatus::Rejected),
        Some(other) => return Err(ApiError::bad_request(format!("unknown status {other:?}"))),
    };
    let request = PageQuery {
        limit: q.limit,
        cursor: q.cursor,
    }
    .request()?;
    let page = state.platform.approvals_page(status, &request).await?;
    Ok(Json(json!({
        "approvals": page.items,
        "nextCursor": page.next.map(|c| c.encode()),
    })))
}

/// The optional body of an approval decision: `{"reason": "..."}`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DecisionBody {
    #[serde(default)]
    reason: Option<String>,
}

async fn decide(
    state: &AppState,
    caller: &Caller,
    id: &str,
    approve: bool,
    body: &[u8],
) -> Result<Json<Value>, ApiError> {
    let body: DecisionBody = if body.iter().all(u8::is_ascii_whitespace) {
        DecisionBody::default()
    } else {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!(
                "the body must be {{\"reason\": \"...\"}} or empty: {e}"
            ))
        })?
    };
    if body
        .reason
        .as_ref()
        .is_some_and(|r| r.chars().count() > 2_000)
    {
        return Err(ApiError::bad_request(
            "reason is longer than 2000 characters",
        ));
    }
    let record = state
        .platform
        .decide_approval(id, approve, &caller.name(), body.reason.as_deref())
        .await?;
    Ok(Json(json!({ "approval": record })))
}

pub async fn approve(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    decide(&state, &caller, &id, true, &body).await
}

pub async fn reject(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    decide(&state, &caller, &id, false, &body).await
}
