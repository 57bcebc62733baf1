//! Every way a plugin run can fail, each with a stable code, so callers (the
//! CLI now, the HTTP API later) can react without parsing messages.

use serde::Serialize;

use crate::api::PluginFailure;
use crate::manifest::PluginKind;

/// Why a run did not produce a result. A misbehaving plugin fails alone with
/// one of these; the host itself keeps running.
#[derive(Debug, Clone, thiserror::Error, Serialize)]
#[serde(tag = "code", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RunError {
    #[error("no plugin with id {id:?} is loaded")]
    PluginNotFound { id: String },

    #[error("plugin {id:?} is a {actual} plugin, not an {expected}")]
    WrongPluginKind {
        id: String,
        expected: PluginKind,
        actual: PluginKind,
    },

    #[error("invalid request: {message}")]
    InvalidRequest { message: String },

    #[error("plugin {plugin:?} is busy ({reason}); retry in {retry_after_ms} ms")]
    PluginBusy {
        plugin: String,
        reason: String,
        retry_after_ms: u64,
    },

    #[error("plugin {plugin:?} did not finish within its {timeout_ms} ms budget")]
    PluginTimeout {
        plugin: String,
        timeout_ms: u64,
        /// The deadline passed while the plugin waited on a host call (an
        /// LLM answer...), not while its own code ran.
        #[serde(skip)]
        in_host_call: bool,
    },

    #[error("plugin {plugin:?} used more than its {cpu_ms} ms of CPU time")]
    PluginCpuLimit { plugin: String, cpu_ms: u64 },

    #[error(
        "plugin {plugin:?} exceeded its memory limit of {limit_bytes} bytes (asked for {requested_bytes})"
    )]
    PluginMemoryLimit {
        plugin: String,
        limit_bytes: u64,
        requested_bytes: u64,
    },

    #[error("plugin {plugin:?} trapped: {message}")]
    PluginTrap { plugin: String, message: String },

    #[error("plugin {plugin:?} returned {bytes} bytes of output, over its limit of {limit_bytes}")]
    PluginOutputTooLarge {
        plugin: String,
        bytes: u64,
        limit_bytes: u64,
    },

    #[error("plugin {plugin:?} returned invalid output: {message}")]
    PluginInvalidOutput { plugin: String, message: String },

    #[error("plugin {plugin:?} emitted action {action:?}, which its manifest does not allow")]
    ActionNotAllowed { plugin: String, action: String },

    #[error("plugin {plugin:?} failed: {failure}")]
    PluginFailed {
        plugin: String,
        failure: PluginFailure,
        /// The LLM error behind the failure, when the run saw one.
        #[serde(skip_serializing_if = "Option::is_none")]
        llm_error: Option<LlmFailure>,
    },

    #[error("plugin {plugin:?} could not be started: {message}")]
    PluginStartFailed { plugin: String, message: String },
}

impl RunError {
    /// The stable machine-readable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            RunError::PluginNotFound { .. } => "PLUGIN_NOT_FOUND",
            RunError::WrongPluginKind { .. } => "WRONG_PLUGIN_KIND",
            RunError::InvalidRequest { .. } => "INVALID_REQUEST",
            RunError::PluginBusy { .. } => "PLUGIN_BUSY",
            RunError::PluginTimeout { .. } => "PLUGIN_TIMEOUT",
            RunError::PluginCpuLimit { .. } => "PLUGIN_CPU_LIMIT",
            RunError::PluginMemoryLimit { .. } => "PLUGIN_MEMORY_LIMIT",
            RunError::PluginTrap { .. } => "PLUGIN_TRAP",
            RunError::PluginOutputTooLarge { .. } => "PLUGIN_OUTPUT_TOO_LARGE",
            RunError::PluginInvalidOutput { .. } => "PLUGIN_INVALID_OUTPUT",
            RunError::ActionNotAllowed { .. } => "ACTION_NOT_ALLOWED",
            RunError::PluginFailed { .. } => "PLUGIN_FAILED",
            RunError::PluginStartFailed { .. } => "PLUGIN_START_FAILED",
        }
    }
}

