//! `/api/plugins/{id}` hot swap: install a version (multipart upload, or a
//! canary with `?canary=N`), list the kept versions, promote a canary, roll
//! back, remove. Admin only; uploads have their own body limit.

use axum::Json;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use bsm_platform::{DeployError, Route, Upload};

use crate::error::ApiError;
use crate::state::AppState;

impl From<DeployError> for ApiError {
    fn from(e: DeployError) -> Self {
        let status = match e.code {
            "PLUGIN_NOT_FOUND" | "VERSION_NOT_FOUND" => StatusCode::NOT_FOUND,
            "NO_PREVIOUS_VERSION" | "NO_CURRENT_VERSION" | "NO_CANARY" => StatusCode::CONFLICT,
            "SIGNATURE_REQUIRED" | "SIGNATURE_INVALID" => StatusCode::FORBIDDEN,
            "STORAGE_ERROR" => StatusCode::INTERNAL_SERVER_ERROR,
            "INVALID_MANIFEST" | "ID_MISMATCH" => StatusCode::BAD_REQUEST,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError::new(status, e.code, e.message)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallQuery {
    /// Install as a canary taking this percentage (1-99) of new runs.
    canary: Option<u8>,
}

/// `PUT /api/plugins/{id}`: parts `component` (the .wasm) and `manifest`
/// (the TOML).
pub async fn install(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<InstallQuery>,
    mut form: Multipart,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if let Some(p) = query.canary
        && !(1..=99).contains(&p)
    {
        return Err(ApiError::bad_request(
            "canary must be a percentage from 1 to 99",
        ));
    }
    let mut component = None;
    let mut manifest = None;
    let mut signature = None;
    while let Some(field) = form.next_field().await.map_err(multipart_error)? {
        match field.name().unwrap_or_default() {
            "component" => component = Some(field.bytes().await.map_err(multipart_error)?.to_vec()),
            "manifest" => manifest = Some(field.text().await.map_err(multipart_error)?),
            "signature" => signature = Some(field.text().await.map_err(multipart_error)?),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown part {other:?}; expected `component`, `manifest` and optionally `signature`"
                )));
            }
        }
    }
    let (Some(component), Some(manifest)) = (component, manifest) else {
        return Err(ApiError::bad_request(
            "send multipart/form-data with a `component` part (the .wasm) and a `manifest` part (the TOML)",
        ));
    };
    let version = state
        .platform
        .install_plugin(Upload {
            manifest,
            component,
            expected_id: Some(id),
            canary: query.canary,
            signature,
            route: Route::Api,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(json!({ "version": version }))))
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    let status = e.status();
    let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
        "PAYLOAD_TOO_LARGE"
    } else {
        "INVALID_UPLOAD"
    };
    ApiError::new(status, code, e.body_text())
}

/// `GET /api/plugins/{id}/versions`.
pub async fn versions(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let versions = state.platform.plugin_versions(&id).await?;
    if versions.is_empty() && state.platform.plugin(&id).is_none() {
        return Err(ApiError::not_found(
            "PLUGIN_NOT_FOUND",
            format!("no plugin {id:?}"),
        ));
    }
    Ok(Json(json!({ "pluginId": id, "versions": versions })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    version: Option<String>,
}

/// `POST /api/plugins/{id}/rollback`, optionally `{"version": "..."}`.
pub async fn rollback(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let body: RollbackBody = if body.iter().all(u8::is_ascii_whitespace) {
        RollbackBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "INVALID_JSON", e.to_string()))?
    };
    let current = state
        .platform
        .rollback_plugin(&id, body.version.as_deref())
        .await?;
    Ok(Json(json!({ "current": current })))
}

/// `POST /api/plugins/{id}/promote`.
pub async fn promote(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let current = state.platform.promote_plugin(&id).await?;
    Ok(Json(json!({ "current": current })))
}

/// `DELETE /api/plugins/{id}`.
pub async fn remove(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state.platform.remove_plugin(&id).await?;
    Ok(Json(json!({ "removed": id })))
}
