//! # bsm-harness: test BSM plugins with `cargo test`
//!
//! Loads the component your crate built, runs it in the same sandbox as a
//! BSM server (through the `bsm` command), answers its host calls from a
//! [`Script`] or a recording made with `bsm run --record`, and gives you
//! its output and actions to assert on. No LLM, no network, no server:
//! deterministic tests of what your plugin does with what the host answers.
//!
//! ```no_run
//! use bsm_harness::{Plugin, Script};
//!
//! // In your plugin crate's tests/ (run with `bsm plugin test`).
//! let plugin = Plugin::built().unwrap();
//! let out = plugin
//!     .run_with("Review PR #7", Script::new().llm_reply("LGTM\nACTION: approve"))
//!     .unwrap();
//! assert_eq!(out.text, "LGTM\nACTION: approve");
//! assert_eq!(out.action_names(), ["approve"]);
//! ```
//!
//! Where things come from:
//! - the component: `$BSM_PLUGIN_COMPONENT`, or
//!   `target/wasm32-wasip2/release/<crate>.wasm` (`cargo build --release`
//!   with the scaffold's `.cargo/config.toml`);
//! - its manifest: `$BSM_PLUGIN_MANIFEST`, or `plugin.toml` in the crate;
//! - the `bsm` command: `$BSM_BIN`, or `bsm` on the `PATH`.

use std::path::{Path, PathBuf};
use std::process::Command;

pub use serde_json::{self, Value, json};

/// What went wrong, with what to do about it in the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The component or its manifest is missing or unreadable.
    NotBuilt(String),
    /// The `bsm` command could not be started.
    Bsm(String),
    /// The plugin (or the host on its behalf) refused or failed the run;
    /// the message is the host's one-line error, e.g. `agent hello failed:
    /// invalid input: ...` or `plugin x exceeded its 16 MiB memory budget`.
    Failed(String),
    /// The plugin asked a host call that the script or recording does not
    /// answer; the message names the call and its arguments.
    Unscripted(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::NotBuilt(m) | Error::Bsm(m) | Error::Failed(m) | Error::Unscripted(m) => {
                f.write_str(m)
            }
        }
    }
}

impl std::error::Error for Error {}

/// An action the plugin asked for, with its JSON arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    pub name: String,
    pub args: Value,
}

/// What an agent answered.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentOutcome {
    pub text: String,
    /// The actions the agent emitted (all passed its allow-list).
    pub actions: Vec<Action>,
    /// The agent's metadata object.
    pub metadata: Value,
    /// Every host call the run made, in order: `{"call", "args",
    /// "result"}` (with a script or recording; empty when run live).
    pub calls: Vec<Value>,
    /// The whole result as `bsm run --json` prints it (usage, governed
    /// actions with their status...).
    pub raw: Value,
}

impl AgentOutcome {
    /// The arguments of each call named `call` (e.g. `llm.chat`) the run
    /// made, in order: to assert on the prompt a plugin sends.
    ///
    /// ```no_run
    /// # use bsm_harness::{Plugin, Script};
    /// let out = Plugin::built().unwrap().run_with("Hi", Script::new().llm_reply("Hello")).unwrap();
    /// let chat = &out.calls_to("llm.chat")[0];
    /// assert_eq!(chat["messages"][1]["content"], "Hi");
    /// ```
    pub fn calls_to(&self, call: &str) -> Vec<&Value> {
        self.calls
            .iter()
            .filter(|c| c["call"] == call)
            .map(|c| &c["args"])
            .collect()
    }

    /// The names of the emitted actions, in order.
    pub fn action_names(&self) -> Vec<&str> {
        self.actions.iter().map(|a| a.name.as_str()).collect()
    }
}

/// What a step contributed: a route (`type: "route"`, `agents`, `mode`) or
/// a decision (`type: "decision"`, `verdict`, `reason`, `actions`).
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutcome {
    pub contribution: Value,
    pub raw: Value,
}

