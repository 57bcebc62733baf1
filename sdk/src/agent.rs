//! The agent side of the contract: the [`Agent`] trait and the types it speaks.

use crate::bindings::agent::bsm::plugin::types;

/// One input to an agent: the user's text, the event payload (JSON) and the
/// [`Context`] it was called in.
///
/// ```
/// let input = bsm_sdk::Input::new("Review PR #7");
/// assert_eq!(input.input, "Review PR #7");
/// assert_eq!(input.context.calling_context, "api");
/// ```
pub type Input = types::AgentInput;
/// Where a run comes from: correlation id, event and calling context.
///
/// ```
/// # let input = bsm_sdk::Input::new("x");
/// let ctx: &bsm_sdk::Context = &input.context;
/// let from_a_job = ctx.event.is_some();
/// # assert!(!from_a_job);
/// ```
pub type Context = types::InvocationContext;
/// What an agent answers: text, [`Action`]s and JSON metadata.
///
/// ```
/// use bsm_sdk::{Action, Output};
/// let out = Output::text("Two issues found.")
///     .with_action(Action::with_args("label_pr", r#"{"label": "needs-work"}"#))
///     .with_metadata(r#"{"issues": 2}"#);
/// assert_eq!(out.actions.len(), 1);
/// ```
pub type Output = types::AgentOutput;
/// Something the agent wants done; the host checks it against the plugin's
/// allow-list before anything happens.
///
/// ```
/// let merge = bsm_sdk::Action::new("auto_merge");
/// assert_eq!(merge.args, "{}");
/// ```
pub type Action = types::Action;
/// Why an agent could not answer; the case tells the caller what kind of
/// failure it was without parsing the message.
///
/// ```
/// use bsm_sdk::AgentError;
/// fn parse(payload: &str) -> Result<u64, AgentError> {
///     payload.trim().parse().map_err(|_| AgentError::InvalidInput(format!("not a PR number: {payload:?}")))
/// }
/// assert!(matches!(parse("x"), Err(AgentError::InvalidInput(_))));
/// ```
pub type AgentError = types::AgentError;
/// Who an agent is, read once by the host when the plugin is loaded.
///
/// ```
/// let info = bsm_sdk::AgentInfo::new("security-agent", "Security", "1.2.0");
/// assert!(info.actions.is_empty());
/// ```
pub type AgentInfo = types::AgentInfo;

/// An agent plugin. The host creates a fresh instance for every run, so an
/// implementation keeps no state between runs: use [`crate::cache`] for that.
///
/// ```
/// use bsm_sdk::{Agent, AgentError, AgentInfo, Input, Output};
/// struct Shout;
/// impl Agent for Shout {
///     fn describe() -> AgentInfo { AgentInfo::new("shout", "Shout", "0.1.0") }
///     fn run(input: Input) -> Result<Output, AgentError> {
///         Ok(Output::text(input.input.to_uppercase()))
///     }
/// }
/// // The logic can be called directly in a unit test:
/// assert_eq!(Shout::run(Input::new("hi")).unwrap().text, "HI");
/// ```
pub trait Agent {
    /// Describes the agent: id, name, version and the actions it may emit.
    ///
    /// ```
    /// # use bsm_sdk::AgentInfo;
    /// fn describe() -> AgentInfo {
    ///     AgentInfo::new("shout", "Shout", env!("CARGO_PKG_VERSION")).with_actions(["notify"])
    /// }
    /// # assert_eq!(describe().actions, ["notify"]);
    /// ```
    fn describe() -> AgentInfo;

    /// Answers one input.
    ///
    /// ```
    /// # use bsm_sdk::{AgentError, Input, Output};
    /// fn run(input: Input) -> Result<Output, AgentError> {
    ///     if input.input.is_empty() {
    ///         return Err(AgentError::InvalidInput("the input is empty".into()));
    ///     }
    ///     Ok(Output::text(format!("{} characters", input.input.len())))
    /// }
    /// # assert!(run(Input::new("")).is_err());
    /// ```
    fn run(input: Input) -> Result<Output, AgentError>;
}

