//! Every original BSM agent becomes an instance of the `prompt-agent`
//! component: same bytes (compiled once), its own manifest and config.

use super::knowledge::KnowledgeBinding;
use super::layout::AgentDefinition;
use bsm_runtime::manifest::{Budget, Grants, KnowledgeGrant, LlmGrant, Manifest, PluginKind};

/// The original BSM action allow-list (see `shared/fixtures/bsm/README.md`).
pub const ORIGINAL_ALLOW_LIST: &[&str] = &[
    "create_file",
    "review_pr",
    "request_changes",
    "approve_pr",
    "create_review_comment",
    "generate_fix_suggestion",
    "scan_vulnerabilities",
    "block_pr",
    "alert_security_team",
    "generate_security_report",
    "suggest_fixes",
    "auto_merge",
    "manual_review_request",
    "run_tests",
    "deploy_staging",
    "rollback_merge",
    "validate_structure",
    "cleanup_stale_prs",
    "archive_old_issues",
    "optimize_database",
    "generate_health_report",
    "audit_configuration",
    "validate_guards",
    "check_api_routes",
    "verify_ui_config",
    "generate_audit_report",
    "audit_ios_ui",
    "validate_mobile_api_contract",
    "check_safe_area_support",
    "test_keyboard_behavior",
    "generate_ios_report",
];

/// Budget of an LLM-backed agent: the LLM call dominates its time, and a
/// run waiting for it holds memory but no CPU, so thousands may wait.
fn agent_budget() -> Budget {
    Budget {
        timeout_ms: 120_000,
        memory_mb: 32,
        max_concurrent: 4096,
        max_queued: 4096,
        max_queue_wait_ms: 5_000,
        ..Budget::default()
    }
}

/// The manifest of `prompt-agent` configured as `def`.
///
/// With `knowledge`, the agent searches that collection for its input and
/// puts the best hits in its prompt (`{{knowledge}}`).
pub fn manifest_for(def: &AgentDefinition, knowledge: Option<&KnowledgeBinding>) -> Manifest {
    let mut config = toml::Table::new();
    let mut set = |k: &str, v: &str| {
        if !v.trim().is_empty() {
            config.insert(k.to_string(), toml::Value::String(v.to_string()));
        }
    };
    set("id", &def.id);
    set("name", &def.name);
    set("role", &def.role);
    set("description", &def.description);
    set("instructions", &def.instructions);
    set("version", &def.version);
    if let Some(model) = &def.model_name {
        set("model", model);
    }
    if let Some(verdict) = &def.verdict {
        set("verdict", verdict);
    }
    if let Some(k) = knowledge {
        set("knowledge-collection", &k.collection);
        config.insert(
            "knowledge-top-k".into(),
            toml::Value::Integer(i64::from(k.top_k)),
        );
    }
    config.insert(
        "actions".into(),
        toml::Value::Array(
            def.actions
                .iter()
                .map(|a| toml::Value::String(a.clone()))
                .collect(),
        ),
    );
    Manifest {
        id: def.id.clone(),
        version: if def.version.is_empty() {
            "0".into()
        } else {
            def.version.clone()
        },
        kind: PluginKind::Agent,
        description: if def.description.is_empty() {
            def.role.clone()
        } else {
            def.description.clone()
        },
        wasm: None,
        allowed_actions: def.actions.clone(),
        budget: agent_budget(),
        config,
        rollout: Default::default(),
        // What prompt-agent uses, and no more: the agent's own model, and
        // reading its knowledge collection (if the directory has one).
        capabilities: Grants {
            llm: Some(LlmGrant {
                models: def.model_name.iter().cloned().collect(),
                max_tokens: None,
            }),
            knowledge: Some(KnowledgeGrant {
                read: knowledge
                    .map(|k| k.collection.clone())
                    .into_iter()
                    .collect(),
                write: Vec::new(),
            }),
            ..Grants::default()
        },
    }
}
