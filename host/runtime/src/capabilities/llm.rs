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
use crate::io_home::IoHome;
use crate::manifest::LlmGrant;
use crate::tape::{self, Tape};
use crate::bindings::llm::{self, ChatRequest, ChatResponse, Error, Host};

/// The `llm` capability: one engine for the process, a budget per run.
pub struct Llm;

/// The process-wide LLM engine ([`Unconfigured`] by default), and the
/// runtime its calls run on (see [`IoHome::spawn_and_wait`]).
#[derive(Clone)]
pub struct LlmShared {
    engine: Arc<dyn LlmEngine>,
    home: IoHome,
}

impl LlmShared {
    /// `engine`, whose calls run on the runtime this is called on (the
    /// server's), or on the caller's when called outside one.
    pub fn new(engine: Arc<dyn LlmEngine>) -> Self {
        Self {
            engine,
            home: IoHome::current(),
        }
    }
}

impl Default for LlmShared {
    fn default() -> Self {
        Self::new(Arc::new(Unconfigured))
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
            shared.engine.clone(),
            run.caller.clone(),
            LlmBudget {
                max_calls: budget.llm_max_calls,
                max_tokens,
            },
        )
        .granted(grant)
        .taped(run.tape.clone())
        .homed(shared.home.clone())
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
    /// Where the engine's calls run, apart from the run's fiber.
    home: IoHome,
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
            home: IoHome::default(),
        }
    }

    /// Runs the engine's calls on `home`'s runtime.
    pub fn homed(mut self, home: IoHome) -> Self {
        self.home = home;
        self
    }

    /// The engine's call as a task of its own: the run's fiber waits once
    /// for its end instead of being switched in at each of its steps (a
    /// streamed answer arrives in several reads).
    async fn apart<T: Send + 'static>(
        &self,
        call: impl Future<Output = Result<T, Error>> + Send + 'static,
    ) -> Result<T, Error> {
        self.home
            .spawn_and_wait(call)
            .await
            .unwrap_or_else(|gone| Err(Error::Unavailable(gone.to_string())))
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
        let (engine, caller) = (self.engine.clone(), self.caller.clone());
        let call = self.apart(async move { engine.chat(&caller, request).await });
        let reply = tape::through(&self.tape, "llm.chat", args, Error::Unavailable, call).await;
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
        let (engine, caller) = (self.engine.clone(), self.caller.clone());
        let call = self.apart(async move { engine.embed(&caller, model, inputs).await });
        let vectors = tape::through(&self.tape, "llm.embed", args, Error::Unavailable, call).await;
        self.noted(vectors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::llm::{Message, Role, Usage};
    use crate::io_home::tests::{CountPolls, steps};

    /// Answers after 50 steps, as a streamed answer arrives in several reads.
    struct SlowStream;

    #[async_trait::async_trait]
    impl LlmEngine for SlowStream {
        async fn chat(&self, _: &Caller, _: ChatRequest) -> Result<ChatResponse, Error> {
            let chunks = steps(50).await;
            Ok(ChatResponse {
                content: format!("{chunks} chunks"),
                model: "m".into(),
                usage: Usage {
                    prompt_tokens: 1,
                    completion_tokens: 1,
                },
                finish_reason: Some("stop".into()),
            })
        }

        async fn embed(
            &self,
            _: &Caller,
            _: Option<String>,
            inputs: Vec<String>,
        ) -> Result<Vec<Vec<f32>>, Error> {
            steps(50).await;
            Ok(inputs.iter().map(|_| vec![1.0]).collect())
        }
    }

    fn state() -> LlmState {
        let caller = Caller {
            plugin_id: Arc::from("p"),
            correlation_id: Arc::from("c"),
        };
        let budget = LlmBudget {
            max_calls: 10,
            max_tokens: 1000,
        };
        LlmState::new(Arc::new(SlowStream), caller, budget)
    }

    fn ask() -> ChatRequest {
        ChatRequest {
            messages: vec![Message {
                role: Role::User,
                content: "hi".into(),
            }],
            model: None,
            max_tokens: None,
            temperature: None,
            json: false,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_llm_call_of_many_steps_wakes_its_run_once() {
        let mut llm = state();
        let mut chat = CountPolls {
            inner: Box::pin(Host::chat(&mut llm, ask())),
            polls: 0,
        };
        let reply = (&mut chat).await.unwrap();
        assert_eq!(reply.content, "50 chunks");
        assert!(chat.polls <= 2, "the run was woken {} times", chat.polls);
        drop(chat);
        assert_eq!(llm.usage().calls, 1);

        let mut embed = CountPolls {
            inner: Box::pin(Host::embed(&mut llm, None, vec!["a".into()])),
            polls: 0,
        };
        assert_eq!((&mut embed).await.unwrap(), vec![vec![1.0]]);
        assert!(embed.polls <= 2, "the run was woken {} times", embed.polls);
    }
}
