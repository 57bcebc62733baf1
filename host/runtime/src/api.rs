//! The host's own request and result types: what the CLI prints with
//! `--json` and what the HTTP API will speak. JSON stays JSON here (not
//! strings as in the WIT contract); conversion and validation happen once,
//! at the sandbox boundary.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::bindings::types as wit;

/// Where a run comes from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunContext {
    pub correlation_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// `api`, `chat`, `ci`, `github`...
    pub calling_context: String,
}

impl RunContext {
    /// A context with a fresh correlation id.
    pub fn new(calling_context: impl Into<String>) -> Self {
        Self {
            correlation_id: new_correlation_id(),
            event: None,
            calling_context: calling_context.into(),
        }
    }
}

/// A fresh correlation id: a UUID v7, ordered by creation time, so that
/// the rows keyed by it (actions, runs) go to the end of their indexes
/// instead of a random page each.
pub fn new_correlation_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// A request to run an agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentRequest {
    pub input: String,
    #[serde(default = "empty_object")]
    pub payload: Value,
    pub context: RunContext,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// An action emitted by an agent or a decision.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Action {
    pub name: String,
    pub args: Value,
}

/// An agent's answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AgentOutput {
    pub text: String,
    pub actions: Vec<Action>,
    pub metadata: Value,
}

/// A finished agent run.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentRun {
    pub plugin_id: String,
    pub plugin_version: String,
    pub correlation_id: String,
    pub output: AgentOutput,
    /// LLM calls and tokens of this run, counted by the host.
    pub usage: crate::capabilities::llm::LlmUsage,
    pub duration_ms: f64,
}

/// The error a plugin itself returned (as opposed to the host stopping it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", content = "message", rename_all = "kebab-case")]
pub enum PluginFailure {
    InvalidInput(String),
    InvalidState(String),
    Capability(String),
    Config(String),
    Internal(String),
}

impl std::fmt::Display for PluginFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PluginFailure::InvalidInput(m) => write!(f, "invalid input: {m}"),
            PluginFailure::InvalidState(m) => write!(f, "invalid pipeline state: {m}"),
            PluginFailure::Capability(m) => write!(f, "host capability failed: {m}"),
            PluginFailure::Config(m) => write!(f, "configuration error: {m}"),
            PluginFailure::Internal(m) => write!(f, "internal error: {m}"),
        }
    }
}

/// Outcome of one agent within a pipeline, as handed to steps.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AgentResult {
    pub agent_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<AgentOutput>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A request to run an orchestration step.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepRequest {
    pub event: String,
    #[serde(default = "empty_object")]
    pub payload: Value,
    pub context: RunContext,
    #[serde(default)]
    pub results: Vec<AgentResult>,
}

/// Parallel or sequential execution of a route.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RunMode {
    Parallel,
    Sequential,
}

/// The verdicts of the original BSM decision.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Approve,
    RequestChanges,
    Block,
    ManualReview,
}

/// What a step contributed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Contribution {
    Route {
        agents: Vec<String>,
        mode: RunMode,
    },
    Decision {
        verdict: Verdict,
        reason: String,
        actions: Vec<Action>,
    },
}

/// A finished step run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepRun {
    pub plugin_id: String,
    pub plugin_version: String,
    pub correlation_id: String,
    pub contribution: Contribution,
    pub duration_ms: f64,
}

/// An action handed to an action-handler plugin (see the WIT
/// `action-request`): what the outbox knows about the action and its job.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionRequest {
    pub id: String,
    pub name: String,
    pub args: Value,
    pub idempotency_key: String,
    pub attempt: u32,
    pub source_plugin: String,
    pub job_id: Option<String>,
    pub event: Option<String>,
    pub payload: Value,
    pub decision: Option<String>,
    pub report: Option<String>,
    pub correlation_id: String,
}

/// Why a handler did not deliver: worth a retry, or never going to work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind", content = "reason")]
pub enum DeliveryFailure {
    Retry(String),
    Permanent(String),
}

/// One run of an action handler.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HandlerRun {
    pub plugin_id: String,
    pub plugin_version: String,
    /// What was done (`Ok`), or why not.
    pub outcome: Result<String, DeliveryFailure>,
    pub duration_ms: f64,
}

// ---- conversions at the sandbox boundary ----

