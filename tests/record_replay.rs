//! `bsm run --record FILE` and `--replay FILE`: every host call of a run
//! kept in a readable file, and the run answered from it with no network.

mod common;
#[path = "common/llm_server.rs"]
mod llm_server;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Value, json};

/// Runs `bsm` with a clean BSM_* environment plus `env`, on a blocking thread.
async fn bsm(args: &[&str], env: &[(&str, &str)]) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    // One data directory per test (the test's thread name): runs of one
    // test share compiled plugins, tests running side by side never share
    // a database.
    let test = std::thread::current()
        .name()
        .unwrap_or("unnamed")
        .replace("::", "-");
    tokio::task::spawn_blocking(move || {
        let data_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("bsm-record-{test}"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bsm"));
        cmd.args(&args).env("BSM_DATA_DIR", data_dir);
        for var in [
            "BSM_PLUGINS_DIR",
            "BSM_BSM_DIR",
            "BSM_CONFIG",
            "BSM_LLM_BASE_URL",
            "BSM_LLM_API_KEY",
            "BSM_LLM_MODEL",
        ] {
            cmd.env_remove(var);
        }
        cmd.envs(env);
        cmd.output().expect("bsm runs")
    })
    .await
    .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The command failed, and its stderr says `needle`; the stderr.
fn failed_with(o: &Output, needle: &str) -> String {
    let err = stderr(o);
    assert!(
        !o.status.success(),
        "expected a failure, stdout: {}",
        stdout(o)
    );
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    err
}

fn read(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn calls_named<'a>(recording: &'a Value, name: &str) -> Vec<&'a Value> {
    recording["calls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["call"] == name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_bsm_agent_replays_with_no_llm_and_the_same_answer() {
    let server = llm_server::LlmServer::start().await;
    server.set_reply("No secrets found.\nACTION: scan_vulnerabilities");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("security.json");
    let file = file.to_str().unwrap();
    let live = bsm(
        &[
            "run",
            "security-agent",
            "--input",
            "Scan PR #7",
            "--record",
            file,
        ],
        &[
            ("BSM_LLM_BASE_URL", server.base_url.as_str()),
            ("BSM_LLM_MODEL", "test-model"),
        ],
    )
    .await;
    assert!(live.status.success(), "{}", stderr(&live));
    assert!(stderr(&live).contains("recorded"), "{}", stderr(&live));
    assert_eq!(server.seen().len(), 1);

    let recording = read(Path::new(file));
    assert_eq!(recording["format"], "bsm-recording/1");
    assert_eq!(recording["plugin"], "security-agent");
    assert_eq!(recording["request"]["input"], "Scan PR #7");
    let chats = calls_named(&recording, "llm.chat");
    assert_eq!(chats.len(), 1, "{recording:#}");
    // The request as the plugin made it, and the reply as the host gave it.
    let messages = &chats[0]["args"]["messages"];
    assert!(
        messages[0]["content"]
            .as_str()
            .unwrap()
            .starts_with("You are Security Scanner."),
        "{messages}"
    );
    assert_eq!(
        chats[0]["result"]["Ok"]["content"],
        "No secrets found.\nACTION: scan_vulnerabilities"
    );
    assert_eq!(
        recording["outcome"]["answer"]["text"],
        "No secrets found.\nACTION: scan_vulnerabilities"
    );

    // Replayed where no LLM answers: the same answer, the server not asked.
    let refused = llm_server::refused_base_url().await;
    let replayed = bsm(
        &["run", "security-agent", "--replay", file, "--json"],
        &[
            ("BSM_LLM_BASE_URL", refused.as_str()),
            ("BSM_LLM_MODEL", "test-model"),
        ],
    )
    .await;
    assert!(replayed.status.success(), "{}", stderr(&replayed));
    let v: Value = serde_json::from_str(&stdout(&replayed)).unwrap();
    assert_eq!(
        v["output"]["text"],
        "No secrets found.\nACTION: scan_vulnerabilities"
    );
    assert_eq!(v["governedActions"][0]["name"], "scan_vulnerabilities");
    assert_eq!(server.seen().len(), 1, "the replay reached no LLM");
    // And with no provider configured at all.
    let offline = bsm(&["run", "security-agent", "--replay", file], &[]).await;
    assert!(offline.status.success(), "{}", stderr(&offline));
    assert_eq!(
        stdout(&offline),
        "No secrets found.\nACTION: scan_vulnerabilities\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_that_asks_what_the_recording_does_not_hold_fails_naming_the_call() {
    let server = llm_server::LlmServer::start().await;
    server.set_reply("Looks fine.");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("r.json");
    let file = file.to_str().unwrap();
    let env = [
        ("BSM_LLM_BASE_URL", server.base_url.as_str()),
        ("BSM_LLM_MODEL", "test-model"),
    ];
    let live = bsm(
        &[
            "run",
            "prompt-agent",
            "--input",
            "first question",
            "--record",
            file,
        ],
        &env,
    )
    .await;
    assert!(live.status.success(), "{}", stderr(&live));

    // Another input makes another prompt: not in the recording.
    let other = bsm(
        &[
            "run",
            "prompt-agent",
            "--input",
            "another question",
            "--replay",
            file,
        ],
        &[],
    )
    .await;
    let err = failed_with(&other, "replay: the recording holds no answer for llm.chat");
    assert!(err.contains("different arguments"), "{err}");
    assert!(err.contains("another question"), "{err}");
    assert_eq!(server.seen().len(), 1);

    // A recording without the call at all says so.
    let mut recording = read(Path::new(file));
    recording["calls"]
        .as_array_mut()
        .unwrap()
        .retain(|c| c["call"] != "llm.chat");
    let empty = dir.path().join("empty.json");
    std::fs::write(&empty, recording.to_string()).unwrap();
    let o = bsm(
        &["run", "prompt-agent", "--replay", empty.to_str().unwrap()],
        &[],
    )
    .await;
    failed_with(&o, "holds no llm.chat call at all");

    // Not a recording: named.
    std::fs::write(&empty, "{\"calls\": 3}").unwrap();
    let o = bsm(
        &["run", "prompt-agent", "--replay", empty.to_str().unwrap()],
        &[],
    )
    .await;
    failed_with(&o, "is not a BSM recording");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_and_cache_calls_are_recorded_and_answered_from_the_recording() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hello.json");
    let file = file.to_str().unwrap();
    let live = bsm(
        &["run", "hello-agent", "--input", "Ada", "--record", file],
        &[],
    )
    .await;
    assert!(live.status.success(), "{}", stderr(&live));
    assert_eq!(stdout(&live), "Hello, Ada!\n");
    let mut recording = read(Path::new(file));
    let config = calls_named(&recording, "config.get");
    assert_eq!(config.len(), 1, "{recording:#}");
    assert_eq!(config[0]["args"], "greeting");
    assert_eq!(config[0]["result"]["Ok"], "Hello");

    // The replay answers config from the file, not from the manifest.
    for call in recording["calls"].as_array_mut().unwrap() {
        if call["call"] == "config.get" {
            call["result"] = json!({"Ok": "Bonjour"});
        }
    }
    std::fs::write(file, recording.to_string()).unwrap();
    let replayed = bsm(&["run", "hello-agent", "--replay", file], &[]).await;
    assert!(replayed.status.success(), "{}", stderr(&replayed));
    assert_eq!(stdout(&replayed), "Bonjour, Ada!\n");
    assert!(
        stderr(&replayed).contains("differs from the recorded one"),
        "{}",
        stderr(&replayed)
    );

    // The cache, through a plugin that uses it.
    let plugins = common::test_plugins_dir();
    let plugins = plugins.to_str().unwrap();
    let cache_file = dir.path().join("cache.json");
    let cache_file = cache_file.to_str().unwrap();
    let o = bsm(
        &[
            "--plugins-dir",
            plugins,
            "run",
            "cache-user",
            "--input",
            "get colour",
            "--record",
            cache_file,
        ],
        &[],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "miss\n");
    let mut recording = read(Path::new(cache_file));
    let gets = calls_named(&recording, "cache.get");
    assert_eq!(gets.len(), 1);
    assert_eq!(gets[0]["args"], "colour");
    assert_eq!(gets[0]["result"], json!({"Ok": null}));
    // A scripted answer: `null` arguments match any key.
    recording["calls"] = json!([{
        "call": "cache.get",
        "args": null,
        "result": {"Ok": b"blue".to_vec()}
    }]);
    std::fs::write(cache_file, recording.to_string()).unwrap();
    let o = bsm(
        &[
            "--plugins-dir",
            plugins,
            "run",
            "cache-user",
            "--replay",
            cache_file,
        ],
        &[],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "hit: blue\n");
}
