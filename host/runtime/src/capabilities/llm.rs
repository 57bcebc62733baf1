//! `bsm:plugin/llm`: chat completions and embeddings for plugins.
//!
//! The transport sits behind [`LlmEngine`] (as Spin's `LlmEngine`), so the
//! binding code does not change when the backend does: the `bsm-llm` client
//! in production, [`Unconfigured`] when no provider is set (every call then
//! answers a clear `unavailable` error instead of failing the host). Each run
//! is held to its plugin's LLM budget here.

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};

use super::{Caller, Capability, RunInfo};
use crate::manifest::LlmGrant;
use crate::tape::{self, Tape};
use crate::bindings::llm::{self, ChatRequest, ChatResponse, Error, Host};

/// The `llm` capability: one engine for the process, a budget per run.
pub struct Llm;

/// The process-wide LLM engine ([`Unconfigured`] by default).
#[derive(Clone)]
pub struct LlmShared(pub Arc<dyn LlmEngine>);

impl Default for LlmShared {
    fn default() -> Self {
        Self(Arc::new(Unconfigured))
    }
}

impl Capability for Llm {
    type Shared = LlmShared;
    type State = LlmState;

    fn link<T: Send + 'static>(
        linker: &mut Linker<T>,
        get: fn(&mut T) -> &mut LlmState,
    ) -> wasmtime::Result<()> {
        llm::add_to_linker::<T, HasSelf<LlmState>>(linker, get)
    }

    fn for_run(shared: &LlmShared, run: &RunInfo<'_>) -> LlmState {
        let budget = &run.manifest.budget;
        let grant = run.manifest.capabilities.llm.clone();
        let max_tokens = grant
            .as_ref()
            .and_then(|g| g.max_tokens)
            .map_or(budget.llm_max_tokens, |t| t.min(budget.llm_max_tokens));
        LlmState::new(
            shared.0.clone(),
            run.caller.clone(),
            LlmBudget {
                max_calls: budget.llm_max_calls,
                max_tokens,
            },
        )
        .granted(grant)
        .taped(run.tape.clone())
    }
}

/// A backend able to answer LLM calls on behalf of plugins.
#[async_trait::async_trait]
pub trait LlmEngine: Send + Sync + 'static {
    async fn chat(&self, caller: &Caller, request: ChatRequest) -> Result<ChatResponse, Error>;

    async fn embed(
        &self,
        caller: &Caller,
        model: Option<String>,
        inputs: Vec<String>,
    ) -> Result<Vec<Vec<f32>>, Error>;
}

/// The engine used when no provider is configured.
pub struct Unconfigured;

/// Told to a plugin (and through it, to the operator) when no provider is set.
pub const NOT_CONFIGURED: &str = "no LLM provider is configured for this host: set BSM_LLM_BASE_URL \
     (e.g. http://127.0.0.1:11434/v1) and BSM_LLM_MODEL (and BSM_LLM_API_KEY if the provider needs one), \
     or add [[llm.providers]] to the configuration file";

#[async_trait::async_trait]
impl LlmEngine for Unconfigured {
    async fn chat(&self, _: &Caller, _: ChatRequest) -> Result<ChatResponse, Error> {
        Err(Error::Unavailable(NOT_CONFIGURED.into()))
    }

    async fn embed(
        &self,
        _: &Caller,
        _: Option<String>,
        _: Vec<String>,
    ) -> Result<Vec<Vec<f32>>, Error> {
        Err(Error::Unavailable(NOT_CONFIGURED.into()))
    }
}

/// A plugin's LLM allowance for one run, from its manifest's budget.
#[derive(Debug, Clone, Copy)]
pub struct LlmBudget {
    pub max_calls: u32,
    pub max_tokens: u32,
}

/// What a run did with the LLM: reported with its result, so callers see
/// token usage and, when a run failed, the LLM error behind it.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LlmUsage {
    pub calls: u32,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// The last LLM error the run saw, if any.
    #[serde(skip)]
    pub last_error: Option<Error>,
}

impl LlmUsage {
    /// Prompt and completion tokens together, as the budget counts them.
    pub fn tokens(&self) -> u32 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}

