//! `bsm:plugin/llm`: chat completions and embeddings for plugins.
//!
//! The transport sits behind [`LlmEngine`] (as Spin's `LlmEngine`), so the
//! binding code does not change when the backend does. Without a configured
//! provider the engine is [`Unconfigured`], which answers every call with a
//! clear `unavailable` error instead of failing the host.

use crate::bindings::llm::{ChatRequest, ChatResponse, Error, Host};

use super::Caller;

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
pub const NOT_CONFIGURED: &str = "no LLM provider is configured for this host";

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

/// Per-run state: the engine and who is calling it.
pub struct LlmState {
    engine: std::sync::Arc<dyn LlmEngine>,
    caller: Caller,
}

impl LlmState {
    pub fn new(engine: std::sync::Arc<dyn LlmEngine>, caller: Caller) -> Self {
        Self { engine, caller }
    }
}

impl Host for LlmState {
    async fn chat(&mut self, request: ChatRequest) -> Result<ChatResponse, Error> {
        if request.messages.is_empty() {
            return Err(Error::InvalidRequest(
                "a chat request needs at least one message".into(),
            ));
        }
        self.engine.chat(&self.caller, request).await
    }

    async fn embed(
        &mut self,
        model: Option<String>,
        inputs: Vec<String>,
    ) -> Result<Vec<Vec<f32>>, Error> {
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        self.engine.embed(&self.caller, model, inputs).await
    }
}
