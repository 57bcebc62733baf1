//! Record and replay of the host calls a run makes.
//!
//! A plugin's only way out of its sandbox is the host capabilities, so the
//! calls it makes through them (LLM requests and replies, cache, knowledge,
//! config, reports, outbound HTTP) are everything that makes a run
//! non-deterministic. A [`Tape`] given to the runtime's capabilities either
//! records each call with its answer (to a readable JSON [`Recording`]) or
//! answers each call from a recording without touching the real backends,
//! so that a run can be replayed with no network and no LLM, in a test or
//! on another machine.
//!
//! Replay matches a call by name and arguments, in order among equal calls;
//! a recorded call whose arguments are `null` matches any arguments (a
//! scripted answer). A call the recording does not hold is answered with the
//! interface's `unavailable` error and noted as the tape's [`ReplayMiss`],
//! which fails the replay whatever the plugin made of the error.

use std::future::Future;
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The format tag of recording files, checked when one is read.
pub const RECORDING_FORMAT: &str = "bsm-recording/1";

/// One host call: its name (`interface.function`), arguments and answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HostCall {
    /// E.g. `llm.chat`, `cache.get`, `config.get`.
    pub call: String,
    /// The arguments as the plugin passed them; `null` in a script matches
    /// any arguments.
    #[serde(default)]
    pub args: Value,
    /// The answer, as `{"Ok": ...}` or `{"Err": ...}`.
    pub result: Value,
}

/// A recording file: the run's request, every host call, and its outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recording {
    /// Always [`RECORDING_FORMAT`].
    pub format: String,
    /// The plugin (or BSM agent) that ran.
    pub plugin: String,
    /// What the run was asked (e.g. `{"input", "payload"}`), so that a replay
    /// can ask the same.
    #[serde(default)]
    pub request: Value,
    pub calls: Vec<HostCall>,
    /// Interfaces a replay leaves to the real host (e.g. `["config",
    /// "cache"]` in a test script that only scripts the LLM); empty in a
    /// recording: everything is answered from it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub live: Vec<String>,
    /// What the run answered when it was recorded (`null` in a script).
    #[serde(default)]
    pub outcome: Value,
}

impl Recording {
    /// Reads and checks a recording; errors name the file and what is wrong.
    pub fn read(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read the recording {}: {e}", path.display()))?;
        let recording: Recording = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{} is not a BSM recording: {e}", path.display()))?;
        if recording.format != RECORDING_FORMAT {
            anyhow::bail!(
                "{} has format {:?}; this host reads {RECORDING_FORMAT:?}",
                path.display(),
                recording.format
            );
        }
        Ok(recording)
    }
}

/// Whether a tape keeps calls or answers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapeMode {
    Record,
    Replay,
}

/// A call the plugin made that the recording holds no answer for.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "replay: the recording holds no answer for {call} (call #{ordinal} of {call}) with arguments {args}{hint}"
)]
pub struct ReplayMiss {
    pub call: String,
    /// 1-based: the how-manieth call of this name the plugin made.
    pub ordinal: usize,
    /// The arguments, abbreviated.
    pub args: String,
    /// What the recording holds instead, if anything.
    pub hint: String,
}

/// The calls of one or more runs, kept or answered. Shared by the runs'
/// capabilities through [`crate::capabilities::Capabilities::tape`].
#[derive(Debug)]
pub struct Tape {
    mode: TapeMode,
    /// Replay: interfaces answered by the real host, not the recording.
    live: Vec<String>,
    inner: Mutex<TapeInner>,
}

#[derive(Debug, Default)]
struct TapeInner {
    calls: Vec<HostCall>,
    /// Replay: which recorded calls have answered.
    used: Vec<bool>,
    /// How many calls of each name the plugin made so far.
    asked: std::collections::HashMap<String, usize>,
    /// Replay: the calls the run made, in order.
    transcript: Vec<HostCall>,
    miss: Option<ReplayMiss>,
}

impl Tape {
    /// A tape that records every call.
    pub fn recorder() -> Arc<Self> {
        Arc::new(Self {
            mode: TapeMode::Record,
            live: Vec::new(),
            inner: Mutex::default(),
        })
    }

    /// A tape that answers from `calls` and never reaches a real backend
    /// (except for the interfaces named in `live`).
    pub fn player(calls: Vec<HostCall>, live: Vec<String>) -> Arc<Self> {
        let used = vec![false; calls.len()];
        Arc::new(Self {
            mode: TapeMode::Replay,
            live,
            inner: Mutex::new(TapeInner {
                calls,
                used,
                ..TapeInner::default()
            }),
        })
    }

    pub fn mode(&self) -> TapeMode {
        self.mode
    }

