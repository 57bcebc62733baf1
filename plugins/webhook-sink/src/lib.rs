//! The generic webhook sink: every action it is routed becomes one POST of
//! JSON to `config.url`, signed with HMAC-SHA256 by the host (the secret
//! named by `config.signing-secret` never enters the plugin). A receiver
//! checks `x-bsm-signature-256: sha256=<hex>` over the exact body and drops
//! duplicates by `x-bsm-idempotency-key` (delivery is at least once).

use bsm_sdk::http::{self, Request};
use bsm_sdk::{ActionHandler, ActionRequest, DeliveryError, HandlerInfo, config};
use serde_json::{Value, json};

/// The JSON a receiver gets.
pub fn body(request: &ActionRequest) -> Value {
    let parse = |s: &str| serde_json::from_str::<Value>(s).unwrap_or(Value::Null);
    json!({
        "id": request.id,
        "name": request.name,
        "args": parse(&request.args),
        "idempotencyKey": request.idempotency_key,
        "attempt": request.attempt,
        "sourcePlugin": request.source_plugin,
        "jobId": request.job_id,
        "event": request.event,
        "payload": parse(&request.payload),
        "decision": request.decision,
        "report": request.report,
        "correlationId": request.correlation_id,
    })
}

struct WebhookSink;

impl ActionHandler for WebhookSink {
    fn describe() -> HandlerInfo {
        HandlerInfo::new("webhook-sink", "Webhook sink", env!("CARGO_PKG_VERSION"))
            .with_description("POSTs each action as signed JSON to a configured URL")
    }

    fn handle(request: ActionRequest) -> Result<String, DeliveryError> {
        let url = config::get("url")
            .filter(|u| !u.trim().is_empty())
            .ok_or_else(|| {
                DeliveryError::Permanent("webhook-sink has no `url` in its [config]".into())
            })?;
        let secret = config::get("signing-secret").unwrap_or_else(|| "webhook-sink-key".into());
        let bytes = serde_json::to_vec(&body(&request))
            .map_err(|e| DeliveryError::Permanent(e.to_string()))?;
        let signature = http::sign(&secret, &bytes)?;
        let response = http::send(
            &Request::post(url)
                .json(&bytes)
                .header("x-bsm-signature-256", &format!("sha256={signature}"))
                .header("x-bsm-idempotency-key", &request.idempotency_key)
                .header("x-bsm-action", &request.name),
        )?;
        response.delivered()?;
        Ok(format!("POST answered {}", response.status))
    }
}

bsm_sdk::export_handler!(WebhookSink);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_carries_the_action_its_key_and_its_job() {
        let request = ActionRequest {
            id: "a1".into(),
            name: "block_pr".into(),
            args: "{\"why\":\"x\"}".into(),
            idempotency_key: "bsm-action-a1".into(),
            attempt: 2,
            source_plugin: "pr-decision".into(),
            job_id: Some("j1".into()),
            event: Some("pull_request.opened".into()),
            payload: "{\"number\":7}".into(),
            decision: Some("block_pr".into()),
            report: None,
            correlation_id: "j1".into(),
        };
        let v = body(&request);
        assert_eq!(v["args"]["why"], "x");
        assert_eq!(v["payload"]["number"], 7);
        assert_eq!(v["idempotencyKey"], "bsm-action-a1");
        assert_eq!(v["decision"], "block_pr");
    }
}