impl AgentInfo {
    /// Starts a description with the three required fields; the rest default
    /// to empty.
    ///
    /// ```
    /// let info = bsm_sdk::AgentInfo::new("hello-agent", "Hello", "0.1.0")
    ///     .with_description("Greets")
    ///     .with_actions(["greet"]);
    /// assert_eq!(info.actions, vec!["greet".to_string()]);
    /// ```
    pub fn new(id: impl Into<String>, name: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            name: name.into(),
            version: version.into(),
            description: String::new(),
            actions: Vec::new(),
        }
    }

    /// Sets the human-readable description.
    ///
    /// ```
    /// let info = bsm_sdk::AgentInfo::new("a", "A", "1.0.0").with_description("Reviews code");
    /// assert_eq!(info.description, "Reviews code");
    /// ```
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// Sets the names of the actions the agent may emit.
    ///
    /// ```
    /// let info = bsm_sdk::AgentInfo::new("a", "A", "1.0.0").with_actions(["approve_pr", "block_pr"]);
    /// assert_eq!(info.actions.len(), 2);
    /// ```
    pub fn with_actions<I, S>(mut self, actions: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.actions = actions.into_iter().map(Into::into).collect();
        self
    }
}

impl Output {
    /// An output with only text, no actions and empty metadata.
    ///
    /// ```
    /// let out = bsm_sdk::Output::text("hi");
    /// assert_eq!(out.text, "hi");
    /// assert_eq!(out.metadata, "{}");
    /// ```
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            actions: Vec::new(),
            metadata: "{}".to_string(),
        }
    }

    /// Adds an action.
    ///
    /// ```
    /// let out = bsm_sdk::Output::text("ok").with_action(bsm_sdk::Action::new("approve_pr"));
    /// assert_eq!(out.actions[0].name, "approve_pr");
    /// ```
    pub fn with_action(mut self, action: Action) -> Self {
        self.actions.push(action);
        self
    }

    /// Sets the metadata, a JSON object serialised as a string.
    ///
    /// ```
    /// let out = bsm_sdk::Output::text("ok").with_metadata(r#"{"score": 0.9}"#);
    /// assert_eq!(out.metadata, r#"{"score": 0.9}"#);
    /// ```
    pub fn with_metadata(mut self, metadata_json: impl Into<String>) -> Self {
        self.metadata = metadata_json.into();
        self
    }
}

impl Action {
    /// An action without arguments (`{}`).
    ///
    /// ```
    /// let a = bsm_sdk::Action::new("approve_pr");
    /// assert_eq!((a.name.as_str(), a.args.as_str()), ("approve_pr", "{}"));
    /// ```
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            args: "{}".to_string(),
        }
    }

    /// An action with JSON arguments serialised as a string.
    ///
    /// ```
    /// let a = bsm_sdk::Action::with_args("create_file", r#"{"path": "NOTES.md"}"#);
    /// assert_eq!(a.name, "create_file");
    /// ```
    pub fn with_args(name: impl Into<String>, args_json: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            args: args_json.into(),
        }
    }
}

impl Context {
    /// A context for calls made outside any request, e.g. in unit tests.
    ///
    /// ```
    /// let ctx = bsm_sdk::Context::new("api");
    /// assert_eq!(ctx.calling_context, "api");
    /// assert!(ctx.event.is_none());
    /// ```
    pub fn new(calling_context: impl Into<String>) -> Self {
        Self {
            correlation_id: String::new(),
            event: None,
            calling_context: calling_context.into(),
        }
    }
}

impl Input {
    /// An input with text only, an empty payload (`{}`) and an `api` context;
    /// handy for unit tests of an agent's logic.
    ///
    /// ```
    /// let input = bsm_sdk::Input::new("hello");
    /// assert_eq!(input.payload, "{}");
    /// ```
    pub fn new(text: impl Into<String>) -> Self {
        Self {
            input: text.into(),
            payload: "{}".to_string(),
            context: Context::new("api"),
        }
    }
}