    /// The calls recorded so far (or, replaying, the recording).
    pub fn calls(&self) -> Vec<HostCall> {
        self.inner.lock().unwrap().calls.clone()
    }

    /// The first call a replay could not answer, if any.
    pub fn miss(&self) -> Option<ReplayMiss> {
        self.inner.lock().unwrap().miss.clone()
    }

    /// Recorded calls the replay never asked for (a plugin that now does
    /// less than when it was recorded).
    pub fn unused(&self) -> Vec<HostCall> {
        let inner = self.inner.lock().unwrap();
        inner
            .calls
            .iter()
            .zip(&inner.used)
            .filter(|(_, used)| !**used)
            .map(|(c, _)| c.clone())
            .collect()
    }

    fn answer(&self, call: &str, args: &Value) -> Result<Value, ReplayMiss> {
        let mut inner = self.inner.lock().unwrap();
        let ordinal = {
            let n = inner.asked.entry(call.to_string()).or_default();
            *n += 1;
            *n
        };
        let found =
            inner.calls.iter().zip(&inner.used).position(|(c, used)| {
                !used && c.call == call && (c.args.is_null() || c.args == *args)
            });
        if let Some(i) = found {
            inner.used[i] = true;
            return Ok(inner.calls[i].result.clone());
        }
        let same_name = inner.calls.iter().filter(|c| c.call == call).count();
        let hint = if same_name == 0 {
            format!("; it holds no {call} call at all")
        } else {
            let first_unused = inner
                .calls
                .iter()
                .zip(&inner.used)
                .find(|(c, used)| !**used && c.call == call)
                .map(|(c, _)| first_difference(args, &c.args, String::new()));
            match first_unused {
                Some(difference) => {
                    format!("; the next recorded {call} has different arguments ({difference})")
                }
                None => format!("; all {same_name} recorded {call} calls were already answered"),
            }
        };
        let miss = ReplayMiss {
            call: call.to_string(),
            ordinal,
            args: abbreviate(args),
            hint,
        };
        if inner.miss.is_none() {
            inner.miss = Some(miss.clone());
        }
        Err(miss)
    }

    /// Replay: every call the run made, in order, with the answer it got
    /// (from the recording or, for a live interface, the host): what a test
    /// asserts on (e.g. the prompt the plugin sent).
    pub fn transcript(&self) -> Vec<HostCall> {
        self.inner.lock().unwrap().transcript.clone()
    }

    fn transcribe(&self, call: &str, args: Value, result: Value) {
        self.inner.lock().unwrap().transcript.push(HostCall {
            call: call.to_string(),
            args,
            result,
        });
    }

    fn keep(&self, call: &str, args: Value, result: Value) {
        self.inner.lock().unwrap().calls.push(HostCall {
            call: call.to_string(),
            args,
            result,
        });
    }
}

/// Where two JSON values first differ, in words: `at messages[1].content:
/// asked "...", recorded "..."`.
fn first_difference(asked: &Value, recorded: &Value, at: String) -> String {
    match (asked, recorded) {
        (Value::Object(a), Value::Object(r)) => {
            for (key, value) in a {
                let path = if at.is_empty() {
                    key.clone()
                } else {
                    format!("{at}.{key}")
                };
                match r.get(key) {
                    Some(other) if other == value => {}
                    Some(other) => return first_difference(value, other, path),
                    None => return format!("at {path}: the recording has no such field"),
                }
            }
            match r.keys().find(|k| !a.contains_key(*k)) {
                Some(key) => format!("at {at}: the recording also has {key:?}"),
                None => format!("at {at}"),
            }
        }
        (Value::Array(a), Value::Array(r)) if a.len() == r.len() => {
            match a.iter().zip(r).position(|(x, y)| x != y) {
                Some(i) => first_difference(&a[i], &r[i], format!("{at}[{i}]")),
                None => format!("at {at}"),
            }
        }
        (Value::String(a), Value::String(r)) => {
            let common = a.chars().zip(r.chars()).take_while(|(x, y)| x == y).count();
            let from = common.saturating_sub(20);
            let tail = |s: &str| -> String { s.chars().skip(from).take(80).collect() };
            format!(
                "at {}, character {common}: asked {:?}, recorded {:?}",
                if at.is_empty() { "the argument" } else { &at },
                tail(a),
                tail(r)
            )
        }
        _ => format!(
            "at {}: asked {}, recorded {}",
            if at.is_empty() { "the arguments" } else { &at },
            abbreviate(asked),
            abbreviate(recorded)
        ),
    }
}

/// At most this many characters of arguments in a miss message.
const ABBREVIATE_AT: usize = 300;

