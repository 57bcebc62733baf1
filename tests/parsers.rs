//! Every parser of outside input, fed arbitrary bytes and arbitrary
//! structures (property-based, proptest): plugin manifests (TOML), the
//! governance registry and agent definitions (YAML, then governance over
//! what parsed), the GitHub webhook's signature and event, the API's JSON
//! bodies and list cursors. Each must answer a clear error or a value,
//! never panic.

use axum::extract::FromRequest;
use axum::http::Request;
use proptest::prelude::*;
use serde_json::{Map, Value};

use bsm_platform::bsm::Governance;
use bsm_platform::bsm::layout::{BsmLayout, parse_definition, parse_registry};
use bsm_platform::paging::PageRequest;
use bsm_platform::runtime::Manifest;
use bsm_server::error::ApiJson;

/// Keys the parsers know, mixed with random ones, so that generated
/// structures reach past the first unknown field.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "id", "version", "kind", "name", "role", "description", "instructions", "wasm",
            "actions", "allowed-actions", "budget", "timeout-ms", "memory-mb", "max-concurrent",
            "cpu-ms", "config", "rollout", "capabilities", "llm", "models", "max-tokens", "cache",
            "quota-bytes", "reports", "max-count", "max-bytes", "knowledge", "read", "write",
            "agents", "contexts", "allowed", "risk", "level", "rationale", "approval", "required",
            "type", "approvers", "startup", "allowed_profiles", "healthcheck", "endpoint",
            "interval_seconds", "model", "modelProvider", "modelName", "agentId", "input",
            "payload", "context", "callingContext", "event", "scopes", "documents", "query",
            "topK", "mode", "filter", "text", "metadata",
        ])
        .prop_map(String::from),
        1 => "[a-zA-Z_-]{1,10}",
    ]
}

/// Arbitrary JSON-like trees (also serialised as YAML and TOML below).
fn tree() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        prop::sample::select(vec![
            "agent", "step", "api", "ci", "high", "manual", "none", "*"
        ])
        .prop_map(Value::from),
        ".{0,24}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..8)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A top-level object (what the files and bodies are).
fn object() -> impl Strategy<Value = Value> {
    prop::collection::vec((key(), tree()), 0..10)
        .prop_map(|pairs| Value::Object(pairs.into_iter().collect()))
}

/// TOML has no null, and its root must be a table: nulls become strings.
fn to_toml(v: &Value) -> Option<String> {
    fn convert(v: &Value) -> toml::Value {
        match v {
            Value::Null => toml::Value::String("null".into()),
            Value::Bool(b) => toml::Value::Boolean(*b),
            Value::Number(n) => n
                .as_i64()
                .map(toml::Value::Integer)
                .unwrap_or_else(|| toml::Value::Float(n.as_f64().unwrap_or(0.0))),
            Value::String(s) => toml::Value::String(s.clone()),
            Value::Array(items) => toml::Value::Array(items.iter().map(convert).collect()),
            Value::Object(map) => {
                toml::Value::Table(map.iter().map(|(k, v)| (k.clone(), convert(v))).collect())
            }
        }
    }
    match convert(v) {
        toml::Value::Table(t) => toml::to_string(&t).ok(),
        _ => None,
    }
}

fn layout(
    agents: Vec<bsm_platform::bsm::layout::AgentDefinition>,
    registry_text: &str,
) -> Option<BsmLayout> {
    Some(BsmLayout {
        root: std::path::PathBuf::from("/nonexistent"),
        agents,
        broken: Vec::new(),
        registry: parse_registry(registry_text).ok()?,
        knowledge_dir: None,
    })
}

