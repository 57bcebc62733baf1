//! `POST /api/webhooks/github`: GitHub's events start their pipelines in
//! the `ci` context.
//!
//! GitHub authenticates by signing the body (`X-Hub-Signature-256`,
//! HMAC-SHA256 with the shared secret), not with an API key: the signature
//! is checked (in constant time) before anything else is read, and a
//! delivery id already seen is refused, so a captured request cannot be
//! replayed. The event (`X-GitHub-Event`) and the payload's `action` name
//! the pipeline: `pull_request` + `opened` → `pull_request.opened`. Events
//! without a pipeline of their own are acknowledged and ignored (GitHub
//! sends many kinds), so they do not fall through to the default pipeline.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::error::ApiError;
use crate::state::AppState;

/// The context GitHub's events run in.
pub const GITHUB_CONTEXT: &str = "ci";

/// Longest delivery id accepted (GitHub's are UUIDs).
const MAX_DELIVERY_ID: usize = 128;

/// Why a signature is refused, or `Ok` if the body is the secret holder's.
pub fn verify_signature(
    secret: &SecretString,
    header: Option<&str>,
    body: &[u8],
) -> Result<(), ApiError> {
    let Some(header) = header else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "SIGNATURE_MISSING",
            "the X-Hub-Signature-256 header is missing",
        ));
    };
    let invalid = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "SIGNATURE_INVALID",
            "X-Hub-Signature-256 does not match the body and the configured secret",
        )
    };
    let signature = header
        .strip_prefix("sha256=")
        .filter(|hex| hex.len() == 64)
        .and_then(|hex| hex::decode(hex).ok())
        .ok_or_else(invalid)?;
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes()).map_err(|_| invalid())?;
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&signature).map_err(|_| invalid())
}

/// The pipeline event a GitHub event names: `event.action`, or the event
/// alone when the payload has no action (`push`).
pub fn event_name(event: &str, payload: &Value) -> String {
    match payload.get("action").and_then(Value::as_str) {
        Some(action) if !action.is_empty() => format!("{event}.{action}"),
        _ => event.to_string(),
    }
}

/// The signature `secret` gives `body`, as GitHub writes it (for senders
/// and tests).
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

pub async fn github(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Some(secret) = &state.github_webhook_secret else {
        return Err(ApiError::not_found(
            "WEBHOOK_DISABLED",
            "the GitHub webhook is off: set BSM_GITHUB_WEBHOOK_SECRET (or [server] github-webhook-secret-file)",
        ));
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    verify_signature(secret, header("x-hub-signature-256"), &body)?;
    let event = header("x-github-event")
        .filter(|e| !e.is_empty() && e.len() <= 64)
        .ok_or_else(|| ApiError::bad_request("the X-GitHub-Event header is missing"))?;
    let delivery = header("x-github-delivery")
        .filter(|d| !d.is_empty() && d.len() <= MAX_DELIVERY_ID)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "the X-GitHub-Delivery header is missing or longer than {MAX_DELIVERY_ID} characters"
            ))
        })?;
    let payload: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_JSON",
            format!("the webhook body is not JSON: {e}"),
        )
    })?;
    if !payload.is_object() {
        return Err(ApiError::bad_request(
            "the webhook body must be a JSON object",
        ));
    }
    if !state.platform.first_delivery("github", delivery).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "WEBHOOK_REPLAY",
            format!("delivery {delivery:?} was already received"),
        ));
    }
    let name = event_name(event, &payload);
    if event == "ping" || !state.platform.pipelines().0.contains_key(&name) {
        return Ok(Json(json!({
            "status": "ignored",
            "event": name,
            "reason": "no pipeline handles this event",
        }))
        .into_response());
    }
    let job = state
        .platform
        .submit_job(name.clone(), payload, GITHUB_CONTEXT.to_string())
        .await?;
    tracing::info!(job = %job.id, event = %name, delivery, "GitHub webhook accepted");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "jobId": job.id, "status": job.status, "event": name })),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_with_the_same_secret_and_body() {
        let secret = SecretString::from("It's a Secret to Everybody");
        // GitHub's documented example.
        let body = b"Hello, World!";
        let expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(sign("It's a Secret to Everybody", body), expected);
        assert!(verify_signature(&secret, Some(expected), body).is_ok());
        let code = |r: Result<(), ApiError>| r.unwrap_err().code;
        assert_eq!(
            code(verify_signature(&secret, Some(expected), b"Hello, World?")),
            "SIGNATURE_INVALID"
        );
        assert_eq!(
            code(verify_signature(&secret, Some("sha256=00"), body)),
            "SIGNATURE_INVALID"
        );
        assert_eq!(
            code(verify_signature(&secret, Some(&expected[7..]), body)),
            "SIGNATURE_INVALID"
        );
        assert_eq!(
            code(verify_signature(&secret, None, body)),
            "SIGNATURE_MISSING"
        );
    }

    #[test]
    fn events_with_actions_name_their_pipeline() {
        assert_eq!(
            event_name("pull_request", &json!({"action": "opened"})),
            "pull_request.opened"
        );
        assert_eq!(event_name("push", &json!({"ref": "main"})), "push");
        assert_eq!(
            event_name("check_suite", &json!({"action": "completed"})),
            "check_suite.completed"
        );
    }
}
