//! The plugin authors' test harness (`bsm-harness`) against the shipped
//! plugins: scripted and recorded host answers, output and actions.

mod common;

use bsm_harness::{Error, Plugin, Script};
use serde_json::json;

fn shipped(id: &str) -> Plugin {
    let dir = common::shipped_dir();
    Plugin::load(
        dir.join(format!("{id}.wasm")),
        dir.join(format!("{id}.toml")),
    )
    .unwrap()
    .with_bsm(env!("CARGO_BIN_EXE_bsm"))
}

#[test]
fn an_agent_runs_with_the_host_live() {
    let out = shipped("hello-agent").run("Ada").unwrap();
    assert_eq!(out.text, "Hello, Ada!");
    assert!(out.actions.is_empty());
}

#[test]
fn the_plugins_own_error_is_reported_as_a_failure() {
    let err = shipped("hello-agent").run("   ").unwrap_err();
    assert!(matches!(err, Error::Failed(_)), "{err:?}");
    assert!(err.to_string().contains("nobody to greet"), "{err}");
}

#[test]
fn scripted_llm_answers_drive_an_agent_and_its_actions() {
    let out = shipped("prompt-agent")
        .run_with(
            "Create the release notes",
            Script::new().llm_reply("Done.\nACTION: create_file {\"path\": \"NOTES.md\"}"),
        )
        .unwrap();
    assert_eq!(out.action_names(), ["create_file"]);
    // What the agent asked the LLM, as the host received it.
    let chats = out.calls_to("llm.chat");
    assert_eq!(chats.len(), 1);
    assert_eq!(
        chats[0]["messages"][1]["content"],
        "<input>\nCreate the release notes\n</input>"
    );
    assert_eq!(out.actions[0].args, json!({"path": "NOTES.md"}));
    assert!(out.text.starts_with("Done."), "{}", out.text);
}

#[test]
fn an_unscripted_host_call_is_named() {
    let err = shipped("prompt-agent")
        .run_with("hi", Script::new())
        .unwrap_err();
    assert!(matches!(err, Error::Unscripted(_)), "{err:?}");
    assert!(err.to_string().contains("llm.chat"), "{err}");
}

#[test]
fn a_scripted_llm_failure_reaches_the_agent() {
    let err = shipped("prompt-agent")
        .run_with("hi", Script::new().llm_timeout())
        .unwrap_err();
    assert!(matches!(err, Error::Failed(_)), "{err:?}");
    assert!(err.to_string().contains("Timeout"), "{err}");
}

#[test]
fn a_step_decides_over_scripted_results() {
    let results = json!([
        {"agentId": "governance-review-agent", "output": {"text": "ok", "actions": [], "metadata": {}}},
        {"agentId": "security-agent", "output": {"text": "CRITICAL: leaked key", "actions": [], "metadata": {}}}
    ]);
    let out = shipped("pr-decision")
        .step("pull_request.opened", &json!({}), &results, Script::new())
        .unwrap();
    assert_eq!(out.verdict(), Some("block"), "{:?}", out.contribution);
    assert_eq!(out.contribution["actions"][0]["name"], "block_pr");
}

#[test]
fn a_recording_replays_through_the_harness() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hello.json");
    let recording = json!({
        "format": "bsm-recording/1",
        "plugin": "hello-agent",
        "request": {"input": "Grace", "payload": {}},
        "calls": [{"call": "config.get", "args": "greeting", "result": {"Ok": "Howdy"}}],
    });
    std::fs::write(&file, recording.to_string()).unwrap();
    let out = shipped("hello-agent").replay(&file).unwrap();
    assert_eq!(out.text, "Howdy, Grace!");
}

#[test]
fn the_harness_leaves_the_components_directory_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = common::shipped_dir();
    for file in ["hello-agent.wasm", "hello-agent.toml"] {
        std::fs::copy(shipped.join(file), dir.path().join(file)).unwrap();
    }
    let plugin = Plugin::load(
        dir.path().join("hello-agent.wasm"),
        dir.path().join("hello-agent.toml"),
    )
    .unwrap()
    .with_bsm(env!("CARGO_BIN_EXE_bsm"));
    assert_eq!(plugin.run("Ada").unwrap().text, "Hello, Ada!");
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["hello-agent.toml", "hello-agent.wasm"]);
}