impl StepOutcome {
    /// The verdict of a decision (`approve`, `request_changes`, `block`,
    /// `manual_review`); `None` for a route.
    pub fn verdict(&self) -> Option<&str> {
        self.contribution["verdict"].as_str()
    }

    /// The agents of a route; empty for a decision.
    pub fn agents(&self) -> Vec<&str> {
        self.contribution["agents"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    }
}

/// Scripted host answers. Each answer is used once, in order among answers
/// to the same call, whatever the plugin's arguments; `config` and `cache`
/// stay live (the manifest's `[config]`, an empty cache) unless scripted
/// with [`Script::answer`] after [`Script::strict`].
#[derive(Debug, Clone)]
pub struct Script {
    calls: Vec<Value>,
    live: Vec<String>,
}

impl Default for Script {
    fn default() -> Self {
        Self::new()
    }
}

impl Script {
    /// A script answering nothing yet (config and cache live).
    pub fn new() -> Self {
        Self {
            calls: Vec::new(),
            live: vec!["config".into(), "cache".into()],
        }
    }

    /// Every host call must be scripted, config and cache included.
    pub fn strict(mut self) -> Self {
        self.live.clear();
        self
    }

    /// The next LLM chat answers `text`.
    ///
    /// ```
    /// let script = bsm_harness::Script::new().llm_reply("first").llm_reply("second");
    /// ```
    pub fn llm_reply(self, text: &str) -> Self {
        self.answer(
            "llm.chat",
            None,
            json!({"Ok": {
                "content": text,
                "model": "script",
                "usage": {"prompt_tokens": 0, "completion_tokens": 0},
                "finish_reason": "stop",
            }}),
        )
    }

    /// The next LLM chat fails as a provider that timed out (what an agent
    /// sees when the LLM does not answer in time).
    pub fn llm_timeout(self) -> Self {
        self.answer("llm.chat", None, json!({"Err": "Timeout"}))
    }

    /// The next LLM chat fails with the circuit open (the host stopped
    /// calling a failing provider); `retry_after_ms` is when to try again.
    pub fn llm_circuit_open(self, retry_after_ms: u64) -> Self {
        self.answer(
            "llm.chat",
            None,
            json!({"Err": {"CircuitOpen": retry_after_ms}}),
        )
    }

    /// The next knowledge search answers these `(id, text, score)` hits.
    pub fn knowledge_hits(self, hits: &[(&str, &str, f32)]) -> Self {
        let hits: Vec<Value> = hits
            .iter()
            .map(|(id, text, score)| {
                json!({"id": id, "text": text, "score": score, "metadata": [], "source": null})
            })
            .collect();
        self.answer("knowledge.search", None, json!({ "Ok": hits }))
    }

    /// The next outbound HTTP request answers `status` with `body`.
    pub fn http_response(self, status: u16, body: &str) -> Self {
        self.answer(
            "http.send",
            None,
            json!({"Ok": {"status": status, "headers": [], "body": body.as_bytes()}}),
        )
    }

    /// The next `config.get` answers `value` (only needed with
    /// [`Script::strict`]: config is live by default).
    pub fn config(self, value: Option<&str>) -> Self {
        self.answer("config.get", None, json!({ "Ok": value }))
    }

    /// Any host call (`interface.function`, e.g. `cache.get`): `args` the
    /// exact JSON arguments it must be asked with (`None`: any), `result`
    /// the answer as a recording holds it (`{"Ok": ...}` or `{"Err": ...}`).
    pub fn answer(mut self, call: &str, args: Option<Value>, result: Value) -> Self {
        self.calls.push(json!({
            "call": call,
            "args": args.unwrap_or(Value::Null),
            "result": result,
        }));
        self
    }

