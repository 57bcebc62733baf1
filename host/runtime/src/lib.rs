//! # bsm-runtime: the sandbox
//!
//! Runs agent and orchestration-step plugins (WebAssembly components
//! exporting the worlds of `wit/`) each in its own sandbox with its own
//! budget (wall-clock deadline, CPU time, memory cap, runs in flight with a
//! bounded queue), shares the CPU fairly between plugins (guest code in
//! short turns on threads of its own, [`cpu_share`], [`guest_pool`]), and
//! gives them the host capabilities as their only way out. A plugin that
//! loops, over-allocates or traps fails alone, with an error that names
//! what happened.
//!
//! Start at [`Runtime`]: load plugins with [`Runtime::load_dir`], run them
//! with [`Runtime::run_agent`] and [`Runtime::run_step`]. What stands behind
//! each capability (the LLM engine, the report sink, the cache) is handed
//! in through [`capabilities::Capabilities`], so the runtime can be embedded
//! without the rest of BSM.
//!
//! This crate is the bottom of the host: it must not depend on the LLM
//! client, the platform (governance, database, orchestration) or the HTTP
//! server; they depend on it.

pub mod api;
pub mod artifact_cache;
pub mod atomic_file;
pub mod bindings;
pub mod bulkhead;
pub mod capabilities;
pub mod check;
pub mod cpu_share;
pub mod engine;
pub mod error;
pub mod guest_pool;
pub mod header;
pub mod io_home;
pub mod limits;
pub mod manifest;
pub mod output_capture;
pub mod plugin;
pub mod registry;
pub mod run_state;
pub mod runtime;
pub mod tape;

pub use api::{AgentRequest, AgentRun, RunContext, StepRequest, StepRun};
pub use error::{LoadError, LoadStage, RunError};
pub use manifest::{Budget, Manifest, PluginKind};
pub use plugin::Plugin;
pub use runtime::{LoadReport, Runtime, RuntimeOptions};
