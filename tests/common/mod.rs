//! Helpers shared by the end-to-end tests: where the built plugins are, a
//! runtime loaded with them, and an LLM engine that records what reaches it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bsm_runtime::api::{AgentRequest, RunContext};
use bsm_runtime::bindings::llm::{ChatRequest, ChatResponse, Error as LlmError, Usage};
use bsm_runtime::capabilities::llm::LlmEngine;
use bsm_runtime::capabilities::{Caller, Capabilities};
use bsm_runtime::{Runtime, RuntimeOptions};

/// The plugins shipped in `plugins/`, built by host/cli/build.rs.
pub fn shipped_dir() -> PathBuf {
    PathBuf::from(env!("BSM_SHIPPED_PLUGINS_DIR"))
}

/// The misbehaving and helper plugins of `tests/plugins/`.
pub fn test_plugins_dir() -> PathBuf {
    PathBuf::from(env!("BSM_TEST_PLUGINS_DIR"))
}

/// The JavaScript example agent (`examples/js-agent`), built by
/// host/cli/build.rs once `npm ci --prefix examples/js-agent` has installed
/// componentize-js (README's test command does).
pub fn js_plugins_dir() -> PathBuf {
    let dir = PathBuf::from(env!("BSM_JS_PLUGINS_DIR"));
    assert!(
        dir.join("pr-summary-js.wasm").is_file(),
        "the JavaScript example agent is not built: run `npm ci --prefix examples/js-agent`, then the tests again (README's test command does both)"
    );
    dir
}

/// The BSM agent set shipped in this repository (`examples/bsm`).
pub fn shipped_agents() -> PathBuf {
    PathBuf::from(bsm_platform::SHIPPED_AGENTS_DIR)
}

/// A copy of the shipped agent set to edit.
pub fn copy_of_shipped_agents() -> tempfile::TempDir {
    fn copy(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    copy(&shipped_agents(), dir.path());
    dir
}

/// The original BSM files, unedited, for the compatibility tests (ignored
/// by default: a fresh clone has no copy; `.ci/run` sets
/// `BSM_ORIGINAL_FIXTURES` and runs them with `--ignored`).
pub fn original_fixtures() -> PathBuf {
    let dir = std::env::var_os("BSM_ORIGINAL_FIXTURES")
        .map(PathBuf::from)
        .expect("set BSM_ORIGINAL_FIXTURES to a copy of the original BSM layout");
    assert!(
        dir.is_dir(),
        "the original BSM fixtures are expected at {}",
        dir.display()
    );
    dir
}

/// A compiled-artifact cache shared by the tests of one build, so each
/// component is compiled once rather than once per test.
pub fn artifact_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bsm-artifacts")
}

pub fn runtime_with(capabilities: Capabilities) -> Runtime {
    Runtime::new(RuntimeOptions {
        artifact_dir: Some(artifact_dir()),
        capabilities,
        ..RuntimeOptions::default()
    })
    .expect("runtime starts")
}

/// A runtime with every shipped and test plugin loaded.
pub async fn loaded_runtime(capabilities: Capabilities) -> Arc<Runtime> {
    let runtime = runtime_with(capabilities);
    for dir in [shipped_dir(), test_plugins_dir()] {
        let report = runtime.load_dir(&dir).await.expect("plugins dir readable");
        assert!(
            report.failed.is_empty(),
            "plugins failed to load: {:?}",
            report.failed
        );
    }
    Arc::new(runtime)
}

pub fn request(input: &str) -> AgentRequest {
    AgentRequest {
        input: input.to_string(),
        payload: serde_json::json!({}),
        context: RunContext::new("api"),
    }
}

/// Copies a built component next to a manifest written by the test, so a
/// test can run a real plugin under a budget or config of its own.
pub fn plugin_with_manifest(dir: &Path, wasm: &Path, manifest: &str) -> PathBuf {
    let id = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("id = "))
        .expect("manifest has an id")
        .trim_matches('"')
        .to_string();
    std::fs::copy(wasm, dir.join(format!("{id}.wasm"))).unwrap();
    let path = dir.join(format!("{id}.toml"));
    std::fs::write(&path, manifest).unwrap();
    path
}

/// What the recording engine saw of one chat call.
#[derive(Debug, Clone)]
pub struct SeenChat {
    pub caller_plugin: String,
    pub correlation_id: String,
    pub request: ChatRequest,
}

/// An [`LlmEngine`] that records each request and answers with a fixed reply.
///
/// A stand-in for the transport only, used until the real OpenAI-compatible
/// client and its local HTTP test server exist: everything between the
/// plugin and the engine (WIT bindings, the capability, the sandbox) is real.
pub struct RecordingLlm {
    pub reply: String,
    pub seen: Mutex<Vec<SeenChat>>,
}

impl RecordingLlm {
    pub fn new(reply: &str) -> Arc<Self> {
        Arc::new(Self {
            reply: reply.to_string(),
            seen: Mutex::new(Vec::new()),
        })
    }
}

#[async_trait::async_trait]
impl LlmEngine for RecordingLlm {
    async fn chat(&self, caller: &Caller, request: ChatRequest) -> Result<ChatResponse, LlmError> {
        let model = request
            .model
            .clone()
            .unwrap_or_else(|| "default-model".into());
        self.seen.lock().unwrap().push(SeenChat {
            caller_plugin: caller.plugin_id.to_string(),
            correlation_id: caller.correlation_id.to_string(),
            request,
        });
        Ok(ChatResponse {
            content: self.reply.clone(),
            model,
            usage: Usage {
                prompt_tokens: 12,
                completion_tokens: 7,
            },
            finish_reason: Some("stop".into()),
        })
    }

    async fn embed(
        &self,
        _: &Caller,
        _: Option<String>,
        inputs: Vec<String>,
    ) -> Result<Vec<Vec<f32>>, LlmError> {
        Ok(inputs.iter().map(|_| vec![0.0; 3]).collect())
    }
}