fn abbreviate(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() <= ABBREVIATE_AT {
        return text;
    }
    let cut: String = text.chars().take(ABBREVIATE_AT).collect();
    format!("{cut}... ({} bytes)", text.len())
}

/// A call's arguments as the tape keeps them, made before the live call
/// consumes them; nothing is serialised when the run has no tape.
pub(crate) fn args<A: Serialize + ?Sized>(tape: &Option<Arc<Tape>>, args: &A) -> Value {
    match tape {
        Some(_) => serde_json::to_value(args).unwrap_or(Value::Null),
        None => Value::Null,
    }
}

/// Runs one host call through the run's tape, if it has one: recording
/// keeps `args` (from [`args`]) and the answer of `live`; replaying answers
/// from the tape and never awaits `live`; a miss answers `miss(message)`.
pub(crate) async fn through<T, E>(
    tape: &Option<Arc<Tape>>,
    call: &'static str,
    args: Value,
    miss: impl FnOnce(String) -> E,
    live: impl Future<Output = Result<T, E>>,
) -> Result<T, E>
where
    T: Serialize + DeserializeOwned,
    E: Serialize + DeserializeOwned,
{
    let Some(tape) = tape else {
        return live.await;
    };
    let interface = call.split('.').next().unwrap_or(call);
    let live_in_replay = tape.mode == TapeMode::Replay && tape.live.iter().any(|l| l == interface);
    if tape.mode == TapeMode::Record || live_in_replay {
        let result = live.await;
        let value = serde_json::to_value(&result).unwrap_or(Value::Null);
        match tape.mode {
            TapeMode::Record => tape.keep(call, args, value),
            TapeMode::Replay => tape.transcribe(call, args, value),
        }
        return result;
    }
    let result = match tape.answer(call, &args) {
        Ok(value) => serde_json::from_value(value.clone()).unwrap_or_else(|e| {
            let message = format!(
                "replay: the recorded answer of {call} does not have this call's shape ({e}): {}",
                abbreviate(&value)
            );
            let mut inner = tape.inner.lock().unwrap();
            if inner.miss.is_none() {
                inner.miss = Some(ReplayMiss {
                    call: call.to_string(),
                    ordinal: inner.asked.get(call).copied().unwrap_or(0),
                    args: abbreviate(&args),
                    hint: format!("; its recorded answer is malformed ({e})"),
                });
            }
            Err(miss(message))
        }),
        Err(m) => Err(miss(m.to_string())),
    };
    tape.transcribe(
        call,
        args,
        serde_json::to_value(&result).unwrap_or(Value::Null),
    );
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn call(name: &str, args: Value, result: Value) -> HostCall {
        HostCall {
            call: name.into(),
            args,
            result,
        }
    }

    async fn ask(tape: &Option<Arc<Tape>>, name: &'static str, args: Value) -> Result<u32, String> {
        through(tape, name, args, |m| m, async { Ok::<u32, String>(7) }).await
    }

    #[tokio::test]
    async fn recording_keeps_arguments_and_answers_in_order() {
        let owned = Tape::recorder();
        let tape = Some(owned.clone());
        assert_eq!(ask(&tape, "cache.get", json!("a")).await, Ok(7));
        assert_eq!(ask(&tape, "llm.chat", json!({"q": 1})).await, Ok(7));
        let calls = owned.calls();
        assert_eq!(
            calls,
            vec![
                call("cache.get", json!("a"), json!({"Ok": 7})),
                call("llm.chat", json!({"q": 1}), json!({"Ok": 7})),
            ]
        );
    }

    #[tokio::test]
    async fn replay_answers_from_the_recording_without_the_live_call() {
        let owned = Tape::player(
            vec![
                call("llm.chat", json!({"q": 1}), json!({"Ok": 1})),
                call("llm.chat", json!({"q": 1}), json!({"Ok": 2})),
            ],
            Vec::new(),
        );
        let tape = Some(owned.clone());
        let never = async { panic!("a replay must not reach the backend") };
        let first: Result<u32, String> =
            through(&tape, "llm.chat", json!({"q": 1}), |m| m, never).await;
        assert_eq!(first, Ok(1));
        assert_eq!(ask(&tape, "llm.chat", json!({"q": 1})).await, Ok(2));
        assert!(owned.miss().is_none());
    }

    #[tokio::test]
    async fn a_call_the_recording_does_not_hold_is_named() {
        let owned = Tape::player(
            vec![call("llm.chat", json!({"q": 1}), json!({"Ok": 1}))],
            Vec::new(),
        );
        let tape = Some(owned.clone());
        let answer = ask(&tape, "llm.chat", json!({"q": 2})).await;
        let message = answer.unwrap_err();
        assert!(message.contains("llm.chat"), "{message}");
        assert!(message.contains("different arguments"), "{message}");
        assert!(message.contains("at q: asked 2, recorded 1"), "{message}");
        let miss = owned.miss().unwrap();
        assert_eq!(miss.call, "llm.chat");
        assert_eq!(miss.ordinal, 1);
        let other = ask(&tape, "knowledge.search", json!(["docs"])).await;
        assert!(
            other
                .unwrap_err()
                .contains("no knowledge.search call at all")
        );
        // The first miss is the one reported.
        assert_eq!(owned.miss().unwrap().call, "llm.chat");
    }

    #[tokio::test]
    async fn a_scripted_answer_matches_any_arguments_once() {
        let owned = Tape::player(
            vec![call("llm.chat", Value::Null, json!({"Ok": 3}))],
            Vec::new(),
        );
        let tape = Some(owned.clone());
        assert_eq!(
            ask(&tape, "llm.chat", json!({"anything": true})).await,
            Ok(3)
        );
        let again = ask(&tape, "llm.chat", json!({"anything": true})).await;
        assert!(again.unwrap_err().contains("already answered"));
    }

    #[tokio::test]
    async fn unused_recorded_calls_are_listed() {
        let tape = Tape::player(
            vec![
                call("cache.get", json!("a"), json!({"Ok": null})),
                call("llm.chat", json!({}), json!({"Ok": 1})),
            ],
            Vec::new(),
        );
        let handle = Some(tape.clone());
        let _: Result<Option<u32>, String> =
            through(&handle, "cache.get", json!("a"), |m| m, async { Ok(None) }).await;
        assert_eq!(tape.unused().len(), 1);
        assert_eq!(tape.unused()[0].call, "llm.chat");
    }

    #[tokio::test]
    async fn a_malformed_recorded_answer_is_a_miss_not_a_panic() {
        let owned = Tape::player(
            vec![call("llm.chat", Value::Null, json!({"Ok": "not a number"}))],
            Vec::new(),
        );
        let tape = Some(owned.clone());
        let answer = ask(&tape, "llm.chat", json!({})).await;
        assert!(answer.unwrap_err().contains("shape"));
        assert!(owned.miss().unwrap().hint.contains("malformed"));
    }

    #[tokio::test]
    async fn a_replay_keeps_the_calls_the_run_made_in_order() {
        let owned = Tape::player(
            vec![call("llm.chat", Value::Null, json!({"Ok": 1}))],
            vec!["config".into()],
        );
        let tape = Some(owned.clone());
        assert_eq!(ask(&tape, "config.get", json!("k")).await, Ok(7));
        assert_eq!(ask(&tape, "llm.chat", json!({"prompt": "hi"})).await, Ok(1));
        assert!(
            ask(&tape, "llm.chat", json!({"prompt": "again"}))
                .await
                .is_err()
        );
        let transcript = owned.transcript();
        let names: Vec<&str> = transcript.iter().map(|c| c.call.as_str()).collect();
        assert_eq!(names, ["config.get", "llm.chat", "llm.chat"]);
        assert_eq!(transcript[1].args, json!({"prompt": "hi"}));
        assert_eq!(transcript[0].result, json!({"Ok": 7}));
        assert!(transcript[2].result.get("Err").is_some());
    }

    #[tokio::test]
    async fn interfaces_named_live_reach_the_real_host_in_a_replay() {
        let tape = Some(Tape::player(Vec::new(), vec!["config".into()]));
        assert_eq!(ask(&tape, "config.get", json!("greeting")).await, Ok(7));
        assert!(ask(&tape, "config.get-all", json!(null)).await.is_ok());
        assert!(ask(&tape, "llm.chat", json!({})).await.is_err());
    }

    #[test]
    fn the_first_difference_is_named_by_its_path() {
        let asked = json!({"messages": [{"content": "a"}, {"content": "<input>another</input>"}]});
        let recorded = json!({"messages": [{"content": "a"}, {"content": "<input>first</input>"}]});
        let d = first_difference(&asked, &recorded, String::new());
        assert!(d.starts_with("at messages[1].content, character 7"), "{d}");
        assert!(d.contains("another"), "{d}");
        assert!(d.contains("first"), "{d}");
    }

    #[test]
    fn a_file_of_another_format_is_refused() {
        let dir = tempfile_dir();
        let path = dir.join("r.json");
        std::fs::write(
            &path,
            json!({"format": "other/9", "plugin": "x", "calls": []}).to_string(),
        )
        .unwrap();
        let err = Recording::read(&path).unwrap_err().to_string();
        assert!(err.contains("bsm-recording/1"), "{err}");
        std::fs::remove_dir_all(dir).ok();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("bsm-tape-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
