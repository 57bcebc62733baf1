//! The orchestration-step side of the contract: the [`Step`] trait and the
//! pipeline types it sees.

use crate::bindings::agent::bsm::plugin::types;

/// Pipeline state handed to a step: event, payload, context and the agent
/// results gathered so far.
pub type PipelineState = types::PipelineState;
/// Outcome of one agent in the pipeline (`Ok(output)` or `Err(message)`).
pub type AgentResult = types::AgentResult;
/// What a step adds: a [`Route`] or a [`Decision`].
pub type Contribution = types::Contribution;
/// The agents chosen for an event and how to run them.
pub type Route = types::Route;
/// Parallel or sequential execution of a route.
pub type RunMode = types::RunMode;
/// A verdict with its reason and follow-up actions.
pub type Decision = types::Decision;
/// The four verdicts of the original BSM decision rules.
pub type Verdict = types::Verdict;
/// Why a step could not contribute.
pub type StepError = types::StepError;
/// Who a step is, read once by the host when the plugin is loaded.
pub type StepInfo = types::StepInfo;

/// An orchestration-step plugin: routes an event to agents or decides over
/// their results. Like agents, steps get a fresh instance per run.
pub trait Step {
    /// Describes the step.
    fn describe() -> StepInfo;

    /// Contributes to the pipeline given its current state.
    fn run(state: PipelineState) -> Result<Contribution, StepError>;
}

impl StepInfo {
    /// A description with the three required fields and no description text.
    pub fn new(id: impl Into<String>, name: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            name: name.into(),
            version: version.into(),
            description: String::new(),
        }
    }

    /// Sets the human-readable description.
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }
}

impl Decision {
    /// A decision without follow-up actions.
    ///
    /// ```
    /// use bsm_sdk::{Decision, Verdict};
    /// let d = Decision::new(Verdict::Block, "security scan failed");
    /// assert_eq!(d.verdict, Verdict::Block);
    /// ```
    pub fn new(verdict: Verdict, reason: impl Into<String>) -> Self {
        Self {
            verdict,
            reason: reason.into(),
            actions: Vec::new(),
        }
    }

    /// Adds a follow-up action.
    pub fn with_action(mut self, action: crate::Action) -> Self {
        self.actions.push(action);
        self
    }
}

impl AgentResult {
    /// The output text if the agent succeeded.
    pub fn text(&self) -> Option<&str> {
        self.outcome.as_ref().ok().map(|o| o.text.as_str())
    }

    /// Whether the agent succeeded.
    pub fn succeeded(&self) -> bool {
        self.outcome.is_ok()
    }
}

impl PipelineState {
    /// The result of the named agent, if it ran.
    pub fn result_of(&self, agent_id: &str) -> Option<&AgentResult> {
        self.results.iter().find(|r| r.agent_id == agent_id)
    }
}
