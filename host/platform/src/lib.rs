//! # bsm-platform: the BSM application
//!
//! What turns the sandbox into BSM: the original agent layout and its
//! governance (contexts, approvals, the action allow-list, quarantine of
//! invalid agents), the embedded database (jobs, runs, approvals, report
//! index), reports, knowledge documents, and orchestration (events →
//! pipelines → agents → decision → report).
//!
//! Callers use one facade, [`Platform`], built by the one composition root,
//! [`Platform::build`], from [`PlatformOptions`]: the HTTP server and the CLI
//! both, so a run from either takes the same governed path.
//!
//! Depends on the runtime, the LLM client and the caches; it must not
//! depend on the HTTP server or the CLI (they depend on it).

pub mod access;
pub mod agent_reload;
pub mod batch_writer;
pub mod bsm;
pub mod checkpointer;
pub mod compose;
pub mod deploy;
pub mod dir_sync;
pub mod dispatch;
pub mod governed;
pub mod orchestration;
pub mod outbound;
pub mod outbox;
pub mod paging;
pub mod platform;
pub mod report_journal;
pub mod reports;
pub mod retention;
pub mod secrets;
pub mod settings;
pub mod signing;
pub mod store;
pub mod watch;

pub use compose::{AgentSet, PlatformOptions, PluginSelection, open_knowledge_only};
pub use deploy::{DeployError, Route, Upload, VersionView};
pub use governed::{ActionOutcome, ActionStatus, GovernedRun, GovernedStep, PlatformError};
pub use platform::{AgentView, JobRuns, Platform, RunRow, StorageHealth};
pub use settings::HostSettings;

/// The crates the facade's types come from, for callers that name them.
pub use bsm_knowledge as knowledge;
pub use bsm_llm as llm;
pub use bsm_runtime as runtime;

/// The BSM agent set shipped in this repository (`examples/bsm`, the
/// original layout): served when no other BSM directory is configured.
pub const SHIPPED_AGENTS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/bsm");
