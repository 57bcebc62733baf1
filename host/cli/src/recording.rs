//! `--record FILE` and `--replay FILE` of `bsm run` and `bsm step`: every
//! host call of the run kept in a readable JSON file, or answered from one
//! with no network (see `bsm_runtime::tape`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use bsm_platform::runtime::tape::{RECORDING_FORMAT, Recording, Tape, TapeMode};
use clap::Args;
use serde_json::{Value, json};

/// The record/replay flags shared by the commands that run one plugin.
#[derive(Args, Default)]
pub struct TapeArgs {
    /// Store every host call of the run (LLM requests and replies, cache,
    /// knowledge, config, reports, HTTP) with the run's request and outcome
    /// in FILE (JSON).
    #[arg(long, value_name = "FILE", conflicts_with = "replay")]
    pub record: Option<PathBuf>,
    /// Answer every host call from a recording (or a script) instead of the
    /// real backends: no network, no LLM. Fails, naming the call, when the
    /// plugin asks something FILE does not hold. The request (input,
    /// payload...) defaults to the recorded one.
    #[arg(long, value_name = "FILE")]
    pub replay: Option<PathBuf>,
}

/// A run being recorded or replayed.
pub struct Session {
    pub tape: Arc<Tape>,
    /// The file to write (recording) or that was read (replay).
    path: PathBuf,
    /// Replay: the recording, for the request and the recorded outcome.
    pub recording: Option<Recording>,
}

impl TapeArgs {
    /// The session these flags ask for, if any.
    pub fn session(&self) -> anyhow::Result<Option<Session>> {
        if let Some(path) = &self.replay {
            let recording = Recording::read(path)?;
            return Ok(Some(Session {
                tape: Tape::player(recording.calls.clone(), recording.live.clone()),
                path: path.clone(),
                recording: Some(recording),
            }));
        }
        Ok(self.record.as_ref().map(|path| Session {
            tape: Tape::recorder(),
            path: path.clone(),
            recording: None,
        }))
    }
}

impl Session {
    /// A field of the recorded request (replay only).
    pub fn recorded(&self, field: &str) -> Option<&Value> {
        self.recording
            .as_ref()
            .and_then(|r| r.request.get(field))
            .filter(|v| !v.is_null())
    }

    /// Ends the session after the run: a replay fails if the plugin asked
    /// for something the recording does not hold (whatever the plugin made
    /// of the error it got); a recording is written, atomically, with the
    /// run's outcome. `outcome` is `Ok(answer)` or `Err(message)`.
    pub fn finish(
        self,
        plugin: &str,
        request: Value,
        outcome: Result<Value, String>,
    ) -> anyhow::Result<()> {
        match self.tape.mode() {
            TapeMode::Replay => {
                if let Some(miss) = self.tape.miss() {
                    bail!("{miss} (recording {})", self.path.display());
                }
                let unused = self.tape.unused();
                if !unused.is_empty() {
                    let names: Vec<&str> = unused.iter().map(|c| c.call.as_str()).collect();
                    eprintln!(
                        "note: the run did not ask {} recorded call(s): {}",
                        unused.len(),
                        names.join(", ")
                    );
                }
                let recorded = self.recording.as_ref().map(|r| &r.outcome);
                if let (Some(recorded), Ok(answer)) = (recorded, &outcome)
                    && !recorded.is_null()
                    && recorded.get("answer") != Some(answer)
                {
                    eprintln!("note: the answer differs from the recorded one");
                }
                Ok(())
            }
            TapeMode::Record => {
                let recording = Recording {
                    format: RECORDING_FORMAT.into(),
                    plugin: plugin.into(),
                    request,
                    calls: self.tape.calls(),
                    live: Vec::new(),
                    outcome: match outcome {
                        Ok(answer) => json!({ "answer": answer }),
                        Err(error) => json!({ "error": error }),
                    },
                };
                write_atomically(&self.path, &serde_json::to_vec_pretty(&recording)?)?;
                eprintln!(
                    "recorded {} host call(s) to {}",
                    recording.calls.len(),
                    self.path.display()
                );
                Ok(())
            }
        }
    }
}

/// Ends `session`, if there is one, with the run's `result`; `answer`
/// picks what of a successful run the recording keeps. A replay answers
/// the host calls the run made, in order (for `--json`'s `hostCalls`).
pub fn close<T, E: std::fmt::Display>(
    session: Option<Session>,
    plugin: &str,
    request: Value,
    result: &Result<T, E>,
    answer: impl FnOnce(&T) -> Value,
) -> anyhow::Result<Option<Value>> {
    let Some(session) = session else {
        return Ok(None);
    };
    let transcript = match session.tape.mode() {
        TapeMode::Replay => Some(serde_json::to_value(session.tape.transcript())?),
        TapeMode::Record => None,
    };
    let outcome = result.as_ref().map(answer).map_err(|e| e.to_string());
    session.finish(plugin, request, outcome)?;
    Ok(transcript)
}

/// Replaces the recording whole: a reader never sees half of one.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use bsm_platform::runtime::atomic_file::{Durability, write};
    write(path, bytes, Durability::Atomic)
        .with_context(|| format!("cannot write {}", path.display()))
}