    fn to_recording(&self, plugin: &str) -> Value {
        json!({
            "format": "bsm-recording/1",
            "plugin": plugin,
            "calls": self.calls,
            "live": self.live,
        })
    }
}

/// A built plugin component with its manifest, ready to run.
#[derive(Debug, Clone)]
pub struct Plugin {
    component: PathBuf,
    manifest: PathBuf,
    id: String,
    bsm: PathBuf,
    /// Compiled code kept between runs (the host's artifact cache): in
    /// the crate's target directory, or the temporary directory.
    cache_dir: PathBuf,
}

impl Plugin {
    /// The component of the crate under test (see the crate docs for where
    /// it is looked for).
    pub fn built() -> Result<Self, Error> {
        let dir = std::env::var_os("CARGO_MANIFEST_DIR")
            .map(PathBuf::from)
            .ok_or_else(|| {
                Error::NotBuilt(
                    "CARGO_MANIFEST_DIR is not set: run the tests with cargo (or use Plugin::load)"
                        .into(),
                )
            })?;
        let manifest = env_path("BSM_PLUGIN_MANIFEST").unwrap_or_else(|| dir.join("plugin.toml"));
        let component = match env_path("BSM_PLUGIN_COMPONENT") {
            Some(path) => path,
            None => target_dir(&dir)
                .join("wasm32-wasip2")
                .join("release")
                .join(format!("{}.wasm", crate_name(&dir)?.replace('-', "_"))),
        };
        let mut plugin = Self::load(component, manifest)?;
        plugin.cache_dir = target_dir(&dir).join("bsm-harness-cache");
        Ok(plugin)
    }

    /// A component and its manifest anywhere on disk.
    pub fn load(
        component: impl Into<PathBuf>,
        manifest: impl Into<PathBuf>,
    ) -> Result<Self, Error> {
        let component = component.into();
        let manifest = manifest.into();
        if !component.is_file() {
            return Err(Error::NotBuilt(format!(
                "no component at {}: build it first (`cargo build --release` in the plugin crate, or `bsm plugin test`, which builds and tests)",
                component.display()
            )));
        }
        let text = std::fs::read_to_string(&manifest).map_err(|e| {
            Error::NotBuilt(format!(
                "cannot read the manifest {}: {e}",
                manifest.display()
            ))
        })?;
        let parsed: toml::Value = toml::from_str(&text)
            .map_err(|e| Error::NotBuilt(format!("{} is not TOML: {e}", manifest.display())))?;
        let id = parsed
            .get("id")
            .and_then(|v| v.as_str())
            .ok_or_else(|| Error::NotBuilt(format!("{} has no `id`", manifest.display())))?
            .to_string();
        let bsm = env_path("BSM_BIN").unwrap_or_else(|| PathBuf::from("bsm"));
        // Never beside the component: that may be a plugins directory.
        let cache_dir = std::env::temp_dir().join("bsm-harness-cache");
        Ok(Self {
            component,
            manifest,
            id,
            bsm,
            cache_dir,
        })
    }

    /// Runs the component with this `bsm` command instead of `$BSM_BIN` or
    /// the one on the `PATH`.
    pub fn with_bsm(mut self, bsm: impl Into<PathBuf>) -> Self {
        self.bsm = bsm.into();
        self
    }

    /// The plugin's id (its manifest's `id`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Runs the agent on `input` with the host live (config, cache; no LLM
    /// is configured, so an LLM call answers `unavailable`).
    pub fn run(&self, input: &str) -> Result<AgentOutcome, Error> {
        self.agent(input, &json!({}), None)
    }

    /// Runs the agent on `input` with its host calls answered by `script`.
    pub fn run_with(&self, input: &str, script: Script) -> Result<AgentOutcome, Error> {
        self.agent(input, &json!({}), Some(script.to_recording(&self.id)))
    }

    /// Runs the agent on `input` and an event `payload`, answered by `script`.
    pub fn run_payload(
        &self,
        input: &str,
        payload: &Value,
        script: Script,
    ) -> Result<AgentOutcome, Error> {
        self.agent(input, payload, Some(script.to_recording(&self.id)))
    }