impl RunError {
    /// Whether the plugin version itself is to blame: it trapped, ran out
    /// of time in its own code, hit its memory cap, or answered something
    /// invalid. A busy queue, an LLM outage or a bad request is not.
    pub fn is_plugin_fault(&self) -> bool {
        match self {
            RunError::PluginTimeout { in_host_call, .. } => !in_host_call,
            RunError::PluginMemoryLimit { .. }
            | RunError::PluginCpuLimit { .. }
            | RunError::PluginTrap { .. }
            | RunError::PluginOutputTooLarge { .. }
            | RunError::PluginInvalidOutput { .. }
            | RunError::ActionNotAllowed { .. } => true,
            _ => false,
        }
    }
}

/// Why a plugin could not be loaded (bad manifest, bad component, wrong world).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct LoadError {
    /// The file that was being loaded.
    pub origin: String,
    pub message: String,
    /// Which check failed.
    pub stage: LoadStage,
}

/// The check a plugin failed at load, so that callers (an upload, the
/// watched directory) can answer with a stable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadStage {
    /// The manifest does not parse or validate.
    Manifest,
    /// Not a WebAssembly component, or it does not compile.
    Component,
    /// It imports what the host does not provide, or does not export the
    /// world its manifest names.
    World,
    /// It imports a capability its manifest does not grant.
    Capabilities,
    /// `describe()` trapped, timed out or failed.
    Describe,
    /// A file could not be read.
    #[default]
    Io,
}

impl LoadStage {
    /// The stable error code of this stage.
    pub fn code(self) -> &'static str {
        match self {
            LoadStage::Manifest => "INVALID_MANIFEST",
            LoadStage::Component => "INVALID_COMPONENT",
            LoadStage::World => "WRONG_WORLD",
            LoadStage::Capabilities => "CAPABILITY_NOT_GRANTED",
            LoadStage::Describe => "DESCRIBE_FAILED",
            LoadStage::Io => "LOAD_FAILED",
        }
    }
}

impl LoadError {
    pub fn new(origin: impl std::fmt::Display, message: impl Into<String>) -> Self {
        Self::at(LoadStage::Io, origin, message)
    }

    /// An error of a given stage.
    pub fn at(
        stage: LoadStage,
        origin: impl std::fmt::Display,
        message: impl Into<String>,
    ) -> Self {
        Self {
            origin: origin.to_string(),
            message: message.into(),
            stage,
        }
    }
}

/// An LLM error as callers of the host see it: a stable kind, a message and,
/// where it applies, when to retry.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LlmFailure {
    /// `circuit-open`, `rate-limited`, `timeout`, `budget-exceeded`,
    /// `invalid-request`, `provider` or `unavailable`.
    pub kind: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl From<&crate::bindings::llm::Error> for LlmFailure {
    fn from(e: &crate::bindings::llm::Error) -> Self {
        use crate::bindings::llm::Error as E;
        let (kind, message, retry_after_ms) = match e {
            E::CircuitOpen(ms) => (
                "circuit-open",
                format!("the LLM provider's circuit breaker is open; retry in {ms} ms"),
                Some(*ms),
            ),
            E::RateLimited(ms) => (
                "rate-limited",
                "the LLM provider is rate-limiting".to_string(),
                *ms,
            ),
            E::Timeout => (
                "timeout",
                "the LLM provider did not answer in time".to_string(),
                None,
            ),
            E::BudgetExceeded(m) => ("budget-exceeded", m.clone(), None),
            E::InvalidRequest(m) => ("invalid-request", m.clone(), None),
            E::Provider(p) => (
                "provider",
                match p.status {
                    Some(s) => format!("HTTP {s}: {}", p.message),
                    None => p.message.clone(),
                },
                None,
            ),
            E::NotPermitted(m) => ("not-permitted", m.clone(), None),
            E::Unavailable(m) => ("unavailable", m.clone(), None),
        };
        Self {
            kind,
            message,
            retry_after_ms,
        }
    }
}
