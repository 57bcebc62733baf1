//! The plugin author's path, as a newcomer takes it: `bsm plugin new` of
//! each kind, `bsm plugin test` (build + the scaffold's own tests through
//! the harness), `bsm plugins check`, a run, and `bsm plugin dev` hot-swapping
//! every change into a running server.

mod common;
#[path = "common/llm_server.rs"]
mod llm_server;
#[path = "common/server.rs"]
mod server;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use server::{ADMIN_TOKEN, BsmServer, http};

/// One target directory for every scaffolded crate of the test run: the
/// SDK and the harness compile once.
fn scaffold_target() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("scaffold-target")
}

fn bsm(args: &[&str], cwd: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bsm"));
    cmd.args(args)
        .current_dir(cwd)
        .env("CARGO_TARGET_DIR", scaffold_target())
        .env("BSM_DATA_DIR", cwd.join("bsm-data"));
    for (k, _) in std::env::vars() {
        if k.starts_with("BSM_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

fn run(mut cmd: impl std::borrow::BorrowMut<Command>) -> Output {
    cmd.borrow_mut().output().expect("bsm runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "stdout: {}\nstderr: {}",
        text(&o.stdout),
        text(&o.stderr)
    );
}

fn component(name: &str) -> PathBuf {
    scaffold_target()
        .join("wasm32-wasip2/release")
        .join(format!("{}.wasm", name.replace('-', "_")))
}

/// `bsm plugin new NAME --kind KIND` in `parent`; the crate's directory.
fn new_plugin(parent: &Path, name: &str, kind: &str) -> PathBuf {
    let o = run(bsm(&["plugin", "new", name, "--kind", kind], parent));
    assert_ok(&o);
    assert!(
        text(&o.stdout).contains("bsm plugin test"),
        "{}",
        text(&o.stdout)
    );
    parent.join(name)
}

#[test]
fn scaffolded_plugins_of_each_kind_build_pass_their_own_tests_and_run() {
    let parent = tempfile::tempdir().unwrap();
    let agent = new_plugin(parent.path(), "release-notes", "agent");
    let step = new_plugin(parent.path(), "pr-gate", "step");

    for dir in [&agent, &step] {
        for file in [
            "Cargo.toml",
            "plugin.toml",
            "README.md",
            "src/lib.rs",
            "tests/plugin.rs",
        ] {
            assert!(dir.join(file).is_file(), "{} has no {file}", dir.display());
        }
        let config = std::fs::read_to_string(dir.join(".cargo/config.toml")).unwrap();
        assert!(config.contains("target = \"wasm32-wasip2\""), "{config}");
        // The scaffold's own tests, through the harness, against the
        // component `bsm plugin test` built.
        let o = run(bsm(&["plugin", "test"], dir));
        assert_ok(&o);
        let out = text(&o.stdout);
        assert!(out.contains("test result: ok. 3 passed"), "{out}");
    }

    // A plain `cargo build --release` targets wasm32-wasip2.
    let o = run(Command::new(env!("CARGO"))
        .args(["build", "--release"])
        .current_dir(&agent)
        .env("CARGO_TARGET_DIR", scaffold_target()));
    assert_ok(&o);

    for (name, world) in [("release-notes", "agent"), ("pr-gate", "step")] {
        let wasm = component(name);
        let o = run(bsm(
            &["plugins", "check", wasm.to_str().unwrap()],
            parent.path(),
        ));
        assert_ok(&o);
        assert!(
            text(&o.stdout).contains(&format!("valid {world} plugin")),
            "{}",
            text(&o.stdout)
        );
    }

    // Both run in the host from a plugins directory.
    let plugins = parent.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    for (name, dir) in [("release-notes", &agent), ("pr-gate", &step)] {
        std::fs::copy(component(name), plugins.join(format!("{name}.wasm"))).unwrap();
        std::fs::copy(
            dir.join("plugin.toml"),
            plugins.join(format!("{name}.toml")),
        )
        .unwrap();
    }
    let script = parent.path().join("script.json");
    std::fs::write(
        &script,
        json!({
            "format": "bsm-recording/1",
            "plugin": "release-notes",
            "live": ["config"],
            "calls": [{"call": "llm.chat", "args": null, "result": {"Ok": {
                "content": "Version 2 adds hot swap.", "model": "m",
                "usage": {"prompt_tokens": 1, "completion_tokens": 1}, "finish_reason": null
            }}}]
        })
        .to_string(),
    )
    .unwrap();
    let plugins_dir = plugins.to_str().unwrap();
    let o = run(bsm(
        &[
            "--plugins-dir",
            plugins_dir,
            "run",
            "release-notes",
            "--input",
            "What changed?",
            "--replay",
            script.to_str().unwrap(),
        ],
        parent.path(),
    ));
    assert_ok(&o);
    assert_eq!(text(&o.stdout), "Version 2 adds hot swap.\n");
    let results = parent.path().join("results.json");
    std::fs::write(
        &results,
        json!([{"agentId": "security-agent", "output": {"text": "CRITICAL: token", "actions": [], "metadata": {}}}])
            .to_string(),
    )
    .unwrap();
    let o = run(bsm(
        &[
            "--plugins-dir",
            plugins_dir,
            "step",
            "pr-gate",
            "--event",
            "pull_request.opened",
            "--results",
            results.to_str().unwrap(),
        ],
        parent.path(),
    ));
    assert_ok(&o);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["verdict"], "block", "{v}");
}

#[test]
fn plugin_new_refuses_a_bad_name_and_never_overwrites() {
    let parent = tempfile::tempdir().unwrap();
    let o = run(bsm(&["plugin", "new", "Bad_Name"], parent.path()));
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("is not a plugin name"),
        "{}",
        text(&o.stderr)
    );

    std::fs::create_dir_all(parent.path().join("taken")).unwrap();
    std::fs::write(parent.path().join("taken/notes.txt"), "mine").unwrap();
    let o = run(bsm(&["plugin", "new", "taken"], parent.path()));
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("not empty"), "{}", text(&o.stderr));
    assert_eq!(
        std::fs::read_to_string(parent.path().join("taken/notes.txt")).unwrap(),
        "mine"
    );
}

