//! `/api/keys`: API keys, created, listed and revoked by an admin. The
//! secret is in the creation answer only.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use bsm_platform::access::{KeyError, KeyRequest};

use crate::error::{ApiError, ApiJson};
use crate::state::AppState;

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Invalid(m) => ApiError::bad_request(m),
            KeyError::NotFound(_) => ApiError::not_found("KEY_NOT_FOUND", e.to_string()),
            KeyError::Store(e) => e.into(),
        }
    }
}

/// `POST /api/keys` `{"name", "contexts": [..], "scopes": [..]}` → 201
/// with the key and, this once, its secret.
pub async fn create(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<KeyRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let issued = state.platform.api_keys().create(body).await?;
    tracing::info!(key = %issued.key.id, name = %issued.key.name, "API key created");
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "key": issued.key,
            "secret": issued.token.expose_secret(),
            "note": "the secret is shown only now; store it",
        })),
    ))
}

/// `GET /api/keys`: every key without its secret.
pub async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(
        json!({ "keys": state.platform.api_keys().list().await? }),
    ))
}

/// `DELETE /api/keys/{id}`: revokes the key at once.
pub async fn revoke(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let key = state.platform.api_keys().revoke(&id).await?;
    tracing::info!(key = %key.id, name = %key.name, "API key revoked");
    Ok(Json(json!({ "key": key })))
}
