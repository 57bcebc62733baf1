//! The contract is language-neutral: `examples/js-agent`, an agent written
//! in JavaScript and built by componentize-js, runs in the same sandbox,
//! through the same capabilities, grants and tools as the Rust agents.

mod common;
#[path = "common/llm_server.rs"]
mod llm_server;

use std::path::Path;
use std::process::{Command, Output};

use bsm_harness::{Error, Plugin, Script};
use serde_json::{Value, json};

fn js_agent() -> Plugin {
    let dir = common::js_plugins_dir();
    Plugin::load(
        dir.join("pr-summary-js.wasm"),
        dir.join("pr-summary-js.toml"),
    )
    .unwrap()
    .with_bsm(env!("CARGO_BIN_EXE_bsm"))
}

fn pull_request() -> Value {
    json!({"pull_request": {"number": 7, "title": "Hot swap", "body": "Adds hot swap of plugins."}})
}

#[test]
fn the_javascript_agent_answers_and_emits_actions_through_the_contract() {
    let out = js_agent()
        .run_payload(
            "",
            &pull_request(),
            Script::new().llm_reply(
                "- adds hot swap\n- no breaking change\nACTION: label_pr {\"label\": \"feature\"}",
            ),
        )
        .unwrap();
    assert_eq!(out.text, "- adds hot swap\n- no breaking change");
    assert_eq!(out.action_names(), ["label_pr"]);
    assert_eq!(out.actions[0].args, json!({"label": "feature"}));
    assert_eq!(out.metadata["language"], "javascript");
    assert_eq!(out.raw["governedActions"][0]["status"], "queued");
}

#[test]
fn its_errors_are_the_contracts_agent_errors() {
    let err = js_agent().run_with("   ", Script::new()).unwrap_err();
    assert!(matches!(err, Error::Failed(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("invalid input: nothing to summarise"),
        "{err}"
    );

    let err = js_agent()
        .run_with("Summarise this", Script::new().llm_circuit_open(1200))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("the LLM did not answer: circuit-open: 1200"),
        "{err}"
    );
}

fn bsm(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bsm"));
    // One data directory per calling test: never a database shared by
    // tests running side by side.
    let test = std::thread::current()
        .name()
        .unwrap_or("unnamed")
        .replace("::", "-");
    let data = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("bsm-js-{test}"));
    cmd.args(args).env("BSM_DATA_DIR", data);
    for (k, _) in std::env::vars() {
        if k.starts_with("BSM_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    cmd.output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_calls_the_real_llm_protocol_and_records_and_replays_like_any_plugin() {
    let server = llm_server::LlmServer::start().await;
    server.set_reply("- adds hot swap");
    let tmp = tempfile::tempdir().unwrap();
    let payload = tmp.path().join("payload.json");
    std::fs::write(&payload, pull_request().to_string()).unwrap();
    let recording = tmp.path().join("js.json");
    let plugins = common::js_plugins_dir();
    let args: Vec<String> = [
        "--plugins-dir",
        plugins.to_str().unwrap(),
        "run",
        "pr-summary-js",
        "--input",
        "Focus on risk.",
        "--payload",
        payload.to_str().unwrap(),
        "--record",
        recording.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec();
    let base = server.base_url.clone();
    let o = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        bsm(
            &args,
            &[
                ("BSM_LLM_BASE_URL", base.as_str()),
                ("BSM_LLM_MODEL", "test-model"),
            ],
        )
    })
    .await
    .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "- adds hot swap\n");
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    let messages = &seen[0].body["messages"];
    assert!(
        messages[0]["content"]
            .as_str()
            .unwrap()
            .starts_with("Summarise the pull request"),
        "{messages}"
    );
    let user = messages[1]["content"].as_str().unwrap();
    assert!(user.contains("Pull request #7: Hot swap"), "{user}");
    assert!(user.contains("<input>\nFocus on risk.\n</input>"), "{user}");
    assert_eq!(seen[0].body["max_tokens"], 400);

    // Replayed with no LLM at all.
    let replay = js_agent().replay(&recording).unwrap();
    assert_eq!(replay.text, "- adds hot swap");
    assert_eq!(server.seen().len(), 1);
}

#[test]
fn without_its_llm_grant_the_javascript_agent_is_refused_at_load() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = common::js_plugins_dir();
    std::fs::copy(
        dir.join("pr-summary-js.wasm"),
        tmp.path().join("pr-summary-js.wasm"),
    )
    .unwrap();
    let manifest = std::fs::read_to_string(dir.join("pr-summary-js.toml")).unwrap();
    let ungranted = manifest.replace("[capabilities.llm]\nmodels = []\n", "");
    assert_ne!(manifest, ungranted);
    std::fs::write(tmp.path().join("pr-summary-js.toml"), ungranted).unwrap();
    let o = bsm(
        &[
            "--plugins-dir",
            tmp.path().to_str().unwrap(),
            "run",
            "pr-summary-js",
            "--input",
            "x",
        ],
        &[],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("bsm:plugin/llm"), "{err}");
}
