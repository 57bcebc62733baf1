//! The `bsm` command line, run as a real process.

mod common;
#[path = "common/llm_server.rs"]
mod llm_server;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

fn bsm(args: &[&str], plugins_dir: Option<&Path>) -> Output {
    bsm_with_env(args, plugins_dir, &[])
}

/// Runs `bsm` with a clean BSM_* environment plus `env`.
fn bsm_with_env(args: &[&str], plugins_dir: Option<&Path>, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bsm"));
    let data_dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bsm-cli-data");
    cmd.args(args).env("BSM_DATA_DIR", data_dir);
    for var in [
        "BSM_PLUGINS_DIR",
        "BSM_BSM_DIR",
        "BSM_STRICT",
        "BSM_LOG",
        "BSM_CONFIG",
        "BSM_LLM_BASE_URL",
        "BSM_LLM_API_KEY",
        "BSM_LLM_MODEL",
    ] {
        cmd.env_remove(var);
    }
    if let Some(dir) = plugins_dir {
        cmd.env("BSM_PLUGINS_DIR", dir);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("bsm runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A failing command prints exactly one `error:` line and exits non-zero.
fn assert_one_line_error(o: &Output, needle: &str) {
    assert!(
        !o.status.success(),
        "expected failure, stdout: {}",
        stdout(o)
    );
    let err = stderr(o);
    let lines: Vec<_> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr, got: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    assert!(lines[0].contains(needle), "expected {needle:?} in: {err}");
}

#[test]
fn run_hello_agent_prints_its_answer() {
    let o = bsm(&["run", "hello-agent", "--input", "World"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "Hello, World!\n");
}

#[test]
fn run_with_json_prints_the_whole_result() {
    let dir = tempfile::tempdir().unwrap();
    let payload = dir.path().join("payload.json");
    std::fs::write(&payload, r#"{"ms": 5}"#).unwrap();
    let test_dir = test_plugins_dir();
    let o = bsm(
        &[
            "run",
            "sleepy",
            "--input",
            "x",
            "--payload",
            payload.to_str().unwrap(),
            "--json",
        ],
        Some(&test_dir),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["pluginId"], "sleepy");
    assert_eq!(v["output"]["text"], "slept 5 ms");
    assert!(v["correlationId"].as_str().is_some_and(|c| !c.is_empty()));
}

#[test]
fn step_pr_decision_blocks_on_a_critical_finding() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results.json");
    std::fs::write(
        &results,
        r#"[{"agentId": "governance-review-agent", "output": {"text": "ok", "actions": [], "metadata": {}}},
            {"agentId": "security-agent", "output": {"text": "CRITICAL: leaked token", "actions": [], "metadata": {}}}]"#,
    )
    .unwrap();
    let o = bsm(
        &[
            "step",
            "pr-decision",
            "--event",
            "pull_request.opened",
            "--results",
            results.to_str().unwrap(),
        ],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["type"], "decision");
    assert_eq!(v["verdict"], "block");
    assert_eq!(v["actions"][0]["name"], "block_pr");
}

#[test]
fn plugins_list_shows_kind_digest_and_budget() {
    let o = bsm(&["plugins", "list", "--json"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let list: Vec<serde_json::Value> = serde_json::from_str(&stdout(&o)).unwrap();
    let ids: Vec<_> = list.iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [
            "github-actions",
            "hello-agent",
            "pr-decision",
            "prompt-agent",
            "webhook-sink"
        ]
    );
    assert_eq!(list[0]["kind"], "handler");
    let decision = &list[2];
    assert_eq!(decision["kind"], "step");
    assert_eq!(decision["digest"].as_str().unwrap().len(), 64);
    assert_eq!(decision["budget"]["timeout-ms"], 500);

    let table = stdout(&bsm(&["plugins", "list"], None));
    assert!(table.lines().next().unwrap().contains("DIGEST"), "{table}");
    assert!(
        table.contains("hello-agent") && table.contains("1000ms"),
        "{table}"
    );
}

#[test]
fn plugins_check_accepts_a_valid_plugin() {
    let wasm = shipped_dir().join("pr-decision.wasm");
    let o = bsm(&["plugins", "check", wasm.to_str().unwrap()], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("valid step plugin"), "{}", stdout(&o));
}

#[test]
fn plugins_check_says_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let corrupt = dir.path().join("corrupt.wasm");
    let mut bytes = std::fs::read(shipped_dir().join("hello-agent.wasm")).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&corrupt, &bytes).unwrap();
    assert_one_line_error(
        &bsm(&["plugins", "check", corrupt.to_str().unwrap()], None),
        "not a valid component",
    );

    let text = dir.path().join("text.wasm");
    std::fs::write(&text, "hello").unwrap();
    assert_one_line_error(
        &bsm(&["plugins", "check", text.to_str().unwrap()], None),
        "not a WebAssembly file",
    );

    // The smallest core module: magic and version 1, no sections.
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    assert_one_line_error(
        &bsm(&["plugins", "check", core.to_str().unwrap()], None),
        "core WebAssembly module, not a component",
    );

    let command = test_plugins_dir().join("cli-command.wasm");
    let o = bsm(&["plugins", "check", command.to_str().unwrap()], None);
    assert_one_line_error(&o, "exports no BSM world");
    assert!(
        stderr(&o).contains("wasi:cli/run"),
        "names what it does export: {}",
        stderr(&o)
    );

    assert_one_line_error(
        &bsm(&["plugins", "check", "/no/such/file.wasm"], None),
        "cannot read",
    );
}

#[test]
fn failures_are_one_clear_line() {
    assert_one_line_error(
        &bsm(&["run", "no-such-agent", "--input", "x"], None),
        "no plugin \"no-such-agent\"",
    );
    let test_dir = test_plugins_dir();
    assert_one_line_error(
        &bsm(&["run", "spin-loop", "--input", "x"], Some(&test_dir)),
        "did not finish within its 300 ms budget",
    );
    assert_one_line_error(
        &bsm(&["run", "panicker", "--input", "x"], Some(&test_dir)),
        "panicker gave up",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_agent_answers_through_the_llm_named_by_the_environment() {
    let server = llm_server::LlmServer::start().await;
    server.set_reply("Governance looks fine.");
    let base_url = server.base_url.clone();
    let o = tokio::task::spawn_blocking(move || {
        bsm_with_env(
            &["run", "prompt-agent", "--input", "Is this compliant?"],
            None,
            &[
                ("BSM_LLM_BASE_URL", base_url.as_str()),
                ("BSM_LLM_MODEL", "llama3"),
                ("BSM_LLM_API_KEY", "sk-cli"),
            ],
        )
    })
    .await
    .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "Governance looks fine.\n");
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body["model"], "llama3");
    assert_eq!(seen[0].authorization.as_deref(), Some("Bearer sk-cli"));
    assert_eq!(
        seen[0].body["messages"][1]["content"],
        "<input>\nIs this compliant?\n</input>"
    );
}

#[test]
fn without_a_provider_the_llm_error_says_how_to_configure_one() {
    let o = bsm(&["run", "prompt-agent", "--input", "hi"], None);
    assert_one_line_error(&o, "set BSM_LLM_BASE_URL");
}

#[test]
fn a_bad_configuration_file_is_named_with_the_offending_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bsm.toml");
    std::fs::write(&config, "[llm.retry]\nmax-attempt = 5\n").unwrap();
    let o = bsm(
        &["--config", config.to_str().unwrap(), "plugins", "list"],
        None,
    );
    assert_one_line_error(&o, "bsm.toml");
    assert!(stderr(&o).contains("max-attempt"), "{}", stderr(&o));
}

/// Runs `bsm` against the test LLM server on a blocking thread.
async fn bsm_with_llm(server: &llm_server::LlmServer, args: &[&str]) -> Output {
    let base_url = server.base_url.clone();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        bsm_with_env(
            &args,
            None,
            &[
                ("BSM_LLM_BASE_URL", base_url.as_str()),
                ("BSM_LLM_MODEL", "test-model"),
            ],
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_a_bsm_agent_of_a_bsm_dir_through_its_governance() {
    let server = llm_server::LlmServer::start().await;
    server.set_reply("No secrets found.\nACTION: scan_vulnerabilities");
    let dir = shipped_agents();
    let dir = dir.to_str().unwrap();
    let o = bsm_with_llm(
        &server,
        &[
            "run",
            "security-agent",
            "--bsm-dir",
            dir,
            "--input",
            "Scan PR #7",
            "--json",
        ],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["pluginId"], "security-agent");
    assert_eq!(v["governedActions"][0]["name"], "scan_vulnerabilities");
    assert_eq!(v["governedActions"][0]["status"], "queued");
    let seen = server.seen();
    let system = seen[0].body["messages"][0]["content"].as_str().unwrap();
    assert!(system.starts_with("You are Security Scanner."), "{system}");

    // The CLI is governed like the server: the cli context is not one the
    // merge agent allows.
    let o = bsm_with_llm(
        &server,
        &[
            "run",
            "pr-merge-agent",
            "--bsm-dir",
            dir,
            "--input",
            "merge?",
        ],
    )
    .await;
    assert_one_line_error(&o, "may not be called from the \"cli\" context");
    assert_eq!(server.seen().len(), 1, "refused before the agent ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_run_prints_progress_and_the_decision() {
    let server = llm_server::LlmServer::start().await;
    server.set_reply("Looks good to me.");
    let dir = tempfile::tempdir().unwrap();
    let payload = dir.path().join("pr.json");
    std::fs::write(
        &payload,
        r#"{"pull_request": {"number": 42, "title": "Add login"}}"#,
    )
    .unwrap();
    let payload = payload.to_str().unwrap();
    let o = bsm_with_llm(
        &server,
        &["job", "run", "pull_request.opened", "--payload", payload],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for agent in [
        "governance-review-agent",
        "code-review-agent",
        "security-agent",
        "integrity-agent",
    ] {
        assert!(out.contains(&format!("  {agent} started")), "{out}");
        assert!(out.contains(&format!("  {agent} finished")), "{out}");
    }
    assert!(out.contains("decision: approve"), "{out}");
    assert!(
        out.lines().last().unwrap().starts_with("job completed"),
        "{out}"
    );
    assert_eq!(server.seen().len(), 4, "four agents, one LLM call each");

    server.reply_when("Code Review Agent", "Verdict: REQUEST_CHANGES, add tests");
    let o = bsm_with_llm(
        &server,
        &[
            "job",
            "run",
            "pull_request.opened",
            "--payload",
            payload,
            "--json",
        ],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let job: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["context"], "cli", "{job}");
    assert_eq!(
        job["result"]["decision"]["verdict"], "request_changes",
        "{job}"
    );
}

#[test]
fn the_admin_token_is_never_a_command_line_value() {
    let o = bsm(
        &["serve", "--admin-token", "t0k3n-Zq8Xv2Lw9Pn4Rb7Ys1Ud6Hf3Kc"],
        None,
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("unexpected argument '--admin-token'"),
        "{}",
        stderr(&o)
    );
    let help = stdout(&bsm(&["serve", "--help"], None));
    assert!(help.contains("BSM_ADMIN_TOKEN"), "{help}");
}

#[test]
fn knowledge_ingest_reports_what_it_did_and_does_no_work_the_second_time() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap();
    let dir = shipped_agents().join("data/knowledge");
    let dir = dir.to_str().unwrap();
    let ingest = || {
        bsm_with_env(
            &["knowledge", "ingest", dir, "--collection", "handbook"],
            None,
            &[("BSM_DATA_DIR", data_dir)],
        )
    };
    let first = ingest();
    assert!(first.status.success(), "{}", stderr(&first));
    let line = stdout(&first);
    assert!(line.starts_with("handbook: 2 files, 2 indexed ("), "{line}");
    let second = ingest();
    assert!(
        stdout(&second).contains("0 indexed (0 chunks), 2 unchanged, 0 removed, 0 skipped"),
        "{}",
        stdout(&second)
    );

    let search = bsm_with_env(
        &[
            "knowledge",
            "search",
            "handbook",
            "release notes",
            "--top-k",
            "1",
        ],
        None,
        &[("BSM_DATA_DIR", data_dir)],
    );
    assert!(search.status.success(), "{}", stderr(&search));
    assert!(
        stdout(&search).contains("engineering-handbook.md#"),
        "{}",
        stdout(&search)
    );

    let missing = bsm_with_env(
        &["knowledge", "search", "nowhere", "x"],
        None,
        &[("BSM_DATA_DIR", data_dir)],
    );
    assert_one_line_error(&missing, "no knowledge collection named \"nowhere\"");
    let bad = bsm_with_env(
        &["knowledge", "ingest", "/no/such/dir"],
        None,
        &[("BSM_DATA_DIR", data_dir)],
    );
    assert_one_line_error(&bad, "/no/such/dir");
}
