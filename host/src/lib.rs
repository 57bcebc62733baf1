//! # bsm-host: the BSM plugin runtime
//!
//! Runs agent and orchestration-step plugins (WebAssembly components
//! exporting the worlds of `wit/`) each in its own sandbox with its own
//! budget, and gives them the host capabilities as their only way out.
//!
//! Start at [`Runtime`]: load plugins with [`Runtime::load_dir`], run them
//! with [`Runtime::run_agent`] and [`Runtime::run_step`].

pub mod api;
pub mod artifact_cache;
pub mod bindings;
pub mod bsm;
pub mod bulkhead;
pub mod cache;
pub mod capabilities;
pub mod check;
pub mod engine;
pub mod error;
pub mod knowledge_docs;
pub mod limits;
pub mod llm;
pub mod manifest;
pub mod orchestration;
pub mod output_capture;
pub mod platform;
pub mod plugin;
pub mod registry;
pub mod reports;
pub mod run_state;
pub mod runtime;
pub mod server;
pub mod settings;
pub mod store;

pub use api::{AgentRequest, AgentRun, RunContext, StepRequest, StepRun};
pub use error::{LoadError, RunError};
pub use manifest::{Budget, Manifest, PluginKind};
pub use plugin::Plugin;
pub use runtime::{LoadReport, Runtime, RuntimeOptions};

/// The plugins shipped with this build (`plugins/*`, compiled by the build
/// script); the default plugins directory.
pub const SHIPPED_PLUGINS_DIR: &str = env!("BSM_SHIPPED_PLUGINS_DIR");