impl From<&RunContext> for wit::InvocationContext {
    fn from(c: &RunContext) -> Self {
        Self {
            correlation_id: c.correlation_id.clone(),
            event: c.event.clone(),
            calling_context: c.calling_context.clone(),
        }
    }
}

impl From<&AgentOutput> for wit::AgentOutput {
    fn from(o: &AgentOutput) -> Self {
        Self {
            text: o.text.clone(),
            actions: o.actions.iter().map(wit::Action::from).collect(),
            metadata: o.metadata.to_string(),
        }
    }
}

impl From<&Action> for wit::Action {
    fn from(a: &Action) -> Self {
        Self {
            name: a.name.clone(),
            args: a.args.to_string(),
        }
    }
}

impl From<&AgentResult> for wit::AgentResult {
    fn from(r: &AgentResult) -> Self {
        let outcome = match (&r.output, &r.error) {
            (Some(output), None) => Ok(output.into()),
            (_, Some(error)) => Err(error.clone()),
            (None, None) => Err("no output recorded".to_string()),
        };
        Self {
            agent_id: r.agent_id.clone(),
            outcome,
        }
    }
}

impl From<wit::AgentError> for PluginFailure {
    fn from(e: wit::AgentError) -> Self {
        match e {
            wit::AgentError::InvalidInput(m) => PluginFailure::InvalidInput(m),
            wit::AgentError::Capability(m) => PluginFailure::Capability(m),
            wit::AgentError::Config(m) => PluginFailure::Config(m),
            wit::AgentError::Internal(m) => PluginFailure::Internal(m),
        }
    }
}

impl From<wit::StepError> for PluginFailure {
    fn from(e: wit::StepError) -> Self {
        match e {
            wit::StepError::InvalidState(m) => PluginFailure::InvalidState(m),
            wit::StepError::Capability(m) => PluginFailure::Capability(m),
            wit::StepError::Config(m) => PluginFailure::Config(m),
            wit::StepError::Internal(m) => PluginFailure::Internal(m),
        }
    }
}

/// Parses a JSON string the plugin returned; the error says which field.
pub(crate) fn parse_json(field: &str, text: &str) -> Result<Value, String> {
    if text.trim().is_empty() {
        return Ok(empty_object());
    }
    serde_json::from_str(text).map_err(|e| format!("{field} is not valid JSON ({e})"))
}

impl Action {
    pub(crate) fn from_wit(a: wit::Action) -> Result<Self, String> {
        let args = parse_json(&format!("args of action {:?}", a.name), &a.args)?;
        Ok(Self { name: a.name, args })
    }
}

impl AgentOutput {
    pub(crate) fn from_wit(o: wit::AgentOutput) -> Result<Self, String> {
        let metadata = parse_json("metadata", &o.metadata)?;
        let actions = o
            .actions
            .into_iter()
            .map(Action::from_wit)
            .collect::<Result<_, _>>()?;
        Ok(Self {
            text: o.text,
            actions,
            metadata,
        })
    }
}

impl Contribution {
    pub(crate) fn from_wit(c: wit::Contribution) -> Result<Self, String> {
        Ok(match c {
            wit::Contribution::Route(r) => Contribution::Route {
                agents: r.agents,
                mode: match r.mode {
                    wit::RunMode::Parallel => RunMode::Parallel,
                    wit::RunMode::Sequential => RunMode::Sequential,
                },
            },
            wit::Contribution::Decision(d) => Contribution::Decision {
                verdict: match d.verdict {
                    wit::Verdict::Approve => Verdict::Approve,
                    wit::Verdict::RequestChanges => Verdict::RequestChanges,
                    wit::Verdict::Block => Verdict::Block,
                    wit::Verdict::ManualReview => Verdict::ManualReview,
                },
                reason: d.reason,
                actions: d
                    .actions
                    .into_iter()
                    .map(Action::from_wit)
                    .collect::<Result<_, _>>()?,
            },
        })
    }
}

/// Size of an output as the budget counts it: every string the plugin returned.
pub(crate) fn wit_output_bytes(o: &wit::AgentOutput) -> usize {
    o.text.len()
        + o.metadata.len()
        + o.actions
            .iter()
            .map(|a| a.name.len() + a.args.len())
            .sum::<usize>()
}