    /// Replays a recording made with `bsm run AGENT --record FILE`: the
    /// recorded request, every host call answered from the file.
    pub fn replay(&self, recording: impl AsRef<Path>) -> Result<AgentOutcome, Error> {
        let recording = read_recording(recording.as_ref())?;
        let input = recording["request"]["input"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let payload = recording["request"]["payload"].clone();
        let payload = if payload.is_null() {
            json!({})
        } else {
            payload
        };
        self.agent(&input, &payload, Some(recording))
    }

    /// Runs the step on `event` with its `payload` and the agent `results`
    /// so far (`[{"agentId", "output": {"text", "actions", "metadata"}}]` or
    /// `{"agentId", "error"}`), answered by `script`.
    pub fn step(
        &self,
        event: &str,
        payload: &Value,
        results: &Value,
        script: Script,
    ) -> Result<StepOutcome, Error> {
        let stage = self.stage()?;
        let payload_file = stage.path().join("payload.json");
        let results_file = stage.path().join("results.json");
        write(&payload_file, &payload.to_string())?;
        write(&results_file, &results.to_string())?;
        let script_file = stage.path().join("script.json");
        write(&script_file, &script.to_recording(&self.id).to_string())?;
        let raw = self.bsm(
            &stage,
            &[
                "step",
                &self.id,
                "--event",
                event,
                "--payload",
                path_str(&payload_file)?,
                "--results",
                path_str(&results_file)?,
                "--replay",
                path_str(&script_file)?,
                "--json",
            ],
        )?;
        Ok(StepOutcome {
            contribution: raw["contribution"].clone(),
            raw,
        })
    }

    fn agent(
        &self,
        input: &str,
        payload: &Value,
        recording: Option<Value>,
    ) -> Result<AgentOutcome, Error> {
        let stage = self.stage()?;
        let payload_file = stage.path().join("payload.json");
        write(&payload_file, &payload.to_string())?;
        let mut args: Vec<String> = vec![
            "run".into(),
            self.id.clone(),
            "--input".into(),
            input.into(),
            "--payload".into(),
            path_str(&payload_file)?.into(),
            "--json".into(),
        ];
        if let Some(recording) = recording {
            let file = stage.path().join("script.json");
            write(&file, &recording.to_string())?;
            args.push("--replay".into());
            args.push(path_str(&file)?.into());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let raw = self.bsm(&stage, &args)?;
        let output = &raw["output"];
        let actions = output["actions"]
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|a| Action {
                        name: a["name"].as_str().unwrap_or_default().to_string(),
                        args: a["args"].clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(AgentOutcome {
            text: output["text"].as_str().unwrap_or_default().to_string(),
            actions,
            metadata: output["metadata"].clone(),
            calls: raw["hostCalls"].as_array().cloned().unwrap_or_default(),
            raw,
        })
    }

    /// A plugins directory holding only this plugin, and a data directory
    /// whose compiled-code cache is shared between runs.
    fn stage(&self) -> Result<tempfile::TempDir, Error> {
        let io = |e: std::io::Error| Error::Bsm(format!("cannot prepare a test directory: {e}"));
        let stage = tempfile::Builder::new()
            .prefix("bsm-harness-")
            .tempdir()
            .map_err(io)?;
        let plugins = stage.path().join("plugins");
        let data = stage.path().join("data");
        std::fs::create_dir_all(&plugins).map_err(io)?;
        std::fs::create_dir_all(&data).map_err(io)?;
        std::fs::create_dir_all(&self.cache_dir).map_err(io)?;
        link_or_copy(&self.component, &plugins.join(format!("{}.wasm", self.id))).map_err(io)?;
        std::fs::copy(&self.manifest, plugins.join(format!("{}.toml", self.id))).map_err(io)?;
        #[cfg(unix)]
        std::os::unix::fs::symlink(&self.cache_dir, data.join("cache")).map_err(io)?;
        Ok(stage)
    }

    fn bsm(&self, stage: &tempfile::TempDir, args: &[&str]) -> Result<Value, Error> {
        let output = Command::new(&self.bsm)
            .arg("--plugins-dir")
            .arg(stage.path().join("plugins"))
            .arg("--data-dir")
            .arg(stage.path().join("data"))
            .args(args)
            .env_remove("BSM_CONFIG")
            .env_remove("BSM_LLM_BASE_URL")
            .env_remove("BSM_LLM_MODEL")
            .env_remove("BSM_LLM_API_KEY")
            .env_remove("BSM_BSM_DIR")
            .env("BSM_LOG", "error")
            .output()
            .map_err(|e| {
                Error::Bsm(format!(
                    "cannot run {}: {e}; install bsm (`cargo install --path host/cli` in the BSM repository) or set BSM_BIN",
                    self.bsm.display()
                ))
            })?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            let line = stderr
                .lines()
                .rev()
                .find(|l| l.starts_with("error: "))
                .map(|l| l.trim_start_matches("error: ").to_string())
                .unwrap_or_else(|| stderr.trim().to_string());
            return Err(if line.starts_with("replay: ") {
                Error::Unscripted(line)
            } else {
                Error::Failed(line)
            });
        }
        serde_json::from_slice(&output.stdout).map_err(|e| {
            Error::Bsm(format!(
                "bsm printed something that is not its JSON result ({e}): {}",
                String::from_utf8_lossy(&output.stdout)
            ))
        })
    }
}

/// The crate's cargo target directory (`$CARGO_TARGET_DIR` or `target/`).
fn target_dir(crate_dir: &Path) -> PathBuf {
    env_path("CARGO_TARGET_DIR")
        .map(|t| {
            if t.is_absolute() {
                t
            } else {
                crate_dir.join(t)
            }
        })
        .unwrap_or_else(|| crate_dir.join("target"))
}

/// A hard link where the file system allows one (a JavaScript component is
/// 12 MB, staged for every run), a copy otherwise.
fn link_or_copy(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::hard_link(from, to).or_else(|_| std::fs::copy(from, to).map(|_| ()))
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn crate_name(dir: &Path) -> Result<String, Error> {
    let path = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::NotBuilt(format!("cannot read {}: {e}", path.display())))?;
    let parsed: toml::Value = toml::from_str(&text)
        .map_err(|e| Error::NotBuilt(format!("{} is not TOML: {e}", path.display())))?;
    parsed
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .map(String::from)
        .ok_or_else(|| Error::NotBuilt(format!("{} names no package", path.display())))
}

fn read_recording(path: &Path) -> Result<Value, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::NotBuilt(format!("cannot read the recording {}: {e}", path.display()))
    })?;
    serde_json::from_str(&text)
        .map_err(|e| Error::NotBuilt(format!("{} is not a recording: {e}", path.display())))
}

fn write(path: &Path, text: &str) -> Result<(), Error> {
    std::fs::write(path, text)
        .map_err(|e| Error::Bsm(format!("cannot write {}: {e}", path.display())))
}

fn path_str(path: &Path) -> Result<&str, Error> {
    path.to_str()
        .ok_or_else(|| Error::Bsm(format!("{} is not UTF-8", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_script_is_a_recording_with_any_arguments_and_live_config() {
        let r = Script::new().llm_reply("hi").to_recording("x");
        assert_eq!(r["format"], "bsm-recording/1");
        assert_eq!(r["calls"][0]["call"], "llm.chat");
        assert!(r["calls"][0]["args"].is_null());
        assert_eq!(r["calls"][0]["result"]["Ok"]["content"], "hi");
        assert_eq!(r["live"], json!(["config", "cache"]));
        assert_eq!(Script::new().strict().to_recording("x")["live"], json!([]));
    }

    #[test]
    fn a_missing_component_says_how_to_build_it() {
        let err = Plugin::load("/nonexistent/x.wasm", "/nonexistent/plugin.toml").unwrap_err();
        assert!(matches!(err, Error::NotBuilt(_)));
        assert!(err.to_string().contains("cargo build --release"), "{err}");
    }
}