/// Runs a JSON body through the API's extractor, as a handler receives it.
fn api_body<T: serde::de::DeserializeOwned>(
    bytes: Vec<u8>,
    content_type: &str,
) -> Result<T, String> {
    let request = Request::builder()
        .method("POST")
        .uri("/")
        .header("content-type", content_type)
        .body(axum::body::Body::from(bytes))
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime
        .block_on(ApiJson::<T>::from_request(request, &()))
        .map(|ApiJson(v)| v)
        .map_err(|e| {
            assert!(
                e.status.is_client_error(),
                "a bad body is the client's error: {e:?}"
            );
            assert!(!e.message.is_empty());
            e.message
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn manifests_from_arbitrary_bytes_are_refused_clearly(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes);
        if let Err(e) = Manifest::from_toml(&text, std::path::Path::new("m.toml")) {
            prop_assert!(e.starts_with("m.toml: "), "the error names the file: {e}");
        }
    }

    #[test]
    fn manifests_from_arbitrary_structures_parse_or_name_the_problem(v in object()) {
        if let Some(text) = to_toml(&v) {
            match Manifest::from_toml(&text, std::path::Path::new("m.toml")) {
                Ok(m) => prop_assert!(m.validate().is_ok()),
                Err(e) => prop_assert!(e.len() > "m.toml: ".len(), "{e}"),
            }
        }
    }

    #[test]
    fn registry_and_agent_yaml_from_arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = parse_registry(&text);
        if let Err(e) = parse_definition(&text) {
            prop_assert!(!e.is_empty());
        }
    }

    #[test]
    fn governance_over_arbitrary_registries_and_agents_never_panics(
        registry in object(),
        agents in prop::collection::vec(object(), 0..4),
    ) {
        let registry_text = serde_yaml_ng::to_string(&registry).unwrap();
        let definitions = agents
            .iter()
            .filter_map(|a| parse_definition(&serde_yaml_ng::to_string(a).unwrap()).ok())
            .collect();
        if let Some(layout) = layout(definitions, &registry_text) {
            let governance = Governance::assess(&layout, &[]);
            for v in governance.violations() {
                prop_assert!(!v.problem.is_empty() && !v.field.is_empty(), "{v:?}");
            }
            let _ = Governance::from_layout(&layout, &["review_pr".to_string()]);
        }
    }

    #[test]
    fn webhook_signatures_and_events_from_arbitrary_input_never_panic(
        header in prop::option::of(".{0,80}"),
        hexish in "sha256=[0-9a-fA-F]{0,70}",
        body in prop::collection::vec(any::<u8>(), 0..256),
        event in ".{0,20}",
        payload in tree(),
    ) {
        let secret = secrecy::SecretString::from("a-webhook-secret-of-some-length");
        for h in [header.as_deref(), Some(hexish.as_str())] {
            if let Err(e) = bsm_server::webhooks::verify_signature(&secret, h, &body) {
                prop_assert_eq!(e.status.as_u16(), 401);
            }
        }
        let good = bsm_server::webhooks::sign("a-webhook-secret-of-some-length", &body);
        prop_assert!(bsm_server::webhooks::verify_signature(&secret, Some(&good), &body).is_ok());
        let name = bsm_server::webhooks::event_name(&event, &payload);
        prop_assert!(name.starts_with(event.as_str()));
    }

    #[test]
    fn api_bodies_from_arbitrary_bytes_are_client_errors(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = api_body::<bsm_server::agents::RunBody>(bytes.clone(), "application/json");
        let _ = api_body::<bsm_server::jobs::JobBody>(bytes.clone(), "application/json");
        let _ = api_body::<bsm_platform::access::KeyRequest>(bytes, "application/json");
    }

    #[test]
    fn api_bodies_from_arbitrary_structures_parse_or_are_client_errors(v in object(), wrong_type in any::<bool>()) {
        let bytes = serde_json::to_vec(&v).unwrap();
        let ct = if wrong_type { "text/plain" } else { "application/json" };
        let _ = api_body::<bsm_server::agents::RunBody>(bytes.clone(), ct);
        let _ = api_body::<bsm_server::jobs::JobBody>(bytes.clone(), ct);
        let _ = api_body::<bsm_platform::access::KeyRequest>(bytes.clone(), ct);
        let _ = api_body::<bsm_server::knowledge::SearchBody>(bytes.clone(), ct);
        let _ = api_body::<bsm_server::knowledge::UpsertBody>(bytes, ct);
    }

    #[test]
    fn list_cursors_and_limits_from_arbitrary_input_are_refused_clearly(
        limit in prop::option::of(any::<usize>()),
        cursor in prop::option::of(".{0,64}"),
    ) {
        if let Err(e) = PageRequest::parse(limit, cursor.as_deref()) {
            prop_assert!(!e.to_string().is_empty());
        }
    }
}
