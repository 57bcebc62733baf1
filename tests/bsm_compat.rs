//! BSM layouts load, their governance validates, and every agent runs as a
//! `prompt-agent` instance: the set shipped in `examples/bsm` always, the
//! original BSM files (unedited) in the ignored compatibility tests that
//! `.ci/run` runs with `--ignored`.

mod common;
#[path = "common/llm_server.rs"]
mod llm_server;

use std::path::Path;
use std::sync::Arc;

use bsm_llm::settings::ProviderSettings;
use bsm_llm::{LlmClient, LlmSettings};
use bsm_platform::bsm::agents::{ORIGINAL_ALLOW_LIST, manifest_for};
use bsm_platform::bsm::governance::PolicySource;
use bsm_platform::bsm::{BsmLayout, Governance};
use bsm_runtime::capabilities::Capabilities;
use common::*;

fn allow_list() -> Vec<String> {
    ORIGINAL_ALLOW_LIST.iter().map(|s| s.to_string()).collect()
}

#[test]
#[ignore = "reads the original BSM files from BSM_ORIGINAL_FIXTURES; .ci/run runs it with --ignored"]
fn the_original_layout_loads_as_it_is() {
    let layout = BsmLayout::load(&original_fixtures()).unwrap();
    let ids: Vec<_> = layout.agents.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "my-agent",
            "agent-auto",
            "legal-agent",
            "governance-agent",
            "governance-review-agent",
            "code-review-agent",
            "security-agent",
            "pr-merge-agent",
            "integrity-agent"
        ]
    );
    let version = |id: &str| {
        layout
            .agents
            .iter()
            .find(|a| a.id == id)
            .unwrap()
            .version
            .clone()
    };
    assert_eq!(version("governance-agent"), "1");
    assert_eq!(version("governance-review-agent"), "1.0");
    assert_eq!(version("my-agent"), "2.0.0");
    let my_agent = layout.agents.iter().find(|a| a.id == "my-agent").unwrap();
    assert!(
        my_agent.actions.is_empty(),
        "an agent without actions is fine"
    );
    let security = layout
        .agents
        .iter()
        .find(|a| a.id == "security-agent")
        .unwrap();
    assert!(security.instructions.contains("أنت خبير أمان سيبراني"));
    assert_eq!(security.model_name.as_deref(), Some("gpt-4o"));
    assert_eq!(layout.registry.len(), 11);
    assert!(layout.knowledge_dir.is_some());
}

#[test]
#[ignore = "reads the original BSM files from BSM_ORIGINAL_FIXTURES; .ci/run runs it with --ignored"]
fn the_original_registry_passes_governance() {
    let layout = BsmLayout::load(&original_fixtures()).unwrap();
    let gov = Governance::from_layout(&layout, &allow_list())
        .unwrap_or_else(|v| panic!("violations: {v:#?}"));
    let merge = gov.policy("pr-merge-agent").unwrap();
    assert!(merge.approval_required);
    assert_eq!(merge.contexts, ["ci", "github"]);
    assert_eq!(merge.source, PolicySource::Registry);
    assert!(!merge.allows_context("api"));
    assert_eq!(
        gov.policy("agent-auto").unwrap().source,
        PolicySource::Default
    );
    assert!(
        gov.warnings
            .iter()
            .any(|w| w.starts_with("agent-auto: no registry entry")),
        "{:?}",
        gov.warnings
    );
    assert!(
        gov.warnings
            .iter()
            .any(|w| w.starts_with("bsu-audit-agent: in the registry but has no agent definition"))
    );
}

fn write_layout(dir: &Path, registry: &str, agents: &[(&str, &str)]) {
    std::fs::create_dir_all(dir.join("data/agents")).unwrap();
    std::fs::create_dir_all(dir.join("agents")).unwrap();
    let files: Vec<String> = agents.iter().map(|(id, _)| format!("{id}.yaml")).collect();
    std::fs::write(
        dir.join("data/agents/index.json"),
        serde_json::json!({ "agents": files }).to_string(),
    )
    .unwrap();
    for (id, yaml) in agents {
        std::fs::write(dir.join(format!("data/agents/{id}.yaml")), yaml).unwrap();
    }
    std::fs::write(dir.join("agents/registry.yaml"), registry).unwrap();
}

