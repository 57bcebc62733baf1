//! The orchestration-step side of the contract: the [`Step`] trait and the
//! pipeline types it sees.

use crate::bindings::agent::bsm::plugin::types;

/// Pipeline state handed to a step: event, payload, context and the agent
/// results gathered so far.
///
/// ```
/// # use bsm_sdk::{PipelineState, Verdict};
/// fn all_passed(state: &PipelineState) -> bool {
///     !state.results.is_empty() && state.results.iter().all(|r| r.succeeded())
/// }
/// ```
pub type PipelineState = types::PipelineState;
/// Outcome of one agent in the pipeline (`Ok(output)` or `Err(message)`).
///
/// ```
/// # use bsm_sdk::PipelineState;
/// fn findings(state: &PipelineState) -> Vec<&str> {
///     state.results.iter().filter_map(|r| r.text()).filter(|t| t.contains("CRITICAL")).collect()
/// }
/// ```
pub type AgentResult = types::AgentResult;
/// What a step adds: a [`Route`] or a [`Decision`].
///
/// ```
/// use bsm_sdk::{Contribution, Decision, Route, RunMode, Verdict};
/// let route = Contribution::Route(Route { agents: vec!["security-agent".into()], mode: RunMode::Parallel });
/// let decision = Contribution::Decision(Decision::new(Verdict::Approve, "all green"));
/// # let _ = (route, decision);
/// ```
pub type Contribution = types::Contribution;
/// The agents chosen for an event and how to run them.
///
/// ```
/// let route = bsm_sdk::Route { agents: vec!["code-review-agent".into(), "security-agent".into()], mode: bsm_sdk::RunMode::Parallel };
/// assert_eq!(route.agents.len(), 2);
/// ```
pub type Route = types::Route;
/// Parallel or sequential execution of a route.
///
/// ```
/// let mode = bsm_sdk::RunMode::Sequential; // each agent after the previous one
/// # let _ = mode;
/// ```
pub type RunMode = types::RunMode;
/// A verdict with its reason and follow-up actions.
///
/// ```
/// use bsm_sdk::{Action, Decision, Verdict};
/// let d = Decision::new(Verdict::RequestChanges, "two review comments").with_action(Action::new("request_changes"));
/// assert_eq!(d.actions[0].name, "request_changes");
/// ```
pub type Decision = types::Decision;
/// The four verdicts of the original BSM decision rules.
///
/// ```
/// use bsm_sdk::Verdict;
/// let worst = [Verdict::Approve, Verdict::Block].into_iter().any(|v| v == Verdict::Block);
/// assert!(worst);
/// ```
pub type Verdict = types::Verdict;
/// Why a step could not contribute.
///
/// ```
/// use bsm_sdk::StepError;
/// let e = StepError::InvalidState("no agent results to decide on".into());
/// # let _ = e;
/// ```
pub type StepError = types::StepError;
/// Who a step is, read once by the host when the plugin is loaded.
///
/// ```
/// let info = bsm_sdk::StepInfo::new("pr-decision", "PR decision", "1.0.0");
/// assert_eq!(info.id, "pr-decision");
/// ```
pub type StepInfo = types::StepInfo;

/// An orchestration-step plugin: routes an event to agents or decides over
/// their results. Like agents, steps get a fresh instance per run.
///
/// ```
/// use bsm_sdk::{Contribution, Decision, PipelineState, Step, StepError, StepInfo, Verdict};
/// struct AllGreen;
/// impl Step for AllGreen {
///     fn describe() -> StepInfo { StepInfo::new("all-green", "All green", "0.1.0") }
///     fn run(state: PipelineState) -> Result<Contribution, StepError> {
///         let verdict = if state.results.iter().all(|r| r.succeeded()) { Verdict::Approve } else { Verdict::ManualReview };
///         Ok(Contribution::Decision(Decision::new(verdict, "by agent outcomes")))
///     }
/// }
/// ```
pub trait Step {
    /// Describes the step.
    ///
    /// ```
    /// # use bsm_sdk::StepInfo;
    /// fn describe() -> StepInfo {
    ///     StepInfo::new("router", "Router", env!("CARGO_PKG_VERSION")).with_description("Routes PR events")
    /// }
    /// ```
    fn describe() -> StepInfo;

    /// Contributes to the pipeline given its current state.
    ///
    /// ```
    /// # use bsm_sdk::{Contribution, PipelineState, Route, RunMode, StepError};
    /// fn run(state: PipelineState) -> Result<Contribution, StepError> {
    ///     let agents = match state.event.as_str() {
    ///         "pull_request.opened" => vec!["code-review-agent".into(), "security-agent".into()],
    ///         other => return Err(StepError::InvalidState(format!("no route for {other}"))),
    ///     };
    ///     Ok(Contribution::Route(Route { agents, mode: RunMode::Parallel }))
    /// }
    /// ```
    fn run(state: PipelineState) -> Result<Contribution, StepError>;
}

impl StepInfo {
    /// A description with the three required fields and no description text.
    ///
    /// ```
    /// let info = bsm_sdk::StepInfo::new("pr-decision", "PR decision", "1.0.0");
    /// assert!(info.description.is_empty());
    /// ```
    pub fn new(id: impl Into<String>, name: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            name: name.into(),
            version: version.into(),
            description: String::new(),
        }
    }

    /// Sets the human-readable description.
    ///
    /// ```
    /// let info = bsm_sdk::StepInfo::new("s", "S", "1.0.0").with_description("Decides over PR reviews");
    /// assert_eq!(info.description, "Decides over PR reviews");
    /// ```
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
    ///
    /// ```
    /// use bsm_sdk::{Action, Decision, Verdict};
    /// let d = Decision::new(Verdict::Block, "leaked token").with_action(Action::new("block_pr"));
    /// assert_eq!(d.actions.len(), 1);
    /// ```
    pub fn with_action(mut self, action: crate::Action) -> Self {
        self.actions.push(action);
        self
    }
}

impl AgentResult {
    /// The output text if the agent succeeded.
    ///
    /// ```
    /// # use bsm_sdk::PipelineState;
    /// # fn f(state: &PipelineState) {
    /// let blocking = state.results.iter().any(|r| r.text().is_some_and(|t| t.contains("CRITICAL")));
    /// # }
    /// ```
    pub fn text(&self) -> Option<&str> {
        self.outcome.as_ref().ok().map(|o| o.text.as_str())
    }

    /// Whether the agent succeeded.
    ///
    /// ```
    /// # use bsm_sdk::PipelineState;
    /// # fn f(state: &PipelineState) {
    /// let failed: Vec<&str> = state.results.iter().filter(|r| !r.succeeded()).map(|r| r.agent_id.as_str()).collect();
    /// # }
    /// ```
    pub fn succeeded(&self) -> bool {
        self.outcome.is_ok()
    }
}

impl PipelineState {
    /// The result of the named agent, if it ran.
    ///
    /// ```
    /// # use bsm_sdk::PipelineState;
    /// # fn f(state: &PipelineState) {
    /// let security_passed = state.result_of("security-agent").is_some_and(|r| r.succeeded());
    /// # }
    /// ```
    pub fn result_of(&self, agent_id: &str) -> Option<&AgentResult> {
        self.results.iter().find(|r| r.agent_id == agent_id)
    }
}