/// Per-run state: the engine, who is calling it, and what the run has used.
pub struct LlmState {
    engine: Arc<dyn LlmEngine>,
    caller: Caller,
    budget: LlmBudget,
    usage: LlmUsage,
    /// The models the manifest grants (`None`: built outside a manifest,
    /// unrestricted).
    grant: Option<LlmGrant>,
    tape: Option<Arc<Tape>>,
}

impl LlmState {
    pub fn new(engine: Arc<dyn LlmEngine>, caller: Caller, budget: LlmBudget) -> Self {
        Self {
            engine,
            caller,
            budget,
            usage: LlmUsage::default(),
            grant: None,
            tape: None,
        }
    }

    /// Records or replays this run's calls.
    pub fn taped(mut self, tape: Option<Arc<Tape>>) -> Self {
        self.tape = tape;
        self
    }

    /// Restricts the run to what its manifest grants.
    pub fn granted(mut self, grant: Option<LlmGrant>) -> Self {
        self.grant = grant;
        self
    }

    /// Refuses a model the manifest does not grant (naming none asks for
    /// the host's default, always allowed).
    fn check_model(&self, model: Option<&str>) -> Result<(), Error> {
        match (&self.grant, model) {
            (Some(grant), Some(model)) if !grant.allows_model(model) => {
                Err(Error::NotPermitted(format!(
                    "model {model:?} is not granted to this plugin (capabilities.llm.models: {})",
                    grant.models.join(", ")
                )))
            }
            _ => Ok(()),
        }
    }

    /// What this run has used so far.
    pub fn usage(&self) -> LlmUsage {
        self.usage.clone()
    }

    /// Counts a call against the budget, or refuses it.
    fn admit(&mut self) -> Result<(), Error> {
        if self.usage.calls >= self.budget.max_calls {
            return Err(Error::BudgetExceeded(format!(
                "this run already made its {} LLM calls (budget.llm-max-calls)",
                self.budget.max_calls
            )));
        }
        let tokens = self.usage.tokens();
        if tokens >= self.budget.max_tokens {
            return Err(Error::BudgetExceeded(format!(
                "this run already used {tokens} of its {} LLM tokens (budget.llm-max-tokens)",
                self.budget.max_tokens
            )));
        }
        self.usage.calls += 1;
        Ok(())
    }

    /// Remembers the error of a failed call, for the run's result.
    fn noted<T>(&mut self, result: Result<T, Error>) -> Result<T, Error> {
        if let Err(e) = &result {
            self.usage.last_error = Some(e.clone());
        }
        result
    }
}

impl Host for LlmState {
    async fn chat(&mut self, mut request: ChatRequest) -> Result<ChatResponse, Error> {
        if request.messages.is_empty() {
            return Err(Error::InvalidRequest(
                "a chat request needs at least one message".into(),
            ));
        }
        let admitted = self
            .check_model(request.model.as_deref())
            .and_then(|()| self.admit());
        self.noted(admitted)?;
        // The completion may not outgrow what is left of the token budget.
        let left = self.budget.max_tokens - self.usage.tokens();
        request.max_tokens = Some(request.max_tokens.map_or(left, |asked| asked.min(left)));
        let args = tape::args(&self.tape, &request);
        let reply = tape::through(
            &self.tape,
            "llm.chat",
            args,
            Error::Unavailable,
            self.engine.chat(&self.caller, request),
        )
        .await;
        let reply = self.noted(reply)?;
        self.usage.prompt_tokens = self
            .usage
            .prompt_tokens
            .saturating_add(reply.usage.prompt_tokens);
        self.usage.completion_tokens = self
            .usage
            .completion_tokens
            .saturating_add(reply.usage.completion_tokens);
        Ok(reply)
    }

    async fn embed(
        &mut self,
        model: Option<String>,
        inputs: Vec<String>,
    ) -> Result<Vec<Vec<f32>>, Error> {
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        let admitted = self.check_model(model.as_deref()).and_then(|()| self.admit());
        self.noted(admitted)?;
        let args = tape::args(&self.tape, &(&model, &inputs));
        let vectors = tape::through(
            &self.tape,
            "llm.embed",
            args,
            Error::Unavailable,
            self.engine.embed(&self.caller, model, inputs),
        )
        .await;
        self.noted(vectors)
    }
}