#[test]
fn every_violation_is_listed_at_once() {
    let dir = tempfile::tempdir().unwrap();
    write_layout(
        dir.path(),
        r#"
agents:
  - id: risky
    contexts: { allowed: [api, telepathy] }
    risk: { level: critical, rationale: "" }
    approval: { required: false, type: none, approvers: [] }
    startup: { auto_start: false, allowed_profiles: [] }
    healthcheck: { endpoint: health, interval_seconds: 0 }
  - id: risky
    risk: { level: extreme, rationale: r }
    approval: { required: true, type: manual, approvers: [] }
    startup: { allowed_profiles: [moon] }
    healthcheck: { endpoint: /h, interval_seconds: 5 }
    contexts: { allowed: [] }
"#,
        &[(
            "risky",
            "id: risky\nname: Risky\nactions: [launch_missiles]\n",
        )],
    );
    let layout = BsmLayout::load(dir.path()).unwrap();
    let violations = Governance::from_layout(&layout, &allow_list()).unwrap_err();
    let fields: Vec<String> = violations.iter().map(|v| v.field.clone()).collect();
    for expected in [
        "contexts.allowed",
        "risk.rationale",
        "approval.required",
        "startup.allowed_profiles",
        "healthcheck.endpoint",
        "healthcheck.interval_seconds",
        "id",
        "risk.level",
        "approval.approvers",
        "actions",
    ] {
        assert!(
            fields.iter().any(|f| f == expected),
            "no violation for {expected}: {violations:#?}"
        );
    }
    assert!(violations.len() >= 12, "{violations:#?}");
}

#[test]
fn the_shipped_layout_loads_and_passes_strict_governance() {
    let layout = BsmLayout::load(&shipped_agents()).unwrap();
    assert!(layout.broken.is_empty(), "{:?}", layout.broken);
    let ids: Vec<_> = layout.agents.iter().map(|a| a.id.as_str()).collect();
    for id in [
        "governance-agent",
        "governance-review-agent",
        "code-review-agent",
        "security-agent",
        "integrity-agent",
        "pr-merge-agent",
    ] {
        assert!(ids.contains(&id), "{id} missing from {ids:?}");
    }
    let gov = Governance::from_layout(&layout, &allow_list())
        .unwrap_or_else(|v| panic!("violations: {v:#?}"));
    assert!(gov.warnings.is_empty(), "{:?}", gov.warnings);
    let merge = gov.policy("pr-merge-agent").unwrap();
    assert!(merge.approval_required);
    assert_eq!(merge.contexts, ["ci", "github"]);
    for id in ids {
        let policy = gov.policy(id).unwrap();
        assert_eq!(policy.source, PolicySource::Registry, "{id}");
    }
    assert!(layout.knowledge_dir.is_some());
}

#[test]
fn one_bad_agent_is_quarantined_and_the_others_are_governed() {
    let dir = tempfile::tempdir().unwrap();
    write_layout(
        dir.path(),
        r#"
agents:
  - id: good
    contexts: { allowed: [api] }
    risk: { level: low, rationale: "reads only" }
    approval: { required: false, type: none, approvers: [] }
    startup: { allowed_profiles: [production] }
    healthcheck: { endpoint: /h, interval_seconds: 5 }
  - id: wild
    contexts: { allowed: [api] }
    risk: { level: low, rationale: "reads only" }
    approval: { required: false, type: none, approvers: [] }
    startup: { allowed_profiles: [production] }
    healthcheck: { endpoint: /h, interval_seconds: 5 }
"#,
        &[
            ("good", "id: good\nname: Good\nactions: [review_pr]\n"),
            (
                "wild",
                "id: wild\nname: Wild\nactions: [review_pr, launch_missiles]\n",
            ),
            ("torn", "id: [unterminated\n"),
        ],
    );
    let layout = BsmLayout::load(dir.path()).unwrap();
    assert_eq!(
        layout.broken.len(),
        1,
        "an unreadable file is listed, not fatal"
    );
    let gov = Governance::assess(&layout, &allow_list());
    assert!(gov.policy("good").is_some(), "the valid agent is governed");
    assert!(gov.policy("wild").is_none());
    let quarantined: Vec<&str> = gov.quarantined().keys().map(String::as_str).collect();
    assert_eq!(quarantined, ["torn", "wild"]);
    assert!(
        gov.quarantined()["wild"][0]
            .problem
            .contains("launch_missiles"),
        "{:?}",
        gov.quarantined()
    );
    assert_eq!(gov.quarantined()["torn"][0].field, "definition");
    assert!(
        Governance::from_layout(&layout, &allow_list()).is_err(),
        "strict mode still refuses the whole registry"
    );

    let mut extended = allow_list();
    extended.push("launch_missiles".into());
    let gov = Governance::assess(&layout, &extended);
    assert!(
        gov.policy("wild").is_some(),
        "a deployment's extra action un-quarantines it"
    );
}