/// `bsm plugin dev` as a child, its stdout lines on a channel.
struct Dev {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Dev {
    fn start(dir: &Path, server: &str) -> Self {
        let mut child = bsm(&["plugin", "dev", "--server", server], dir)
            .env("BSM_ADMIN_TOKEN", ADMIN_TOKEN)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line starting with `prefix`; the lines up to it.
    fn wait_for(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(240);
        let mut block = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    block.push_str(&line);
                    block.push('\n');
                    if line.starts_with(prefix) {
                        return block;
                    }
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => panic!(
                    "no {prefix:?} line from bsm plugin dev; it said:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn ask(s: &BsmServer, agent: &str, input: &str) -> (u16, Value) {
    let r = http()
        .post(s.url("/api/agents/run"))
        .json(&json!({"agentId": agent, "input": input}))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Edits a file the way many editors save: a new file renamed over the
/// old one (the watcher must not lose track of a replaced file).
fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{} has no {from:?}", path.display());
    let saved = path.with_extension("swp");
    std::fs::write(&saved, text.replacen(from, to, 1)).unwrap();
    std::fs::rename(&saved, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_dev_hot_swaps_each_build_and_keeps_the_old_version_when_one_fails() {
    let llm = llm_server::LlmServer::start().await;
    llm.set_reply("An answer from the LLM.");
    let parent = tempfile::tempdir().unwrap();
    let dir = new_plugin(parent.path(), "dev-loop", "agent");
    let data = parent.path().join("server-data");
    let s = BsmServer::start(
        &data,
        &[
            ("BSM_ADMIN_TOKEN", ADMIN_TOKEN),
            ("BSM_RATE_LIMIT", "0"),
            ("BSM_LLM_BASE_URL", llm.base_url.as_str()),
            ("BSM_LLM_MODEL", "test-model"),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));

    let mut dev = tokio::task::block_in_place(|| Dev::start(&dir, &s.url));
    let first = tokio::task::block_in_place(|| dev.wait_for("live: "));
    assert!(first.contains("live: dev-loop 0.1.0"), "{first}");
    let (status, v) = ask(&s, "dev-loop", "What is new?").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["output"], "An answer from the LLM.");

    // A change: rebuilt and live, without a restart.
    let lib = dir.join("src/lib.rs");
    edit(
        &lib,
        "Ok(Output::text(reply.content.trim()))",
        "Ok(Output::text(format!(\"v2: {}\", reply.content.trim())))",
    );
    let second = tokio::task::block_in_place(|| dev.wait_for("live: "));
    assert!(second.contains("change seen"), "{second}");
    let (status, v) = ask(&s, "dev-loop", "What is new?").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["output"], "v2: An answer from the LLM.");

    // A broken build: said, and v2 keeps serving.
    edit(&lib, "v2: {}", "v3: {}\" broken");
    let failed = tokio::task::block_in_place(|| dev.wait_for("build failed"));
    assert!(
        failed.contains("build failed; the serving version stays"),
        "{failed}"
    );
    let more = tokio::task::block_in_place(|| {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut block = String::new();
        while let Ok(line) = dev
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            block.push_str(&line);
            block.push('\n');
        }
        block
    });
    assert!(
        format!("{failed}{more}").contains("error"),
        "the compiler's error is shown: {failed}{more}"
    );
    let (_, v) = ask(&s, "dev-loop", "still there?").await;
    assert_eq!(v["output"], "v2: An answer from the LLM.");

    // Fixed, but a version the server refuses (a memory budget beyond its
    // pool): said, and v2 keeps serving.
    edit(&lib, "v3: {}\" broken", "v3: {}");
    edit(
        &dir.join("plugin.toml"),
        "memory-mb = 32",
        "memory-mb = 1000000",
    );
    let refused = tokio::task::block_in_place(|| dev.wait_for("refused"));
    assert!(refused.contains("the serving version stays"), "{refused}");
    let (_, v) = ask(&s, "dev-loop", "still there?").await;
    assert_eq!(v["output"], "v2: An answer from the LLM.");
}