/// Installs every agent of `dir` as a prompt-agent instance over a real
/// LLM test server, runs each once, and checks what it emitted.
async fn every_agent_runs_as_a_prompt_agent_instance(
    dir: &Path,
) -> (BsmLayout, Vec<llm_server::Seen>) {
    let server = llm_server::LlmServer::start().await;
    server.set_reply("Reviewed.\nACTION: review_pr");
    let llm = LlmClient::from_settings(&LlmSettings {
        providers: vec![ProviderSettings::new(
            "test",
            &server.base_url,
            "test-model",
        )],
        ..LlmSettings::default()
    })
    .unwrap()
    .unwrap();
    let runtime = runtime_with(Capabilities::with_llm(Arc::new(llm)));
    let bytes = std::fs::read(shipped_dir().join("prompt-agent.wasm")).unwrap();
    let layout = BsmLayout::load(dir).unwrap();
    for def in &layout.agents {
        let plugin = runtime
            .build_plugin(
                manifest_for(def, None),
                bytes.clone(),
                shipped_dir().join("prompt-agent.wasm"),
            )
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", def.id));
        assert_eq!(plugin.described.id, def.id);
        assert_eq!(plugin.described.name, def.name);
        runtime.registry().install(plugin);
        let run = runtime
            .run_agent(&def.id, request("Review PR #1"))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", def.id));
        assert!(run.output.text.starts_with("Reviewed."));
        let emitted: Vec<_> = run.output.actions.iter().map(|a| a.name.as_str()).collect();
        let expected: Vec<&str> = if def.actions.iter().any(|a| a == "review_pr") {
            vec!["review_pr"]
        } else {
            vec![]
        };
        assert_eq!(emitted, expected, "{}", def.id);
    }
    let seen = server.seen();
    assert_eq!(seen.len(), layout.agents.len());
    let stats: std::collections::HashMap<_, _> = runtime.cache_stats().into_iter().collect();
    assert_eq!(stats["components"].loads, 1, "every agent, one compilation");
    (layout, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shipped_agent_runs_as_a_prompt_agent_instance() {
    let (layout, seen) = every_agent_runs_as_a_prompt_agent_instance(&shipped_agents()).await;
    let legal = layout
        .agents
        .iter()
        .position(|a| a.id == "legal-agent")
        .unwrap();
    let system = &seen[legal].body["messages"][0]["content"];
    assert!(
        system
            .as_str()
            .unwrap()
            .starts_with("You are Legal analysis agent."),
        "{system}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "reads the original BSM files from BSM_ORIGINAL_FIXTURES; .ci/run runs it with --ignored"]
async fn every_original_agent_runs_as_a_prompt_agent_instance() {
    let (_, seen) = every_agent_runs_as_a_prompt_agent_instance(&original_fixtures()).await;
    let legal = &seen[2].body["messages"][0]["content"];
    assert!(
        legal
            .as_str()
            .unwrap()
            .starts_with("You are Legal analysis agent."),
        "{legal}"
    );
}
